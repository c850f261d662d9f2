"""Start-up benchmark: ``python app.py`` over a large sharded gallery with persisted indexes,
timed from process start to the first answered ``/search``, with its resident memory.

    python -m benchmarks.startup [--images 1000000] [--starts 3] [--workdir cache/startup]

Builds once, in ``<workdir>/<images>/`` (reused by later runs):

- a sharded gallery (``vse.serving.gallery.write_gallery``) of ``--images`` rows: the
  demo gallery's thumbnails, titles, captions and tags repeated under new ids
  (``<id>#<copy>``), so that every row is a real thumbnail with real metadata;
- the app's cached embeddings for the shipped model (``assets/model``) in the folder and
  format ``RetrievalService`` reads (``cache_folder``, ``GalleryEmbeddings.save``).
  Encoding a million images on this CPU would take hours, so these are stand-ins: the
  demo's real embeddings of the same image (and of the same captions) plus a little
  Gaussian noise, normalised; tag-list embeddings are the demo's, unchanged.

Then one warm-up start, which builds and saves the search indexes (its time is
reported apart: it is an index build, not a start), and ``--starts`` timed starts of the
real app as a subprocess.  Each start is timed from ``Popen`` to the first successful
``/search`` answer over Gradio's HTTP API (``benchmarks.common.GradioHTTPClient``),
polled every 0.1 s; its memory is sampled from ``/proc/<pid>/status`` (VmRSS now,
VmHWM the peak).  Writes the "startup" section of docs/PERFORMANCE.md.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks.common import GradioHTTPClient, free_port, machine_line, markdown_table, percentile_ms, write_section

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "assets" / "model"
DEMO_GALLERY = ROOT / "assets" / "gallery"
DEMO_INDEX = ROOT / "assets" / "index"
NOISE = 0.02  # standard deviation per dimension of the noise added to the demo's embeddings
BUILD_FORMAT = 1  # bump when what ``build_workdir`` writes changes
POLL_SECONDS = 0.1
FIRST_QUERY = "a red apple on a table"  # the search a start is timed to
HANDLER_WORDS = (
    "apple",
    "flag",
    "telephone",
    "clock",
    "house",
    "car",
    "tree",
    "star",
    "guitar",
    "bird",
    "arrow",
    "book",
)
LOADED_LINE = re.compile(r"loaded (\d+) images .* in ([\d.]+)s")
BUILT_LINE = re.compile(r"built the (\w+) index \((\S+), (\d+) vectors\) in ([\d.]+) s")


# ------------------------------------------------------------------ the gallery and its embeddings
def copy_positions(size: int, base: int) -> tuple[np.ndarray, np.ndarray]:
    """(copy, position in the demo gallery) of each of ``size`` rows that repeat ``base`` rows in order."""
    rows = np.arange(size, dtype=np.int64)
    return rows // base, rows % base


def gallery_rows(size: int):
    """``size`` gallery rows: the demo gallery's rows repeated under ids ``<id>#<copy>``."""
    from vse.serving.gallery import load_gallery

    base, _ = load_gallery(DEMO_GALLERY)
    items = list(base.items)
    images = [item.image for item in items]
    copies, positions = copy_positions(size, len(items))
    for copy, position in zip(copies.tolist(), positions.tolist(), strict=True):
        item = items[position]
        yield {"id": f"{item.id}#{copy}", "image": images[position], "title": item.title,
               "captions": item.captions, "tags": item.tags, "category": item.category, "split": item.split}  # fmt: skip


def noisy_rows(vectors: np.ndarray, rows: np.ndarray, rng: np.random.Generator, chunk: int = 65536) -> np.ndarray:
    """float32 unit rows ``vectors[rows]`` plus Gaussian noise of ``NOISE`` per dimension, a chunk at a time."""
    out = np.empty((len(rows), vectors.shape[1]), dtype=np.float32)
    for start in range(0, len(rows), chunk):
        part = vectors[rows[start : start + chunk]] + rng.normal(
            scale=NOISE, size=(len(rows[start : start + chunk]), vectors.shape[1])
        )
        out[start : start + chunk] = part / np.linalg.norm(part, axis=1, keepdims=True)
    return out


def stand_in_embeddings(gallery, digest: str):
    """Embeddings of a ``gallery_rows`` gallery made from the demo's (see the module docstring)."""
    import torch

    from vse.serving.gallery import GalleryEmbeddings, load_gallery

    base, _ = load_gallery(DEMO_GALLERY)
    demo = GalleryEmbeddings.load(DEMO_INDEX, digest, base.fingerprint)
    if demo is None:
        raise SystemExit(f"{DEMO_INDEX} holds no embeddings of {MODEL} for {DEMO_GALLERY}")
    rng = np.random.default_rng(0)
    _, positions = copy_positions(len(gallery), len(base))
    # The caption pool of row r is the demo pool's captions owned by the demo row it repeats.
    owners = np.asarray([base.position[owner] for owner in base.caption_owners], dtype=np.int64)
    by_row = np.split(np.argsort(owners, kind="stable"), np.cumsum(np.bincount(owners, minlength=len(base)))[:-1])
    caption_rows = np.concatenate([by_row[p] for p in positions] or [np.zeros(0, np.int64)])
    images = noisy_rows(demo.images.numpy(), positions, rng)
    captions = noisy_rows(demo.captions.numpy(), caption_rows.astype(np.int64), rng)
    tags = demo.tags[torch.from_numpy(positions)] if demo.tags is not None else None
    return GalleryEmbeddings(torch.from_numpy(images), torch.from_numpy(captions), digest, gallery.fingerprint, tags)


def build_workdir(folder: Path, size: int) -> dict:
    """The gallery and cached embeddings of ``size`` images in ``folder`` (built once; see the module docstring)."""
    from vse.serving.gallery import load_gallery, model_digest, write_gallery
    from vse.serving.retrieval import cache_folder

    done = folder / "built.json"
    if done.is_file() and json.loads(done.read_text()).get("format") == BUILD_FORMAT:
        return json.loads(done.read_text())
    start = time.perf_counter()
    shards = write_gallery(gallery_rows(size), folder / "gallery")
    written = time.perf_counter() - start
    gallery, _ = load_gallery(folder / "gallery")
    digest = model_digest(MODEL)
    tick = time.perf_counter()
    embeddings = stand_in_embeddings(gallery, digest)
    embeddings.save(cache_folder(folder / "data", digest, gallery.fingerprint))
    info = {"format": BUILD_FORMAT, "images": size, "shards": len(shards), "captions": int(embeddings.captions.shape[0]),
            "gallery_bytes": sum(p.stat().st_size for p in shards), "gallery_write_s": written,
            "embeddings_s": time.perf_counter() - tick}  # fmt: skip
    done.write_text(json.dumps(info, indent=1))
    return info


# ------------------------------------------------------------------ timed starts
@dataclass
class Start:
    seconds: float  # from Popen to the first answered /search
    rss_mb: float  # VmRSS right after that answer
    peak_mb: float  # VmHWM: the process's peak resident memory until then
    loaded_s: float  # what the app logged as its own loading time ("loaded N images ... in X s")
    builds: list[tuple[str, str, int, float]]  # indexes built in this start: (name, kind, vectors, seconds)
    latency: dict[str, list[float]] | None = None  # after the first answer: seconds per /ping and /search call


def memory_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of a process in MB (0 where /proc does not say)."""
    fields = dict(re.findall(r"^(VmRSS|VmHWM):\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.M))
    return int(fields.get("VmRSS", 0)) / 1024, int(fields.get("VmHWM", 0)) / 1024


def serves_search(http, url: str) -> bool:
    """Whether the app (not the status page shown while it loads) answers: its API lists "search"."""
    try:
        return '"/search"' in http.get(f"{url}/gradio_api/info").text
    except Exception:  # noqa: BLE001 - not listening yet, or between the status page and the app
        return False


def first_answer(url: str, process: subprocess.Popen, timeout: float) -> None:
    """Poll until the app's API lists ``/search`` (as the status page's reload script does), then
    call it until it answers with results; raise if the app exits or ``timeout`` passes.

    Polling the API listing, not ``/search`` itself, keeps the status page from logging an
    error (and spending the app's time on it) at every poll."""
    import httpx

    client, http = GradioHTTPClient(url), httpx.Client(timeout=10)
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the app exited with {process.returncode} before answering")
        if serves_search(http, url):
            try:
                results = client.predict(FIRST_QUERY, 12, api_name="/search")
                if results and results[0]:
                    return
            except Exception:  # noqa: BLE001 - between the status page and the app: poll again
                pass
        time.sleep(POLL_SECONDS)
    raise TimeoutError(f"no answer from {url} within {timeout:.0f} s")


FIRST_VIEW_WORDS = (["red", "old", "small", "round", "wooden", "blue", "happy", "broken", "green", "tall"],
                    ["apple", "flag", "telephone", "clock", "house", "car", "tree", "star", "guitar", "bird",
                     "cat", "boat", "shoe", "key", "moon", "cup", "chair", "fish", "book", "lamp"])  # fmt: skip


def query_latency(url: str, queries: int) -> dict[str, list[float]]:
    """Seconds per call of ``/ping`` and of ``/search`` (k = 12), one client through Gradio's HTTP API,
    without a session (as curl) and with one kept across calls (as a browser tab or gradio_client).

    Thumbnails are written on an image's first view, so searches are timed twice. First views:
    ``queries`` searches for varied phrases, of which only those whose 12 results all differ from
    every result shown before in this process are kept (the app's thumbnail folder should start
    empty: ``timed_start`` empties it). Then the other rounds, on one query set shown once untimed
    beforehand, so that no round pays first views another did not.
    """
    words = ["apple", "flag", "telephone", "clock", "house", "car", "tree", "star", "guitar", "bird"]

    def query(number: int) -> tuple[str, int]:
        return f"a {words[number % len(words)]} number {number}", 12

    latency: dict[str, list[float]] = {"/search, first views, no session": first_views(url, queries)}
    warm = GradioHTTPClient(url)
    for number in range(queries + 5):
        warm.predict(*query(number), api_name="/search")
    for session in (None, f"startup-{time.time_ns()}"):
        client = GradioHTTPClient(url, session=session)
        for endpoint in ("/ping", "/search"):
            samples = [timed(client, () if endpoint == "/ping" else query(n), endpoint) for n in range(queries + 5)]
            latency[f"{endpoint}, {'a session' if session else 'no session'}"] = samples[5:]  # 5 warm the path
    return latency


def first_views(url: str, searches: int) -> list[float]:
    """Seconds of those of ``searches`` varied searches whose 12 results were all shown for the first time."""
    client, samples = GradioHTTPClient(url), []
    answer = client.predict(FIRST_QUERY, 12, api_name="/search")  # what the start's first answer showed
    seen = shown_ids(answer)
    adjectives, nouns = FIRST_VIEW_WORDS
    for number in range(searches):
        text = f"a {adjectives[number % len(adjectives)]} {nouns[(number // len(adjectives)) % len(nouns)]}"
        start = time.perf_counter()
        answer = client.predict(f"{text} {number // (len(adjectives) * len(nouns)) or ''}".strip(), 12,
                                api_name="/search")  # fmt: skip
        seconds = time.perf_counter() - start
        shown = shown_ids(answer)
        if not shown & seen:
            samples.append(seconds)
        seen |= shown
    return samples


def shown_ids(answer: list) -> set[str]:
    """The image ids of a ``/search`` answer (its outputs: the gallery, then the results table)."""
    return {row[2] for row in answer[1]["data"]}


def handler_latency(folder: Path, queries: int, rounds: int = 3) -> dict[str, list[float]]:
    """Seconds per call of the app's search handler (``VSEApp.search``, k = 12) and of the retrieval
    under it (``RetrievalService.search_text``: encoding and index search), in this process over
    the workdir's gallery, as ``app.py`` loads it: ``queries`` distinct queries shown once untimed
    (their thumbnails written), then timed ``rounds`` times."""
    import tempfile

    import app as app_module
    from vse.serving.feedback import FeedbackStore
    from vse.serving.retrieval import RetrievalService

    service = RetrievalService.load(str(MODEL), str(folder / "gallery"), folder / "data")
    texts = [f"a {HANDLER_WORDS[n % len(HANDLER_WORDS)]} number {n}" for n in range(queries)]
    samples: dict[str, list[float]] = {"search handler (VSEApp.search)": [], "encoding and index search": []}
    try:
        with tempfile.TemporaryDirectory() as votes:
            config = app_module.AppConfig(data_dir=str(folder / "data"))
            handler = app_module.VSEApp(service, FeedbackStore(Path(votes) / "votes.db"), config)
            for text in texts:
                handler.search(text, 12)
            for _ in range(rounds):
                for name, call in (("search handler (VSEApp.search)", handler.search),
                                   ("encoding and index search", service.search_text)):  # fmt: skip
                    for text in texts:
                        start = time.perf_counter()
                        call(text, 12)
                        samples[name].append(time.perf_counter() - start)
    finally:
        service.close()
    return samples


def timed(client: GradioHTTPClient, arguments: tuple, endpoint: str) -> float:
    start = time.perf_counter()
    client.predict(*arguments, api_name=endpoint)
    return time.perf_counter() - start


def timed_start(folder: Path, log_path: Path, timeout: float, queries: int = 0) -> Start:
    """Start ``python app.py`` over the workdir's gallery; time and measure it until it answers (then time
    ``queries`` calls of /ping and /search), then stop it."""
    port = free_port()
    command = [sys.executable, "app.py", f"--model={MODEL}", f"--gallery={folder / 'gallery'}",
               f"--data_dir={folder / 'data'}", f"--port={port}"]  # fmt: skip
    if queries:  # first views are timed: no thumbnail written by an earlier run
        shutil.rmtree(folder / "data" / "thumbnails", ignore_errors=True)
    with log_path.open("w") as log:
        start = time.perf_counter()
        process = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        try:
            first_answer(f"http://127.0.0.1:{port}", process, timeout)
            seconds = time.perf_counter() - start
            rss, peak = memory_mb(process.pid)
            latency = query_latency(f"http://127.0.0.1:{port}/", queries) if queries else None
        finally:
            process.terminate()
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    found = LOADED_LINE.findall(log_path.read_text())
    builds = [(name, kind, int(n), float(s)) for name, kind, n, s in BUILT_LINE.findall(log_path.read_text())]
    return Start(seconds, rss, peak, float(found[-1][1]) if found else float("nan"), builds, latency)


def report(
    size: int, info: dict, warm: Start, starts: list[Start], command: str, handler: dict[str, list[float]] | None = None
) -> str:
    built = "; ".join(f"{name} {kind} of {n:,} built in {s:.0f} s" for name, kind, n, s in warm.builds)
    what = f"warm-up ({built})" if built else "warm-up (indexes already stored by an earlier run)"
    rows = [[what, warm.seconds, warm.loaded_s, warm.rss_mb, warm.peak_mb]]
    rows += [[f"start {i + 1}", s.seconds, s.loaded_s, s.rss_mb, s.peak_mb] for i, s in enumerate(starts)]
    table = markdown_table(["start", "s to first /search answer", "s loading (app log)", "RSS MB", "peak RSS MB"], rows)
    best = min(s.seconds for s in starts)
    worst_peak = max(s.peak_mb for s in starts)
    latency = starts[-1].latency
    queries = ""
    if latency:
        rows = [[name, len(samples), percentile_ms(samples, 50), percentile_ms(samples, 99)]
                for name, samples in latency.items() if samples]  # fmt: skip
        queries_asked, first_count = (
            len(latency["/search, no session"]),
            len(latency["/search, first views, no session"]),
        )
        queries = f"""
Queries after the last start answered, one client on loopback through Gradio's HTTP API (k = 12).
First views: of {queries_asked} varied searches on a thumbnail folder emptied before the start,
the {first_count} whose 12 result images had not been shown before, so their thumbnails are
written then. The other rows repeat one query set, shown once untimed before them (5 warm-up
calls left out of each):

{markdown_table(["call", "calls", "p50 ms", "p99 ms"], rows)}
"""
    if handler:
        rows = [[name, len(samples), percentile_ms(samples, 50), percentile_ms(samples, 99)]
                for name, samples in handler.items()]  # fmt: skip
        queries += f"""
The search handler in-process (no HTTP), as `app.py` loads this gallery, after the starts: distinct
queries shown once untimed, then timed in rounds (`handler_latency`):

{markdown_table(["call", "calls", "p50 ms", "p99 ms"], rows)}
"""
    return f"""## Start-up at scale

`{command}` · {machine_line()} · a gallery of {size:,} images in {info["shards"]} parquet shards
({info["gallery_bytes"] / 1e9:.2f} GB: the demo gallery's thumbnails and metadata repeated under new ids;
written in {info["gallery_write_s"]:.0f} s) with a caption pool of {info["captions"]:,} captions.
Its embeddings are stand-ins, not encodings (encoding {size:,} images on this CPU would take hours):
the demo's real embeddings of the same image and captions plus Gaussian noise (σ {NOISE} per
dimension), normalised, written in the cache folder and format the app reads. Each start is the
real `python app.py --model assets/model --gallery ... --data_dir ...` as a subprocess, timed from
its launch to the first answered `/search` over Gradio's HTTP API (polled every {POLL_SECONDS} s);
RSS is `/proc/<pid>/status` VmRSS at that answer, peak RSS its VmHWM. The warm-up start
finds no stored index: it builds and saves them, as a first deployment does once.

{table}

Fastest start {best:.1f} s, highest peak RSS {worst_peak:,.0f} MB.
{queries}"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.startup", description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=1_000_000)
    parser.add_argument("--starts", type=int, default=3, help="timed starts after the warm-up")
    parser.add_argument("--workdir", type=Path, default=ROOT / "cache" / "startup", help="where the gallery is kept")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds a start may take")
    parser.add_argument("--build-only", action="store_true", help="build the gallery and embeddings, start nothing")
    parser.add_argument("--queries", type=int, default=200, help="/ping and /search calls timed after the last start")
    parser.add_argument(
        "--handler-queries", type=int, default=400, help="distinct queries of the handler round (0: none)"
    )
    parser.add_argument("--no-report", action="store_true", help="print only")
    args = parser.parse_args(argv)
    folder = args.workdir / str(args.images)
    tick = time.perf_counter()
    info = build_workdir(folder, args.images)
    print(f"gallery of {args.images:,} images in {folder} ({time.perf_counter() - tick:.0f} s): {info}", flush=True)
    if args.build_only:
        return 0
    warm = timed_start(folder, folder / "warm-up.log", args.timeout)
    print(f"warm-up start (index build): {warm}", flush=True)
    starts = []
    for number in range(args.starts):
        queries = args.queries if number == args.starts - 1 else 0
        starts.append(timed_start(folder, folder / f"start-{number + 1}.log", args.timeout, queries))
        print(f"start {number + 1}: {starts[-1]}", flush=True)
    handler = handler_latency(folder, args.handler_queries) if args.handler_queries else None
    if handler:
        print({name: f"p50 {percentile_ms(samples, 50):.2f} ms" for name, samples in handler.items()}, flush=True)
    default = ROOT / "cache" / "startup"
    shown = [a for a in (argv if argv is not None else sys.argv[1:])]
    command = "python -m benchmarks.startup " + " ".join(shown) + ("" if args.workdir == default else "")
    text = report(args.images, info, warm, starts, command.strip(), handler)
    print(text)
    if not args.no_report:
        write_section("startup", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
