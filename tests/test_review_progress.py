"""The review queue's progress tracker against a naive reference that reads every vote."""

from __future__ import annotations

import numpy as np
import pytest

from vse.serving.feedback import FeedbackStore, Vote
from vse.serving.review_progress import ReviewProgress, scan_order


def naive_next_position(store: FeedbackStore, queue: list[int], ids: list[str], first: int, user, need: int):
    """Every vote counted, every position from ``first`` on (wrapping) tried in turn."""
    counts, mine = store.reviewer_counts(), store.reviewed_images(user) if user else set()
    for step in range(len(queue)):
        position = (first + step) % len(queue)
        image_id = ids[queue[position]]
        if image_id not in mine and counts.get(image_id, 0) < need:
            return position
    return None


@pytest.mark.parametrize("length", [0, 1, 2, 5, 9])
def test_scan_order_visits_each_position_after_the_done_prefix_once(length):
    for first in range(-3, 12):
        for done_before in range(0, length + 2):
            expected = [(first + step) % length for step in range(length)] if length else []
            assert list(scan_order(first, length, done_before)) == [p for p in expected if p >= done_before]


@pytest.mark.parametrize("need", [1, 2, 3])
def test_next_position_matches_the_naive_reference_while_votes_accumulate(tmp_path, need):
    rng = np.random.default_rng(need)
    ids = [f"img{i}" for i in range(300)]  # longer than several doubling chunks
    queue = rng.permutation(len(ids)).tolist()
    store = FeedbackStore(tmp_path / "votes.db")
    progress = ReviewProgress(store, queue, lambda rows: [ids[row] for row in rows], need)
    users = ["ann", "bob", "cy", "dee"]
    for round_ in range(12):
        # Reviews concentrate at the top of the queue, as they do in the app, with some scattered further down.
        top = rng.integers(0, min(len(ids), 25 * (round_ + 1)), size=30)
        scattered = rng.integers(0, len(ids), size=5)
        store.merge(
            Vote(str(rng.choice(users)), float(round_), ids[queue[p]], "tag", "right", "r") for p in [*top, *scattered]
        )
        for user in [*users, "newcomer", None]:
            for first in [0, *rng.integers(0, 2 * len(ids), size=4).tolist()]:
                assert progress.next_position(first, user) == naive_next_position(store, queue, ids, first, user, need)
        counts = store.reviewer_counts()
        assert all(counts.get(ids[queue[p]], 0) >= need for p in range(progress.done_before))


def test_a_tracker_made_over_stored_votes_starts_past_the_done_prefix(tmp_path):
    ids = [f"img{i}" for i in range(50)]
    queue = list(range(50))
    store = FeedbackStore(tmp_path / "votes.db")
    store.merge(Vote("ann", 1.0, ids[p], "tag", "right", "r") for p in [*range(20), 25])
    progress = ReviewProgress(store, queue, lambda rows: [ids[row] for row in rows], 1)
    assert progress.done_before == 20  # position 25 is done too, but not contiguous with the prefix
    assert progress.next_position(0, "bob") == 20
    store.merge(Vote("ann", 2.0, ids[p], "tag", "right", "r") for p in range(20, 50) if p != 25)
    assert progress.next_position(0, "bob") is None
    assert progress.done_before == 50


def test_store_counts_restricted_to_some_images_match_the_full_counts(tmp_path):
    store = FeedbackStore(tmp_path / "votes.db")
    rng = np.random.default_rng(0)
    store.merge(
        Vote(f"u{rng.integers(5)}", float(k), f"img{rng.integers(1500)}", f"t{rng.integers(3)}", "wrong", "r")
        for k in range(4000)
    )
    wanted = [f"img{i}" for i in rng.integers(0, 1700, size=1200)] + ["img3", "img3"]  # several SQL chunks, repeats
    counts = store.reviewer_counts()
    assert store.reviewer_counts(wanted) == {i: counts[i] for i in set(wanted) if i in counts}
    for user in ["u1", None]:
        assert store.reviewed_images(user, wanted) == store.reviewed_images(user) & set(wanted)
    assert store.reviewer_counts([]) == {} and store.reviewed_images("u1", []) == set()


def test_need_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match="need"):
        ReviewProgress(FeedbackStore(tmp_path / "votes.db"), [0], str, 0)


def test_column_view_take_reads_the_values_at_some_indices():
    import pyarrow as pa

    from vse.serving.gallery import ColumnView

    column = pa.chunked_array([["a", "b", "c"], ["d", "e"]])
    for view in [ColumnView(column), ColumnView(column, np.array([4, 0, 2, 2]))]:
        for indices in [[], [0], [3, 1, 1, 0], list(range(len(view)))]:
            assert view.take(indices) == [view[i] for i in indices]
        for bad in [[len(view)], [-1]]:
            with pytest.raises(IndexError):
                view.take(bad)
