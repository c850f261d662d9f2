"""Preparing everything a training run needs: sources, model, features, pairs.

The stages of a run, each logged with its duration:
read (ids and texts of every source) -> model (vocabulary from training text
only) -> embed (cached backbone features) -> pairs (caption, pseudo-tag,
verified-tag and web-tag pairs) -> the two training stages.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from training.config import SourceConfig, TrainConfig
from training.corrections import Corrections, load_corrections
from training.features import image_store, text_store
from training.pairs import EvalSet, ImageInputs, PairSet, PixelSource, PreparedSource, TextInputs
from training.runtime import Runtime
from training.sources import SkipCounts, load_source, read_text_table, source_fingerprint
from vse.model import VSEModel
from vse.text import tags_to_text
from vse.vocab import build_vocabulary

log = logging.getLogger(__name__)


@contextmanager
def timed(name: str):
    start = time.perf_counter()
    yield
    log.info("%s took %.1fs", name, time.perf_counter() - start)


def open_source(cfg: SourceConfig, kind: str) -> PreparedSource:
    """Load a source and read its ids and texts (no image bytes yet)."""
    ds = load_source(cfg, kind=kind)
    skips = SkipCounts()
    table = read_text_table(ds, cfg, skips, kind=kind)
    if skips.total():
        log.warning("%s source %s: skipped %s", kind, cfg.path, skips.as_dict())
    return PreparedSource(cfg, ds, table, skips)


@dataclass
class Sources:
    """The run's data: clean captions, validation/test splits, web tags, corrections."""

    captions: PreparedSource | None = None
    validation: PreparedSource | None = None
    test: PreparedSource | None = None
    web: PreparedSource | None = None
    corrections: Corrections = field(default_factory=Corrections)

    def prepared(self) -> list[PreparedSource]:
        return [s for s in (self.captions, self.validation, self.test, self.web) if s is not None]

    def training_texts(self) -> list[str]:
        """Captions and tags the vocabulary may learn from: never validation or test text."""
        texts = [caption for row in self.captions.table.texts for caption in row] if self.captions else []
        if self.web is not None:
            texts += [
                tags_to_text(self.corrections.apply(i, tags))
                for i, tags in zip(self.web.table.ids, self.web.table.texts, strict=True)
            ]
        return texts

    def provenance(self) -> list[dict[str, str | None]]:
        """Which data trained and evaluated the model, for the model card."""
        roles = (
            ("captions", self.captions),
            ("validation", self.validation),
            ("test", self.test),
            ("web_tags", self.web),
        )
        return [
            {
                "id": s.config.path,
                "role": role,
                "split": s.config.split,
                "revision": s.config.revision,
                "fingerprint": source_fingerprint(s.ds, s.config),
            }  # fmt: skip
            for role, s in roles
            if s is not None
        ]


def read_sources(config: TrainConfig) -> Sources:
    data, sources = config.data, Sources()
    with timed("read"):
        if config.stage1.enabled or config.data.captions.path:
            sources.captions = open_source(data.captions, "captions")
        if data.validation.path:
            sources.validation = open_source(data.validation, "captions")
        if data.test.path:
            sources.test = open_source(data.test, "captions")
        if config.stage2.enabled or config.stage1.include_web or data.web.path:
            sources.web = open_source(data.web, "tags")
        sources.corrections = load_corrections(data.corrections)
    if len(sources.corrections):
        log.info("corrections: %d verdicts on %d images", len(sources.corrections), len(sources.corrections.by_image))
    return sources


def build_model(config: TrainConfig, sources: Sources) -> VSEModel:
    """A new model (GRU vocabulary from training text only) or the ``init_from`` one."""
    if config.init_from:
        log.info("starting from %s (its architecture replaces the model section)", config.init_from)
        return VSEModel.from_pretrained(config.init_from)
    if config.model.text_encoder == "gru":
        vocabulary = build_vocabulary(sources.training_texts(), min_frequency=config.data.min_word_frequency)
        log.info("vocabulary: %d words from training text", vocabulary.get_vocab_size())
        return VSEModel(config.model, tokenizer=vocabulary)
    return VSEModel(config.model)


def attach_images(model: VSEModel, sources: Sources, config: TrainConfig, runtime: Runtime) -> None:
    """Cached features for a frozen backbone, on-demand pixels for a fine-tuned one."""
    with timed("embed images"):
        for source in sources.prepared():
            if model.config.finetune_image:
                source.attach(ImageInputs(pixels=PixelSource(source.ds, source.config, model)))
            else:
                store = image_store(
                    model, source.ds, source.config, config.data, runtime,
                    progress=config.progress, batch_size=config.eval_batch_size,
                )  # fmt: skip
                source.attach(ImageInputs(store=store))


def attach_texts(model: VSEModel, target: PairSet | EvalSet, config: TrainConfig, runtime: Runtime) -> None:
    """Cache frozen text-backbone features of a pair set or evaluation split."""
    if isinstance(target, PairSet):
        texts, rows = target.unique_texts()
    else:
        texts, rows = target.texts, None
    store = text_store(
        model,
        texts,
        config.data,
        runtime,
        progress=config.progress,
        batch_size=config.eval_batch_size,
        name=target.name,
    )
    if store is not None:
        target.text_inputs = TextInputs(target.texts, store, rows if rows is not None else np.arange(len(texts)))
