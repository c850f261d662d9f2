"""``--gallery``: a path that holds no gallery is refused at once; so is a gallery none of whose images decodes.

Some unreadable images among good ones are fine: they are left out and counted,
and the service starts with the rest.
"""

from __future__ import annotations

import io
import logging
import shutil
import time
from pathlib import Path

import pytest
from PIL import Image

from vse.errors import GalleryError
from vse.serving.gallery import GalleryEmbeddings, gallery_from_rows, load_gallery, write_gallery
from vse.serving.retrieval import RetrievalService, servable
from vse.testing.shapes import draw

BROKEN_PNG = b"\x89PNG\r\n\x1a\n but the rest is missing"


def png(colour: str = "red", shape: str = "circle") -> bytes:
    buffer = io.BytesIO()
    draw(colour, shape, size=32).save(buffer, format="PNG")
    return buffer.getvalue()


def shard_rows(images: list[bytes]) -> list[dict]:
    return [
        {"id": f"img{i}", "image": data, "title": "", "captions": [f"a red circle {i}"], "tags": ["red"],
         "category": "", "split": "test"}
        for i, data in enumerate(images)
    ]  # fmt: skip


def image_folder(folder: Path, images: dict[str, bytes]) -> Path:
    folder.mkdir(parents=True)
    for name, data in images.items():
        (folder / name).write_bytes(data)
    return folder


def refused(source) -> str:
    start = time.perf_counter()
    with pytest.raises(GalleryError) as caught:
        load_gallery(source)
    assert time.perf_counter() - start < 5.0, "the refusal must come quickly"
    return str(caught.value)


# ------------------------------------------------------------------ folders that hold no gallery
def test_an_empty_folder_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    text = refused(tmp_path / "empty")
    assert text.startswith(f"the gallery folder {tmp_path / 'empty'} holds no images") and "gallery-*.parquet" in text


def test_a_folder_of_text_files_is_refused_without_asking_datasets(tmp_path, monkeypatch):
    """Like ``--gallery ../../etc``: files, subfolders, no image among them."""
    folder = tmp_path / "etc"
    for source in sorted(Path(__file__).parent.glob("*.py"))[:5]:
        (folder / source.stem).mkdir(parents=True)
        shutil.copy(source, folder / source.stem / source.name)
    (folder / "hosts").write_text("127.0.0.1 localhost\n")
    monkeypatch.setattr("datasets.load_dataset", lambda *a, **k: pytest.fail("datasets was asked"))
    assert refused(folder).startswith(f"the gallery folder {folder} holds no images")


def test_a_huge_tree_is_refused_without_walking_all_of_it(tmp_path, monkeypatch):
    monkeypatch.setattr("vse.serving.gallery.MAX_FOLDER_ENTRIES", 50)
    for branch in range(10):
        for leaf in range(10):
            (tmp_path / "home" / f"b{branch}").mkdir(parents=True, exist_ok=True)
            (tmp_path / "home" / f"b{branch}" / f"notes{leaf}.txt").write_text("x")
    (tmp_path / "home" / "b9" / "photo.png").write_bytes(png())
    text = refused(tmp_path / "home")
    assert "holds more than 50 files and folders" in text and str(tmp_path / "home") in text


@pytest.mark.parametrize("source", ["./no/such/gallery", "/no/such/gallery", "~/no-such-gallery-here"])
def test_a_missing_path_is_refused(source):
    assert refused(source) == f"no gallery folder or file at {source}"


def test_a_file_of_another_kind_is_refused(tmp_path):
    (tmp_path / "gallery.zip").write_bytes(b"PK\x03\x04")
    text = refused(tmp_path / "gallery.zip")
    assert text.startswith(f"the gallery {tmp_path / 'gallery.zip'} is a .zip file")


def test_shards_without_rows_or_unreadable_shards_are_refused(tmp_path):
    write_gallery([], tmp_path / "none")  # writes nothing: no shards, no images
    (tmp_path / "none").mkdir(exist_ok=True)
    assert "holds no images" in refused(tmp_path / "none")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "gallery-00000.parquet").write_bytes(b"not parquet at all")
    text = refused(tmp_path / "bad")
    assert text.startswith(f"{tmp_path / 'bad' / 'gallery-00000.parquet'} is not a readable gallery shard")


# ------------------------------------------------------------------ images that do not decode
def test_shards_whose_images_all_fail_to_decode_are_refused(tmp_path):
    write_gallery(shard_rows([BROKEN_PNG, b"GIF89a", b"\xff\xd8\xff truncated jpeg"]), tmp_path / "gallery")
    text = refused(tmp_path / "gallery")
    assert text.startswith(f"none of the 3 images of the gallery {tmp_path / 'gallery'} can be decoded")
    assert "(first: img0: the file is not a readable image" in text


def test_an_image_folder_whose_images_all_fail_to_decode_is_refused(tmp_path):
    folder = image_folder(tmp_path / "images", {f"{i}.png": BROKEN_PNG for i in range(3)})
    assert refused(folder).startswith(f"none of the 3 images of the gallery {folder} can be decoded")


def test_an_image_folder_with_some_bad_images_loads_them_all_for_indexing(tmp_path):
    folder = image_folder(tmp_path / "images", {"bad.png": BROKEN_PNG, "good.png": png(), "ugly.jpg": b"\xff\xd8"})
    gallery, skipped = load_gallery(folder)
    assert len(gallery) == 3 and skipped == {}  # the indexer leaves the bad ones out


def test_the_service_starts_with_the_good_images_and_counts_the_bad(model_dir, tmp_path, caplog):
    images = [png("red"), BROKEN_PNG, png("blue", "square"), b"\x00" * 10]
    write_gallery(shard_rows(images), tmp_path / "gallery")
    caplog.set_level(logging.INFO)
    service = RetrievalService.load(str(model_dir), str(tmp_path / "gallery"), tmp_path / "data", index_kind="exact")
    assert [item.id for item in service.gallery.items] == ["img0", "img2"]
    assert service.embeddings.dropped == ["img1", "img3"] and service.embeddings.images.shape == (2, 8)
    assert "2 unreadable images left out" in caplog.text and "loaded 2 images (2 unreadable left out)" in caplog.text
    assert service.search_text("a red circle", 2)
    copies = service.model.onnx_copies()
    assert copies and all(c.pinned for c in copies)  # a served model's weights are not checked per query


def test_the_service_refuses_at_start_a_gallery_that_decodes_to_nothing(model_dir, tmp_path):
    write_gallery(shard_rows([BROKEN_PNG, BROKEN_PNG[:12]]), tmp_path / "gallery")
    with pytest.raises(GalleryError, match="none of the 2 images"):
        RetrievalService.load(str(model_dir), str(tmp_path / "gallery"), tmp_path / "data", index_kind="exact")
    assert not (tmp_path / "data" / "index").exists()  # refused before indexing


def test_cached_embeddings_that_dropped_every_image_are_refused():
    import torch

    gallery, _ = gallery_from_rows([{"id": "a", "image": png()}, {"id": "b", "image": png("blue")}])
    embeddings = GalleryEmbeddings(torch.empty(0, 8), torch.empty(0, 8), "d", gallery.fingerprint, dropped=["a", "b"])
    with pytest.raises(GalleryError, match="none of the 2 images of the gallery somewhere can be decoded"):
        servable(gallery, embeddings, "somewhere")


def test_a_good_gallery_costs_one_decode(tmp_path, monkeypatch):
    write_gallery(shard_rows([png()] * 20), tmp_path / "gallery")
    decoded = []
    real = Image.open
    monkeypatch.setattr(Image, "open", lambda *a, **k: decoded.append(1) or real(*a, **k))
    gallery, _ = load_gallery(tmp_path / "gallery")
    assert len(gallery) == 20 and len(decoded) == 1


# ------------------------------------------------------------------ datasets sources served from disk
def test_an_image_folder_is_written_once_as_shards_and_served_from_them(tmp_path):
    """With a state folder a datasets source becomes shards named by the dataset's fingerprint: the same
    items and fingerprint as read into memory, written once, rewritten when the folder changes."""
    from vse.serving.gallery_shards import ShardImages

    folder = image_folder(tmp_path / "images", {"a.png": png("red"), "b.png": png("blue", "square")})
    in_memory, skipped_in_memory = load_gallery(folder)
    served, skipped = load_gallery(folder, state_dir=tmp_path / "state")
    assert isinstance(served._images, ShardImages)  # images are read from the shards when asked for
    assert skipped == skipped_in_memory == {}
    assert list(served.items) == list(in_memory.items) and served.fingerprint == in_memory.fingerprint
    (written,) = (tmp_path / "state" / "datasets").iterdir()
    shards = sorted(written.glob("gallery-*.parquet"))
    stamps = [shard.stat().st_mtime_ns for shard in shards]
    again, _ = load_gallery(folder, state_dir=tmp_path / "state")
    assert list(again.items) == list(in_memory.items)
    assert [shard.stat().st_mtime_ns for shard in sorted(written.glob("gallery-*.parquet"))] == stamps  # not rewritten
    (folder / "c.png").write_bytes(png("green", "triangle"))
    grown, _ = load_gallery(folder, state_dir=tmp_path / "state")
    assert len(grown) == 3 and len(list((tmp_path / "state" / "datasets").iterdir())) == 2
    assert not [p for p in (tmp_path / "state" / "datasets").iterdir() if p.name.startswith(".")]  # no partial left


def test_rows_a_datasets_source_skips_are_counted_when_served_from_shards(tmp_path):
    import datasets

    images = [png("red"), png("blue", "square"), None, png("green", "triangle")]
    dataset = datasets.Dataset.from_dict({"id": ["x", "x", "y", "z"], "image": images, "caption": ["a", "b", "c", "d"]})
    dataset.save_to_disk(str(tmp_path / "saved"))
    in_memory, expected = load_gallery(tmp_path / "saved")
    assert expected == {"duplicate id": 1, "missing image": 1}
    for _ in range(2):  # written, then read back with its counts
        served, skipped = load_gallery(tmp_path / "saved", state_dir=tmp_path / "state")
        assert skipped == expected and list(served.items) == list(in_memory.items)
        assert [item.captions for item in served.items] == [["a"], ["d"]]


def test_a_compressed_index_asked_for_a_small_gallery_without_captions_starts(model_dir, tmp_path):
    """`--index ivfpq-rerank` on a few images without captions: too few vectors to train IVF-PQ
    (and none for the caption index), so exact search serves both, as the service loads for app.py."""
    rows = [{**row, "captions": []} for row in shard_rows([png("red"), png("blue", "square"), png("green")])]
    write_gallery(rows, tmp_path / "gallery")
    service = RetrievalService.load(
        str(model_dir), str(tmp_path / "gallery"), tmp_path / "data", index_kind="ivfpq-rerank"
    )
    assert (service.image_index.kind, service.caption_index.kind) == ("exact", "exact")
    assert len(service.search_text("a red circle", 2)) == 2
    assert service.nearest_captions(service.image_embedding(0), 3) == []
