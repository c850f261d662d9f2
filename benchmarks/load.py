"""Load test: concurrent gradio_client clients mixing searches, uploads and votes, on loopback.

    python -m benchmarks.load [--clients 32] [--seconds 60]

Each client loops until the time is up, picking a search (60%), an image upload
(20%) or a vote (20%); every request's latency and every error is recorded.
Writes the "load" section of docs/RELIABILITY.md.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

from benchmarks.common import machine_line, markdown_table, percentile_ms, run_to_completion, write_section

RELIABILITY = Path(__file__).resolve().parents[1] / "docs" / "RELIABILITY.md"
QUERIES = ["a red apple", "a flag with a star", "a telephone", "a clock", "a house", "a guitar", "a car", "a bird"]


def client_loop(
    url: str, client_id: int, deadline: float, upload: str, items: list, log: dict, lock: threading.Lock
) -> None:
    from gradio_client import Client, handle_file

    rng = random.Random(client_id)
    client = Client(url, verbose=False)
    while time.monotonic() < deadline:
        roll = rng.random()
        action = "search" if roll < 0.6 else "upload" if roll < 0.8 else "vote"
        start = time.perf_counter()
        try:
            if action == "search":
                client.predict(rng.choice(QUERIES), 12, api_name="/search")
            elif action == "upload":
                client.predict(handle_file(upload), api_name="/describe")
            else:
                item = rng.choice(items)
                client.predict(
                    item.id,
                    rng.choice(item.tags),
                    rng.choice(["wrong", "right"]),
                    f"load-{client_id}",
                    api_name="/vote",
                )
            with lock:
                log[action].append(time.perf_counter() - start)
        except Exception as err:  # noqa: BLE001 - every failure is counted and reported
            with lock:
                log[f"{action} errors"].append(repr(err)[:200])


def main(argv: list[str] | None = None) -> int:
    from vse.testing.app_runner import running_app

    parser = argparse.ArgumentParser(prog="python -m benchmarks.load", description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--no-report", action="store_true")
    args = parser.parse_args(argv)
    log: dict[str, list] = defaultdict(list)
    lock = threading.Lock()
    with tempfile.TemporaryDirectory() as folder, running_app(Path(folder) / "data") as (url, app):
        upload = str(Path(folder) / "upload.png")
        app.service.gallery.image(0).save(upload)
        items = [app.service.gallery.items[i] for i in app.queue[:500]]
        deadline = time.monotonic() + args.seconds
        threads = [
            threading.Thread(target=client_loop, args=(url, c, deadline, upload, items, log, lock))
            for c in range(args.clients)
        ]
        elapsed = run_to_completion(threads)
        stored = app.store.count()
    rows, total, errors = [], 0, 0
    for action in ("search", "upload", "vote"):
        done, failed = log[action], log[f"{action} errors"]
        total, errors = total + len(done), errors + len(failed)
        rows.append([action, len(done), len(failed), percentile_ms(done, 50) if done else float("nan"),
                     percentile_ms(done, 99) if done else float("nan"), len(done) / elapsed])  # fmt: skip
    rows.append(["all", total, errors, percentile_ms(sum((log[a] for a in ("search", "upload", "vote")), []), 50),
                 percentile_ms(sum((log[a] for a in ("search", "upload", "vote")), []), 99), total / elapsed])  # fmt: skip
    for row in rows:
        print(f"{row[0]:>7}: {row[1]} ok, {row[2]} errors, p50 {row[3]:.0f} ms, p99 {row[4]:.0f} ms, {row[5]:.1f}/s")
    for key in [k for k in log if k.endswith("errors")]:
        for message in log[key][:3]:
            print(key, message)
    if not args.no_report:
        command = "python -m benchmarks.load " + " ".join(argv if argv is not None else sys.argv[1:])
        body = f"""## Load

`{command.strip()}` · {machine_line()} · {args.clients} `gradio_client` clients on loopback for
{elapsed:.0f} s against the app on the `assets/` default (searches 60%, uploads 20%, votes 20%).
Latency is per request, client side, including queueing; {stored} distinct votes were stored.

{markdown_table(["request", "completed", "errors", "p50 ms", "p99 ms", "per second"], rows)}
"""
        write_section("load", body, RELIABILITY)
    return 0 if errors == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
