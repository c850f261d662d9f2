"""The compressed kind's second stage: the IVF-PQ shortlist scored again exactly against the
indexed vectors the caller keeps (``rerank_shortlist``), checked against a naive reference; and
the upgrade its new stored format brought (``prune_superseded``)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from vse.serving.gallery import mapped_tensor
from vse.serving.index import (
    IndexStore,
    SearchIndex,
    apply_search_settings,
    build_index,
    exact_search,
    load_or_build_index,
    rerank_shortlist,
)


def unit_rows(n: int, d: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, d)) + 2.0 * np.eye(d)[0]
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def naive_rerank(index, vectors: np.ndarray, queries: np.ndarray, k: int, factor: int):
    """Each query's shortlist from the faiss index, scored one row at a time in Python."""
    _, shortlist = index.search(queries, factor * k)
    rows = []
    for query, candidates in zip(queries, shortlist, strict=True):
        scored = {int(c): float(np.dot(vectors[c].astype(np.float64), query)) for c in candidates if c >= 0}
        rows.append(sorted(scored.items(), key=lambda item: (-item[1], item[0]))[:k])
    return rows


@pytest.fixture(scope="module")
def data() -> np.ndarray:
    return unit_rows(3_000, 32, seed=0)


def test_the_shortlist_is_ranked_as_a_naive_reference_ranks_it(data):
    queries = unit_rows(40, 32, seed=1)
    index = build_index(data, "ivfpq-rerank")
    apply_search_settings(index, {"nprobe": 2, "k_factor": 5})
    scores, ids = index.search(queries, 10)
    expected = naive_rerank(index.index, data, queries, 10, 5)
    assert [list(row) for row in ids] == [[i for i, _ in row] for row in expected]
    np.testing.assert_allclose(scores, [[s for _, s in row] for row in expected], atol=1e-5)


def test_a_shortlist_of_every_row_gives_exact_search(data):
    queries = unit_rows(30, 32, seed=2)
    index = build_index(data, "ivfpq-rerank")
    lists = index.index.nlist
    apply_search_settings(index, {"nprobe": lists, "k_factor": len(data) // 10})
    scores, ids = index.search(queries, 10)
    exact_scores, exact_ids = exact_search(data, queries, 10)
    np.testing.assert_array_equal(ids, exact_ids)
    np.testing.assert_allclose(scores, exact_scores, atol=1e-5)


def test_a_short_shortlist_pads_with_minus_one(data):
    index = build_index(data[:600], "ivfpq-rerank")  # 15 lists of about 40 rows
    apply_search_settings(index, {"nprobe": 1, "k_factor": 1})
    scores, ids = index.search(unit_rows(3, 32, seed=3), 100)
    assert ids.shape == (3, 100) and (ids == -1).any() and (ids[:, :10] >= 0).all()
    assert (scores[ids == -1] == np.finfo(np.float32).min).all()
    for row in ids:  # the found ids first, each once
        found = row[row >= 0]
        assert len(set(found.tolist())) == len(found) and (row[len(found) :] == -1).all()


def test_the_stored_file_holds_no_copy_of_the_vectors(data, tmp_path):
    """Format 4: the index keeps IVF lists and 4-bit PQ codes over pairs of dimensions (8 bytes a
    vector at 32 dimensions, scanned by faiss's fast-scan kernels); the re-ranking reads the
    caller's matrix, which it holds without copying."""
    import faiss

    index = build_index(data, "ivfpq-rerank")
    assert np.shares_memory(index.vectors, data)
    assert faiss.extract_index_ivf(index.index).code_size == data.shape[1] // 4
    assert isinstance(index.index, faiss.IndexIVFPQFastScan)
    stored = faiss.serialize_index(index.index).size
    assert stored < data.shape[0] * data.shape[1]  # an 8-bit copy alone would take this
    assert index.memory_bytes() == stored + data.nbytes


def test_float16_memory_mapped_vectors_are_re_ranked_in_float32(data, tmp_path):
    path = tmp_path / "embeddings.safetensors"
    save_file({"images": torch.from_numpy(data).half()}, path)
    mapped = mapped_tensor(path, "images").numpy()
    queries = unit_rows(20, 32, seed=4)
    index = load_or_build_index(
        mapped, "ivfpq-rerank", name="image", model="m", gallery="g", store=IndexStore(tmp_path / "index")
    )
    again = load_or_build_index(
        mapped, "ivfpq-rerank", name="image", model="m", gallery="g", store=IndexStore(tmp_path / "index")
    )
    assert index.origin == "built" and again.origin == "loaded"
    for kept in (index, again):  # the map itself, not the float32 copy the build made
        assert np.shares_memory(kept.vectors, mapped) and kept.vectors.dtype == np.float16
    expected = naive_rerank(again.index, mapped, queries, 10, again.rerank_factor)
    for built in (index, again):
        scores, ids = built.search(queries, 10)
        assert [list(row) for row in ids] == [[i for i, _ in row] for row in expected]
        np.testing.assert_allclose(scores, [[s for _, s in row] for row in expected], atol=1e-5)


def test_the_compressed_kind_refuses_to_run_without_its_vectors(data):
    index = build_index(data, "ivfpq-rerank")
    with pytest.raises(ValueError, match="needs the 3000 indexed vectors"):
        SearchIndex(index.index, "ivfpq-rerank", 3_000, 32)
    with pytest.raises(ValueError, match="needs the 3000 indexed vectors"):
        SearchIndex(index.index, "ivfpq-rerank", 3_000, 32, vectors=data[:10])


def test_equal_rows_come_back_lower_id_first(data):
    """Duplicate images score alike: the re-ranking orders them by id, as exact search does."""
    copies = data.copy()
    copies[[700, 1500, 2999]] = copies[5]
    query = copies[5:6]
    index = build_index(copies, "ivfpq-rerank")
    apply_search_settings(index, {"nprobe": index.index.nlist, "k_factor": 20})
    scores, ids = index.search(query, 4)
    assert ids[0, :4].tolist() == [5, 700, 1500, 2999]
    assert len(set(scores[0, :4].round(5).tolist())) == 1
    np.testing.assert_array_equal(ids, exact_search(copies, query, 4)[1])


class EmptyShortlists:
    """A faiss-like index whose probed lists hold nothing: every candidate is -1."""

    ntotal = 3_000

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return np.full((len(queries), k), -np.inf, np.float32), np.full((len(queries), k), -1, np.int64)


def test_an_empty_shortlist_gives_no_results_not_an_error(data):
    scores, ids = rerank_shortlist(EmptyShortlists(), data, unit_rows(3, 32, seed=6), 5, 10)
    assert (ids == -1).all() and (scores == np.finfo(np.float32).min).all()


def test_an_index_of_duplicates_with_empty_lists_builds_and_answers():
    """Few distinct rows, many copies: most IVF lists stay empty, and a query probing only those
    gets an empty shortlist (during the calibration too)."""
    rows = np.repeat(unit_rows(40, 32, seed=7), 100, axis=0)
    index = build_index(rows, "ivfpq-rerank", queries=unit_rows(50, 32, seed=8))
    apply_search_settings(index, {"nprobe": 1, "k_factor": 1})
    scores, ids = index.search(unit_rows(60, 32, seed=9), 10)
    assert ids.shape == (60, 10) and (ids < len(rows)).all()
    assert (ids[:, 0] == -1).any() and (ids[:, 0] >= 0).any()  # some shortlists were empty, some not


def test_an_upgrade_deletes_the_stored_indexes_it_supersedes_and_nothing_else(data, tmp_path, monkeypatch):
    """Once an index is saved, stored indexes of the same name, kind, model and gallery in an older
    file format are deleted, whatever their parameters or calibration (this version reads none of
    them); another model's, another kind's and a newer format's (a newer version sharing the
    folder) are kept."""
    import vse.serving.index as index_module

    store, queries = IndexStore(tmp_path / "index"), unit_rows(20, 32, seed=10)
    current = index_module.STORED_INDEX_FORMAT

    def stored(kind: str = "hnsw", model: str = "m", **calibration) -> object:
        return load_or_build_index(data, kind, name="image", model=model, gallery="g", store=store, **calibration)

    def formats() -> list[tuple[str, int, str, bool]]:
        keys = [json.loads(p.read_text())["key"] for p in store.folder.glob("image-*.json")]
        assert len(keys) == len(list(store.folder.glob("image-*.faiss")))  # no file without its manifest
        return sorted((k["kind"], k["format"], k["model"], k["calibration"] is None) for k in keys)

    monkeypatch.setattr(index_module, "STORED_INDEX_FORMAT", current - 1)
    stored()
    monkeypatch.setattr(index_module, "HNSW_NEIGHBOURS", 8)  # the older format's parameters differ too
    stored(queries=queries)
    stored(model="other")
    stored(kind="sq8")
    monkeypatch.setattr(index_module, "STORED_INDEX_FORMAT", current + 1)
    stored(queries=queries)
    monkeypatch.undo()
    assert stored().origin == "built"
    assert formats() == [
        ("hnsw", current - 1, "other", True),
        ("hnsw", current, "m", True),
        ("hnsw", current + 1, "m", False),
        ("sq8", current - 1, "m", True),
    ]
    assert stored().origin == "loaded"


@pytest.mark.parametrize("kind, size", [("ivfpq-rerank", 0), ("ivfpq-rerank", 15), ("ivfpq", 255)])
def test_too_few_vectors_to_train_a_compressed_kind_are_searched_exactly(data, kind, size, tmp_path):
    """A 4-bit codebook needs 16 training points, an 8-bit one 256: fewer (a gallery without
    captions, asked for the compressed kind) get exact search, not a faiss error at start."""
    store = IndexStore(tmp_path / "index")
    index = load_or_build_index(data[:size], kind, name="caption", model="m", gallery="g", store=store)
    assert index.kind == "exact" and index.size == size and not list(store.folder.glob("*"))
    queries = unit_rows(3, 32, seed=4)
    scores, ids = index.search(queries, 5)
    if size:
        np.testing.assert_array_equal(ids, exact_search(data[:size], queries, 5)[1])
    else:
        assert ids.shape == (3, 0)
    assert build_index(data[: size + 16 if kind == "ivfpq-rerank" else size + 1], kind).kind == kind
