"""Qdrant in this process against exact search: fill time, query latency, memory, and the recall of
the engine's own HNSW (figures in docs/SCALING.md).

    python -m benchmarks.engine --sizes 10000 50000 [--edge-stand-in 100000]

Local mode is the qdrant-client package's own brute-force search in Python and
numpy (no server, no HNSW): these figures say what ``--index qdrant+memory:`` and
``qdrant+file:`` cost on one machine, not how a Qdrant server or cluster performs.
Its vectors are random unit vectors at the app's dimension (256); only timings and
sizes matter there, not recall (the tests check that the top-k is exact).

Qdrant Edge (``--index qdrant+edge:FOLDER``) runs the engine's own storage, optimizer
and HNSW code in this process, so its recall is the engine's: it is measured on real
embeddings (the demo's images queried by its captions, as ``benchmarks.search`` does)
and on ``--edge-stand-in`` noisy copies of them (as ``benchmarks.startup`` builds its
gallery), at Qdrant's own thresholds and with every segment indexed.
Prints tables; writes nothing.
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


def edge_row(name: str, data: np.ndarray, queries: np.ndarray, calibration: np.ndarray, scan_kb: int) -> list:
    """Fill and index a Qdrant Edge shard of ``data`` (segments under ``scan_kb`` KB scanned), its hnsw_ef
    calibrated on ``calibration`` as the app does; time single ``queries`` (held apart from those) and
    measure their recall@10 against exact search (ties counted as found, as benchmarks.search does)."""
    from benchmarks.search import ground_truth, tie_aware_recall
    from vse.serving import engine_index

    saved, engine_index.EDGE_FULL_SCAN_KB = engine_index.EDGE_FULL_SCAN_KB, scan_kb
    try:
        with tempfile.TemporaryDirectory() as folder:
            engine = connect(parse_index_url(f"qdrant+edge:{folder}"))
            start = time.perf_counter()
            index = load_or_fill_index(
                engine, data, name="image", model="bench", gallery=name, local=True, queries=calibration
            )
            build_s = time.perf_counter() - start
            shard = next(iter(engine.shards.values()))
            indexed = shard.info().indexed_vectors_count
            latencies = query_latencies(lambda q: index.search(q, 10), queries)
            found = index.search(queries, 10)[1]
            engine.close()
    finally:
        engine_index.EDGE_FULL_SCAN_KB = saved
    recall = tie_aware_recall(data, queries, found, ground_truth(data, queries))
    exact = query_latencies(lambda q: exact_search(data, q, 10), queries)
    how = "graph" if indexed else "scan"
    chosen = f"{index.ef_search} ({index.calibration.recall:.3f})" if index.calibration else "–"
    return [name, f"{len(data):,}", f"{scan_kb:,} KB ({how})", f"{build_s:.1f}", chosen,
            f"{percentile_ms(latencies, 50):.2f}", f"{percentile_ms(latencies, 99):.2f}", f"{percentile_ms(exact, 50):.2f}",
            f"{recall:.3f}"]  # fmt: skip


def edge_table(stand_in: int, queries: int) -> str:
    """Qdrant Edge on the demo's real embeddings and on a stand-in set of ``stand_in`` rows (0: none)."""
    from benchmarks.search import assets_embeddings, query_split, stand_in_set
    from vse.serving.engine_index import EDGE_FULL_SCAN_KB

    assets = assets_embeddings()
    if assets is None:
        return "(no assets/: Qdrant Edge not measured)"
    sets = [(f"demo {len(assets['images']):,} caption→image", assets["images"], *query_split(assets["captions"]))]
    sets += stand_in_set(stand_in) if stand_in else []
    rows = []
    for name, data, measured, calibration in sets:
        scanned = data.nbytes / 1024 < EDGE_FULL_SCAN_KB  # else the engine's own threshold builds a graph too
        for scan_kb in (EDGE_FULL_SCAN_KB, 1) if scanned else (EDGE_FULL_SCAN_KB,):
            rows.append(edge_row(name, data, measured[:queries], calibration, scan_kb))
            print("  ", " | ".join(rows[-1]), flush=True)
    header = ["data", "vectors", "scanned below", "fill + index + calibrate s", "hnsw_ef (calibrated recall)", "edge p50 ms",
              "edge p99 ms", "exact p50 ms", "held-out recall@10"]  # fmt: skip
    return markdown_table(header, rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.engine", description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 50_000])
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--file-points", type=int, default=1000)
    parser.add_argument("--edge-stand-in", type=int, default=0, help="rows of a stand-in set for Qdrant Edge (0: none)")
    parser.add_argument("--no-edge", action="store_true", help="leave Qdrant Edge out")
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
    if not args.no_edge:
        print(f"\nQdrant Edge, {args.queries} single queries, HNSW M and efConstruction as vse.serving.index builds, "
              "hnsw_ef calibrated on other queries as the app does:\n")  # fmt: skip
        print(edge_table(args.edge_stand_in, args.queries))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
