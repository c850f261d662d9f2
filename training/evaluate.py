"""Evaluate a saved model: Recall@K both ways, medr, meanr and rsum on a caption split.

    python -m training.evaluate --model runs/x/model --data data/coco/dataset_coco.json \\
        --image-root data/coco/images --split test
    python -m training.evaluate --model runs/x/model --data my/imagefolder --split test
    python -m training.evaluate --model user/vse-coco --data yerevann/coco-karpathy \\
        --split test --image-column url --text-column sentences

Reports the full set (every image with all its captions) and the published
protocols the split fits (``vse.metrics``): on 5,000 images (Karpathy's COCO test
split) COCO 1K, the mean over five folds of 1,000 images, and COCO 5K; on 1,000
images (Flickr30K's test split) Flickr30K 1K.  The published protocols use the
first five captions of each image (``--captions-per-image``); a split with an
image that has fewer gets the full-set metrics only, with a warning saying why.

The command line is ``EvaluateConfig`` read by ``training.configuration`` (as
training's): ``--data.<key>`` reaches every option of a training source,
``--config FILE`` and ``--print-config`` work, and unknown keys are refused.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from training.config import DataConfig, SourceConfig
from training.configuration import CommandLine, run_command
from training.features import image_store, text_store
from training.loop import embed_eval_set
from training.pairs import EvalSet, ImageInputs, TextInputs, eval_set
from training.pipeline import open_source
from training.runtime import Runtime
from training.sources import SourceError
from vse.cli import USER_ERRORS
from vse.metrics import (
    COCO_FOLDS,
    COCO_IMAGES,
    FOLD_IMAGES,
    PUBLISHED_PROTOCOLS,
    RECALL_AT,
    published_protocol_names,
    retrieval_metrics,
)
from vse.model import VSEModel

log = logging.getLogger("training.evaluate")
COLUMNS = [f"R@{k}" for k in RECALL_AT] + ["medr", "meanr"]
PUBLISHED_CAPTIONS = 5  # captions per image in the published protocols


def protocol_metrics(
    image_emb, text_emb, data: EvalSet, protocol: str, captions_per_image: int = PUBLISHED_CAPTIONS
) -> dict[str, dict[str, float]]:
    """Metrics of the protocols ``protocol`` asks for: "auto" (full plus those the split fits), "full", "1k", "5k".

    Raises:
        SourceError: a protocol asked for by name that the split does not fit.
    """
    results = {}
    if protocol in ("auto", "full"):
        results["full"] = retrieval_metrics(image_emb, text_emb, text_image_index=data.owners)
    if protocol == "full":
        return results
    names = published_protocol_names(len(data.image_rows)) if protocol == "auto" else [protocol]
    for name in names:
        try:
            results[name] = PUBLISHED_PROTOCOLS[name](
                image_emb, text_emb, captions_per_image, text_image_index=data.owners
            )
        except ValueError as err:
            if protocol != "auto":
                raise SourceError(f"the {name} protocol does not fit the {data.name} split: {err}") from err
            log.warning("%s protocol not reported: %s", name, err)
    return results


def protocol_notes(names: list[str], num_images: int, num_captions: int, captions_per_image: int) -> list[str]:
    """One line per reported protocol saying which images and captions it ranked."""
    first = f"first {captions_per_image} captions each"
    subset = f" (the first {COCO_IMAGES:,} of {num_images:,})" if num_images > COCO_IMAGES else ""
    if num_images >= COCO_IMAGES:
        one_k = f"COCO 1K, mean over {COCO_FOLDS} folds of {FOLD_IMAGES:,} images{subset}, {first}"
    else:
        one_k = f"Flickr30K 1K, all {num_images:,} images, {first}"
    described = {
        "full": f"all {num_images:,} images with all {num_captions:,} captions",
        "1k": one_k,
        "5k": f"COCO 5K, {COCO_IMAGES:,} images{subset}, {first}",
    }
    return [f"{name}: {described[name]}" for name in names]


def format_table(results: dict[str, dict[str, float]]) -> str:
    """Plain-text table: one row per protocol, both directions, rsum."""
    header = ["protocol"] + [f"i2t {c}" for c in COLUMNS] + [f"t2i {c}" for c in COLUMNS] + ["rsum"]
    rows = [header]
    for name, m in results.items():
        cells = [m[f"{d}_{c}"] for d in ("i2t", "t2i") for c in COLUMNS] + [m["rsum"]]
        rows.append([name] + [f"{value:.2f}" for value in cells])
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join("  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True)) for row in rows)


def embed_split(
    model: VSEModel, source: SourceConfig, data_cfg: DataConfig, batch_size: int
) -> tuple[torch.Tensor, torch.Tensor, EvalSet]:
    """Image and caption embeddings of a split, with the split (owners, skips) they came from."""
    runtime = Runtime()
    prepared = open_source(source, "captions")
    prepared.attach(
        ImageInputs(
            store=image_store(model, prepared.ds, source, data_cfg, runtime, progress=True, batch_size=batch_size)
        )
    )
    data = eval_set(prepared, source.split)
    store = text_store(model, data.texts, data_cfg, runtime, progress=True, batch_size=batch_size, name=source.split)
    if store is not None:
        data.text_inputs = TextInputs(data.texts, store, np.arange(len(data.texts)))
    if len(data.image_rows) == 0:
        raise SourceError(f"no usable images with captions in {source.path} ({prepared.skips.as_dict()})")
    image_emb, text_emb = embed_eval_set(model, data, batch_size)
    log.info("%d images, %d captions; skipped %s", len(data.image_rows), len(data.texts), prepared.skips.as_dict())
    return image_emb, text_emb, data


def evaluate_model(
    model: VSEModel,
    source: SourceConfig,
    data_cfg: DataConfig,
    protocol: str,
    batch_size: int,
    captions_per_image: int = PUBLISHED_CAPTIONS,
) -> dict:
    """``protocol_metrics`` of a saved model on one split."""
    image_emb, text_emb, data = embed_split(model, source, data_cfg, batch_size)
    return protocol_metrics(image_emb, text_emb, data, protocol, captions_per_image)


def update_card(model: VSEModel, folder: Path, split: str, source: SourceConfig, results: dict) -> None:
    """Record the full-set metrics of ``split`` in the folder's metrics.json and model card (model-index)."""
    model.metrics[split] = results["full"]
    datasets = [
        d for d in model.config.extra.get("datasets") or [] if not (isinstance(d, dict) and d.get("role") == split)
    ]
    model.config.extra["datasets"] = [*datasets, {"id": source.path, "role": split, "split": source.split,
                                                   "revision": source.revision}]  # fmt: skip
    model.save_pretrained(folder)


PROTOCOLS = ("auto", "full", "1k", "5k")


@dataclass
class EvaluateConfig:
    """What ``python -m training.evaluate`` evaluates, and on which split."""

    model: str = field(metadata={"help": "model folder or Hub repo id"})
    # The caption split: the training configs' source section, so every source
    # option (extra_splits, id_column, streaming, ...) works here too.
    data: SourceConfig = field(default_factory=lambda: SourceConfig(split="test"))
    protocol: str = field(
        default="auto",
        metadata={"help": f"one of {PROTOCOLS}; auto: the full set plus the published protocols the split fits "
                  "(COCO 1K and 5K on 5,000 images, Flickr30K 1K on 1,000)"},
    )  # fmt: skip
    captions_per_image: int = field(
        default=PUBLISHED_CAPTIONS, metadata={"help": "captions per image in the published protocols: the first K"}
    )
    cache_dir: str = field(default="cache", metadata={"help": "feature cache folder"})
    batch_size: int = 128
    json: str | None = field(default=None, metadata={"help": "also write the results to this JSON file"})
    update_card: bool = field(
        default=False,
        metadata={"help": "store the results in the model folder's metrics.json and model card (a local folder)"},
    )

    def __post_init__(self) -> None:
        if not self.data.path:
            raise ValueError("no caption source: give --data PATH (data.path)")
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, got {self.protocol!r}")
        if self.captions_per_image < 1:
            raise ValueError("captions_per_image must be at least 1")
        if self.update_card and self.protocol not in ("auto", "full"):
            raise ValueError("--update-card records the full-set metrics; use --protocol auto or full")


COMMAND_LINE = CommandLine(
    prog="python -m training.evaluate",
    description=__doc__.split("\n\n")[0],
    # The flags this script had before it shared the training configs' source section.
    aliases={
        "data": "data.path",
        "split": "data.split",
        "image_column": "data.image_column",
        "text_column": "data.text_column",
        "image_root": "data.image_root",
        "where": "data.where",
        "revision": "data.revision",
        "limit": "data.limit",
    },
    epilog="--data takes a Hub dataset id, an imagefolder, data files, or Karpathy's dataset_coco.json / "
    "dataset_flickr30k.json (with --image-root); --where COLUMN=VALUE keeps matching rows (repeatable).",
)


def evaluate_and_report(config: EvaluateConfig) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    model = VSEModel.from_pretrained(config.model)
    data_cfg = DataConfig(cache_dir=config.cache_dir)
    image_emb, text_emb, data = embed_split(model, config.data, data_cfg, config.batch_size)
    results = protocol_metrics(image_emb, text_emb, data, config.protocol, config.captions_per_image)
    print(format_table(results))
    print("\n".join(protocol_notes(list(results), len(data.image_rows), len(data.texts), config.captions_per_image)))
    if config.update_card:
        if not Path(config.model).is_dir():
            print("error: --update-card needs a local model folder (push it afterwards)", file=sys.stderr)
            return 2
        update_card(model, Path(config.model), config.data.split, config.data, results)
        print(f"metrics of {config.data.split} written to {config.model}/metrics.json and its model card")
    if config.json:
        with open(config.json, "w", encoding="utf-8") as handle:
            json.dump(results, handle, indent=2)
    return 0


def main(argv: list[str] | None = None) -> int:
    # ValueError as well: the data libraries refuse bad sources with it.
    return run_command(EvaluateConfig, argv, COMMAND_LINE, evaluate_and_report, expected=(*USER_ERRORS, ValueError))


if __name__ == "__main__":
    sys.exit(main())
