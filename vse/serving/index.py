"""Nearest-neighbour search over normalised embeddings (inner product = cosine).

One entry point, ``build_index(embeddings)``, picks the index type by size:
exact search (``exact_search``: one BLAS pass, then top-k selection) up to
``EXACT_MAX`` vectors, a graph index (faiss HNSW) beyond while its memory fits a
budget (``choose_kind``: a share of the machine's memory by default), and past
that a compressed index: IVF-PQ whose shortlist is scored again exactly against the
indexed vectors themselves, which the caller keeps (memory-mapped float16 in the app:
``ivfpq-rerank``, ``rerank_shortlist``).  Every faiss kind is a ``faiss.index_factory`` string
(``FACTORY``).  The switch points and parameters come from the measurements in
``docs/PERFORMANCE.md``; ``kind=`` forces a type (faiss flat, fp16 or int8
storage and plain IVF-PQ are there too).

Given queries like the ones it will serve (``calibration_queries``: the app passes
caption embeddings for the image index and image embeddings for the caption
index), ``build_index`` chooses the search-time settings of HNSW (efSearch) and of
the compressed kind (nprobe, re-rank factor) by measured recall
(``calibrate_search``): the cheapest setting whose recall@10 against exact search
reaches ``RECALL_TARGET``.  Without queries it keeps the size-based defaults.

``load_or_build_index`` keeps faiss indexes on disk: an HNSW build takes minutes
at a million vectors, a memory-mapped read milliseconds.  A stored index is
named by a key over everything it depends on (model, gallery, kind, build
parameters, size), written atomically, and checked when read; anything that
does not match is rebuilt, never used.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

# Up to this many vectors exact search answers a query in a few milliseconds; beyond,
# HNSW answers in under one (docs/PERFORMANCE.md: 0.5 ms at 100k on one thread).
EXACT_MAX = 50_000
HNSW_NEIGHBOURS = 32  # M: graph degree
HNSW_BUILD_DEPTH = 80  # efConstruction
# efSearch: 128 up to 100k vectors, 64 more per tenfold (or part of one) beyond: 192 up
# to 1M, 256 up to 10M.  Measured on real embeddings, caption queries against image
# embeddings (docs/PERFORMANCE.md): at efSearch 64 recall@10 fell from 0.966 at 6.7k
# images to 0.944 at 20k; at 128 it is 0.987 and 0.981.  Text queries sit apart from
# the images (the modality gap), which a graph search handles worse than the synthetic
# clusters it was first tuned on, and at a fixed depth it loses recall as the graph grows.
HNSW_SEARCH_DEPTH = 128
HNSW_SEARCH_DEPTH_STEP = 64  # added per tenfold beyond HNSW_SEARCH_DEPTH_FROM vectors
HNSW_SEARCH_DEPTH_FROM = 100_000
FEW_QUERIES = 4  # up to this many queries, exact search scores them one by one on one thread
IVF_PROBES = 16  # nprobe of the plain "ivfpq" kind: inverted lists visited per query
# The compressed kind, "ivfpq-rerank": IVF lists and PQ codes shortlist RERANK_FACTOR * k
# candidates, which are then scored again exactly against the indexed vectors (the caller's
# matrix, memory-mapped float16 in the app: no second copy in the index file).  Until format 3
# the index held 8-bit scalar-quantised copies for this (faiss IndexRefine): they cost 256 bytes
# a vector and capped recall@10 at about 0.965 on the 1M stand-in set, where the exact
# re-ranking reaches 0.97 at half the search time (docs/PERFORMANCE.md).  The codes (format 4):
# 4-bit PQ over pairs of dimensions, scanned by faiss's SIMD "fast-scan" kernels, whose lookup
# tables fit in registers.  Twice the bytes of the earlier one-byte codes over 8 dimensions
# (64 against 32 a vector at 256 dimensions), but a finer shortlist for less work: on the 1M
# stand-in set held-out recall@10 0.983 at 0.54 ms against 0.975 at 0.80 ms, calibrated alike
# (docs/PERFORMANCE.md; 4-bit codes over 4 dimensions were too coarse: 0.92 at best).  Lists: about 4 * sqrt(N), and never more than
# N / IVF_TRAINING_PER_LIST, as k-means needs ~39 training points per list.  nprobe and the
# re-rank factor come from the recall sweep in docs/PERFORMANCE.md (benchmarks/search.py
# --sweep): caption queries sit apart from the images (the modality gap), so their neighbours
# spread over many lists, and at a fixed nprobe recall fell as the lists grew (nprobe 64: 0.975
# with 172 lists, 0.948 with 513); a fixed share of the lists keeps it.  OPQ was left out: its
# training took minutes on this CPU.
IVF_LISTS_PER_ROOT = 4
IVF_TRAINING_PER_LIST = 39
RERANK_SUBQUANTIZER_DIMS = 2  # dimensions per PQ subquantizer: 128 four-bit codes for 256 dimensions
RERANK_CODE_BITS = 4  # bits per subquantizer code: the fast-scan kernels take 4
RERANK_PROBE_SHARE = 0.25  # nprobe: this share of the lists
RERANK_FACTOR = 20
# Values per torch operation of the re-ranking's float16 conversion: at most PyTorch's grain size
# (at::internal::GRAIN_SIZE), below which an operation runs on the calling thread; the scores then
# come from faiss's single-threaded loop (scores_of_one).  A query stays on one thread, as in exact
# search: threads that wait for each other cost milliseconds under load.
TORCH_GRAIN = 32768
# Each faiss kind as a faiss.index_factory string, its fields from build_parameters.
FACTORY = {
    "flat": "Flat",
    "flat-fp16": "SQfp16",
    "sq8": "SQ8",
    "hnsw": "HNSW{neighbours}",
    # "np": no polysemous training, which only reorders codes for Hamming-distance filtering
    # (unused here) and took 90% of the build (28 s of 31 s for the demo's 6,708 vectors).
    "ivfpq": "IVF{lists},PQ{subquantizers}x{bits}np",
    "ivfpq-rerank": "IVF{lists},PQ{subquantizers}x{bits}fs",  # "fs": fast-scan; re-ranking: rerank_shortlist
}
KINDS = ("auto", "exact", *FACTORY)
# Part of every stored index's key: bump it when build_index changes what it builds for every kind
# (for one kind: KIND_FORMATS).
# 2: search settings calibrated and kept in the manifest; PQ without polysemous training.
STORED_INDEX_FORMAT = 2
# Kinds whose files changed since: their own format, so that the other kinds' stored files (an HNSW
# graph takes minutes to build at 1M vectors) stay valid across the change.
# ivfpq-rerank 3: re-ranks against the caller's vectors, not 8-bit copies in the file.
# ivfpq-rerank 4: 4-bit fast-scan PQ codes over pairs of dimensions, not one-byte codes over 8.
KIND_FORMATS = {"ivfpq-rerank": 4}
# Search settings chosen by measured recall (calibrate_search).  The target sits above the
# 0.95 the project asks for, so that queries the calibration did not see still clear it.
RECALL_TARGET = 0.97
CALIBRATION_QUERIES = 256  # queries sampled for the calibration
CALIBRATION_K = 10  # recall@k it measures
HNSW_DEPTH_LADDER = (32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)  # efSearch values tried
RERANK_PROBE_SHARES = (1 / 64, 1 / 32, 1 / 16, 1 / 8, 1 / 4, 1 / 2)  # nprobe as a share of the lists
RERANK_FACTORS = (5, 10, 20, 50, 100, 200, 400)  # re-rank factors tried
# Where no setting reaches the target, the cheapest within this much of the best recall measured:
# near the ceiling the last thousandths cost many times the work.
# (Keeping the size-based default instead when even the best stays under 0.95 was tried: HNSW on
# the 1M stand-in set of benchmarks/startup.py then answers at efSearch 192 with recall 0.73,
# against 0.94 at efSearch 1024 for about 1.4 ms more per query.)
RECALL_SLACK = 0.005
# The recall below which "auto" does not keep an HNSW graph: calibrated at its best, a graph under
# this floor is set beside the compressed kind, calibrated too, and the higher recall serves.
# (The 1M stand-in set of benchmarks/startup.py, 150 noisy copies of each demo image, keeps
# HNSW at 0.90 even at efSearch 1024; its compressed index reaches 0.96.)
RECALL_FLOOR = 0.95
FALLBACK_KIND = "ivfpq-rerank"  # what "auto" sets beside an HNSW graph that falls short
# Share of the machine's physical memory one index may take before auto picks the compressed kind.
MEMORY_SHARE = 0.25
HNSW_EXTRA_BYTES = 16  # per vector beyond vectors and level-0 links: upper levels, level numbers, offsets


def _as_float32(vectors: np.ndarray) -> np.ndarray:
    array = np.ascontiguousarray(np.asarray(vectors, dtype=np.float32))
    if array.ndim != 2:
        raise ValueError(f"expected (N, D) vectors, got shape {array.shape}")
    return array


@dataclass
class SearchIndex:
    """A faiss index plus the kind that was chosen."""

    index: object  # a faiss index, or the (N, D) float32 matrix for exact search
    kind: str
    size: int
    dim: int
    origin: str = "built"  # "built" here, or "loaded" from a stored file
    calibration: Calibration | None = None  # how the search settings were chosen; None: size-based defaults
    # ivfpq-rerank: the indexed (N, D) rows, float16 or float32, memory-mapped or not (not copied),
    # against which the shortlist is scored again; and the shortlist's size per result wanted.
    vectors: np.ndarray | None = None
    rerank_factor: int = RERANK_FACTOR

    def __post_init__(self) -> None:
        if self.kind == "ivfpq-rerank" and (self.vectors is None or np.shape(self.vectors) != (self.size, self.dim)):
            raise ValueError(f"ivfpq-rerank needs the {self.size} indexed vectors of {self.dim} dimensions to re-rank")

    def memory_bytes(self) -> int:
        """Size of the index's data structures (its serialised form), with the vectors ivfpq-rerank
        re-ranks against (which the app shares with its stored embeddings, memory-mapped)."""
        if self.kind == "exact":
            return int(self.index.nbytes)
        import faiss

        vectors = int(self.vectors.nbytes) if self.vectors is not None else 0
        return int(faiss.serialize_index(self.index).size) + vectors

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(Q, k) scores and (Q, k) row ids, best first; ids are -1 where fewer than k exist."""
        queries = _as_float32(queries)
        if queries.shape[1] != self.dim:
            raise ValueError(f"query dimension {queries.shape[1]} != index dimension {self.dim}")
        k = max(1, min(int(k), self.size)) if self.size else 1
        if self.size == 0:
            return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
        if self.kind == "exact":
            return exact_search(self.index, queries, k)
        if self.kind == "ivfpq-rerank":
            return rerank_shortlist(self.index, self.vectors, queries, k, self.rerank_factor)
        return self.index.search(queries, k)


def rerank_shortlist(
    index, vectors: np.ndarray, queries: np.ndarray, k: int, factor: int
) -> tuple[np.ndarray, np.ndarray]:
    """The best ``k`` of the ``factor * k`` candidates ``index`` shortlists for each query, scored
    again exactly against ``vectors`` (the indexed rows; float16 rows are scored in float32).

    (Q, k) scores and ids, best first, ties by lower id; ids -1 (and the lowest float32 score)
    where the shortlist holds fewer than ``k``.  Only the shortlisted rows of ``vectors`` are read.
    """
    _, shortlist = index.search(queries, max(k, min(index.ntotal, factor * k)))
    scores = np.full((len(queries), k), np.finfo(np.float32).min, np.float32)
    ids = np.full((len(queries), k), -1, np.int64)
    for row, (query, candidates) in enumerate(zip(queries, shortlist, strict=True)):
        candidates = np.sort(candidates[candidates >= 0])  # rows read in file order
        if not len(candidates):  # every probed list empty (or a query faiss could not place)
            continue
        exact = scores_of_one(as_float32_rows(np.take(vectors, candidates, axis=0)), query)
        best = np.lexsort((candidates, -exact))[:k]
        scores[row, : len(best)], ids[row, : len(best)] = exact[best], candidates[best]
    return scores, ids


def as_float32_rows(rows: np.ndarray) -> np.ndarray:
    """(N, D) ``rows`` as contiguous float32, converted on this thread: by torch (several times as
    fast as numpy from float16) in slices within its grain size, below which it uses no thread pool."""
    if rows.dtype == np.float32:
        return np.ascontiguousarray(rows)
    import torch

    from vse.serving.gallery import as_float32

    step = max(1, TORCH_GRAIN // max(1, rows.shape[1]))
    return as_float32(torch.from_numpy(np.ascontiguousarray(rows)), chunk=step).numpy()


def _top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Best k per row of (Q, M) scores: (Q, k) scores and ids, best first, ties by lower id.

    ``torch.topk`` selects (several times faster than ``np.argpartition``); rows
    where several entries tie at the k-th best score then take the lowest ids.
    """
    import torch

    k = min(k, scores.shape[1])
    part = torch.topk(torch.from_numpy(scores), k, dim=1).indices.numpy().astype(np.int64)
    kth = np.take_along_axis(scores, part, axis=1).min(axis=1)
    ambiguous = np.flatnonzero((scores >= kth[:, None]).sum(axis=1) > k)
    for row in ambiguous:  # rare with real embeddings: only exact ties at the cut
        candidates = np.flatnonzero(scores[row] >= kth[row])
        part[row] = candidates[np.lexsort((candidates, -scores[row, candidates]))[:k]]
    top = np.take_along_axis(scores, part, axis=1)
    order = np.lexsort((part, -top), axis=1)
    return np.take_along_axis(top, order, axis=1), np.take_along_axis(part, order, axis=1)


def exact_search(
    data: np.ndarray, queries: np.ndarray, k: int, max_scores: int = 2**25
) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force top-k by inner product, in query chunks of bounded memory.

    A few queries (the app's case) are scored one at a time on one thread
    (``scores_of_one``); more go through one BLAS pass over the matrix per chunk
    (BLAS uses every core and runs close to the memory-bandwidth bound,
    docs/PERFORMANCE.md). Then top-k selection. Returns (Q, k) scores and (Q, k)
    row ids, best first (ties: lower id first).
    """
    data, queries = _as_float32(data), _as_float32(queries)
    k = max(1, min(int(k), len(data)))
    if not len(queries):
        return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
    if len(queries) <= FEW_QUERIES:
        return _top_k(np.stack([scores_of_one(data, query) for query in queries]), k)
    chunk = max(1, max_scores // max(1, len(data)))
    parts = [_top_k(queries[start : start + chunk] @ data.T, k) for start in range(0, len(queries), chunk)]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def scores_of_one(data: np.ndarray, query: np.ndarray) -> np.ndarray:
    """(N,) inner products of one query with every row of contiguous float32 ``data``, on this thread.

    faiss's SIMD loop over the rows. A multi-threaded BLAS matrix-vector product is
    as fast on a quiet machine, but its threads wait for each other whenever the
    cores are busy (other requests, other processes): in a profile of the app under
    load it took 5 ms of a search over 6,708 images (docs/PERFORMANCE.md).
    """
    import faiss

    query = np.ascontiguousarray(query, dtype=np.float32)
    scores = np.empty(len(data), dtype=np.float32)
    faiss.fvec_inner_products_ny(
        faiss.swig_ptr(scores), faiss.swig_ptr(query), faiss.swig_ptr(data), data.shape[1], len(data)
    )
    return scores


def physical_memory_bytes() -> int:
    """This machine's physical memory (0 where the system does not say)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 0


def default_memory_budget() -> float:
    """Bytes one index may take: MEMORY_SHARE of physical memory (no limit where it is unknown)."""
    total = physical_memory_bytes()
    return total * MEMORY_SHARE if total > 0 else float("inf")


def hnsw_bytes(size: int, dim: int, neighbours: int = HNSW_NEIGHBOURS) -> int:
    """Memory of an HNSW graph over (size, dim) float32 vectors: the vectors, 2*M level-0 links of
    4 bytes, and HNSW_EXTRA_BYTES (faiss's serialised size at 100k and 1M vectors of 256 dimensions)."""
    return size * (4 * dim + 2 * neighbours * 4 + HNSW_EXTRA_BYTES)


def choose_kind(size: int, dim: int = 0, memory_budget: float = float("inf")) -> str:
    """Exact search up to EXACT_MAX vectors; HNSW while it fits ``memory_budget`` bytes; beyond,
    the compressed "ivfpq-rerank" (about a fifth of HNSW's memory at 256 dimensions)."""
    if size <= EXACT_MAX:
        return "exact"
    if hnsw_bytes(size, dim) <= memory_budget:
        return "hnsw"
    return "ivfpq-rerank"


def resolve_kind(kind: str, size: int, dim: int = 0, memory_budget: float = float("inf")) -> str:
    """``kind`` with "auto" replaced by the kind chosen for ``size`` vectors of ``dim`` within
    ``memory_budget``; "exact" where there are too few vectors to train the kind (``trainable``)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    chosen = choose_kind(size, dim, memory_budget) if kind == "auto" else kind
    if not trainable(chosen, size, dim):
        log.info("%d vectors are too few to train a %s index: exact search serves them", size, chosen)
        return "exact"
    return chosen


def trainable(kind: str, size: int, dim: int) -> bool:
    """Whether ``size`` vectors can train a ``kind`` index: IVF-PQ's k-means needs a point per list
    and one per centroid of each codebook (2 ** bits)."""
    params = build_parameters(kind, size, dim)
    return "bits" not in params or size >= max(2 ** params["bits"], params["lists"])


def ivf_lists(size: int) -> int:
    """IVF lists for ``size`` vectors: IVF_LISTS_PER_ROOT * sqrt(size), at most size / IVF_TRAINING_PER_LIST."""
    return max(1, min(int(IVF_LISTS_PER_ROOT * np.sqrt(size)), size // IVF_TRAINING_PER_LIST))


def build_parameters(kind: str, size: int, dim: int, lists: int | None = None) -> dict[str, int]:
    """What shapes a ``kind`` index of (size, dim) vectors besides the vectors themselves.

    Search-time settings (efSearch, nprobe, re-rank factor) are left out: they are set
    after a read as after a build, so changing them needs no rebuild.
    """
    if kind == "hnsw":
        return {"neighbours": HNSW_NEIGHBOURS, "build_depth": HNSW_BUILD_DEPTH}
    if kind == "ivfpq":
        return {"lists": lists or max(16, int(4 * np.sqrt(size))), "subquantizers": max(1, dim // 4), "bits": 8}
    if kind == "ivfpq-rerank":
        subquantizers = max(1, dim // RERANK_SUBQUANTIZER_DIMS)
        while dim % subquantizers:  # PQ needs equal slices of the dimensions
            subquantizers -= 1
        return {"lists": lists or ivf_lists(size), "subquantizers": subquantizers, "bits": RERANK_CODE_BITS}
    return {}


def factory_string(kind: str, params: dict[str, int]) -> str:
    """The ``faiss.index_factory`` description of a ``kind`` index with ``params``."""
    return FACTORY[kind].format(**params)


def _empty_faiss_index(kind: str, dim: int, params: dict[str, int]):
    import faiss

    index = faiss.index_factory(dim, factory_string(kind, params), faiss.METRIC_INNER_PRODUCT)
    if kind == "hnsw":
        index.hnsw.efConstruction = params["build_depth"]
    return index


def hnsw_search_depth(size: int) -> int:
    """efSearch for an HNSW graph of ``size`` vectors (see HNSW_SEARCH_DEPTH)."""
    tenfolds = max(0.0, np.log10(max(size, 1) / HNSW_SEARCH_DEPTH_FROM))
    return HNSW_SEARCH_DEPTH + HNSW_SEARCH_DEPTH_STEP * int(np.ceil(tenfolds - 1e-9))


def rerank_probes(lists: int) -> int:
    """nprobe of the compressed kind over ``lists`` inverted lists (see RERANK_PROBE_SHARE)."""
    return max(1, min(lists, round(lists * RERANK_PROBE_SHARE)))


def _inverted_lists(index):
    import faiss

    return faiss.extract_index_ivf(index)


def default_search_settings(kind: str, size: int, lists: int = 0) -> dict[str, int]:
    """Size-based search settings, used where no calibration chose them."""
    if kind == "hnsw":
        return {"ef_search": hnsw_search_depth(size)}
    if kind == "ivfpq":
        return {"nprobe": min(IVF_PROBES, max(1, lists))}
    if kind == "ivfpq-rerank":
        return {"nprobe": rerank_probes(lists), "k_factor": RERANK_FACTOR}
    return {}


def search_settings_of(index: SearchIndex) -> dict[str, int]:
    """The search settings ``index`` answers with now."""
    if index.kind == "hnsw":
        return {"ef_search": int(index.index.hnsw.efSearch)}
    if index.kind == "ivfpq":
        return {"nprobe": int(index.index.nprobe)}
    if index.kind == "ivfpq-rerank":
        return {"nprobe": int(_inverted_lists(index.index).nprobe), "k_factor": int(index.rerank_factor)}
    return {}


def apply_search_settings(index: SearchIndex, settings: dict[str, int]) -> None:
    """Set ``settings`` (from ``default_search_settings`` or a calibration) on ``index``."""
    if index.kind == "hnsw":
        index.index.hnsw.efSearch = int(settings["ef_search"])
    elif index.kind == "ivfpq":
        index.index.nprobe = int(settings["nprobe"])
    elif index.kind == "ivfpq-rerank":
        index.rerank_factor = int(settings["k_factor"])
        _inverted_lists(index.index).nprobe = int(settings["nprobe"])


def _set_default_search_settings(index: SearchIndex) -> None:
    """Size-based settings, set after a build or a read (so they need no rebuild)."""
    lists = _inverted_lists(index.index).nlist if index.kind in ("ivfpq", "ivfpq-rerank") else 0
    apply_search_settings(index, default_search_settings(index.kind, index.size, lists))


# ------------------------------------------------------------------ search settings by measured recall
@dataclass(frozen=True)
class Calibration:
    """The search settings chosen by ``calibrate_search`` and the recall@k they reached on its queries."""

    settings: dict[str, int]
    recall: float
    queries: int
    target: float
    k: int = CALIBRATION_K

    @property
    def met(self) -> bool:
        return self.recall >= self.target

    def to_json(self) -> dict:
        return {"settings": self.settings, "recall": self.recall, "queries": self.queries,
                "target": self.target, "k": self.k}  # fmt: skip

    @classmethod
    def from_json(cls, data: dict) -> Calibration:
        settings = data["settings"]
        if not isinstance(settings, dict) or not settings or not all(map(_positive_int, settings.values())):
            raise ValueError(f"search settings must be positive integers, got {settings!r}")
        return cls(dict(settings), float(data["recall"]), int(data["queries"]), float(data["target"]), int(data["k"]))


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def search_cost(kind: str, settings: dict[str, int], size: int, dim: int, lists: int = 0, codes: int = 0) -> float:
    """Rough work per query of ``kind`` at ``settings``, to order candidate settings (not a time).

    HNSW: efSearch (the candidate list it keeps).  The compressed kind: the coarse
    quantiser (``lists`` × ``dim``), the PQ codes scanned in the probed lists (``codes`` bytes
    each) and the shortlist re-scored at full dimension (re-rank factor × k × ``dim``)."""
    if kind == "hnsw":
        return float(settings["ef_search"])
    if kind == "ivfpq-rerank":
        scanned = size * min(1.0, settings["nprobe"] / max(1, lists)) * codes
        return float(lists * dim + scanned + settings["k_factor"] * CALIBRATION_K * dim)
    return 0.0


def candidate_settings(kind: str, size: int, dim: int, lists: int = 0, codes: int = 0) -> list[dict[str, int]]:
    """The settings calibration tries for ``kind``, cheapest first by ``search_cost`` (no duplicates)."""
    if kind == "hnsw":
        candidates = [{"ef_search": depth} for depth in HNSW_DEPTH_LADDER]
    elif kind == "ivfpq-rerank":
        probes = sorted({max(1, min(lists, round(lists * share))) for share in RERANK_PROBE_SHARES})
        candidates = [{"nprobe": p, "k_factor": f} for p in probes for f in RERANK_FACTORS]
    else:
        return []
    return sorted(candidates, key=lambda s: (search_cost(kind, s, size, dim, lists, codes), sorted(s.items())))


def calibration_queries(vectors: np.ndarray, count: int = CALIBRATION_QUERIES, seed: int = 0) -> np.ndarray:
    """Up to ``count`` rows of ``vectors`` (e.g. the other modality's embeddings) as float32: a fixed
    random sample in row order, rows of zero length (nothing was encoded) left out.  Only the
    sampled rows are read, so a memory-mapped float16 matrix is not copied whole."""
    picked = np.arange(len(vectors))
    if len(vectors) > count:
        picked = np.sort(np.random.default_rng(seed).choice(len(vectors), count, replace=False))
    rows = np.asarray(vectors[picked], dtype=np.float32).reshape(len(picked), -1)
    return np.ascontiguousarray(rows[np.linalg.norm(rows, axis=1) > 0.5])


def recall_at_k(vectors: np.ndarray, queries: np.ndarray, found: np.ndarray, kth_scores: np.ndarray) -> float:
    """Recall@k of ``found`` (Q, k) ids: a found row counts when its exact score reaches the query's
    k-th best exact score (``kth_scores``), so which of several equal rows comes back is no error."""
    valid = found >= 0
    scores = np.einsum("qkd,qd->qk", vectors[np.where(valid, found, 0)], queries)
    hits = (scores >= kth_scores[:, None] - 1e-5) & valid
    return float(np.mean(hits.sum(axis=1) / found.shape[1]))


def calibrate_search(
    index: SearchIndex, vectors: np.ndarray, queries: np.ndarray, target: float = RECALL_TARGET, k: int = CALIBRATION_K
) -> Calibration | None:
    """Choose ``index``'s search settings by measured recall, and set them.

    Tries ``candidate_settings`` cheapest first and keeps the first whose recall@k on
    ``queries`` (against exact search over ``vectors``, the indexed rows) reaches
    ``target``.  If none does, every candidate is measured and the cheapest within
    RECALL_SLACK of the best recall is kept (``choose_measured``; a warning says so).  None (settings untouched) for kinds without search
    settings to choose, or with no queries or no more rows than k."""
    vectors, queries = _as_float32(vectors), _as_float32(queries)
    if index.kind not in ("hnsw", "ivfpq-rerank") or not len(queries) or index.size <= k:
        return None
    lists = codes = 0
    if index.kind == "ivfpq-rerank":
        ivf = _inverted_lists(index.index)
        lists, codes = ivf.nlist, ivf.code_size
    kth_scores = exact_search(vectors, queries, k)[0][:, -1]
    measured: list[tuple[float, dict[str, int]]] = []
    for settings in candidate_settings(index.kind, index.size, index.dim, lists, codes):
        apply_search_settings(index, settings)
        measured.append((recall_at_k(vectors, queries, index.search(queries, k)[1], kth_scores), settings))
        if measured[-1][0] >= target:
            break
    recall, settings = choose_measured(measured, target)
    apply_search_settings(index, settings)
    if recall < target:
        log.warning("%s index: no setting reached recall@%d %.2f (best %.3f); kept %s at %.3f",
                    index.kind, k, target, max(r for r, _ in measured), settings, recall)  # fmt: skip
    return Calibration(settings, recall, len(queries), target, k)


def choose_measured(measured: list[tuple[float, dict[str, int]]], target: float) -> tuple[float, dict[str, int]]:
    """From (recall, settings) pairs listed cheapest first: the first reaching ``target``, else the
    first within RECALL_SLACK of the best recall."""
    for recall, settings in measured:
        if recall >= target:
            return recall, settings
    best = max(recall for recall, _ in measured)
    return next((r, s) for r, s in measured if r >= best - RECALL_SLACK)


def build_index(
    embeddings: np.ndarray,
    kind: str = "auto",
    *,
    ivf_lists: int | None = None,
    memory_budget: float | None = None,
    queries: np.ndarray | None = None,
) -> SearchIndex:
    """An index over (N, D) normalised embeddings; ``kind`` in KINDS.

    ``memory_budget``: bytes the index may take when ``kind`` is "auto" (None: a share of this
    machine's memory, ``default_memory_budget``; ``float("inf")``: no limit).  ``queries``: (Q, D)
    queries like the ones the index will serve; given, the search settings are chosen by
    measured recall on them (``calibrate_search``), else the size-based defaults are kept.
    With both "auto" and ``queries``, an HNSW graph that misses RECALL_FLOOR is compared with
    the compressed kind (``falls_short``, ``higher_recall``).
    """
    if np.ndim(embeddings) != 2:
        raise ValueError(f"expected (N, D) vectors, got shape {np.shape(embeddings)}")
    size, dim = np.shape(embeddings)
    budget = default_memory_budget() if memory_budget is None else memory_budget
    built = _build_kind(embeddings, resolve_kind(kind, size, dim, budget), ivf_lists, queries)
    if kind == "auto" and falls_short(built):
        built = higher_recall(built, _build_kind(embeddings, FALLBACK_KIND, ivf_lists, queries))
    return built


def _build_kind(embeddings: np.ndarray, kind: str, ivf_lists: int | None, queries: np.ndarray | None) -> SearchIndex:
    """A ``kind`` index over ``embeddings``; the float32 copy a build needs is dropped after it
    (ivfpq-rerank keeps ``embeddings`` themselves, a memory map stays one)."""
    vectors = _as_float32(embeddings)
    size, dim = vectors.shape
    if kind == "exact":
        return SearchIndex(vectors, kind, size, dim)
    params = build_parameters(kind, size, dim, ivf_lists)
    index = _empty_faiss_index(kind, dim, params)
    if kind in ("ivfpq", "ivfpq-rerank"):  # k-means and codebooks on a sample: 64 points a list
        sample = np.random.default_rng(0).choice(size, min(size, 64 * params["lists"]), replace=False)
        index.train(vectors[np.sort(sample)])
    if size:
        if not index.is_trained:
            index.train(vectors)
        index.add(vectors)
    built = SearchIndex(index, kind, size, dim, vectors=np.asarray(embeddings) if kind == "ivfpq-rerank" else None)
    _set_default_search_settings(built)  # after add: efSearch depends on the size
    if queries is not None:
        built.calibration = calibrate_search(built, vectors, queries)
    return built


def falls_short(index: SearchIndex) -> bool:
    """True for an HNSW graph whose calibrated recall stays under RECALL_FLOOR."""
    return index.kind == "hnsw" and index.calibration is not None and index.calibration.recall < RECALL_FLOOR


def higher_recall(graph: SearchIndex, compressed: SearchIndex) -> SearchIndex:
    """Of an HNSW graph that fell short and the compressed index over the same rows, the one whose
    calibration measured the higher recall (the graph on a tie, or where one was not calibrated)."""
    if graph.calibration is None or compressed.calibration is None:
        return graph
    chosen = compressed if compressed.calibration.recall > graph.calibration.recall else graph
    log.warning("HNSW reached recall@%d %.3f at best, under %.2f; the compressed kind reached %.3f: %s serves",
                graph.calibration.k, graph.calibration.recall, RECALL_FLOOR, compressed.calibration.recall,
                chosen.kind)  # fmt: skip
    return chosen


# ------------------------------------------------------------------ stored indexes
@dataclass(frozen=True)
class IndexStore:
    """Where stored indexes are looked for: ``read_only`` folders (e.g. shipped assets) first,
    then ``folder``, the only one written to."""

    folder: Path
    read_only: tuple[Path, ...] = ()


def index_key(
    name: str, model: str, gallery: str, kind: str, params: dict, size: int, dim: int, calibration: dict | None = None
) -> dict:
    """Everything a stored index depends on; a stored index is used only when all of it matches.
    ``calibration``: what its search settings were chosen against (``calibration_key``), None for
    the size-based defaults."""
    return {"format": KIND_FORMATS.get(kind, STORED_INDEX_FORMAT), "name": name, "model": model, "gallery": gallery,
            "kind": kind, "params": params, "size": size, "dim": dim, "calibration": calibration}  # fmt: skip


def calibration_key(queries: np.ndarray | None) -> dict | None:
    """The part of a stored index's key that names its calibration: the rule's constants, k and the queries' digest.

    The digest is taken over the queries rounded to float16, as embeddings are stored: a first
    start (freshly encoded float32 embeddings) and a restart (the stored float16 ones) agree."""
    if queries is None:
        return None
    digest = hashlib.sha256(_as_float32(queries).astype(np.float16).tobytes()).hexdigest()[:16]
    return {
        "target": RECALL_TARGET,
        "slack": RECALL_SLACK,
        "k": CALIBRATION_K,
        "queries": digest,
    }


def key_digest(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def stored_index_path(folder: Path, key: dict) -> Path:
    """``<folder>/<name>-<kind>-<digest[:16]>.faiss``; beside it a ``.json`` manifest."""
    return Path(folder) / f"{key['name']}-{key['kind']}-{key_digest(key)[:16]}.faiss"


def _manifest_path(index_path: Path) -> Path:
    return index_path.with_suffix(".json")


def write_atomically(path: Path, write) -> None:
    """``write(temp_path)``, then rename over ``path``: a reader sees the old file or the whole new one.

    Never rewritten in place: a running service that maps the old file keeps its
    inode, where truncating it would crash that service (SIGBUS).
    """
    for stale in path.parent.glob(f".{path.name}.*.tmp"):  # left by a save that was killed
        stale.unlink(missing_ok=True)
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        write(temp)
        os.chmod(temp, 0o644)  # as an ordinary file, not mkstemp's owner-only mode
        with open(temp, "rb") as written:
            os.fsync(written.fileno())
        os.replace(temp, path)
        _sync_folder(path.parent)
    finally:
        if os.path.exists(temp):
            os.unlink(temp)


def _sync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` survive a power cut (a no-op where folders cannot be opened)."""
    try:
        handle = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def save_stored_index(index: SearchIndex, path: Path, key: dict) -> None:
    """Write a faiss index and then its manifest (key and byte size), each atomically.

    The manifest goes last and is removed first, so a kill part-way leaves an
    index without a manifest, which is never read.
    """
    import faiss

    path.parent.mkdir(parents=True, exist_ok=True)
    _manifest_path(path).unlink(missing_ok=True)
    write_atomically(path, lambda temp: faiss.write_index(index.index, temp))
    manifest = {"key": key, "digest": key_digest(key), "bytes": path.stat().st_size,
                "search": index.calibration.to_json() if index.calibration else None}  # fmt: skip
    write_atomically(_manifest_path(path), lambda temp: Path(temp).write_text(json.dumps(manifest, indent=1)))


class StoredIndexError(RuntimeError):
    """A stored index that is missing, incomplete, corrupt or made for something else."""


def _read_faiss(path: Path):
    """Memory-mapped where the file system allows (``IO_FLAG_MMAP_IFC`` maps flat, scalar-quantised,
    HNSW and plain IVF indexes alike; plain ``IO_FLAG_MMAP`` maps only IVF lists), else read into
    memory.  faiss 1.15 reads the compressed kind's fast-scan lists into memory whatever the flag
    (64 bytes a vector: 76 MB of private memory at 1M vectors)."""
    import faiss

    try:
        return faiss.read_index(str(path), faiss.IO_FLAG_MMAP_IFC)
    except RuntimeError:
        return faiss.read_index(str(path))


def read_stored_index(path: Path, key: dict, vectors: np.ndarray | None = None) -> SearchIndex:
    """The stored index at ``path`` if its manifest matches ``key`` and the file is whole.
    ``vectors``: the indexed rows, which an ivfpq-rerank index re-ranks against (see ``SearchIndex``)."""
    try:
        manifest = json.loads(_manifest_path(path).read_text())
    except (OSError, ValueError) as err:
        raise StoredIndexError(f"no readable manifest beside {path}: {err}") from err
    if manifest.get("key") != key or manifest.get("digest") != key_digest(key):
        raise StoredIndexError(f"{path} was made for something else")
    if not path.is_file() or path.stat().st_size != manifest.get("bytes"):
        raise StoredIndexError(f"{path} is missing or not of the size it was written with")
    try:
        index = _read_faiss(path)
    except RuntimeError as err:
        raise StoredIndexError(f"faiss cannot read {path}: {str(err).splitlines()[0]}") from err
    if index.ntotal != key["size"] or index.d != key["dim"]:
        raise StoredIndexError(f"{path} holds {index.ntotal} vectors of {index.d} dimensions, not the expected ones")
    kept = np.asarray(vectors) if key["kind"] == "ivfpq-rerank" and vectors is not None else None
    stored = SearchIndex(index, key["kind"], key["size"], key["dim"], origin="loaded", vectors=kept)
    try:
        if manifest.get("search") is not None:
            stored.calibration = Calibration.from_json(manifest["search"])
            apply_search_settings(stored, stored.calibration.settings)
        else:
            _set_default_search_settings(stored)
    except (KeyError, TypeError, ValueError) as err:
        raise StoredIndexError(f"the manifest beside {path} holds unreadable search settings: {err!r}") from err
    return stored


def _load_stored(store: IndexStore, key: dict, vectors: np.ndarray) -> SearchIndex | None:
    for folder in (*store.read_only, store.folder):
        path = stored_index_path(folder, key)
        if not path.exists() and not _manifest_path(path).exists():
            continue
        start = time.perf_counter()
        try:
            index = read_stored_index(path, key, vectors)
        except StoredIndexError as err:
            log.warning("stored %s index not used, it will be rebuilt: %s", key["name"], err)
            continue
        log.info("loaded the %s index from %s (%s, %d vectors) in %.3f s",
                 key["name"], path, key["kind"], key["size"], time.perf_counter() - start)  # fmt: skip
        return index
    return None


def load_or_build_index(
    embeddings: np.ndarray,
    kind: str,
    *,
    name: str,
    model: str,
    gallery: str,
    store: IndexStore | None,
    memory_budget: float | None = None,
    queries: np.ndarray | None = None,
) -> SearchIndex:
    """The index of ``name`` ("image", "caption") read from ``store`` when one matches, else built
    (and saved to ``store.folder``).  ``model`` and ``gallery`` are the digests the embeddings
    depend on.  Exact search has no file to store: it keeps the matrix.  ``memory_budget`` and
    ``queries`` (calibration queries) as for ``build_index``; when "auto" sets the compressed kind
    beside an HNSW graph that falls short, both are stored, so a restart makes the same choice
    without building either."""
    if np.ndim(embeddings) != 2:
        raise ValueError(f"expected (N, D) vectors, got shape {np.shape(embeddings)}")
    size, dim = np.shape(embeddings)  # a stored index needs no float32 copy of a mapped float16 matrix
    chosen = resolve_kind(kind, size, dim, default_memory_budget() if memory_budget is None else memory_budget)
    if chosen not in ("hnsw", "ivfpq-rerank"):
        queries = None  # nothing to calibrate
    digests = {"name": name, "model": model, "gallery": gallery}
    if kind == "auto" and chosen == "hnsw" and store is not None:
        keys = (_kind_key(embeddings, k, queries, digests) for k in ("hnsw", FALLBACK_KIND))
        stored = _stored_fallback(store, *keys, embeddings)
        if stored is not None:
            return stored
    index = _load_or_build_kind(embeddings, chosen, store, queries, digests)
    if kind == "auto" and falls_short(index):
        index = higher_recall(index, _load_or_build_kind(embeddings, FALLBACK_KIND, store, queries, digests))
    return index


def _kind_key(embeddings: np.ndarray, kind: str, queries: np.ndarray | None, digests: dict) -> dict:
    size, dim = np.shape(embeddings)
    return index_key(
        digests["name"], digests["model"], digests["gallery"], kind, build_parameters(kind, size, dim), size, dim,
        calibration_key(queries),
    )  # fmt: skip


def stored_calibration(store: IndexStore, key: dict) -> Calibration | None:
    """The calibration recorded in the manifest of the stored index ``_load_stored`` would read for
    ``key`` (the first folder holding a matching manifest beside a file of the size it records),
    without reading the index; None where there is none or it records no calibration."""
    for folder in (*store.read_only, store.folder):
        path = stored_index_path(folder, key)
        try:
            manifest = json.loads(_manifest_path(path).read_text())
            if manifest.get("key") != key or manifest.get("digest") != key_digest(key):
                continue
            if not path.is_file() or path.stat().st_size != manifest.get("bytes"):
                continue
            return Calibration.from_json(manifest["search"]) if manifest.get("search") else None
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue
    return None


def _stored_fallback(store: IndexStore, graph_key: dict, fallback_key: dict, vectors: np.ndarray) -> SearchIndex | None:
    """The stored compressed index where the stored graph's manifest and the compressed index as read
    show it is what ``higher_recall`` would serve, read without reading the HNSW graph (5 s and 1.3 GB
    at 1M vectors); else None (the caller then reads both, as before)."""
    graph = stored_calibration(store, graph_key)
    if graph is None or graph.recall >= RECALL_FLOOR:
        return None
    fallback = stored_calibration(store, fallback_key)
    if fallback is None or fallback.recall <= graph.recall:
        return None
    index = _load_stored(store, fallback_key, vectors)
    if index is None or index.calibration is None or index.calibration.recall <= graph.recall:
        return None  # what was read is not what the manifest promised: decide on both indexes as read
    log.warning("HNSW reached recall@%d %.3f at best, under %.2f; the compressed kind reached %.3f: %s serves "
                "(chosen from the stored manifests)", graph.k, graph.recall, RECALL_FLOOR, index.calibration.recall,
                index.kind)  # fmt: skip
    return index


def _load_or_build_kind(
    embeddings: np.ndarray, kind: str, store: IndexStore | None, queries: np.ndarray | None, digests: dict
) -> SearchIndex:
    size = np.shape(embeddings)[0]
    name = digests["name"]
    key = _kind_key(embeddings, kind, queries, digests)
    if store is not None and kind != "exact":
        stored = _load_stored(store, key, embeddings)
        if stored is not None:
            return stored
    start = time.perf_counter()
    index = _build_kind(embeddings, kind, None, queries)
    log.info("built the %s index (%s, %d vectors) in %.1f s", name, kind, size, time.perf_counter() - start)
    if index.calibration is not None:
        log.info("%s index search settings %s: recall@%d %.3f on %d queries", name, index.calibration.settings,
                 index.calibration.k, index.calibration.recall, index.calibration.queries)  # fmt: skip
    if store is not None and kind != "exact":
        _save_quietly(index, stored_index_path(store.folder, key), key)
    return index


def _save_quietly(index: SearchIndex, path: Path, key: dict) -> None:
    """Save, or log why not: a full disk or read-only data folder costs a rebuild next start, not this one."""
    try:
        save_stored_index(index, path, key)
    except (OSError, RuntimeError) as err:
        log.warning("could not save the %s index to %s: %s", key["name"], path, err)
        return
    log.info("saved the %s index to %s", key["name"], path)
    prune_superseded(path.parent, key)


def prune_superseded(folder: Path, key: dict) -> list[Path]:
    """Delete the stored indexes in ``folder`` that ``key`` supersedes: made for the same name, kind,
    model and gallery in an older file format (an upgrade of this library), which no start of this
    version reads again, whatever parameters or calibration they were made with (a format change
    may change the parameters themselves: format 4 of the compressed kind did).  An HNSW graph of 1M
    vectors is 1.3 GB.  Newer formats (a newer version sharing the folder) and other names, kinds,
    models or galleries are left.  A running process that maps a deleted file keeps reading it.
    The paths deleted."""
    identity = ("name", "kind", "model", "gallery")
    removed = []
    for manifest_path in Path(folder).glob(f"{key['name']}-{key['kind']}-*.json"):
        try:
            stored = json.loads(manifest_path.read_text()).get("key")
        except (OSError, ValueError, AttributeError):
            continue  # unreadable or being written: not ours to judge
        if not isinstance(stored, dict) or not _older_format(stored.get("format"), key["format"]):
            continue
        if any(stored.get(name) != key[name] for name in identity):
            continue
        index_path = manifest_path.with_suffix(".faiss")
        try:
            manifest_path.unlink(missing_ok=True)  # the manifest first, as save_stored_index writes it last
            index_path.unlink(missing_ok=True)
        except OSError as err:
            log.warning("could not delete the superseded index %s: %s", index_path, err)
            continue
        removed.append(index_path)
        log.info("deleted %s, stored in format %s and superseded by format %s", index_path, stored.get("format"),
                 key["format"])  # fmt: skip
    return removed


def _older_format(stored: object, current: int) -> bool:
    return isinstance(stored, int) and not isinstance(stored, bool) and stored < current
