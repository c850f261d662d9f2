"""Votes that survive anything a Space does: restarts, several replicas, a kill.

A Space without persistent storage starts with an empty disk.  Votes therefore
live in a Hub dataset repository as well, in the layout of ``huggingface_hub``'s
``CommitScheduler`` convention, one append-only file per app process:

    votes/<replica>.jsonl     one JSON vote per line, in the order they were stored

* **Restore before serving**: at start every ``votes/*.jsonl`` of the repository
  is read and merged into the local database (``FeedbackStore.merge``): the
  union of all replicas and of all earlier runs, each (user, image, tag) at its
  latest vote; merging twice changes nothing.
* **Journal as you go**: every vote the store commits is appended (and fsynced)
  to this process's own journal file, named by host, start time and a random
  suffix, so no two processes ever write the same file.
* **Flush**: the journal is uploaded when it grew, every ``every_seconds``
  (default 60, ``VSE_BACKUP_SECONDS``), and once more at a clean shutdown.  A
  hard kill loses at most the votes of the last ``every_seconds``.
* Nothing ever replaces or truncates another process's file, and a process only
  ever uploads a longer version of its own.

``HubFiles`` is the small interface to the repository: ``HubDatasetFiles`` uses
``huggingface_hub``; tests use ``FolderFiles``, a folder standing in for the repo.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import socket
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Protocol

from vse.serving.feedback import FeedbackStore, Vote

log = logging.getLogger(__name__)
PREFIX = "votes/"


class HubFiles(Protocol):
    """The few operations on a Hub dataset repository the backup needs."""

    def list(self, prefix: str) -> list[str]: ...

    def read(self, path: str) -> bytes: ...

    def write(self, path: str, local: Path) -> None: ...


class HubDatasetFiles:
    """A (private) Hub dataset repository, created when missing."""

    def __init__(self, repo_id: str, token: str | None = None, private: bool = True):
        from huggingface_hub import HfApi

        self.repo_id, self.api = repo_id, HfApi(token=token)
        self.api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)

    def list(self, prefix: str) -> list[str]:
        return [name for name in self.api.list_repo_files(self.repo_id, repo_type="dataset") if name.startswith(prefix)]

    def read(self, path: str) -> bytes:
        from huggingface_hub import hf_hub_download

        with tempfile.TemporaryDirectory() as folder:
            local = hf_hub_download(self.repo_id, path, repo_type="dataset", local_dir=folder, force_download=True,
                                    token=self.api.token)  # fmt: skip
            return Path(local).read_bytes()

    def write(self, path: str, local: Path) -> None:
        self.api.upload_file(path_or_fileobj=str(local), path_in_repo=path, repo_id=self.repo_id, repo_type="dataset",
                             commit_message=f"votes: {path}")  # fmt: skip


class FolderFiles:
    """A local folder standing in for the repository (tests, or a shared disk)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def list(self, prefix: str) -> list[str]:
        return sorted(p.relative_to(self.root).as_posix() for p in self.root.rglob("*") if p.is_file()
                      and p.relative_to(self.root).as_posix().startswith(prefix))  # fmt: skip

    def read(self, path: str) -> bytes:
        return (self.root / path).read_bytes()

    def write(self, path: str, local: Path) -> None:
        target = self.root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        temporary.write_bytes(local.read_bytes())
        os.replace(temporary, target)


def parse_votes(data: bytes, source: str) -> list[Vote]:
    """The votes of a journal file; a line cut short by a kill is skipped, not fatal."""
    votes = []
    for number, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            votes.append(Vote(**json.loads(line)))
        except (ValueError, TypeError) as err:
            log.warning("%s line %d is not a vote (%s); skipped", source, number, err)
    return votes


def replica_name() -> str:
    host = "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in socket.gethostname())[:40] or "host"
    return f"{host}-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:8]}"


class VoteBackup:
    """Restores votes at start, journals every new one, and uploads the journal on a timer and at exit."""

    def __init__(self, store: FeedbackStore, files: HubFiles, *, every_seconds: float = 60.0,
                 journal_dir: str | Path | None = None, replica: str | None = None):  # fmt: skip
        self.store, self.files, self.every_seconds = store, files, every_seconds
        self.replica = replica or replica_name()
        self.path_in_repo = f"{PREFIX}{self.replica}.jsonl"
        folder = Path(journal_dir) if journal_dir is not None else store.path.parent / "journal"
        folder.mkdir(parents=True, exist_ok=True)
        self.journal = folder / f"{self.replica}.jsonl"
        self._lock = threading.Lock()
        self._uploaded_size = -1
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def restore(self) -> int:
        """Merge every replica's journal into the local database; returns how many votes were read."""
        votes = []
        for path in self.files.list(PREFIX):
            if path.endswith(".jsonl"):
                votes += parse_votes(self.files.read(path), path)
        changed = self.store.merge(votes)
        log.info("restored %d backed-up votes (%d changed the local database)", len(votes), changed)
        return len(votes)

    def record(self, vote: Vote) -> None:
        """Append a stored vote to this process's journal (called by the store after each commit)."""
        line = json.dumps(vote.__dict__, ensure_ascii=False) + "\n"
        with self._lock, self.journal.open("a", encoding="utf-8") as handle:
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())

    def flush(self) -> bool:
        """Upload the journal if it grew since the last upload; True when something was uploaded."""
        with self._lock:
            size = self.journal.stat().st_size if self.journal.exists() else 0
            if size == 0 or size == self._uploaded_size:
                return False
            snapshot = self.journal.with_suffix(".upload")
            snapshot.write_bytes(self.journal.read_bytes()[:size])
        try:
            self.files.write(self.path_in_repo, snapshot)
        except Exception as err:  # the Hub may be unreachable for a while: keep the journal, try again later
            log.warning("vote backup upload failed (%s); will retry", err)
            return False
        self._uploaded_size = size
        return True

    def start(self) -> VoteBackup:
        """Restore, then journal new votes and flush them every ``every_seconds`` and at exit."""
        self.restore()
        self.store.listeners.append(self.record)
        self._thread = threading.Thread(target=self._run, name="vote-backup", daemon=True)
        self._thread.start()
        atexit.register(self.stop)
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.every_seconds):
            self.flush()

    def stop(self) -> None:
        """A clean shutdown: stop the timer and upload what is left."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=self.every_seconds + 5)
        self.flush()
