"""Review-queue benchmark: time and peak memory of computing the app's review queue at scale.

    python -m benchmarks.review_queue [--images 1000000] [--workdir cache/startup]

Loads the retrieval service as the app does over the workdir that
``benchmarks.startup`` builds (its sharded gallery, its cached stand-in embeddings
and persisted indexes), then times ``RetrievalService.review_queue()``.  Memory is
read from ``/proc/self/status``: the resident set before, and the peak (VmHWM,
reset just before the computation through ``/proc/self/clear_refs``) during it;
"extra" is the peak less the resident set before.  Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from benchmarks.startup import MODEL


def status_mb(field: str) -> float:
    """A ``VmRSS``/``VmHWM`` figure of this process, in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def reset_peak() -> None:
    """Reset VmHWM to the current resident set (Linux: ``echo 5 > /proc/self/clear_refs``)."""
    Path("/proc/self/clear_refs").write_text("5")


def measure(folder: Path) -> dict:
    from vse.serving.retrieval import RetrievalService

    start = time.perf_counter()
    service = RetrievalService.load(str(MODEL), str(folder / "gallery"), folder / "data")
    load_s = time.perf_counter() - start
    reset_peak()
    before = status_mb("VmRSS")
    start = time.perf_counter()
    queue = service.review_queue()
    seconds = time.perf_counter() - start
    peak = status_mb("VmHWM")
    return {
        "images": len(service.gallery),
        "queue": len(queue),
        "load_s": round(load_s, 1),
        "queue_s": round(seconds, 1),
        "rss_before_mb": round(before),
        "peak_mb": round(peak),
        "extra_mb": round(peak - before),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1_000_000)
    parser.add_argument("--workdir", type=Path, default=Path("cache/startup"))
    args = parser.parse_args(argv)
    print(json.dumps(measure(args.workdir / str(args.images))))


if __name__ == "__main__":
    main()
