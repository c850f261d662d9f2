"""Qdrant's local mode against exact search: fill time, query latency, memory (figures in docs/SCALING.md).

    python -m benchmarks.engine --sizes 10000 50000

Local mode is the qdrant-client package's own brute-force search in Python and
numpy (no server, no HNSW): these figures say what ``--index qdrant+memory:`` and
``qdrant+file:`` cost on one machine, not how a Qdrant server or cluster performs.
Vectors are random unit vectors at the app's dimension (256); only timings and
sizes matter here, not recall (the tests check that the top-k is exact).
Prints a table; writes nothing.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np

from benchmarks.common import machine_line, markdown_table, percentile_ms
from vse.serving.engine_index import connect, load_or_fill_index, parse_index_url
from vse.serving.index import exact_search

K = 12  # results per query, as the app's search shows


def unit_vectors(n: int, d: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def query_latencies(search, queries: np.ndarray) -> list[float]:
    """Seconds per single-query call, one query at a time (the app's path)."""
    samples = []
    for query in queries:
        start = time.perf_counter()
        search(query[None])
        samples.append(time.perf_counter() - start)
    return samples


def batch_rate(search, queries: np.ndarray) -> float:
    """Queries per second when all of them go in one call (scheduling noise amortised)."""
    start = time.perf_counter()
    search(queries)
    return len(queries) / (time.perf_counter() - start)


def memory_row(size: int, dim: int, queries: np.ndarray) -> list:
    """Fill an in-memory collection of ``size`` vectors; time queries against exact search."""
    data = unit_vectors(size, dim, 0)
    client = connect(parse_index_url("qdrant+memory:"))
    start = time.perf_counter()
    index = load_or_fill_index(client, data, name="image", model="bench", gallery=str(size), local=True)
    fill_s = time.perf_counter() - start
    engine = query_latencies(lambda q: index.search(q, K), queries)
    exact = query_latencies(lambda q: exact_search(data, q, K), queries)
    rates = batch_rate(lambda q: index.search(q, K), queries), batch_rate(lambda q: exact_search(data, q, K), queries)
    client.close()
    return [f"{size:,}", f"{size / fill_s:,.0f}", f"{percentile_ms(engine, 50):.2f}", f"{percentile_ms(engine, 99):.2f}",
            f"{percentile_ms(exact, 50):.2f}", f"{percentile_ms(exact, 99):.2f}", f"{rates[0]:,.0f}", f"{rates[1]:,.0f}",
            f"{index.memory_bytes() / 2**20:.1f}"]  # fmt: skip


def file_fill_rate(points: int, dim: int) -> float:
    """Points per second written by local mode on disk (one SQLite transaction per point)."""
    data = unit_vectors(points, dim, 0)
    with tempfile.TemporaryDirectory() as folder:
        client = connect(parse_index_url(f"qdrant+file:{folder}"))
        start = time.perf_counter()
        load_or_fill_index(client, data, name="image", model="bench", gallery="file", local=True)
        seconds = time.perf_counter() - start
        client.close()
    return points / seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.engine", description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 50_000])
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--file-points", type=int, default=1000)
    parser.add_argument("--no-report", action="store_true", help="accepted for symmetry: this script writes nothing")
    args = parser.parse_args(argv)
    queries = unit_vectors(args.queries, args.dim, 1)
    rows = [memory_row(size, args.dim, queries) for size in args.sizes]
    print(f"`python -m benchmarks.engine` · {machine_line()} · {args.dim}-d, k={K}, {args.queries} single queries\n")
    header = ["vectors", "fill points/s (memory)", "local p50 ms", "local p99 ms", "exact p50 ms", "exact p99 ms",
              "local batch q/s", "exact batch q/s", "local mode MiB held"]  # fmt: skip
    print(markdown_table(header, rows))
    print("\nload average (1, 5, 15 min) after the runs: " + ", ".join(f"{x:.1f}" for x in os.getloadavg()))
    print(f"\nlocal mode on disk (qdrant+file:): {file_fill_rate(args.file_points, args.dim):,.0f} points/s written")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
