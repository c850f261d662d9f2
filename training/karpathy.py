"""Karpathy's split files (``dataset_coco.json``, ``dataset_flickr30k.json``) as a caption source.

The COCO and Flickr30K splits of Karpathy & Fei-Fei (CVPR 2015) are the ones
retrieval papers report on, VSE++ (Faghri et al., BMVC 2018) and Mithun et al.
(ACM MM 2018) included.  Each corpus comes as one JSON file::

    {"images": [{"filepath": "val2014", "filename": "COCO_val2014_000000391895.jpg",
                 "split": "test", "sentences": [{"raw": "A man ...", "tokens": [...]}, ...],
                 "imgid": 0, "cocoid": 391895}, ...],
     "dataset": "coco"}

with the images in a folder of the user's (COCO's ``train2014/`` and ``val2014/``;
Flickr30K's entries have no ``filepath``, their files lie in one folder).

A source whose ``path`` is such a file (a ``.json`` named ``dataset_*.json``, or
one that opens with ``{"images"``) reads as a dataset with the columns ``image``
(``filepath/filename``, relative to ``image_root``, which is required),
``captions`` (each image's ``raw`` sentences in the file's order, so the
protocols' "first five" are the file's first five), ``image_id`` (``cocoid``,
else the file name) and ``split``.  ``split`` selects Karpathy's split
(``train``, ``val``, ``test``, ``restval``; ``validation`` means ``val``) and
``extra_splits`` joins others after it: ``split: train, extra_splits: [restval]``
trains on COCO's train and restval images as VSE++ does; leave ``restval`` out to
train on the 82,783 ``train`` images only.

Every selected image file must exist under a local ``image_root``: a missing one
is an error that names it, since a test split that silently lost images is no
longer the benchmark.  The file is read whole (``streaming`` does not apply).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from training.config import SourceConfig
from training.sources import SourceError

SPLIT_ALIASES = {"validation": "val"}
REQUIRED_KEYS = ("filename", "split", "sentences")


def is_karpathy_file(path: str) -> bool:
    """True for a local ``.json`` file named ``dataset_*.json`` or opening with ``{"images"``."""
    local = Path(path).expanduser()
    if local.suffix.lower() != ".json" or not local.is_file():
        return False
    if local.name.startswith("dataset_"):
        return True
    with local.open("rb") as handle:
        head = b"".join(handle.read(64).split())  # whitespace dropped: {"images"... however indented
    return head.startswith(b'{"images"')


def read_karpathy_file(path: Path) -> list[dict[str, Any]]:
    """The ``images`` entries of a split file, checked; SourceError naming the file otherwise."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise SourceError(f"{path} is not a readable Karpathy split file (JSON): {err}") from err
    images = data.get("images") if isinstance(data, dict) else None
    if not isinstance(images, list):
        raise SourceError(f'{path} has no "images" list; a Karpathy split file is {{"images": [...], "dataset": ...}}')
    for position, entry in enumerate(images):
        missing = [key for key in REQUIRED_KEYS if key not in entry] if isinstance(entry, dict) else REQUIRED_KEYS
        if missing:
            raise SourceError(f"{path}: images[{position}] has no {list(missing)}")
        if not isinstance(entry["sentences"], list):
            raise SourceError(f"{path}: images[{position}] sentences is not a list")
    return images


def sentence_text(sentence: Any) -> str:
    """A sentence's ``raw`` text, else its ``tokens`` joined by spaces (the file's own caption)."""
    if isinstance(sentence, str):
        return sentence
    if not isinstance(sentence, dict):
        return ""
    raw = sentence.get("raw")
    return str(raw) if raw is not None else " ".join(str(token) for token in sentence.get("tokens") or [])


def relative_image_path(entry: dict[str, Any]) -> str:
    """``filepath/filename`` (COCO), or ``filename`` alone (Flickr30K has no filepath)."""
    folder = str(entry.get("filepath") or "").strip("/")
    return f"{folder}/{entry['filename']}" if folder else str(entry["filename"])


def select_splits(images: list[dict[str, Any]], splits: list[str], path: Path) -> list[dict[str, Any]]:
    """The entries of ``splits`` in that order (file order within each); unknown splits refused."""
    wanted = [SPLIT_ALIASES.get(split, split) for split in splits]
    present = sorted({str(entry["split"]) for entry in images})
    unknown = [split for split in wanted if split not in present]
    if unknown:
        raise SourceError(f"{path} has splits {present}, not {unknown}")
    return [entry for split in wanted for entry in images if entry["split"] == split]


def karpathy_columns(entries: list[dict[str, Any]]) -> dict[str, list]:
    """The source's columns: image (relative path), captions, image_id, split."""
    return {
        "image": [relative_image_path(entry) for entry in entries],
        "captions": [[sentence_text(s) for s in entry["sentences"]] for entry in entries],
        "image_id": [str(entry.get("cocoid", entry["filename"])) for entry in entries],
        "split": [str(entry["split"]) for entry in entries],
    }


def check_images_exist(relative_paths: list[str], image_root: Path, path: Path) -> None:
    """SourceError naming the first missing image file (and how many are missing)."""
    missing = [name for name in relative_paths if not (image_root / name).is_file()]
    if missing:
        raise SourceError(
            f"image file {image_root / missing[0]} of {path} does not exist ({len(missing):,} of "
            f"{len(relative_paths):,} images missing); set image_root to the folder that holds the "
            f"images' filepath/filename"
        )


def load_karpathy(cfg: SourceConfig):
    """The ``datasets.Dataset`` of a Karpathy split file's ``split`` and ``extra_splits``."""
    import datasets

    path = Path(cfg.path).expanduser()
    entries = select_splits(read_karpathy_file(path), [cfg.split, *cfg.extra_splits], path)
    if not cfg.image_root:
        raise SourceError(f"{path} is a Karpathy split file: set image_root to the folder holding its images")
    columns = karpathy_columns(entries)
    if "://" not in cfg.image_root:
        check_images_exist(columns["image"], Path(cfg.image_root).expanduser(), path)
    return datasets.Dataset.from_dict(columns)
