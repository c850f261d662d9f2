"""Turn reviewers' votes into the corrections table that training reads.

    python -m training.feedback export --db feedback/votes.db --out corrections
    python -m training.feedback export --db feedback/votes.db --out corrections --push USER/corrections

Majority vote per (image, tag) over all reviewers; a tie keeps the tag (``right``
or ``added`` win over ``wrong``), since removing a tag needs a majority.  The
table (format in ``training.corrections``) is written as a ``datasets`` folder
and is atomic: it is built in a temporary folder and swapped in, so an
interrupted export leaves the previous one intact.  ``--push`` also uploads it
to a Hub dataset repository.
"""

from __future__ import annotations

import argparse
import collections
import shutil
import sys
from pathlib import Path

from training.corrections import corrections_features
from vse.feedback import FeedbackStore, Vote

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


def export(db_path: str | Path, out: str | Path, push_repo: str | None = None, private: bool = False) -> int:
    """Write the corrections table atomically; returns its number of rows."""
    import datasets

    db_path = Path(db_path)
    if not db_path.is_file():
        raise FileNotFoundError(f"no votes database at {db_path}")
    rows = majority_table(FeedbackStore(db_path).votes())
    table = datasets.Dataset.from_list(rows, features=corrections_features()) if rows else datasets.Dataset.from_dict(
        {name: [] for name in corrections_features()}, features=corrections_features()
    )  # fmt: skip
    out = Path(out)
    temporary, previous = out.with_name(out.name + ".tmp"), out.with_name(out.name + ".old")
    shutil.rmtree(temporary, ignore_errors=True)
    table.save_to_disk(str(temporary))
    shutil.rmtree(previous, ignore_errors=True)
    if out.exists():
        out.rename(previous)
    temporary.rename(out)
    shutil.rmtree(previous, ignore_errors=True)
    if push_repo:
        table.push_to_hub(push_repo, private=private)
    return len(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.feedback", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    exporter = commands.add_parser("export", help="majority-vote corrections table from the votes database")
    exporter.add_argument("--db", default="feedback/votes.db", help="the app's votes database")
    exporter.add_argument("--out", default="corrections", help="output folder (a datasets folder)")
    exporter.add_argument("--push", default=None, metavar="USER/NAME", help="also push to this Hub dataset repo")
    exporter.add_argument("--private", action="store_true")
    args = parser.parse_args(argv)
    try:
        count = export(args.db, args.out, args.push, args.private)
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{count} corrections written to {args.out}" + (f" and pushed to {args.push}" if args.push else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
