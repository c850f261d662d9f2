"""The app on the assets/ default, driven through gradio_client like any API user."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from vse.testing.app_runner import ASSETS, running_app
from vse.text import normalize_tag

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


def test_review_queue_ranks_by_review_priority(served):
    """The queue against a naive reference: images sorted by the sum of their tags' P(wrong) over sqrt(tags)."""
    _, app = served
    suspicion = app.service.tag_suspicion()
    items = app.service.gallery.items
    assert all(
        len(p) == len(item.tags) and ((p >= 0) & (p <= 1)).all() for p, item in zip(suspicion, items, strict=True)
    )
    expected = {i: float(sum(p)) / len(p) ** 0.5 for i, p in enumerate(suspicion) if len(p)}
    naive = sorted(expected, key=lambda i: (-expected[i], i))
    assert app.queue == naive


def test_review_view_shows_suspicion_and_suggests_verdicts(served):
    import app as app_module

    _, app = served
    image, title, detail, choices, counter = app.review_view(0, None)
    labels = [label for label, _ in choices["choices"]]
    values = [value for _, value in choices["choices"]]
    rows = app.tag_rows(app.queue[0])
    assert values == [tag for tag, _ in rows] and [p for _, p in rows] == sorted((p for _, p in rows), reverse=True)
    assert all("likely wrong" in label for label in labels)
    assert choices["value"] == [tag for tag, p in rows if p >= app_module.SUGGEST_WRONG]
    assert "wrong tags expected" in detail and image is not None


def fresh_position(app, user):
    position = app.next_position(0, user, include_current=True)
    assert position is not None
    return position


def test_next_image_records_ticked_wrong_and_unticked_right(served):
    _, app = served
    user = "handler-next"
    position = fresh_position(app, user)
    item = app.current_item(position)
    tags = [tag for tag, _ in app.tag_rows(app.queue[position])]
    result = app.next_image(position, tags[:1], user, None)
    verdicts = {v.tag: v.verdict for v in app.store.votes(image_id=item.id, user=user)}
    assert verdicts == {normalize_tag(tag): "wrong" if tag == tags[0] else "right" for tag in tags}
    assert result[0] != position and app.current_item(result[0]).id != item.id  # moved on


def test_skip_moves_on_without_votes_and_add_tag_records_missing_tags(served):
    import gradio as gr

    _, app = served
    user = "handler-skip"
    position = fresh_position(app, user)
    before = app.store.count()
    new_position, *_ = app.skip(position, user, None)
    assert new_position != position and app.store.count() == before
    item = app.current_item(new_position)
    cleared, counter = app.add_tag(new_position, "brand new tag, another one", user, None)
    assert cleared == "" and "1 images reviewed by you" in counter
    added = {v.tag for v in app.store.votes(image_id=item.id, user=user) if v.verdict == "added"}
    assert added == {"brand new tag", "another one"}
    with pytest.raises(gr.Error, match="Type the missing tag"):
        app.add_tag(new_position, " , ", user, None)


def test_mark_tags_stores_each_change(served):
    _, app = served
    user = "handler-mark"
    position = fresh_position(app, user)
    item = app.current_item(position)
    tags = [tag for tag, _ in app.tag_rows(app.queue[position])][:2]
    assert len(tags) == 2
    ticked, _ = app.mark_tags(position, tags, [], user, None)
    assert {v.tag: v.verdict for v in app.store.votes(image_id=item.id, user=user)} == {
        normalize_tag(tags[0]): "wrong", normalize_tag(tags[1]): "wrong"}  # fmt: skip
    app.mark_tags(position, tags[:1], ticked, user, None)  # the second unticked again: now right
    assert {v.tag: v.verdict for v in app.store.votes(image_id=item.id, user=user)} == {
        normalize_tag(tags[0]): "wrong", normalize_tag(tags[1]): "right"}  # fmt: skip


def test_reviewed_images_leave_the_queue_once_enough_people_reviewed(served, monkeypatch):
    _, app = served
    position = fresh_position(app, "first-reviewer")
    item = app.current_item(position)
    app.next_image(position, [], "first-reviewer", None)
    assert not app.reviewable(position, "second-reviewer")  # one review is enough by default
    monkeypatch.setattr(app.config, "reviews_per_image", 2)
    assert app.reviewable(position, "second-reviewer") and not app.reviewable(position, "first-reviewer")
    assert app.review_next_api("first-reviewer")["image_id"] != item.id


def test_reviewers_at_work_together_are_given_different_images_through_the_api(served):
    client, app = served
    first = client.predict("lease-a", api_name="/review_next")
    second = client.predict("lease-b", api_name="/review_next")
    assert first["image_id"] != second["image_id"]
    assert client.predict("lease-a", api_name="/review_next")["image_id"] == first["image_id"]  # still hers
    shown = [t["tag"] for t in second["tags"]]
    client.predict(second["image_id"], [], shown, [], "lease-b", api_name="/review")  # a vote ends the lease
    assert client.predict("lease-b", api_name="/review_next")["image_id"] not in (first["image_id"], second["image_id"])
    app.skip(first["position"], "lease-a", None)  # skipping hands the image back to the others
    assert client.predict("lease-c", api_name="/review_next")["image_id"] == first["image_id"]


def test_the_review_progress_tracker_is_kept_until_what_it_tracks_changes(served, monkeypatch):
    _, app = served
    tracker = app.review_progress()
    assert app.review_progress() is tracker  # one tracker across requests: its done prefix is remembered
    monkeypatch.setattr(app.config, "reviews_per_image", app.config.reviews_per_image + 1)
    assert app.review_progress() is not tracker and app.review_progress().need == app.config.reviews_per_image


def test_review_next_and_vote_validation_through_the_api(served, monkeypatch):
    from gradio_client.exceptions import AppError

    client, app = served
    monkeypatch.setattr(app.config, "reviews_per_image", 100)
    task = client.predict("api-reviewer", api_name="/review_next")
    item = app.service.gallery.items[app.service.gallery.position[task["image_id"]]]
    assert task["model_revision"] == app.service.revision and task["queue_length"] == len(app.queue)
    assert [t["tag"] for t in task["tags"]] == [tag for tag, _ in app.tag_rows(app.queue[task["position"]])]
    tag = task["tags"][0]["tag"]
    for args, message in [
        ((task["image_id"], "not-one-of-its-tags", "wrong"), "has no tag"),
        ((task["image_id"], None, "wrong"), "non-empty string"),
        ((task["image_id"], ["a", "b"], "wrong"), "non-empty string"),
        ((task["image_id"], tag, "maybe"), "verdict"),
        ((task["image_id"], tag, None), "verdict"),
        ((None, tag, "wrong"), "Unknown image id"),
    ]:
        with pytest.raises(AppError, match=message):
            client.predict(*args, "api-reviewer", api_name="/vote")
    for name, message in [("ann\u202eevil", "invisible"), ("x" * 101, "longer")]:
        with pytest.raises(AppError, match=message):
            client.predict(task["image_id"], tag, "wrong", name, api_name="/vote")
    assert not app.store.votes(image_id=item.id, user="api-reviewer")
    client.predict(task["image_id"], tag, "added", "api-reviewer", api_name="/vote")  # it has it: a confirmation
    assert app.store.votes(image_id=item.id, user="api-reviewer")[0].verdict == "right"
    # The limit counts vote events: flipping one tag back and forth uses it up.
    monkeypatch.setattr(app.config, "votes_per_minute", app.store.recent_votes("flipper", 60) + 3)
    for verdict in ("wrong", "right", "wrong"):
        client.predict(task["image_id"], tag, verdict, "flipper", api_name="/vote")
    with pytest.raises(AppError, match="Too many votes"):
        client.predict(task["image_id"], tag, "right", "flipper", api_name="/vote")


def test_gallery_images_decode(served):
    _, app = served
    data = app.service.gallery.items[0].image
    assert Image.open(io.BytesIO(data)).size == (224, 224)


def test_thumbnails_are_static_files_checked_first(served):
    """Gradio checks every returned file against its static paths in order: the thumbnail
    folder comes first (``app.static_folder_first``), and its files are served in place."""
    from gradio.data_classes import _StaticFiles
    from gradio.utils import is_static_file

    client, app = served
    gallery, _ = client.predict("a red apple", 3, api_name="/search")
    assert len(gallery) == 3 and all(Path(cell["image"]).is_file() for cell in gallery)  # downloaded
    assert _StaticFiles.all_paths[0] == app.thumbnail_dir.resolve()
    assert is_static_file(app.thumbnail_file(0))


def test_gradio_refreshes_its_monitoring_summary_every_100_events():
    """Gradio's default recomputes a pandas summary of up to 10,000 past events after every event."""
    import gradio as gr

    import app as app_module

    assert app_module.queued(gr.Blocks())._queue.ANAYLTICS_CACHE_FREQUENCY == 100


def test_votes_are_rate_limited_per_reviewer(served, monkeypatch):
    import gradio as gr

    _, app = served
    monkeypatch.setattr(app.config, "votes_per_minute", app.store.recent_votes("limited", 60) + 2)
    item = app.service.gallery.items[app.queue[1]]
    app.vote_api(item.id, "first new tag", "added", "limited")
    app.vote_api(item.id, "second new tag", "added", "limited")
    with pytest.raises(gr.Error, match="Too many votes"):
        app.vote_api(item.id, "third new tag", "added", "limited")
    app.vote_api(item.id, "third new tag", "added", "someone else")  # other reviewers are not affected


def test_review_needs_sign_in_when_oauth_is_on(served, monkeypatch):
    import gradio as gr

    _, app = served
    monkeypatch.setattr(app.config, "oauth", True)
    item = app.service.gallery.items[app.queue[2]]
    with pytest.raises(gr.Error, match="Sign in"):
        app.vote_api(item.id, item.tags[0], "wrong", "typed-name-is-ignored", None)
    profile = gr.OAuthProfile({"name": "Ann", "preferred_username": "ann-hub", "profile": "", "picture": ""})
    app.vote_api(item.id, item.tags[0], "wrong", "typed-name-is-ignored", profile)
    assert app.store.votes(image_id=item.id)[-1].user == "ann-hub"
    with pytest.raises(gr.Error, match="Unknown image id"):
        app.vote_api("../../etc/passwd", "tag", "wrong", "x", profile)


def test_review_controls_are_read_only_until_sign_in(served, monkeypatch):
    import gradio as gr

    _, app = served
    monkeypatch.setattr(app.config, "oauth", True)
    *_, wrong, add, next_, skip = app.open_review(0, "", None)
    assert [c["interactive"] for c in (wrong, add, next_, skip)] == [False] * 4
    profile = gr.OAuthProfile({"name": "Ann", "preferred_username": "ann-hub", "profile": "", "picture": ""})
    *_, wrong, add, next_, skip = app.open_review(0, "", profile)
    assert [c["interactive"] for c in (wrong, add, next_, skip)] == [True] * 4


def test_votes_survive_an_app_restart_on_an_empty_disk(tmp_path):
    """The path a Space takes: vote through the API, shut down, start again with a new disk, find the votes."""
    from gradio_client import Client

    repo = tmp_path / "backup-repo"  # stands in for the Hub dataset repo (vse.serving.vote_backup.FolderFiles)
    with running_app(tmp_path / "disk-1", backup=str(repo)) as (url, app):
        item = app.service.gallery.items[app.queue[0]]
        Client(url, verbose=False).predict(item.id, item.tags[0], "wrong", "restart-tester", api_name="/vote")
    assert (repo / "votes").is_dir()
    with running_app(tmp_path / "disk-2", backup=str(repo)) as (url, app):
        assert [(v.user, v.image_id, v.verdict) for v in app.store.votes()] == [("restart-tester", item.id, "wrong")]
        task = Client(url, verbose=False).predict("after-restart", api_name="/review_next")
        assert task["image_id"] != item.id and app.review_progress().done_before >= 1  # restored votes count
        Client(url, verbose=False).predict(item.id, item.tags[0], "right", "restart-tester", api_name="/vote")
    with running_app(tmp_path / "disk-3", backup=str(repo)) as (url, app):
        assert [v.verdict for v in app.store.votes()] == ["right"]  # the latest vote of both runs


def test_space_settings_examples_downloads_and_limits(served, tmp_path):
    import csv

    import app as app_module

    client, app = served
    examples = app.example_queries()
    test_captions = {i.captions[0] for i in app.service.gallery.items if i.split == "test" and i.captions}
    assert len(examples) == app_module.EXAMPLE_QUERIES and set(examples) <= test_captions
    item = app.service.gallery.items[app.queue[3]]
    app.vote_api(item.id, item.tags[0], "wrong", "downloader")
    with open(app.download_corrections(), newline="") as handle:
        rows = list(csv.DictReader(handle))
    row = next(r for r in rows if r["image_id"] == item.id and r["tag"] == normalize_tag(item.tags[0]))
    assert row["verdict"] == "wrong" and int(row["votes"]) >= 1
    assert item.id in Path(app.download_votes()).read_text()
    assert app_module.launch_options()["max_file_size"] == app_module.MAX_UPLOAD
    big = tmp_path / "big.png"
    big.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 11_000_000)  # over the 10 MB upload limit
    from gradio_client import handle_file

    with pytest.raises(Exception, match="(?i)size|large|exceed"):
        client.predict(handle_file(str(big)), api_name="/describe")


def test_a_large_gallery_photo_reaches_the_browser_scaled_down(tmp_path):
    """Through the HTTP API: /search returns a file URL; what it serves is a WebP inside THUMBNAIL_SIDE."""
    import httpx

    from vse.serving.gallery import write_gallery
    from vse.serving.thumbnails import THUMBNAIL_SIDE
    from vse.testing.app_runner import api_call
    from vse.testing.shapes import draw

    def encoded(image: Image.Image) -> bytes:
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return buffer.getvalue()

    photo = encoded(draw("green", "square", size=64).resize((3 * THUMBNAIL_SIDE, 2 * THUMBNAIL_SIDE)))
    small = encoded(draw("red", "circle", size=64))
    rows = [
        {"id": name, "image": data, "title": name, "captions": [f"a {name}"], "tags": [name], "category": "",
         "split": "test"}
        for name, data in (("green square", photo), ("red circle", small))
    ]  # fmt: skip
    write_gallery(rows, tmp_path / "gallery")
    with running_app(tmp_path / "data", gallery=str(tmp_path / "gallery")) as (url, _):
        event, (cells, table, _) = api_call(url, "search", ["a green square", 2])
        assert event == "complete"
        shown = {row[2]: cell["image"]["url"] for row, cell in zip(table["data"], cells, strict=True)}
        served = {name: httpx.get(link, timeout=30) for name, link in shown.items()}
    assert all(response.status_code == 200 for response in served.values())
    large = Image.open(io.BytesIO(served["green square"].content))
    assert large.format == "WEBP" and large.size == (THUMBNAIL_SIDE, THUMBNAIL_SIDE * 2 // 3)
    assert len(served["green square"].content) < len(photo)
    assert served["red circle"].content == small  # small enough: sent as stored
