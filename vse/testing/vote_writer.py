"""A vote writer to kill mid-burst: ``python -m vse.testing.vote_writer VOTES_DB``.

It stores one vote after another and prints each one's number only after the
store's commit returned, so every printed number is an acknowledged vote.  The
durability test and benchmark SIGKILL it and check that every acknowledged vote
is still in the database.
"""

from __future__ import annotations

import sys

from vse.serving.feedback import FeedbackStore


def main(argv: list[str] | None = None) -> None:
    (db_path,) = argv if argv is not None else sys.argv[1:]
    store = FeedbackStore(db_path)
    index = 0
    while True:
        store.add_vote("burst", "img", f"tag{index}", "wrong", "rev")
        print(index, flush=True)
        index += 1


if __name__ == "__main__":
    main()
