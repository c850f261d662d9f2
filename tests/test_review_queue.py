"""The review queue over flat arrays against the per-item implementation it replaced, on a small
synthetic gallery (untagged images, empty, repeated and unnormalised tags; with and without the
model's suspicion table); and its computation in the background."""

from __future__ import annotations

import threading
import zlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vse.serving.gallery import Gallery, GalleryEmbeddings, GalleryItem
from vse.serving.retrieval import RetrievalService, ReviewQueueNotReady
from vse.suspicion import FlatTags, SuspicionTable, TagPairs, review_priority, tag_suspicion
from vse.text import normalize_tag

DIM = 16
CONCEPTS = ["cat", "dog", "car", "tree", "boat", "house", "star", "moon", "apple", "clock"]


class StubModel:
    """What the review queue asks of a model: ``encode_text`` (a fixed unit vector per text) and ``suspicion``
    (and ``encode_query``, for a search meanwhile; ``eval`` and ``pin_weights``, as the service serves it)."""

    def __init__(self, suspicion: SuspicionTable | None = None):
        self.suspicion = suspicion
        self.encoded: list[list[str]] = []

    def eval(self) -> StubModel:
        return self

    def pin_weights(self, pinned: bool = True) -> StubModel:  # a served model is pinned: nothing to pin here
        return self

    def encode_text(self, texts, batch_size: int = 256) -> torch.Tensor:
        self.encoded.append(list(texts))
        rows = [np.random.default_rng(zlib.crc32(t.encode())).normal(size=DIM) for t in texts]
        return F.normalize(torch.tensor(np.array(rows), dtype=torch.float32), dim=1)

    def encode_query(self, text: str, precision: str = "int8") -> torch.Tensor:
        return self.encode_text([text])


def spellings(word: str) -> list[str]:
    """Ways a web tag spells ``word``; all but the last normalise to it (the full-width one by NFKC)."""
    full_width = "".join(chr(ord(c) + 0xFEE0) for c in word)
    return [word, word.upper(), f"  {word} ", word.title(), full_width, f"{word}!"]


def raw_tag(rng: np.random.Generator) -> str:
    """A tag of one of the concepts (or a rarer word), spelt in one of several ways; sometimes empty."""
    if rng.random() < 0.05:
        return str(rng.choice(["", "   ", "--"]))
    word = str(rng.choice(CONCEPTS)) if rng.random() < 0.8 else f"word{rng.integers(60)}"
    return str(rng.choice(spellings(word)))


def synthetic_gallery(images: int = 240, seed: int = 0) -> Gallery:
    rng = np.random.default_rng(seed)
    items = []
    for i in range(images):
        count = 0 if i % 17 == 0 else int(rng.integers(1, 7))
        tags = [raw_tag(rng) for _ in range(count)]
        if tags and rng.random() < 0.2:
            tags.append(tags[0])  # a repeated tag
        items.append(GalleryItem(f"img{i}", b"", captions=[f"caption {i}"], tags=tags))
    return Gallery(items)


def service_for(gallery: Gallery, model: StubModel, seed: int = 1) -> RetrievalService:
    images = F.normalize(torch.from_numpy(np.random.default_rng(seed).normal(size=(len(gallery), DIM))).float(), dim=1)
    embeddings = GalleryEmbeddings(images, images.clone(), "rev", "gallery")
    return RetrievalService(model, "rev", gallery, embeddings, "flat")


def table_for(gallery: Gallery, seed: int = 2) -> SuspicionTable:
    """A table over some of the gallery's pairs, with rows the gallery lacks and a repeated key (the last wins)."""
    rng = np.random.default_rng(seed)
    ids, tags = [], []
    for image_id, raw in zip(gallery.ids, gallery.tag_lists(), strict=True):
        for tag in raw:
            if normalize_tag(tag) and rng.random() < 0.5:
                ids.append(image_id)
                tags.append(normalize_tag(tag))
    ids += ["elsewhere", gallery.ids[1], ids[0]]
    tags += ["cat", "no such tag", tags[0]]
    return SuspicionTable(ids, tags, rng.random(len(ids)))


# ------------------------------------------------------------------ the per-item implementation it replaced
def naive_live_suspicion(service: RetrievalService, normalized: list[list[str]]) -> list[np.ndarray]:
    lists = [[t for t in tags if t] for tags in normalized]
    pairs, vocabulary = TagPairs.from_lists(lists)
    out = [np.zeros(len(tags)) for tags in normalized]
    if len(pairs) < 2:
        return out
    tag_emb = service.model.encode_text(vocabulary, batch_size=256)
    probability, _ = tag_suspicion(service.embeddings.images, tag_emb, pairs)
    lookup = {
        (int(i), vocabulary[int(t)]): float(p) for i, t, p in zip(pairs.image, pairs.tag, probability, strict=True)
    }
    for row, tags in enumerate(normalized):
        out[row] = np.array([lookup.get((row, t), 0.0) for t in tags])
    return out


def naive_tag_suspicion(service: RetrievalService) -> list[np.ndarray]:
    table = service.model.suspicion
    normalized = [[normalize_tag(tag) for tag in tags] for tags in service.gallery.tag_lists()]
    values = [
        np.array([np.nan if table is None else (table.get(image_id, t) if t else 0.0) for t in tags], dtype=float)
        for image_id, tags in zip(service.gallery.ids, normalized, strict=True)
    ]
    if any(np.isnan(v).any() for v in values):
        live = naive_live_suspicion(service, normalized)
        values = [np.where(np.isnan(v), w, v) for v, w in zip(values, live, strict=True)]
    return values


def naive_review_queue(suspicion: list[np.ndarray]) -> list[int]:
    priority = np.array([review_priority(p) for p in suspicion])
    tagged = np.nonzero(~np.isnan(priority))[0]
    return tagged[np.argsort(-priority[tagged], kind="stable")].tolist()


# ------------------------------------------------------------------ tests
def test_flat_tags_pair_as_the_lists_do():
    lists = [["Cat", "pet", "cat", ""], [], ["car"], ["  ", "PET", "dog", "pet"], ["--"]]
    tags = FlatTags.from_lists(lists)
    pairs, pair_of = tags.pairs()
    want, vocabulary = TagPairs.from_lists([[normalize_tag(t) for t in row if normalize_tag(t)] for row in lists])
    assert tags.vocabulary == vocabulary == ["cat", "pet", "car", "dog"]
    assert tags.offsets.tolist() == [0, 4, 4, 5, 9, 10]
    assert pairs.image.tolist() == want.image.tolist() and pairs.tag.tolist() == want.tag.tolist()
    assert pair_of.tolist() == [0, 1, 0, -1, 2, -1, 3, 4, 3, -1]


@pytest.mark.parametrize("with_table", [False, True])
@pytest.mark.parametrize("seed", [0, 1])
def test_queue_matches_the_per_item_implementation(with_table, seed):
    gallery = synthetic_gallery(seed=seed)
    model = StubModel(table_for(gallery) if with_table else None)
    service = service_for(gallery, model)
    got, want = service.tag_suspicion(), naive_tag_suspicion(service)
    assert len(got) == len(want) == len(gallery)
    for row, (g, w, tags) in enumerate(zip(got, want, gallery.tag_lists(), strict=True)):
        assert len(g) == len(tags), row
        np.testing.assert_allclose(g, w, rtol=1e-9, atol=1e-12, err_msg=f"image {row}")
    assert service.review_queue() == naive_review_queue(want)
    expected = np.array([v.sum() if len(v) else np.nan for v in want])
    np.testing.assert_allclose(service.expected_wrong(), expected, rtol=1e-12, equal_nan=True)
    mine, naive = model.encoded  # each distinct normalised tag encoded once, in the same order
    assert mine == naive and len(set(mine)) == len(mine)


def test_table_entries_override_the_live_estimate():
    gallery = synthetic_gallery(seed=3)
    table = table_for(gallery)
    service = service_for(gallery, StubModel(table))
    for row in range(len(gallery)):
        for tag, value in zip(gallery.tag_lists()[row], service.tag_suspicion()[row], strict=True):
            known = table.get(gallery.ids[row], normalize_tag(tag))
            if not normalize_tag(tag):
                assert value == 0.0
            elif known is not None:
                assert value == known


def test_gallery_without_tags_has_an_empty_queue():
    gallery = Gallery([GalleryItem(f"img{i}", b"", captions=["c"], tags=["", " "] if i % 2 else []) for i in range(4)])
    service = service_for(gallery, StubModel())
    assert service.review_queue() == [1, 3]  # tagged, though every tag normalises to nothing
    assert [v.tolist() for v in service.tag_suspicion()] == [[], [0.0, 0.0], [], [0.0, 0.0]]


def test_queue_is_computed_once_in_the_background(monkeypatch):
    gallery = synthetic_gallery(images=60)
    service = service_for(gallery, StubModel())
    release, calls = threading.Event(), []
    compute = RetrievalService.compute_tag_suspicion

    def slow(self):
        calls.append(threading.current_thread().name)
        release.wait(30)
        return compute(self)

    monkeypatch.setattr(RetrievalService, "compute_tag_suspicion", slow)
    service.start_review_queue()
    with pytest.raises(ReviewQueueNotReady, match=r"being prepared \(60 images\)"):
        service.review_queue(timeout=0.05)
    assert service.search_text("a query", k=3)  # the search does not wait for it
    release.set()
    queue = service.review_queue(timeout=30)
    assert queue == naive_review_queue(naive_tag_suspicion(service)) and calls == ["review-queue"]


@pytest.mark.slow
def test_app_serves_search_while_the_queue_is_prepared(monkeypatch, tmp_path):
    """The real app whose queue takes long: the search answers, the review tab and API say the queue is
    being prepared (without holding a worker for long), then serve it once it is ready."""
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    import app as app_module
    from vse.testing.app_runner import ASSETS, running_app

    if not (ASSETS / "model" / "config.json").is_file():
        pytest.skip("assets/ not built")
    release = threading.Event()
    compute = RetrievalService.compute_tag_suspicion
    monkeypatch.setattr(RetrievalService, "compute_tag_suspicion", lambda self: release.wait(120) and compute(self))
    monkeypatch.setattr(app_module.VSEApp, "queue_wait_seconds", 0.2)
    try:
        with running_app(tmp_path) as (url, app):
            client = Client(url, verbose=False)
            gallery, _ = client.predict("a red apple", 3, api_name="/search")
            assert len(gallery) == 3
            with pytest.raises(AppError, match=r"review queue is being prepared \([\d,]+ images\); try again"):
                client.predict("early-reviewer", api_name="/review_next")
            opened = app.open_review(0, "early-reviewer", None)
            assert "being prepared" in opened[3] and opened[1] is None
            assert all(not control["interactive"] for control in opened[-4:])
            release.set()
            queue = app.queue  # waits for the background computation
            task = client.predict("early-reviewer", api_name="/review_next")
            assert task["queue_length"] == len(queue) > 0 and task["image_id"] is not None
            opened = app.open_review(0, "early-reviewer", None)
            assert "wrong tags expected" in opened[3] and all(control["interactive"] for control in opened[-4:])
    finally:
        release.set()


@pytest.mark.slow
def test_a_large_gallery_computes_its_queue_on_the_first_review_request(monkeypatch, tmp_path):
    """Past EAGER_REVIEW_QUEUE_MAX images nothing is computed at start (memory and the first searches
    stay free of it); the first review request starts it and gets the queue once ready."""
    from gradio_client import Client

    import app as app_module
    from vse.testing.app_runner import ASSETS, running_app

    if not (ASSETS / "model" / "config.json").is_file():
        pytest.skip("assets/ not built")
    started = []
    start = RetrievalService.start_review_queue
    monkeypatch.setattr(RetrievalService, "start_review_queue", lambda self: started.append(1) or start(self))
    monkeypatch.setattr(app_module, "EAGER_REVIEW_QUEUE_MAX", 100)  # the demo's 6,708 images count as large
    with running_app(tmp_path) as (url, app):
        client = Client(url, verbose=False)
        assert len(client.predict("a red apple", 3, api_name="/search")[0]) == 3
        assert not started  # nothing at start
        task = client.predict("first-reviewer", api_name="/review_next")
        assert started and task["image_id"] is not None and task["queue_length"] == len(app.queue)
