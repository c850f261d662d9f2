"""Indexes in a vector engine (Qdrant, ``--index URL``): the same top-k as exact search, collections
reused only for the model and gallery they were filled for, clear errors for bad URLs, and the app
answering through its HTTP API as it does with exact search.  Local mode and Qdrant Edge (the engine
in this process, tests/test_index_edge.py): no server, offline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from vse import VSEConfig, VSEModel
from vse.serving import engine_index
from vse.serving.engine_index import (
    EngineError,
    EngineLocation,
    IndexURLError,
    check_index_setting,
    collection_key,
    collection_name,
    connect,
    load_or_fill_index,
    parse_index_url,
)
from vse.serving.gallery import Gallery, GalleryEmbeddings, GalleryItem
from vse.serving.index import exact_search
from vse.serving.retrieval import RetrievalService
from vse.testing.app_runner import ASSETS, running_app
from vse.vocab import vocabulary_from_words

ROWS, DIM = 1500, 32  # six upsert batches
# Local mode on disk commits one SQLite transaction per point (about 100 points/s here): keep those sets small.
FILE_ROWS = 200


def unit_vectors(n: int, d: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def assert_same_top_k(data, queries, got, expected, tolerance=1e-5):
    """``got`` holds the exact top-k of ``expected``: the same scores, each id scored as the data says,
    and every id that beats the k-th score by more than ``tolerance`` (only ties may differ)."""
    (scores, ids), (ref_scores, ref_ids) = got, expected
    assert scores.shape == ids.shape == ref_ids.shape and scores.dtype == np.float32 and ids.dtype == np.int64
    np.testing.assert_allclose(scores, ref_scores, atol=tolerance)
    for row, query in enumerate(queries):
        np.testing.assert_allclose(data[ids[row]] @ query, scores[row], atol=tolerance)
        sure = set(ref_ids[row][ref_scores[row] > ref_scores[row][-1] + tolerance].tolist())
        assert sure <= set(ids[row].tolist())


def open_client(mode: str, tmp_path: Path):
    return connect(parse_index_url("qdrant+memory:" if mode == "memory" else f"qdrant+file:{tmp_path / 'engine'}"))


def fill(client, vectors, model="model-a", gallery="gallery-a", name="image"):
    return load_or_fill_index(client, vectors, name=name, model=model, gallery=gallery, local=True)


# ------------------------------------------------------------------ search
@pytest.mark.parametrize("mode, k", [("memory", 1), ("memory", 10), ("memory", 50), ("file", 10)])
def test_engine_returns_the_exact_top_k(mode, k, tmp_path):
    rows = ROWS if mode == "memory" else FILE_ROWS
    data, queries = unit_vectors(rows, DIM, 0), unit_vectors(25, DIM, 1)
    client = open_client(mode, tmp_path)
    try:
        index = fill(client, data)
        assert (index.kind, index.size, index.dim, index.origin) == ("qdrant", rows, DIM, "built")
        assert_same_top_k(data, queries, index.search(queries, k), exact_search(data, queries, k))
    finally:
        client.close()


def test_ties_come_lowest_id_first_and_k_is_capped_at_the_size(tmp_path):
    """As ``SearchIndex``: k beyond the size returns every row; equal scores are ordered by row."""
    data = np.repeat(unit_vectors(3, DIM, 0), 2, axis=0)  # rows 0-1, 2-3, 4-5 tie
    client = open_client("memory", tmp_path)
    scores, ids = fill(client, data).search(data[:1], 10)
    ref_scores, ref_ids = exact_search(data, data[:1], 10)
    assert ids.tolist() == ref_ids.tolist() and ids.shape == (1, 6)
    np.testing.assert_allclose(scores, ref_scores, atol=1e-6)


def test_queries_of_the_wrong_dimension_are_refused(tmp_path):
    index = fill(open_client("memory", tmp_path), unit_vectors(10, DIM, 0))
    with pytest.raises(ValueError, match="queries"):
        index.search(unit_vectors(1, DIM + 1, 1), 3)


def test_memory_counts_what_this_process_holds(tmp_path):
    index = fill(open_client("memory", tmp_path), unit_vectors(100, DIM, 0))
    assert index.memory_bytes() == 100 * DIM * 4
    index.local = False  # a server holds the vectors in its own processes
    assert index.memory_bytes() == 0


# ------------------------------------------------------------------ collections
def test_a_whole_collection_is_reused_without_uploading(tmp_path, monkeypatch):
    data, queries = unit_vectors(FILE_ROWS, DIM, 0), unit_vectors(5, DIM, 1)
    client = open_client("file", tmp_path)
    fill(client, data)
    client.close()  # as a restart: local mode reads the folder back

    def refuse(*args, **kwargs):
        raise AssertionError("a whole collection was uploaded again")

    monkeypatch.setattr(engine_index, "fill_collection", refuse)
    client = open_client("file", tmp_path)
    try:
        index = fill(client, data)
        assert index.origin == "loaded"
        assert_same_top_k(data, queries, index.search(queries, 10), exact_search(data, queries, 10))
    finally:
        client.close()


def test_a_partial_collection_is_completed(tmp_path):
    """A start killed part-way through filling leaves a partial collection: the next one completes it."""
    data, queries = unit_vectors(ROWS, DIM, 0), unit_vectors(5, DIM, 1)
    client = open_client("memory", tmp_path)
    name = collection_name(collection_key("image", "model-a", "gallery-a", ROWS, DIM))
    engine_index.create_collection(client, name, DIM)
    engine_index.fill_collection(client, name, data[:700], "image")
    index = fill(client, data)
    assert index.origin == "built" and client.count(name, exact=True).count == ROWS
    assert_same_top_k(data, queries, index.search(queries, 10), exact_search(data, queries, 10))


@pytest.mark.parametrize("change", [{"model": "model-b"}, {"gallery": "gallery-b"}, {"name": "caption"}])
def test_a_collection_made_for_something_else_is_not_used(change, tmp_path):
    """Vectors of another model, gallery or index land in their own collection; the first stays as it was."""
    first, second, queries = unit_vectors(ROWS, DIM, 0), unit_vectors(ROWS, DIM, 2), unit_vectors(5, DIM, 1)
    client = open_client("memory", tmp_path)
    original = fill(client, first)
    other = fill(client, second, **change)
    assert other.origin == "built" and other.collection != original.collection
    assert_same_top_k(second, queries, other.search(queries, 10), exact_search(second, queries, 10))
    assert_same_top_k(first, queries, fill(client, first).search(queries, 10), exact_search(first, queries, 10))


def test_a_gallery_of_another_size_gets_its_own_collection(tmp_path):
    data = unit_vectors(ROWS, DIM, 0)
    client = open_client("memory", tmp_path)
    assert fill(client, data).collection != fill(client, data[:-1]).collection


def test_two_replicas_creating_one_collection_both_succeed(tmp_path):
    """A replica that finds the collection already created (by another) fills it all the same."""
    client = open_client("memory", tmp_path)
    name = collection_name(collection_key("image", "model-a", "gallery-a", 10, DIM))
    engine_index.create_collection(client, name, DIM)
    engine_index.create_collection(client, name, DIM)
    assert fill(client, unit_vectors(10, DIM, 0)).origin == "built"


# ------------------------------------------------------------------ URLs
@pytest.mark.parametrize(
    "url, location",
    [
        ("qdrant+memory:", EngineLocation("memory")),
        ("qdrant+file:engine/qdrant", EngineLocation("file", path="engine/qdrant")),
        ("qdrant+file:///srv/qdrant", EngineLocation("file", path="/srv/qdrant")),
        ("qdrant+edge:engine/edge", EngineLocation("edge", path="engine/edge")),
        ("qdrant+edge:///srv/edge", EngineLocation("edge", path="/srv/edge")),
        ("qdrant+http://qdrant.internal", EngineLocation("server", url="http://qdrant.internal:6333")),
        ("qdrant+http://10.0.0.5:7000/", EngineLocation("server", url="http://10.0.0.5:7000")),
        (
            "qdrant+https://cluster.example:6333/prefix?api_key_env=QDRANT_KEY",
            EngineLocation("server", url="https://cluster.example:6333/prefix", api_key_env="QDRANT_KEY"),
        ),
    ],
)
def test_index_urls_name_their_engine(url, location):
    assert parse_index_url(url) == location
    check_index_setting(url)


@pytest.mark.parametrize(
    "url, message",
    [
        ("qdrant://host:6333", "unknown index URL scheme 'qdrant'"),
        ("milvus://host:19530", "unknown index URL scheme 'milvus'"),
        ("qdrant+grpc://host", "unknown index URL scheme"),
        ("qdrant+http://", "names no host"),
        ("qdrant+http://host:http", "port must be a whole number"),
        ("qdrant+http://host:99999", "port must be a whole number"),
        ("qdrant+http://host:secret", "port must be a whole number"),
        ("qdrant+http://host#api_key=secret", "no #fragment"),
        ("qdrant+https://host/?a=1#api_key=secret", "no #fragment"),
        ("qdrant://host?api_key=secret", "unknown index URL scheme"),
        ("qdrant+memory:?api_key=secret", "nothing after the colon"),
        ("qdrant+http://user:secret@host", "holds no credentials"),
        ("qdrant+http://host?api_key=secret", r"only option is api_key_env=NAME \(once\), got options \['api_key'\]"),
        ("qdrant+http://host?api_key_env=A&api_key_env=B", "only option"),
        ("qdrant+http://host?api_key_env=not-a-name", "must name an environment variable"),
        ("qdrant+http://host#part", "no #fragment"),
        ("qdrant+file:", "names no folder"),
        ("qdrant+file:///", "names no folder"),
        ("qdrant+file://server/share", "not on 'server'"),
        ("qdrant+file:folder?mode=x", "no options"),
        ("qdrant+memory:anything", "nothing after the colon"),
        ("qdrant+edge:", "names no folder: use qdrant\\+edge:///"),
        ("qdrant+edge://server/share", "not on 'server'"),
        ("qdrant+edge:folder?api_key=secret", "qdrant\\+edge: takes a folder and no options"),
    ],
)
def test_bad_index_urls_are_refused_clearly(url, message):
    with pytest.raises(IndexURLError, match=message) as refused:
        check_index_setting(url)
    assert "secret" not in str(refused.value) and "\n" not in str(refused.value)


def test_faiss_kinds_still_pass_and_others_are_refused():
    for kind in ("auto", "exact", "hnsw", "ivfpq"):
        check_index_setting(kind)
    with pytest.raises(IndexURLError, match="one of .* or an engine URL"):
        check_index_setting("annoy")


def test_the_api_key_comes_from_the_named_variable_only():
    location = parse_index_url("qdrant+https://cluster.example?api_key_env=QDRANT_KEY")
    assert engine_index._api_key(location, {"QDRANT_KEY": "s3cret"}) == "s3cret"
    with pytest.raises(EngineError, match=r"\$QDRANT_KEY, which is not set"):
        connect(location, environ={})
    assert "QDRANT_KEY" in location.describe() and "s3cret" not in location.describe()


def test_a_folder_in_use_by_another_client_is_an_engine_error(tmp_path):
    holder = open_client("file", tmp_path)
    try:
        with pytest.raises(EngineError, match="already accessed"):
            open_client("file", tmp_path)
    finally:
        holder.close()


# ------------------------------------------------------------------ the app's settings
def test_the_app_reads_index_urls_from_flags_and_variables(capsys):
    import app as app_module

    assert app_module.main(["--index=qdrant+ftp://host", "--print-config"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error:") and "unknown index URL scheme" in error and "\n" not in error
    assert app_module.main(["--print-config"], environ={"VSE_INDEX": "qdrant+memory:"}) == 0
    assert '"index": "qdrant+memory:"' in capsys.readouterr().out
    assert app_module.main(["--print-config", "--index=hnsw"], environ={"VSE_INDEX": "qdrant+memory:"}) == 0
    assert '"index": "hnsw"' in capsys.readouterr().out


# ------------------------------------------------------------------ through RetrievalService
@pytest.fixture(scope="module")
def model(tiny_vit) -> VSEModel:
    config = VSEConfig(image_backbone=str(tiny_vit), image_pooling="cls", text_encoder="gru", embed_dim=8, word_dim=4)
    return VSEModel(config, tokenizer=vocabulary_from_words(["a", "red"])).eval()


def service(model, index: str) -> RetrievalService:
    rows = 60
    gallery = Gallery([GalleryItem(f"img{i}", b"", captions=[f"caption {i}"]) for i in range(rows)])
    images, captions = torch.from_numpy(unit_vectors(rows, 8, 0)), torch.from_numpy(unit_vectors(rows, 8, 1))
    return RetrievalService(
        model, "model-a", gallery, GalleryEmbeddings(images, captions, "model-a", "gallery-a"), index
    )


@pytest.mark.parametrize("scheme", ["qdrant+file", "qdrant+edge"])
def test_the_service_answers_from_the_engine_as_from_exact_search(model, scheme, tmp_path):
    exact = service(model, "exact")
    queries = torch.from_numpy(unit_vectors(10, 8, 2))
    url = f"{scheme}:{tmp_path / 'engine'}"
    for expected_origin in ("built", "loaded"):
        engine = service(model, url)
        try:
            assert (engine.image_index.origin, engine.caption_index.origin) == (expected_origin, expected_origin)
            for query in queries:
                for ask in ("similar_images", "nearest_captions"):
                    got = [(h.index, round(h.score, 5)) for h in getattr(engine, ask)(query[None], 7)]
                    assert got == [(h.index, round(h.score, 5)) for h in getattr(exact, ask)(query[None], 7)]
        finally:
            engine.close()


# ------------------------------------------------------------------ the app, over HTTP
@pytest.mark.slow
@pytest.mark.skipif(not (ASSETS / "model" / "config.json").is_file(), reason="assets/ not built")
# Local mode in memory: on disk it would take minutes to write the 6,800 images and their captions.
@pytest.mark.parametrize("url, kind", [("qdrant+memory:", "qdrant"), ("qdrant+edge:{folder}", "qdrant-edge")])
def test_the_app_on_the_engine_answers_searches_as_exact_search(url, kind, tmp_path):
    from gradio_client import Client

    with running_app(tmp_path / "data", index=url.format(folder=tmp_path / "edge")) as (address, app):
        assert app.service.image_index.kind == kind
        client, service = Client(address, verbose=False), app.service
        for query in ("Tennis shoes", "The Moon", "a red apple"):
            _, table = client.predict(query, 8, api_name="/search")
            embedding = service.model.encode_query(query, service.query_precision).numpy()
            scores, ids = exact_search(service.embeddings.images.numpy(), embedding, 8)
            expected = [
                [service.gallery.items[i].id, round(float(s), 4)] for s, i in zip(scores[0], ids[0], strict=True)
            ]
            got = [[row[2], row[3]] for row in table["data"]]
            assert [g[0] for g in got] == [e[0] for e in expected]
            np.testing.assert_allclose([g[1] for g in got], [e[1] for e in expected], atol=2e-4)
