"""The gallery format: images with their metadata, and their embeddings bound to a model.

A gallery folder holds parquet shards (``gallery-00000.parquet``, ...) readable by
``datasets.load_dataset("parquet", ...)`` with the columns

``id`` (string), ``image`` (encoded bytes: a thumbnail, letterboxed to the model's
input size), ``title``, ``captions`` (list of strings), ``tags`` (list of
strings: the raw web tags), ``category``, ``split``.

An embeddings file (``embeddings.safetensors``) stores float16 image embeddings
in gallery order and caption embeddings in caption-pool order; its metadata
records the model digest, so embeddings of another model are never used.

``load_gallery`` refuses (``vse.errors.GalleryError``, naming the path) a source
that holds no images or shards, a folder too large to be a gallery, and a
gallery none of whose images decodes, before anything is indexed.
"""

from __future__ import annotations

import collections
import hashlib
import io
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from vse.errors import GalleryError
from vse.images import ImageLoadError, load_image, pad_to_square

GALLERY_COLUMNS = ("id", "image", "title", "captions", "tags", "category", "split")
SHARD_BYTES = 8_000_000  # stays under the 10 MB a Space file may have without LFS
EMBEDDINGS_FILE = "embeddings.safetensors"
SHARD_PATTERN = "gallery-*.parquet"
# File types an image folder gallery may hold (as datasets' imagefolder reads them).
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".jfif", ".gif", ".bmp", ".webp", ".tif", ".tiff"})
# How many files and folders an image folder gallery may hold: the scan for images
# stops there, so that a mistyped path (a home folder, /etc) is refused in a
# moment rather than walked for minutes.  Larger galleries are parquet shards.
MAX_FOLDER_ENTRIES = 100_000
DATA_FILE_SUFFIXES = (".parquet", ".jsonl", ".json")


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


def write_gallery(rows: Iterable[dict], folder: str | Path, shard_bytes: int = SHARD_BYTES) -> list[Path]:
    """Write rows (dicts with GALLERY_COLUMNS) as parquet shards below ``shard_bytes`` each."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    schema = pa.schema(
        [("id", pa.string()), ("image", pa.binary()), ("title", pa.string()), ("captions", pa.list_(pa.string())),
         ("tags", pa.list_(pa.string())), ("category", pa.string()), ("split", pa.string())]
    )  # fmt: skip
    paths, batch, size = [], [], 0

    def flush() -> None:
        path = folder / f"gallery-{len(paths):05d}.parquet"
        table = pa.Table.from_pylist(batch, schema=schema)
        pq.write_table(table, path, compression="zstd")
        paths.append(path)

    for row in rows:
        missing = [c for c in GALLERY_COLUMNS if c not in row]
        if missing:
            raise ValueError(f"gallery row {row.get('id')!r} lacks {missing}")
        batch.append(row)
        size += len(row["image"]) + 200
        if size >= shard_bytes * 0.9:
            flush()
            batch, size = [], 0
    if batch:
        flush()
    return paths


@dataclass
class GalleryEmbeddings:
    """Embeddings of a gallery and its caption pool, bound to one model and one gallery."""

    images: torch.Tensor  # (N, D) float32, normalised
    captions: torch.Tensor  # (C, D) float32, normalised
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
    def load(cls, folder: str | Path, digest: str, gallery: str) -> GalleryEmbeddings | None:
        """The stored embeddings, or None when missing or made for another model or gallery."""
        path = Path(folder) / EMBEDDINGS_FILE
        if not path.is_file():
            return None
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        if metadata.get("model_digest") != digest or metadata.get("gallery") != gallery:
            return None
        tensors = load_file(str(path))
        tags = tensors["tags"].float() if "tags" in tensors else None
        dropped = json.loads(metadata.get("dropped", "[]"))
        return cls(tensors["images"].float(), tensors["captions"].float(), digest, gallery, tags, dropped)


def caption_pool(captions: Sequence[Sequence[str]], ids: Sequence[str]) -> tuple[list[str], list[str]]:
    """Flatten per-image captions into (texts, owning image ids), dropping repeats per image."""
    texts, owners = [], []
    for image_id, image_captions in zip(ids, captions, strict=True):
        for caption in dict.fromkeys(image_captions):
            texts.append(caption)
            owners.append(image_id)
    return texts, owners


@dataclass
class GalleryItem:
    id: str
    image: bytes  # encoded image (thumbnail)
    title: str = ""
    captions: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    category: str = ""
    split: str = ""


@dataclass
class Gallery:
    """Gallery items in order, and the caption pool derived from their captions."""

    items: list[GalleryItem]

    def __post_init__(self) -> None:
        ids = [item.id for item in self.items]
        if len(set(ids)) != len(ids):
            raise ValueError("gallery ids must be unique")
        self.position = {image_id: i for i, image_id in enumerate(ids)}
        self.caption_texts, self.caption_owners = caption_pool([i.captions for i in self.items], ids)

    def __len__(self) -> int:
        return len(self.items)

    @property
    def fingerprint(self) -> str:
        """Identity of the gallery's order and images (embeddings are bound to it)."""
        digest = hashlib.sha256()
        for item in self.items:
            digest.update(item.id.encode("utf-8", "surrogatepass") + b"\x00")
            digest.update(hashlib.sha256(item.image).digest())
            digest.update("\x00".join(item.captions).encode("utf-8", "surrogatepass") + b"\x01")
            digest.update("\x00".join(item.tags).encode("utf-8", "surrogatepass") + b"\x02")
        return digest.hexdigest()

    def image(self, index: int) -> Image.Image:
        return load_image(self.items[index].image)

    def without(self, ids: Iterable[str]) -> Gallery:
        """The gallery minus the given ids (e.g. images that cannot be read)."""
        drop = set(ids)
        return Gallery([item for item in self.items if item.id not in drop]) if drop else self


def embed_tag_lists(model, gallery: Gallery, batch_size: int = 256) -> torch.Tensor:
    """(N, D) embeddings of each image's tag list (``vse.text.tags_to_text``); zeros when untagged."""
    from vse.text import tags_to_text

    out = torch.zeros(len(gallery), model.config.embed_dim)
    tagged = [i for i, item in enumerate(gallery.items) if tags_to_text(item.tags)]
    if tagged:
        out[tagged] = model.encode_tags([gallery.items[i].tags for i in tagged], batch_size=batch_size)
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
    items, skipped, seen = [], collections.Counter(), set()
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
        captions = _string_list(row.get("captions", row.get("caption")))
        items.append(GalleryItem(image_id, data, str(row.get("title") or ""), captions, _string_list(row.get("tags")),
                                 str(row.get("category") or ""), str(row.get("split") or "")))  # fmt: skip
    return Gallery(items), dict(skipped)


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
                "folder? A gallery is a folder of images or of gallery-*.parquet shards (vse.gallery.write_gallery)"
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


def rows_from_shards(shards: list[Path]) -> Iterator[dict]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    for shard in shards:
        try:
            table = pq.read_table(shard)
        except (OSError, pa.ArrowException) as err:
            raise GalleryError(f"{shard} is not a readable gallery shard: {err}") from err
        yield from table.to_pylist()


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


def load_gallery(source: str | Path) -> tuple[Gallery, dict[str, int]]:
    """A gallery from a folder of parquet shards (the assets format) or any ``datasets`` source.

    ``datasets`` sources: a Hub dataset id, an imagefolder, a ``save_to_disk``
    folder, or parquet/JSON-lines files; columns ``image`` and optionally ``id``,
    ``title``, ``captions``/``caption``, ``tags``.  Returns the gallery and the
    counts of rows skipped by reason.

    Raises ``GalleryError`` (naming the folder or file) for a source that holds
    no images or shards, a folder too large to be a gallery, or a gallery none of
    whose images decodes; some unreadable images among good ones are left to
    ``vse.retrieval.embed_gallery``, which skips and counts them.
    """
    path = Path(source).expanduser()
    shards = sorted(path.glob(SHARD_PATTERN)) if path.is_dir() else []
    if not shards:
        check_gallery_source(source)
    rows = rows_from_shards(shards) if shards else rows_from_datasets(source)
    gallery, skipped = gallery_from_rows(rows)
    if not len(gallery):
        raise GalleryError(f"the gallery {source} holds no images (rows skipped: {skipped or 'none'})")
    require_a_readable_image(gallery, source)
    return gallery, skipped
