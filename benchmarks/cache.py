"""Feature-cache build at growing data sizes: time per image and peak memory, streamed source.

    python -m benchmarks.cache [--sizes 250 500 1000 2000]

Each size is a web-tag set of generated PNG files (256 px shapes) read as a
streamed JSON-lines source, cached end to end (read, decode, EfficientNet-Lite0,
write shards) in a fresh process so that its peak RSS is its own.  Linear
scaling means seconds per image stay constant; a streamed source should keep
peak memory flat as the data grows.  Writes the "cache" section of docs/PERFORMANCE.md.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import machine_line, markdown_table, write_section

ROOT = Path(__file__).resolve().parents[1]


def make_source(folder: Path, size: int) -> Path:
    from vse.testing.shapes import COLOURS, SHAPES, draw

    combos = [(c, s) for c in COLOURS for s in SHAPES]
    lines = []
    for index in range(size):
        colour, shape = combos[index % len(combos)]
        name = f"{index:06d}.png"
        draw(colour, shape, size=256, jitter=index % 40).save(folder / name)
        lines.append(json.dumps({"id": str(index), "image": name, "tags": [colour, shape]}))
    path = folder / "web.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def build_once(size: int) -> dict:
    """Runs in its own process: cache one generated source, report time and peak memory."""
    from training.config import DataConfig, SourceConfig
    from training.features import image_store
    from training.runtime import Runtime
    from training.sources import load_source
    from vse import VSEConfig, VSEModel

    with tempfile.TemporaryDirectory() as root:
        folder = Path(root)
        source = SourceConfig(path=str(make_source(folder, size)), split="train", text_column="tags", id_column="id",
                              image_root=str(folder), streaming=True)  # fmt: skip
        model = VSEModel(VSEConfig(embed_dim=256)).eval()
        baseline_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        start = time.perf_counter()
        ds = load_source(source, kind="tags")
        store = image_store(
            model, ds, source, DataConfig(cache_dir=str(folder / "cache")), Runtime(), progress=False, batch_size=32
        )
        seconds = time.perf_counter() - start
        assert len(store) == size and store.valid().all()
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"images": size, "seconds": seconds, "per_image_ms": 1000 * seconds / size, "peak_mb": peak_mb,
            "growth_mb": peak_mb - baseline_mb}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cache", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[250, 500, 1000, 2000])
    parser.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--no-report", action="store_true")
    args = parser.parse_args(argv)
    if args.one is not None:
        print(json.dumps(build_once(args.one)))
        return 0
    rows = []
    for size in args.sizes:
        output = subprocess.run([sys.executable, "-m", "benchmarks.cache", "--one", str(size)], cwd=ROOT,
                                capture_output=True, text=True, check=True).stdout  # fmt: skip
        result = json.loads(output.strip().splitlines()[-1])
        rows.append(result)
        print(f"{size:>6} images: {result['seconds']:.1f} s, {result['per_image_ms']:.1f} ms/image, "
              f"peak RSS {result['peak_mb']:.0f} MB (+{result['growth_mb']:.0f} MB during the build)")  # fmt: skip
    base = rows[0]
    table = [[r["images"], r["seconds"], r["per_image_ms"], r["seconds"] / base["seconds"], r["images"] / base["images"],
              r["peak_mb"], r["growth_mb"]] for r in rows]  # fmt: skip
    if not args.no_report:
        command = "python -m benchmarks.cache " + " ".join(argv if argv is not None else sys.argv[1:])
        body = f"""## Feature-cache build

`{command.strip()}` · {machine_line()} · generated 256 px PNGs read as a streamed JSON-lines web
source; read, decode, EfficientNet-Lite0 features and shard writes, one fresh process per size.

{markdown_table(["images", "seconds", "ms per image", "time ratio", "size ratio", "peak RSS MB", "growth during build MB"], table)}
"""
        write_section("cache", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
