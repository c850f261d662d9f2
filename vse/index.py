"""Nearest-neighbour search over normalised embeddings (inner product = cosine).

One entry point, ``build_index(embeddings)``, picks the index type by size:
exact search (``exact_search``: BLAS over row blocks in parallel threads) up to
``EXACT_MAX`` vectors, a graph index (faiss HNSW) beyond.  The switch point and
the HNSW parameters come from the measurements in ``docs/PERFORMANCE.md``;
``kind=`` forces a type (faiss flat, fp16 or int8 storage, IVF-PQ are there too).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

# Up to this many vectors exact search answers a query in a few milliseconds; beyond,
# HNSW answers in well under one (docs/PERFORMANCE.md: 0.25 ms at 100k and 1M).
EXACT_MAX = 50_000
HNSW_NEIGHBOURS = 32  # M: graph degree
HNSW_BUILD_DEPTH = 80  # efConstruction
HNSW_SEARCH_DEPTH = 64  # efSearch
KINDS = ("auto", "exact", "flat", "flat-fp16", "sq8", "hnsw", "ivfpq")


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

    def memory_bytes(self) -> int:
        """Size of the index's data structures (its serialised form)."""
        if self.kind == "exact":
            return int(self.index.nbytes)
        import faiss

        return int(faiss.serialize_index(self.index).size)

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
        return self.index.search(queries, k)


def _top_k(scores: np.ndarray, k: int, offset: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Best k per row of (Q, M) scores: (Q, k) scores and ids (+offset), best first, ties by id.

    Rows where several entries tie at the k-th best score take the lowest ids
    among them, not whichever the partition happened to keep.
    """
    k = min(k, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    kth = np.take_along_axis(scores, part, axis=1).min(axis=1)
    ambiguous = np.flatnonzero((scores >= kth[:, None]).sum(axis=1) > k)
    for row in ambiguous:  # rare with real embeddings: only exact ties at the cut
        candidates = np.flatnonzero(scores[row] >= kth[row])
        part[row] = candidates[np.lexsort((candidates, -scores[row, candidates]))[:k]]
    top = np.take_along_axis(scores, part, axis=1)
    order = np.lexsort((part, -top), axis=1)
    return np.take_along_axis(top, order, axis=1), np.take_along_axis(part, order, axis=1).astype(np.int64) + offset


def _block_top_k(job: tuple[np.ndarray, np.ndarray, int, int]) -> tuple[np.ndarray, np.ndarray]:
    queries, rows, k, offset = job
    return _top_k(queries @ rows.T, k, offset)


def exact_search(
    data: np.ndarray, queries: np.ndarray, k: int, max_scores: int = 2**24, threads: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force top-k by inner product: row blocks scanned in parallel threads.

    Each thread streams its share of the matrix once per query chunk (BLAS, no
    GIL), keeps its local top-k, and the local results are merged; memory for
    scores stays under ``max_scores`` floats per thread.  Returns (Q, k) scores
    and (Q, k) row ids, best first (ties: lower id first).
    """
    data, queries = _as_float32(data), _as_float32(queries)
    k = max(1, min(int(k), len(data)))
    threads = max(1, min(threads or os.cpu_count() or 1, max(1, len(data) // 10_000)))
    bounds = np.linspace(0, len(data), threads + 1).astype(int)
    chunk = max(1, max_scores // max(1, bounds[1] - bounds[0]))
    all_scores, all_ids = [], []
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for start in range(0, len(queries), chunk):
            block = queries[start : start + chunk]
            parts = list(
                pool.map(
                    _block_top_k, [(block, data[lo:hi], k, lo) for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)]
                )
            )
            scores, ids = np.concatenate([p[0] for p in parts], axis=1), np.concatenate([p[1] for p in parts], axis=1)
            best, where = _top_k(scores, k)
            all_scores.append(best)
            all_ids.append(np.take_along_axis(ids, where, axis=1))
    return np.concatenate(all_scores), np.concatenate(all_ids)


def choose_kind(size: int) -> str:
    return "exact" if size <= EXACT_MAX else "hnsw"


def build_index(embeddings: np.ndarray, kind: str = "auto", *, ivf_lists: int | None = None) -> SearchIndex:
    """An index over (N, D) normalised embeddings; ``kind`` in KINDS."""
    import faiss

    vectors = _as_float32(embeddings)
    size, dim = vectors.shape
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    kind = choose_kind(size) if kind == "auto" else kind
    if kind == "exact":
        return SearchIndex(vectors, kind, size, dim)
    if kind == "flat":
        index = faiss.IndexFlatIP(dim)
    elif kind == "flat-fp16":
        index = faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT)
    elif kind == "sq8":
        index = faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, HNSW_NEIGHBOURS, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = HNSW_BUILD_DEPTH
        index.hnsw.efSearch = HNSW_SEARCH_DEPTH
    else:
        lists = ivf_lists or max(16, int(4 * np.sqrt(size)))
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFPQ(quantizer, dim, lists, max(1, dim // 4), 8, faiss.METRIC_INNER_PRODUCT)
        index.train(vectors[np.random.default_rng(0).choice(size, min(size, 64 * lists), replace=False)])
        index.nprobe = 16
    if size:
        if not index.is_trained:
            index.train(vectors)
        index.add(vectors)
    return SearchIndex(index, kind, size, dim)
