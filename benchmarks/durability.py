"""Feedback durability: concurrent writer processes, a writer killed mid-burst, atomic export.

    python -m benchmarks.durability [--writers 16] [--votes 500]

Runs the same experiments as tests/test_feedback_durability.py and
tests/test_feedback.py, with timings.  Writes the "durability" section of docs/RELIABILITY.md.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.common import machine_line, markdown_table, run_to_completion, write_section
from benchmarks.load import RELIABILITY
from vse.serving.feedback import FeedbackStore

ROOT = Path(__file__).resolve().parents[1]


def write_votes(db_path: str, writer: int, count: int) -> None:
    store = FeedbackStore(db_path)
    for index in range(count):
        store.add_vote(f"writer{writer}", f"img{index % 97}", f"tag{index}", "wrong", "rev")


def concurrent_writers(folder: Path, writers: int, votes: int) -> list:
    db_path = str(folder / "concurrent.db")
    FeedbackStore(db_path)
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=write_votes, args=(db_path, w, votes)) for w in range(writers)]
    seconds = run_to_completion(processes)
    stored = FeedbackStore(db_path).votes()
    distinct = len({(v.user, v.image_id, v.tag) for v in stored})
    failed = sum(p.exitcode != 0 for p in processes)
    return [
        f"{writers} processes × {votes} votes",
        writers * votes,
        len(stored),
        distinct,
        failed,
        f"{seconds:.1f} s ({len(stored) / seconds:.0f} votes/s)",
    ]


def killed_writer(folder: Path) -> list:
    db_path = folder / "killed.db"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    writer = subprocess.Popen(
        [sys.executable, "-m", "vse.testing.vote_writer", str(db_path)], stdout=subprocess.PIPE, text=True, env=env
    )
    acknowledged = []
    while len(acknowledged) < 1000:
        line = writer.stdout.readline()
        if line:
            acknowledged.append(int(line))
    writer.send_signal(signal.SIGKILL)
    rest, _ = writer.communicate()
    acknowledged += [int(line) for line in rest.split()]
    with sqlite3.connect(db_path) as db:
        integrity = db.execute("PRAGMA integrity_check").fetchone()[0]
    stored = {v.tag for v in FeedbackStore(db_path).votes()}
    kept = sum(f"tag{i}" in stored for i in acknowledged)
    return [
        "SIGKILL after ≥1,000 acknowledged votes",
        len(acknowledged),
        kept,
        len(stored),
        0 if integrity == "ok" else 1,
        f"integrity_check: {integrity}",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.durability", description=__doc__.split("\n\n")[0])
    parser.add_argument("--writers", type=int, default=16)
    parser.add_argument("--votes", type=int, default=500)
    parser.add_argument("--no-report", action="store_true")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        concurrent = concurrent_writers(Path(folder), args.writers, args.votes)
        killed = killed_writer(Path(folder))
    print(concurrent)
    print(killed)
    if not args.no_report:
        command = "python -m benchmarks.durability " + " ".join(argv if argv is not None else sys.argv[1:])
        body = f"""## Feedback durability

`{command.strip()}` · {machine_line()} · SQLite in WAL mode, `synchronous=FULL`, one transaction per vote.

{markdown_table(["experiment", "votes sent / acknowledged", "votes found", "distinct votes", "failed writers / corrupt", "notes"], [concurrent, killed])}

An interrupted export leaves the previous corrections table intact: the table is
written to a temporary folder and swapped in (`pytest tests/test_feedback.py -k atomic`).

"""
        write_section("durability", body, RELIABILITY)
    return 0


if __name__ == "__main__":
    sys.exit(main())
