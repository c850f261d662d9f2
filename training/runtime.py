"""Processes and devices: one place that knows about ``accelerate``.

Single process on a laptop CPU, several CPU processes (gloo) or GPUs and nodes
(DDP) under ``accelerate launch`` or ``torchrun``: the training code asks this
module for its rank, its device and the global batch, and stays the same.

Negatives are gathered across processes so that the hinge loss sees the global
batch, as if one process had it all: every process gathers all embeddings, puts
its own (with their gradients) in its slot, and computes the loss over the
global batch.  DDP averages gradients over processes, so the loss is scaled by
the number of processes to give exactly the gradient of the global loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class Runtime:
    """Rank, device and collective operations of the current process."""

    accelerator: object | None = None

    @classmethod
    def create(cls, seed: int | None = None) -> Runtime:
        from accelerate import Accelerator
        from accelerate.utils import set_seed

        accelerator = Accelerator(cpu=not torch.cuda.is_available())
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
