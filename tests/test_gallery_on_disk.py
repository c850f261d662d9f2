"""A gallery served from its parquet shards: opened without its images, fingerprinted from a record, thumbnails on disk.

Memory and start-up must not grow with the bytes of the gallery's images; the
fingerprint (to which embeddings and search indexes are bound) is taken from
the record beside the shards, and a changed shard, a stale or an edited record
never gets stale embeddings used.
"""

from __future__ import annotations

import functools
import io
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from vse.serving.gallery import Gallery, GalleryEmbeddings, gallery_from_rows, load_gallery, model_digest, write_gallery
from vse.serving.gallery_fingerprint import RECORD_NAME, file_sha256, is_well_formed, read_record
from vse.serving.gallery_shards import PYTHON_WHITESPACE, ROW_GROUP_BYTES, ShardImages
from vse.serving.retrieval import GALLERY_STATE, RetrievalService, cache_folder
from vse.serving.thumbnails import ThumbnailCache
from vse.testing.app_runner import ASSETS, ROOT
from vse.testing.shapes import draw


def png(colour: str = "red", shape: str = "circle") -> bytes:
    buffer = io.BytesIO()
    draw(colour, shape, size=32).save(buffer, format="PNG")
    return buffer.getvalue()


def padded_jpeg(tail: bytes) -> bytes:
    """A real 32-pixel JPEG followed by ``tail``: decoders stop at its end marker, the bytes stay incompressible."""
    buffer = io.BytesIO()
    draw("red", "circle", size=32).convert("RGB").save(buffer, format="JPEG")
    return buffer.getvalue() + tail


def noise(count: int, size: int, seed: int = 0):
    """``count`` different incompressible blocks of ``size`` bytes, made quickly from one random block."""
    block = np.random.default_rng(seed).integers(0, 2**63, size=size // 8, dtype=np.uint64)
    for i in range(count):
        yield (block ^ np.uint64((0x9E3779B97F4A7C15 * (i + 1)) % 2**64)).tobytes()


def row(i: int, image: bytes, captions: list[str] | None = None) -> dict:
    return {"id": f"img{i}", "image": image, "title": f"t{i}", "tags": ["red", " "], "category": "c",
            "captions": [f"a red circle {i}"] if captions is None else captions,
            "split": "test" if i % 2 else "train"}  # fmt: skip


def rows_of(images: list[bytes], captions: list[list[str]] | None = None) -> list[dict]:
    return [row(i, data, captions[i] if captions else None) for i, data in enumerate(images)]


def in_memory(rows: list[dict]) -> Gallery:
    """The same rows as a gallery held in memory: what the shards must read as."""
    gallery, _ = gallery_from_rows(rows)
    return gallery


# ------------------------------------------------------------------ memory
PEAK_RSS = """
import resource, sys
from pathlib import Path
from vse.serving.retrieval import RetrievalService
from vse.serving.thumbnails import ThumbnailCache

def peak_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2**20 if sys.platform == "darwin" else 2**10)

def serve(model_dir, gallery, data_dir):
    service = RetrievalService.load(model_dir, gallery, data_dir)
    assert service.image_index.size == len(service.gallery)
    shown = ThumbnailCache(Path(data_dir) / "thumbnails", 10**8)
    for hit in service.search_text("a red circle", 5):
        path = shown.file(service.gallery.image_key(hit.index), lambda: (service.gallery.image_bytes(hit.index), ".jpg"))
        assert path.stat().st_size > 0 and service.gallery.image(hit.index).size == (32, 32)
    return peak_mb()

model_dir, small, large, data = sys.argv[1:]
print(serve(model_dir, small, data + "/small"), serve(model_dir, large, data + "/large"))
"""


def cache_embeddings(model_dir: Path, gallery_dir: Path, data_dir: Path) -> None:
    """Random embeddings cached as the service would have built them: the test is about the gallery, not indexing."""
    fingerprint = json.loads((gallery_dir / RECORD_NAME).read_text())["fingerprint"]
    rows = pq.read_table(gallery_dir, columns=["id"]).num_rows
    vectors = torch.nn.functional.normalize(torch.randn(rows, 8), dim=1)
    revision = model_digest(model_dir)
    GalleryEmbeddings(vectors, vectors.clone(), revision, fingerprint).save(
        cache_folder(data_dir, revision, fingerprint)
    )


@pytest.mark.slow  # about 12 s: 400 MB written, a process that loads a model
def test_a_gallery_larger_than_the_memory_budget_is_served_from_disk(model_dir, tmp_path):
    """Open, search and show images of a 400 MB gallery: the peak RSS grows by a small part of that over a 2 MB one."""
    image_bytes, count = 1_000_000, 400
    write_gallery(rows_of([padded_jpeg(tail) for tail in noise(2, image_bytes)]), tmp_path / "small")
    write_gallery((row(i, padded_jpeg(tail)) for i, tail in enumerate(noise(count, image_bytes))), tmp_path / "large")
    on_disk = sum(path.stat().st_size for path in (tmp_path / "large").glob("*.parquet"))
    assert on_disk > count * image_bytes  # incompressible
    for name in ("small", "large"):
        cache_embeddings(model_dir, tmp_path / name, tmp_path / "data" / name)
    result = subprocess.run(
        [sys.executable, "-c", PEAK_RSS, str(model_dir), str(tmp_path / "small"), str(tmp_path / "large"),
         str(tmp_path / "data")],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    small_peak, large_peak = map(float, result.stdout.split()[-2:])
    assert large_peak - small_peak < on_disk / 1e6 / 10, (small_peak, large_peak, on_disk)
    assert len(list((tmp_path / "data" / "large" / "index").iterdir())) == 1  # the cached embeddings were used


def test_opening_a_gallery_reads_one_image_and_showing_one_reads_its_row_group(tmp_path, monkeypatch):
    write_gallery(rows_of([padded_jpeg(tail) for tail in noise(30, 200_000)]), tmp_path / "gallery")
    reads = []
    real = ShardImages._read_row_group
    monkeypatch.setattr(ShardImages, "_read_row_group", lambda self, place: reads.append(place) or real(self, place))
    gallery, _ = load_gallery(tmp_path / "gallery")
    assert (
        gallery.fingerprint and [item.title for item in gallery.items][-1] == "t29" and len(gallery.caption_texts) == 30
    )
    assert reads == [0]  # the first image, decoded to check that the gallery has a readable one
    assert gallery.image(29).size == (32, 32) and len(reads) == 2


def test_threads_showing_images_of_one_row_group_at_once_wait_for_one_read(tmp_path, monkeypatch):
    """The first read of the row group holds on until all 8 threads have asked for an image of it."""
    import threading

    write_gallery(rows_of([padded_jpeg(tail) for tail in noise(30, 20_000)]), tmp_path / "gallery")
    gallery, _ = load_gallery(tmp_path / "gallery")
    images = gallery._images
    reads, asked, everyone_asked = [], [], threading.Event()
    real_read, real_group = ShardImages.read, ShardImages._read_row_group

    def asking(self, row):
        asked.append(row)
        if len(asked) == 8:
            everyone_asked.set()
        return real_read(self, row)

    def read_when_everyone_asked(self, place):
        reads.append(place)
        assert everyone_asked.wait(10)
        return real_group(self, place)

    monkeypatch.setattr(ShardImages, "read", asking)
    monkeypatch.setattr(ShardImages, "_read_row_group", read_when_everyone_asked)
    images._row_group = functools.lru_cache(maxsize=4)(images._read_row_group)
    shown = [None] * 8
    threads = [threading.Thread(target=lambda i=i: shown.__setitem__(i, gallery.image_bytes(i))) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert reads == [0] and all(shown)


def test_a_large_gallery_is_written_in_small_row_groups(tmp_path):
    """Showing an image reads its row group: about ROW_GROUP_BYTES, not a whole shard."""
    write_gallery(rows_of([padded_jpeg(tail) for tail in noise(40, 50_000)]), tmp_path / "gallery")
    for shard in (tmp_path / "gallery").glob("*.parquet"):
        metadata = pq.ParquetFile(shard).metadata
        groups = [metadata.row_group(g).total_byte_size for g in range(metadata.num_row_groups)]
        assert max(groups) < 1.5 * ROW_GROUP_BYTES and metadata.num_row_groups > 1


# ------------------------------------------------------------------ the same gallery as in memory
def test_shards_read_as_the_same_rows_held_in_memory(tmp_path):
    captions = [["a red circle", " a red circle", "a red circle"], ["\u3000", "x\u2003"], [], ["b", "a", "b"]]
    rows = rows_of([png(), png("blue"), png("green"), png("red", "square")], captions)
    rows[2]["id"] = None
    write_gallery(rows, tmp_path / "gallery", shard_bytes=300)
    assert len(list((tmp_path / "gallery").glob("*.parquet"))) > 1
    gallery, skipped = load_gallery(tmp_path / "gallery")
    expected = in_memory(rows)
    assert skipped == {} and list(gallery.items) == list(expected.items)
    assert gallery.caption_texts == expected.caption_texts == ["a red circle", " a red circle", "x\u2003", "b", "a"]
    assert list(gallery.caption_owners) == list(expected.caption_owners) == ["img0", "img0", "img1", "img3", "img3"]
    assert gallery.fingerprint == expected.fingerprint
    assert gallery.ids[2] == "row-2" and gallery.position["img3"] == 3 and "nope" not in gallery.position
    assert gallery.tag_lists() == [["red"]] * 4 and gallery.captioned_rows("test") == [1, 3]
    served = gallery.without(["img1"])
    assert served.ids == ["img0", "row-2", "img3"] and served.image_bytes(2) == rows[3]["image"]
    assert served.image_key(2) == gallery.image_key(3)  # named after the gallery it was cut from


def test_a_page_of_items_read_at_once_equals_reading_them_one_by_one(tmp_path):
    rows = rows_of([png(), png("blue"), png("green"), png("red", "square")], [["a"], [], ["b", "c"], ["d"]])
    write_gallery(rows, tmp_path / "gallery", shard_bytes=300)
    on_disk, _ = load_gallery(tmp_path / "gallery")
    for gallery in (on_disk, in_memory(rows), on_disk.without(["img1"])):
        page = [len(gallery) - 1, 0, -1, 1, 0]  # any order, repeats and negative positions, as a list takes them
        assert gallery.items_at(page) == [gallery.items[i] for i in page]
        assert [item.image for item in gallery.items_at(page)] == [gallery.image_bytes(i) for i in page]
        assert gallery.items_at([]) == []
        with pytest.raises(IndexError):
            gallery.items_at([len(gallery)])
        assert [(gallery.ids[i], gallery.titles[i]) for i in page] == [
            (gallery.items[i].id, gallery.items[i].title) for i in page
        ]


def test_repeated_ids_in_shards_are_skipped_and_counted(tmp_path):
    rows = rows_of([png(), png("blue"), png("green")])
    rows[2]["id"] = "img0"
    write_gallery(rows, tmp_path / "gallery", shard_bytes=300)
    gallery, skipped = load_gallery(tmp_path / "gallery")
    assert gallery.ids == ["img0", "img1"] and skipped == {"duplicate id": 1}
    assert gallery.image_bytes(0) == rows[0]["image"]


def test_blank_means_what_str_strip_says():
    assert "".join(chr(c) for c in range(sys.maxunicode + 1) if chr(c).isspace()) == PYTHON_WHITESPACE


# ------------------------------------------------------------------ the recorded fingerprint
@pytest.fixture
def counted(monkeypatch) -> dict[str, int]:
    """Counts of shard files hashed and of fingerprints computed from the images."""
    counts = {"files hashed": 0, "images hashed": 0}
    real_file, real_images = file_sha256, Gallery.content_fingerprint

    def count_file(path):
        counts["files hashed"] += 1
        return real_file(path)

    def count_images(gallery):
        counts["images hashed"] += 1
        return real_images(gallery)

    monkeypatch.setattr("vse.serving.gallery_fingerprint.file_sha256", count_file)
    monkeypatch.setattr(Gallery, "content_fingerprint", count_images)
    return counts


def test_the_recorded_fingerprint_is_used_without_hashing(tmp_path, counted):
    rows = rows_of([png(), png("blue"), png("green")])
    write_gallery(rows, tmp_path / "gallery", shard_bytes=300)
    counted.update({"files hashed": 0, "images hashed": 0})
    gallery, _ = load_gallery(tmp_path / "gallery", state_dir=tmp_path / "state")
    fingerprint = gallery.fingerprint
    assert counted == {"files hashed": 0, "images hashed": 0}
    assert fingerprint == in_memory(rows).fingerprint
    assert not (tmp_path / "state").exists()  # nothing new to record


def test_touched_shards_are_hashed_once_then_recorded_in_the_state_folder(tmp_path, counted):
    rows = rows_of([png(), png("blue"), png("green")])
    write_gallery(rows, tmp_path / "gallery", shard_bytes=300)
    shards = sorted((tmp_path / "gallery").glob("*.parquet"))
    for shard in shards:  # a checkout or copy: the same bytes, new times
        shard.write_bytes(shard.read_bytes())
    before = {path.name: path.read_bytes() for path in (tmp_path / "gallery").iterdir()}
    counted.update({"files hashed": 0, "images hashed": 0})
    gallery, _ = load_gallery(tmp_path / "gallery", state_dir=tmp_path / "state")
    fingerprint = gallery.fingerprint
    assert counted == {"files hashed": len(shards), "images hashed": 0}
    again, _ = load_gallery(tmp_path / "gallery", state_dir=tmp_path / "state")
    assert again.fingerprint == fingerprint and counted == {"files hashed": len(shards), "images hashed": 0}
    assert fingerprint == in_memory(rows).fingerprint
    assert {path.name: path.read_bytes() for path in (tmp_path / "gallery").iterdir()} == before  # only read


def rewrite_first_image_in_place(shard: Path, image: bytes) -> None:
    """Flip one byte of ``image`` inside ``shard`` and give the file back its size and times (mtime forged)."""
    data, status = bytearray(shard.read_bytes()), shard.stat()
    at = data.find(image) + len(image) // 2
    data[at] ^= 0xFF
    shard.write_bytes(bytes(data))
    os.utime(shard, ns=(status.st_atime_ns, status.st_mtime_ns))
    assert shard.stat().st_size == status.st_size and shard.stat().st_mtime_ns == status.st_mtime_ns


def test_a_shard_changed_in_place_with_its_mtime_restored_changes_the_fingerprint(tmp_path, counted):
    rows = rows_of([png(), png("blue")])
    folder = tmp_path / "gallery"
    folder.mkdir()
    pq.write_table(pa.Table.from_pylist(rows), folder / "gallery-00000.parquet", compression="none")
    from vse.serving.gallery import record_fingerprint

    record_fingerprint(folder)
    recorded = read_record(folder / RECORD_NAME)["fingerprint"]
    rewrite_first_image_in_place(folder / "gallery-00000.parquet", rows[0]["image"])
    gallery, _ = load_gallery(folder, state_dir=tmp_path / "state")
    assert gallery.fingerprint != recorded and counted["images hashed"] == 2  # recorded once, recomputed once
    changed = bytearray(rows[0]["image"])
    changed[len(changed) // 2] ^= 0xFF
    assert gallery.fingerprint == in_memory([{**rows[0], "image": bytes(changed)}, rows[1]]).fingerprint


def test_an_edited_record_is_ignored(tmp_path, counted):
    rows = rows_of([png(), png("blue")])
    write_gallery(rows, tmp_path / "gallery")
    path = tmp_path / "gallery" / RECORD_NAME
    record = json.loads(path.read_text())
    record["fingerprint"] = "0" * 64  # e.g. another gallery's, whose embeddings are cached
    path.write_text(json.dumps(record))
    assert read_record(path) is None and not is_well_formed(record)
    gallery, _ = load_gallery(tmp_path / "gallery")
    fingerprint = gallery.fingerprint
    assert counted["images hashed"] == 2  # recorded once, recomputed once
    assert fingerprint == in_memory(rows).fingerprint


def test_a_stale_or_edited_record_never_gets_stale_embeddings_used(model_dir, tmp_path):
    """Embeddings (and indexes, keyed alike) of the old gallery are cached; the shards change, the old record stays."""
    folder, data = tmp_path / "gallery", tmp_path / "data"
    write_gallery(rows_of([png("red"), png("blue", "square")]), folder)
    old = RetrievalService.load(str(model_dir), str(folder), data)
    old_record = (folder / RECORD_NAME).read_bytes()
    new_rows = rows_of([png("green", "triangle"), png("blue", "square")])
    write_gallery(new_rows, folder)
    new_record = json.loads((folder / RECORD_NAME).read_text())
    (folder / RECORD_NAME).write_bytes(old_record)  # stale: restored from a backup, say
    new = RetrievalService.load(str(model_dir), str(folder), data)
    assert new.embeddings.gallery == in_memory(new_rows).fingerprint != old.embeddings.gallery
    assert len(list((data / "index").iterdir())) == 2  # embeddings built for the new content, the old ones unused
    # Edited: the old fingerprint under the new shards' stamps (digest not recomputed), no state of this data folder.
    (folder / RECORD_NAME).write_text(json.dumps({**new_record, "fingerprint": old.embeddings.gallery}))
    shutil.rmtree(data / GALLERY_STATE)
    again = RetrievalService.load(str(model_dir), str(folder), data)
    assert again.embeddings.gallery == new.embeddings.gallery


@pytest.mark.skipif(not (ASSETS / "gallery" / RECORD_NAME).is_file(), reason="assets/ not built")
def test_the_shipped_record_is_confirmed_by_the_shipped_shards():
    """A checkout gives the shards new times: their bytes must still be the recorded ones, the fingerprint the embeddings'."""
    from safetensors import safe_open

    record = read_record(ASSETS / "gallery" / RECORD_NAME)
    assert record is not None
    shards = sorted((ASSETS / "gallery").glob("gallery-*.parquet"))
    assert [(s["name"], s["sha256"]) for s in record["shards"]] == [(p.name, file_sha256(p)) for p in shards]
    with safe_open(str(ASSETS / "index" / "embeddings.safetensors"), framework="pt") as handle:
        assert handle.metadata()["gallery"] == record["fingerprint"]


# ------------------------------------------------------------------ thumbnails
def test_thumbnails_are_written_on_first_view_and_read_back(tmp_path):
    cache, made = ThumbnailCache(tmp_path / "thumbnails", 10**6), []

    def encode():
        made.append(1)
        return b"RIFF....WEBPdata", ".webp"

    first = cache.file("ab" * 32, encode)
    assert cache.file("ab" * 32, encode) == first and len(made) == 1
    assert first.read_bytes() == b"RIFF....WEBPdata" and first.parent.name == "ab"
    fresh = ThumbnailCache(tmp_path / "thumbnails", 10**6)  # another process, or a restart
    assert fresh.file("ab" * 32, encode) == first and len(made) == 1


def test_concurrent_writers_never_show_a_partial_file(tmp_path):
    cache, data = ThumbnailCache(tmp_path / "thumbnails", 10**8), os.urandom(2_000_000)
    barrier, seen = threading.Barrier(8), []

    def view():
        barrier.wait()
        seen.append(cache.file("cd" * 32, lambda: (data, ".png")).read_bytes() == data)

    threads = [threading.Thread(target=view) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert seen == [True] * 8
    assert [p.name for p in (tmp_path / "thumbnails" / "cd").iterdir()] == ["cd" * 32 + ".png"]  # no temporary left


def test_the_thumbnail_folder_keeps_to_its_bound_dropping_the_least_recently_viewed(tmp_path):
    cache = ThumbnailCache(tmp_path / "thumbnails", 10_000)
    keys = [f"{i:02d}" * 32 for i in range(30)]
    for i, key in enumerate(keys):
        cache.file(key, lambda: (b"\x89PNG" + b"x" * 996, ".png"))
        os.utime(cache.path(key, ".png"), ns=(i * 10**9, i * 10**9))  # viewed in order, a second apart
        assert cache.find(keys[0]) is not None, "the first file was evicted although viewed after every other"
    total = sum(p.stat().st_size for p in (tmp_path / "thumbnails").rglob("*.png"))
    assert total <= 10_000 and cache.find(keys[-1]) is not None and cache.find(keys[1]) is None


def test_a_view_marks_a_thumbnail_as_viewed_unless_it_was_marked_recently(tmp_path):
    from vse.serving.thumbnails import RECENT_SECONDS

    cache = ThumbnailCache(tmp_path / "thumbnails", 10**6)
    recent, old = "ab" * 32, "cd" * 32
    for key in (recent, old):
        cache.file(key, lambda: (b"\x89PNG" + b"x" * 96, ".png"))
    now = time.time()
    marked = int((now - RECENT_SECONDS / 2) * 1e9)
    os.utime(cache.path(recent, ".png"), ns=(marked, marked))
    os.utime(cache.path(old, ".png"), ns=(10**9, 10**9))
    assert cache.find(recent) is not None and cache.find(old) is not None
    assert cache.path(recent, ".png").stat().st_mtime_ns == marked  # no disk write for a recent mark
    assert cache.path(old, ".png").stat().st_mtime >= now - 1  # an old mark is renewed


def test_the_app_shows_gallery_images_through_the_thumbnail_cache(tmp_path, monkeypatch):
    """VSEApp.thumbnail_file: a later view needs no read of the gallery's image."""
    app_module = pytest.importorskip("app")
    rows = rows_of([png(), png("blue")])
    write_gallery(rows, tmp_path / "gallery")
    gallery, _ = load_gallery(tmp_path / "gallery")
    view = app_module.VSEApp.__new__(app_module.VSEApp)
    view.service = type("Service", (), {"gallery": gallery})()
    view.thumbnails = ThumbnailCache(tmp_path / "thumbnails", 10**6)
    path = Path(view.thumbnail_file(1))
    assert path.suffix == ".png" and path.read_bytes() == rows[1]["image"]
    monkeypatch.setattr(
        "vse.serving.gallery_shards.ShardImages.read", lambda *_: pytest.fail("the image was read again")
    )
    assert Path(view.thumbnail_file(1)) == path
    assert Image.open(path).size == (32, 32)


def test_large_gallery_images_are_shown_scaled_down(tmp_path):
    """A photo larger than THUMBNAIL_SIDE is shown as a WebP inside it, aspect kept; a small one as stored."""
    app_module = pytest.importorskip("app")
    from vse.serving.thumbnails import THUMBNAIL_SIDE

    buffer = io.BytesIO()
    draw("green", "square", size=32).resize((4 * THUMBNAIL_SIDE, 2 * THUMBNAIL_SIDE)).save(buffer, format="PNG")
    rows = rows_of([png(), buffer.getvalue()])
    write_gallery(rows, tmp_path / "gallery")
    gallery, _ = load_gallery(tmp_path / "gallery")
    view = app_module.VSEApp.__new__(app_module.VSEApp)
    view.service = type("Service", (), {"gallery": gallery})()
    view.thumbnails = ThumbnailCache(tmp_path / "thumbnails", 10**7)
    small, large = Path(view.thumbnail_file(0)), Path(view.thumbnail_file(1))
    assert small.read_bytes() == rows[0]["image"]
    assert large.suffix == ".webp" and Image.open(large).size == (THUMBNAIL_SIDE, THUMBNAIL_SIDE // 2)
    assert large.stat().st_size < len(rows[1]["image"])
    centre = Image.open(large).convert("RGB").getpixel((THUMBNAIL_SIDE // 2, THUMBNAIL_SIDE // 4))
    assert centre[1] > 100 and centre[0] < 100  # still the green square
