"""Train a webly supervised joint embedding: stage one, stage two, or both.

    python -m training.train --config configs/offline_default.yaml [--key=value ...]

What the stages and the web term are is defined in ``training.stages``; this
module prepares the data, runs the stages and saves the model with the best
validation rsum of the whole run, with its validation and test metrics, to
``<output_dir>/model``.  A run resumes from ``<output_dir>/checkpoint`` when its
config is the checkpoint's; ``--resume=false`` clears the folder's earlier state.

Multi-process: ``accelerate launch -m training.train ...`` or
``torchrun --nproc_per_node N -m training.train ...``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

from training.cache import cache_key, texts_digest
from training.checkpoint import CHECKPOINT_DIR, MetricsLog, read_checkpoint_state
from training.config import RUNTIME_KEYS, TrainConfig
from training.configuration import CommandLine, run_command
from training.corrections import applied_counts
from training.curriculum import easy_to_hard, pair_agreement
from training.loop import BEST_DIR, Interrupted, RunSelection, StageContext, evaluate, run_stage
from training.pairs import PairSet, caption_pairs, eval_set, pseudo_tag_pairs, web_tag_pairs
from training.pipeline import Sources, attach_images, attach_texts, build_model, read_sources, timed
from training.runtime import Runtime, SetupError
from training.sources import SourceError
from training.stages import TrainingPairs, stage_one, stage_two, uses_web
from training.suspicion import noise_aware_weights
from vse.cli import USER_ERRORS
from vse.model import VSEModel
from vse.suspicion import SuspicionTable

log = logging.getLogger("training")
LOGS_DIR = "logs"  # the trackers' files (TensorBoard: logs/<log.project>/)
RUN_FILES = (CHECKPOINT_DIR, f"{CHECKPOINT_DIR}.tmp", f"{CHECKPOINT_DIR}.old", BEST_DIR, "model", "stage1", "stage2",
             "metrics.jsonl", LOGS_DIR, "tensorboard", "replicas.json", "curriculum_order.npy")  # fmt: skip


class ResumeError(ValueError):
    """A checkpoint cannot be resumed with this config; the message says what differs."""


# Refused input of a training run, reported as one line (vse.cli.run_cli).
CLI_ERRORS = (*USER_ERRORS, SourceError, ResumeError, SetupError)


def build_pairs(model: VSEModel, sources: Sources, config: TrainConfig, runtime: Runtime) -> TrainingPairs:
    """Every pair set of the run, with cached text features attached."""
    pairs = TrainingPairs()
    if sources.captions is not None:
        pairs.captions = caption_pairs(sources.captions)
        if config.stage1.pseudo_tags:
            pairs.pseudo_tags = pseudo_tag_pairs(sources.captions)
    if sources.web is not None:
        data = config.data
        pairs.web = web_tag_pairs(
            sources.web, sources.corrections, unit=config.web.unit, noise=data.web_tag_noise,
            noise_kind=data.web_tag_noise_kind, seed=config.seed,
        )  # fmt: skip
        if config.stage1.verified_tags and len(sources.corrections):
            pairs.verified_tags = web_tag_pairs(sources.web, sources.corrections, reviewed_only=True)
    for name, pair_set in pairs.named().items():
        log.info("pairs %s: %d", name, len(pair_set))
        if len(pair_set):
            attach_texts(model, pair_set, config, runtime)
    return pairs


def check_data(config: TrainConfig, pairs: TrainingPairs) -> None:
    if config.stage1.enabled and (pairs.captions is None or len(pairs.captions) < 2):
        raise SourceError("stage one needs at least two usable image-caption pairs (check data.captions)")
    if uses_web(config) and (pairs.web is None or len(pairs.web) < 2):
        raise SourceError(
            "the web term needs web image-tag pairs, but the web source has fewer than two usable rows "
            "(check data.web, or run stage one only with --stage2.enabled=false --stage1.include_web=false)"
        )
    if config.web.noise_aware and config.web.unit != "tags" and uses_web(config):
        raise SourceError("the noise-aware web term weighs tags one by one: set web.unit to tags")
    if config.stage1.include_web and not config.stage1.enabled:
        raise SourceError("stage1.include_web needs stage one (stage1.enabled)")


def flat_config(config: TrainConfig) -> dict[str, object]:
    """The config as ``{"a.b": value}``, without runtime keys (what a resumed run must match)."""
    flat: dict[str, object] = {}

    def walk(prefix: str, value: object) -> None:
        if isinstance(value, dict) and value:
            for key, item in value.items():
                walk(f"{prefix}.{key}" if prefix else key, item)
        elif prefix not in RUNTIME_KEYS:
            flat[prefix] = value

    walk("", json.loads(json.dumps(dataclasses.asdict(config), default=str)))
    return flat


def prepare_run_folder(output_dir: Path, config: TrainConfig, runtime: Runtime) -> dict | None:
    """The checkpoint state to resume from, or None after clearing the folder of an earlier run's state.

    Raises:
        ResumeError: the checkpoint was written with a different config.
    """
    state = read_checkpoint_state(output_dir) if config.resume else None
    if state is not None:
        saved = state.get("config")
        current = flat_config(config)
        if saved != current:
            saved = saved or {}
            changed = sorted(
                k for k in set(saved) | set(current) if saved.get(k, "<unset>") != current.get(k, "<unset>")
            )
            details = ", ".join(
                f"{k}: {saved.get(k, '<unset>')!r} -> {current.get(k, '<unset>')!r}" for k in changed[:8]
            )
            raise ResumeError(
                f"{output_dir} holds a checkpoint of a run with a different config ({details}). Resume it with "
                "its own config, choose a new --output_dir, or start afresh with --resume=false"
            )
        return state
    if runtime.is_main:
        for name in RUN_FILES:
            path = output_dir / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    runtime.wait()
    return None


def run_key(config: TrainConfig, pairs: TrainingPairs, *parts: object) -> str:
    """A key for a file that depends on the data, the model architecture, the seed and ``parts``."""
    return cache_key(
        {
            "model": dataclasses.asdict(config.model),
            "init_from": config.init_from,
            "seed": config.seed,
            "pairs": {
                name: [texts_digest(p.texts), texts_digest(map(str, p.image_rows.tolist()))]
                for name, p in pairs.named().items()
            },  # fmt: skip
            "images": {name: str(getattr(p.images.store, "folder", "pixels")) for name, p in pairs.named().items()},
            "parts": parts,
        }
    )


def web_weights(
    model: VSEModel, pairs: TrainingPairs, config: TrainConfig, runtime: Runtime, output_dir: Path, metrics_log
) -> float:
    """Set the noise-aware weights of the web pairs (cross-fitted; cached by what they depend on).

    Returns the estimated share of wrong web tags.
    """
    key = run_key(config, pairs, dataclasses.asdict(config.web), dataclasses.asdict(config.stage1.optim),
                  config.stage1.tag_weight, config.data.web_tag_noise, config.data.web_tag_noise_kind)  # fmt: skip
    path = output_dir / f"web_weights-{key}.npz"
    if path.is_file():
        with np.load(path) as saved:
            pairs.web.weights = saved["weights"]
            log.info("noise-aware web weights: reused %s", path.name)
            return float(saved["pi0"])
    with timed("suspicion"), own_random_streams(runtime):
        weights, reports = noise_aware_weights(model, pairs.captions, pairs.web, config, runtime)
    for report in reports:
        metrics_log.write(report.record())
    if runtime.is_main:
        np.savez(path, weights=weights, pi0=reports[-1].pi0)
    runtime.wait()
    return reports[-1].pi0


def own_random_streams(runtime: Runtime):
    """A block whose torch random draws (the fold models' dropout) leave the run's streams as they were:
    a run that finds the noise-aware weights cached must train exactly as the run that computed them."""
    return torch.random.fork_rng(devices=[runtime.device] if runtime.device.type == "cuda" else [])


def corrections_record(sources: Sources, metrics_log: MetricsLog) -> dict | None:
    """The human corrections this run trains with: fingerprint, provenance, tags removed/added/confirmed."""
    if not len(sources.corrections) or sources.web is None:
        return None
    table = sources.web.table
    record = {**sources.corrections.summary(), **applied_counts(table.ids, table.texts, sources.corrections)}
    log.info(
        "corrections on %d web images: %d tags removed, %d added, %d confirmed", record["images"], record["removed"],
        record["added"], record["confirmed"],
    )  # fmt: skip
    metrics_log.write({"stage": "corrections", **record})
    return record


def suspicion_table(pairs: TrainingPairs, sources: Sources, pi0: float) -> SuspicionTable | None:
    """The web tags' cross-fitted P(wrong), saved with the model for the app's review queue."""
    web = pairs.web
    if web is None or web.weights is None or sources.web is None:
        return None
    ids = [sources.web.table.ids[row] for row in web.image_rows.tolist()]
    return SuspicionTable(ids, list(web.texts), 1.0 - web.weights, pi0)


def curriculum_order(model: VSEModel, web: PairSet, config: TrainConfig, key: str, output_dir: Path) -> np.ndarray:
    """Web pairs ranked easy to hard by the stage-one model, saved under a key of what it depends on."""
    path = output_dir / f"curriculum-{key}.npy"
    if path.is_file():
        return np.load(path)
    scores = []
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(web), config.eval_batch_size):
            index = np.arange(start, min(start + config.eval_batch_size, len(web)))
            scores.append(
                pair_agreement(model.encode_image(web.image_batch(index)), model.encode_text(web.text_batch(index)))
            )
    order = easy_to_hard(np.concatenate(scores))
    np.save(path, order)
    return order


def final_metrics(
    model: VSEModel, sources: Sources, config: TrainConfig, runtime: Runtime
) -> dict[str, dict[str, float]]:
    metrics = {}
    for name, source in (("validation", sources.validation), ("test", sources.test)):
        if source is not None:
            data = eval_set(source, name)
            attach_texts(model, data, config, runtime)
            metrics[name] = evaluate(model, data, config.eval_batch_size)
    return metrics


def run_training(config: TrainConfig, runtime: Runtime | None = None) -> Path | None:
    """Run the configured stages and save the final model; returns its folder (None if stopped early)."""
    output_dir = Path(config.output_dir)
    runtime = runtime or Runtime.create(
        config.seed,
        mixed_precision=config.mixed_precision,
        trackers=config.log.trackers,
        logging_dir=output_dir / LOGS_DIR,
    )
    output_dir.mkdir(parents=True, exist_ok=True)
    resume = prepare_run_folder(output_dir, config, runtime)
    torch.manual_seed(config.seed)
    sources = read_sources(config)
    with timed("model"):
        model = build_model(config, sources).to(runtime.device)
    attach_images(model, sources, config, runtime)
    with timed("pairs"):
        pairs = build_pairs(model, sources, config, runtime)
    check_data(config, pairs)
    validation = None
    if sources.validation is not None:
        validation = eval_set(sources.validation, "validation")
        attach_texts(model, validation, config, runtime)
    if runtime.is_main:
        (output_dir / "train_config.json").write_text(json.dumps(dataclasses.asdict(config), indent=2, default=str))
    runtime.start_trackers(config.log.project, tracker_hyperparameters(config))
    steps_done = (resume or {}).get("steps_done", 0)
    metrics_log = MetricsLog(output_dir, enabled=runtime.is_main, trackers=runtime.log_to_trackers, step=steps_done)
    selection = RunSelection(output_dir / BEST_DIR)
    if resume:
        selection.restore(resume)
    ctx = StageContext(
        model, runtime, output_dir, validation, metrics_log, selection, config.eval_batch_size, config.eval_every,
        config.progress, {"config": flat_config(config)}, config.stop_after_epochs, epochs_done(config, resume),
        config.stop_after_steps, config.checkpoint_every_steps, steps_done,
    )  # fmt: skip
    try:
        corrections = corrections_record(sources, metrics_log)
        pi0 = float("nan")
        if uses_web(config) and config.web.noise_aware:
            pi0 = web_weights(model, pairs, config, runtime, output_dir, metrics_log)
        in_stage_two = bool(resume and resume.get("stage") == "stage2")
        if config.stage1.enabled and not in_stage_two:
            with timed("stage1"):
                run_stage(stage_one(config, pairs, runtime), ctx, resume)
        if config.stage2.enabled:
            order = None
            if in_stage_two:
                ctx.run_state["curriculum"] = resume.get("curriculum")
            elif (selection.folder / "model.safetensors").is_file():  # stage two starts from the best model so far
                model.load_weights(selection.folder)
            if config.stage2.curriculum:
                key = ctx.run_state.get("curriculum") or run_key(config, pairs, model_digest_of(model))
                ctx.run_state["curriculum"] = key
                order = curriculum_order(model, pairs.web, config, key, output_dir)
            with timed("stage2"):
                run_stage(stage_two(config, pairs, order, runtime), ctx, resume)
    except Interrupted as stop:
        log.info("%s; rerun with the same config to resume", stop)
        return None
    finally:
        runtime.finish_trackers()
    if (selection.folder / "model.safetensors").is_file():
        model.load_weights(selection.folder)
        log.info("selected: %s (validation rsum %.2f)", selection.best_stage, selection.best_rsum)
    verify_replicas(model, runtime, output_dir)
    model.suspicion = suspicion_table(pairs, sources, pi0)
    return save_final_model(model, sources, config, runtime, output_dir, selection, corrections)


def tracker_hyperparameters(config: TrainConfig) -> dict[str, bool | int | float | str]:
    """The config as trackers store hyperparameters: flat, each value a number, flag or string
    (TensorBoard takes nothing else; lists, mappings and None become their JSON text)."""
    return {
        key: value if isinstance(value, (bool, int, float, str)) else json.dumps(value)
        for key, value in flat_config(config).items()
    }


def epochs_done(config: TrainConfig, resume: dict | None) -> int:
    """Epochs of the whole run a checkpoint has done (for ``stop_after_epochs``)."""
    if not resume:
        return 0
    before = config.stage1.optim.epochs if resume["stage"] == "stage2" and config.stage1.enabled else 0
    return before + resume["epoch"]


def model_digest_of(model: VSEModel) -> str:
    """Digest of the trainable weights (what the curriculum's ranking depends on)."""
    digest = hashlib.sha256()
    for name, param in sorted(model.named_parameters()):
        if param.requires_grad:
            digest.update(name.encode())
            digest.update(param.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def verify_replicas(model: VSEModel, runtime: Runtime, output_dir: Path) -> None:
    """Every process must end with the same weights; record their digests in replicas.json."""
    digest = model_digest_of(model)
    digests = [None] * runtime.world_size
    if runtime.world_size > 1:
        torch.distributed.all_gather_object(digests, digest)
    else:
        digests = [digest]
    if runtime.is_main:
        (output_dir / "replicas.json").write_text(
            json.dumps({"world_size": runtime.world_size, "digests": digests}, indent=2)
        )
    if len(set(digests)) != 1:
        raise RuntimeError(f"processes ended with different weights: {digests}")


def save_final_model(
    model: VSEModel,
    sources: Sources,
    config: TrainConfig,
    runtime: Runtime,
    output_dir: Path,
    selection: RunSelection,
    corrections: dict | None = None,
) -> Path:
    model.metrics = final_metrics(model, sources, config, runtime)
    model.config.extra = {
        **model.config.extra,
        "datasets": sources.provenance(),
        "training": {k: v for k, v in dataclasses.asdict(config).items() if k != "model"},
        "selected_stage": selection.best_stage,
    }
    if corrections is not None:
        model.metrics["corrections"] = corrections
        model.config.extra["corrections"] = corrections
    folder = output_dir / "model"
    if runtime.is_main:
        model.save_pretrained(folder)
        for split in ("validation", "test"):
            if split in model.metrics:
                log.info("%s: %s", split, ", ".join(f"{k} {v:.2f}" for k, v in model.metrics[split].items()))
    runtime.wait()
    return folder


COMMAND_LINE = CommandLine(
    prog="python -m training.train",
    description="Two-stage webly supervised training of a visual-semantic embedding.",
    epilog="Example: --config configs/offline_default.yaml --stage1.optim.lr=1e-4 --data.captions.path=my/folder "
    "--stage2.enabled=false",
)


def main(argv: list[str] | None = None) -> int:
    return run_command(TrainConfig, argv, COMMAND_LINE, train_and_report, expected=CLI_ERRORS)


def train_and_report(config: TrainConfig) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    folder = run_training(config)
    if folder is None:
        print(
            "stopped before the end as asked (stop_after_epochs/stop_after_steps); run again with the same config to resume"
        )
        return 0
    print(f"model saved to {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
