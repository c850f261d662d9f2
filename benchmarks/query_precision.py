"""Search queries encoded by the int8-quantised text backbone against float32: speed and retrieval.

    python -m benchmarks.query_precision [--models runs/ablation/*/default/seed*/model]
                                         [--queries 300] [--no-report]

For each trained model (a frozen MiniLM text backbone: the project's default), on the
test split of the corpus it was trained on (read from its ``train_config.json``):
every test caption is encoded as the app encodes a search query
(``VSEModel.encode_query``, one caption per call) in float32 and in int8, and
text-to-image retrieval (R@1, R@5, R@10 and their sum) is computed for both against
the same float32 image embeddings.  Image-to-text retrieval is not reported: the app
encodes its caption pool in float32.  Latency is the p50 of one query per call over
``--queries`` captions, both precisions timed in turns in the same run.  Differences
are paired per model; mean ± sample standard deviation.  Writes the "query-precision"
section of docs/PERFORMANCE.md.
"""

from __future__ import annotations

import argparse
import glob
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import machine_line, markdown_table, percentile_ms, write_section

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODELS = "runs/ablation/*/default/seed*/model"
RECALLS = ("t2i_R@1", "t2i_R@5", "t2i_R@10")


def test_source(model_dir: Path):
    """The test split the model's run was trained against (its train_config.json)."""
    from training.config import SourceConfig

    run_config = json.loads((model_dir.parent / "train_config.json").read_text())
    test = run_config["data"]["test"]
    return SourceConfig(**{key: value for key, value in test.items() if key in SourceConfig.__dataclass_fields__})


def query_latencies(model, texts: list[str], precision: str) -> list[float]:
    latencies = []
    for text in texts:
        start = time.perf_counter()
        model.encode_query(text, precision)
        latencies.append(time.perf_counter() - start)
    return latencies


def measure(model_dir: Path, queries: int) -> dict:
    from training.config import DataConfig
    from training.evaluate import embed_split
    from vse import VSEModel
    from vse.metrics import retrieval_metrics

    model = VSEModel.from_pretrained(str(model_dir)).eval()
    source = test_source(model_dir)
    images, _, data = embed_split(model, source, DataConfig(), batch_size=64)
    row = {"model": str(model_dir.relative_to(ROOT) if model_dir.is_relative_to(ROOT) else model_dir)}
    for precision in ("fp32", "int8"):
        texts = torch.cat([model.encode_query(text, precision) for text in data.texts])
        metrics = retrieval_metrics(images, texts, text_image_index=data.owners)
        row[precision] = {name: metrics[name] for name in RECALLS} | {"t2i_sum": sum(metrics[n] for n in RECALLS)}
        row[f"{precision}_embeddings"] = texts
    row["cosine_mean"] = float((row["fp32_embeddings"] * row["int8_embeddings"]).sum(1).mean())
    row["cosine_min"] = float((row["fp32_embeddings"] * row["int8_embeddings"]).sum(1).min())
    del row["fp32_embeddings"], row["int8_embeddings"]
    sample = [data.texts[i] for i in np.random.default_rng(0).permutation(len(data.texts))[:queries]]
    timed = {"fp32": [], "int8": []}
    for start in range(0, len(sample), 20):  # in turns, so that both see the same machine
        for precision in timed:
            timed[precision] += query_latencies(model, sample[start : start + 20], precision)
    row |= {f"{precision}_p50_ms": percentile_ms(values, 50) for precision, values in timed.items()}
    row["images"], row["captions"] = len(data.image_rows), len(data.texts)
    print(f"{row['model']}: t2i sum fp32 {row['fp32']['t2i_sum']:.2f} int8 {row['int8']['t2i_sum']:.2f}; "
          f"p50 {row['fp32_p50_ms']:.2f} / {row['int8_p50_ms']:.2f} ms; cosine {row['cosine_mean']:.4f}", flush=True)  # fmt: skip
    return row


def mean_sd(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:+.2f}" if values else "–"
    return f"{statistics.mean(values):+.2f} ± {statistics.stdev(values):.2f}"


def report(rows: list[dict], command: str) -> str:
    table = markdown_table(
        [
            "model",
            "test images / captions",
            "fp32 t2i R@1/5/10 (sum)",
            "int8 t2i R@1/5/10 (sum)",
            "difference",
            "cosine mean (min)",
            "query p50 ms fp32 → int8",
        ],  # fmt: skip
        [
            [
                r["model"],
                f"{r['images']:,} / {r['captions']:,}",
                " / ".join(f"{r['fp32'][n]:.1f}" for n in RECALLS) + f" ({r['fp32']['t2i_sum']:.1f})",
                " / ".join(f"{r['int8'][n]:.1f}" for n in RECALLS) + f" ({r['int8']['t2i_sum']:.1f})",
                f"{r['int8']['t2i_sum'] - r['fp32']['t2i_sum']:+.2f}",
                f"{r['cosine_mean']:.4f} ({r['cosine_min']:.4f})",
                f"{r['fp32_p50_ms']:.2f} → {r['int8_p50_ms']:.2f}",
            ]
            for r in rows
        ],
    )
    differences = [r["int8"]["t2i_sum"] - r["fp32"]["t2i_sum"] for r in rows]
    speedups = [r["fp32_p50_ms"] / r["int8_p50_ms"] for r in rows]
    return f"""## Query precision: int8 text backbone for search queries

`{command}` · {machine_line()}. Each model's test captions encoded one per call as the app
encodes a search query (`VSEModel.encode_query`), in float32 and with the int8-quantised copy
of the frozen MiniLM backbone (ONNX Runtime dynamic quantisation, MatMul/Gemm weights per
channel); text-to-image recall against the same float32 image embeddings. Latency: p50 of one
query per call, both precisions timed in turns in the same run.

{table}

Paired over the {len(rows)} models: t2i recall sum int8 − fp32 **{mean_sd(differences)}**;
query encoding {statistics.mean(speedups):.2f}× as fast (per model {min(speedups):.2f}–{max(speedups):.2f}×).
The app encodes queries in int8 by default (`--query-precision fp32` or `VSE_QUERY_PRECISION=fp32` turns it off).
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.query_precision", description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=[DEFAULT_MODELS], help="model folders (globs allowed)")
    parser.add_argument("--queries", type=int, default=300, help="captions timed per model and precision")
    parser.add_argument("--no-report", action="store_true", help="print only")
    args = parser.parse_args(argv)
    folders = sorted({Path(path).resolve() for pattern in args.models for path in glob.glob(pattern)})
    if not folders:
        print(f"error: no model folders match {args.models}", file=sys.stderr)
        return 2
    rows = [measure(folder, args.queries) for folder in folders]
    if not args.no_report:
        command = "python -m benchmarks.query_precision " + " ".join(argv if argv is not None else sys.argv[1:])
        write_section("query-precision", report(rows, command.strip()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
