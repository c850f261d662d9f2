"""Search indexes stored beside the gallery embeddings: a restart reads them instead of
building them again; a stored index made for anything else, or damaged, is rebuilt, never used."""

from __future__ import annotations

import io
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from vse import VSEConfig, VSEModel
from vse.serving.gallery import Gallery, GalleryEmbeddings, GalleryItem, write_gallery
from vse.serving.index import IndexStore
from vse.serving.retrieval import RetrievalService
from vse.testing.shapes import draw
from vse.vocab import vocabulary_from_words

FAISS_KINDS = ["flat", "flat-fp16", "sq8", "hnsw", "ivfpq", "ivfpq-rerank"]
ROWS, DIM = 2000, 16  # enough rows to train IVF-PQ's lists and codebooks


def unit_vectors(n: int, d: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def model(tiny_vit) -> VSEModel:
    config = VSEConfig(image_backbone=str(tiny_vit), image_pooling="cls", text_encoder="gru", embed_dim=8, word_dim=4)
    return VSEModel(config, tokenizer=vocabulary_from_words(["a", "red"])).eval()


@pytest.fixture(scope="module")
def gallery() -> Gallery:
    """Random rows: the index needs no decodable images, only one caption per row."""
    return Gallery([GalleryItem(f"img{i}", f"image {i}".encode(), captions=[f"caption {i}"]) for i in range(ROWS)])


def embeddings_for(gallery: Gallery, fingerprint: str = "gallery-a") -> GalleryEmbeddings:
    images, captions = torch.from_numpy(unit_vectors(ROWS, DIM, 0)), torch.from_numpy(unit_vectors(ROWS, DIM, 1))
    return GalleryEmbeddings(images, captions, "model-a", fingerprint)


def start(model, gallery, folder: Path, kind: str, revision="model-a", fingerprint="gallery-a") -> RetrievalService:
    embeddings = embeddings_for(gallery, fingerprint)
    return RetrievalService(model, revision, gallery, embeddings, kind, IndexStore(folder))


def origins(service: RetrievalService) -> tuple[str, str]:
    return service.image_index.origin, service.caption_index.origin


def answers(service: RetrievalService) -> list[list[tuple[int, float]]]:
    """Similar images and nearest captions for a batch of queries, as the app asks for them."""
    queries = torch.from_numpy(unit_vectors(20, DIM, 2))
    asked = [service.similar_images(q[None], 10) for q in queries] + [
        service.nearest_captions(q[None], 5) for q in queries
    ]
    return [[(hit.index, hit.score) for hit in hits] for hits in asked]


def stored_files(folder: Path, name: str = "image") -> list[Path]:
    return sorted(folder.glob(f"{name}-*.faiss"))


AUTO_CASES = {"auto": "hnsw", "auto, small memory": "ivfpq-rerank"}


@pytest.mark.parametrize("kind", FAISS_KINDS + list(AUTO_CASES))
def test_a_restart_loads_both_indexes_and_answers_the_same(model, gallery, tmp_path, kind, monkeypatch):
    expected = AUTO_CASES.get(kind, kind)
    if kind in AUTO_CASES:
        monkeypatch.setattr("vse.serving.index.EXACT_MAX", 100)  # so that auto picks a faiss kind here
        if kind == "auto, small memory":
            monkeypatch.setattr("vse.serving.index.MEMORY_SHARE", 0.0)  # no HNSW fits: the compressed kind
        kind = "auto"
    first = start(model, gallery, tmp_path, kind)
    assert origins(first) == ("built", "built")
    assert len(stored_files(tmp_path, "image")) == 1 and len(stored_files(tmp_path, "caption")) == 1
    second = start(model, gallery, tmp_path, kind)
    assert origins(second) == ("loaded", "loaded")
    assert second.image_index.kind == first.image_index.kind == expected
    assert answers(second) == answers(first)


@pytest.mark.skipif(not Path("/proc/self/maps").is_file(), reason="needs /proc to see mappings")
@pytest.mark.parametrize("kind", FAISS_KINDS)
def test_a_loaded_index_is_memory_mapped(model, gallery, tmp_path, kind):
    start(model, gallery, tmp_path, kind)
    service = start(model, gallery, tmp_path, kind)  # holds the mappings while they are looked at
    maps = Path("/proc/self/maps").read_text()
    assert str(stored_files(tmp_path, "image")[0]) in maps and str(stored_files(tmp_path, "caption")[0]) in maps
    assert origins(service) == ("loaded", "loaded")


def test_exact_search_stores_nothing(model, gallery, tmp_path):
    service = start(model, gallery, tmp_path, "auto")  # 2,000 rows: exact search
    assert service.image_index.kind == "exact" and origins(service) == ("built", "built")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "change",
    [{"revision": "model-b"}, {"fingerprint": "gallery-b"}, {"kind": "sq8"}, {"vse.serving.index.HNSW_NEIGHBOURS": 16}],
    ids=["model", "gallery", "kind", "build parameters"],
)
def test_an_index_made_for_something_else_is_rebuilt(model, gallery, tmp_path, change, monkeypatch):
    start(model, gallery, tmp_path, "hnsw")
    settings = {"kind": "hnsw", **change}
    for name, value in list(settings.items()):
        if name.startswith("vse."):
            monkeypatch.setattr(name, value)
            del settings[name]
    assert origins(start(model, gallery, tmp_path, **settings)) == ("built", "built")
    assert origins(start(model, gallery, tmp_path, **settings)) == ("loaded", "loaded")
    assert len(stored_files(tmp_path, "image")) == 2  # the other one stays for its own model/gallery


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def scramble_keeping_size(path: Path) -> None:
    """Garbage where faiss reads the index type: the file's size still matches its manifest."""
    data = bytearray(path.read_bytes())
    data[:16] = b"\xff" * 16
    path.write_bytes(bytes(data))


def truncate_and_fix_manifest(path: Path) -> None:
    """As if the manifest vouched for the cut file: faiss itself must refuse it."""
    truncate(path)
    manifest = path.with_suffix(".json")
    fields = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({**fields, "bytes": path.stat().st_size}))


def drop_manifest(path: Path) -> None:
    """As a kill between writing the index and writing its manifest leaves it."""
    path.with_suffix(".json").unlink()


def killed_while_saving(path: Path) -> None:
    """A kill during the rewrite of an index: its manifest removed, a partial temp file beside it."""
    drop_manifest(path)
    (path.parent / f".{path.name}.x1y2z3.tmp").write_bytes(path.read_bytes()[:100])


@pytest.mark.parametrize(
    "damage", [truncate, scramble_keeping_size, truncate_and_fix_manifest, drop_manifest, killed_while_saving]
)
@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivfpq"])
def test_a_damaged_index_is_rebuilt_not_used(model, gallery, tmp_path, caplog, damage, kind):
    expected = answers(start(model, gallery, tmp_path, kind))
    [path] = stored_files(tmp_path, "image")
    damage(path)
    caplog.set_level(logging.INFO, logger="vse.serving.index")
    service = start(model, gallery, tmp_path, kind)
    assert origins(service) == ("built", "loaded")
    assert "stored image index not used, it will be rebuilt" in caplog.text and "built the image index" in caplog.text
    if kind == "flat":  # deterministic build: the same answers as the first start
        assert answers(service) == expected
    assert origins(start(model, gallery, tmp_path, kind)) == ("loaded", "loaded")  # saved again, whole
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_save_cut_short_leaves_no_file_that_is_read(model, gallery, tmp_path, monkeypatch, caplog):
    import faiss

    def write_half_then_fail(index, path):
        Path(path).write_bytes(b"half an index")
        raise OSError("No space left on device")

    monkeypatch.setattr(faiss, "write_index", write_half_then_fail)
    caplog.set_level(logging.WARNING, logger="vse.serving.index")
    assert origins(start(model, gallery, tmp_path, "flat")) == ("built", "built")
    assert "could not save the image index" in caplog.text
    assert list(tmp_path.iterdir()) == []  # no index, no manifest, no temp file
    monkeypatch.undo()
    assert origins(start(model, gallery, tmp_path, "flat")) == ("built", "built")


def test_stored_in_the_index_folder_beside_the_embeddings(model, gallery, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="vse.serving.index")
    start(model, gallery, tmp_path, "hnsw")
    start(model, gallery, tmp_path, "hnsw")
    [path] = stored_files(tmp_path, "image")
    assert path.name.startswith("image-hnsw-") and path.with_suffix(".json").is_file()
    assert f"loaded the image index from {path}" in caplog.text
    manifest = json.loads(path.with_suffix(".json").read_text())
    assert manifest["bytes"] == path.stat().st_size
    assert {k: manifest["key"][k] for k in ("model", "gallery", "kind", "size", "dim")} == {
        "model": "model-a", "gallery": "gallery-a", "kind": "hnsw", "size": ROWS, "dim": DIM
    }  # fmt: skip


# ------------------------------------------------------------------ through RetrievalService.load
def png(colour: str, shape: str) -> bytes:
    buffer = io.BytesIO()
    draw(colour, shape, size=32).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def shipped(tiny_vit, tmp_path) -> tuple[Path, Path]:
    """A model folder, and a gallery folder beside an ``index`` folder as assets/ ships them."""
    config = VSEConfig(image_backbone=str(tiny_vit), image_pooling="cls", text_encoder="gru", embed_dim=8, word_dim=4)
    model_dir = tmp_path / "assets" / "model"
    VSEModel(config, tokenizer=vocabulary_from_words(["a", "red", "circle"])).save_pretrained(model_dir)
    rows = [
        {"id": f"img{i}", "image": png(colour, shape), "title": "", "captions": [f"a {colour} {shape}"],
         "tags": [colour], "category": "", "split": "test"}
        for i, (colour, shape) in enumerate([("red", "circle"), ("blue", "square"), ("green", "triangle")])
    ]  # fmt: skip
    write_gallery(rows, tmp_path / "assets" / "gallery")
    return model_dir, tmp_path / "assets" / "gallery"


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def load(model_dir: Path, gallery_dir: Path, data_dir: Path) -> RetrievalService:
    return RetrievalService.load(str(model_dir), str(gallery_dir), data_dir, index_kind="hnsw")


def test_nothing_is_written_into_the_shipped_folder(shipped, tmp_path):
    model_dir, gallery_dir = shipped
    first = load(model_dir, gallery_dir, tmp_path / "first-data")
    [cache] = (tmp_path / "first-data" / "index").iterdir()
    shipped_index = gallery_dir.parent / "index"
    shipped_index.mkdir()
    shutil.copy(cache / "embeddings.safetensors", shipped_index)  # ship the embeddings only
    shipped_index.chmod(0o555)  # read-only (root writes anyway: the snapshot is the real check)
    before = snapshot(shipped_index)
    try:
        second = load(model_dir, gallery_dir, tmp_path / "data")
        assert origins(second) == ("built", "built") and snapshot(shipped_index) == before
        assert stored_files(tmp_path / "data" / "index" / cache.name, "image")  # saved in the data folder
        assert origins(load(model_dir, gallery_dir, tmp_path / "data")) == ("loaded", "loaded")
        assert snapshot(shipped_index) == before
        assert [h.index for h in second.search_text("a red circle", 3)] == [
            h.index for h in first.search_text("a red circle", 3)
        ]
    finally:
        shipped_index.chmod(0o755)


def test_indexes_shipped_with_the_embeddings_are_read_from_there(shipped, tmp_path):
    model_dir, gallery_dir = shipped
    load(model_dir, gallery_dir, tmp_path / "build")
    [cache] = (tmp_path / "build" / "index").iterdir()
    shutil.copytree(cache, gallery_dir.parent / "index")
    service = load(model_dir, gallery_dir, tmp_path / "data")
    assert origins(service) == ("loaded", "loaded")
    assert not (tmp_path / "data" / "index").exists()  # embeddings and indexes both came from the shipped folder
