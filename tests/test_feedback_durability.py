"""Votes are never lost: many concurrent writer processes, and a writer killed mid-burst."""

from __future__ import annotations

import multiprocessing
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vse.serving.feedback import FeedbackStore

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow
WRITERS, VOTES_EACH = 16, 500


def write_votes(db_path: str, writer: int, count: int) -> None:
    store = FeedbackStore(db_path)
    for index in range(count):
        store.add_vote(f"writer{writer}", f"img{index % 97}", f"tag{index}", "wrong" if index % 2 else "right", "rev")


def test_sixteen_concurrent_writers_lose_and_duplicate_nothing(tmp_path):
    db_path = str(tmp_path / "votes.db")
    FeedbackStore(db_path)  # create the schema once
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=write_votes, args=(db_path, w, VOTES_EACH)) for w in range(WRITERS)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=600)
        assert process.exitcode == 0
    store = FeedbackStore(db_path)
    votes = store.votes()
    keys = {(v.user, v.image_id, v.tag) for v in votes}
    assert len(votes) == len(keys) == WRITERS * VOTES_EACH
    assert keys == {(f"writer{w}", f"img{i % 97}", f"tag{i}") for w in range(WRITERS) for i in range(VOTES_EACH)}


def test_writer_killed_mid_burst_keeps_every_acknowledged_vote(tmp_path):
    db_path = tmp_path / "votes.db"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    writer = subprocess.Popen(
        [sys.executable, "-m", "vse.testing.vote_writer", str(db_path)], stdout=subprocess.PIPE, text=True, env=env
    )
    acknowledged = []
    deadline = time.monotonic() + 120
    while len(acknowledged) < 300 and time.monotonic() < deadline:
        line = writer.stdout.readline()
        if line:
            acknowledged.append(int(line))
    writer.send_signal(signal.SIGKILL)
    rest, _ = writer.communicate(timeout=30)
    acknowledged += [int(line) for line in rest.split()]
    assert writer.returncode == -signal.SIGKILL and len(acknowledged) >= 300
    with sqlite3.connect(db_path) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    stored = {v.tag for v in FeedbackStore(db_path).votes()}
    assert {f"tag{i}" for i in acknowledged} <= stored
