"""On-disk cache of frozen-backbone features, computed once and reused.

With a frozen backbone the expensive part of training (decoding images and
running the CNN, or running the frozen text transformer) gives the same result in
every epoch, every run and both stages.  Features are stored per (source
fingerprint, backbone and its weights, preprocessing) in a folder of ``.npy``
shards of ``shard_size`` rows, float16, memory-mapped when read:

    <cache_dir>/<kind>-<key>/meta.json
                             features-00000.npy   (rows, F) float16
                             valid-00000.npy      (rows,) bool: False = unreadable image

A shard is written to a temporary name and renamed, so an interrupted build
resumes at the first missing shard.  Under ``accelerate`` process r computes the
shards k with k % world_size == r.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

log = logging.getLogger(__name__)
META_FILE = "meta.json"


def cache_key(parts: dict[str, Any]) -> str:
    """Short stable hash of everything that determines the cached values."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]


def texts_digest(texts: Iterable[str]) -> str:
    digest = hashlib.sha256()
    for text in texts:
        digest.update(text.encode("utf-8", "surrogatepass"))
        digest.update(b"\x00")
    return digest.hexdigest()


class FeatureStore:
    """Row-aligned features in ``.npy`` shards (see the module docstring)."""

    def __init__(self, folder: str | Path, shard_size: int = 4096):
        if shard_size <= 0:
            raise ValueError("shard_size must be positive")
        self.folder = Path(folder)
        self.shard_size = shard_size
        self._maps: dict[int, np.ndarray] = {}
        self._valid: np.ndarray | None = None

    # ------------------------------------------------------------ files
    def _paths(self, shard: int) -> tuple[Path, Path]:
        return self.folder / f"features-{shard:05d}.npy", self.folder / f"valid-{shard:05d}.npy"

    def has_shard(self, shard: int) -> bool:
        return all(path.is_file() for path in self._paths(shard))

    def write_shard(self, shard: int, features: np.ndarray, valid: np.ndarray) -> None:
        if features.shape[0] != valid.shape[0]:
            raise ValueError("features and valid flags disagree in length")
        self.folder.mkdir(parents=True, exist_ok=True)
        for path, array in zip(self._paths(shard), (features.astype(np.float16), valid.astype(bool)), strict=True):
            temporary = path.with_suffix(f".tmp{os.getpid()}.npy")
            np.save(temporary, array)
            os.replace(temporary, path)

    @property
    def meta(self) -> dict[str, Any]:
        path = self.folder / META_FILE
        return json.loads(path.read_text()) if path.is_file() else {}

    def is_complete(self) -> bool:
        meta = self.meta
        return bool(meta.get("complete")) and all(self.has_shard(k) for k in range(self.num_shards(meta["num_rows"])))

    def mark_complete(self, num_rows: int, feature_dim: int, info: dict[str, Any]) -> None:
        missing = [k for k in range(self.num_shards(num_rows)) if not self.has_shard(k)]
        if missing:
            raise RuntimeError(f"feature cache {self.folder} is missing shards {missing[:5]}")
        self.folder.mkdir(parents=True, exist_ok=True)
        meta = {
            "complete": True,
            "num_rows": num_rows,
            "feature_dim": feature_dim,
            "shard_size": self.shard_size,
            **info,
        }
        temporary = self.folder / f"{META_FILE}.tmp{os.getpid()}"
        temporary.write_text(json.dumps(meta, indent=2, sort_keys=True))
        os.replace(temporary, self.folder / META_FILE)

    def num_shards(self, num_rows: int) -> int:
        return (num_rows + self.shard_size - 1) // self.shard_size

    # ------------------------------------------------------------ reading
    def __len__(self) -> int:
        return int(self.meta["num_rows"])

    @property
    def feature_dim(self) -> int:
        return int(self.meta["feature_dim"])

    def _shard(self, shard: int) -> np.ndarray:
        if shard not in self._maps:
            self._maps[shard] = np.load(self._paths(shard)[0], mmap_mode="r")
        return self._maps[shard]

    def valid(self) -> np.ndarray:
        """(N,) bool: rows whose input could be read."""
        if self._valid is None:
            self._valid = np.concatenate([np.load(self._paths(k)[1]) for k in range(self.num_shards(len(self)))])
        return self._valid

    def gather(self, rows: Sequence[int] | np.ndarray) -> np.ndarray:
        """(len(rows), F) float32 features of the given rows, in that order."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((rows.shape[0], self.feature_dim), dtype=np.float32)
        shards = rows // self.shard_size
        for shard in np.unique(shards):
            where = np.nonzero(shards == shard)[0]
            out[where] = self._shard(int(shard))[rows[where] - shard * self.shard_size]
        return out


def pipelined(batches: Sequence[Any], prepare: Callable[[Any], Any], run: Callable[[Any], Any]) -> Iterator[Any]:
    """``run(prepare(batch))`` for each batch, preparing the next batch in a thread meanwhile.

    Decoding and resizing (PIL releases the GIL) overlap with the model's forward pass.
    """
    if not batches:
        return
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(prepare, batches[0])
        for index in range(len(batches)):
            prepared = pending.result()
            if index + 1 < len(batches):
                pending = pool.submit(prepare, batches[index + 1])
            yield run(prepared)


def _shard_batches(items: Iterable[Any], shard_size: int) -> Iterator[tuple[int, list[Any]]]:
    shard, batch = 0, []
    for item in items:
        batch.append(item)
        if len(batch) == shard_size:
            yield shard, batch
            shard, batch = shard + 1, []
    if batch:
        yield shard, batch


def build_store(
    store: FeatureStore,
    items: Iterable[Any],
    encode: Callable[[list[Any]], tuple[np.ndarray, np.ndarray]],
    *,
    batch_size: int,
    rank: int = 0,
    world_size: int = 1,
    total: int | None = None,
    progress: bool = True,
    desc: str = "features",
) -> int:
    """Compute this process's missing shards; returns the number of rows seen.

    ``encode(items) -> (features (n, F), valid (n,))`` handles one batch; a row it
    cannot read gets ``valid=False`` and zero features.
    """
    start, computed, rows = time.perf_counter(), 0, 0
    bar = tqdm(total=total, desc=desc, unit="row", disable=not progress or rank != 0)
    for shard, shard_items in _shard_batches(items, store.shard_size):
        rows += len(shard_items)
        if shard % world_size != rank or store.has_shard(shard):
            bar.update(len(shard_items))
            continue
        feats, valid = [], []
        batches = [shard_items[begin : begin + batch_size] for begin in range(0, len(shard_items), batch_size)]
        # Encoders that split preparing (decoding) from running get the two overlapped.
        results = pipelined(batches, encode.prepare, encode.run) if hasattr(encode, "prepare") else map(encode, batches)
        for batch_feats, batch_valid in results:
            feats.append(batch_feats)
            valid.append(batch_valid)
            bar.update(len(batch_valid))
        store.write_shard(shard, np.concatenate(feats), np.concatenate(valid))
        computed += len(shard_items)
    bar.close()
    elapsed = time.perf_counter() - start
    log.info(
        "%s: %d rows, %d computed in %.1fs (%.1f rows/s)", desc, rows, computed, elapsed, computed / max(elapsed, 1e-9)
    )
    return rows
