"""Where a reviewer goes next in the review queue, without reading every vote.

The review queue is a fixed order of gallery images; an image is *done* once
``need`` different people voted on it, and a reviewer is offered the first image
that is neither done nor already reviewed by them.  Reading every vote to decide
that (one ``GROUP BY`` over the whole table, then a walk over the queue from its
start) costs time in proportion to the reviews already stored: 2.2 s for each
``/review_next`` once 50,000 images of a 100,000-image gallery were reviewed
(docs/PERFORMANCE.md, "Review queue progress").

Votes are never deleted, so an image that is done stays done and the queue's
*done prefix* (every position before it is done) only moves forward.
``ReviewProgress`` remembers that prefix and checks the positions after it a
chunk at a time with indexed queries (``FeedbackStore.reviewer_counts`` and
``reviewed_images`` restricted to the chunk's images), the chunk doubling while
it finds nothing; the prefix is found once, from every vote, when the tracker is
made (at the first review request).  Finding the next image then costs about the number of images
handed out but not finished, plus those this reviewer reviewed that still need
others, not the number of votes.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from itertools import islice

from vse.serving.feedback import FeedbackStore

FIRST_CHUNK = 8
LARGEST_CHUNK = 4096


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


class ReviewProgress:
    """The next position of one queue that a reviewer should see, for one store and one ``need``."""

    def __init__(
        self, store: FeedbackStore, queue: Sequence[int], ids_of: Callable[[Sequence[int]], list[str]], need: int
    ):
        """``ids_of``: the image ids of some gallery rows, in their order (one call for many rows)."""
        if need < 1:
            raise ValueError("need must be at least 1")
        self.store, self.queue, self.ids_of, self.need = store, queue, ids_of, need
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
        """The first position from ``first`` on (wrapping) that needs ``user``'s review; None when none does."""
        positions = scan_order(first, len(self.queue), self.done_before)
        chunk = FIRST_CHUNK
        while batch := list(islice(positions, chunk)):
            ids = self.ids_of([self.queue[position] for position in batch])
            counts = self.store.reviewer_counts(ids)
            mine = self.store.reviewed_images(user, ids) if user else set()
            for position, image_id in zip(batch, ids, strict=True):
                if counts.get(image_id, 0) >= self.need:
                    self._done(position)
                elif image_id not in mine:
                    return position
            chunk = min(2 * chunk, LARGEST_CHUNK)
        return None

    def _done(self, position: int) -> None:
        """Record that ``position`` is done: the prefix grows when it was the prefix's next position."""
        with self._lock:
            if position == self.done_before:
                self.done_before = position + 1
