"""The UI in a real headless Chromium (Debian's), driven by Playwright.

Type a query, see results, open an image's nearest captions, mark a tag wrong,
reload, and find the vote recorded; screenshots of both tabs are saved (to
docs/screenshots when VSE_SCREENSHOTS=docs/screenshots is set).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.app_fixtures import ASSETS, running_app

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
        first_tag = page.locator("#review-tags input[type=checkbox]").first
        first_tag.wait_for(timeout=30_000)
        label = page.locator("#review-tags label").first.inner_text().strip()
        first_tag.check()
        page.get_by_text("1 images reviewed by you").wait_for(timeout=30_000)
        page.screenshot(path=str(shots / "review.png"), full_page=True)

        page.reload()
        page.get_by_role("tab", name="Review tags").click()
        page.locator("#review-tags input[type=checkbox]").first.wait_for(timeout=30_000)
        assert page.locator("#review-tags input[type=checkbox]").first.is_checked()  # the stored vote shows
        votes = app.store.votes(user="browser-tester")
        assert [(v.tag, v.verdict) for v in votes] == [(label.lower(), "wrong")] or votes[0].verdict == "wrong"
        page.close()
    assert (shots / "search.png").stat().st_size > 10_000 and (shots / "review.png").stat().st_size > 10_000
    shutil.rmtree(tmp_path / "data", ignore_errors=True)
