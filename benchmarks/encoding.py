"""Encoding benchmark: images/s and sentences/s, batched against a naive loop, and the FLOP bound.

    python -m benchmarks.encoding [--images 256] [--sentences 2000]

Images are real encoded files (the demo gallery's WebP thumbnails), so decoding
and preprocessing are included; the feature-cache build (threaded decoding plus
the backbone, written to a store) is measured end to end.  The FLOP bound is the
matrix-multiply rate measured in the same run divided by the backbone's FLOPs per
image (counted with torch's FlopCounterMode).  Writes the "encoding" section of
docs/PERFORMANCE.md.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import machine_line, markdown_table, matmul_gflops, write_section
from vse import VSEConfig, VSEModel
from vse.vocab import build_vocabulary

ROOT = Path(__file__).resolve().parents[1]


def demo_images(count: int) -> list[bytes]:
    from vse.gallery import load_gallery

    gallery, _ = load_gallery(ROOT / "assets" / "gallery")
    return [gallery.items[i % len(gallery)].image for i in range(count)]


def demo_sentences(count: int) -> list[str]:
    from vse.gallery import load_gallery

    gallery, _ = load_gallery(ROOT / "assets" / "gallery")
    texts = gallery.caption_texts + [", ".join(item.tags) for item in gallery.items if item.tags]
    return [texts[i % len(texts)] for i in range(count)]


def rate(count: int, fn, repeats: int = 3) -> float:
    """Items per second: the median of several timed runs (warm-up happens in the callers)."""
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        rates.append(count / (time.perf_counter() - start))
    return float(np.median(rates))


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


def image_rows(model: VSEModel, images: list[bytes], bound: float) -> list[list]:
    backbone = model.image_encoder.backbone
    naive_encode = naive_encoder(model)
    naive_encode(images[0])
    quarter = images[: len(images) // 4]
    measured = {
        "naive loop: one image, NCHW, no threads": rate(len(quarter), lambda: [naive_encode(i) for i in quarter])
    }
    for runtime, label in (("torch", "encode_image, batches of 64, PyTorch"),
                           ("auto", "encode_image, batches of 64, ONNX Runtime copy")):  # fmt: skip
        backbone.runtime = runtime
        model.encode_image(images[:8])  # warm-up (and the one-off export)
        measured[label] = rate(len(images), lambda: model.encode_image(images, batch_size=64))
    backbone.runtime = "auto"
    measured["feature-cache build (threads + store), ONNX Runtime"] = cache_build_rate(model, images)
    naive = next(iter(measured.values()))
    return [["images", label, value, value / naive, value / bound] for label, value in measured.items()]


def cache_build_rate(model: VSEModel, images: list[bytes]) -> float:
    from training.cache import FeatureStore, build_store
    from training.features import ImageBatchEncoder
    from training.sources import ImageResolver

    encoder = ImageBatchEncoder(model, ImageResolver(None), workers=2)
    with tempfile.TemporaryDirectory() as folder:
        store = FeatureStore(folder, shard_size=1024)
        start = time.perf_counter()
        build_store(store, images, encoder, batch_size=64, progress=False)
        seconds = time.perf_counter() - start
    encoder.close()
    return len(images) / seconds


def text_rows(name: str, model: VSEModel, sentences: list[str]) -> list[list]:
    """Naive: one sentence per call in PyTorch; then the library's paths (ONNX copy if frozen)."""
    encoder = model.text_encoder
    subset = sentences[: len(sentences) // 4]
    runtimes = ["torch", "auto"] if hasattr(encoder, "onnx_copy") else ["torch"]
    measured = {}
    for runtime in runtimes:
        if hasattr(encoder, "runtime"):
            encoder.runtime = runtime
        label = "PyTorch" if runtime == "torch" else "ONNX Runtime copy"
        model.encode_text(sentences[:16])  # warm-up (and the one-off export)
        measured[f"one per call, {label}"] = rate(len(subset), lambda: [model.encode_text([s]) for s in subset])
        measured[f"encode_text, length-sorted batches of 64, {label}"] = rate(
            len(sentences), lambda: model.encode_text(sentences)
        )
    if hasattr(encoder, "runtime"):
        encoder.runtime = "auto"
    naive = measured["one per call, PyTorch"]
    return [[f"sentences ({name})", label, value, value / naive, float("nan")] for label, value in measured.items()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.encoding", description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--sentences", type=int, default=2000)
    parser.add_argument("--no-report", action="store_true")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    default = VSEModel(VSEConfig(embed_dim=256)).eval()
    gflops, matmul = backbone_gflops(default), matmul_gflops()
    print(f"matmul {matmul:.1f} GFLOP/s; EfficientNet-Lite0 {gflops:.3f} GFLOP/image")
    rows = image_rows(default, demo_images(args.images), 1.0)
    # The machine is shared: the bound uses the better of two matmul measurements,
    # before and after the image runs, so that a slow moment cannot flatter the share.
    matmul = max(matmul, matmul_gflops())
    bound = matmul / gflops
    for row in rows:
        row[4] = row[2] / bound
    print(f"matmul (best of two) {matmul:.1f} GFLOP/s; FLOP bound {bound:.0f} images/s")
    sentences = demo_sentences(args.sentences)
    rows += text_rows("MiniLM", default, sentences)
    gru = VSEModel(
        VSEConfig(text_encoder="gru", embed_dim=1024), tokenizer=build_vocabulary(sentences, min_frequency=2)
    ).eval()
    rows += text_rows("GRU", gru, sentences)
    for row in rows:
        print(f"{row[0]:>20} {row[1]:>40}: {row[2]:8.1f}/s  x{row[3]:.2f} vs naive  {row[4]:.2f} of FLOP bound")
    if not args.no_report:
        command = "python -m benchmarks.encoding " + " ".join(argv if argv is not None else sys.argv[1:])
        body = f"""## Encoding

`{command.strip()}` · {machine_line()} · torch {torch.__version__}, {torch.get_num_threads()} threads.

Matrix multiply measured in the same run: **{matmul:.1f} GFLOP/s**; EfficientNet-Lite0 at 224 px:
**{gflops:.3f} GFLOP per image** (FlopCounterMode); FLOP bound **{bound:.0f} images/s**.
Images are the demo gallery's WebP files, so decoding and preprocessing are included.
The ONNX Runtime copy is what `encode_image` and `encode_text` use by default for frozen backbones on CPUs
(`vse/onnx_copy.py`); the PyTorch row is the same call with `VSE_RUNTIME=torch`.

{markdown_table(["input", "path", "items/s", "× naive", "share of FLOP bound"], rows)}
"""
        write_section("encoding", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
