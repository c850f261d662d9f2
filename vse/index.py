"""Nearest-neighbour search over normalised embeddings (inner product = cosine).

One entry point, ``build_index(embeddings)``, picks the index type by size:
exact search (``exact_search``: one BLAS pass, then top-k selection) up to
``EXACT_MAX`` vectors, a graph index (faiss HNSW) beyond.  The switch point and
the HNSW parameters come from the measurements in ``docs/PERFORMANCE.md``;
``kind=`` forces a type (faiss flat, fp16 or int8 storage, IVF-PQ are there too).
"""

from __future__ import annotations

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

    One BLAS pass over the matrix per chunk (BLAS uses every core and runs close
    to the memory-bandwidth bound, docs/PERFORMANCE.md), then top-k selection.
    Returns (Q, k) scores and (Q, k) row ids, best first (ties: lower id first).
    """
    data, queries = _as_float32(data), _as_float32(queries)
    k = max(1, min(int(k), len(data)))
    chunk = max(1, max_scores // max(1, len(data)))
    parts = [_top_k(queries[start : start + chunk] @ data.T, k) for start in range(0, len(queries), chunk)]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


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
