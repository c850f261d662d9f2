"""The embed stage: backbone features of a source's images and texts, cached.

``image_store`` runs the frozen image backbone over every row of a source once
(decoding in worker threads while the backbone runs) and keeps the result in a
``FeatureStore``; ``text_store`` does the same for a frozen transformer text
encoder over a list of texts.  Both are keyed by what determines their values,
so later runs and the second stage reuse them.
"""

from __future__ import annotations

import collections
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training.cache import FeatureStore, build_store, cache_key, texts_digest
from training.config import DataConfig, SourceConfig
from training.runtime import Runtime
from training.sources import ImageResolver, iter_image_values, source_fingerprint
from vse.backbones import state_fingerprint
from vse.images import PREPROCESS_VERSION, ImageLoadError
from vse.model import VSEModel

log = logging.getLogger(__name__)


class ImageBatchEncoder:
    """Decode + preprocess in threads, then one backbone pass: items -> (features, valid)."""

    def __init__(self, model: VSEModel, resolver: ImageResolver, workers: int = 2):
        self.model = model
        self.resolver = resolver
        self.pool = ThreadPoolExecutor(max_workers=max(1, workers))
        self.failures: collections.Counter = collections.Counter()

    def _prepare(self, item: Any) -> torch.Tensor | str:
        try:
            return self.model.image_encoder.backbone.preprocess([self.resolver.open(item)])[0]
        except ImageLoadError as err:
            return str(err).split(":")[0].split("(")[0].strip()

    def prepare(self, items: list[Any]) -> tuple[torch.Tensor | None, np.ndarray]:
        """Decode and preprocess a batch in the worker threads: (pixels of readable rows, valid)."""
        prepared = list(self.pool.map(self._prepare, items))
        valid = np.array([isinstance(p, torch.Tensor) for p in prepared], dtype=bool)
        for p in prepared:
            if not isinstance(p, torch.Tensor):
                self.failures[p] += 1
        pixels = torch.stack([p for p in prepared if isinstance(p, torch.Tensor)]) if valid.any() else None
        return pixels, valid

    def run(self, prepared: tuple[torch.Tensor | None, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Backbone features of a prepared batch; zeros for unreadable rows."""
        pixels, valid = prepared
        features = np.zeros((len(valid), self.model.image_encoder.feature_dim), dtype=np.float32)
        if pixels is not None:
            with torch.inference_mode():
                features[valid] = self.model.image_features(pixels).float().cpu().numpy()
        return features, valid

    def __call__(self, items: list[Any]) -> tuple[np.ndarray, np.ndarray]:
        return self.run(self.prepare(items))

    def close(self) -> None:
        self.pool.shutdown(wait=True)


def _complete_store(store: FeatureStore, rows: int, feature_dim: int, info: dict, runtime: Runtime) -> None:
    runtime.wait()
    if runtime.is_main:
        store.mark_complete(rows, feature_dim, info)
    runtime.wait()


def image_store(
    model: VSEModel, ds, source: SourceConfig, data: DataConfig, runtime: Runtime, *, progress: bool, batch_size: int
) -> FeatureStore:
    """Backbone features of every row of ``ds`` (computed unless cached)."""
    backbone = model.image_encoder.backbone
    info = {
        "source": source_fingerprint(ds, source),
        "backbone": model.config.image_backbone,
        "weights": state_fingerprint(backbone),
        "image_size": getattr(backbone, "image_size", model.config.image_size),
        "resize": model.config.image_resize,
        "preprocess_version": PREPROCESS_VERSION,
        "pooling": model.config.image_pooling,
    }
    store = FeatureStore(Path(data.cache_dir) / f"images-{cache_key(info)}", data.cache_shard_size)
    if store.is_complete():
        log.info("image features of %s: cached in %s", source.path, store.folder)
        return store
    encoder = ImageBatchEncoder(model, ImageResolver(source.image_root), data.decode_workers)
    total = len(ds) if hasattr(ds, "__len__") else None
    try:
        rows = build_store(
            store, iter_image_values(ds, source), encoder, batch_size=batch_size, rank=runtime.rank,
            world_size=runtime.world_size, total=total, progress=progress, desc=f"image features {source.split}",
        )  # fmt: skip
    finally:
        encoder.close()
    if encoder.failures:
        log.warning("unreadable images skipped in %s: %s", source.path, dict(encoder.failures))
    _complete_store(
        store, rows, encoder.model.image_encoder.feature_dim, {**info, "unreadable": dict(encoder.failures)}, runtime
    )
    return store


class TextBatchEncoder:
    """Pooled features of the frozen transformer text encoder: texts -> (features, valid)."""

    def __init__(self, model: VSEModel):
        self.model = model

    def __call__(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        with torch.inference_mode():
            features = self.model.text_features(self.model.tokenize(texts)).float().cpu().numpy()
        return features, np.ones(len(texts), dtype=bool)


def text_store(
    model: VSEModel, texts: list[str], data: DataConfig, runtime: Runtime, *, progress: bool, batch_size: int, name: str
) -> FeatureStore | None:
    """Cached text-backbone features of ``texts``; None when the text encoder is trained."""
    if model.config.text_encoder != "transformer" or model.config.finetune_text:
        return None
    info = {
        "texts": texts_digest(texts),
        "count": len(texts),
        "model": model.config.text_model,
        "weights": state_fingerprint(model.text_encoder.backbone),
        "max_tokens": model.config.max_text_tokens,
        "pooling": model.config.text_pooling,
    }
    store = FeatureStore(Path(data.cache_dir) / f"texts-{cache_key(info)}", data.cache_shard_size)
    if not store.is_complete():
        rows = build_store(
            store, texts, TextBatchEncoder(model), batch_size=batch_size, rank=runtime.rank,
            world_size=runtime.world_size, total=len(texts), progress=progress, desc=f"text features {name}",
        )  # fmt: skip
        _complete_store(store, rows, model.text_encoder.feature_dim, info, runtime)
    return store
