"""Qdrant Edge (``--index qdrant+edge:FOLDER``): the engine's own storage, optimizer and HNSW search in
this process.  Small shards are scanned (exact top-k); shards past the full-scan threshold are searched
through the engine's graph (recall against exact search); shards are reused, completed and kept apart
as collections are.  URLs, the service and the app on Edge: tests/test_index_engine.py."""

from __future__ import annotations

import threading
from contextlib import closing
from pathlib import Path

import numpy as np
import pytest

from vse.serving import engine_index
from vse.serving.engine_index import (
    EdgeEngine,
    EngineError,
    collection_key,
    collection_name,
    connect,
    edge_config,
    load_or_fill_index,
    parse_index_url,
)
from vse.serving.index import exact_search

from .test_index_engine import assert_same_top_k, unit_vectors

qdrant_edge = pytest.importorskip("qdrant_edge")

ROWS, DIM = 1500, 32


def clustered(n: int, d: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors around 40 centres, and queries near them: what retrieval embeddings look like."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(40, d))
    data = centres[rng.integers(0, 40, n)] + 0.6 * rng.normal(size=(n, d))
    queries = centres[rng.integers(0, 40, 100)] + 0.6 * rng.normal(size=(100, d))
    unit = lambda x: (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)  # noqa: E731
    return unit(data), unit(queries)


def open_edge(tmp_path: Path) -> EdgeEngine:
    return connect(parse_index_url(f"qdrant+edge:{tmp_path / 'edge'}"))


def fill(engine, vectors, name="image", **digests):
    digests = {"model": "model-a", "gallery": "gallery-a"} | digests
    return load_or_fill_index(engine, vectors, name=name, local=True, **digests)


@pytest.fixture
def graph_search(monkeypatch):
    """Every segment searched through the engine's HNSW graph, however small."""
    monkeypatch.setattr(engine_index, "EDGE_FULL_SCAN_KB", 1)


@pytest.mark.parametrize("k", [1, 10, 50])
def test_a_small_shard_returns_the_exact_top_k(k, tmp_path):
    data, queries = unit_vectors(ROWS, DIM, 0), unit_vectors(25, DIM, 1)
    with closing(open_edge(tmp_path)) as engine:
        index = fill(engine, data)
        assert (index.kind, index.size, index.dim, index.origin) == ("qdrant-edge", ROWS, DIM, "built")
        assert_same_top_k(data, queries, index.search(queries, k), exact_search(data, queries, k))


def test_the_engines_graph_finds_the_nearest_rows(graph_search, tmp_path):
    data, queries = clustered(4000, DIM, 3)
    with closing(open_edge(tmp_path)) as engine:
        index = fill(engine, data)
        shard = engine.shards[next(iter(engine.shards))]
        assert shard.info().indexed_vectors_count == len(data)  # the graph holds every row
        scores, ids = index.search(queries, 10)
        _, exact_ids = exact_search(data, queries, 10)
        recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids.tolist(), exact_ids.tolist(), strict=True)])
        assert recall >= 0.95
        np.testing.assert_allclose(np.einsum("qkd,qd->qk", data[ids], queries), scores, atol=1e-5)
        assert (np.diff(scores, axis=1) <= 1e-6).all()  # best first


def test_hnsw_ef_is_chosen_by_measured_recall_and_kept_for_the_next_start(graph_search, tmp_path, monkeypatch):
    from vse.serving.index import CALIBRATION_K, RECALL_TARGET, recall_at_k

    data, queries = clustered(4000, DIM, 7)
    calibration, held_out = queries[:50], queries[50:]
    engine = open_edge(tmp_path)
    index = fill(engine, data, queries=calibration)
    chosen = index.calibration
    assert chosen is not None and chosen.settings == {"ef_search": index.ef_search} and chosen.queries == 50
    kth = exact_search(data, calibration, CALIBRATION_K)[0][:, -1]
    found = index.search(calibration, CALIBRATION_K)[1]
    assert recall_at_k(data, calibration, found, kth) == pytest.approx(chosen.recall)
    assert chosen.recall >= RECALL_TARGET or index.ef_search == 1024  # met, or the ladder's top was reached
    held_kth = exact_search(data, held_out, CALIBRATION_K)[0][:, -1]
    assert recall_at_k(data, held_out, index.search(held_out, CALIBRATION_K)[1], held_kth) >= 0.95
    engine.close()

    def refuse(*args, **kwargs):
        raise AssertionError("measured again")

    monkeypatch.setattr(engine_index, "calibrate_edge", refuse)
    with closing(open_edge(tmp_path)) as engine:
        again = fill(engine, data, queries=calibration)
        assert again.origin == "loaded" and again.calibration == chosen and again.ef_search == index.ef_search
        with pytest.raises(AssertionError, match="measured again"):  # other queries: another calibration
            fill(engine, data, queries=held_out)


def test_a_shard_filled_again_is_calibrated_again(graph_search, tmp_path, monkeypatch):
    import shutil

    data, queries = clustered(1000, DIM, 8)
    with closing(open_edge(tmp_path)) as engine:
        fill(engine, data, queries=queries[:20])
    measured = []
    calibrate = engine_index.calibrate_edge
    monkeypatch.setattr(engine_index, "calibrate_edge", lambda *a, **kw: measured.append(1) or calibrate(*a, **kw))
    shard = next(path for path in (tmp_path / "edge").iterdir() if path.is_dir())
    shutil.rmtree(shard)  # the record beside it stays, but describes a graph that is gone
    with closing(open_edge(tmp_path)) as engine:
        assert fill(engine, data, queries=queries[:20]).origin == "built" and measured == [1]


def test_a_graph_built_on_a_restart_is_calibrated_again(tmp_path, monkeypatch):
    """A stored shard whose graph this start builds (a changed threshold, or a start killed while indexing)."""
    data, queries = clustered(1000, DIM, 9)
    with closing(open_edge(tmp_path)) as engine:
        assert fill(engine, data, queries=queries[:20]).calibration.recall == 1.0  # small: scanned, exact
    measured = []
    calibrate = engine_index.calibrate_edge
    monkeypatch.setattr(engine_index, "calibrate_edge", lambda *a, **kw: measured.append(1) or calibrate(*a, **kw))
    monkeypatch.setattr(engine_index, "EDGE_FULL_SCAN_KB", 1)
    with closing(open_edge(tmp_path)) as engine:
        index = fill(engine, data, queries=queries[:20])
        assert index.origin == "built" and measured == [1]
        assert next(iter(engine.shards.values())).info().indexed_vectors_count == len(data)


def test_a_whole_shard_is_reused_after_a_restart(graph_search, tmp_path, monkeypatch):
    data, queries = clustered(2000, DIM, 4)
    engine = open_edge(tmp_path)
    first = fill(engine, data).search(queries, 10)
    engine.close()

    def refuse(*args, **kwargs):
        raise AssertionError("a whole shard was filled again")

    monkeypatch.setattr(qdrant_edge.UpdateOperation, "upsert_points", refuse)
    with closing(open_edge(tmp_path)) as engine:
        index = fill(engine, data)
        assert index.origin == "loaded"
        again = index.search(queries, 10)
        np.testing.assert_array_equal(again[1], first[1])
        np.testing.assert_allclose(again[0], first[0])


def test_a_partial_shard_is_completed(tmp_path):
    """A start killed part-way through filling leaves a partial shard: the next start completes it."""
    data, queries = unit_vectors(ROWS, DIM, 0), unit_vectors(5, DIM, 1)
    path = tmp_path / "edge" / collection_name(collection_key("image", "model-a", "gallery-a", ROWS, DIM))
    path.mkdir(parents=True)
    shard = qdrant_edge.EdgeShard.create(str(path), edge_config(DIM))
    shard.update(
        qdrant_edge.UpdateOperation.upsert_points([qdrant_edge.Point(i, data[i].tolist()) for i in range(700)])
    )
    shard.flush()
    shard.close()
    with closing(open_edge(tmp_path)) as engine:
        index = fill(engine, data)
        assert index.origin == "built"
        assert engine.shards[path.name].count(qdrant_edge.CountRequest(exact=True)) == ROWS
        assert_same_top_k(data, queries, index.search(queries, 10), exact_search(data, queries, 10))


@pytest.mark.parametrize("change", [{"model": "model-b"}, {"gallery": "gallery-b"}, {"name": "caption"}])
def test_a_shard_made_for_something_else_is_not_used(change, tmp_path):
    with closing(open_edge(tmp_path)) as engine:
        fill(engine, unit_vectors(50, DIM, 0))
        other = fill(engine, unit_vectors(50, DIM, 5), **change)
        assert other.origin == "built" and len(engine.shards) == 2


def test_concurrent_searches_answer_as_one_at_a_time(graph_search, tmp_path):
    """The app searches from several Gradio worker threads at once."""
    data, queries = clustered(3000, DIM, 6)
    with closing(open_edge(tmp_path)) as engine:
        index = fill(engine, data)
        alone = [index.search(queries[i : i + 1], 10)[1] for i in range(len(queries))]
        together: list = [None] * len(queries)

        def search(rows: range) -> None:
            for i in rows:
                together[i] = index.search(queries[i : i + 1], 10)[1]

        threads = [threading.Thread(target=search, args=(range(t, len(queries), 8),)) for t in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert all(np.array_equal(a, b) for a, b in zip(alone, together, strict=True))


def test_queries_of_the_wrong_dimension_are_refused(tmp_path):
    with closing(open_edge(tmp_path)) as engine, pytest.raises(ValueError, match="queries"):
        fill(engine, unit_vectors(10, DIM, 0)).search(unit_vectors(1, DIM + 1, 1), 3)


def test_a_shard_folder_holding_no_segments_is_filled_again(tmp_path):
    """A start killed after creating the folder, before any segment was written."""
    data, queries = unit_vectors(40, DIM, 0), unit_vectors(3, DIM, 1)
    path = tmp_path / "edge" / collection_name(collection_key("image", "model-a", "gallery-a", 40, DIM))
    path.mkdir(parents=True)
    (path / "edge_config.json").write_text("{half a file")
    with closing(open_edge(tmp_path)) as engine:
        index = fill(engine, data)
        assert index.origin == "built"
        assert_same_top_k(data, queries, index.search(queries, 5), exact_search(data, queries, 5))


def test_an_engine_folder_that_cannot_be_written_is_an_engine_error(tmp_path):
    (tmp_path / "edge").write_text("a file where the folder should be")
    with pytest.raises(EngineError, match="cannot use .* for Qdrant Edge"):
        open_edge(tmp_path)


def test_a_folder_in_use_is_refused_and_its_shards_are_left_alone(tmp_path):
    """A second engine on the folder (another replica, or a retry in this process) must not take shards
    that are open, nor remove them as unreadable."""
    data, queries = unit_vectors(ROWS, DIM, 0), unit_vectors(5, DIM, 1)
    with closing(open_edge(tmp_path)) as engine:
        index = fill(engine, data)
        with pytest.raises(EngineError, match="in use by another engine"):
            open_edge(tmp_path)
        assert_same_top_k(data, queries, index.search(queries, 10), exact_search(data, queries, 10))
    with closing(open_edge(tmp_path)) as engine:  # closed: usable again, and the shard is whole
        assert fill(engine, data).origin == "loaded"


def test_a_shard_held_open_elsewhere_is_not_removed(tmp_path):
    """Without the folder lock (a shard opened by other code), the engine's lock error is raised, not
    read as damage."""
    data = unit_vectors(ROWS, DIM, 0)
    with closing(open_edge(tmp_path)) as engine:
        fill(engine, data)
    path = next(p for p in (tmp_path / "edge").iterdir() if p.is_dir())
    other = qdrant_edge.EdgeShard.load(str(path), edge_config(DIM))
    try:
        with closing(open_edge(tmp_path)) as engine, pytest.raises(EngineError, match="could not serve"):
            fill(engine, data)
        assert other.count(qdrant_edge.CountRequest(exact=True)) == ROWS and path.is_dir()
    finally:
        other.close()
