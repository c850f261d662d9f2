"""Search benchmark: exact search against the project's index choices, on real embeddings
and on synthetic ones from 10k to 1M vectors.

    python -m benchmarks.search [--sizes 10000 100000 1000000] [--dim 256] [--kinds ...]
                                [--views 2] [--no-corpora] [--stand-in 1000000]

Real embeddings (when assets/ is built): the demo gallery's images queried by its
captions; the images and ``--views`` augmented copies of each, encoded by the demo
model, queried by captions; and a pool of every real embedding (images, views,
captions, tag lists, and, where data/ holds the development corpora, the model's
encodings of their every caption, title, tag list and tag) queried by held-out rows.
With ``--stand-in N``: N image embeddings made as the start-up benchmark makes them
(the demo's, repeated, plus Gaussian noise), queried by the demo's captions.
Synthetic: clustered unit vectors of the model's dimension.  Each index is built as the
app builds it: its search settings calibrated (``vse.serving.index.calibrate_search``)
on a sample of queries held apart from the ones it is measured on.  For each set and
index kind: build time (calibration included), the settings chosen, memory,
single-query p50/p99 latency, batch throughput and recall@10 against exact search; beside exact search, the memory-bandwidth bound
N·d·4 bytes ÷ the streaming read bandwidth measured in the same run.  Writes the
"search" section of docs/PERFORMANCE.md and docs/perf_search.png.
"""

from __future__ import annotations

import argparse
import os
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
from vse.serving.index import (
    CALIBRATION_QUERIES,
    EXACT_MAX,
    FACTORY,
    HNSW_BUILD_DEPTH,
    HNSW_NEIGHBOURS,
    MEMORY_SHARE,
    RECALL_TARGET,
    RERANK_FACTOR,
    RERANK_PROBE_SHARE,
    build_index,
    build_parameters,
    exact_search,
    factory_string,
    hnsw_bytes,
)

KINDS = ("exact", *FACTORY)
# The recall sweep of the compressed kind: nprobe by re-rank factor (--sweep).
SWEEP_PROBES = (16, 32, 64, 128, 256)
SWEEP_FACTORS = (2, 5, 10, 20)
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
    """Share of the true top-k ids among the found ones, averaged over queries."""
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth, strict=True)]))


def tie_aware_recall(data: np.ndarray, queries: np.ndarray, found: np.ndarray, truth: np.ndarray) -> float:
    """Recall@k where a found row counts if it scores at least the k-th true score.

    Real embeddings hold exact duplicates (one image in two galleries, one tag list
    on many images): which of several equal rows is returned is not an error.
    """
    kth = np.einsum("qd,qd->q", data[truth[:, -1]], queries)
    scores = np.einsum("qkd,qd->qk", data[np.maximum(found, 0)], queries)
    hits = (scores >= kth[:, None] - 1e-5) & (found >= 0)
    return float(np.mean(np.minimum(hits.sum(axis=1), truth.shape[1]) / truth.shape[1]))


def measure(kind: str, data: np.ndarray, queries: np.ndarray, truth: np.ndarray, calibration: np.ndarray) -> dict:
    """One index of ``kind`` over ``data``, its settings calibrated on ``calibration`` (queries
    held apart from ``queries``), measured on ``queries`` against ``truth``.  The compressed kind
    re-ranks against float16 rows, as the app keeps its embeddings (``vse.serving.gallery``)."""
    kept = data.astype(np.float16) if kind == "ivfpq-rerank" else data
    start = time.perf_counter()
    index = build_index(kept, kind, queries=calibration)
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
        "kind": kind if kind != "auto" else f"auto ({index.kind})",
        "build_s": build,
        "memory_mb": memory / 1e6,
        "p50_ms": percentile_ms(latencies, 50),
        "p99_ms": percentile_ms(latencies, 99),
        "qps_batch": throughput,
        "recall@10": tie_aware_recall(data, queries, found, truth),
        "id_recall@10": recall_at(found, truth),
        "settings": settings_text(index),
    }


def settings_text(index) -> str:
    """The search settings an index was measured at, and the recall its calibration saw."""
    from vse.serving.index import search_settings_of

    settings = ", ".join(f"{name} {value}" for name, value in search_settings_of(index).items())
    if index.calibration is None:
        return settings or "–"
    return f"{settings} (calibrated: {index.calibration.recall:.3f})"


def run_size(
    name: str, data: np.ndarray, queries: np.ndarray, calibration: np.ndarray, kinds: tuple[str, ...]
) -> list[dict]:
    truth = ground_truth(data, queries)
    rows = []
    for kind in kinds:
        row = measure(kind, data, queries, truth, calibration)
        row["data"] = name
        rows.append(row)
        print(f"{name:>14} {kind:>9}: build {row['build_s']:7.2f}s  mem {row['memory_mb']:8.1f} MB  "
              f"p50 {row['p50_ms']:7.3f} ms  p99 {row['p99_ms']:7.3f} ms  {row['qps_batch']:9.0f} q/s  "
              f"recall@10 {row['recall@10']:.3f} (ids {row['id_recall@10']:.3f})", flush=True)  # fmt: skip
    return rows


def sweep(name: str, data: np.ndarray, queries: np.ndarray) -> list[dict]:
    """Recall@10 and batch time per query of the compressed kind ("ivfpq-rerank", built once)
    at every nprobe and re-rank factor of SWEEP_PROBES and SWEEP_FACTORS."""
    import faiss

    from vse.serving.index import apply_search_settings

    truth = ground_truth(data, queries)
    start = time.perf_counter()
    index = build_index(data.astype(np.float16), "ivfpq-rerank")  # float16 rows, as the app keeps them
    build = time.perf_counter() - start
    lists = faiss.extract_index_ivf(index.index)
    rows = []
    for probes in (p for p in SWEEP_PROBES if p <= lists.nlist):
        for factor in SWEEP_FACTORS:
            apply_search_settings(index, {"nprobe": probes, "k_factor": factor})
            tick = time.perf_counter()
            found = index.search(queries, 10)[1]
            per_query = (time.perf_counter() - tick) / len(queries)
            rows.append({"data": name, "lists": lists.nlist, "nprobe": probes, "k_factor": factor,
                         "ms_per_query": per_query * 1000, "recall@10": tie_aware_recall(data, queries, found, truth),
                         "build_s": build, "memory_mb": index.memory_bytes() / 1e6})  # fmt: skip
            print(f"{name:>14} lists {lists.nlist} nprobe {probes:4} k_factor {factor:3}: recall@10 "
                  f"{rows[-1]['recall@10']:.3f}  {rows[-1]['ms_per_query']:.3f} ms/query (batch)", flush=True)  # fmt: skip
    return rows


ROOT = Path(__file__).resolve().parents[1]
CORPORA = ("openclipart", "emoji")  # development corpora under data/, when present


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """float32 rows scaled to unit length; all-zero rows (untagged images) dropped."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    keep = norms[:, 0] > 0.5
    return vectors[keep] / norms[keep]


def assets_embeddings() -> dict[str, np.ndarray] | None:
    """The demo's shipped image, caption and tag-list embeddings, when assets exist."""
    from vse.serving.gallery import EMBEDDINGS_FILE

    path = ROOT / "assets" / "index" / EMBEDDINGS_FILE
    if not path.is_file():
        return None
    from safetensors.numpy import load_file

    return {name: unit_rows(tensor) for name, tensor in load_file(str(path)).items()}


def corpus_texts(root: Path) -> tuple[list[str], list[str]]:
    """(captions, other texts: titles, tag lists, distinct tags) of the corpora under ``root``."""
    import datasets

    from vse.text import tags_to_text

    captions, others, tags = [], [], set()
    for name in CORPORA:
        for folder in sorted((root / name).glob("*/dataset_dict.json")):
            for split in datasets.load_from_disk(str(folder.parent)).values():
                others += split["title"]
                if "captions" in split.column_names:
                    captions += [c for row in split["captions"] for c in row]
                if "tags" in split.column_names:
                    others += [tags_to_text(row) for row in split["tags"] if row]
                    tags.update(t for row in split["tags"] for t in row)
    return [c for c in captions if c], [t for t in others + sorted(tags) if t]


def augmented(image, rng: np.random.Generator):
    """A random crop (60-100% of the side), flip and small rotation of a PIL image."""
    width, height = image.size
    side = rng.uniform(0.6, 1.0)
    w, h = max(8, int(width * side)), max(8, int(height * side))
    left, top = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
    image = image.crop((left, top, left + w, top + h)).rotate(float(rng.uniform(-15, 15)), fillcolor="white")
    return image.transpose(0) if rng.random() < 0.5 else image  # 0: FLIP_LEFT_RIGHT


def gallery_images() -> list:
    """The demo gallery's thumbnails as PIL images (empty without assets/gallery)."""
    import io

    import pyarrow.parquet as pq
    from PIL import Image

    shards = sorted((ROOT / "assets" / "gallery").glob("gallery-*.parquet"))
    encoded = [b for shard in shards for b in pq.read_table(shard, columns=["image"]).column("image").to_pylist()]
    return [Image.open(io.BytesIO(b)).convert("RGB") for b in encoded]


def encode_real(model, views: int, use_corpora: bool) -> dict[str, np.ndarray]:
    """The model's embeddings of ``views`` augmented copies of each gallery image and, when
    data/ exists, of every corpus text: {"augmented": ..., "captions": ..., "texts": ...}."""
    start, out = time.perf_counter(), {}
    rng, images = np.random.default_rng(0), gallery_images() if views else []
    chunks = [
        model.encode_image([augmented(image, rng) for image in images[start : start + 256]], batch_size=64)
        for _ in range(views)
        for start in range(0, len(images), 256)
    ]  # augmented a chunk at a time: all views at once would hold gigabytes of pixels
    if chunks:
        out["augmented"] = np.concatenate([c.numpy() for c in chunks])
    if use_corpora and (ROOT / "data").is_dir():
        captions, others = corpus_texts(ROOT / "data")
        out["captions"] = model.encode_text(captions, batch_size=128).numpy()
        out["texts"] = model.encode_text(others, batch_size=128).numpy()
    counts = ", ".join(f"{len(v):,} {k}" for k, v in out.items())
    print(f"encoded {counts} in {time.perf_counter() - start:.0f} s", flush=True)
    return {name: unit_rows(vectors) for name, vectors in out.items() if len(vectors)}


def load_model():
    from vse.model import VSEModel

    return VSEModel.from_pretrained(str(ROOT / "assets" / "model")).eval()


def distinct(vectors: np.ndarray) -> np.ndarray:
    """Rows without exact duplicates, in a fixed order."""
    return np.unique(vectors, axis=0)


def sample_rows(vectors: np.ndarray, count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(rest, sample): ``count`` random rows split off ``vectors``."""
    order = np.random.default_rng(seed).permutation(len(vectors))
    return vectors[order[count:]], vectors[order[:count]]


def query_split(texts: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(measured queries, calibration queries): up to BATCH_QUERIES rows and CALIBRATION_QUERIES
    other rows of ``texts``."""
    rest, calibration = sample_rows(texts, min(CALIBRATION_QUERIES, len(texts) // 2), seed)
    return sample_rows(rest, min(BATCH_QUERIES, len(rest)), seed + 1)[1], calibration


Dataset = tuple[str, np.ndarray, np.ndarray, np.ndarray]  # name, data, measured queries, calibration queries


def real_sets(views: int, use_corpora: bool) -> list[Dataset]:
    """(name, data, queries, calibration queries) of real embeddings, when assets exist:

    - the demo's images, queried by its captions (as the app searches);
    - the gallery images and their augmented views, queried by captions: the app's
      cross-modal case (the hardest for a graph index) at a larger size;
    - every real embedding pooled (images, views, captions, tag lists, corpus titles and
      tags), queried by held-out rows of the pool.
    """
    assets = assets_embeddings()
    if assets is None:
        return []
    extra = encode_real(load_model(), views, use_corpora) if (ROOT / "assets" / "model").is_dir() else {}
    source = "assets" + (" + data/" if "texts" in extra else "") + (f", {views} views" if views else "")
    captions = distinct(np.concatenate([assets["captions"], extra.get("captions", assets["captions"][:0])]))
    images = distinct(np.concatenate([assets["images"], *([extra["augmented"]] if "augmented" in extra else [])]))
    texts = [assets["tags"], *([extra["texts"]] if "texts" in extra else [])]
    pool, held = sample_rows(distinct(np.concatenate([images, captions, *texts])), BATCH_QUERIES + CALIBRATION_QUERIES)
    return [
        (f"demo {len(assets['images']):,} caption→image", assets["images"], *query_split(assets["captions"])),
        (f"real {len(images):,} caption→image ({source})", images, *query_split(captions)),
        (f"real {len(pool):,} pool→pool ({source})", pool, held[:BATCH_QUERIES], held[BATCH_QUERIES:]),
    ]


def stand_in_set(size: int) -> list[Dataset]:
    """``size`` image embeddings made as ``benchmarks.startup`` makes its gallery's (the demo's,
    repeated, plus noise), queried by the demo's captions; empty without assets."""
    from benchmarks.startup import copy_positions, noisy_rows

    assets = assets_embeddings()
    if assets is None:
        return []
    positions = copy_positions(size, len(assets["images"]))[1]
    images = noisy_rows(assets["images"], positions, np.random.default_rng(0))
    return [(f"stand-in {size:,} caption→image", images, *query_split(assets["captions"]))]


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
        [
            "data",
            "index",
            "search settings",
            "build s",
            "memory MB",
            "p50 ms",
            "p99 ms",
            "batch q/s",
            "recall@10",
            "id recall@10",
        ],  # fmt: skip
        [
            [
                r["data"],
                r["kind"],
                r["settings"],
                r["build_s"],
                r["memory_mb"],
                r["p50_ms"],
                r["p99_ms"],
                r["qps_batch"],
                r["recall@10"],
                r["id_recall@10"],
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

Real embeddings come first: the demo's images queried by its captions (as the app
searches); its images and their augmented views, encoded by the demo model, queried
by captions; and every real embedding pooled (images, views, captions, tag lists,
and the model's encodings of every caption, title, tag list and tag of data/ when
present: the source is named in each row), queried by held-out rows of the pool.
Exact duplicates are removed from the larger real sets. Synthetic queries are held-out points of the same
clusters. recall@10 counts a found row when it scores at least the 10th true score
(any of several equal rows is right); "id recall@10" counts only the exact ids.
Single-query latency is one query per call; batch throughput is {BATCH_QUERIES:,}
queries in one call. Memory is the index's own size (for exact search: the float32
matrix; for `ivfpq-rerank`, with the float16 rows it re-ranks against, which the app shares with
its memory-mapped embeddings file). The auto choice is exact search up to {EXACT_MAX:,} vectors, HNSW beyond while its
estimated memory ({hnsw_bytes(1_000_000, dim) / 1e9:.2f} GB per million vectors here) fits a budget
({MEMORY_SHARE:g} of the machine's memory by default), then the compressed `ivfpq-rerank` (see its sweep below);
HNSW is built
with M {HNSW_NEIGHBOURS} and efConstruction {HNSW_BUILD_DEPTH}. Every index's search settings (HNSW's efSearch;
the compressed kind's nprobe and re-rank factor) are chosen as the app chooses them: the cheapest
setting whose recall@10 reaches {RECALL_TARGET:g} on {CALIBRATION_QUERIES} calibration queries held apart from the
measured ones (else the cheapest within 0.005 of the best); "search settings" names the choice
and the recall the calibration saw. The build time includes the calibration.

{table}

Exact search against the memory-bandwidth bound (N·d·4 bytes ÷ read bandwidth):

{bound_table}

![latency against recall](perf_search.png)
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.search", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=("auto", *KINDS),
                        help="index kinds to measure; auto: the kind the app would choose, named in the table")  # fmt: skip
    parser.add_argument("--views", type=int, default=2, help="augmented copies of each gallery image")
    parser.add_argument("--no-corpora", action="store_true", help="leave data/'s texts out of the real pool")
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--no-report", action="store_true", help="print only")
    parser.add_argument("--sweep", action="store_true", help="recall of ivfpq-rerank by nprobe and re-rank factor")
    parser.add_argument("--stand-in", type=int, nargs="*", default=[], metavar="N",
                        help="also N stand-in image embeddings (the start-up benchmark's), queried by captions")  # fmt: skip
    args = parser.parse_args(argv)
    if args.sweep:
        return sweep_main(args, argv)
    bandwidth = read_bandwidth_gbs()
    print(f"streaming read bandwidth: {bandwidth:.1f} GB/s")
    rows = []
    kinds = tuple(args.kinds)
    for name, data, queries, calibration in real_sets(args.views, use_corpora=not args.no_corpora):
        rows += run_size(name, data, queries, calibration, kinds)
    for size in args.stand_in:
        for name, data, queries, calibration in stand_in_set(size):
            rows += run_size(name, data, queries, calibration, kinds)
            del data
    for size in args.sizes:
        both = clustered(size + BATCH_QUERIES + CALIBRATION_QUERIES, args.dim, seed=size)
        data, queries, calibration = both[:size], both[size : size + BATCH_QUERIES], both[size + BATCH_QUERIES :]
        rows += run_size(f"clustered {size:,}", data, queries, calibration, kinds)
        del both, data
    if not args.no_report:
        threads = f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} " if "OMP_NUM_THREADS" in os.environ else ""
        command = f"{threads}python -m benchmarks.search " + " ".join(argv if argv is not None else sys.argv[1:])
        write_section("search", report(rows, bandwidth, args.dim, command.strip()))
        plot(rows, REPORT.parent / "perf_search.png")
    return 0


def sweep_report(rows: list[dict], command: str) -> str:
    table = markdown_table(
        ["data", "lists", "nprobe", "re-rank factor", "ms per query (batch)", "recall@10"],
        [[r["data"], r["lists"], r["nprobe"], r["k_factor"], r["ms_per_query"], r["recall@10"]] for r in rows],
    )
    builds = markdown_table(
        ["data", "build s", "memory MB"],
        [[r["data"], r["build_s"], r["memory_mb"]] for r in {r["data"]: r for r in rows}.values()],
    )
    return f"""## Compressed index: recall by nprobe and re-rank factor

`{command}` · {machine_line()}. The compressed kind, `ivfpq-rerank`
(`{factory_string("ivfpq-rerank", build_parameters("ivfpq-rerank", 1_000_000, 256))}` at 1M vectors of 256
dimensions): IVF lists of 4-bit PQ codes (fast-scan) shortlist re-rank factor × k candidates, which are
scored again exactly against the indexed vectors (the app's memory-mapped float16 embeddings; the
memory column counts them). Lists: 4·√N, at most N/39 (k-means wants ~39
training points per list). Recall@10 as in the search table, against exact search; time per
query from one batch call. Where no calibration queries are given, the index answers with
nprobe {RERANK_PROBE_SHARE:g} of the lists and re-rank factor {RERANK_FACTOR}; the app calibrates them by measured
recall (the search table above shows the settings chosen).

{table}

{builds}
"""


def sweep_main(args: argparse.Namespace, argv: list[str] | None) -> int:
    """``--sweep``: the compressed kind's recall by nprobe and re-rank factor, on the same sets."""
    rows = []
    for name, data, queries, _ in real_sets(args.views, use_corpora=not args.no_corpora):
        rows += sweep(name, data, queries)
    for size in args.sizes:
        both = clustered(size + BATCH_QUERIES, args.dim, seed=size)
        rows += sweep(f"clustered {size:,}", both[:size], both[size:])
        del both
    if not args.no_report:
        command = "python -m benchmarks.search " + " ".join(argv if argv is not None else sys.argv[1:])
        write_section("search-sweep", sweep_report(rows, command.strip()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
