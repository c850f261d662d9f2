"""Processes and devices: one place that knows about ``accelerate``.

Single process on a laptop CPU, several CPU processes (gloo) or GPUs and nodes
(DDP) under ``accelerate launch`` or ``torchrun``: the training code asks this
module for its rank, its device and the global batch, and stays the same.

Negatives are gathered across processes so that the hinge loss sees the global
batch, as if one process had it all: every process gathers all embeddings, puts
its own (with their gradients) in its slot, and computes the loss over the
global batch.  DDP averages gradients over processes, so the loss is scaled by
the number of processes to give exactly the gradient of the global loss.

Mixed precision (``mixed_precision: bf16|fp16``) and experiment trackers
(``log.trackers``) are accelerate's too; what this machine cannot do is refused
before anything runs (``check_setup``).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from training.config import TRACKER_PACKAGES


class SetupError(ValueError):
    """The config asks for something this machine lacks (a GPU, a tracker's package); the message says what."""


def check_setup(mixed_precision: str, trackers: Sequence[str], cuda: bool) -> None:
    """Refuse at start what would otherwise fail hours later or quietly do less.

    Raises:
        SetupError: fp16 without CUDA, bf16 on a GPU without bfloat16, or a tracker whose package is missing.
    """
    if mixed_precision == "fp16" and not cuda:
        raise SetupError("mixed_precision fp16 needs a CUDA GPU and none is visible; use bf16 or no on this machine")
    if mixed_precision == "bf16" and cuda and not torch.cuda.is_bf16_supported():
        raise SetupError("mixed_precision bf16: this GPU has no bfloat16 support; use fp16 or no")
    for name in trackers:
        if importlib.util.find_spec(name) is None:
            raise SetupError(f"log.trackers: {name} is not installed (pip install {TRACKER_PACKAGES[name]})")


@dataclass
class Runtime:
    """Rank, device and collective operations of the current process."""

    accelerator: object | None = None

    @classmethod
    def create(
        cls,
        seed: int | None = None,
        *,
        mixed_precision: str = "no",
        trackers: Sequence[str] = (),
        logging_dir: Path | None = None,
    ) -> Runtime:
        """The process's runtime; trackers write under ``logging_dir`` (those that write files).

        Raises:
            SetupError: see ``check_setup``.
        """
        cuda = torch.cuda.is_available()
        check_setup(mixed_precision, trackers, cuda)
        from accelerate import Accelerator
        from accelerate.utils import set_seed

        accelerator = Accelerator(
            cpu=not cuda,
            mixed_precision=mixed_precision,
            log_with=list(trackers) or None,
            project_dir=str(logging_dir) if logging_dir is not None else None,
        )
        if seed is not None:
            set_seed(seed)
        return cls(accelerator)

    @property
    def rank(self) -> int:
        return self.accelerator.process_index if self.accelerator else 0

    @property
    def world_size(self) -> int:
        return self.accelerator.num_processes if self.accelerator else 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def device(self) -> torch.device:
        return self.accelerator.device if self.accelerator else torch.device("cpu")

    def wait(self) -> None:
        if self.accelerator is not None:
            self.accelerator.wait_for_everyone()

    def prepare(self, *objects):
        if self.accelerator is None:
            return objects if len(objects) > 1 else objects[0]
        return self.accelerator.prepare(*objects)

    def backward(self, loss: torch.Tensor) -> None:
        if self.accelerator is None:
            loss.backward()
        else:
            self.accelerator.backward(loss)

    def clip_grad_norm(self, parameters, max_norm: float) -> float:
        if self.accelerator is None:
            return float(torch.nn.utils.clip_grad_norm_(parameters, max_norm))
        return float(self.accelerator.clip_grad_norm_(parameters, max_norm))

    @property
    def grad_scaler(self) -> torch.amp.GradScaler | None:
        """fp16's loss scaler, whose state a checkpoint must keep; None without fp16."""
        return getattr(self.accelerator, "scaler", None)

    @property
    def has_trackers(self) -> bool:
        return bool(self.accelerator is not None and self.accelerator.log_with)

    def start_trackers(self, project: str, hyperparameters: dict[str, Any]) -> None:
        if self.has_trackers:
            self.accelerator.init_trackers(project, config=hyperparameters)

    def log_to_trackers(self, values: dict[str, float], step: int) -> None:
        if self.has_trackers:
            self.accelerator.log(values, step=step)

    def finish_trackers(self) -> None:
        """Close the trackers of this run (not ``end_training``: that also ends the process group,
        which a caller training several runs in one process still needs)."""
        if self.has_trackers:
            for tracker in self.accelerator.trackers:
                tracker.finish()

    def gather_object(self, value: Any) -> list[Any]:
        """``value`` of every process, by rank (picklable values)."""
        if self.world_size == 1:
            return [value]
        gathered = [None] * self.world_size
        dist.all_gather_object(gathered, value)
        return gathered

    def mean(self, value: float) -> float:
        """Mean of a number over processes (for logging)."""
        if self.world_size == 1:
            return value
        tensor = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        return float(tensor.item() / self.world_size)


def gather_with_grad(tensor: torch.Tensor, world_size: int, rank: int) -> torch.Tensor:
    """Concatenate ``tensor`` from all processes; only the local slice carries gradient.

    Every process must pass a tensor of the same shape (the training loop drops
    the last incomplete global batch so that this holds).
    """
    if world_size == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(world_size)]
    dist.all_gather(parts, tensor.detach().contiguous())
    parts[rank] = tensor
    return torch.cat(parts)
