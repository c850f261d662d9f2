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
prefix.  Then ``--together`` reviewers work at once through the API, with the
app's review leases off and on, and the reviews that repeated another
reviewer's image are counted.  Writes the "review-progress" section of
docs/PERFORMANCE.md.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import sys
import tempfile
import threading
import time
import types
from collections.abc import Iterator
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


@contextlib.contextmanager
def serving(app) -> Iterator[str]:
    """The app's UI and API on a free loopback port; yields its URL."""
    import app as app_module

    demo = app_module.queued(app_module.build_ui(app))
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        demo.close()
        demo.state_holder.session_data.clear()


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
        with serving(app) as url:
            client = GradioHTTPClient(url)
            progress_first, progress = review_session(client, "progress-reviewer", reviews)
            app.next_position = types.MethodType(full_scan_next_position, app)
            scan_first, scan = review_session(client, "full-scan-reviewer", reviews)
    return {"reviewed": reviewed, "votes": votes, "progress_first": progress_first, "progress": progress,
            "scan_first": scan_first, "scan": scan}  # fmt: skip


def work_together(service, lease_seconds: float, reviewers: int, reviews: int, think: float) -> dict:
    """``reviewers`` people reviewing at once through the API, each ``reviews`` images, pausing about ``think``
    seconds on each; how many reviews they made and how many different images those covered."""
    import app as app_module
    from vse.serving.feedback import FeedbackStore

    with tempfile.TemporaryDirectory() as data_dir:
        store = FeedbackStore(Path(data_dir) / "votes.db")
        config = app_module.AppConfig(data_dir=data_dir, votes_per_minute=10**9, review_lease_seconds=lease_seconds)
        errors: list[str] = []
        with serving(app_module.VSEApp(service, store, config)) as url:

            def review(person: int) -> None:
                client, rng, name = GradioHTTPClient(url), random.Random(person), f"together-{person}"
                try:
                    for _ in range(reviews):
                        task = client.predict(name, api_name="/review_next")[0]
                        if task["image_id"] is None:
                            return
                        time.sleep(rng.uniform(0, 2 * think))
                        shown = [t["tag"] for t in task["tags"]]
                        client.predict(task["image_id"], [], shown, [], name, api_name="/review")
                except Exception as err:  # reported, not raised from a thread
                    errors.append(f"{type(err).__name__}: {err}")

            threads = [threading.Thread(target=review, args=(person,)) for person in range(reviewers)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        votes = store.votes()
    made = len({(vote.user, vote.image_id) for vote in votes})
    return {"reviews": made, "images": len({vote.image_id for vote in votes}), "errors": errors}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.review_progress", description=__doc__.split("\n\n")[0])
    parser.add_argument("--gallery-size", type=int, default=100_000)
    parser.add_argument("--reviewed", type=int, nargs="+", default=[0, 1000, 10_000, 50_000])
    parser.add_argument("--reviews", type=int, default=30, help="images the timed reviewer reviews, per method")
    parser.add_argument("--together", type=int, default=4, help="reviewers working at once (0: not measured)")
    parser.add_argument("--think", type=float, default=0.5, help="mean seconds each of them spends on an image")
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
    together = ""
    if args.together > 0:
        shared = []
        for label, lease in (("off (`--review-lease-seconds=0`)", 0.0), ("on (600 s, the default)", 600.0)):
            result = work_together(service, lease, args.together, args.reviews, args.think)
            for error in result["errors"][:3]:
                print("error:", error)
            shared.append([label, result["reviews"], result["images"], result["reviews"] - result["images"],
                           f"{100 * (result['reviews'] - result['images']) / max(1, result['reviews']):.0f}%"])  # fmt: skip
        together = markdown_table(
            ["leases", "reviews made", "different images", "reviews of an image someone else reviewed", "wasted"],
            shared,
        )
        print(together)
    if not args.no_report:
        command = "python -m benchmarks.review_progress " + " ".join(argv if argv is not None else sys.argv[1:])
        body = f"""## Review queue progress

`{command.strip()}` · {machine_line()} · gallery of {len(service.gallery):,} images, one reviewer needed per
image. A votes database with that many of the queue's first images already reviewed, the app started on it,
then a new reviewer's `/review_next` calls through the HTTP API, each followed by a `/review` of the image it
gave ({args.reviews} images per method). "p50"/"p99": the later calls with the app's `ReviewProgress`
(`vse/serving/review_progress.py`: the done prefix remembered, indexed queries on a few images); "first": the
first call after the start, which finds the done prefix from every vote once (and is the server's first
request: about 0.4 s with no vote stored). "full scan": the method it
replaced (every vote counted and the queue walked from its start on each call), timed on the same app in the
same run.

{table}
"""
        if together:
            body += f"""
**Reviewers at work together.** {args.together} simulated reviewers at once, each asking `/review_next`, spending
a random 0-{2 * args.think:g} s on the image and sending its `/review`, {args.reviews} images each; one review per image
is needed, so a second review of an image is wasted work. With leases an image handed to one reviewer is kept from
the others until they review or skip it (`Leases`, `VSE_REVIEW_LEASE_SECONDS`).

{together}
"""
        write_section("review-progress", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
