"""Resumable training state and per-epoch logs.

``<output_dir>/checkpoint/`` holds the latest state: ``model/`` (a normal model
folder), ``optimizer.pt`` (tensors and numbers only, loaded with
``weights_only=True``) and ``state.json`` (stage, completed epochs, best rsum).
It is written to a temporary folder and swapped in, so a crash never leaves a
half-written checkpoint.  ``metrics.jsonl`` gets one JSON line per epoch.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from vse.model import VSEModel

log = logging.getLogger(__name__)
CHECKPOINT_DIR = "checkpoint"


def save_checkpoint(output_dir: Path, model: VSEModel, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    final = output_dir / CHECKPOINT_DIR
    temporary = output_dir / f"{CHECKPOINT_DIR}.tmp"
    shutil.rmtree(temporary, ignore_errors=True)
    temporary.mkdir(parents=True)
    model.save_pretrained(temporary / "model")
    torch.save(optimizer.state_dict(), temporary / "optimizer.pt")
    (temporary / "state.json").write_text(json.dumps(state, indent=2, sort_keys=True))
    previous = output_dir / f"{CHECKPOINT_DIR}.old"
    shutil.rmtree(previous, ignore_errors=True)
    if final.exists():
        final.rename(previous)
    temporary.rename(final)
    shutil.rmtree(previous, ignore_errors=True)


def read_checkpoint_state(output_dir: Path) -> dict[str, Any] | None:
    path = output_dir / CHECKPOINT_DIR / "state.json"
    return json.loads(path.read_text()) if path.is_file() else None


def restore_checkpoint(output_dir: Path, model: VSEModel, optimizer: torch.optim.Optimizer | None) -> None:
    folder = output_dir / CHECKPOINT_DIR
    model.load_weights(folder / "model")
    if optimizer is not None:
        optimizer.load_state_dict(torch.load(folder / "optimizer.pt", map_location="cpu", weights_only=True))


class MetricsLog:
    """Per-epoch records as JSON lines, and TensorBoard scalars when available."""

    def __init__(self, output_dir: Path, enabled: bool = True, tensorboard: bool = True):
        self.path = output_dir / "metrics.jsonl"
        self.enabled = enabled
        self.writer = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(output_dir / "tensorboard"))
            except ImportError:
                log.info("TensorBoard is not installed; logging to %s only", self.path)

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"time": time.time(), **record}
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, sort_keys=True) + "\n")
        if self.writer is not None:
            step = record.get("global_epoch", 0)
            for key, value in record.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.writer.add_scalar(f"{record.get('stage', 'train')}/{key}", value, step)
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
