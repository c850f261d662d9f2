"""Resumable training state and the run's records.

``<output_dir>/checkpoint/`` holds the latest state: ``model/`` (a normal model
folder), ``optimizer.pt`` (the optimiser's tensors and numbers), ``streams.pt``
(every process's random number generators and, with fp16, the loss scaler) and
``state.json`` (stage, completed epochs, the position inside an interrupted
epoch, best rsum).  The ``.pt`` files hold tensors, numbers and lists only and
are loaded with ``weights_only=True``.  A checkpoint is written to a temporary
folder and swapped in, so a crash never leaves a half-written one.

``metrics.jsonl`` gets one JSON line per record (epochs, suspicion rounds,
corrections); ``MetricsLog`` also sends their numbers to the run's experiment
trackers (``log.trackers``), if any.

Checkpoints are this module's rather than ``accelerate``'s ``save_state``: that
restores models and optimisers by the order they were prepared in, and a run
prepares a varying set (the suspicion fold models only when their weights are not
cached, stage one's module not at all when resuming in stage two).
"""

from __future__ import annotations

import json
import logging
import math
import random
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vse.model import VSEModel

log = logging.getLogger(__name__)
CHECKPOINT_DIR = "checkpoint"
STREAMS_FILE = "streams.pt"


def capture_random_state(device: torch.device) -> dict[str, Any]:
    """Every random stream a training step may draw from (dropout, a shuffled order): Python's,
    NumPy's global one, torch's on the CPU and on ``device``, as tensors, numbers and lists."""
    _, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {
        "python": [version, list(internal), gauss_next],
        "numpy": [torch.from_numpy(keys.astype(np.int64)), int(position), int(has_gauss), float(cached_gaussian)],
        "torch": torch.get_rng_state(),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_random_state(state: dict[str, Any], device: torch.device) -> None:
    """Put back what ``capture_random_state`` took, so that the next draws are the ones it would have seen."""
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    keys, position, has_gauss, cached_gaussian = state["numpy"]
    np.random.set_state(("MT19937", keys.numpy().astype(np.uint32), position, has_gauss, cached_gaussian))
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def save_checkpoint(
    output_dir: Path,
    model: VSEModel,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
    streams: dict[str, Any] | None = None,
) -> None:
    """Write the checkpoint atomically; ``streams``: random states by rank (and the loss scaler's state)."""
    final = output_dir / CHECKPOINT_DIR
    temporary = output_dir / f"{CHECKPOINT_DIR}.tmp"
    shutil.rmtree(temporary, ignore_errors=True)
    temporary.mkdir(parents=True)
    model.save_pretrained(temporary / "model")
    torch.save(optimizer.state_dict(), temporary / "optimizer.pt")
    if streams is not None:
        torch.save(streams, temporary / STREAMS_FILE)
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


def read_checkpoint_streams(output_dir: Path) -> dict[str, Any] | None:
    """The random states and scaler state of the checkpoint; None for one written before they were kept."""
    path = output_dir / CHECKPOINT_DIR / STREAMS_FILE
    return torch.load(path, map_location="cpu", weights_only=True) if path.is_file() else None


def tracker_scalars(record: dict[str, Any]) -> dict[str, float]:
    """The numbers of a record, named ``<stage>/<key>`` (and ``<stage>/<key>/<name>`` one level down),
    as trackers plot them; the wall-clock time and flags are left out."""
    stage = record.get("stage", "train")

    def is_number(value: Any) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

    scalars = {}
    for key, value in record.items():
        if key in ("time", "stage"):
            continue
        if is_number(value):
            scalars[f"{stage}/{key}"] = float(value)
        elif isinstance(value, dict):
            scalars.update({f"{stage}/{key}/{name}": float(v) for name, v in value.items() if is_number(v)})
    return scalars


class MetricsLog:
    """Records as JSON lines in ``metrics.jsonl``, always, and their numbers to the trackers.

    ``trackers(values, step)`` receives each record's ``tracker_scalars``; its step is
    the record's ``global_step`` (optimisation steps of the run so far), or the last
    one seen (``step`` at first) for records between epochs (suspicion rounds, corrections).
    """

    def __init__(
        self,
        output_dir: Path,
        enabled: bool = True,
        trackers: Callable[[dict[str, float], int], None] | None = None,
        step: int = 0,
    ):
        self.path = output_dir / "metrics.jsonl"
        self.enabled = enabled
        self.trackers = trackers
        self.step = step  # a resumed run's records continue at its checkpoint's step

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"time": time.time(), **record}
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, sort_keys=True) + "\n")
        self.step = int(record.get("global_step", self.step))
        if self.trackers is not None:
            self.trackers(tracker_scalars(record), self.step)
