"""First-start conversion benchmark: a ``datasets`` gallery source written once as the app's shards.

    python -m benchmarks.conversion [--images 20000 100000] [--workdir cache/conversion]

For each size, a ``save_to_disk`` dataset of that many rows is built once in the workdir
(not timed): the demo gallery's images and metadata repeated under new ids, the image
column a ``datasets.Image`` feature, as a Hub image dataset loads.  Then
``vse.serving.gallery.load_gallery(source, state_dir)``, the call ``python app.py
--gallery SOURCE`` makes, runs twice, each in a fresh process: the first start converts
(every row read through ``datasets``, checked, written as gallery shards with their
fingerprint), the second opens the shards it wrote.  Time is the call's, peak memory the
process's VmHWM.  A Hub id takes the same path once ``datasets`` has downloaded it; the
download is not timed (no network here).  Writes the "conversion" section of
docs/PERFORMANCE.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import machine_line, markdown_table, write_section
from benchmarks.startup import gallery_rows

ROOT = Path(__file__).resolve().parents[1]
BUILD_FORMAT = 1  # bump when what ``build_source`` writes changes

# Runs in a fresh process: one load_gallery call, timed, then the process's peak memory.
ONE_START = """
import json, sys, threading, time
from pathlib import Path
from vse.serving.gallery import load_gallery

def status():
    return {l.split(":")[0]: int(l.split()[1]) / 1024 for l in Path("/proc/self/status").read_text().splitlines()
            if l.startswith(("VmHWM:", "RssAnon:", "RssFile:"))}

peak_anon, done = [0.0], threading.Event()
def sample():  # anonymous memory apart from the mapped files' pages, which VmHWM counts too
    while not done.wait(0.05):
        peak_anon[0] = max(peak_anon[0], status()["RssAnon"])
threading.Thread(target=sample, daemon=True).start()
start = time.perf_counter()
gallery, skipped = load_gallery(sys.argv[1], sys.argv[2])
seconds = time.perf_counter() - start
done.set()
end = status()
print(json.dumps({"seconds": seconds, "images": len(gallery), "skipped": skipped, "peak_mb": end["VmHWM"],
                  "peak_anon_mb": max(peak_anon[0], end["RssAnon"])}))
"""


def build_source(folder: Path, size: int) -> Path:
    """A ``save_to_disk`` dataset of ``size`` gallery rows in ``folder/source`` (built once)."""
    import datasets

    source, done = folder / "source", folder / "built.json"
    if done.is_file() and json.loads(done.read_text()) == {"format": BUILD_FORMAT, "images": size}:
        return source
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    features = datasets.Features({
        "id": datasets.Value("string"), "image": datasets.Image(), "title": datasets.Value("string"),
        "captions": datasets.Sequence(datasets.Value("string")), "tags": datasets.Sequence(datasets.Value("string")),
        "category": datasets.Value("string"), "split": datasets.Value("string"),
    })  # fmt: skip

    def rows():
        for row in gallery_rows(size):
            yield {**row, "image": {"bytes": row["image"], "path": None}}

    dataset = datasets.Dataset.from_generator(rows, features=features, cache_dir=str(folder / "cache"))
    dataset.save_to_disk(str(source))
    shutil.rmtree(folder / "cache", ignore_errors=True)
    done.write_text(json.dumps({"format": BUILD_FORMAT, "images": size}))
    return source


def one_start(source: Path, state_dir: Path) -> dict:
    """``load_gallery(source, state_dir)`` in a fresh process: seconds, images, skip counts, peak MB."""
    result = subprocess.run(
        [sys.executable, "-c", ONE_START, str(source), str(state_dir)],
        cwd=ROOT, capture_output=True, text=True, check=False,
    )  # fmt: skip
    if result.returncode != 0:
        raise RuntimeError(f"load_gallery failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def measure(workdir: Path, size: int) -> dict:
    folder = workdir / str(size)
    source = build_source(folder, size)
    state_dir = folder / "state"
    shutil.rmtree(state_dir, ignore_errors=True)  # the first start finds nothing converted
    first = one_start(source, state_dir)
    again = one_start(source, state_dir)
    if first["images"] != size or again["images"] != size:
        raise RuntimeError(f"expected {size} images, got {first['images']} and {again['images']}")
    source_mb = sum(f.stat().st_size for f in source.rglob("*") if f.is_file()) / 1e6
    shards_mb = sum(f.stat().st_size for f in (state_dir / "datasets").rglob("*.parquet")) / 1e6
    return {"images": size, "source_mb": source_mb, "shards_mb": shards_mb, "first_s": first["seconds"],
            "first_peak_mb": first["peak_mb"], "first_anon_mb": first["peak_anon_mb"], "again_s": again["seconds"],
            "again_peak_mb": again["peak_mb"], "again_anon_mb": again["peak_anon_mb"]}  # fmt: skip


def report(rows: list[dict], command: str) -> str:
    table = markdown_table(
        ["images", "source MB", "first start s (converts)", "peak MB (anonymous)", "next start s",
         "peak MB (anonymous)", "shards MB"],
        [[r["images"], r["source_mb"], r["first_s"], f"{r['first_peak_mb']:,.0f} ({r['first_anon_mb']:,.0f})",
          r["again_s"], f"{r['again_peak_mb']:,.0f} ({r['again_anon_mb']:,.0f})", r["shards_mb"]] for r in rows],
    )  # fmt: skip
    rate = rows[-1]["images"] / rows[-1]["first_s"]
    return f"""## First start from a `datasets` source

`{command}` · {machine_line()}. A `save_to_disk` dataset (the demo gallery's images and
metadata repeated under new ids; the image column a `datasets.Image` feature, as a Hub image
dataset loads) given to `python app.py --gallery SOURCE`: the first start converts it (every
row read through `datasets`, checked, written as gallery shards with their fingerprint under
the data folder), later starts open those shards. `vse.serving.gallery.load_gallery` is
timed in a fresh process for each start; peak is the process's VmHWM. A Hub id takes the
same path after `datasets` has downloaded it (not timed: no network here). Peak is the
process's VmHWM, which counts the pages of memory-mapped files as they are read (`datasets`
maps its Arrow files, so a conversion reads the whole source through the page cache);
in brackets the highest anonymous memory (RssAnon, sampled every 50 ms), which is what the
process itself holds.

{table}

The conversion ran at {rate:,.0f} images/s at the largest size.
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.conversion", description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, nargs="+", default=[20_000, 100_000])
    parser.add_argument("--workdir", type=Path, default=ROOT / "cache" / "conversion")
    parser.add_argument("--no-report", action="store_true")
    args = parser.parse_args(argv)
    rows = []
    for size in args.images:
        start = time.perf_counter()
        rows.append(measure(args.workdir, size))
        r = rows[-1]
        print(f"{size:,} images: first start {r['first_s']:.1f} s (peak {r['first_peak_mb']:.0f} MB, anonymous "
              f"{r['first_anon_mb']:.0f}), next {r['again_s']:.2f} s (peak {r['again_peak_mb']:.0f} MB, anonymous "
              f"{r['again_anon_mb']:.0f}); {time.perf_counter() - start:.0f} s with the source build", flush=True)  # fmt: skip
    if not args.no_report:
        command = "python -m benchmarks.conversion " + " ".join(argv if argv is not None else sys.argv[1:])
        write_section("conversion", report(rows, command.strip()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
