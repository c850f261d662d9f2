"""Load test: concurrent clients mixing searches, uploads and votes through Gradio's HTTP API.

    python -m benchmarks.load [--clients 32] [--seconds 60] [--think 0] [--ramp 2]

The app runs as its own process (``python app.py``, as deployed) on loopback; the
clients are asynchronous HTTP clients in this process, each looping until the time
is up: a search (60%), an image upload (20%: the file is uploaded, then
``/describe`` is called on it) or a vote (20%), with an optional pause between
requests (``--think``: mean seconds, exponentially distributed; 0 sends the next
request as soon as the last one is answered, the hardest case).  Clients start one
after another over the first ``--ramp`` seconds (evenly spaced), as people arrive: 32
first requests in the same millisecond, on an app that has served none of them, are
a burst of their own (a cold start's first second), not the steady load.  Each client keeps
one Gradio session across its calls, as a browser tab does.  Every request's
latency (client side: queueing included) and every error is recorded, and the
app process's CPU time and peak resident memory are read from /proc.  Writes the
"load" section of docs/RELIABILITY.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import subprocess
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from benchmarks.common import (
    NO_RESULT,
    CallFailed,
    free_port,
    machine_line,
    markdown_table,
    percentile_ms,
    read_event_line,
    write_section,
)

ROOT = Path(__file__).resolve().parents[1]
RELIABILITY = ROOT / "docs" / "RELIABILITY.md"
QUERIES = ["a red apple", "a flag with a star", "a telephone", "a clock", "a house", "a guitar", "a car", "a bird"]
ACTIONS = ("search", "upload", "vote")
TARGET_P99_S = 1.0  # /search p99 the scale issue asks for under 32 mixed clients


async def call(http, url: str, api: str, data: list, session: str) -> list:
    """One call of Gradio's HTTP API: POST the inputs, then read the result from the event stream.

    ``session``: the client's session hash, kept across its calls as a browser tab (and
    ``gradio_client``) keeps one; without it Gradio builds a new session state per call.
    """
    response = await http.post(f"{url}gradio_api/call/{api}", json={"data": data, "session_hash": session})
    response.raise_for_status()
    event_id = response.json()["event_id"]
    event = None
    async with http.stream("GET", f"{url}gradio_api/call/{api}/{event_id}") as stream:
        async for line in stream.aiter_lines():
            event, result = read_event_line(line, event, api)
            if result is not NO_RESULT:
                return result
    raise CallFailed(f"{api}: the stream ended without a result")


async def upload_and_describe(http, url: str, image: bytes, session: str) -> list:
    response = await http.post(f"{url}gradio_api/upload", files={"files": ("upload.png", image, "image/png")})
    response.raise_for_status()
    (path,) = response.json()
    return await call(http, url, "describe", [{"path": path, "meta": {"_type": "gradio.FileData"}}], session)


async def client_loop(
    http, url: str, client_id: int, deadline: float, think: float, image: bytes, items: list, log: dict,
    delay: float = 0.0,
) -> None:  # fmt: skip
    rng = random.Random(client_id)
    session = f"load-{client_id}-{uuid.uuid4().hex[:12]}"
    await asyncio.sleep(delay)  # this client's arrival within the ramp
    while time.monotonic() < deadline:
        roll = rng.random()
        action = "search" if roll < 0.6 else "upload" if roll < 0.8 else "vote"
        start = time.perf_counter()
        try:
            if action == "search":
                await call(http, url, "search", [rng.choice(QUERIES), 12], session)
            elif action == "upload":
                await upload_and_describe(http, url, image, session)
            else:
                image_id, tags = rng.choice(items)
                verdict = rng.choice(["wrong", "right"])
                await call(http, url, "vote", [image_id, rng.choice(tags), verdict, f"load-{client_id}"], session)
            log[action].append(time.perf_counter() - start)
        except Exception as err:  # noqa: BLE001 - every failure is counted and reported
            log[f"{action} errors"].append(f"{type(err).__name__}: {err}"[:200])
        if think > 0:
            await asyncio.sleep(rng.expovariate(1 / think))


async def run_clients(
    url: str, clients: int, seconds: float, think: float, image: bytes, items: list, ramp: float = 0.0
) -> tuple:
    import httpx

    log: dict[str, list] = defaultdict(list)
    limits = httpx.Limits(max_connections=2 * clients, max_keepalive_connections=2 * clients)
    async with httpx.AsyncClient(timeout=120, limits=limits) as http:
        deadline = time.monotonic() + seconds
        start = time.perf_counter()
        await asyncio.gather(
            *(client_loop(http, url, c, deadline, think, image, items, log, ramp * c / clients) for c in range(clients))
        )
        return log, time.perf_counter() - start


def tagged_items(gallery_source: str, count: int) -> list[tuple[str, list[str]]]:
    """(image id, tags) of the first ``count`` tagged images of the gallery the app serves."""
    from vse.serving.gallery import load_gallery

    gallery, _ = load_gallery(gallery_source)
    items = []
    for position in range(len(gallery)):
        item = gallery.items[position]
        if item.tags:
            items.append((item.id, list(item.tags)))
        if len(items) == count:
            break
    if not items:
        raise RuntimeError(f"the gallery {gallery_source} has no tagged image to vote on")
    return items


class AppProcess:
    """``python app.py`` on a free loopback port, with its CPU time and peak memory read from /proc."""

    def __init__(self, data_dir: Path, extra: list[str]):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        command = [
            sys.executable,
            "app.py",
            f"--port={self.port}",
            "--host=127.0.0.1",
            f"--data_dir={data_dir}",
            *extra,
        ]
        self.log = open(data_dir.parent / "app.log", "w")  # noqa: SIM115 - closed in stop()
        # No VSE_* setting of this shell reaches it: a vote backup repo would receive the synthetic votes.
        environment = {name: value for name, value in os.environ.items() if not name.startswith("VSE_")}
        self.process = subprocess.Popen(command, cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT, env=environment)

    def wait_ready(self, timeout: float = 600) -> None:
        from benchmarks.common import GradioHTTPClient

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.log.flush()
                tail = "\n".join(Path(self.log.name).read_text(errors="replace").splitlines()[-40:])
                raise RuntimeError(f"the app exited with {self.process.returncode}; its log ends:\n{tail}")
            try:
                GradioHTTPClient(self.url).predict(api_name="/ping")
                return
            except Exception:  # noqa: BLE001 - not up yet
                time.sleep(0.5)
        raise TimeoutError(f"the app did not answer /ping within {timeout:.0f} s")

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def peak_rss_mb(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


def summary(log: dict, elapsed: float) -> tuple[list[list], int]:
    rows, errors = [], 0
    for action in ACTIONS:
        done, failed = log[action], log[f"{action} errors"]
        errors += len(failed)
        p50, p99 = (percentile_ms(done, 50), percentile_ms(done, 99)) if done else (float("nan"), float("nan"))
        rows.append([action, len(done), len(failed), p50, p99, len(done) / elapsed])
    every = [s for action in ACTIONS for s in log[action]]
    rows.append(["all", len(every), errors, percentile_ms(every, 50), percentile_ms(every, 99), len(every) / elapsed])
    return rows, errors


@dataclass
class Round:
    """One load round: clients with a given mean pause, what they got and what the app spent."""

    think: float
    log: dict
    elapsed: float
    cpu_cores: float  # the app process's CPU seconds per second of the round

    def rows(self) -> tuple[list[list], int]:
        rows, errors = summary(self.log, self.elapsed)
        label = f"pause {self.think:g} s" if self.think > 0 else "no pause"
        return [[label, *row] for row in rows], errors


def main(argv: list[str] | None = None) -> int:
    from benchmarks.startup import query_latency

    parser = argparse.ArgumentParser(prog="python -m benchmarks.load", description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=60.0, help="length of each round")
    parser.add_argument("--think", type=float, nargs="+", default=[0.0, 3.0],
                        help="mean pause between a client's requests, seconds: one round per value")  # fmt: skip
    parser.add_argument("--ramp", type=float, default=2.0, help="seconds over which the clients arrive, evenly spaced")
    parser.add_argument("--queries", type=int, default=200, help="/ping and /search calls timed alone first")
    parser.add_argument("--gallery", default=str(ROOT / "assets" / "gallery"), help="the gallery app.py serves")
    parser.add_argument("--app-arg", action="append", default=[], help="another option for app.py (repeatable)")
    parser.add_argument("--no-report", action="store_true")
    args = parser.parse_args(argv)
    rounds = []
    with tempfile.TemporaryDirectory() as folder:
        app = AppProcess(Path(folder) / "data", [f"--gallery={args.gallery}", *args.app_arg])
        try:
            app.wait_ready()
            alone = query_latency(app.url, args.queries) if args.queries else {}
            image = upload_image()
            items = tagged_items(args.gallery, 200)
            for think in args.think:
                cpu_before = app.cpu_seconds()
                log, elapsed = asyncio.run(
                    run_clients(app.url, args.clients, args.seconds, think, image, items, args.ramp)
                )
                rounds.append(Round(think, log, elapsed, (app.cpu_seconds() - cpu_before) / elapsed))
            peak_mb = app.peak_rss_mb()
        finally:
            app.stop()
        stored = stored_votes(Path(folder) / "data")
    alone_rows = [[name, len(s), percentile_ms(s, 50), percentile_ms(s, 99)] for name, s in alone.items()]
    rows, errors = [], 0
    for one in rounds:
        round_rows, round_errors = one.rows()
        rows, errors = rows + round_rows, errors + round_errors
        search_p99 = round_rows[0][5] / 1000
        verdict = "met" if search_p99 <= TARGET_P99_S else "not met"
        print(f"{round_rows[0][0]}: app {one.cpu_cores:.2f} cores busy; /search p99 {search_p99:.2f} s "
              f"(target ≤ {TARGET_P99_S:.0f} s): {verdict}")  # fmt: skip
    for row in alone_rows:
        print(f"alone, {row[0]}: p50 {row[2]:.1f} ms, p99 {row[3]:.1f} ms")
    for row in rows:
        print(f"{row[0]:>12} {row[1]:>7}: {row[2]} ok, {row[3]} errors, p50 {row[4]:.0f} ms, p99 {row[5]:.0f} ms, "
              f"{row[6]:.1f}/s")  # fmt: skip
    acknowledged = sum(len(one.log["vote"]) for one in rounds)
    print(
        f"votes: {acknowledged} acknowledged, {stored} stored (distinct reviewer, image, tag); peak RSS {peak_mb:.0f} MB"
    )
    for one in rounds:
        for key in [k for k in one.log if k.endswith("errors")]:
            for message in one.log[key][:3]:
                print(key, message)
    if not args.no_report:
        command = "python -m benchmarks.load " + " ".join(argv if argv is not None else sys.argv[1:])
        default_gallery = Path(args.gallery).resolve() == (ROOT / "assets" / "gallery").resolve()
        served = "the `assets/` default" if default_gallery and not args.app_arg else "the gallery and options given"
        busy = ", ".join(f"{one.cpu_cores:.2f} ({one.rows()[0][0][0]})" for one in rounds)
        body = f"""## Load

`{command.strip()}` · {machine_line()} · `python app.py` on {served}, in its own process on loopback,
called through Gradio's HTTP API.

Alone first: one client, {args.queries} calls each, without a session (as `curl`) and with one kept across
calls (as a browser tab or `gradio_client`; without one Gradio builds a new session state per call).
First views: of {args.queries} varied searches, those whose 12 result images had not been shown before,
so their thumbnails are written then; the other rows repeat one query set, shown once untimed before them.

{markdown_table(["call", "calls", "p50 ms", "p99 ms"], alone_rows)}

Then {args.clients} clients for {args.seconds:.0f} s per round (arriving evenly over its first {args.ramp:g} s), each
looping over a search (60%), an upload
(20%: file upload, then `/describe`) and a vote (20%), keeping one session, with the round's mean pause
between its requests (exponentially distributed; no pause is the hardest case, a queue that never empties).
Latency is per request, client side, queueing included. The clients share the machine's 2 cores with the
app; the app process kept {busy} cores busy and peaked at {peak_mb:,.0f} MB resident. {acknowledged} votes
were acknowledged and the store holds {stored} (one per reviewer, image and tag: a repeated vote replaces
the earlier one).

{markdown_table(["round", "request", "completed", "errors", "p50 ms", "p99 ms", "per second"], rows)}
"""
        write_section("load", body, RELIABILITY)
    return 0 if errors == 0 else 1


def stored_votes(data_dir: Path) -> int:
    """Votes in the app's store after it stopped."""
    from vse.serving.feedback import FeedbackStore

    return FeedbackStore(data_dir / "votes.db").count()


def upload_image() -> bytes:
    """A photo-sized PNG for the upload requests (a gallery image would be a duplicate of one)."""
    import io

    from vse.testing.shapes import draw

    buffer = io.BytesIO()
    draw("red", "circle", size=640, jitter=7).save(buffer, format="PNG")
    return buffer.getvalue()


if __name__ == "__main__":
    sys.exit(main())
