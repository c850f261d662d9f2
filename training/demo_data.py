"""Splitting the Openclipart corpus and writing it as ``datasets`` folders.

Splits are made over groups of images that share a caption, so that the same
title never appears in two splits; groups are ordered by a hash of their caption
(seeded), which makes the split deterministic and independent of file order.

Written with ``save_to_disk`` (Arrow, image bytes embedded):

Images are stored as PNG scaled to at most 512 pixels (alpha kept).

* ``<out>/captions``: DatasetDict ``train`` / ``validation`` / ``test`` of captioned
  images: ``id``, ``image``, ``captions`` (list), ``title``, ``category``;
* ``<out>/web``: DatasetDict ``train`` of every image outside validation and test
  with at least one tag: ``id``, ``image``, ``tags`` (the raw user tags),
  ``title``, ``category``.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from training.openclipart import ClipartItem

log = logging.getLogger(__name__)
MAX_SIDE = 512  # stored resolution: twice the model's input, enough for thumbnails


@dataclass
class Splits:
    train: list[ClipartItem]
    validation: list[ClipartItem]
    test: list[ClipartItem]
    web: list[ClipartItem]

    def counts(self) -> dict[str, int]:
        return {name: len(getattr(self, name)) for name in ("train", "validation", "test", "web")}


def _group_key(item: ClipartItem) -> str:
    return item.captions[0].lower()


def split_items(items: Iterable[ClipartItem], test_size: int, validation_size: int, seed: int = 0) -> Splits:
    """Caption-grouped, hash-ordered split; web = tagged images outside validation and test."""
    items = list(items)
    groups: dict[str, list[ClipartItem]] = {}
    for item in items:
        if item.captions:
            groups.setdefault(_group_key(item), []).append(item)
    order = sorted(groups, key=lambda key: hashlib.sha256(f"{seed}:{key}".encode()).hexdigest())
    captioned = sum(len(g) for g in groups.values())
    if captioned < test_size + validation_size + 2:
        raise ValueError(f"only {captioned} captioned images; cannot hold out {test_size} + {validation_size}")
    test, validation, train = [], [], []
    for key in order:
        target = test if len(test) < test_size else validation if len(validation) < validation_size else train
        target.extend(groups[key])
    held_out = {item.id for item in test + validation}
    web = [item for item in items if item.id not in held_out and item.tags]
    return Splits(train, validation, test, web)


def _rows(items: list, text_column: str, image_bytes: Callable[[Any], bytes]) -> dict[str, list]:
    rows: dict[str, list] = {"id": [], "image": [], text_column: [], "title": [], "category": []}
    for item in items:
        rows["id"].append(item.id)
        rows["image"].append({"bytes": image_bytes(item), "path": Path(item.id).name + ".png"})
        rows[text_column].append(item.captions if text_column == "captions" else item.tags)
        rows["title"].append(item.title)
        rows["category"].append(item.category)
    return rows


def rendered_png(path: Path, max_side: int = MAX_SIDE) -> bytes:
    """The corpus PNG scaled down to at most ``max_side`` pixels (alpha kept), as PNG bytes.

    The package is trusted local data, so the decompression-bomb limit that
    protects the app is lifted here: a few renderings exceed 64 megapixels.
    """
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode not in ("RGB", "RGBA", "L", "LA"):
                image = image.convert("RGBA")
            if max(image.size) > max_side:
                image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS, reducing_gap=3.0)
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            return buffer.getvalue()
    finally:
        Image.MAX_IMAGE_PIXELS = previous


def _features(text_column: str):
    import datasets

    return datasets.Features(
        {
            "id": datasets.Value("string"),
            "image": datasets.Image(),
            text_column: datasets.List(datasets.Value("string")),
            "title": datasets.Value("string"),
            "category": datasets.Value("string"),
        }
    )


BUILD_VERSION = 1  # bump when the stored images or columns change


def splits_digest(splits: Splits) -> str:
    """Content digest of what ``write_datasets`` would write (for idempotent rebuilds)."""
    digest = hashlib.sha256(f"v{BUILD_VERSION}:{MAX_SIDE}".encode())
    for name in ("train", "validation", "test", "web"):
        for item in getattr(splits, name):
            fields = [name, item.id, item.sha256, item.title, item.category, *item.captions, "|", *item.tags]
            digest.update("\x00".join(fields).encode("utf-8", "surrogatepass") + b"\x01")
    return digest.hexdigest()


def clipart_png(item: ClipartItem) -> bytes:
    return rendered_png(item.png)


def write_datasets(splits: Splits, out: Path, image_bytes: Callable[[Any], bytes] = clipart_png) -> dict[str, Path]:
    """Save the caption splits and the web tag set; returns their folders.

    Items are ``ClipartItem`` or any object with the same text fields and a
    ``sha256``; ``image_bytes(item)`` gives the stored picture.

    When ``out`` already holds exactly these splits (same manifest digest), nothing
    is rewritten, so dataset fingerprints and feature caches stay valid.
    """
    import datasets

    paths = {"captions": out / "captions", "web": out / "web"}
    manifest = out / "manifest.json"
    digest = splits_digest(splits)
    if (
        manifest.is_file()
        and json.loads(manifest.read_text()).get("digest") == digest
        and all(p.is_dir() for p in paths.values())
    ):
        log.info("datasets in %s are up to date", out)
        return paths

    captions = datasets.DatasetDict(
        {
            name: datasets.Dataset.from_dict(
                _rows(getattr(splits, name), "captions", image_bytes), features=_features("captions")
            )
            for name in ("train", "validation", "test")
        }
    )
    web = datasets.DatasetDict(
        {"train": datasets.Dataset.from_dict(_rows(splits.web, "tags", image_bytes), features=_features("tags"))}
    )
    captions.save_to_disk(str(paths["captions"]))
    web.save_to_disk(str(paths["web"]))
    manifest.write_text(json.dumps({"digest": digest, "counts": splits.counts()}, indent=2))
    log.info("wrote %s", splits.counts())
    return paths
