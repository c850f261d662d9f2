"""Training pairs and evaluation sets assembled from prepared sources.

A ``PairSet`` is a list of (image row, text) pairs plus where their inputs come
from: cached backbone features (frozen backbone) or pixels decoded per batch
(fine-tuned backbone), and cached text-backbone features or raw strings.

Stage one uses caption pairs, pseudo-tag pairs (one tag list per caption,
``training.pseudo_tags``) and verified web-tag pairs (web images a human
reviewed); stage two uses the (corrected) web-tag pairs.
"""

from __future__ import annotations

import collections
import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from training.cache import FeatureStore
from training.config import SourceConfig
from training.corrections import Corrections
from training.pseudo_tags import pseudo_tags
from training.sources import ImageResolver, SkipCounts, TextTable
from vse.images import ImageLoadError
from vse.model import VSEModel
from vse.text import tags_to_text

log = logging.getLogger(__name__)


class PixelSource:
    """Pixels of dataset rows decoded on demand, for end-to-end fine-tuning.

    An image that cannot be read is replaced by a blank one and counted, so that a
    bad file never stops an epoch.
    """

    def __init__(self, ds, source: SourceConfig, model: VSEModel):
        if not hasattr(ds, "__getitem__"):
            raise ValueError("fine-tuning the image backbone needs a map-style (not streamed) dataset")
        self.ds, self.column, self.model = ds, source.image_column, model
        self.resolver = ImageResolver(source.image_root)
        self.failures: collections.Counter = collections.Counter()

    def __call__(self, rows: np.ndarray) -> torch.Tensor:
        from PIL import Image

        images = []
        for row in rows.tolist():
            try:
                images.append(self.resolver.open(self.ds[row][self.column]))
            except ImageLoadError as err:
                self.failures[str(err)[:60]] += 1
                images.append(Image.new("RGB", (32, 32), (255, 255, 255)))
        return self.model.image_encoder.backbone.preprocess(images)


@dataclass
class ImageInputs:
    """Image inputs of one source: cached features or on-demand pixels."""

    store: FeatureStore | None = None
    pixels: PixelSource | None = None

    def __call__(self, rows: np.ndarray) -> torch.Tensor:
        if self.store is not None:
            return torch.from_numpy(self.store.gather(rows))
        return self.pixels(rows)

    def valid(self, num_rows: int) -> np.ndarray:
        return self.store.valid() if self.store is not None else np.ones(num_rows, dtype=bool)


@dataclass
class PreparedSource:
    """A loaded source: its dataset, ids and texts, and (once attached) its image inputs."""

    config: SourceConfig
    ds: Any
    table: TextTable
    skips: SkipCounts
    images: ImageInputs | None = None
    rows: np.ndarray | None = None  # usable rows: text present, first of its id, image readable

    def attach(self, images: ImageInputs) -> None:
        """Set the image inputs and work out (and count) which rows can be used."""
        usable = np.asarray(self.table.usable, dtype=bool)
        valid = images.valid(len(usable))
        if valid.shape != usable.shape:
            raise RuntimeError(
                f"feature cache of {self.config.path} has {valid.shape[0]} rows, the source {usable.shape[0]}"
            )
        unreadable = int((usable & ~valid).sum())
        if unreadable:
            self.skips.add("unreadable image", unreadable)
        self.images, self.rows = images, np.nonzero(usable & valid)[0]

    def usable_rows(self) -> np.ndarray:
        if self.rows is None:
            raise RuntimeError("attach image inputs before asking for usable rows")
        return self.rows


@dataclass
class PairSet:
    """(image row, text) pairs with their input sources."""

    name: str
    images: ImageInputs
    image_rows: np.ndarray  # (P,) rows of the image source
    texts: list[str]  # (P,)
    text_store: FeatureStore | None = None
    text_rows: np.ndarray | None = None  # (P,) rows of text_store

    def __len__(self) -> int:
        return len(self.texts)

    def image_inputs(self, index: np.ndarray) -> torch.Tensor:
        return self.images(self.image_rows[index])

    def text_inputs(self, index: np.ndarray) -> torch.Tensor | list[str]:
        if self.text_store is not None:
            return torch.from_numpy(self.text_store.gather(self.text_rows[index]))
        return [self.texts[i] for i in index.tolist()]

    def unique_texts(self) -> tuple[list[str], np.ndarray]:
        """Distinct texts and, per pair, its index among them (for a text feature cache)."""
        position: dict[str, int] = {}
        rows = np.array([position.setdefault(text, len(position)) for text in self.texts], dtype=np.int64)
        return list(position), rows


@dataclass
class EvalSet:
    """Images and captions of an evaluation split; owners[t] is caption t's image."""

    name: str
    images: ImageInputs
    image_rows: np.ndarray  # (N,)
    texts: list[str]  # (T,)
    owners: np.ndarray  # (T,)
    text_store: FeatureStore | None = None
    text_rows: np.ndarray | None = None
    skips: dict[str, int] = field(default_factory=dict)


def caption_pairs(source: PreparedSource, name: str = "captions") -> PairSet:
    rows, texts = [], []
    for row in source.usable_rows().tolist():
        for caption in source.table.texts[row]:
            rows.append(row)
            texts.append(caption)
    return PairSet(name, source.images, np.asarray(rows, dtype=np.int64), texts)


def pseudo_tag_pairs(source: PreparedSource) -> PairSet:
    """One pseudo-tag list per caption; captions without content words give no pair."""
    rows, texts = [], []
    for row in source.usable_rows().tolist():
        for caption in source.table.texts[row]:
            text = tags_to_text(pseudo_tags(caption))
            if text:
                rows.append(row)
                texts.append(text)
    return PairSet("pseudo_tags", source.images, np.asarray(rows, dtype=np.int64), texts)


def replace_tags(tag_lists: list[list[str]], fraction: float, seed: int) -> list[list[str]]:
    """A copy where ``fraction`` of the lists are swapped for another random list's tags."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"web_tag_noise must be in [0, 1], got {fraction}")
    rng = np.random.default_rng(seed)
    out = list(tag_lists)
    chosen = rng.choice(len(out), size=round(fraction * len(out)), replace=False) if out else []
    for index in chosen:
        donor = int(rng.integers(len(tag_lists) - 1)) if len(tag_lists) > 1 else index
        donor += donor >= index  # never the image's own list
        out[index] = tag_lists[donor] if len(tag_lists) > 1 else tag_lists[index]
    return out


def web_tag_pairs(
    source: PreparedSource, corrections: Corrections, *, reviewed_only: bool = False, noise: float = 0.0, seed: int = 0
) -> PairSet:
    """Web images with their corrected tag lists (``reviewed_only``: the verified ones).

    ``noise`` > 0 replaces that share of tag lists by other images' lists
    (robustness experiments; never applied to human-verified images).
    """
    tag_lists = source.table.texts if reviewed_only or noise == 0 else replace_tags(source.table.texts, noise, seed)
    rows, texts, emptied = [], [], 0
    for row in source.usable_rows().tolist():
        image_id = source.table.ids[row]
        if reviewed_only and not corrections.reviewed(image_id):
            continue
        text = tags_to_text(corrections.apply(image_id, tag_lists[row]))
        if text:
            rows.append(row)
            texts.append(text)
        else:
            emptied += 1
    if emptied:
        source.skips.add("no tags left after corrections", emptied)
    name = "verified_tags" if reviewed_only else "web_tags"
    return PairSet(name, source.images, np.asarray(rows, dtype=np.int64), texts)


def eval_set(source: PreparedSource, name: str) -> EvalSet:
    image_rows = source.usable_rows()
    texts, owners = [], []
    for position, row in enumerate(image_rows.tolist()):
        for caption in source.table.texts[row]:
            texts.append(caption)
            owners.append(position)
    return EvalSet(
        name, source.images, image_rows, texts, np.asarray(owners, dtype=np.int64), skips=source.skips.as_dict()
    )
