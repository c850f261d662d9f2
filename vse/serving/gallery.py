"""The gallery format: images with their metadata, and their embeddings bound to a model.

A gallery folder holds parquet shards (``gallery-00000.parquet``, ...) readable by
``datasets.load_dataset("parquet", ...)`` with the columns

``id`` (string), ``image`` (encoded bytes: a thumbnail, letterboxed to the model's
input size), ``title``, ``captions`` (list of strings), ``tags`` (list of
strings: the raw web tags), ``category``, ``split``,

and ``.fingerprint.json``: the gallery's fingerprint with the stamps of the
shards it was computed from (``vse.serving.gallery_fingerprint``), so that a start
need not hash every image.  Shards are served from disk (``vse.serving.gallery_shards``):
opening a gallery reads its metadata columns; an image is read from its shard
when it is shown or embedded.  Other sources (``datasets``) are written once as
shards below the service's state folder, named by the dataset's fingerprint, and
served from there (``gallery_from_datasets``); without a state folder they are
read into memory.

An embeddings file (``embeddings.safetensors``) stores float16 image embeddings
in gallery order and caption embeddings in caption-pool order; its metadata
records the model digest, so embeddings of another model are never used.

``load_gallery`` refuses (``vse.errors.GalleryError``, naming the path) a source
that holds no images or shards, a folder too large to be a gallery, and a
gallery none of whose images decodes, before anything is indexed.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import hashlib
import io
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from vse.errors import GalleryError
from vse.images import ImageLoadError, load_image, pad_to_square
from vse.serving.gallery_fingerprint import RECORD_NAME, record_beside, shard_fingerprint
from vse.serving.gallery_shards import METADATA_SCHEMA, ROW_GROUP_BYTES, open_shards

GALLERY_COLUMNS = ("id", "image", "title", "captions", "tags", "category", "split")
SHARD_BYTES = 8_000_000  # stays under the 10 MB a Space file may have without LFS
EMBEDDINGS_FILE = "embeddings.safetensors"
SHARD_PATTERN = "gallery-*.parquet"
SKIPPED_NAME = "skipped.json"  # beside the shards written from a datasets source: rows skipped by reason
# File types an image folder gallery may hold (as datasets' imagefolder reads them).
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".jfif", ".gif", ".bmp", ".webp", ".tif", ".tiff"})
# How many files and folders an image folder gallery may hold: the scan for images
# stops there, so that a mistyped path (a home folder, /etc) is refused in a
# moment rather than walked for minutes.  Larger galleries are parquet shards.
MAX_FOLDER_ENTRIES = 100_000
DATA_FILE_SUFFIXES = (".parquet", ".jsonl", ".json")
VIEW_BATCH = 4096  # rows turned into Python objects at a time when a gallery is read in order


def model_digest(model_dir: str | Path) -> str:
    """SHA-256 of a saved model's weights and config: what its embeddings depend on."""
    digest = hashlib.sha256()
    for name in ("model.safetensors", "config.json", "backbones.json", "tokenizer.json"):
        path = Path(model_dir) / name
        if path.is_file():
            digest.update(name.encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def thumbnail_bytes(source, size: int = 224, quality: int = 80) -> bytes:
    """A letterboxed WebP thumbnail of ``size`` pixels (the model's input size)."""
    image = pad_to_square(load_image(source))
    image = image.resize((size, size), Image.Resampling.LANCZOS, reducing_gap=3.0)
    buffer = io.BytesIO()
    image.save(buffer, format="WEBP", quality=quality, method=4)
    return buffer.getvalue()


def rows_per_group(image_bytes: int, rows: int) -> int:
    """Rows per parquet row group so that a group holds about ``ROW_GROUP_BYTES`` of images.

    Showing one image reads its whole row group, so groups are kept small.
    """
    return max(1, min(rows, round(ROW_GROUP_BYTES * rows / max(1, image_bytes))))


def write_gallery(rows: Iterable[dict], folder: str | Path, shard_bytes: int = SHARD_BYTES) -> list[Path]:
    """Write rows (dicts with GALLERY_COLUMNS) as parquet shards below ``shard_bytes`` each.

    Then records the gallery's fingerprint beside them (``.fingerprint.json``), so that
    loading it needs no pass over its images.
    """
    import pyarrow.parquet as pq

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / RECORD_NAME).unlink(missing_ok=True)
    schema = pa.schema(
        [("id", pa.string()), ("image", pa.binary()), ("title", pa.string()), ("captions", pa.list_(pa.string())),
         ("tags", pa.list_(pa.string())), ("category", pa.string()), ("split", pa.string())]
    )  # fmt: skip
    paths, batch, size = [], [], 0

    def flush() -> None:
        path = folder / f"gallery-{len(paths):05d}.parquet"
        table = pa.Table.from_pylist(batch, schema=schema)
        group = rows_per_group(sum(len(row["image"] or b"") for row in batch), len(batch))
        pq.write_table(table, path, compression="zstd", row_group_size=group)
        paths.append(path)

    for row in rows:
        missing = [c for c in GALLERY_COLUMNS if c not in row]
        if missing:
            raise ValueError(f"gallery row {row.get('id')!r} lacks {missing}")
        batch.append(row)
        size += len(row["image"] or b"") + 200
        if size >= shard_bytes * 0.9:
            flush()
            batch, size = [], 0
    if batch:
        flush()
    if paths:
        record_fingerprint(folder)
    return paths


def record_fingerprint(folder: str | Path) -> Path:
    """Compute the fingerprint of the gallery in ``folder`` from its images and record it beside its shards."""
    shards = sorted(Path(folder).glob(SHARD_PATTERN))
    gallery, _ = open_shard_gallery(shards)
    return record_beside(shards, gallery.content_fingerprint())


@dataclass
class GalleryEmbeddings:
    """Embeddings of a gallery and its caption pool, bound to one model and one gallery."""

    images: torch.Tensor  # (N, D) float32, normalised (a float16 map when loaded with mapped=True)
    captions: torch.Tensor  # (C, D) float32, normalised (likewise)
    digest: str  # model_digest of the model that made them
    gallery: str  # Gallery.fingerprint of the gallery they describe
    tags: torch.Tensor | None = None  # (N, D) tag-list embeddings; zero rows for untagged images
    dropped: list[str] = field(default_factory=list)  # ids of unreadable images, left out of the rows above

    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / EMBEDDINGS_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {"images": self.images.half().contiguous(), "captions": self.captions.half().contiguous()}
        if self.tags is not None:
            tensors["tags"] = self.tags.half().contiguous()
        metadata = {"model_digest": self.digest, "gallery": self.gallery, "dropped": json.dumps(self.dropped)}
        save_file(tensors, str(path), metadata=metadata)
        return path

    @classmethod
    def load(cls, folder: str | Path, digest: str, gallery: str, mapped: bool = False) -> GalleryEmbeddings | None:
        """The stored embeddings, or None when missing or made for another model or gallery.

        ``mapped``: images and captions stay float16 memory maps instead of float32 copies (tag
        lists always do), for a caller that reads rows, not whole matrices (``RetrievalService``)."""
        path = Path(folder) / EMBEDDINGS_FILE
        if not path.is_file():
            return None
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            names = set(handle.keys())
        if metadata.get("model_digest") != digest or metadata.get("gallery") != gallery:
            return None
        # At a million images each matrix is half a gigabyte in float16: mapped, not read.  A stored
        # faiss index holds its own copy of the vectors, so a service that loads one never reads
        # them whole (exact search and an index build make their float32 copy) and keeps them
        # mapped: at 1M images 1.3 GB less anonymous memory than float32 copies (docs/PERFORMANCE.md).
        images, captions = (mapped_tensor(path, name) for name in ("images", "captions"))
        if not mapped:
            images, captions = as_float32(images), as_float32(captions)
        tags = mapped_tensor(path, "tags") if "tags" in names else None
        dropped = json.loads(metadata.get("dropped", "[]"))
        return cls(images, captions, digest, gallery, tags, dropped)


def as_float32(tensor: torch.Tensor, chunk: int = 1 << 16) -> torch.Tensor:
    """A float32 copy of a (N, D) tensor, converted ``chunk`` rows at a time (a mapped source is read once, in order)."""
    out = torch.empty(tensor.shape, dtype=torch.float32)
    for start in range(0, tensor.shape[0], chunk):
        out[start : start + chunk] = tensor[start : start + chunk]
    return out


SAFETENSORS_DTYPES = {"F16": np.float16, "F32": np.float32, "BF16": None}


def mapped_tensor(path: Path, name: str) -> torch.Tensor:
    """Tensor ``name`` of a safetensors file as a copy-on-write memory map: no memory until it is read."""
    with path.open("rb") as handle:
        length = int.from_bytes(handle.read(8), "little")
        entry = json.loads(handle.read(length))[name]
    dtype = SAFETENSORS_DTYPES.get(entry["dtype"])
    if dtype is None:
        return load_file(str(path))[name]  # a type numpy cannot map: read it
    start, stop = entry["data_offsets"]
    if start == stop:
        return torch.from_numpy(np.zeros(entry["shape"], dtype=dtype))
    return torch.from_numpy(
        np.memmap(path, dtype=dtype, mode="c", offset=8 + length + start, shape=tuple(entry["shape"]))
    )


class GalleryItem:
    """One gallery image: its metadata, and its encoded bytes.

    ``image`` is given as bytes or as a function that reads them (each time they
    are asked for: an item does not keep them), so that a page of results shows
    titles and tags without reading images from their shards, and reading a
    gallery's items in order holds one image at a time.
    """

    __slots__ = ("id", "title", "captions", "tags", "category", "split", "_image")

    def __init__(
        self,
        id: str,
        image: bytes | Callable[[], bytes],
        title: str = "",
        captions: list[str] | None = None,
        tags: list[str] | None = None,
        category: str = "",
        split: str = "",
    ):
        self.id, self._image, self.title, self.category, self.split = id, image, title, category, split
        self.captions = captions if captions is not None else []
        self.tags = tags if tags is not None else []

    @property
    def image(self) -> bytes:
        """The encoded image (a thumbnail in galleries written by ``write_gallery``)."""
        return self._image() if callable(self._image) else self._image

    def _fields(self) -> tuple:
        return self.id, self.image, self.title, self.captions, self.tags, self.category, self.split

    def __eq__(self, other: object) -> bool:
        return self._fields() == other._fields() if isinstance(other, GalleryItem) else NotImplemented

    __hash__ = None  # mutable, as the dataclass it replaces

    def __repr__(self) -> str:
        return (f"GalleryItem(id={self.id!r}, title={self.title!r}, captions={self.captions!r}, tags={self.tags!r}, "
                f"category={self.category!r}, split={self.split!r})")  # fmt: skip


class ColumnView(Sequence):
    """The values of an Arrow column (at ``positions``, when given) as a read-only sequence.

    Values become Python objects when read, so a million captions cost their Arrow
    bytes, not a list of a million Python strings.  Equal to any sequence of the same values.
    """

    def __init__(self, column: pa.ChunkedArray | pa.Array, positions: np.ndarray | None = None):
        self._column, self._positions = column, positions

    def __len__(self) -> int:
        return len(self._column) if self._positions is None else len(self._positions)

    def __getitem__(self, index):
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            if self._positions is None and step == 1:
                return self._column.slice(start, max(0, stop - start)).to_pylist()
            return [self[i] for i in range(start, stop, step)]
        index = range(len(self))[index]  # IndexError out of range, negatives counted from the end
        return self._column[index if self._positions is None else int(self._positions[index])].as_py()

    def take(self, indices: Sequence[int] | np.ndarray) -> list:
        """The values at ``indices`` (non-negative), read in one Arrow call."""
        rows = np.asarray(indices, dtype=np.int64)
        if len(rows) and (rows.min() < 0 or rows.max() >= len(self)):
            raise IndexError("ColumnView index out of range")
        return self._column.take(rows if self._positions is None else self._positions[rows]).to_pylist()

    def __iter__(self) -> Iterator:
        for start in range(0, len(self), VIEW_BATCH):
            if self._positions is None:
                yield from self._column.slice(start, VIEW_BATCH).to_pylist()
            else:
                yield from self._column.take(self._positions[start : start + VIEW_BATCH]).to_pylist()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sequence) or isinstance(other, (str, bytes)):
            return NotImplemented
        return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))

    __hash__ = None

    def __repr__(self) -> str:
        more = f", ... {len(self) - 3:,} more" if len(self) > 3 else ""
        return f"ColumnView({self[:3]!r}{more})"


class IdPositions(Mapping):
    """Gallery position of each id, found by a scan of the Arrow id column.

    A scan takes milliseconds at a million ids and a lookup happens per vote, not
    per query; a dict of a million ids would cost about 100 MB for the whole run.
    """

    def __init__(self, ids: pa.ChunkedArray):
        self._ids = ids

    def __getitem__(self, image_id: object) -> int:
        try:
            wanted = pa.scalar(image_id, pa.string())
        except (pa.ArrowException, TypeError, UnicodeError):
            raise KeyError(image_id) from None
        position = pc.index(self._ids, wanted).as_py()
        if position < 0:
            raise KeyError(image_id)
        return position

    def __iter__(self) -> Iterator[str]:
        return iter(ColumnView(self._ids))

    def __len__(self) -> int:
        return len(self._ids)


class GalleryItems(Sequence):
    """A gallery's items as a sequence; each is made when read, its image read only if asked for."""

    def __init__(self, gallery: Gallery):
        self._gallery = gallery

    def __len__(self) -> int:
        return len(self._gallery)

    def __getitem__(self, index):
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            if step == 1:
                return self._gallery.items_between(start, stop)
            return [self[i] for i in range(start, stop, step)]
        index = range(len(self))[index]
        return self._gallery.items_between(index, index + 1)[0]

    def __iter__(self) -> Iterator[GalleryItem]:
        for start in range(0, len(self), VIEW_BATCH):
            yield from self._gallery.items_between(start, start + VIEW_BATCH)


class ImageReader(Protocol):
    """Where a gallery's encoded images are read from, by row (``METADATA_SCHEMA``'s ``row``)."""

    def read(self, row: int) -> bytes: ...


class ItemImages:
    """The images of in-memory items (sources read with ``datasets``, galleries built in code)."""

    def __init__(self, items: Sequence[GalleryItem]):
        self._items = items

    def read(self, row: int) -> bytes:
        return self._items[row].image


def items_table(items: Sequence[GalleryItem]) -> pa.Table:
    """The metadata of in-memory items as a table of ``METADATA_SCHEMA``, rows numbered in order."""
    fields = [pa.array([getattr(item, f.name) for item in items], f.type) for f in METADATA_SCHEMA if f.name != "row"]
    return pa.Table.from_arrays([*fields, pa.array(np.arange(len(items), dtype=np.int64))], schema=METADATA_SCHEMA)


def first_of_each_value(values: pa.Array, groups: np.ndarray) -> np.ndarray:
    """Sorted positions of the first occurrence of each (group, value) pair.

    Values are numbered by a dictionary encoding (a hash table; no query engine loaded)
    and pairs told apart by ``numpy.unique``.
    """
    codes = pc.dictionary_encode(values).indices.to_numpy(zero_copy_only=False).astype(np.int64)
    keys = groups.astype(np.int64) * (int(codes.max()) + 1 if len(codes) else 1) + codes
    return np.sort(np.unique(keys, return_index=True)[1])


def pooled_captions(captions: pa.ChunkedArray) -> tuple[pa.ChunkedArray, np.ndarray | None, np.ndarray]:
    """Every image's captions in gallery order, repeats within an image dropped.

    Returns the flattened captions, the positions kept among them (None: all), and the
    row owning each kept caption.  An image's captions lie in one chunk, so repeats are
    looked for chunk by chunk.
    """
    texts = pc.list_flatten(captions)
    owners = np.asarray(pc.list_parent_indices(captions).to_numpy(), dtype=np.int64)
    kept, start = [], 0
    for chunk in captions.chunks:
        count = len(chunk.flatten())
        if len(chunk) and (pc.max(pc.list_value_length(chunk)).as_py() or 0) > 1:
            kept.append(start + first_of_each_value(chunk.flatten(), owners[start : start + count]))
        else:
            kept.append(np.arange(start, start + count))
        start += count
    positions = np.concatenate(kept) if kept else np.zeros(0, dtype=np.int64)
    if len(positions) == len(owners):
        return texts, None, owners
    return texts, positions, owners[positions]


class Gallery:
    """Gallery items in order, and the caption pool derived from their captions.

    The metadata (ids, titles, captions, tags, category, split) is one Arrow table;
    images are read through an ``ImageReader`` only when asked for (``image``,
    ``item.image``): a gallery served from parquet shards (``load_gallery``) costs
    its metadata in memory and at start-up, not its images.  ``Gallery(items)``
    builds one from in-memory items.
    """

    def __init__(self, items: Iterable[GalleryItem]):
        items = list(items)
        self._setup(items_table(items), ItemImages(items), None, None)

    @classmethod
    def from_table(
        cls,
        table: pa.Table,
        images: ImageReader,
        fingerprint: str | Callable[[Gallery], str] | None = None,
        origin: str | None = None,
    ) -> Gallery:
        """A gallery over ``table`` (``METADATA_SCHEMA``) reading images from ``images``.

        ``fingerprint``: the known fingerprint, or how to find it (e.g. from a record
        beside the shards); by default it is computed from the images when first asked for.
        ``origin``: the fingerprint of the gallery this one was cut from (``without``).
        """
        gallery = cls.__new__(cls)
        gallery._setup(table, images, fingerprint, origin)
        return gallery

    def _setup(
        self,
        table: pa.Table,
        images: ImageReader,
        fingerprint: str | Callable[[Gallery], str] | None,
        origin: str | None,
    ) -> None:
        if pc.count_distinct(table["id"]).as_py() != table.num_rows:
            raise ValueError("gallery ids must be unique")
        self._table, self._images, self._fingerprint, self._origin = table, images, fingerprint, origin
        self.items = GalleryItems(self)
        self.ids = ColumnView(table["id"])
        self.titles = ColumnView(table["title"])
        self.position = IdPositions(table["id"])
        texts, kept, owners = pooled_captions(table["captions"])
        self.caption_texts = ColumnView(texts, kept)
        self.caption_owners = ColumnView(table["id"], owners)

    def __len__(self) -> int:
        return self._table.num_rows

    @property
    def fingerprint(self) -> str:
        """Identity of the gallery's order and images (embeddings are bound to it); found once, then kept."""
        if not isinstance(self._fingerprint, str):
            self._fingerprint = self.content_fingerprint() if self._fingerprint is None else self._fingerprint(self)
        return self._fingerprint

    def content_fingerprint(self) -> str:
        """SHA-256 over every item's id, image hash, captions and tags, in order: reads every image."""
        digest = hashlib.sha256()
        for item in self.items:
            digest.update(item.id.encode("utf-8", "surrogatepass") + b"\x00")
            digest.update(hashlib.sha256(item.image).digest())
            digest.update("\x00".join(item.captions).encode("utf-8", "surrogatepass") + b"\x01")
            digest.update("\x00".join(item.tags).encode("utf-8", "surrogatepass") + b"\x02")
        return digest.hexdigest()

    @property
    def origin(self) -> str:
        """The fingerprint of the gallery this one was cut from by ``without`` (its own when it was not)."""
        return self.fingerprint if self._origin is None else self._origin

    def image_key(self, index: int) -> str:
        """A name for the image at ``index`` that changes whenever its bytes may, known without reading them.

        The origin's fingerprint covers every id with its image's hash, and ids are unique.
        """
        text = f"{self.origin}\x00{self.ids[index]}"
        return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()

    def items_between(self, start: int, stop: int) -> list[GalleryItem]:
        """Items ``start`` to ``stop`` (Python slice bounds); their images are read when asked for."""
        return self._items_of(self._table.slice(start, max(0, stop - start)).to_pydict())

    def items_at(self, indices: Sequence[int]) -> list[GalleryItem]:
        """The items at ``indices`` in that order (a page of results), made in one conversion of their rows.

        The rows are gathered as zero-copy one-row slices: ``Table.take`` on a table of many
        chunks (one per shard) costs time in proportion to the whole table (20 ms at 1M rows
        in 421 shards, against 0.2 ms for the slices).
        """
        positions = [range(len(self))[index] for index in indices]  # IndexError as a list gives it
        rows = [self._table.slice(position, 1) for position in positions] or [self._table.slice(0, 0)]
        return self._items_of(pa.concat_tables(rows).to_pydict())

    def _items_of(self, batch: dict[str, list]) -> list[GalleryItem]:
        reads = [functools.partial(self._images.read, row) for row in batch["row"]]
        return [
            GalleryItem(*fields)
            for fields in zip(batch["id"], reads, batch["title"], batch["captions"], batch["tags"], batch["category"],
                              batch["split"], strict=True)
        ]  # fmt: skip

    def image_bytes(self, index: int) -> bytes:
        """The encoded image at ``index``, read from where the gallery keeps it."""
        return self._images.read(self._table["row"][range(len(self))[index]].as_py())

    def image(self, index: int) -> Image.Image:
        return load_image(self.image_bytes(index))

    def tag_lists(self) -> list[list[str]]:
        """Every item's tags, in order (for encoding; far quicker than reading the items)."""
        return self._table["tags"].to_pylist()

    def tag_column(self) -> pa.ChunkedArray:
        """Every item's tags as the Arrow list column (flat arrays for vectorised work over all tags)."""
        return self._table["tags"]

    def id_column(self) -> pa.ChunkedArray:
        """Every item's id as the Arrow column."""
        return self._table["id"]

    def captioned_rows(self, split: str | None = None) -> list[int]:
        """Positions of the items that have captions (and are of ``split``, when given)."""
        wanted = pc.greater(pc.list_value_length(self._table["captions"]), 0)
        if split is not None:
            wanted = pc.and_(wanted, pc.equal(self._table["split"], split))
        return np.flatnonzero(wanted.to_numpy()).tolist()

    def without(self, ids: Iterable[str]) -> Gallery:
        """The gallery minus the given ids (e.g. images that cannot be read); images are not copied."""
        drop = set(ids)
        if not drop:
            return self
        kept = pc.invert(pc.is_in(self._table["id"], value_set=pa.array(sorted(drop), pa.string())))
        return Gallery.from_table(self._table.filter(kept), self._images, origin=self.origin)


def embed_tag_lists(model, gallery: Gallery, batch_size: int = 256) -> torch.Tensor:
    """(N, D) embeddings of each image's tag list (``vse.text.tags_to_text``); zeros when untagged."""
    from vse.text import tags_to_text

    out = torch.zeros(len(gallery), model.config.embed_dim)
    tag_lists = gallery.tag_lists()
    tagged = [i for i, tags in enumerate(tag_lists) if tags_to_text(tags)]
    if tagged:
        out[tagged] = model.encode_tags([tag_lists[i] for i in tagged], batch_size=batch_size)
    return out


def _string_list(value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value] if value.strip() else []
    return [str(v) for v in value if v is not None and str(v).strip()]


def _image_bytes(value) -> bytes:
    if isinstance(value, dict):
        if value.get("bytes"):
            return value["bytes"]
        return Path(value["path"]).read_bytes()
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, Image.Image):
        buffer = io.BytesIO()
        value.save(buffer, format="PNG")
        return buffer.getvalue()
    raise ValueError(f"unsupported image cell of type {type(value).__name__}")


def gallery_from_rows(rows: Iterable[dict]) -> tuple[Gallery, dict[str, int]]:
    """Gallery items from rows of any source; returns skip counts by reason."""
    skipped: collections.Counter = collections.Counter()
    items = [GalleryItem(*(row[column] for column in GALLERY_COLUMNS)) for row in clean_rows(rows, skipped)]
    return Gallery(items), dict(skipped)


def clean_rows(rows: Iterable[dict], skipped: collections.Counter) -> Iterator[dict]:
    """Rows of any source as gallery rows (``GALLERY_COLUMNS``, image bytes), one at a time.

    A row without an id is named by its position; a repeated id, a missing or an
    empty image is skipped and counted in ``skipped`` by reason.
    """
    seen = set()
    for index, row in enumerate(rows):
        image_id = str(row.get("id") if row.get("id") is not None else f"row-{index}")
        if image_id in seen:
            skipped["duplicate id"] += 1
            continue
        try:
            data = _image_bytes(row.get("image"))
        except (OSError, ValueError, KeyError, TypeError):
            skipped["missing image"] += 1
            continue
        if not data:
            skipped["empty image"] += 1
            continue
        seen.add(image_id)
        yield {"id": image_id, "image": data, "title": str(row.get("title") or ""),
               "captions": _string_list(row.get("captions", row.get("caption"))),
               "tags": _string_list(row.get("tags")), "category": str(row.get("category") or ""),
               "split": str(row.get("split") or "")}  # fmt: skip


def gallery_from_datasets(source: str | Path, state_dir: Path) -> tuple[Gallery, dict[str, int]]:
    """A ``datasets`` source served from disk: written once as gallery shards below ``state_dir``.

    The shards are named by the dataset's own fingerprint (``datasets`` changes it
    when the data does), written to a temporary folder while the rows stream through
    ``clean_rows`` and renamed into place when complete, with the skip counts beside
    them; later starts open them (the metadata columns only) without reading the
    images again.
    """
    dataset = rows_from_datasets(source)
    folder = state_dir / "datasets" / dataset._fingerprint
    counts = folder / SKIPPED_NAME
    if not counts.is_file():
        folder.parent.mkdir(parents=True, exist_ok=True)
        partial = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
        try:
            skipped: collections.Counter = collections.Counter()
            write_gallery(clean_rows(dataset, skipped), partial)
            (partial / SKIPPED_NAME).write_text(json.dumps(dict(skipped)))
            with contextlib.suppress(OSError):  # another start wrote it meanwhile: theirs is kept
                os.replace(partial, folder)
        finally:
            shutil.rmtree(partial, ignore_errors=True)
    shards = sorted(folder.glob(SHARD_PATTERN))
    skipped_counts = json.loads(counts.read_text())
    if not shards:
        return Gallery([]), skipped_counts
    gallery, _ = open_shard_gallery(shards, state_dir)
    return gallery, skipped_counts


def count_images(folder: Path, limit: int = MAX_FOLDER_ENTRIES) -> int:
    """Image files below ``folder`` (hidden entries skipped, links not followed, as imagefolder does).

    Raises ``GalleryError`` after ``limit`` files and folders: such a tree is no gallery.
    """
    entries = images = 0
    for _, folders, files in os.walk(folder):
        folders[:] = [name for name in folders if not name.startswith((".", "__"))]
        entries += len(folders) + len(files)
        if entries > limit:
            raise GalleryError(
                f"the gallery folder {folder} holds more than {limit:,} files and folders: is it the right "
                "folder? A gallery is a folder of images or of gallery-*.parquet shards (vse.serving.gallery.write_gallery)"
            )
        images += sum(Path(name).suffix.lower() in IMAGE_SUFFIXES for name in files if not name.startswith("."))
    return images


def check_gallery_source(source: str | Path) -> None:
    """Refuse, before ``datasets`` is asked, a path that cannot be a gallery."""
    path = Path(source).expanduser()
    looks_local = str(source).startswith((".", "/", "~")) or str(source).count("/") > 1
    if not path.exists():
        if looks_local:
            raise GalleryError(f"no gallery folder or file at {source}")
        return  # a Hub dataset id
    if path.is_file() and path.suffix not in DATA_FILE_SUFFIXES:
        raise GalleryError(
            f"the gallery {path} is a {path.suffix or 'suffix-less'} file; a gallery is a folder (of images or "
            f"of {SHARD_PATTERN} shards), a {', '.join(DATA_FILE_SUFFIXES)} file or a Hub dataset id"
        )
    if path.is_dir() and not is_saved_dataset(path) and count_images(path, MAX_FOLDER_ENTRIES) == 0:
        raise GalleryError(
            f"the gallery folder {path} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}) and no "
            f"gallery shards ({SHARD_PATTERN})"
        )


def is_saved_dataset(folder: Path) -> bool:
    """A folder written by ``datasets``' ``save_to_disk``."""
    return (folder / "dataset_dict.json").is_file() or (folder / "state.json").is_file()


def open_shard_gallery(shards: list[Path], state_dir: Path | None = None) -> tuple[Gallery, dict[str, int]]:
    """A gallery over parquet shards, served from disk, and the counts of rows skipped.

    Its fingerprint comes from the record beside the shards, or one in ``state_dir``,
    when the shards still are those recorded (``vse.serving.gallery_fingerprint``).
    """
    metadata, images, skipped = open_shards(shards)

    def fingerprint(gallery: Gallery) -> str:
        return shard_fingerprint(shards, gallery.content_fingerprint, state_dir)

    return Gallery.from_table(metadata, images, fingerprint), skipped


def rows_from_datasets(source: str | Path) -> Iterable[dict]:
    """Rows of a ``datasets`` source (save_to_disk folder, imagefolder, data file or Hub id), images undecoded."""
    import datasets

    path = Path(source).expanduser()
    try:
        if path.is_dir() and is_saved_dataset(path):
            ds = datasets.load_from_disk(str(path))
        elif path.is_dir():
            ds = datasets.load_dataset("imagefolder", data_dir=str(path))
        elif path.suffix in DATA_FILE_SUFFIXES:
            ds = datasets.load_dataset("parquet" if path.suffix == ".parquet" else "json", data_files=str(path))
        else:
            ds = datasets.load_dataset(str(source))
    except (ValueError, OSError) as err:
        raise GalleryError(f"the gallery {source} could not be read: {type(err).__name__}: {err}") from err
    if isinstance(ds, datasets.DatasetDict):
        ds = datasets.concatenate_datasets(list(ds.values()))
    if "image" not in ds.column_names:
        raise GalleryError(f"the gallery {source} has no image column; its columns are {ds.column_names}")
    if isinstance(ds.features.get("image"), datasets.Image):
        ds = ds.cast_column("image", datasets.Image(decode=False))
    return ds


def require_a_readable_image(gallery: Gallery, source: str | Path) -> None:
    """Raise ``GalleryError`` when none of the gallery's images decodes.

    A gallery whose images all fail to decode would otherwise start and serve
    nothing.  Usually the first image decodes, so this costs one decode.
    """
    first_error = None
    for item in gallery.items:
        try:
            load_image(item.image)
            return
        except ImageLoadError as err:
            first_error = first_error or f"{item.id}: {err}"
    raise GalleryError(
        f"none of the {len(gallery):,} images of the gallery {source} can be decoded (first: {first_error})"
    )


def load_gallery(source: str | Path, state_dir: str | Path | None = None) -> tuple[Gallery, dict[str, int]]:
    """A gallery from a folder of parquet shards (the assets format) or any ``datasets`` source.

    ``datasets`` sources: a Hub dataset id, an imagefolder, a ``save_to_disk``
    folder, or parquet/JSON-lines files; columns ``image`` and optionally ``id``,
    ``title``, ``captions``/``caption``, ``tags``.  Returns the gallery and the
    counts of rows skipped by reason.  Shards are served from disk; ``state_dir``
    (a service's own folder) is where what was learnt of their fingerprint is
    recorded, so that the next start need not hash them (``vse.serving.gallery_fingerprint``).

    Raises ``GalleryError`` (naming the folder or file) for a source that holds
    no images or shards, a folder too large to be a gallery, or a gallery none of
    whose images decodes; some unreadable images among good ones are left to
    ``vse.serving.retrieval.embed_gallery``, which skips and counts them.
    """
    path = Path(source).expanduser()
    shards = sorted(path.glob(SHARD_PATTERN)) if path.is_dir() else []
    if shards:
        gallery, skipped = open_shard_gallery(shards, Path(state_dir) if state_dir is not None else None)
    else:
        check_gallery_source(source)
        if state_dir is not None:
            gallery, skipped = gallery_from_datasets(source, Path(state_dir))
        else:
            gallery, skipped = gallery_from_rows(rows_from_datasets(source))
    if not len(gallery):
        raise GalleryError(f"the gallery {source} holds no images (rows skipped: {skipped or 'none'})")
    require_a_readable_image(gallery, source)
    return gallery, skipped
