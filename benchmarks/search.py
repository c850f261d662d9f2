"""Search benchmark: exact search against the project's index choices, 10k to 1M vectors.

    python -m benchmarks.search [--sizes 10000 100000 1000000] [--dim 256]

For each size: clustered synthetic embeddings of the model's dimension (and the
demo's real embeddings), each index kind's build time, memory, single-query
p50/p99 latency, batch throughput and recall@10 against exact search; beside
exact search, the memory-bandwidth bound N·d·4 bytes ÷ the streaming read
bandwidth measured in the same run.  Writes the "search" section of
docs/PERFORMANCE.md and docs/perf_search.png.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.common import (
    REPORT,
    figure,
    machine_line,
    markdown_table,
    percentile_ms,
    read_bandwidth_gbs,
    write_section,
)
from vse.index import build_index, exact_search

KINDS = ("exact", "flat", "flat-fp16", "sq8", "hnsw", "ivfpq")
SINGLE_QUERIES = 300
BATCH_QUERIES = 2000


def clustered(n: int, dim: int, seed: int, clusters: int = 2000) -> np.ndarray:
    """Unit vectors around random centres, like embeddings of many similar images."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim)).astype(np.float32)
    data = centres[rng.integers(clusters, size=n)] + 0.6 * rng.normal(size=(n, dim)).astype(np.float32)
    return data / np.linalg.norm(data, axis=1, keepdims=True)


def ground_truth(data: np.ndarray, queries: np.ndarray, k: int = 10) -> np.ndarray:
    return exact_search(data, queries, k)[1]


def recall_at(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth, strict=True)]))


def measure(kind: str, data: np.ndarray, queries: np.ndarray, truth: np.ndarray) -> dict:
    start = time.perf_counter()
    index = build_index(data, kind)
    build = time.perf_counter() - start

    def search(q: np.ndarray) -> np.ndarray:
        return index.search(q, 10)[1]

    search(queries[:5])
    latencies = []
    for query in queries[:SINGLE_QUERIES]:
        tick = time.perf_counter()
        search(query[None, :])
        latencies.append(time.perf_counter() - tick)
    tick = time.perf_counter()
    found = search(queries)
    throughput = len(queries) / (time.perf_counter() - tick)
    memory = index.memory_bytes()
    return {
        "kind": kind,
        "build_s": build,
        "memory_mb": memory / 1e6,
        "p50_ms": percentile_ms(latencies, 50),
        "p99_ms": percentile_ms(latencies, 99),
        "qps_batch": throughput,
        "recall@10": recall_at(found, truth),
    }


def run_size(name: str, data: np.ndarray, queries: np.ndarray, kinds: tuple[str, ...]) -> list[dict]:
    truth = ground_truth(data, queries)
    rows = []
    for kind in kinds:
        row = measure(kind, data, queries, truth)
        row["data"] = name
        rows.append(row)
        print(f"{name:>14} {kind:>9}: build {row['build_s']:7.2f}s  mem {row['memory_mb']:8.1f} MB  "
              f"p50 {row['p50_ms']:7.3f} ms  p99 {row['p99_ms']:7.3f} ms  {row['qps_batch']:9.0f} q/s  "
              f"recall@10 {row['recall@10']:.3f}", flush=True)  # fmt: skip
    return rows


def real_embeddings() -> tuple[np.ndarray, np.ndarray] | None:
    """The demo gallery's image embeddings and its captions as queries, when assets exist."""
    from vse.gallery import EMBEDDINGS_FILE

    path = Path(__file__).resolve().parents[1] / "assets" / "index" / EMBEDDINGS_FILE
    if not path.is_file():
        return None
    from safetensors.numpy import load_file

    tensors = load_file(str(path))
    return tensors["images"].astype(np.float32), tensors["captions"].astype(np.float32)


def plot(rows: list[dict], path: Path) -> None:
    with figure(path, (6, 3.6)) as ax:
        for data in dict.fromkeys(r["data"] for r in rows):
            subset = [r for r in rows if r["data"] == data]
            ax.scatter([r["p50_ms"] for r in subset], [r["recall@10"] for r in subset], label=data)
            for r in subset:
                ax.annotate(r["kind"], (r["p50_ms"], r["recall@10"]), fontsize=6)
        ax.set_xscale("log")
        ax.set_xlabel("single-query p50 latency (ms, log)")
        ax.set_ylabel("recall@10 vs exact")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)


def report(rows: list[dict], bandwidth: float, dim: int, command: str) -> str:
    table = markdown_table(
        ["data", "index", "build s", "memory MB", "p50 ms", "p99 ms", "batch q/s", "recall@10"],
        [
            [
                r["data"],
                r["kind"],
                r["build_s"],
                r["memory_mb"],
                r["p50_ms"],
                r["p99_ms"],
                r["qps_batch"],
                r["recall@10"],
            ]
            for r in rows
        ],
    )
    bounds = []
    for r in rows:
        if r["kind"] == "exact" and r["data"].startswith("clustered"):
            n = int(r["data"].split()[1].replace(",", ""))
            bound_ms = n * dim * 4 / (bandwidth * 1e9) * 1000
            bounds.append([r["data"], bound_ms, r["p50_ms"], r["p50_ms"] / bound_ms])
    bound_table = markdown_table(["data", "bandwidth bound ms", "exact p50 ms", "ratio"], bounds)
    return f"""## Search

`{command}` · {machine_line()} · streaming read bandwidth measured in the same run: **{bandwidth:.1f} GB/s** · dimension {dim}.

Queries are held-out points of the same distribution (for the demo: its caption
embeddings against its image embeddings). Single-query latency is one query per
call; batch throughput is {BATCH_QUERIES:,} queries in one call. Memory is the
index's own size (for exact search: the float32 matrix).

{table}

Exact search against the memory-bandwidth bound (N·d·4 bytes ÷ read bandwidth):

{bound_table}

![latency against recall](perf_search.png)
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.search", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--no-report", action="store_true", help="print only")
    args = parser.parse_args(argv)
    bandwidth = read_bandwidth_gbs()
    print(f"streaming read bandwidth: {bandwidth:.1f} GB/s")
    rows = []
    real = real_embeddings()
    if real is not None:
        rows += run_size(f"demo {len(real[0]):,}", real[0], real[1][:BATCH_QUERIES], KINDS)
    for size in args.sizes:
        both = clustered(size + BATCH_QUERIES, args.dim, seed=size)
        data, queries = both[:size], both[size:]
        rows += run_size(f"clustered {size:,}", data, queries, KINDS)
        del both, data
    if not args.no_report:
        command = "python -m benchmarks.search " + " ".join(argv if argv is not None else sys.argv[1:])
        write_section("search", report(rows, bandwidth, args.dim, command.strip()))
        plot(rows, REPORT.parent / "perf_search.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
