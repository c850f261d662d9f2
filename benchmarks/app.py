"""App benchmark: text queries through gradio_client and Gradio's HTTP API against the running app, 100k gallery.

    python -m benchmarks.app [--gallery-size 100000] [--queries 200] [--clients 16]

The gallery is the demo gallery repeated (new ids, the same thumbnails) up to the
requested size, with the demo's real image embeddings plus a little noise, so
that the index has the size of a real 100k gallery.  Measures the end-to-end
latency of the app's /search endpoint (encode the query, search, load and send
12 thumbnails) for one client alone and for several concurrent clients, on
loopback.  Writes the "app" section of docs/PERFORMANCE.md.
"""

from __future__ import annotations

import argparse
import functools
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import (
    GradioHTTPClient,
    free_port,
    machine_line,
    markdown_table,
    percentile_ms,
    run_to_completion,
    write_section,
)

ROOT = Path(__file__).resolve().parents[1]


def scaled_service(size: int):
    """A RetrievalService over the demo gallery repeated to ``size`` images."""
    from vse.model import VSEModel
    from vse.serving.gallery import Gallery, GalleryEmbeddings, GalleryItem, load_gallery, model_digest
    from vse.serving.retrieval import RetrievalService

    base, _ = load_gallery(ROOT / "assets" / "gallery")
    base_emb = GalleryEmbeddings.load(
        ROOT / "assets" / "index", model_digest(ROOT / "assets" / "model"), base.fingerprint
    )
    items, rows = [], []
    for copy in range(-(-size // len(base))):
        for index, item in enumerate(base.items):
            if len(items) == size:
                break
            caption = item.captions if copy == 0 else []
            items.append(
                GalleryItem(f"{item.id}#{copy}", item.image, item.title, caption, item.tags, item.category, item.split)
            )
            rows.append(index)
    gallery = Gallery(items)
    noise = torch.from_numpy(
        np.random.default_rng(0).normal(scale=0.02, size=(size, base_emb.images.shape[1])).astype(np.float32)
    )
    images = torch.nn.functional.normalize(base_emb.images[rows] + noise, dim=1)
    # Only the first copy keeps captions, so its caption pool is a prefix of the demo's.
    captions = base_emb.captions[: len(gallery.caption_texts)]
    embeddings = GalleryEmbeddings(images, captions, base_emb.digest, gallery.fingerprint, base_emb.tags[rows])
    model = VSEModel.from_pretrained(ROOT / "assets" / "model")
    return RetrievalService(model, base_emb.digest, gallery, embeddings)


def make_client(url: str, kind: str, download: bool):
    if kind == "http":
        return GradioHTTPClient(url)
    from gradio_client import Client

    return Client(url, verbose=False, download_files=download)


def timed_queries(client_factory, queries: list[str], results: list[float], errors: list[str], endpoint: str) -> None:
    client = client_factory()
    for query in queries:
        start = time.perf_counter()
        try:
            if endpoint == "/ping":
                client.predict(api_name="/ping")
            else:
                client.predict(query, 12, api_name=endpoint)
            results.append(time.perf_counter() - start)
        except Exception as err:  # noqa: BLE001 - every failure is counted and reported
            errors.append(repr(err)[:200])


def run_clients(
    url: str,
    queries: list[str],
    clients: int,
    endpoint: str = "/search",
    download: bool = False,
    kind: str = "gradio_client",
) -> tuple[list[float], list[str], float]:
    results, errors = [], []
    share = [queries[i::clients] for i in range(clients)]
    factory = functools.partial(make_client, url, kind, download)
    threads = [
        threading.Thread(target=timed_queries, args=(factory, part, results, errors, endpoint)) for part in share
    ]
    return results, errors, run_to_completion(threads)


CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip

# Runs in the page: click Search, resolve when the first result's caption changes.
TIME_ONE_SEARCH = """async () => {
  const results = document.querySelector('#results');
  const firstCaption = () => results.querySelector('.thumbnail-item img')?.getAttribute('alt') ?? '';
  const before = firstCaption();
  const changed = new Promise((resolve, reject) => {
    const observer = new MutationObserver(() => {
      if (firstCaption() !== before) { observer.disconnect(); resolve(); }
    });
    observer.observe(results, {subtree: true, childList: true, attributes: true});
    setTimeout(() => { observer.disconnect(); reject(new Error('no new results within 10 s')); }, 10000);
  });
  const start = performance.now();
  document.querySelector('#search-button').click();
  await changed;
  return performance.now() - start;
}"""


def browser_latencies(url: str, queries: list[str]) -> tuple[list[float], list[str]]:
    """Seconds from clicking Search to the new results in the page, in Debian's headless Chromium."""
    if not Path(CHROMIUM).exists():
        print(f"{CHROMIUM} not found: no browser row")
        return [], []
    from playwright.sync_api import sync_playwright

    samples, errors = [], []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page()
        page.goto(url)
        for element in ("#results", "#search-button"):  # Gradio renders the page after it loads
            page.locator(element).wait_for(timeout=60_000)
        box = page.get_by_label("Describe an image")
        for query in queries:
            try:
                box.fill(query)
                samples.append(page.evaluate(TIME_ONE_SEARCH) / 1000)
            except Exception as err:  # noqa: BLE001 - every failure is counted and reported
                errors.append(repr(err)[:200])
        browser.close()
    return samples, errors


def main(argv: list[str] | None = None) -> int:
    import app as app_module
    from vse.serving.feedback import FeedbackStore

    parser = argparse.ArgumentParser(prog="python -m benchmarks.app", description=__doc__.split("\n\n")[0])
    parser.add_argument("--gallery-size", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--browser-queries", type=int, default=50, help="searches timed in headless Chromium")
    parser.add_argument("--no-report", action="store_true")
    args = parser.parse_args(argv)
    service = scaled_service(args.gallery_size)
    print(f"gallery {len(service.gallery):,} images, index {service.image_index.kind}")
    words = ["apple", "flag", "telephone", "clock", "house", "car", "tree", "star", "guitar", "bird", "arrow", "book"]
    queries = [f"a {words[i % len(words)]} number {i}" for i in range(args.queries)]
    with tempfile.TemporaryDirectory() as data_dir:
        store = FeedbackStore(Path(data_dir) / "votes.db")
        app = app_module.VSEApp(service, store, app_module.AppConfig(data_dir=data_dir))
        app.queue  # noqa: B018 - the review queue, computed before any timing (a page load would start it)
        demo = app_module.queued(app_module.build_ui(app))
        port = free_port()
        demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
        url = f"http://127.0.0.1:{port}/"
        try:
            run_clients(url, queries[:10], 1)  # warm-up
            run_clients(url, queries[:10], 1, kind="http")
            ping, ping_errors, ping_s = run_clients(url, queries, 1, "/ping")
            alone, alone_errors, alone_s = run_clients(url, queries, 1)
            http_ping, http_ping_errors, http_ping_s = run_clients(url, queries, 1, "/ping", kind="http")
            http, http_errors, http_s = run_clients(url, queries, 1, kind="http")
            browser_s = time.perf_counter()
            browser, browser_errors = browser_latencies(url, queries[: args.browser_queries + 3])
            browser, browser_s = browser[3:], time.perf_counter() - browser_s  # the first three warm the page up
            fetched, fetched_errors, fetched_s = run_clients(url, queries[:50], 1, download=True)
            loaded, loaded_errors, loaded_s = run_clients(url, queries * 2, args.clients)
            http_loaded, http_loaded_errors, http_loaded_s = run_clients(url, queries * 2, args.clients, kind="http")
            handler = []
            for query in queries[:100]:
                start = time.perf_counter()
                app.search(query, 12)
                handler.append(time.perf_counter() - start)
        finally:
            demo.close()

    def summary_row(name: str, samples: list[float], errors: list[str], seconds: float) -> list:
        return [
            name,
            len(samples),
            len(errors),
            percentile_ms(samples, 50),
            percentile_ms(samples, 99),
            len(samples) / seconds,
        ]

    rows = [
        summary_row("gradio_client: /ping (its floor), 1 client", ping, ping_errors, ping_s),
        summary_row("gradio_client: /search, 1 client", alone, alone_errors, alone_s),
        summary_row("HTTP API: /ping, 1 client", http_ping, http_ping_errors, http_ping_s),
        summary_row("HTTP API: /search, 1 client", http, http_errors, http_s),
        summary_row("gradio_client: /search + fetching the 12 images, 1 client", fetched, fetched_errors, fetched_s),
        summary_row(f"gradio_client: /search, {args.clients} clients", loaded, loaded_errors, loaded_s),
        summary_row(f"HTTP API: /search, {args.clients} clients", http_loaded, http_loaded_errors, http_loaded_s),
        summary_row("search handler in-process (no HTTP)", handler, [], sum(handler)),
    ]
    if browser or browser_errors:
        row = summary_row("Chromium: click Search → new results in the page", browser, browser_errors, browser_s)
        rows.insert(4, row)
    for row in rows:
        print(
            f"{row[0]:>12}: {row[1]} ok, {row[2]} errors, p50 {row[3]:.1f} ms, p99 {row[4]:.1f} ms, {row[5]:.1f} queries/s"
        )
    for error in (alone_errors + http_errors + browser_errors + loaded_errors + http_loaded_errors)[:5]:
        print("error:", error)
    if not args.no_report:
        command = "python -m benchmarks.app " + " ".join(argv if argv is not None else sys.argv[1:])
        body = f"""## App

`{command.strip()}` · {machine_line()} · gallery of {len(service.gallery):,} images ({service.image_index.kind} index),
`/search` with k = 12 on loopback (text encoding, search, the result list and 12 thumbnail URLs; a browser
then fetches the images in parallel), through two clients: `gradio_client`, which checks its message queue
every 50 ms, so that no call returns faster than a constant `/ping` through it; and Gradio's documented
HTTP API (POST `/gradio_api/call/search`, then the result pushed down an event stream, as `curl` and the
browser receive it), which adds no polling interval. The Chromium row is what a person sees: Debian's
headless Chromium (no GPU, on the same 2 cores as the server) from the click on Search until the page
shows the new first result, so it includes the page's own work of rendering 12 thumbnails and the table. The server runs {app_module.CONCURRENCY["query"]} queries at
a time; more clients queue.

{markdown_table(["load", "queries", "errors", "p50 ms", "p99 ms", "queries/s"], rows)}
"""
        write_section("app", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
