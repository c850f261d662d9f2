"""Review-progress benchmark: what ``/review_next`` costs once many images were reviewed, 100k gallery.

    python -m benchmarks.review_progress [--gallery-size 100000] [--reviewed 0 1000 10000 50000] [--reviews 30]

For each number of images already reviewed, a fresh votes database gets that many
images from the top of the review queue reviewed by earlier reviewers (their votes
merged in, as a backup restore does), and the app starts on it (a restart).  A
new simulated reviewer then works through the running app's HTTP API as the
feedback-loop benchmark does: ``/review_next`` for the next image, ``/review``
marking its tags right, ``--reviews`` times.  Timed twice in the same run: with
the app's ``ReviewProgress`` (a remembered done prefix, indexed queries on a few
images) and with the full scan it replaced (every vote counted, the queue walked
from its start, ``full_scan_next_position`` below), swapped in on the same app.
The first ``/review_next`` after the start is reported apart: it finds the done
prefix.  Writes the "review-progress" section of docs/PERFORMANCE.md.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import types
from pathlib import Path

from benchmarks.app import scaled_service
from benchmarks.common import GradioHTTPClient, free_port, machine_line, markdown_table, percentile_ms, write_section


def full_scan_next_position(app, position: int, user: str | None, include_current: bool = False) -> int | None:
    """The next reviewable position as the app found it before ``ReviewProgress``: every vote, every position."""
    queue = app.ready_queue()
    counts, mine = app.store.reviewer_counts(), app.store.reviewed_images(user) if user else set()
    for step in range(0 if include_current else 1, len(queue) + 1):
        candidate = (position + step) % len(queue)
        image_id = app.current_item(candidate).id
        if image_id not in mine and counts.get(image_id, 0) < app.config.reviews_per_image:
            return candidate
    return None


def earlier_reviews(app, count: int):
    """Votes of earlier reviewers on the queue's first ``count`` images: every tag judged right."""
    from vse.serving.feedback import Vote

    items = app.service.gallery.items
    for position in range(count):
        item = items[app.queue[position]]
        for tag in dict.fromkeys(item.tags):
            yield Vote(f"earlier-{position % 7}", 1.0, item.id, tag, "right", "benchmark")


def review_session(client: GradioHTTPClient, name: str, reviews: int) -> tuple[float, list[float]]:
    """(seconds of the first ``/review_next``, seconds of each later one), reviewing every image handed out."""
    first, later = 0.0, []
    for step in range(reviews + 1):
        start = time.perf_counter()
        task = client.predict(name, api_name="/review_next")[0]
        elapsed = time.perf_counter() - start
        if step == 0:
            first = elapsed
        else:
            later.append(elapsed)
        if task["image_id"] is None:
            break
        client.predict(task["image_id"], [], [t["tag"] for t in task["tags"]], [], name, api_name="/review")
    return first, later


def measure(service, reviewed: int, reviews: int) -> dict:
    import app as app_module
    from vse.serving.feedback import FeedbackStore

    with tempfile.TemporaryDirectory() as data_dir:
        store = FeedbackStore(Path(data_dir) / "votes.db")
        config = app_module.AppConfig(data_dir=data_dir, votes_per_minute=10**9)
        seed = app_module.VSEApp(service, store, config)
        store.merge(earlier_reviews(seed, reviewed))
        votes = store.count()
        app = app_module.VSEApp(service, store, config)  # a restart over the stored votes
        demo = app_module.queued(app_module.build_ui(app))
        port = free_port()
        demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
        client = GradioHTTPClient(f"http://127.0.0.1:{port}/")
        try:
            progress_first, progress = review_session(client, "progress-reviewer", reviews)
            app.next_position = types.MethodType(full_scan_next_position, app)
            scan_first, scan = review_session(client, "full-scan-reviewer", reviews)
        finally:
            demo.close()
            demo.state_holder.session_data.clear()
    return {"reviewed": reviewed, "votes": votes, "progress_first": progress_first, "progress": progress,
            "scan_first": scan_first, "scan": scan}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.review_progress", description=__doc__.split("\n\n")[0])
    parser.add_argument("--gallery-size", type=int, default=100_000)
    parser.add_argument("--reviewed", type=int, nargs="+", default=[0, 1000, 10_000, 50_000])
    parser.add_argument("--reviews", type=int, default=30, help="images the timed reviewer reviews, per method")
    parser.add_argument("--no-report", action="store_true")
    args = parser.parse_args(argv)
    if max(args.reviewed) + 2 * args.reviews > args.gallery_size:
        parser.error("--reviewed plus twice --reviews must fit in the gallery")
    service = scaled_service(args.gallery_size)
    start = time.perf_counter()
    service.review_queue()
    print(f"gallery {len(service.gallery):,} images, review queue computed in {time.perf_counter() - start:.1f} s")
    rows = []
    for reviewed in args.reviewed:
        result = measure(service, reviewed, args.reviews)
        progress, scan = percentile_ms(result["progress"], 50), percentile_ms(result["scan"], 50)
        rows.append([f"{reviewed:,}", f"{result['votes']:,}", f"{1000 * result['progress_first']:.1f}", progress,
                     percentile_ms(result["progress"], 99), f"{1000 * result['scan_first']:.1f}", scan,
                     f"{scan / progress:.0f}×"])  # fmt: skip
        print(f"reviewed {reviewed}: /review_next p50 {progress:.1f} ms (full scan {scan:.1f} ms)", flush=True)
    table = markdown_table(
        ["images reviewed before", "votes stored", "first /review_next ms", "p50 ms", "p99 ms",
         "full scan: first ms", "full scan: p50 ms", "full scan / progress"], rows,
    )  # fmt: skip
    print(table)
    if not args.no_report:
        command = "python -m benchmarks.review_progress " + " ".join(argv if argv is not None else sys.argv[1:])
        body = f"""## Review queue progress

`{command.strip()}` · {machine_line()} · gallery of {len(service.gallery):,} images, one reviewer needed per
image. A votes database with that many of the queue's first images already reviewed, the app started on it,
then a new reviewer's `/review_next` calls through the HTTP API, each followed by a `/review` of the image it
gave ({args.reviews} images per method). "p50"/"p99": the later calls with the app's `ReviewProgress`
(`vse/serving/review_progress.py`: the done prefix remembered, indexed queries on a few images); "first": the
first call after the start, which finds the done prefix from every vote once. "full scan": the method it
replaced (every vote counted and the queue walked from its start on each call), timed on the same app in the
same run.

{table}
"""
        write_section("review-progress", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
