"""The training machinery every stage shares: batches, steps, epochs, evaluation, selection.

What a stage trains on is defined in ``training.stages``; this module runs it.  A
step draws a batch from each of the stage's terms (captions, pseudo tags,
verified tags, web tags, replayed captions), embeds all their images in one
forward pass and all their texts in another (one DDP forward per step), gathers
embeddings across processes, and minimises the weighted ranking loss.  An epoch
is a number of steps; after each epoch the model is evaluated on validation and
the best one of the whole run (every stage) is kept (``RunSelection``).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from training.checkpoint import (
    MetricsLog,
    capture_random_state,
    read_checkpoint_streams,
    restore_checkpoint,
    restore_random_state,
    save_checkpoint,
)
from training.config import LossConfig, OptimConfig
from training.pairs import EvalSet, PairSet
from training.runtime import Runtime, gather_with_grad
from vse.losses import LossTerm, combined_ranking_loss
from vse.metrics import retrieval_metrics
from vse.model import VSEModel

log = logging.getLogger(__name__)
BEST_DIR = "best"


class EmbeddingStep(nn.Module):
    """The trainable forward pass: inputs to normalised embeddings, plus the loss's temperature.

    The InfoNCE temperature (``logit_scale`` = log of its inverse) lives here, beside
    the model, so that DDP sees it used in the forward pass and averages its gradient.
    """

    def __init__(self, model: VSEModel, loss: LossConfig):
        super().__init__()
        self.model = model
        learned = loss.kind == "infonce" and loss.learn_temperature
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / loss.temperature)), requires_grad=learned)

    def forward(self, images, texts) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.model.embed_images(images), self.model.embed_texts(texts), self.logit_scale * 1.0


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
            self._order, self._position, self._pass = self._permutation(self._pass), 0, self._pass + 1
        batch = self._order[self._position : self._position + self.global_batch]
        self._position += self.global_batch
        return batch[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]

    def _permutation(self, number: int) -> np.ndarray:
        return np.random.default_rng([self.seed, number]).permutation(self.indices)

    def state_dict(self) -> dict[str, int]:
        """Where the stream is: passes started and the position in the current one (its order is
        recomputed from the seed, so a checkpoint stays small)."""
        return {"passes": self._pass, "position": self._position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue where ``state_dict`` was taken: the next batch is the one that stream would have drawn."""
        self._pass, self._position = state["passes"], state["position"]
        self._order = self._permutation(self._pass - 1) if self._pass else None


@dataclass
class Term:
    """One weighted loss term fed by a pair set."""

    pairs: PairSet
    stream: BatchStream
    weight: float = 1.0


def batch_stream(pairs: PairSet, batch_size: int, seed: list[int], runtime: Runtime, indices=None) -> BatchStream:
    """A stream over ``indices`` of ``pairs`` (all of them by default), seeded by a list of ints."""
    chosen = np.arange(len(pairs)) if indices is None else indices
    return BatchStream(chosen, batch_size, int(np.random.SeedSequence(seed).generate_state(1)[0]), runtime)


def _concat_texts(parts: list) -> torch.Tensor | list[str]:
    if all(isinstance(part, torch.Tensor) for part in parts):
        return torch.cat(parts)
    return [text for part in parts for text in part]


def train_steps(
    step: nn.Module,
    optimizer: torch.optim.Optimizer,
    terms: list[Term],
    num_steps: int,
    loss: LossConfig,
    hardest: bool,
    grad_clip: float,
    runtime: Runtime,
    *,
    progress: bool = True,
    desc: str = "train",
    after_step: Callable[[float], None] | None = None,
) -> dict[str, float]:
    """Run ``num_steps`` optimisation steps with the given loss; returns mean loss and timing.

    ``after_step(loss)`` runs after every optimiser step (checkpoints, stopping mid-epoch).
    """
    step.train()
    device = runtime.device
    losses, data_seconds, start = [], 0.0, time.perf_counter()
    for _ in tqdm(range(num_steps), desc=desc, disable=not progress or not runtime.is_main, leave=False):
        tick = time.perf_counter()
        picks = [term.stream.next() for term in terms]
        images = torch.cat([term.pairs.image_batch(idx) for term, idx in zip(terms, picks, strict=True)]).to(device)
        texts = _concat_texts([term.pairs.text_batch(idx) for term, idx in zip(terms, picks, strict=True)])
        if isinstance(texts, torch.Tensor):
            texts = texts.to(device)
        data_seconds += time.perf_counter() - tick
        image_emb, text_emb, logit_scale = step(images, texts)
        loss_terms, offset = [], 0
        for term, idx in zip(terms, picks, strict=True):
            size = len(idx)

            def gathered(tensor: torch.Tensor) -> torch.Tensor:
                return gather_with_grad(tensor, runtime.world_size, runtime.rank)

            weights = term.pairs.weight_batch(idx)
            loss_terms.append(
                LossTerm(
                    gathered(image_emb[offset : offset + size]),
                    gathered(text_emb[offset : offset + size]),
                    term.weight,
                    gathered(torch.as_tensor(term.pairs.image_rows[idx], device=device)),
                    None if weights is None else gathered(weights.to(device)),
                )
            )
            offset += size
        value = combined_ranking_loss(
            loss_terms, kind=loss.kind, margin=loss.margin, max_violation=hardest, logit_scale=logit_scale
        )
        optimizer.zero_grad(set_to_none=True)
        runtime.backward(value * runtime.world_size)  # DDP averages; undo it to get the global loss gradient
        if grad_clip > 0:
            runtime.clip_grad_norm([p for p in step.parameters() if p.requires_grad], grad_clip)
        optimizer.step()
        losses.append(float(value.detach()))
        if after_step is not None:
            after_step(losses[-1])
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
        image_emb = torch.cat(
            [
                model.encode_image(data.images(data.image_rows[start : start + batch_size]), batch_size=batch_size)
                for start in range(0, len(data.image_rows), batch_size)
            ]
        )
        index = np.arange(len(data.texts))
        text_emb = torch.cat(
            [
                model.encode_text(data.text_inputs(index[start : start + batch_size]), batch_size=batch_size)
                for start in range(0, len(index), batch_size)
            ]
        )
        return image_emb, text_emb
    finally:
        model.train(was_training)


def evaluate(model: VSEModel, data: EvalSet, batch_size: int = 256) -> dict[str, float]:
    """Recall@K, medr, meanr and rsum of an evaluation split."""
    if len(data.image_rows) == 0 or not data.texts:
        raise ValueError(f"the {data.name} split has no usable images with captions")
    image_emb, text_emb = embed_eval_set(model, data, batch_size)
    return retrieval_metrics(image_emb, text_emb, text_image_index=data.owners)


def learning_rate(optim: OptimConfig, epoch: int) -> float:
    """Step decay as VSE++: lr * factor ** (epoch // decay_epochs); constant when decay_epochs is 0."""
    if optim.lr_decay_epochs <= 0:
        return optim.lr
    return optim.lr * optim.lr_decay_factor ** (epoch // optim.lr_decay_epochs)


def uses_hardest_negatives(loss: LossConfig, epoch: int) -> bool:
    return loss.kind == "hinge" and loss.max_violation and epoch >= loss.warmup_epochs


@dataclass
class StagePlan:
    """What a stage is, for the runner: its settings and the terms of each epoch.

    An epoch is ``optim.steps_per_epoch`` steps, or one pass over the pairs of its
    first (main) term when that is 0.
    """

    name: str
    optim: OptimConfig
    loss: LossConfig
    terms: Callable[[int], list[Term]]  # epoch -> the terms of that epoch, main term first

    def steps(self, terms: list[Term]) -> int:
        return self.optim.steps_per_epoch or max(1, terms[0].stream.batches_per_pass())


@dataclass
class RunSelection:
    """The best validation rsum over the whole run (every stage) and where that model is saved.

    A later stage that never beats an earlier one leaves the earlier model selected.
    """

    folder: Path
    best_rsum: float = -math.inf
    best_metrics: dict[str, float] = field(default_factory=dict)
    best_stage: str | None = None

    def offer(self, model: VSEModel, metrics: dict[str, float] | None, stage: str, runtime: Runtime) -> bool:
        """Keep ``model`` when it beats the best so far (or when there is no validation split)."""
        better = metrics is None or metrics["rsum"] > self.best_rsum
        if better:
            if metrics is not None:
                self.best_rsum, self.best_metrics = metrics["rsum"], metrics
            self.best_stage = stage
            if runtime.is_main:
                model.save_pretrained(self.folder)
            runtime.wait()
        return better

    def state(self) -> dict:
        return {"best_rsum": self.best_rsum, "best_metrics": self.best_metrics, "best_stage": self.best_stage}

    def restore(self, state: dict) -> None:
        self.best_rsum = state.get("best_rsum", -math.inf)
        self.best_metrics = state.get("best_metrics", {})
        self.best_stage = state.get("best_stage")


@dataclass
class StageContext:
    """What every stage needs besides its plan."""

    model: VSEModel
    runtime: Runtime
    output_dir: Path
    validation: EvalSet | None
    metrics_log: MetricsLog
    selection: RunSelection
    eval_batch_size: int
    eval_every: int
    progress: bool
    run_state: dict  # identity of the run, written into every checkpoint (config, cache keys)
    stop_after_epochs: int = 0  # stop (as if interrupted) once the run has done this many epochs; 0: never
    epochs_done: int = 0  # epochs of the whole run done so far, every stage counted
    stop_after_steps: int = 0  # the same in optimisation steps, mid-epoch if need be; 0: never
    checkpoint_every_steps: int = 0  # also checkpoint mid-epoch every this many steps of the run; 0: never
    steps_done: int = 0  # optimisation steps of the whole run done so far, every stage counted

    def stop_reached(self) -> bool:
        return bool(
            (self.stop_after_epochs and self.epochs_done >= self.stop_after_epochs)
            or (self.stop_after_steps and self.steps_done >= self.stop_after_steps)
        )

    def checkpoint_due(self) -> bool:
        """Whether the step just done must be checkpointed (asked for, or the run stops here)."""
        every = self.checkpoint_every_steps
        return self.stop_reached() or bool(every and self.steps_done % every == 0)


class Interrupted(Exception):
    """The run stopped after ``stop_after_epochs`` epochs or ``stop_after_steps`` steps; its checkpoint resumes it."""


@dataclass
class StagePosition:
    """Where a stage is: completed epochs, and inside the next one the steps done, their
    losses and the term streams' positions (empty at an epoch boundary)."""

    epoch: int = 0
    step: int = 0
    losses: list[float] = field(default_factory=list)
    streams: list[dict[str, int]] = field(default_factory=list)

    def state(self) -> dict:
        return {"epoch": self.epoch, "step": self.step, "epoch_losses": self.losses, "streams": self.streams}

    @classmethod
    def from_state(cls, state: dict) -> StagePosition:
        """The position a checkpoint's state.json holds (one written at an epoch boundary has no step)."""
        return cls(state["epoch"], state.get("step", 0), state.get("epoch_losses", []), state.get("streams", []))


def write_checkpoint(
    ctx: StageContext, plan: StagePlan, step_module: EmbeddingStep, optimizer, position: StagePosition
) -> None:
    """Checkpoint the run at ``position``; every process takes part (their random states are gathered)."""
    runtime = ctx.runtime
    streams = {"random": runtime.gather_object(capture_random_state(runtime.device))}
    if runtime.grad_scaler is not None:
        streams["scaler"] = runtime.grad_scaler.state_dict()
    if runtime.is_main:
        state = {
            **ctx.run_state,
            "stage": plan.name,
            **position.state(),
            "steps_done": ctx.steps_done,
            "logit_scale": float(step_module.logit_scale.item()),
            **ctx.selection.state(),
        }
        save_checkpoint(ctx.output_dir, ctx.model, optimizer, state, streams)
    runtime.wait()


def resume_stage(
    ctx: StageContext, plan: StagePlan, step_module: EmbeddingStep, optimizer, resume: dict
) -> StagePosition:
    """Restore weights, optimiser, temperature, random states and loss scaler; returns where to go on."""
    runtime = ctx.runtime
    restore_checkpoint(ctx.output_dir, ctx.model, optimizer)
    step_module.logit_scale.data.fill_(resume.get("logit_scale", step_module.logit_scale.item()))
    streams = read_checkpoint_streams(ctx.output_dir)
    if streams is not None:
        saved = streams["random"]
        restore_random_state(saved[runtime.rank % len(saved)], runtime.device)
        if runtime.grad_scaler is not None and "scaler" in streams:
            runtime.grad_scaler.load_state_dict(streams["scaler"])
    position = StagePosition.from_state(resume)
    where = (
        f"at step {position.step} of epoch {position.epoch + 1}" if position.step else f"after epoch {position.epoch}"
    )
    log.info("%s: resuming %s (best rsum %.2f)", plan.name, where, ctx.selection.best_rsum)
    return position


def step_hook(
    ctx: StageContext,
    plan: StagePlan,
    step_module: EmbeddingStep,
    optimizer: torch.optim.Optimizer,
    position: StagePosition,
    terms: list[Term],
    total: int,
) -> Callable[[float], None]:
    """What follows every step of an epoch of ``total`` steps: count it, and checkpoint (and
    stop) when due inside the epoch; the epoch's end checkpoints anyway."""

    def after_step(loss: float) -> None:
        position.step += 1
        position.losses.append(loss)
        ctx.steps_done += 1
        if position.step < total and ctx.checkpoint_due():
            position.streams = [term.stream.state_dict() for term in terms]
            write_checkpoint(ctx, plan, step_module, optimizer, position)
            if ctx.stop_reached():
                raise Interrupted(
                    f"stopped after {ctx.steps_done} steps ({plan.name} epoch {position.epoch + 1}, "
                    f"step {position.step}) as asked"
                )

    return after_step


def run_stage(plan: StagePlan, ctx: StageContext, resume: dict | None = None) -> dict[str, float]:
    """Train one stage epoch by epoch; returns the best validation metrics of the run so far.

    Raises:
        Interrupted: the run reached ``stop_after_epochs`` or ``stop_after_steps`` (checkpointed).
    """
    model, runtime = ctx.model, ctx.runtime
    step_module = EmbeddingStep(model, plan.loss)
    optimizer = torch.optim.Adam([p for p in step_module.parameters() if p.requires_grad], lr=plan.optim.lr)
    step, optimizer = runtime.prepare(step_module, optimizer)
    start = StagePosition()
    if resume and resume.get("stage") == plan.name:
        start = resume_stage(ctx, plan, step_module, optimizer, resume)
    for epoch in range(start.epoch, plan.optim.epochs):
        if ctx.stop_reached():
            raise Interrupted(
                f"stopped after {ctx.epochs_done} epochs, {ctx.steps_done} steps ({plan.name} epoch {epoch + 1}) as asked"
            )
        lr = learning_rate(plan.optim, epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        hardest = uses_hardest_negatives(plan.loss, epoch)
        terms = plan.terms(epoch)
        total = plan.steps(terms)
        position = StagePosition(epoch)
        if epoch == start.epoch and start.step:
            for term, state in zip(terms, start.streams, strict=True):
                term.stream.load_state_dict(state)
            position = StagePosition(epoch, start.step, list(start.losses))

        tick = time.perf_counter()
        stats = train_steps(
            step, optimizer, terms, total - position.step, plan.loss, hardest, plan.optim.grad_clip, runtime,
            progress=ctx.progress, desc=f"{plan.name} epoch {epoch + 1}/{plan.optim.epochs}",
            after_step=step_hook(ctx, plan, step_module, optimizer, position, terms, total),
        )  # fmt: skip
        stats.update(loss=runtime.mean(float(np.mean(position.losses))), steps=total)  # the whole epoch's, if resumed
        record = {"stage": plan.name, "epoch": epoch + 1, "global_step": ctx.steps_done, "lr": lr,
                  "max_violation": hardest, **stats}  # fmt: skip
        record["pairs"] = {term.pairs.name: len(term.stream.indices) for term in terms}
        if plan.loss.kind == "infonce":
            record["temperature"] = float(1.0 / step_module.logit_scale.detach().exp().clamp(max=100.0))
        last = epoch + 1 == plan.optim.epochs
        if ctx.validation is not None and ((epoch + 1) % ctx.eval_every == 0 or last):
            metrics = evaluate(model, ctx.validation, ctx.eval_batch_size)
            record.update({f"val_{k}": v for k, v in metrics.items()})
            record["selected"] = ctx.selection.offer(model, metrics, plan.name, runtime)
        elif ctx.validation is None and last:
            ctx.selection.offer(model, None, plan.name, runtime)
        record["epoch_seconds"] = time.perf_counter() - tick
        ctx.metrics_log.write(record)
        log.info(
            "%s epoch %d: loss %.4f, val rsum %s, %.1fs", plan.name, epoch + 1, stats["loss"],
            f"{record['val_rsum']:.2f}" if "val_rsum" in record else "-", record["epoch_seconds"],
        )  # fmt: skip
        ctx.epochs_done += 1
        write_checkpoint(ctx, plan, step_module, optimizer, StagePosition(epoch + 1))
    return ctx.selection.best_metrics
