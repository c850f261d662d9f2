"""Where a reviewer goes next in the review queue, without reading every vote.

The review queue is a fixed order of gallery images; an image is *done* once
``need`` different people voted on it, and a reviewer is offered the first image
that is neither done nor already reviewed by them.  Reading every vote to decide
that (one ``GROUP BY`` over the whole table, then a walk over the queue from its
start) costs time in proportion to the reviews already stored: about 2 s for
each ``/review_next`` once 50,000 images of a 100,000-image gallery were
reviewed (docs/PERFORMANCE.md, "Review queue progress").

Votes are never deleted, so an image that is done stays done and the queue's
*done prefix* (every position before it is done) only moves forward.
``ReviewProgress`` remembers that prefix and checks the positions after it a
chunk at a time with indexed queries (``FeedbackStore.reviewer_counts`` and
``reviewed_images`` restricted to the chunk's images), the chunk doubling while
it finds nothing; the prefix is found once, from every vote, when the tracker
is made (at the first review request).  Finding the next image then costs about
the number of images handed out but not finished, plus those this reviewer
reviewed that still need others, not the number of votes.

``Leases`` keep an image handed to one reviewer from the others for a while, so
that reviewers working at the same time are given different images.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from itertools import islice

from vse.serving.feedback import FeedbackStore

FIRST_CHUNK = 8
LARGEST_CHUNK = 4096
SWEEP_EVERY = 256  # grants between two sweeps of expired leases


def scan_order(first: int, length: int, done_before: int) -> Iterator[int]:
    """Queue positions from ``first`` on, wrapping around, each once, leaving out ``[0, done_before)``."""
    if length <= 0:
        return
    first %= length
    done_before = min(max(done_before, 0), length)
    if first < done_before:
        yield from range(done_before, length)
    else:
        yield from range(first, length)
        yield from range(done_before, first)


class Leases:
    """Images handed to reviewers who have not voted on them yet, each kept from other reviewers a while.

    Without them, reviewers who ask at the same time are all given the queue's
    first open image and work through the same images in step.  A lease lasts
    ``seconds`` from the last time its holder was given the image, ends when they
    vote on it or skip it, and lives in this process only (one Space replica).
    ``seconds`` 0 turns leasing off.
    """

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic):
        if seconds < 0:
            raise ValueError("lease seconds must not be negative")
        self.seconds, self.clock = seconds, clock
        self._held: dict[str, dict[str, float]] = {}  # image id -> {reviewer: expiry}
        self._grants = 0
        self._lock = threading.Lock()

    def others(self, image_id: str, user: str | None) -> int:
        """How many reviewers other than ``user`` hold an unexpired lease on ``image_id``."""
        now = self.clock()
        with self._lock:
            return sum(who != user and until > now for who, until in self._held.get(image_id, {}).items())

    def grant(self, image_id: str, user: str | None) -> None:
        """``user`` was given ``image_id``: keep it from others for ``seconds`` (nothing for an unknown user)."""
        if self.seconds <= 0 or user is None:
            return
        now = self.clock()
        with self._lock:
            self._held.setdefault(image_id, {})[user] = now + self.seconds
            self._grants += 1
            if self._grants % SWEEP_EVERY == 0:
                self._sweep(now)

    def release(self, image_id: str, user: str | None) -> None:
        """``user`` voted on or skipped ``image_id``: their lease ends."""
        with self._lock:
            holders = self._held.get(image_id)
            if holders is not None and holders.pop(user, None) is not None and not holders:
                del self._held[image_id]

    def held(self) -> int:
        """Unexpired leases."""
        now = self.clock()
        with self._lock:
            return sum(until > now for holders in self._held.values() for until in holders.values())

    def _sweep(self, now: float) -> None:
        for image_id in list(self._held):
            holders = {who: until for who, until in self._held[image_id].items() if until > now}
            if holders:
                self._held[image_id] = holders
            else:
                del self._held[image_id]


class ReviewProgress:
    """The next position of one queue that a reviewer should see, for one store and one ``need``."""

    def __init__(
        self,
        store: FeedbackStore,
        queue: Sequence[int],
        ids_of: Callable[[Sequence[int]], list[str]],
        need: int,
        leases: Leases | None = None,
    ):
        """``ids_of``: the image ids of some gallery rows, in their order (one call for many rows).

        ``leases``: images handed out and not voted on yet count as reviewed for the others (none by default).
        """
        if need < 1:
            raise ValueError("need must be at least 1")
        self.store, self.queue, self.ids_of, self.need = store, queue, ids_of, need
        self.leases = leases if leases is not None else Leases(0)
        self._lock = threading.Lock()
        self.done_before = self._done_prefix()  # every queue position before this one is done

    def _done_prefix(self) -> int:
        """The done prefix from one pass over every vote: once per queue, so that a restart over many stored
        reviews does not catch up a chunk at a time."""
        counts = self.store.reviewer_counts()
        if not counts:
            return 0
        for start in range(0, len(self.queue), LARGEST_CHUNK):
            ids = self.ids_of(self.queue[start : start + LARGEST_CHUNK])
            for offset, image_id in enumerate(ids):
                if counts.get(image_id, 0) < self.need:
                    return start + offset
        return len(self.queue)

    def matches(self, store: FeedbackStore, queue: Sequence[int], need: int) -> bool:
        return self.store is store and self.queue is queue and self.need == need

    def next_position(self, first: int, user: str | None) -> int | None:
        """The first position from ``first`` on (wrapping) that needs ``user``'s review, leased to them.

        Images that others hold leases on count as reviewed by them; when only
        such images are left, the first of them is given all the same (a lease
        may be abandoned).  None when no image needs ``user``.
        """
        positions = scan_order(first, len(self.queue), self.done_before)
        chunk, held = FIRST_CHUNK, None
        while batch := list(islice(positions, chunk)):
            ids = self.ids_of([self.queue[position] for position in batch])
            counts = self.store.reviewer_counts(ids)
            mine = self.store.reviewed_images(user, ids) if user else set()
            for position, image_id in zip(batch, ids, strict=True):
                count = counts.get(image_id, 0)
                if count >= self.need:
                    self._done(position)
                elif image_id in mine:
                    continue
                elif count + self.leases.others(image_id, user) >= self.need:
                    held = (position, image_id) if held is None else held
                else:
                    self.leases.grant(image_id, user)
                    return position
            chunk = min(2 * chunk, LARGEST_CHUNK)
        if held is not None:
            self.leases.grant(held[1], user)
            return held[0]
        return None

    def _done(self, position: int) -> None:
        """Record that ``position`` is done: the prefix grows when it was the prefix's next position."""
        with self._lock:
            if position == self.done_before:
                self.done_before = position + 1
