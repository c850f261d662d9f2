"""The review queue's progress tracker against a naive reference that reads every vote."""

from __future__ import annotations

import numpy as np
import pytest

from vse.serving.feedback import FeedbackStore, Vote
from vse.serving.review_progress import SWEEP_EVERY, Leases, ReviewProgress, scan_order


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


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_leases_expire_end_on_release_and_are_swept():
    clock = FakeClock()
    leases = Leases(60, clock)
    leases.grant("img", "ann")
    leases.grant("img", None)  # an unknown reviewer holds nothing
    assert leases.others("img", "bob") == 1 and leases.others("img", "ann") == 0 and leases.others("other", "bob") == 0
    clock.now += 59
    leases.grant("img", "cy")
    assert leases.others("img", "bob") == 2 and leases.held() == 2
    clock.now += 2  # ann's lease ran out, cy's has not
    assert leases.others("img", "bob") == 1
    leases.release("img", "cy")
    leases.release("img", "nobody")
    assert leases.others("img", "bob") == 0 and leases.held() == 0
    for k in range(SWEEP_EVERY):  # expired leases do not pile up
        leases.grant(f"img{k}", "ann")
    clock.now += 61
    for _ in range(SWEEP_EVERY):
        leases.grant("last", "ann")
    assert list(leases._held) == ["last"]  # the expired ones were dropped from memory
    assert Leases(0).held() == 0
    leases_off = Leases(0, clock)
    leases_off.grant("img", "ann")
    assert leases_off.others("img", "bob") == 0
    with pytest.raises(ValueError, match="negative"):
        Leases(-1)


def test_reviewers_asking_at_once_are_given_different_images(tmp_path):
    clock = FakeClock()
    ids = [f"img{i}" for i in range(6)]
    store = FeedbackStore(tmp_path / "votes.db")
    leases = Leases(600, clock)
    progress = ReviewProgress(store, list(range(6)), lambda rows: [ids[r] for r in rows], 1, leases)
    assert [progress.next_position(0, user) for user in ["ann", "bob", "cy"]] == [0, 1, 2]
    assert progress.next_position(0, "ann") == 0  # asking again gives the image one holds
    assert progress.next_position(0, None) == 3  # a viewer who is not reviewing is shown an open image, leases none
    assert progress.next_position(0, "dee") == 3
    store.add_vote("ann", "img0", "tag", "right", "r")
    leases.release("img0", "ann")
    assert progress.next_position(0, "ann") == 4  # img0 is done, img1-img3 are held
    clock.now += 601  # every lease ran out: bob, cy, dee and ann walked away
    assert [progress.next_position(0, user) for user in ["eve", "fay", "gus", "hal", "ivy"]] == [1, 2, 3, 4, 5]
    assert progress.next_position(0, "jay") == 1  # only held images left: the first is given all the same
    for image_id in ids[1:]:
        store.add_vote("zed", image_id, "tag", "right", "r")
    assert progress.next_position(0, "ivy") is None


def test_an_image_needing_two_reviewers_is_given_to_two_at_once(tmp_path):
    ids = ["img0", "img1"]
    store = FeedbackStore(tmp_path / "votes.db")
    progress = ReviewProgress(store, [0, 1], lambda rows: [ids[r] for r in rows], 2, Leases(600))
    assert [progress.next_position(0, user) for user in ["ann", "bob", "cy"]] == [0, 0, 1]
