"""One training epoch and one evaluation, independent of which stage runs them.

A step draws a batch from each active term (captions, pseudo tags, verified
tags, web tags, replayed captions), embeds all their images in one forward pass
and all their texts in another (one DDP forward per step), gathers embeddings
across processes, and minimises the weighted hinge ranking loss.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from training.config import OptimConfig
from training.pairs import EvalSet, PairSet
from training.runtime import Runtime, gather_with_grad
from vse.losses import LossTerm, combined_ranking_loss
from vse.metrics import retrieval_metrics
from vse.model import VSEModel


class EmbeddingStep(nn.Module):
    """The trainable forward pass: image inputs and text inputs to normalised embeddings."""

    def __init__(self, model: VSEModel):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor, texts: torch.Tensor | list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        model = self.model
        image_emb = model.embed_image_features(images) if images.ndim == 2 else model.embed_pixels(images)
        if isinstance(texts, torch.Tensor):
            text_emb = model.embed_text_features(texts)
        else:
            text_emb = model.embed_tokens(model.tokenize(texts))
        return image_emb, text_emb


class BatchStream:
    """Endless shuffled batches of pair indices; each process takes its slice.

    Every process draws the same global permutation (seeded by seed and pass
    number), so slices never overlap and the global batch is
    ``batch_size * world_size`` pairs; incomplete global batches are dropped.
    """

    def __init__(self, indices: np.ndarray, batch_size: int, seed: int, runtime: Runtime):
        self.indices = np.asarray(indices, dtype=np.int64)
        self.batch_size, self.seed = batch_size, seed
        self.rank, self.world = runtime.rank, runtime.world_size
        self.global_batch = batch_size * self.world
        if len(self.indices) < self.global_batch:
            self.global_batch = max(self.world, (len(self.indices) // self.world) * self.world)
            self.batch_size = self.global_batch // self.world
        self._pass, self._position, self._order = 0, 0, None

    def batches_per_pass(self) -> int:
        return len(self.indices) // self.global_batch if self.global_batch else 0

    def next(self) -> np.ndarray:
        if self._order is None or self._position + self.global_batch > len(self._order):
            rng = np.random.default_rng([self.seed, self._pass])
            self._order, self._position, self._pass = rng.permutation(self.indices), 0, self._pass + 1
        batch = self._order[self._position : self._position + self.global_batch]
        self._position += self.global_batch
        return batch[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]


@dataclass
class Term:
    """One weighted loss term fed by a pair set."""

    pairs: PairSet
    stream: BatchStream
    weight: float = 1.0


def _concat_texts(parts: list[torch.Tensor | list[str]]) -> torch.Tensor | list[str]:
    if all(isinstance(p, torch.Tensor) for p in parts):
        return torch.cat(parts)
    if any(isinstance(p, torch.Tensor) for p in parts):
        raise TypeError("cannot mix cached text features and raw texts in one step")
    return [text for part in parts for text in part]


def train_steps(
    step: nn.Module,
    optimizer: torch.optim.Optimizer,
    terms: list[Term],
    num_steps: int,
    optim: OptimConfig,
    max_violation: bool,
    runtime: Runtime,
    *,
    progress: bool = True,
    desc: str = "train",
) -> dict[str, float]:
    """Run ``num_steps`` optimisation steps; returns mean loss and timing."""
    step.train()
    device = runtime.device
    losses, data_seconds, start = [], 0.0, time.perf_counter()
    for _ in tqdm(range(num_steps), desc=desc, disable=not progress or not runtime.is_main, leave=False):
        tick = time.perf_counter()
        picks = [term.stream.next() for term in terms]
        images = torch.cat([term.pairs.image_inputs(idx) for term, idx in zip(terms, picks, strict=True)]).to(device)
        texts = _concat_texts([term.pairs.text_inputs(idx) for term, idx in zip(terms, picks, strict=True)])
        if isinstance(texts, torch.Tensor):
            texts = texts.to(device)
        data_seconds += time.perf_counter() - tick
        image_emb, text_emb = step(images, texts)
        loss_terms, offset = [], 0
        for term, idx in zip(terms, picks, strict=True):
            size = len(idx)
            ids = torch.as_tensor(term.pairs.image_rows[idx], device=device)
            loss_terms.append(
                LossTerm(
                    gather_with_grad(image_emb[offset : offset + size], runtime.world_size, runtime.rank),
                    gather_with_grad(text_emb[offset : offset + size], runtime.world_size, runtime.rank),
                    term.weight,
                    gather_with_grad(ids, runtime.world_size, runtime.rank),
                )
            )
            offset += size
        loss = combined_ranking_loss(loss_terms, margin=optim.margin, max_violation=max_violation)
        optimizer.zero_grad(set_to_none=True)
        runtime.backward(loss * runtime.world_size)  # DDP averages; undo it to get the global loss gradient
        if optim.grad_clip > 0:
            runtime.clip_grad_norm([p for p in step.parameters() if p.requires_grad], optim.grad_clip)
        optimizer.step()
        losses.append(float(loss.detach()))
    seconds = time.perf_counter() - start
    return {
        "loss": runtime.mean(float(np.mean(losses))) if losses else float("nan"),
        "steps": num_steps,
        "seconds": seconds,
        "data_share": data_seconds / max(seconds, 1e-9),
    }


def embed_eval_set(model: VSEModel, data: EvalSet, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, D) image and (T, D) caption embeddings of an evaluation split."""
    was_training = model.training
    model.eval()
    try:
        image_chunks = [
            model.encode_image(data.images(data.image_rows[start : start + batch_size]), batch_size=batch_size)
            for start in range(0, len(data.image_rows), batch_size)
        ]
        if data.text_store is not None:
            with torch.inference_mode():
                text_emb = torch.cat(
                    [
                        model.embed_text_features(
                            torch.from_numpy(data.text_store.gather(data.text_rows[s : s + batch_size]))
                        ).cpu()
                        for s in range(0, len(data.texts), batch_size)
                    ]
                )
        else:
            text_emb = model.encode_text(data.texts, batch_size=batch_size)
        return torch.cat(image_chunks), text_emb
    finally:
        model.train(was_training)


def evaluate(model: VSEModel, data: EvalSet, batch_size: int = 256) -> dict[str, float]:
    """Recall@K, medr, meanr and rsum of an evaluation split."""
    if len(data.image_rows) == 0 or not data.texts:
        raise ValueError(f"the {data.name} split has no usable images with captions")
    image_emb, text_emb = embed_eval_set(model, data, batch_size)
    return retrieval_metrics(image_emb, text_emb, text_image_index=data.owners)
