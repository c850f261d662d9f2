"""Build the offline default from the Openclipart corpus: data, model, and ``assets/``.

    python -m training.build_demo            # the full build (about 20 minutes on 2 cores)
    python -m training.build_demo --limit 300 --test-size 60 --validation-size 20  # a quick subset

Needs the Debian packages ``openclipart-svg`` (metadata) and ``openclipart-png``
(renderings); installs nothing itself.  Steps, each logged with its duration:

1. read the corpus, deduplicate images, give captions by the rule in
   ``training.openclipart``;
2. split (caption-grouped) and write ``data/openclipart/{captions,web}``;
3. train both stages with ``configs/offline_default.yaml``;
4. write ``assets/``: the model, the gallery (letterboxed 224 px WebP thumbnails
   with titles, captions and raw web tags, and the record of its fingerprint that
   ``write_gallery`` leaves beside the shards), and the embeddings of the gallery
   and its caption pool, bound to the model's digest.  Every file stays under 10 MB
   and the folder under 50 MB.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from pathlib import Path

import torch

from training.ablation import recipe_robustness
from training.config import TrainConfig
from training.configuration import ConfigError, load_config
from training.demo_data import Splits, rendered_png, split_items, write_datasets
from training.features import image_store
from training.openclipart import PNG_ROOT, SVG_ROOT, ClipartItem, assign_captions, read_corpus
from training.pipeline import open_source, timed
from training.runtime import Runtime
from training.sources import SourceError
from training.train import ResumeError, run_training
from vse.cli import USER_ERRORS, add_debug_flag, run_cli
from vse.model import VSEModel
from vse.serving.gallery import (
    GalleryEmbeddings,
    embed_tag_lists,
    load_gallery,
    model_digest,
    thumbnail_bytes,
    write_gallery,
)

# Refused input of a build, reported as one line (vse.cli.run_cli).
CLI_ERRORS = (*USER_ERRORS, ConfigError, SourceError, ResumeError)
log = logging.getLogger("training.build_demo")
ABLATION_RUNS = Path(__file__).resolve().parents[1] / "docs" / "ablation_runs.json"
MAX_FILE_BYTES = 10_000_000
MAX_TOTAL_BYTES = 50_000_000


def select_subset(items: list[ClipartItem], limit: int | None) -> list[ClipartItem]:
    """A deterministic subset that keeps the captioned share (for quick builds and CI)."""
    if limit is None or limit >= len(items):
        return items
    captioned = [i for i in items if i.captions]
    other = [i for i in items if not i.captions]
    take = min(len(captioned), max(limit // 2, round(limit * len(captioned) / len(items))))
    return sorted(captioned[:take] + other[: limit - take], key=lambda i: i.id)


def item_splits(splits: Splits) -> dict[str, str]:
    """Each gallery image's split: train/validation/test for captioned images, else web."""
    names = {item.id: "web" for item in splits.web}
    for name in ("train", "validation", "test"):
        names.update({item.id: name for item in getattr(splits, name)})
    return names


def gallery_items(splits: Splits) -> list[ClipartItem]:
    seen: dict[str, ClipartItem] = {}
    for item in splits.train + splits.validation + splits.test + splits.web:
        seen.setdefault(item.id, item)
    return sorted(seen.values(), key=lambda i: i.id)


def gallery_embeddings(
    model: VSEModel, config: TrainConfig, items: list[ClipartItem]
) -> tuple[list[ClipartItem], torch.Tensor]:
    """Image embeddings of the gallery from the cached features of the full-size images.

    Images whose file could not be read (no valid cached features) are left out.
    """
    runtime, features = Runtime(), {}
    sources = [config.data.captions, config.data.validation, config.data.test, config.data.web]
    for source in sources:
        prepared = open_source(source, "tags" if source is config.data.web else "captions")
        store = image_store(model, prepared.ds, source, config.data, runtime, progress=False, batch_size=64)
        valid = store.valid()
        for row, image_id in enumerate(prepared.table.ids):
            if valid[row] and image_id not in features:
                features[image_id] = (store, row)
    kept = [item for item in items if item.id in features]
    if len(kept) < len(items):
        log.warning("gallery: %d unreadable images left out", len(items) - len(kept))
    rows = torch.stack([torch.from_numpy(store.gather([row])[0]) for store, row in (features[i.id] for i in kept)])
    return kept, model.eval().encode_image(rows, batch_size=512)


def write_assets(model_dir: Path, config: TrainConfig, splits: Splits, assets: Path) -> dict[str, int]:
    """Model, gallery, caption pool and embeddings into ``assets`` (replacing what was there)."""
    model = VSEModel.from_pretrained(model_dir)
    if ABLATION_RUNS.is_file():  # the recipe's measured robustness curve goes on the model card
        model.config.extra["robustness"] = recipe_robustness(json.loads(ABLATION_RUNS.read_text()), "openclipart")
        model.config.extra["robustness_source"] = (
            "The default recipe on openclipart in the project's ablation (docs/RESULTS.md), "
            "each level retrained at the ablation's budget; not this checkpoint."
        )
    for name in ("model", "gallery", "index"):
        shutil.rmtree(assets / name, ignore_errors=True)
    model.save_pretrained(assets / "model")
    items, image_emb = gallery_embeddings(model, config, gallery_items(splits))
    split_of = item_splits(splits)
    rows = (
        {"id": i.id, "image": thumbnail_bytes(rendered_png(i.png)), "title": i.title, "captions": i.captions, "tags": i.tags,
         "category": i.category, "split": split_of[i.id]}
        for i in items
    )  # fmt: skip
    write_gallery(rows, assets / "gallery")
    gallery, _ = load_gallery(assets / "gallery")
    caption_emb = model.encode_text(gallery.caption_texts, batch_size=256)
    digest = model_digest(assets / "model")
    tag_emb = embed_tag_lists(model, gallery)
    GalleryEmbeddings(image_emb, caption_emb, digest, gallery.fingerprint, tag_emb).save(assets / "index")
    return check_sizes(assets)


def check_sizes(assets: Path) -> dict[str, int]:
    sizes = {p.relative_to(assets).as_posix(): p.stat().st_size for p in assets.rglob("*") if p.is_file()}
    too_big = {name: size for name, size in sizes.items() if size >= MAX_FILE_BYTES}
    total = sum(sizes.values())
    if too_big or total >= MAX_TOTAL_BYTES:
        raise RuntimeError(f"assets too large: total {total:,} bytes, files over 10 MB: {too_big}")
    log.info("assets: %d files, %.1f MB", len(sizes), total / 1e6)
    return sizes


def train_config(args: argparse.Namespace) -> TrainConfig:
    data = Path(args.out)
    overrides = [
        f"--data.captions.path={data / 'captions'}",
        f"--data.validation.path={data / 'captions'}",
        f"--data.test.path={data / 'captions'}",
        f"--data.web.path={data / 'web'}",
        f"--data.cache_dir={args.cache_dir}",
        f"--output_dir={args.run_dir}",
        f"--model.text_encoder={args.text_encoder}",
        f"--seed={args.seed}",
        "--resume=false",
        *args.train_overrides,
    ]
    if args.text_encoder == "gru":
        overrides += ["--model.word_dim=300", "--data.min_word_frequency=2"]
    return load_config(TrainConfig, args.config, overrides)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training.build_demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--svg-root", default=str(SVG_ROOT), help="openclipart-svg folder (metadata)")
    parser.add_argument("--png-root", default=str(PNG_ROOT), help="openclipart-png folder (renderings)")
    parser.add_argument("--out", default="data/openclipart", help="where the datasets are written")
    parser.add_argument("--assets", default="assets", help="where the app's files are written")
    parser.add_argument("--cache-dir", default="cache/openclipart")
    parser.add_argument("--run-dir", default="runs/demo")
    parser.add_argument("--config", default="configs/offline_default.yaml")
    parser.add_argument("--text-encoder", choices=("transformer", "gru"), default="transformer",
                        help="default: the encoder that measured better in docs/RESULTS.md")  # fmt: skip
    parser.add_argument("--limit", type=int, default=None, help="use a deterministic subset of this many images")
    parser.add_argument("--test-size", type=int, default=1000)
    parser.add_argument("--validation-size", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-only", action="store_true", help="write the datasets and stop")
    parser.add_argument("train_overrides", nargs="*", help="extra --key=value training overrides (after --)")
    add_debug_flag(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run_cli(lambda: build_demo(args), debug=args.debug, expected=CLI_ERRORS)


def build_demo(args: argparse.Namespace) -> int:
    """Datasets, then (unless --data-only) the trained model and the app's assets."""
    svg_root, png_root = Path(args.svg_root), Path(args.png_root)
    if not svg_root.is_dir() or not png_root.is_dir():
        print("error: the Openclipart corpus is missing; install it with: apt-get install openclipart-svg openclipart-png",
              file=sys.stderr)  # fmt: skip
        return 2
    with timed("read corpus"):
        items, skipped = read_corpus(svg_root, png_root)
        assign_captions(items)  # over the whole corpus: repeated titles are counted there
        items = select_subset(items, args.limit)
    log.info("%d images (%d captioned); skipped %s", len(items), sum(bool(i.captions) for i in items), dict(skipped))
    with timed("write datasets"):
        splits = split_items(items, args.test_size, args.validation_size, args.seed)
        write_datasets(splits, Path(args.out))
    if args.data_only:
        return 0
    config = train_config(args)
    with timed("train"):
        model_dir = run_training(config)
    with timed("assets"):
        write_assets(model_dir, config, splits, Path(args.assets))
    print(f"assets written to {args.assets}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
