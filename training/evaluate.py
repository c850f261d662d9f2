"""Evaluate a saved model: Recall@K both ways, medr, meanr and rsum on a caption split.

    python -m training.evaluate --model runs/x/model --data my/imagefolder --split test
    python -m training.evaluate --model user/vse-coco --data yerevann/coco-karpathy \\
        --split test --image-column url --text-column sentences

Reports the full-set protocol, and the COCO 1K protocol (mean over five folds of
1,000 images) when the split has at least 5,000 images with five captions each.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np

from training.config import DataConfig, SourceConfig
from training.features import image_store, text_store
from training.loop import embed_eval_set
from training.pairs import EvalSet, ImageInputs, TextInputs, eval_set
from training.pipeline import open_source
from training.runtime import Runtime
from training.sources import SourceError
from vse.cli import USER_ERRORS, add_debug_flag, run_cli
from vse.metrics import RECALL_AT, fold_metrics, retrieval_metrics
from vse.model import VSEModel

log = logging.getLogger("training.evaluate")
COLUMNS = [f"R@{k}" for k in RECALL_AT] + ["medr", "meanr"]


def uniform_captions(data: EvalSet) -> int | None:
    """K when every image has exactly K captions stored image by image, else None."""
    counts = np.bincount(data.owners, minlength=len(data.image_rows))
    if len(counts) == 0 or counts.min() != counts.max() or np.any(np.diff(data.owners) < 0):
        return None
    return int(counts[0])


def protocol_metrics(image_emb, text_emb, data: EvalSet, protocol: str) -> dict[str, dict[str, float]]:
    results = {}
    if protocol in ("auto", "full"):
        results["full"] = retrieval_metrics(image_emb, text_emb, text_image_index=data.owners)
    per_image = uniform_captions(data)
    if protocol in ("auto", "1k") and per_image and len(data.image_rows) >= 5000:
        results["1k"] = fold_metrics(image_emb, text_emb, per_image)
    elif protocol == "1k":
        raise SourceError("the 1K protocol needs at least 5,000 images with the same number of captions each")
    return results


def format_table(results: dict[str, dict[str, float]]) -> str:
    """Plain-text table: one row per protocol, both directions, rsum."""
    header = ["protocol"] + [f"i2t {c}" for c in COLUMNS] + [f"t2i {c}" for c in COLUMNS] + ["rsum"]
    rows = [header]
    for name, m in results.items():
        cells = [m[f"{d}_{c}"] for d in ("i2t", "t2i") for c in COLUMNS] + [m["rsum"]]
        rows.append([name] + [f"{value:.2f}" for value in cells])
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join("  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True)) for row in rows)


def evaluate_model(model: VSEModel, source: SourceConfig, data_cfg: DataConfig, protocol: str, batch_size: int) -> dict:
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
    results = protocol_metrics(image_emb, text_emb, data, protocol)
    log.info("%d images, %d captions; skipped %s", len(data.image_rows), len(data.texts), prepared.skips.as_dict())
    return results


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training.evaluate", description=__doc__.split("\n\n")[0], allow_abbrev=False
    )
    parser.add_argument("--model", required=True, help="model folder or Hub repo id")
    parser.add_argument("--data", required=True, help="caption source: Hub dataset id, imagefolder, or data files")
    parser.add_argument("--split", default="test")
    parser.add_argument("--image-column", default="image")
    parser.add_argument("--text-column", default="captions")
    parser.add_argument("--image-root", default=None, help="root for relative image paths or URLs")
    parser.add_argument(
        "--where", action="append", default=[], metavar="COLUMN=VALUE", help="keep rows where COLUMN equals VALUE"
    )
    parser.add_argument("--revision", default=None, help="dataset revision")
    parser.add_argument("--limit", type=int, default=None, help="evaluate on the first N rows only")
    parser.add_argument("--protocol", choices=("auto", "full", "1k"), default="auto")
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
    model = VSEModel.from_pretrained(args.model)
    results = evaluate_model(model, source, DataConfig(cache_dir=args.cache_dir), args.protocol, args.batch_size)
    print(format_table(results))
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
    source = SourceConfig(
        path=args.data, split=args.split, image_column=args.image_column, text_column=args.text_column,
        image_root=args.image_root, where=dict(item.split("=", 1) for item in args.where), revision=args.revision,
        limit=args.limit,
    )  # fmt: skip
    # ValueError as well: the data libraries refuse bad sources with it.
    return run_cli(lambda: evaluate_and_report(args, source), debug=args.debug, expected=(*USER_ERRORS, ValueError))


if __name__ == "__main__":
    sys.exit(main())
