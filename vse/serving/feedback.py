"""Reviewers' votes on web tags, stored at once and never lost.

One SQLite database in write-ahead-log mode (concurrent readers and writers,
durable commits).  A vote is (user, time, image id, tag, verdict, model
revision); one row per (user, image, tag), so the same vote twice is
idempotent and a reviewer who changes their mind replaces their earlier vote.
A vote is acknowledged only after its transaction committed.

Every vote call is also logged as an event (``vote_events``), and the rate limit
counts events, so flipping one tag back and forth is not free; the limit check
and the insert happen in one transaction, so a burst cannot slip past it.
"""

from __future__ import annotations

import collections
import sqlite3
import threading
import time
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from vse.text import normalize_tag

VERDICTS = ("wrong", "right", "added")
MAX_FIELD = 200
SQL_CHUNK = 500  # image ids per IN (...) query, well under SQLite's parameter limit

SCHEMA = """
CREATE TABLE IF NOT EXISTS votes (
    user TEXT NOT NULL,
    time REAL NOT NULL,
    image_id TEXT NOT NULL,
    tag TEXT NOT NULL,
    verdict TEXT NOT NULL CHECK (verdict IN ('wrong', 'right', 'added')),
    model_revision TEXT NOT NULL,
    PRIMARY KEY (user, image_id, tag)
);
CREATE INDEX IF NOT EXISTS votes_by_image ON votes (image_id);
CREATE INDEX IF NOT EXISTS votes_by_user_time ON votes (user, time);
CREATE TABLE IF NOT EXISTS vote_events (user TEXT NOT NULL, time REAL NOT NULL);
CREATE INDEX IF NOT EXISTS vote_events_by_user_time ON vote_events (user, time);
"""
# Characters that reorder or hide text: refused everywhere, so that what a
# reviewer sees is what is stored (bidi overrides and isolates, zero-width marks).
INVISIBLE = frozenset("\u200b\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\ufeff")


class VoteError(ValueError):
    """A vote that cannot be stored; the message can be shown to the reviewer."""


class RateLimited(VoteError):
    """The reviewer cast too many votes in the last minute."""


@dataclass(frozen=True)
class Vote:
    user: str
    time: float
    image_id: str
    tag: str
    verdict: str
    model_revision: str


def _clean_field(value: str, name: str) -> str:
    if not isinstance(value, str):
        raise VoteError(f"the {name} must be a string, got {type(value).__name__}")
    value = value.strip()
    if not value:
        raise VoteError(f"the {name} is empty")
    if len(value) > MAX_FIELD:
        raise VoteError(f"the {name} is longer than {MAX_FIELD} characters")
    if any(unicodedata.category(ch) == "Cc" or ch in INVISIBLE for ch in value):
        raise VoteError(f"the {name} contains control or invisible characters")
    return value


def clean_user_name(value: str, max_length: int = 100) -> str:
    """A reviewer name as stored: whitespace collapsed; refused (never truncated) when too long or unprintable."""
    if not isinstance(value, str):
        raise VoteError(f"the reviewer name must be a string, got {type(value).__name__}")
    if any(unicodedata.category(ch) in ("Cc", "Cf") or ch in INVISIBLE for ch in value):
        raise VoteError("the reviewer name contains control or invisible characters")
    name = " ".join(value.split())
    if not name:
        raise VoteError("the reviewer name is empty")
    if len(name) > max_length:
        raise VoteError(f"the reviewer name is longer than {max_length} characters")
    return name


class FeedbackStore:
    """Thread-safe access to the votes database (one connection per thread)."""

    def __init__(self, path: str | Path, *, busy_timeout_s: float = 30.0):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.busy_timeout_s = busy_timeout_s
        self._local = threading.local()
        # Called with each vote that changed the database, after its commit (e.g. the Hub backup's journal).
        self.listeners: list[Callable[[Vote], None]] = []
        with self._connection() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=self.busy_timeout_s, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA synchronous=FULL")  # an acknowledged vote survives a crash or power loss
        db.execute(f"PRAGMA busy_timeout={int(self.busy_timeout_s * 1000)}")
        return db

    @contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        db = getattr(self._local, "db", None)
        if db is None:
            db = self._local.db = self._connect()
        yield db

    def add_vote(
        self, user: str, image_id: str, tag: str, verdict: str, model_revision: str, *, per_minute: int | None = None
    ) -> Vote:
        """Store one vote durably and return it.

        Raises:
            VoteError: bad input.
            RateLimited: ``user`` already cast ``per_minute`` votes in the last minute.
        """
        if not isinstance(verdict, str) or verdict not in VERDICTS:
            raise VoteError(f"the verdict must be one of {VERDICTS}")
        normalized = normalize_tag(_clean_field(tag, "tag"))
        if not normalized:
            raise VoteError("the tag is empty")
        vote = Vote(
            _clean_field(user, "user name"), time.time(), _clean_field(image_id, "image id"), normalized, verdict,
            _clean_field(model_revision, "model revision"),
        )  # fmt: skip
        with self._connection() as db:
            db.execute("BEGIN IMMEDIATE")  # the limit check and the insert see the same state
            try:
                if per_minute is not None and self._events_since(db, vote.user, vote.time - 60) >= per_minute:
                    raise RateLimited(f"too many votes: at most {per_minute} a minute")
                db.execute("INSERT INTO vote_events (user, time) VALUES (?, ?)", (vote.user, vote.time))
                changed = db.execute(
                    "INSERT INTO votes (user, time, image_id, tag, verdict, model_revision) VALUES (?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (user, image_id, tag) DO UPDATE SET time = excluded.time, "
                    "verdict = excluded.verdict, model_revision = excluded.model_revision "
                    "WHERE votes.verdict != excluded.verdict",
                    (vote.user, vote.time, vote.image_id, vote.tag, vote.verdict, vote.model_revision),
                ).rowcount
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        if changed:
            for listener in self.listeners:
                listener(vote)
        return vote

    def merge(self, votes: Iterable[Vote]) -> int:
        """Merge votes from elsewhere (a backup): each (user, image, tag) keeps its latest vote.

        Idempotent; malformed votes are skipped.  Returns how many rows changed.
        """
        rows = []
        for vote in votes:
            try:
                if vote.verdict not in VERDICTS or not isinstance(vote.time, (int, float)):
                    raise VoteError("bad verdict or time")
                rows.append((_clean_field(vote.user, "user name"), float(vote.time), _clean_field(vote.image_id, "image id"),
                             normalize_tag(_clean_field(vote.tag, "tag")), vote.verdict,
                             _clean_field(vote.model_revision, "model revision")))  # fmt: skip
            except VoteError:
                continue
        with self._connection() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                before = db.total_changes
                db.executemany(
                    "INSERT INTO votes (user, time, image_id, tag, verdict, model_revision) VALUES (?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (user, image_id, tag) DO UPDATE SET time = excluded.time, verdict = excluded.verdict, "
                    "model_revision = excluded.model_revision WHERE excluded.time > votes.time",
                    rows,
                )
                changed = db.total_changes - before
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        return changed

    def votes(self, image_id: str | None = None, user: str | None = None) -> list[Vote]:
        query, args = "SELECT user, time, image_id, tag, verdict, model_revision FROM votes", []
        conditions = []
        if image_id is not None:
            conditions.append("image_id = ?")
            args.append(image_id)
        if user is not None:
            conditions.append("user = ?")
            args.append(user)
        if conditions:
            query += " WHERE " + " AND ".join(conditions)
        with self._connection() as db:
            return [Vote(*row) for row in db.execute(query + " ORDER BY time, rowid", args)]

    def count(self) -> int:
        with self._connection() as db:
            return int(db.execute("SELECT COUNT(*) FROM votes").fetchone()[0])

    def reviewed_images(self, user: str | None = None, image_ids: Sequence[str] | None = None) -> set[str]:
        """The images ``user`` (anyone, without a user) voted on; only among ``image_ids`` when given (indexed)."""
        if image_ids is None:
            query = "SELECT DISTINCT image_id FROM votes" + (" WHERE user = ?" if user else "")
            with self._connection() as db:
                return {row[0] for row in db.execute(query, (user,) if user else ())}
        found: set[str] = set()
        with self._connection() as db:
            by_user = ("user = ? AND ", (user,)) if user else ("", ())
            for chunk in _chunks(image_ids):
                query = (
                    f"SELECT DISTINCT image_id FROM votes WHERE {by_user[0]}image_id IN ({','.join('?' * len(chunk))})"
                )
                found.update(row[0] for row in db.execute(query, by_user[1] + chunk))
        return found

    @staticmethod
    def _events_since(db: sqlite3.Connection, user: str, since: float) -> int:
        row = db.execute("SELECT COUNT(*) FROM vote_events WHERE user = ? AND time > ?", (user, since))
        return int(row.fetchone()[0])

    def recent_votes(self, user: str, seconds: float) -> int:
        """How many votes ``user`` cast in the last ``seconds``, every call counted (for rate limiting)."""
        with self._connection() as db:
            return self._events_since(db, user, time.time() - seconds)

    def reviewer_counts(self, image_ids: Sequence[str] | None = None) -> dict[str, int]:
        """How many different people voted on each image (images without votes are absent).

        With ``image_ids``, only those images are counted, through the index on
        image ids: the cost follows their number, not the number of votes stored.
        """
        query = "SELECT image_id, COUNT(DISTINCT user) FROM votes"
        with self._connection() as db:
            if image_ids is None:
                return {image_id: int(count) for image_id, count in db.execute(query + " GROUP BY image_id")}
            counts: dict[str, int] = {}
            for chunk in _chunks(image_ids):
                rows = db.execute(f"{query} WHERE image_id IN ({','.join('?' * len(chunk))}) GROUP BY image_id", chunk)
                counts.update((image_id, int(count)) for image_id, count in rows)
            return counts


def _chunks(values: Sequence[str], size: int = SQL_CHUNK) -> Iterator[tuple[str, ...]]:
    """``values`` in tuples of at most ``size``: SQLite limits the parameters of one statement."""
    values = list(dict.fromkeys(values))
    for start in range(0, len(values), size):
        yield tuple(values[start : start + size])


TIE_ORDER = {"right": 0, "added": 1, "wrong": 2}  # lower wins a tie


def majority_table(votes: list[Vote]) -> list[dict]:
    """One row per (image, tag): winning verdict, its votes, all votes."""
    tallies: dict[tuple[str, str], collections.Counter] = collections.defaultdict(collections.Counter)
    for vote in votes:
        tallies[(vote.image_id, vote.tag)][vote.verdict] += 1
    rows = []
    for (image_id, tag), counts in sorted(tallies.items()):
        verdict, count = min(counts.items(), key=lambda item: (-item[1], TIE_ORDER[item[0]]))
        rows.append(
            {"image_id": image_id, "tag": tag, "verdict": verdict, "votes": count, "total_votes": sum(counts.values())}
        )
    return rows
