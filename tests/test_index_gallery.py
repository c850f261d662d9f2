"""Search indexes against brute force, and the gallery format."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from vse.serving.gallery import (
    Gallery,
    GalleryEmbeddings,
    GalleryItem,
    gallery_from_rows,
    load_gallery,
    thumbnail_bytes,
    write_gallery,
)
from vse.serving.index import build_index, choose_kind


def unit_vectors(n, d, seed=0):
    x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("kind", ["exact", "flat", "flat-fp16", "sq8", "hnsw", "ivfpq"])
def test_index_kinds_agree_with_brute_force(kind):
    data, queries = unit_vectors(3000, 32), unit_vectors(20, 32, seed=1)
    index = build_index(data, kind)
    scores, ids = index.search(queries, 10)
    exact = np.argsort(-(queries @ data.T), axis=1)[:, :10]
    recall = np.mean([len(set(ids[q]) & set(exact[q])) / 10 for q in range(len(queries))])
    assert recall >= {"exact": 1.0, "flat": 1.0, "flat-fp16": 0.95, "sq8": 0.9, "hnsw": 0.9, "ivfpq": 0.3}[kind]
    if kind in ("exact", "flat"):
        assert np.allclose(scores[:, 0], (queries @ data.T).max(axis=1), atol=1e-5)


def test_index_edge_cases():
    assert choose_kind(10) == "exact" and choose_kind(10_000_000) == "hnsw"
    index = build_index(unit_vectors(3, 4))
    scores, ids = index.search(unit_vectors(1, 4), 10)
    assert ids.shape == (1, 3)
    with pytest.raises(ValueError, match="dimension"):
        index.search(unit_vectors(1, 5), 2)
    with pytest.raises(ValueError, match="kind"):
        build_index(unit_vectors(3, 4), "annoy")


def png(color) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (30, 20), color).save(buffer, format="PNG")
    return buffer.getvalue()


def test_gallery_round_trip_and_embeddings_binding(tmp_path):
    rows = [
        {"id": f"img{i}", "image": thumbnail_bytes(png((i * 40, 0, 0)), size=32), "title": f"t{i}",
         "captions": [f"caption {i}", f"caption {i}"], "tags": ["a", "b"], "category": "c", "split": "test"}
        for i in range(5)
    ]  # fmt: skip
    shards = write_gallery(rows, tmp_path / "gallery", shard_bytes=300)
    assert len(shards) > 1
    gallery, skipped = load_gallery(tmp_path / "gallery")
    assert [item.id for item in gallery.items] == [f"img{i}" for i in range(5)] and skipped == {}
    assert gallery.caption_texts == [f"caption {i}" for i in range(5)]  # repeats per image dropped
    assert gallery.image(0).size == (32, 32)
    emb = GalleryEmbeddings(torch.randn(5, 8), torch.randn(5, 8), "model-a", gallery.fingerprint)
    emb.save(tmp_path / "index")
    assert GalleryEmbeddings.load(tmp_path / "index", "model-a", gallery.fingerprint) is not None
    assert GalleryEmbeddings.load(tmp_path / "index", "model-b", gallery.fingerprint) is None  # other model
    assert GalleryEmbeddings.load(tmp_path / "index", "model-a", "other-gallery") is None


def test_gallery_rows_are_checked():
    gallery, skipped = gallery_from_rows(
        [{"id": "a", "image": png((0, 0, 0))}, {"id": "a", "image": png((1, 1, 1))}, {"id": "b"}]
    )
    assert len(gallery) == 1 and skipped == {"duplicate id": 1, "missing image": 1}
    with pytest.raises(ValueError, match="unique"):
        Gallery([GalleryItem("x", b"1"), GalleryItem("x", b"2")])


def test_unreadable_gallery_images_are_left_out_and_counted(tmp_path, tiny_vit):
    from vse import VSEConfig, VSEModel
    from vse.serving.retrieval import RetrievalService, embed_gallery
    from vse.vocab import vocabulary_from_words

    rows = [
        {"id": f"img{i}", "image": png((i * 40, 0, 0)), "captions": [f"a red {i}"], "tags": ["red"]} for i in range(4)
    ]
    rows[1]["image"] = b"\x89PNG\r\n\x1a\n broken"
    gallery, skipped = gallery_from_rows(rows)
    config = VSEConfig(image_backbone=str(tiny_vit), image_pooling="cls", text_encoder="gru", embed_dim=8, word_dim=4)
    model = VSEModel(config, tokenizer=vocabulary_from_words(["a", "red"])).eval()
    embeddings = embed_gallery(model, gallery)
    assert embeddings.dropped == ["img1"] and embeddings.images.shape == (3, 8) and embeddings.captions.shape == (3, 8)
    service = RetrievalService(model, "rev", gallery.without(embeddings.dropped), embeddings)
    [hit] = service.search_text("a red", 1)
    assert service.gallery.items[hit.index].id in {"img0", "img2", "img3"}
    assert len(service.gallery) == 3 and "img1" not in service.gallery.position


@pytest.mark.parametrize("n, max_scores, count", [(7, 1000, 11), (30_000, 50_000, 11), (30_000, 10**7, 11),
                                                  (30_000, 10**7, 1), (9_000, 10**7, 4)])  # fmt: skip
def test_exact_search_matches_a_full_sort_including_ties(n, max_scores, count):
    """Many queries go through BLAS in chunks, a few (the app's case) one by one: the same answer."""
    from vse.serving.index import exact_search

    rng = np.random.default_rng(n)
    data = rng.integers(-2, 3, size=(n, 8)).astype(np.float32)  # many exact ties
    queries = rng.integers(-2, 3, size=(count, 8)).astype(np.float32)
    scores, ids = exact_search(data, queries, 10, max_scores=max_scores)
    full = queries @ data.T
    expected = np.lexsort((np.tile(np.arange(n), (count, 1)), -full), axis=1)[:, :10]
    assert np.array_equal(ids, expected)
    assert np.allclose(scores, np.take_along_axis(full, expected, axis=1))
