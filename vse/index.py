"""Nearest-neighbour search over normalised embeddings (inner product = cosine).

One entry point, ``build_index(embeddings)``, picks the index type by size:
exact search (``faiss.IndexFlatIP``) up to ``EXACT_MAX`` vectors, a graph index
(HNSW) beyond.  The switch point and the HNSW parameters come from the
measurements in ``docs/PERFORMANCE.md``; ``kind=`` forces a type.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Up to this many vectors, exact search answers a query fast enough (see docs/PERFORMANCE.md).
EXACT_MAX = 100_000
HNSW_NEIGHBOURS = 32  # M: graph degree
HNSW_BUILD_DEPTH = 80  # efConstruction
HNSW_SEARCH_DEPTH = 64  # efSearch
KINDS = ("auto", "flat", "flat-fp16", "sq8", "hnsw", "ivfpq")


def _as_float32(vectors: np.ndarray) -> np.ndarray:
    array = np.ascontiguousarray(np.asarray(vectors, dtype=np.float32))
    if array.ndim != 2:
        raise ValueError(f"expected (N, D) vectors, got shape {array.shape}")
    return array


@dataclass
class SearchIndex:
    """A faiss index plus the kind that was chosen."""

    index: object
    kind: str
    size: int
    dim: int

    def memory_bytes(self) -> int:
        """Size of the index's data structures (its serialised form)."""
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
        return self.index.search(queries, k)


def exact_search(
    data: np.ndarray, queries: np.ndarray, k: int, max_scores: int = 2**25
) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force top-k by inner product with BLAS, in query chunks of bounded memory.

    Returns (Q, k) scores and (Q, k) row ids, best first (ties: lower id first).
    """
    data, queries = _as_float32(data), _as_float32(queries)
    k = max(1, min(int(k), len(data)))
    chunk = max(1, max_scores // max(1, len(data)))
    all_scores, all_ids = [], []
    for start in range(0, len(queries), chunk):
        scores = queries[start : start + chunk] @ data.T
        part = (
            np.argpartition(-scores, k - 1, axis=1)[:, :k]
            if k < scores.shape[1]
            else np.tile(np.arange(k), (len(scores), 1))
        )
        top = np.take_along_axis(scores, part, axis=1)
        order = np.lexsort((part, -top), axis=1)
        all_ids.append(np.take_along_axis(part, order, axis=1))
        all_scores.append(np.take_along_axis(top, order, axis=1))
    return np.concatenate(all_scores), np.concatenate(all_ids).astype(np.int64)


def choose_kind(size: int) -> str:
    return "flat" if size <= EXACT_MAX else "hnsw"


def build_index(embeddings: np.ndarray, kind: str = "auto", *, ivf_lists: int | None = None) -> SearchIndex:
    """An index over (N, D) normalised embeddings; ``kind`` in KINDS."""
    import faiss

    vectors = _as_float32(embeddings)
    size, dim = vectors.shape
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    kind = choose_kind(size) if kind == "auto" else kind
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
        index.train(vectors[np.random.default_rng(0).choice(size, min(size, 256 * lists), replace=False)])
        index.nprobe = 16
    if size:
        if not index.is_trained:
            index.train(vectors)
        index.add(vectors)
    return SearchIndex(index, kind, size, dim)
