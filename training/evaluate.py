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
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np
import torch

from training.config import DataConfig, SourceConfig
from training.features import image_store, text_store
from training.loop import embed_eval_set
from training.pairs import EvalSet, ImageInputs, TextInputs, eval_set
from training.pipeline import open_source
from training.runtime import Runtime
from training.sources import SourceError
from vse.cli import USER_ERRORS, add_debug_flag, run_cli
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training.evaluate", description=__doc__.split("\n\n")[0], allow_abbrev=False
    )
    parser.add_argument("--model", required=True, help="model folder or Hub repo id")
    parser.add_argument(
        "--data",
        required=True,
        help="caption source: Hub dataset id, imagefolder, data files, or Karpathy's dataset_coco.json / "
        "dataset_flickr30k.json (with --image-root)",
    )
    parser.add_argument("--split", default="test")
    parser.add_argument("--image-column", default="image")
    parser.add_argument("--text-column", default="captions")
    parser.add_argument("--image-root", default=None, help="root for relative image paths or URLs")
    parser.add_argument(
        "--where", action="append", default=[], metavar="COLUMN=VALUE", help="keep rows where COLUMN equals VALUE"
    )
    parser.add_argument("--revision", default=None, help="dataset revision")
    parser.add_argument("--limit", type=int, default=None, help="evaluate on the first N rows only")
    parser.add_argument("--protocol", choices=("auto", "full", "1k", "5k"), default="auto",
                        help="auto: the full set plus the published protocols the split fits (COCO 1K and 5K on "
                             "5,000 images, Flickr30K 1K on 1,000)")  # fmt: skip
    parser.add_argument("--captions-per-image", type=int, default=PUBLISHED_CAPTIONS,
                        help="captions per image in the published protocols: the first K of each image")  # fmt: skip
    parser.add_argument("--cache-dir", default="cache", help="feature cache folder")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    parser.add_argument("--update-card", action="store_true",
                        help="store the results in the model folder's metrics.json and model card (a local folder)")  # fmt: skip
    add_debug_flag(parser)
    return parser


def update_card(model: VSEModel, folder: Path, split: str, source: SourceConfig, results: dict) -> None:
    """Record the full-set metrics of ``split`` in the folder's metrics.json and model card (model-index)."""
    model.metrics[split] = results["full"]
    datasets = [
        d for d in model.config.extra.get("datasets") or [] if not (isinstance(d, dict) and d.get("role") == split)
    ]
    model.config.extra["datasets"] = [*datasets, {"id": source.path, "role": split, "split": source.split,
                                                   "revision": source.revision}]  # fmt: skip
    model.save_pretrained(folder)


def evaluate_and_report(args: argparse.Namespace, source: SourceConfig) -> int:
    if args.update_card and args.protocol not in ("auto", "full"):
        print("error: --update-card records the full-set metrics; use --protocol auto or full", file=sys.stderr)
        return 2
    model = VSEModel.from_pretrained(args.model)
    image_emb, text_emb, data = embed_split(model, source, DataConfig(cache_dir=args.cache_dir), args.batch_size)
    results = protocol_metrics(image_emb, text_emb, data, args.protocol, args.captions_per_image)
    print(format_table(results))
    print("\n".join(protocol_notes(list(results), len(data.image_rows), len(data.texts), args.captions_per_image)))
    if args.update_card:
        if not Path(args.model).is_dir():
            print("error: --update-card needs a local model folder (push it afterwards)", file=sys.stderr)
            return 2
        update_card(model, Path(args.model), args.split, source, results)
        print(f"metrics of {args.split} written to {args.model}/metrics.json and its model card")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(results, handle, indent=2)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if any("=" not in item for item in args.where):
        parser.error("--where takes COLUMN=VALUE")
    if args.captions_per_image < 1:
        parser.error("--captions-per-image must be at least 1")
    source = SourceConfig(
        path=args.data, split=args.split, image_column=args.image_column, text_column=args.text_column,
        image_root=args.image_root, where=dict(item.split("=", 1) for item in args.where), revision=args.revision,
        limit=args.limit,
    )  # fmt: skip
    # ValueError as well: the data libraries refuse bad sources with it.
    return run_cli(lambda: evaluate_and_report(args, source), debug=args.debug, expected=(*USER_ERRORS, ValueError))


if __name__ == "__main__":
    sys.exit(main())
