"""Reading caption and web-tag data through ``datasets``.

A source is any ``datasets`` dataset with an image column and a text column: a
Hub dataset id, a local ``imagefolder`` (images plus ``metadata.jsonl`` with
``file_name`` and ``captions``/``caption``/``tags``), a folder written by
``save_to_disk``, data files (parquet, JSON lines, CSV), or Karpathy's split
file of COCO or Flickr30K (``dataset_coco.json``, read by ``training.karpathy``).
Images may be an ``Image`` feature, or paths/URLs, relative ones resolved
against ``image_root``.

Rows are read twice, cheaply: once for ids and texts only (no image bytes), and
once for images when features are computed; both passes see the same order.
Bad rows are skipped and counted, never fatal.
"""

from __future__ import annotations

import collections
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from PIL import Image

from training.config import SourceConfig
from vse.images import ImageLoadError, load_image

DATA_FILE_BUILDERS = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".csv": "csv", ".arrow": "arrow"}
MAX_REMOTE_IMAGE_BYTES = 50_000_000


class SourceError(ValueError):
    """A data source cannot be used as configured; the message says how to fix it."""


@dataclass
class SkipCounts:
    """How many rows were skipped, by reason; logged after each pass."""

    counts: collections.Counter = field(default_factory=collections.Counter)

    def add(self, reason: str, n: int = 1) -> None:
        self.counts[reason] += n

    def total(self) -> int:
        return sum(self.counts.values())

    def as_dict(self) -> dict[str, int]:
        return dict(sorted(self.counts.items()))


@dataclass
class TextTable:
    """Ids and texts of a source, one entry per dataset row (row order kept)."""

    ids: list[str]
    texts: list[list[str]]  # captions or tags of each row; empty when unusable
    usable: list[bool]  # has text and is the first row with its id


def _is_url(value: str) -> bool:
    return "://" in value


def _data_builder(path: str) -> str | None:
    suffix = PurePosixPath(path.split("*")[0] if "*" in path else path).suffix.lower()
    return DATA_FILE_BUILDERS.get(suffix)


def _load_split(cfg: SourceConfig, split: str):
    import datasets

    local = Path(cfg.path).expanduser()
    if local.is_dir() and ((local / "dataset_dict.json").is_file() or (local / "state.json").is_file()):
        loaded = datasets.load_from_disk(str(local))
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise SourceError(f"{cfg.path} has splits {list(loaded)}, not {split!r}")
            return loaded[split]
        return loaded
    if local.is_dir():
        return datasets.load_dataset("imagefolder", data_dir=str(local), split=split, streaming=cfg.streaming)
    builder = _data_builder(cfg.path)
    if builder is not None:
        return datasets.load_dataset(builder, data_files=cfg.path, split="train", streaming=cfg.streaming)
    return datasets.load_dataset(cfg.path, split=split, revision=cfg.revision, streaming=cfg.streaming)


def _load_splits(cfg: SourceConfig, kind: str):
    """``split`` and ``extra_splits`` of a ``datasets`` source, concatenated."""
    import datasets

    try:
        parts = [_load_split(cfg, split) for split in [cfg.split, *cfg.extra_splits]]
    except (FileNotFoundError, ValueError) as err:
        if isinstance(err, SourceError):
            raise
        raise SourceError(f"cannot load {kind} source {cfg.path!r} split {cfg.split!r}: {err}") from err
    return parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)


def _column_names(ds) -> list[str]:
    names = ds.column_names
    if names is None:  # a streamed dataset without declared features
        names = list(next(iter(ds)).keys())
    return list(names)


def load_source(cfg: SourceConfig, *, kind: str = "captions"):
    """The dataset a source config names: splits joined, filtered, limited, checked.

    Raises:
        SourceError: nothing configured, unknown split, or a missing column.
    """
    import datasets

    from training.karpathy import is_karpathy_file, load_karpathy  # it imports this module

    if not cfg.path:
        raise SourceError(f"no {kind} source configured (set path)")
    ds = load_karpathy(cfg) if is_karpathy_file(cfg.path) else _load_splits(cfg, kind)
    columns = _column_names(ds)
    needed = [cfg.image_column, cfg.text_column, *([cfg.id_column] if cfg.id_column else []), *cfg.where]
    missing = [c for c in needed if c not in columns]
    if missing:
        raise SourceError(f"{kind} source {cfg.path!r} has no column {missing}; its columns are {columns}")
    if cfg.where:
        wanted = {key: str(value) for key, value in cfg.where.items()}
        ds = ds.filter(lambda *values: all(str(v) == w for v, w in zip(values, wanted.values(), strict=True)),
                       input_columns=list(wanted))  # fmt: skip
    if cfg.limit is not None:
        ds = (
            ds.take(cfg.limit)
            if isinstance(ds, datasets.IterableDataset)
            else ds.select(range(min(cfg.limit, len(ds))))
        )
    features = getattr(ds, "features", None) or {}
    if isinstance(features.get(cfg.image_column), datasets.Image):
        ds = ds.cast_column(cfg.image_column, datasets.Image(decode=False))
    return ds


def source_fingerprint(ds, cfg: SourceConfig) -> str:
    """Identity of a source's rows: ``datasets``' fingerprint, or the config when streamed."""
    fingerprint = getattr(ds, "_fingerprint", None)
    if fingerprint:
        return f"{fingerprint}:{cfg.image_root or ''}"
    parts = [cfg.path, cfg.split, *cfg.extra_splits, str(sorted(cfg.where.items())), str(cfg.revision), str(cfg.limit)]
    return "stream:" + "|".join(parts) + f":{cfg.image_root or ''}"


def normalize_texts(value: Any) -> list[str]:
    """A caption/tag cell as a list of non-empty stripped strings."""
    if value is None:
        return []
    items = [value] if isinstance(value, str) else list(value) if isinstance(value, (list, tuple)) else [value]
    return [str(item).strip() for item in items if item is not None and str(item).strip()]


def _image_id(cfg: SourceConfig, row: dict[str, Any], index: int, base: Path | None) -> str:
    if cfg.id_column:
        return str(row[cfg.id_column])
    value = row.get(cfg.image_column)
    path = value.get("path") if isinstance(value, dict) else value if isinstance(value, str) else None
    if path:
        if base is not None and not _is_url(path):
            try:
                return Path(path).resolve().relative_to(base).as_posix()
            except ValueError:
                pass
        return str(path)
    return f"row-{index}"


def read_text_table(ds, cfg: SourceConfig, skips: SkipCounts, *, kind: str = "captions") -> TextTable:
    """Ids and texts of every row, without touching image bytes."""
    columns = [cfg.text_column, *([cfg.id_column] if cfg.id_column else [])]
    path_only = not cfg.id_column
    if path_only:
        columns.append(cfg.image_column)
    rows = ds.select_columns(list(dict.fromkeys(columns)))
    base = Path(cfg.path).resolve() if Path(cfg.path).is_dir() else None
    ids, texts, usable, seen = [], [], [], set()
    for index, row in enumerate(rows):
        image_id = _image_id(cfg, row, index, base)
        row_texts = normalize_texts(row.get(cfg.text_column))
        ok = True
        if not row_texts:
            skips.add(f"empty {kind}")
            ok = False
        elif image_id in seen:
            skips.add("duplicate image id")
            ok = False
        seen.add(image_id)
        ids.append(image_id)
        texts.append(row_texts if ok else [])
        usable.append(ok)
    return TextTable(ids, texts, usable)


def iter_image_values(ds, cfg: SourceConfig) -> Iterator[Any]:
    """The image cell of every row, in row order (bytes/path dicts, strings or PIL)."""
    for row in ds.select_columns([cfg.image_column]):
        yield row[cfg.image_column]


class ImageResolver:
    """Opens image cells; relative paths/URLs resolve against ``image_root`` and may not escape it."""

    def __init__(self, image_root: str | None = None):
        self.root = image_root
        self.local_root = Path(image_root).expanduser().resolve() if image_root and not _is_url(image_root) else None

    def open(self, value: Any) -> Image.Image:
        """An RGB image, or ``ImageLoadError`` saying why not."""
        if value is None:
            raise ImageLoadError("the row has no image")
        if isinstance(value, Image.Image):
            return load_image(value)
        if isinstance(value, dict):
            if value.get("bytes"):
                return load_image(value["bytes"])
            value = value.get("path")
            if not value:
                raise ImageLoadError("the image cell has neither bytes nor a path")
        if isinstance(value, (bytes, bytearray)):
            return load_image(bytes(value))
        return load_image(self._read_path(str(value)))

    def _read_path(self, path: str) -> bytes | Path:
        if _is_url(path):
            return _read_url(path)
        if self.root and _is_url(self.root):
            if ".." in PurePosixPath(path).parts:
                raise ImageLoadError(f"the image path {path!r} leaves the image root")
            return _read_url(self.root.rstrip("/") + "/" + path.lstrip("/"))
        if self.local_root is None:
            return Path(path)
        full = (self.local_root / path).resolve()
        if not full.is_relative_to(self.local_root):
            raise ImageLoadError(f"the image path {path!r} leaves the image root")
        return full


def _read_url(url: str) -> bytes:
    import fsspec

    try:
        with fsspec.open(url, "rb") as handle:
            data = handle.read(MAX_REMOTE_IMAGE_BYTES + 1)
    except (OSError, ValueError) as err:
        raise ImageLoadError(f"cannot fetch {url}: {err}") from err
    if len(data) > MAX_REMOTE_IMAGE_BYTES:
        raise ImageLoadError(f"{url} is larger than {MAX_REMOTE_IMAGE_BYTES:,} bytes")
    return data
