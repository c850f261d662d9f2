"""Hostile input through the running app, the way clients reach it: Gradio's HTTP API and gradio_client.

The library-level corpus (tests/test_hostile_inputs.py) passing is not enough:
uploads are received, checked and handed over by Gradio before the library sees
them. Every image of that corpus is uploaded here too, and the app-only cases
(arguments of any JSON type, missing arguments, uploads that are not uploads)
follow. Each must be answered or refused with a message; none may reach the
client as a bare "Error" or print a traceback. The counts are recorded in
docs/RELIABILITY.md by ``python -m benchmarks.hostile``.
"""

from __future__ import annotations

import httpx
import numpy as np
import pytest
from PIL import Image

from vse.testing.app_runner import ASSETS, api_call, concurrent_uploads, running_app
from vse.testing.hostile import API_CASES, IMAGE_CASES, UPLOAD_CASES, blank_png, encode
from vse.testing.memory import peak_memory_growth

pytestmark = pytest.mark.skipif(not (ASSETS / "model" / "config.json").is_file(), reason="assets/ not built")


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    with running_app(tmp_path_factory.mktemp("hostile-app")) as (url, app):
        yield url, app


def resolved(app, arguments: list) -> list:
    """``@first`` is a real image id of the gallery, ``@tag`` one of its tags."""
    item = app.current_item(0)
    return [item.id if a == "@first" else item.tags[0] if a == "@tag" else a for a in arguments]


def assert_answered_or_refused(event: str, payload, expected: str) -> None:
    if expected == "ok":
        assert event == "complete", payload
    else:
        assert event == "error" and payload and payload.get("error"), f"a bare error: {payload}"
        assert expected in payload["error"], payload["error"]


@pytest.mark.parametrize("name", list(API_CASES))
def test_api_case(app_url, name, capfd):
    url, app = app_url
    endpoint, arguments, expected = API_CASES[name]
    event, payload = api_call(url, endpoint, resolved(app, arguments))
    assert_answered_or_refused(event, payload, expected)
    assert "Traceback" not in capfd.readouterr().err  # an expected refusal logs one line


@pytest.mark.parametrize("name", list(UPLOAD_CASES))
def test_upload_case(app_url, name, capfd):
    url, _ = app_url
    argument, expected = UPLOAD_CASES[name]
    event, payload = api_call(url, "describe", [argument])
    assert_answered_or_refused(event, payload, expected)
    assert "Traceback" not in capfd.readouterr().err


@pytest.mark.parametrize("name", list(IMAGE_CASES))
def test_every_library_image_case_uploaded_through_the_app(app_url, name, tmp_path):
    """The same files as the library corpus, sent as uploads by gradio_client (named .png, whatever they hold)."""
    from gradio_client import Client, handle_file

    url, _ = app_url
    payload, expected = IMAGE_CASES[name]
    path = tmp_path / "upload.png"
    path.write_bytes(payload)
    client = Client(url, verbose=False)
    if expected == "ok":
        captions, similar = client.predict(handle_file(str(path)), api_name="/describe")
        assert len(captions["data"]) == 5 and len(similar) == 8
    else:
        with pytest.raises(Exception, match=expected) as refused:
            client.predict(handle_file(str(path)), api_name="/describe")
        assert "This image cannot be used" in str(refused.value)


def with_transparent_background(image: Image.Image) -> bytes:
    """A PNG of ``image`` whose near-white background is transparent, stored as black (as many PNG writers do)."""
    rgb = np.asarray(image.convert("RGB"))
    background = (rgb > 245).all(axis=2)
    rgba = np.dstack([np.where(background[..., None], 0, rgb), np.where(background, 0, 255)]).astype(np.uint8)
    return encode(Image.fromarray(rgba, "RGBA"), "PNG")


def test_a_transparent_gallery_image_is_its_own_nearest_neighbour(app_url, tmp_path):
    """Uploads are composited on white, as the gallery was embedded: clip art with alpha finds itself."""
    from gradio_client import Client, handle_file

    url, app = app_url
    gallery = app.service.gallery
    index = next(i for i in range(len(gallery.items)) if (np.asarray(gallery.image(i)) > 245).all(axis=2).mean() > 0.4)
    path = tmp_path / "clip-art.png"
    path.write_bytes(with_transparent_background(gallery.image(index)))
    _, similar = Client(url, verbose=False).predict(handle_file(str(path)), api_name="/describe")
    expected = gallery.items[index].title or gallery.items[index].id
    title, _, score = similar[0]["caption"].rpartition(" · ")
    assert title == expected, (similar[0]["caption"], expected)
    assert float(score) > 0.9  # composited on black, the same picture scores 0.55-0.88 against itself


def test_a_sixteen_bit_upload_keeps_its_contrast():
    from vse.images import load_image

    ramp = Image.fromarray((np.arange(256 * 64, dtype=np.uint32).reshape(64, 256) * 4).astype(np.uint16))
    pixels = np.asarray(load_image(encode(ramp, "PNG")).convert("L"))
    assert pixels.min() < 10 and pixels.max() > 245 and (pixels > 250).mean() < 0.05  # not washed out


@pytest.mark.slow
def test_memory_stays_flat_under_concurrent_huge_uploads(app_url, tmp_path):
    """Four clients upload at once a 0.4 MB PNG that decodes to 144 million pixels (432 MB of RGB)."""
    url, _ = app_url
    path = tmp_path / "huge.png"
    path.write_bytes(blank_png(12_000, 12_000))
    concurrent_uploads(url, path, 1)  # warm: the first upload allocates Gradio's own buffers
    growth, messages = peak_memory_growth(lambda: concurrent_uploads(url, path, 4))
    assert all("too large" in message for message in messages), messages
    assert growth < 150e6, f"resident memory grew by {growth / 1e6:.0f} MB"


def test_refusals_do_not_flood_the_log(app_url, capfd):
    url, app = app_url
    capfd.readouterr()
    item = app.current_item(0)
    for attempt in range(20):
        event, _ = api_call(url, "vote", [item.id, f"not-a-tag-{attempt}", "wrong", "flooder"])
        assert event == "error"
    printed = capfd.readouterr()
    assert "Traceback" not in printed.err
    assert len(printed.err.encode()) + len(printed.out.encode()) < 20 * 400


@pytest.mark.parametrize(
    "flag, make, expected",
    [
        ("--model", lambda folder: (folder / "config.json").write_text("{not json"), "config.json is not valid JSON"),
        ("--gallery", lambda folder: (folder / "notes.txt").write_text("no images here"), "holds no images"),
    ],
)
def test_the_app_refuses_a_bad_model_or_gallery_in_one_line(tmp_path, flag, make, expected):
    import subprocess
    import sys

    from vse.testing.app_runner import ROOT, free_port

    folder = tmp_path / "given"
    folder.mkdir()
    make(folder)
    command = [sys.executable, "app.py", flag, str(folder), "--data-dir", str(tmp_path / "data"), "--port",
               str(free_port())]  # fmt: skip
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: ") and expected in result.stderr


def test_an_upload_over_the_size_limit_is_refused_before_the_app_reads_it(app_url, tmp_path):
    from gradio_client import Client, handle_file

    url, _ = app_url
    path = tmp_path / "junk.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(11_000_000))
    with pytest.raises(Exception) as refused:
        Client(url, verbose=False).predict(handle_file(str(path)), api_name="/describe")
    assert "maximum file size" in str(refused.value)  # gradio_client reads the limit from the app's config
    sent = httpx.post(f"{url}gradio_api/upload", files={"files": ("junk.png", path.read_bytes())}, timeout=60)
    assert sent.status_code == 413  # a client that ignores it is refused by the server


@pytest.mark.parametrize("k", ["abc", None, 1e308, -3])
def test_bad_k_through_gradio_client_gets_the_message(app_url, k):
    from gradio_client import Client

    url, _ = app_url
    with pytest.raises(Exception, match="whole number from 1 to 48"):
        Client(url, verbose=False).predict("a red apple", k, api_name="/search")
