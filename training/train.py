"""Train a webly supervised joint embedding: stage one, stage two, or both.

    python -m training.train --config configs/offline_default.yaml [--key=value ...]

Stage one (Mithun et al., ACM MM 2018): clean image-caption pairs plus image-tag
pairs (pseudo tags from the captions and human-verified web tags), loss =
hinge(image, sentence) + lambda * hinge(image, tags).  Stage two: starting from
stage one, noisy web image-tag pairs with a smaller learning rate and a
curriculum from easy to hard pairs.  The final model, with its validation and
test metrics, is saved to ``<output_dir>/model``.

Multi-process: ``accelerate launch -m training.train ...`` or
``torchrun --nproc_per_node N -m training.train ...``.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import sys
from pathlib import Path

import numpy as np
import torch

from training.checkpoint import MetricsLog, read_checkpoint_state
from training.config import TrainConfig
from training.configuration import ConfigError, load_config
from training.curriculum import curriculum_subset, easy_to_hard, pair_agreement
from training.loop import BatchStream, Term, evaluate
from training.pairs import PairSet, caption_pairs, eval_set, pseudo_tag_pairs, web_tag_pairs
from training.pipeline import Sources, attach_images, attach_texts, build_model, read_sources, timed
from training.runtime import Runtime
from training.sources import SourceError
from training.stages import StageContext, StagePlan, run_stage
from vse.model import VSEModel

log = logging.getLogger("training")
STAGE_SEEDS = {"stage1": 1, "stage2": 2}


def stream(
    pairs: PairSet, indices: np.ndarray | None, batch_size: int, seed: list[int], runtime: Runtime
) -> BatchStream:
    chosen = np.arange(len(pairs)) if indices is None else indices
    return BatchStream(chosen, batch_size, int(np.random.SeedSequence(seed).generate_state(1)[0]), runtime)


def side_batch(main_pairs: int, side_pairs: int, batch_size: int) -> int:
    """Batch size of a secondary term, proportional to its share of the data (2..batch)."""
    return int(min(batch_size, max(2, round(batch_size * side_pairs / max(main_pairs, 1)))))


def steps_for(term: Term) -> int:
    return max(1, term.stream.batches_per_pass())


def stage_one_plan(config: TrainConfig, pairs: dict[str, PairSet], runtime: Runtime) -> StagePlan:
    cfg, batch = config.stage1, config.stage1.optim.batch_size

    def terms(epoch: int) -> tuple[list[Term], int]:
        seed = [config.seed, STAGE_SEEDS["stage1"], epoch]
        main = Term(pairs["captions"], stream(pairs["captions"], None, batch, seed + [0], runtime))
        chosen = [main]
        side_terms = (
            ("pseudo_tags", "verified_tags", "web_tags") if cfg.include_web else ("pseudo_tags", "verified_tags")
        )
        for index, name in enumerate(side_terms, start=1):
            if name in pairs and len(pairs[name]) >= 2:
                size = batch if name == "pseudo_tags" else side_batch(len(main.pairs), len(pairs[name]), batch)
                chosen.append(
                    Term(pairs[name], stream(pairs[name], None, size, seed + [index], runtime), cfg.tag_weight)
                )
        return chosen, steps_for(main)

    return StagePlan("stage1", cfg.optim, terms)


def stage_two_plan(config: TrainConfig, pairs: dict[str, PairSet], order: np.ndarray, runtime: Runtime) -> StagePlan:
    cfg, batch = config.stage2, config.stage2.optim.batch_size

    def terms(epoch: int) -> tuple[list[Term], int]:
        seed = [config.seed, STAGE_SEEDS["stage2"], epoch]
        subset = curriculum_subset(order, epoch, cfg.curriculum_fractions) if cfg.curriculum else None
        web = Term(pairs["web_tags"], stream(pairs["web_tags"], subset, batch, seed + [0], runtime), cfg.tag_weight)
        chosen = [web]
        if cfg.replay_clean > 0 and "captions" in pairs:
            size = int(min(batch, max(2, round(batch * cfg.replay_clean))))
            chosen.append(Term(pairs["captions"], stream(pairs["captions"], None, size, seed + [1], runtime)))
        return chosen, steps_for(web)

    return StagePlan("stage2", cfg.optim, terms)


def build_pairs(model: VSEModel, sources: Sources, config: TrainConfig, runtime: Runtime) -> dict[str, PairSet]:
    pairs: dict[str, PairSet] = {}
    if sources.captions is not None:
        pairs["captions"] = caption_pairs(sources.captions)
        if config.stage1.pseudo_tags:
            pairs["pseudo_tags"] = pseudo_tag_pairs(sources.captions)
    if sources.web is not None:
        pairs["web_tags"] = web_tag_pairs(
            sources.web, sources.corrections, noise=config.data.web_tag_noise, seed=config.seed
        )
        if config.stage1.verified_tags and len(sources.corrections):
            pairs["verified_tags"] = web_tag_pairs(sources.web, sources.corrections, reviewed_only=True)
    for name, pair_set in pairs.items():
        log.info("pairs %s: %d", name, len(pair_set))
        if len(pair_set):
            attach_texts(model, pair_set, config, runtime)
    return pairs


def check_data(config: TrainConfig, pairs: dict[str, PairSet]) -> None:
    if config.stage1.enabled and len(pairs.get("captions", ())) < 2:
        raise SourceError("stage one needs at least two usable image-caption pairs (check data.captions)")
    if (config.stage2.enabled or config.stage1.include_web) and len(pairs.get("web_tags", ())) < 2:
        raise SourceError(
            "stage two needs web image-tag pairs, but the web source has fewer than two usable rows "
            "(check data.web, or run stage one only with --stage2.enabled=false)"
        )


def curriculum_order(model: VSEModel, web: PairSet, config: TrainConfig, output_dir: Path) -> np.ndarray:
    """Web pairs ranked easy to hard by the stage-one model (saved for resumed runs)."""
    path = output_dir / "curriculum_order.npy"
    if path.is_file():
        order = np.load(path)
        if len(order) == len(web):
            return order
    scores = []
    with torch.inference_mode():
        model.eval()
        for start in range(0, len(web), config.eval_batch_size):
            index = np.arange(start, min(start + config.eval_batch_size, len(web)))
            images = model.encode_image(web.image_inputs(index))
            texts = web.text_inputs(index)
            text_emb = (
                model.embed_text_features(texts).cpu() if isinstance(texts, torch.Tensor) else model.encode_text(texts)
            )
            scores.append(pair_agreement(images, text_emb))
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


def run_training(config: TrainConfig, runtime: Runtime | None = None) -> Path:
    """Run the configured stages and save the final model; returns its folder."""
    runtime = runtime or Runtime.create(config.seed)
    output_dir = Path(config.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
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
    metrics_log = MetricsLog(output_dir, enabled=runtime.is_main, tensorboard=config.tensorboard)
    ctx = StageContext(
        model, runtime, output_dir, validation, metrics_log, config.eval_batch_size, config.eval_every, config.progress
    )
    resume = read_checkpoint_state(output_dir) if config.resume else None
    stage_metrics = {}
    if config.stage1.enabled and not (resume and resume.get("stage") == "stage2"):
        with timed("stage1"):
            stage_metrics["stage1"] = run_stage(stage_one_plan(config, pairs, runtime), ctx, resume)
    if config.stage2.enabled:
        if config.stage1.enabled and (output_dir / "stage1" / "model.safetensors").is_file():
            model.load_weights(output_dir / "stage1")
        order = curriculum_order(model, pairs["web_tags"], config, output_dir) if config.stage2.curriculum else None
        with timed("stage2"):
            stage_metrics["stage2"] = run_stage(stage_two_plan(config, pairs, order, runtime), ctx, resume)
    metrics_log.close()
    verify_replicas(model, runtime, output_dir)
    return save_final_model(model, sources, config, runtime, output_dir)


def verify_replicas(model: VSEModel, runtime: Runtime, output_dir: Path) -> None:
    """Every process must end with the same weights; record their digests in replicas.json."""
    digest = hashlib.sha256()
    for name, param in sorted(model.named_parameters()):
        if param.requires_grad:
            digest.update(name.encode())
            digest.update(param.detach().cpu().contiguous().numpy().tobytes())
    digests = [None] * runtime.world_size
    if runtime.world_size > 1:
        torch.distributed.all_gather_object(digests, digest.hexdigest())
    else:
        digests = [digest.hexdigest()]
    if runtime.is_main:
        (output_dir / "replicas.json").write_text(
            json.dumps({"world_size": runtime.world_size, "digests": digests}, indent=2)
        )
    if len(set(digests)) != 1:
        raise RuntimeError(f"processes ended with different weights: {digests}")


def save_final_model(
    model: VSEModel, sources: Sources, config: TrainConfig, runtime: Runtime, output_dir: Path
) -> Path:
    model.metrics = final_metrics(model, sources, config, runtime)
    model.config.extra = {
        **model.config.extra,
        "datasets": sources.provenance(),
        "training": {k: v for k, v in dataclasses.asdict(config).items() if k != "model"},
    }
    folder = output_dir / "model"
    if runtime.is_main:
        model.save_pretrained(folder)
        for split, values in model.metrics.items():
            log.info("%s: %s", split, ", ".join(f"{k} {v:.2f}" for k, v in values.items()))
    runtime.wait()
    return folder


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training.train",
        description="Two-stage webly supervised training of a visual-semantic embedding.",
        epilog=(
            "Any config value can be overridden with --section.key=value, e.g. "
            "--stage1.optim.lr=1e-4 --data.captions.path=my/folder --stage2.enabled=false. "
            "Unknown keys and wrongly typed values are rejected."
        ),
        allow_abbrev=False,
    )
    parser.add_argument("--config", help="YAML or JSON config file (see configs/)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, overrides = parser.parse_known_args(argv)
    try:
        config = load_config(TrainConfig, args.config, overrides)
    except ConfigError as err:
        parser.error(str(err))
    if args.print_config:
        print(json.dumps(dataclasses.asdict(config), indent=2, default=str))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        folder = run_training(config)
    except SourceError as err:
        log.error("%s", err)
        return 2
    print(f"model saved to {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
