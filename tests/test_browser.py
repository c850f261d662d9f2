"""The UI in a real headless Chromium (Debian's), driven by Playwright.

Type a query, see results, open an image's nearest captions, mark a tag wrong,
review with the keyboard (suggested verdicts, 1 toggles a tag, Enter moves on),
reload and find the reviewer's name remembered; screenshots of both tabs are
saved (to docs/screenshots when VSE_SCREENSHOTS=docs/screenshots is set).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from vse.testing.app_runner import ASSETS, running_app

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium is not installed"),
    pytest.mark.skipif(not (ASSETS / "model" / "config.json").is_file(), reason="assets/ not built"),
]


@pytest.fixture(scope="module")
def browser():
    playwright_api = pytest.importorskip("playwright.sync_api")
    with playwright_api.sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield instance
        instance.close()


def screenshot_dir(tmp_path: Path) -> Path:
    target = Path(os.environ.get("VSE_SCREENSHOTS", tmp_path / "screenshots"))
    target.mkdir(parents=True, exist_ok=True)
    return target


def test_search_select_review_reload(browser, tmp_path):
    shots = screenshot_dir(tmp_path)
    with running_app(tmp_path / "data", reviewer="browser-tester") as (url, app):
        page = browser.new_page(viewport={"width": 1280, "height": 1100})
        page.goto(url)
        page.get_by_label("Describe an image").fill("a red apple")
        page.get_by_role("button", name="Search", exact=True).click()
        thumbnails = page.locator("#results .thumbnail-item")
        thumbnails.first.wait_for(timeout=30_000)
        assert thumbnails.count() >= 5
        thumbnails.first.click()
        page.locator("#captions [data-testid='cell-4-0']").wait_for(timeout=30_000)  # five caption rows
        assert page.locator("#captions [role=gridcell][data-col='0']").count() == 5
        assert page.locator("#captions [data-testid='cell-0-0']").inner_text().strip()
        page.screenshot(path=str(shots / "search.png"), full_page=True)

        page.get_by_role("tab", name="Review tags").click()
        boxes = page.locator("#review-tags input[type=checkbox]")
        boxes.first.wait_for(timeout=30_000)
        item = app.current_item(app.next_position(0, "browser-tester", include_current=True))
        suggested = [boxes.nth(k).is_checked() for k in range(boxes.count())]
        rows = app.tag_rows(app.queue[app.next_position(0, "browser-tester", include_current=True)])
        assert suggested == [p >= 0.5 for _, p in rows]  # the likely wrong tags come ticked
        assert "likely wrong" in page.locator("#review-tags label").first.inner_text()
        page.locator("body").click(position={"x": 5, "y": 5})  # keys act outside text fields
        page.keyboard.press("1")  # toggles the first (most suspicious) tag: saved at once
        page.get_by_text("1 images reviewed by you").wait_for(timeout=30_000)
        first_vote = app.store.votes(user="browser-tester")[0]
        assert first_vote.image_id == item.id
        assert first_vote.verdict == ("right" if suggested[0] else "wrong")
        page.screenshot(path=str(shots / "review.png"), full_page=True)
        page.keyboard.press("Enter")  # next image: the shown verdicts of the other tags are recorded
        page.wait_for_function(
            "() => document.querySelector('#review-tags') && !document.body.innerText.includes('Image 1 of')",
            timeout=30_000,
        )
        verdicts = {v.tag for v in app.store.votes(image_id=item.id, user="browser-tester")}
        assert len(verdicts) == len(rows)  # every tag of the first image has a verdict now

        page.get_by_label("Reviewer name").fill("remembered-name")
        page.get_by_label("Reviewer name").blur()
        page.wait_for_timeout(500)
        page.reload()
        page.get_by_role("tab", name="Review tags").click()
        page.locator("#review-tags input[type=checkbox]").first.wait_for(timeout=30_000)
        assert page.get_by_label("Reviewer name").input_value() == "remembered-name"  # kept by the browser
        page.close()
    assert (shots / "search.png").stat().st_size > 10_000 and (shots / "review.png").stat().st_size > 10_000
    shutil.rmtree(tmp_path / "data", ignore_errors=True)


HOSTILE = "<img src=x onerror=alert(1)>"


def hostile_gallery(folder: Path) -> Path:
    from vse.serving.gallery import thumbnail_bytes, write_gallery
    from vse.testing.shapes import draw

    rows = []
    for index, (colour, shape) in enumerate([("red", "circle"), ("blue", "square"), ("green", "triangle")]):
        buffer = __import__("io").BytesIO()
        draw(colour, shape).save(buffer, format="PNG")
        rows.append({"id": f"x{index}", "image": thumbnail_bytes(buffer.getvalue()), "title": f"{HOSTILE} title {index}",
                     "captions": [f"{HOSTILE} a {colour} {shape}", "<script>alert(2)</script>"],
                     "tags": [HOSTILE, "<b>bold</b>", colour], "category": "x", "split": "test"})  # fmt: skip
    write_gallery(rows, folder)
    return folder


def test_hostile_text_is_shown_literally_and_runs_nothing(browser, tmp_path):
    gallery = hostile_gallery(tmp_path / "gallery")
    with running_app(tmp_path / "data", gallery=str(gallery), reviewer="<i>me</i>") as (url, _):
        page = browser.new_page(viewport={"width": 1280, "height": 1100})
        dialogs = []
        page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
        page.goto(url)
        page.get_by_label("Describe an image").fill(HOSTILE)
        page.get_by_role("button", name="Search", exact=True).click()
        page.locator("#results .thumbnail-item").first.wait_for(timeout=30_000)
        page.locator("#results .thumbnail-item").first.click()
        page.locator("#captions [data-testid='cell-0-0']").wait_for(timeout=30_000)
        assert page.get_by_text(HOSTILE, exact=False).count() >= 2  # title, captions, tags shown as text
        page.get_by_role("tab", name="Review tags").click()
        page.locator("#review-tags label").first.wait_for(timeout=30_000)
        labels = page.locator("#review-tags label").all_inner_texts()
        assert any(HOSTILE in label for label in labels) and any("<b>bold</b>" in label for label in labels)
        page.wait_for_timeout(500)
        assert dialogs == []
        assert page.locator("img[src='x']").count() == 0  # no element was created from the text
        page.close()


def test_startup_status_page_then_the_app_on_the_same_port(browser, tmp_path):
    """While a gallery is indexed the port shows progress; the page turns into the app by itself."""
    import app as app_module
    from vse.testing.app_runner import free_port

    status = app_module.StartupStatus()
    waiting = app_module.status_page(status)
    port = free_port()
    waiting.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    page = browser.new_page()
    demo = None
    try:
        page.goto(f"http://127.0.0.1:{port}/")
        page.get_by_text("The app is starting").wait_for(timeout=30_000)
        status.update("indexing the gallery's images", 64, 200)
        page.get_by_text("indexing the gallery's images: 64 of 200").wait_for(timeout=30_000)
        config = app_module.AppConfig(str(ASSETS / "model"), str(ASSETS / "gallery"), str(tmp_path / "data"))
        demo, _ = app_module.create_demo(config, status.update)
        waiting.close()
        demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
        page.get_by_label("Describe an image").wait_for(timeout=60_000)  # reloaded into the app itself
    finally:
        page.close()
        waiting.close()
        if demo is not None:
            demo.close()


def test_hostile_upload_gets_its_message_in_the_page(browser, tmp_path):
    """A broken upload, chosen in the page as a user would, is refused with a message that says what is wrong."""
    from vse.testing.hostile import IMAGE_CASES

    broken = tmp_path / "holiday.png"
    broken.write_bytes(IMAGE_CASES["truncated png"][0])
    with running_app(tmp_path / "data") as (url, _):
        page = browser.new_page(viewport={"width": 1280, "height": 1100})
        page.goto(url)
        page.get_by_text("Search with an image").dispatch_event("click")  # an idle status layer covers it
        page.locator("input[type=file][accept='image/*']").set_input_files(str(broken))
        page.get_by_role("button", name="Describe this image").dispatch_event("click")
        page.get_by_text("This image cannot be used").first.wait_for(timeout=30_000)
        assert "not a readable image" in page.get_by_text("This image cannot be used").first.inner_text()
        page.close()


def test_sign_in_with_gradios_mocked_oauth_then_review(browser, tmp_path, monkeypatch):
    """The OAuth path in a browser: Gradio's mocked sign-in (its local stand-in for a Space's Hub login).

    The only fake is the Hub's ``whoami`` call that the mock makes for the local
    token; the login routes, the session cookie, the profile Gradio hands to the
    handlers and the app's checks are the real ones.
    """
    import gradio.oauth

    monkeypatch.setenv("HF_TOKEN", "hf_test_token_not_used_for_any_request")
    fake_user = {"type": "user", "name": "oauth-tester", "fullname": "OAuth Tester", "avatarUrl": ""}
    monkeypatch.setattr(gradio.oauth, "whoami", lambda *args, **kwargs: fake_user)
    with running_app(tmp_path / "data", oauth=True) as (url, app):
        page = browser.new_page(viewport={"width": 1280, "height": 1100})
        page.goto(url)
        page.get_by_role("tab", name="Review tags").click()
        page.get_by_text("Sign in with Hugging Face").first.wait_for(timeout=30_000)
        assert page.locator("#review-tags input[type=checkbox]").first.is_disabled()  # read-only until sign-in
        page.goto(f"{url}login/huggingface")  # what the login button opens
        page.get_by_role("tab", name="Review tags").click()
        page.get_by_text("oauth-tester").first.wait_for(timeout=30_000)  # the button shows who is signed in
        boxes = page.locator("#review-tags input[type=checkbox]")
        page.wait_for_function(
            "() => { const b = document.querySelector('#review-tags input[type=checkbox]'); return b && !b.disabled; }",
            timeout=30_000,
        )
        boxes.first.click()
        page.get_by_text("1 images reviewed by you").wait_for(timeout=30_000)
        assert {vote.user for vote in app.store.votes()} == {"oauth-tester"}  # the Hub name, not a typed one
        page.close()
