"""Votes: stored at once, idempotent, exported by majority; the corrections round trip."""

from __future__ import annotations

import pytest

from training.corrections import load_corrections
from training.feedback import export, majority_table
from training.feedback import main as feedback_main
from vse.serving.feedback import FeedbackStore, Vote, VoteError


@pytest.fixture()
def store(tmp_path) -> FeedbackStore:
    return FeedbackStore(tmp_path / "votes.db")


def test_votes_are_idempotent_and_changeable(store):
    store.add_vote("ann", "img1", "Hash", "wrong", "rev1")
    store.add_vote("ann", "img1", "hash", "wrong", "rev1")  # the same vote again
    assert store.count() == 1
    store.add_vote("ann", "img1", "hash", "right", "rev2")  # changed her mind
    [vote] = store.votes()
    assert (vote.user, vote.image_id, vote.tag, vote.verdict, vote.model_revision) == (
        "ann",
        "img1",
        "hash",
        "right",
        "rev2",
    )
    store.add_vote("bob", "img1", "hash", "wrong", "rev2")
    assert store.count() == 2 and store.reviewed_images("bob") == {"img1"}
    assert store.recent_votes("ann", 60) == 3  # every vote call counts, not the rows it left
    assert store.reviewer_counts() == {"img1": 2}


@pytest.mark.parametrize(
    "args, message",
    [
        (("", "img", "tag", "wrong"), "user name"),
        (("ann", "img", "   ", "wrong"), "tag"),
        (("ann", "img", "tag", "maybe"), "verdict"),
        (("ann", "img", "x" * 500, "wrong"), "longer"),
        (("ann\x00", "img", "tag", "wrong"), "control"),
        (("ann", "img", "evil\u202eton", "wrong"), "invisible"),
        (("ann", "img", None, "wrong"), "must be a string"),
        (("ann", "img", ["a", "b"], "wrong"), "must be a string"),
        (("ann", "img", "tag", None), "verdict"),
    ],
)
def test_bad_votes_are_refused(store, args, message):
    with pytest.raises(VoteError, match=message):
        store.add_vote(*args, "rev")
    assert store.count() == 0


def test_majority_table_and_ties():
    votes = [
        Vote("a", 1, "img", "hash", "wrong", "r"),
        Vote("b", 2, "img", "hash", "wrong", "r"),
        Vote("c", 3, "img", "hash", "right", "r"),
        Vote("a", 4, "img", "apple", "wrong", "r"),
        Vote("b", 5, "img", "apple", "right", "r"),
        Vote("a", 6, "img2", "star", "added", "r"),
    ]
    rows = {(r["image_id"], r["tag"]): r for r in majority_table(votes)}
    assert rows[("img", "hash")] == {"image_id": "img", "tag": "hash", "verdict": "wrong", "votes": 2, "total_votes": 3}
    assert rows[("img", "apple")]["verdict"] == "right"  # a tie keeps the tag
    assert rows[("img2", "star")]["verdict"] == "added"


def test_export_is_read_by_training_and_atomic(store, tmp_path, monkeypatch):
    store.add_vote("ann", "img1", "hash", "wrong", "rev")
    store.add_vote("ann", "img1", "apple", "added", "rev")
    out = tmp_path / "corrections"
    assert feedback_main(["export", "--db", str(store.path), "--out", str(out)]) == 0
    corrections = load_corrections(str(out))
    assert corrections.apply("img1", ["hash", "fruit"]) == ["fruit", "apple"]
    # An export that dies half-way leaves the previous export intact.
    import datasets

    def crash(self, *args, **kwargs):
        raise KeyboardInterrupt("killed mid-write")

    store.add_vote("bob", "img2", "x", "wrong", "rev")
    monkeypatch.setattr(datasets.Dataset, "save_to_disk", crash)
    with pytest.raises(KeyboardInterrupt):
        export(store.path, out)
    assert load_corrections(str(out)).by_image == corrections.by_image
    assert feedback_main(["export", "--db", str(tmp_path / "none.db"), "--out", str(out)]) == 2


def test_rate_limit_counts_events_in_the_same_transaction(store):
    """Flipping one tag is not free, and concurrent writers cannot slip past the limit."""
    import threading

    from vse.serving.feedback import RateLimited

    for verdict in ("wrong", "right", "wrong"):
        store.add_vote("flipper", "img", "tag", verdict, "rev", per_minute=3)
    with pytest.raises(RateLimited):
        store.add_vote("flipper", "img", "tag", "right", "rev", per_minute=3)
    assert store.votes(user="flipper")[0].verdict == "wrong"  # the refused vote changed nothing
    stored, refused = [], []

    def burst(worker: int) -> None:
        for k in range(20):
            try:
                store.add_vote("burst", f"img{worker}", f"tag{k}", "added", "rev", per_minute=25)
                stored.append(1)
            except RateLimited:
                refused.append(1)

    threads = [threading.Thread(target=burst, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(stored) == 25 and len(refused) == 55 and len(store.votes(user="burst")) == 25


@pytest.mark.parametrize(
    "name, message",
    [
        ("ann\u202eevil", "invisible"),
        ("a\u200bb", "invisible"),
        ("x" * 101, "longer"),
        ("  ", "empty"),
        (None, "string"),
    ],
)
def test_reviewer_names_are_refused_not_truncated(name, message):
    from vse.serving.feedback import clean_user_name

    with pytest.raises(VoteError, match=message):
        clean_user_name(name)
    assert clean_user_name("  Ann   Lee ") == "Ann Lee" and clean_user_name("x" * 100) == "x" * 100
