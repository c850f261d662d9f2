"""Helpers shared by the benchmarks: timing statistics, bandwidth and FLOP rates, the report file."""

from __future__ import annotations

import json
import platform
import re
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np

REPORT = Path(__file__).resolve().parents[1] / "docs" / "PERFORMANCE.md"
RELIABILITY_HEADER = """# Reliability

Measured on this project's development machine (2 CPU cores, no GPU) by
`benchmarks/durability.py`, `benchmarks/hostile.py` and `benchmarks/load.py` (each rewrites its own
section below) and checked by the tests named in each section.

"""
HEADER = """# Performance

Measured on this project's development machine (2 CPU cores, no GPU) by the
scripts in `benchmarks/`; each script rewrites its own section below. Machines
here are shared and noisy: the tables give medians (p50) and tails (p99) of many
repetitions, and ratios against a baseline measured in the same run.

"""


def percentile_ms(samples: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(samples) * 1000.0, q))


# Two-sided 95% quantiles of Student's t for 1..10 degrees of freedom; beyond, the
# Cornish-Fisher expansion around the normal quantile (error under 0.1% from 10 on).
T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228)


def t975(dof: int) -> float:
    """The 97.5% quantile of Student's t with ``dof`` degrees of freedom."""
    if dof < 1:
        raise ValueError("a t interval needs at least two values")
    if dof <= len(T975):
        return T975[dof - 1]
    z = 1.959964
    return z + (z**3 + z) / (4 * dof) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * dof**2)


def mean_interval(values: Sequence[float]) -> tuple[float, float]:
    """(mean, half-width of its 95% t interval) of paired differences or other samples."""
    values = np.asarray(values, dtype=np.float64)
    return float(values.mean()), t975(len(values) - 1) * float(values.std(ddof=1)) / np.sqrt(len(values))


def best_of(fn: Callable[[], object], repeats: int = 5) -> float:
    """Shortest of several timed calls (after one warm-up), in seconds."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def run_to_completion(workers: Sequence) -> float:
    """Start every thread or process, wait for all of them; the seconds that took."""
    start = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return time.perf_counter() - start


@contextmanager
def figure(path: Path, size: tuple[float, float]) -> Iterator:
    """Matplotlib axes (headless backend) saved to ``path`` when the block ends."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=size, dpi=120)
    try:
        yield ax
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)


def read_bandwidth_gbs(gigabytes: float = 1.0) -> float:
    """Streaming read bandwidth of this machine: summing a large float32 array, GB/s."""
    array = np.ones(int(gigabytes * 2**30 / 4), dtype=np.float32)
    seconds = best_of(lambda: float(array.sum()), repeats=5)
    return array.nbytes / seconds / 1e9


def matmul_gflops(size: int = 2048) -> float:
    """float32 matrix-multiply rate of this machine (torch, all threads), GFLOP/s."""
    import torch

    a, b = torch.randn(size, size), torch.randn(size, size)
    seconds = best_of(lambda: a @ b, repeats=5)
    return 2 * size**3 / seconds / 1e9


def machine_line() -> str:
    import os

    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def free_port() -> int:
    """A free loopback port for an app the benchmark starts."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class GradioHTTPClient:
    """Gradio's documented HTTP API (what curl uses): POST the inputs, then read the event stream.

    The server pushes the result down the open stream as soon as it exists, so no
    polling interval is added (``gradio_client`` checks its message queue every 50 ms).
    """

    def __init__(self, url: str, session: str | None = None):
        import httpx

        self.url = url.rstrip("/")
        self.http = httpx.Client(timeout=60)
        # A session hash kept across calls, as a browser tab and gradio_client keep one; without
        # one (as curl) Gradio builds a new session state for every call.
        self.session = session

    def predict(self, *data, api_name: str):
        name = api_name.strip("/")
        body = {"data": list(data)} | ({"session_hash": self.session} if self.session else {})
        response = self.http.post(f"{self.url}/gradio_api/call/{name}", json=body)
        response.raise_for_status()
        event_id = response.json()["event_id"]
        event = None
        with self.http.stream("GET", f"{self.url}/gradio_api/call/{name}/{event_id}") as stream:
            for line in stream.iter_lines():
                event, result = read_event_line(line, event, api_name)
                if result is not NO_RESULT:
                    return result
        raise CallFailed(f"{api_name}: the stream ended without a result")


NO_RESULT = object()


class CallFailed(RuntimeError):
    """The app answered a call with an error event, or the stream ended without a result."""


def read_event_line(line: str, event: str | None, api_name: str) -> tuple[str | None, object]:
    """One line of a call's event stream: (the event now being read, its result or ``NO_RESULT``).

    ``CallFailed`` on an error event (its data line is the app's message).
    """
    if line.startswith("event:"):
        return line.removeprefix("event:").strip(), NO_RESULT
    if line.startswith("data:") and event == "error":
        raise CallFailed(f"{api_name} failed: {line[:200]}")
    if line.startswith("data:") and event == "complete":
        return event, json.loads(line.removeprefix("data:"))
    return event, NO_RESULT


def markdown_table(header: list[str], rows: list[list]) -> str:
    def cell(value) -> str:
        if isinstance(value, float) and value != value:  # NaN: the column does not apply
            return "–"
        if isinstance(value, float):
            return f"{value:.3g}" if abs(value) < 100 else f"{value:,.0f}"
        return str(value)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write_section(name: str, body: str, report: Path = REPORT) -> None:
    """Replace (or append) the section between this benchmark's markers in the report."""
    report.parent.mkdir(parents=True, exist_ok=True)
    header = RELIABILITY_HEADER if report.name == "RELIABILITY.md" else HEADER
    text = report.read_text(encoding="utf-8") if report.is_file() else header
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    block = f"{start}\n{body.strip()}\n{end}"
    if start in text:
        text = re.sub(re.escape(start) + r".*?" + re.escape(end), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    report.write_text(text, encoding="utf-8")
