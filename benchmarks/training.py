"""Training benchmark: a stage-one epoch on cached features at growing data sizes.

    python -m benchmarks.training [--sizes 10000 100000]

Pairs read their image features (1280-d, EfficientNet-Lite0) and text features
(384-d, MiniLM) from on-disk feature stores, as real runs do; each epoch has the
caption and pseudo-tag terms of stage one.  Reports pairs/s, the share of time
spent outside the model step (fetching batches), seconds per epoch against the
smallest size (linear scaling means the ratio equals the size ratio), and peak
memory.  Writes the "training" section of docs/PERFORMANCE.md.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import machine_line, markdown_table, write_section
from training.cache import FeatureStore
from training.config import LossConfig, OptimConfig
from training.loop import BatchStream, EmbeddingStep, Term, train_steps
from training.pairs import ImageInputs, PairSet, TextInputs
from training.runtime import Runtime
from vse import VSEConfig, VSEModel


def random_store(folder: Path, rows: int, dim: int, seed: int) -> FeatureStore:
    store = FeatureStore(folder, shard_size=8192)
    rng = np.random.default_rng(seed)
    for shard in range(store.num_shards(rows)):
        count = min(store.shard_size, rows - shard * store.shard_size)
        store.write_shard(shard, rng.random((count, dim), dtype=np.float32), np.ones(count, dtype=bool))
    store.mark_complete(rows, dim, {})
    return store


def pair_set(
    name: str, images: ImageInputs, text_store: FeatureStore, pairs: int, num_images: int, seed: int
) -> PairSet:
    rng = np.random.default_rng(seed)
    rows = rng.integers(num_images, size=pairs)
    texts = [""] * pairs
    return PairSet(name, images, rows, texts, text_inputs=TextInputs(texts, text_store, np.arange(pairs)))


def epoch(model: VSEModel, size: int, folder: Path) -> dict:
    runtime = Runtime()
    images = ImageInputs(store=random_store(folder / "images", size // 5, 1280, 0))
    captions = pair_set("captions", images, random_store(folder / "captions", size, 384, 1), size, size // 5, 2)
    tags = pair_set("pseudo_tags", images, random_store(folder / "tags", size, 384, 3), size, size // 5, 4)
    optim, loss = OptimConfig(), LossConfig(kind="hinge")
    terms = [Term(captions, BatchStream(np.arange(size), optim.batch_size, 0, runtime)),
             Term(tags, BatchStream(np.arange(size), optim.batch_size, 1, runtime))]  # fmt: skip
    step = EmbeddingStep(model, loss)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=optim.lr)
    steps = terms[0].stream.batches_per_pass()
    start = time.perf_counter()
    stats = train_steps(step, optimizer, terms, steps, loss, True, optim.grad_clip, runtime, progress=False)
    seconds = time.perf_counter() - start
    return {"pairs": size, "steps": steps, "seconds": seconds, "pairs_per_s": size / seconds,
            "data_share": stats["data_share"], "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.training", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--no-report", action="store_true")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    model = VSEModel(VSEConfig(embed_dim=256)).train()
    rows = []
    with tempfile.TemporaryDirectory() as root:
        for size in args.sizes:
            result = epoch(model, size, Path(root) / str(size))
            rows.append(result)
            print(f"{size:>8} pairs: {result['seconds']:.2f}s, {result['pairs_per_s']:.0f} pairs/s, "
                  f"{100 * result['data_share']:.1f}% outside the model step")  # fmt: skip
    base = rows[0]
    table = [[r["pairs"], r["steps"], r["seconds"], r["pairs_per_s"], 100 * r["data_share"],
              r["seconds"] / base["seconds"], r["pairs"] / base["pairs"], r["peak_rss_mb"]] for r in rows]  # fmt: skip
    if not args.no_report:
        command = "python -m benchmarks.training " + " ".join(argv if argv is not None else sys.argv[1:])
        body = f"""## Training

`{command.strip()}` · {machine_line()} · one stage-one epoch (caption + pseudo-tag terms, batch 128,
hardest negatives) of the offline default's trainable parts on cached features read from disk.

{markdown_table(["pairs", "steps", "epoch s", "pairs/s", "% outside model step", "time ratio", "size ratio", "peak RSS MB"], table)}
"""
        write_section("training", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
