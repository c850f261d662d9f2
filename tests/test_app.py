"""The app on the assets/ default, driven through gradio_client like any API user."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from tests.app_fixtures import ASSETS, running_app

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (ASSETS / "model" / "config.json").is_file(), reason="assets/ not built"),
]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    with running_app(tmp_path_factory.mktemp("app-data")) as (url, app):
        from gradio_client import Client

        yield Client(url, verbose=False), app


def find_test_item(app, caption: str):
    return next(item for item in app.service.gallery.items if item.split == "test" and item.captions[0] == caption)


def test_startup_prepares_the_fast_runtimes(served):
    """The ONNX Runtime copies are exported at startup, not on the first user's query."""
    _, app = served
    model = app.service.model
    assert model.text_encoder.onnx_copy.exported
    assert model.image_encoder.backbone.onnx_copy.exported


@pytest.mark.parametrize("caption", ["Tennis shoes", "Simple Crown with One Riser", "The Moon"])
def test_known_test_caption_finds_its_image(served, caption):
    """Held-out test images, searched among the whole gallery (6,800 images)."""
    client, app = served
    item = find_test_item(app, caption)
    gallery, table = client.predict(caption, 5, api_name="/search")
    ids = [row[2] for row in table["data"]]
    assert item.id in ids, (item.captions[0], ids)
    assert len(gallery) == 5


def test_empty_and_long_queries_get_a_message(served):
    from gradio_client.exceptions import AppError

    client, _ = served
    with pytest.raises(AppError, match="Type a sentence"):
        client.predict("   ", 5, api_name="/search")
    with pytest.raises(AppError, match="too long"):
        client.predict("a" * 5000, 5, api_name="/search")


def test_upload_gets_captions_and_similar_images(served, tmp_path):
    from gradio_client import handle_file

    client, app = served
    path = tmp_path / "query.png"
    app.service.gallery.image(0).save(path)
    captions, similar = client.predict(handle_file(str(path)), api_name="/describe")
    assert len(captions["data"]) == 5 and len(similar) == 8
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError):
        client.predict(handle_file(str(broken)), api_name="/describe")


def test_vote_is_persisted_and_exported(served, tmp_path):
    from training.corrections import load_corrections
    from training.feedback import main as feedback_main

    client, app = served
    item = app.service.gallery.items[app.queue[0]]
    counter = client.predict(item.id, item.tags[0], "wrong", "tester", api_name="/vote")
    assert "1 images reviewed by you" in counter
    client.predict(item.id, item.tags[0], "wrong", "tester", api_name="/vote")  # idempotent
    assert app.store.count() == 1
    out = tmp_path / "corrections"
    assert feedback_main(["export", "--db", str(app.store.path), "--out", str(out)]) == 0
    corrections = load_corrections(str(out))
    assert corrections.reviewed(item.id)
    assert corrections.apply(item.id, item.tags) == item.tags[1:] or item.tags[0] not in corrections.apply(
        item.id, item.tags
    )


def test_review_queue_puts_suspicious_tags_first(served):
    _, app = served
    scores = app.service.tag_agreement()
    queue_scores = [scores[i] for i in app.queue[:50]]
    assert queue_scores == sorted(queue_scores)


def test_gallery_images_decode(served):
    _, app = served
    data = app.service.gallery.items[0].image
    assert Image.open(io.BytesIO(data)).size == (224, 224)


def test_votes_are_rate_limited_per_reviewer(served, monkeypatch):
    import gradio as gr

    _, app = served
    monkeypatch.setattr(app.config, "votes_per_minute", app.store.recent_votes("limited", 60) + 2)
    item = app.service.gallery.items[app.queue[1]]
    app.vote_api(item.id, "first", "added", "limited")
    app.vote_api(item.id, "second", "added", "limited")
    with pytest.raises(gr.Error, match="Too many votes"):
        app.vote_api(item.id, "third", "added", "limited")
    app.vote_api(item.id, "third", "added", "someone else")  # other reviewers are not affected


def test_review_needs_sign_in_when_oauth_is_on(served, monkeypatch):
    import gradio as gr

    import app as app_module

    _, app = served
    monkeypatch.setattr(app_module, "OAUTH_ENABLED", True)
    item = app.service.gallery.items[app.queue[2]]
    with pytest.raises(gr.Error, match="Sign in"):
        app.vote_api(item.id, "tag", "wrong", "typed-name-is-ignored", None)
    profile = gr.OAuthProfile({"name": "Ann", "preferred_username": "ann-hub", "profile": "", "picture": ""})
    app.vote_api(item.id, "tag", "wrong", "typed-name-is-ignored", profile)
    assert app.store.votes(image_id=item.id)[-1].user == "ann-hub"
    with pytest.raises(gr.Error, match="Unknown image id"):
        app.vote_api("../../etc/passwd", "tag", "wrong", "x", profile)


def test_review_controls_are_read_only_until_sign_in(served, monkeypatch):
    import gradio as gr

    import app as app_module

    _, app = served
    monkeypatch.setattr(app_module, "OAUTH_ENABLED", True)
    *_, wrong, add, next_, skip = app.open_review(0, "", None)
    assert [c["interactive"] for c in (wrong, add, next_, skip)] == [False] * 4
    profile = gr.OAuthProfile({"name": "Ann", "preferred_username": "ann-hub", "profile": "", "picture": ""})
    *_, wrong, add, next_, skip = app.open_review(0, "", profile)
    assert [c["interactive"] for c in (wrong, add, next_, skip)] == [True] * 4
