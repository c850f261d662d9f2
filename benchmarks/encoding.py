"""Encoding benchmark: images/s and sentences/s, batched against a naive loop, and the FLOP bound.

    python -m benchmarks.encoding [--images 256] [--sentences 2000]

Images are real encoded files (the demo gallery's WebP thumbnails), so decoding
and preprocessing are included; the feature-cache build (threaded decoding plus
the backbone, written to a store) is measured end to end.  The FLOP bound is the
matrix-multiply rate measured in the same run divided by the backbone's FLOPs per
image (counted with torch's FlopCounterMode).  Writes the "encoding" section of
docs/PERFORMANCE.md and docs/perf_encoding.png.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import REPORT, figure, machine_line, markdown_table, matmul_gflops, write_section
from vse import VSEConfig, VSEModel
from vse.vocab import build_vocabulary

ROOT = Path(__file__).resolve().parents[1]


def demo_images(count: int) -> list[bytes]:
    from vse.serving.gallery import load_gallery

    gallery, _ = load_gallery(ROOT / "assets" / "gallery")
    return [gallery.items[i % len(gallery)].image for i in range(count)]


def demo_sentences(count: int) -> list[str]:
    from vse.serving.gallery import load_gallery

    gallery, _ = load_gallery(ROOT / "assets" / "gallery")
    texts = [*gallery.caption_texts, *(", ".join(tags) for tags in gallery.tag_lists() if tags)]
    return [texts[i % len(texts)] for i in range(count)]


@dataclass
class TimedPath:
    """One way of encoding ``count`` items; ``setup`` selects it (e.g. the runtime) before each run."""

    label: str
    count: int
    run: Callable[[], object]
    setup: Callable[[], None] = lambda: None


def interleaved_rates(paths: list[TimedPath], rounds: int) -> dict[str, tuple[float, float]]:
    """Median items/s of each path, and the median of its per-round ratio to the first path.

    Every round times each path once, so a slow moment of the shared machine falls
    on all paths alike instead of on whichever happened to run then.
    """
    rates: dict[str, list[float]] = {path.label: [] for path in paths}
    for _ in range(rounds):
        for path in paths:
            path.setup()
            start = time.perf_counter()
            path.run()
            rates[path.label].append(path.count / (time.perf_counter() - start))
    baseline = rates[paths[0].label]
    return {
        label: (float(np.median(values)), float(np.median([v / b for v, b in zip(values, baseline, strict=True)])))
        for label, values in rates.items()
    }


def backbone_gflops(model: VSEModel) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    backbone = model.image_encoder.backbone
    size = getattr(backbone, "image_size", 224)
    runtime, backbone.runtime = backbone.runtime, "torch"  # FLOPs are counted on PyTorch operators
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model.image_features(torch.zeros(1, 3, size, size))
    backbone.runtime = runtime
    return counter.get_total_flops() / 1e9


def naive_encoder(model: VSEModel):
    """The straightforward loop: decode, preprocess, NCHW forward, project, one image at a time."""
    import copy

    from vse.images import load_image
    from vse.model import l2_normalize

    encoder = copy.deepcopy(model.image_encoder).eval()
    encoder.backbone.trunk = encoder.backbone.trunk.to(memory_format=torch.contiguous_format)
    backbone = encoder.backbone

    @torch.no_grad()
    def encode(image: bytes) -> torch.Tensor:
        pixels = backbone.preprocess([load_image(image)]).contiguous()
        features = backbone.trunk.extract_features(pixels).mean(dim=(2, 3))
        return l2_normalize(encoder.projection(features))

    return encode


def image_rows(model: VSEModel, images: list[bytes], rounds: int) -> list[list]:
    """[input, path, images/s, × naive] for the naive loop and the library's paths."""
    backbone = model.image_encoder.backbone
    naive_encode = naive_encoder(model)
    quarter = images[: len(images) // 4]

    def runtime(name: str) -> Callable[[], None]:
        return lambda: setattr(backbone, "runtime", name)

    paths = [
        TimedPath("naive loop: one image, NCHW, no threads", len(quarter), lambda: [naive_encode(i) for i in quarter]),
        TimedPath("encode_image, batches of 64, PyTorch", len(images),
                  lambda: model.encode_image(images, batch_size=64), runtime("torch")),
        TimedPath("encode_image, batches of 64, ONNX Runtime copy", len(images),
                  lambda: model.encode_image(images, batch_size=64), runtime("auto")),
        TimedPath("feature-cache build (threads + store), ONNX Runtime", len(images),
                  lambda: build_cache(model, images), runtime("auto")),
    ]  # fmt: skip
    for path in paths:  # warm-up, and the one-off export of the ONNX copy
        path.setup()
        path.run()
    measured = interleaved_rates(paths, rounds)
    backbone.runtime = "auto"
    return [["images", label, value, ratio] for label, (value, ratio) in measured.items()]


def build_cache(model: VSEModel, images: list[bytes]) -> None:
    """The feature-cache build end to end: threaded decoding, the backbone, shard writes."""
    from training.cache import FeatureStore, build_store
    from training.features import ImageBatchEncoder
    from training.sources import ImageResolver

    encoder = ImageBatchEncoder(model, ImageResolver(None), workers=2)
    with tempfile.TemporaryDirectory() as folder:
        build_store(FeatureStore(folder, shard_size=1024), images, encoder, batch_size=64, progress=False)
    encoder.close()


def text_rows(name: str, model: VSEModel, sentences: list[str], rounds: int) -> list[list]:
    """Naive: one sentence per call in PyTorch; then the library's paths (ONNX copy if frozen)."""
    encoder = model.text_encoder
    subset = sentences[: len(sentences) // 4]
    runtimes = {"PyTorch": "torch", "ONNX Runtime copy": "auto"} if hasattr(encoder, "onnx_copy") else {"PyTorch": ""}
    paths = []
    for label, runtime in runtimes.items():
        setup = (lambda r=runtime: setattr(encoder, "runtime", r)) if runtime else (lambda: None)
        paths += [
            TimedPath(f"one per call, {label}", len(subset), lambda: [model.encode_text([s]) for s in subset], setup),
            TimedPath(f"encode_text, length-sorted batches of 64, {label}", len(sentences),
                      lambda: model.encode_text(sentences), setup),
        ]  # fmt: skip
    for path in paths:  # warm-up, and the one-off export of the ONNX copy
        path.setup()
        model.encode_text(sentences[:16])
    measured = interleaved_rates(paths, rounds)
    if hasattr(encoder, "runtime"):
        encoder.runtime = "auto"
    return [[f"sentences ({name})", label, value, ratio] for label, (value, ratio) in measured.items()]


def plot(rows: list[list], path: Path) -> None:
    """Horizontal bars: each path's speed-up over its naive loop, with the 2x target."""
    with figure(path, (8.5, 0.32 * len(rows) + 1.2)) as ax:
        labels = [f"{row[0]}: {row[1]}" for row in rows][::-1]
        ax.barh(labels, [row[3] for row in rows][::-1], color="#4c72b0")
        ax.axvline(2.0, color="#c44e52", linestyle="--", linewidth=1, label="target: 2x the naive loop")
        ax.set_xlabel("× the naive one-at-a-time loop (same run)")
        ax.tick_params(axis="y", labelsize=6)
        ax.legend(fontsize=7, loc="lower right")
        ax.grid(axis="x", alpha=0.3)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.encoding", description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--sentences", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds per path")
    parser.add_argument("--no-report", action="store_true")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    default = VSEModel(VSEConfig(embed_dim=256)).eval()
    gflops, matmul = backbone_gflops(default), matmul_gflops()
    print(f"matmul {matmul:.1f} GFLOP/s; EfficientNet-Lite0 {gflops:.3f} GFLOP/image")
    rows = image_rows(default, demo_images(args.images), args.rounds)
    # The machine is shared: the bound uses the better of two matmul measurements,
    # before and after the image runs, so that a slow moment cannot flatter the share.
    matmul = max(matmul, matmul_gflops())
    bound = matmul / gflops
    rows = [[*row, row[2] / bound] for row in rows]
    print(f"matmul (best of two) {matmul:.1f} GFLOP/s; FLOP bound {bound:.0f} images/s")
    sentences = demo_sentences(args.sentences)
    rows += [[*row, float("nan")] for row in text_rows("MiniLM", default, sentences, args.rounds)]
    gru = VSEModel(
        VSEConfig(text_encoder="gru", embed_dim=1024), tokenizer=build_vocabulary(sentences, min_frequency=2)
    ).eval()
    rows += [[*row, float("nan")] for row in text_rows("GRU", gru, sentences, args.rounds)]
    for row in rows:
        print(f"{row[0]:>20} {row[1]:>40}: {row[2]:8.1f}/s  x{row[3]:.2f} vs naive  {row[4]:.2f} of FLOP bound")
    if not args.no_report:
        command = "python -m benchmarks.encoding " + " ".join(argv if argv is not None else sys.argv[1:])
        body = f"""## Encoding

`{command.strip()}` · {machine_line()} · torch {torch.__version__}, {torch.get_num_threads()} threads.

Matrix multiply measured in the same run: **{matmul:.1f} GFLOP/s**; EfficientNet-Lite0 at 224 px:
**{gflops:.3f} GFLOP per image** (FlopCounterMode); FLOP bound **{bound:.0f} images/s**.
Images are the demo gallery's WebP files, so decoding and preprocessing are included.
Each path is timed {args.rounds} times, interleaved with the others; the table gives the median rate
and the median of the per-round ratios to the naive loop.
The ONNX Runtime copy is what `encode_image` and `encode_text` use by default for frozen backbones on CPUs
(`vse/onnx_copy.py`); the PyTorch row is the same call with `VSE_RUNTIME=torch`.

{markdown_table(["input", "path", "items/s", "× naive", "share of FLOP bound"], rows)}

![speed-up over the naive loop](perf_encoding.png)
"""
        write_section("encoding", body)
        plot(rows, REPORT.parent / "perf_encoding.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
