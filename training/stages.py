"""Running one stage: epochs, learning-rate decay, hard-negative warm-up, model selection.

Both stages of Mithun et al. (ACM MM 2018) share this loop; they differ only in
their loss terms (``training.train`` builds them) and optimiser settings.  The
model with the best validation rsum is kept (``<output_dir>/<stage>/``) and
restored at the end of the stage.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from training.checkpoint import MetricsLog, restore_checkpoint, save_checkpoint
from training.config import OptimConfig
from training.loop import EmbeddingStep, Term, evaluate, train_steps
from training.pairs import EvalSet
from training.runtime import Runtime
from vse.model import VSEModel

log = logging.getLogger(__name__)


@dataclass
class StagePlan:
    """What a stage trains on: ``terms(epoch) -> (terms, steps)``."""

    name: str
    optim: OptimConfig
    terms: Callable[[int], tuple[list[Term], int]]


def learning_rate(optim: OptimConfig, epoch: int) -> float:
    """Step decay as VSE++: lr * factor ** (epoch // decay_epochs)."""
    return optim.lr * optim.lr_decay_factor ** (epoch // max(1, optim.lr_decay_epochs))


def uses_hardest_negatives(optim: OptimConfig, epoch: int) -> bool:
    return optim.max_violation and epoch >= optim.warmup_epochs


@dataclass
class StageContext:
    """What every stage needs besides its plan."""

    model: VSEModel
    runtime: Runtime
    output_dir: Path
    validation: EvalSet | None
    metrics_log: MetricsLog
    eval_batch_size: int
    eval_every: int
    progress: bool


def _save_best(ctx: StageContext, name: str) -> None:
    if ctx.runtime.is_main:
        ctx.model.save_pretrained(ctx.output_dir / name)
    ctx.runtime.wait()


def run_stage(plan: StagePlan, ctx: StageContext, resume: dict | None = None) -> dict[str, float]:
    """Train one stage; returns the validation metrics of the selected model."""
    model, runtime = ctx.model, ctx.runtime
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(trainable, lr=plan.optim.lr)
    step, optimizer = runtime.prepare(EmbeddingStep(model), optimizer)
    start_epoch, best_rsum, best_metrics = 0, -math.inf, {}
    if resume and resume.get("stage") == plan.name:
        restore_checkpoint(ctx.output_dir, model, optimizer)
        start_epoch, best_rsum = resume["epoch"], resume.get("best_rsum", -math.inf)
        best_metrics = resume.get("best_metrics", {})
        log.info("%s: resuming after epoch %d (best rsum %.2f)", plan.name, start_epoch, best_rsum)
    for epoch in range(start_epoch, plan.optim.epochs):
        lr = learning_rate(plan.optim, epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        hardest = uses_hardest_negatives(plan.optim, epoch)
        terms, steps = plan.terms(epoch)
        tick = time.perf_counter()
        stats = train_steps(
            step, optimizer, terms, steps, plan.optim, hardest, runtime,
            progress=ctx.progress, desc=f"{plan.name} epoch {epoch + 1}/{plan.optim.epochs}",
        )  # fmt: skip
        record = {"stage": plan.name, "epoch": epoch + 1, "lr": lr, "max_violation": hardest, **stats}
        record["pairs"] = {term.pairs.name: len(term.stream.indices) for term in terms}
        last = epoch + 1 == plan.optim.epochs
        if ctx.validation is not None and ((epoch + 1) % ctx.eval_every == 0 or last):
            metrics = evaluate(model, ctx.validation, ctx.eval_batch_size)
            record.update({f"val_{k}": v for k, v in metrics.items()})
            if metrics["rsum"] > best_rsum:
                best_rsum, best_metrics = metrics["rsum"], metrics
                _save_best(ctx, plan.name)
        elif ctx.validation is None and last:
            _save_best(ctx, plan.name)
        record["epoch_seconds"] = time.perf_counter() - tick
        ctx.metrics_log.write(record)
        log.info(
            "%s epoch %d: loss %.4f, val rsum %s, %.1fs", plan.name, epoch + 1, stats["loss"],
            f"{record['val_rsum']:.2f}" if "val_rsum" in record else "-", record["epoch_seconds"],
        )  # fmt: skip
        if runtime.is_main:
            state = {"stage": plan.name, "epoch": epoch + 1, "best_rsum": best_rsum, "best_metrics": best_metrics}
            save_checkpoint(ctx.output_dir, model, optimizer, state)
        runtime.wait()
    best_folder = ctx.output_dir / plan.name
    if (best_folder / "model.safetensors").is_file():
        model.load_weights(best_folder)
    return best_metrics
