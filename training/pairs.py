"""Training pairs and evaluation sets assembled from prepared sources.

A ``PairSet`` is a list of (image row, text) pairs plus where their inputs come
from: cached backbone features (frozen backbone) or pixels decoded per batch
(fine-tuned backbone), and cached text-backbone features or raw strings.

Stage one uses caption pairs, pseudo-tag pairs (one tag list per caption,
``training.pseudo_tags``) and verified web-tag pairs (web images a human
reviewed); the web term (``training.stages``) uses the corrected web-tag pairs,
one per image (its tag list) or one per tag.
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
from vse.text import normalize_tag, tags_to_text

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
class TextInputs:
    """Text inputs of a pair set or split: cached text-backbone features, or the strings.

    Which one is decided once, when a run attaches its text caches
    (``training.pipeline.attach_texts``); ``VSEModel.embed_texts`` takes either.
    """

    texts: list[str]
    store: FeatureStore | None = None
    rows: np.ndarray | None = None  # (T,) row of each text in ``store``

    def __call__(self, index: np.ndarray) -> torch.Tensor | list[str]:
        if self.store is not None:
            return torch.from_numpy(self.store.gather(self.rows[index]))
        return [self.texts[i] for i in index.tolist()]


@dataclass
class PairSet:
    """(image row, text) pairs with their input sources and per-pair weights.

    ``weights`` scale each pair's loss (the noise-aware web term sets them);
    ``fixed`` marks pairs a human confirmed, whose weight stays 1; ``injected``
    marks pairs whose tag was replaced by injected noise (known only in robustness
    experiments, for diagnostics).
    """

    name: str
    images: ImageInputs
    image_rows: np.ndarray  # (P,) rows of the image source
    texts: list[str]  # (P,)
    weights: np.ndarray | None = None  # (P,) float in [0, 1]; None: all 1
    fixed: np.ndarray | None = None  # (P,) bool
    injected: np.ndarray | None = None  # (P,) bool
    text_inputs: TextInputs | None = None

    def __post_init__(self) -> None:
        if self.text_inputs is None:
            self.text_inputs = TextInputs(self.texts)

    def __len__(self) -> int:
        return len(self.texts)

    def image_batch(self, index: np.ndarray) -> torch.Tensor:
        return self.images(self.image_rows[index])

    def text_batch(self, index: np.ndarray) -> torch.Tensor | list[str]:
        return self.text_inputs(index)

    def weight_batch(self, index: np.ndarray) -> torch.Tensor | None:
        return None if self.weights is None else torch.from_numpy(self.weights[index].astype(np.float32))

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
    skips: dict[str, int] = field(default_factory=dict)
    text_inputs: TextInputs | None = None

    def __post_init__(self) -> None:
        if self.text_inputs is None:
            self.text_inputs = TextInputs(self.texts)


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


def corrupt_tags(tag_lists: list[list[str]], probability: float, seed: int) -> tuple[list[list[str]], list[list[bool]]]:
    """Each tag replaced with ``probability`` by a random tag occurrence the image does not have.

    Replacements are drawn from all tag occurrences, so frequent tags are drawn
    more often, as wrong web tags are.  Returns the lists and, per tag, whether it
    was replaced.
    """
    if not 0.0 <= probability <= 1.0:
        raise ValueError(f"web_tag_noise must be in [0, 1], got {probability}")
    rng = np.random.default_rng(seed)
    pool = [tag for tags in tag_lists for tag in tags]
    lists, flags = [], []
    for tags in tag_lists:
        present = {normalize_tag(tag) for tag in tags}
        new_tags, new_flags = [], []
        for tag in tags:
            if pool and rng.random() < probability:
                for _ in range(32):
                    candidate = pool[int(rng.integers(len(pool)))]
                    if normalize_tag(candidate) not in present:
                        break
                else:
                    candidate = tag
                present.add(normalize_tag(candidate))
                new_tags.append(candidate)
                new_flags.append(candidate != tag)
            else:
                new_tags.append(tag)
                new_flags.append(False)
        lists.append(new_tags)
        flags.append(new_flags)
    return lists, flags


def noisy_tag_lists(
    tag_lists: list[list[str]], noise: float, kind: str, seed: int
) -> tuple[list[list[str]], list[list[bool]]]:
    """The web tag lists with injected noise (``data.web_tag_noise``) and per-tag replaced flags."""
    if noise == 0:
        return tag_lists, [[False] * len(tags) for tags in tag_lists]
    if kind == "list":
        replaced = replace_tags(tag_lists, noise, seed)
        return replaced, [[new is not old] * len(new) for new, old in zip(replaced, tag_lists, strict=True)]
    return corrupt_tags(tag_lists, noise, seed)


def corrected_tags(
    image_id: str, tags: list[str], flags: list[bool], corrections: Corrections
) -> list[tuple[str, bool, str | None]]:
    """(tag, injected, verdict) of an image's tags after the human verdicts: wrong ones removed, added ones appended."""
    out, seen = [], set()
    for tag, flag in zip(tags, flags, strict=True):
        key, verdict = normalize_tag(tag), corrections.verdict(image_id, tag)
        if key and key not in seen and verdict != "wrong":
            seen.add(key)
            out.append((tag, flag, verdict))
    for tag in corrections.apply(image_id, []):  # the tags reviewers added
        if normalize_tag(tag) not in seen:
            seen.add(normalize_tag(tag))
            out.append((tag, False, "added"))
    return out


def web_tag_pairs(
    source: PreparedSource,
    corrections: Corrections,
    *,
    unit: str = "list",
    reviewed_only: bool = False,
    noise: float = 0.0,
    noise_kind: str = "tag",
    seed: int = 0,
) -> PairSet:
    """Web images with their corrected tags: one pair per image (``unit="list"``) or per tag (``"tags"``).

    ``reviewed_only`` keeps the images a human reviewed (stage one's verified
    tags, always whole lists).  ``noise`` > 0 injects tag noise first
    (robustness experiments); the verdicts apply on top of it.
    """
    tag_lists, flags = noisy_tag_lists(source.table.texts, noise, noise_kind, seed)
    rows, texts, fixed, injected, emptied = [], [], [], [], 0
    for row in source.usable_rows().tolist():
        image_id = source.table.ids[row]
        reviewed = corrections.reviewed(image_id)
        if reviewed_only and not reviewed:
            continue
        tags = corrected_tags(image_id, tag_lists[row], flags[row], corrections)
        if not tags:
            emptied += 1
            continue
        if unit == "list" or reviewed_only:
            entries = [(tags_to_text([tag for tag, _, _ in tags]), reviewed, any(f for _, f, _ in tags))]
        else:
            entries = [(tags_to_text([tag]), verdict in ("right", "added"), flag) for tag, flag, verdict in tags]
        for text, is_fixed, is_injected in entries:
            if text:
                rows.append(row)
                texts.append(text)
                fixed.append(is_fixed)
                injected.append(is_injected)
    if emptied:
        source.skips.add("no tags left after corrections", emptied)
    name = "verified_tags" if reviewed_only else "web_tags"
    return PairSet(
        name, source.images, np.asarray(rows, dtype=np.int64), texts,
        fixed=np.asarray(fixed, dtype=bool), injected=np.asarray(injected, dtype=bool),
    )  # fmt: skip


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
