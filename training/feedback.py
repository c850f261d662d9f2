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
import datetime
import json
import shutil
import sqlite3
import sys
from pathlib import Path

from training.corrections import PROVENANCE_FILE, corrections_features
from training.sources import SourceError
from vse.cli import USER_ERRORS, add_debug_flag, run_cli
from vse.serving.feedback import FeedbackStore, Vote, majority_table


def provenance(votes: list[Vote]) -> dict:
    """Where a corrections table came from: how many votes, reviewers and images, which models ranked the queue."""
    return {
        "votes": len(votes),
        "reviewers": len({vote.user for vote in votes}),
        "reviewed_images": len({vote.image_id for vote in votes}),
        "queue_models": dict(sorted(collections.Counter(vote.model_revision for vote in votes).items())),
        "exported_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def export(db_path: str | Path, out: str | Path, push_repo: str | None = None, private: bool = False) -> int:
    """Write the corrections table (and its ``provenance.json``) atomically; returns its number of rows."""
    import datasets

    db_path = Path(db_path)
    if not db_path.is_file():
        raise FileNotFoundError(f"no votes database at {db_path}")
    try:
        votes = FeedbackStore(db_path).votes()
    except sqlite3.DatabaseError as err:
        raise SourceError(f"{db_path} is not a votes database of the app: {err}") from err
    rows = majority_table(votes)
    table = datasets.Dataset.from_list(rows, features=corrections_features()) if rows else datasets.Dataset.from_dict(
        {name: [] for name in corrections_features()}, features=corrections_features()
    )  # fmt: skip
    out = Path(out)
    temporary, previous = out.with_name(out.name + ".tmp"), out.with_name(out.name + ".old")
    shutil.rmtree(temporary, ignore_errors=True)
    table.save_to_disk(str(temporary))
    (temporary / PROVENANCE_FILE).write_text(json.dumps(provenance(votes), indent=2, sort_keys=True))
    shutil.rmtree(previous, ignore_errors=True)
    if out.exists():
        out.rename(previous)
    temporary.rename(out)
    shutil.rmtree(previous, ignore_errors=True)
    if push_repo:
        from huggingface_hub import HfApi

        table.push_to_hub(push_repo, private=private)
        HfApi().upload_file(path_or_fileobj=str(out / PROVENANCE_FILE), path_in_repo=PROVENANCE_FILE,
                            repo_id=push_repo, repo_type="dataset")  # fmt: skip
    return len(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.feedback", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    exporter = commands.add_parser("export", help="majority-vote corrections table from the votes database")
    exporter.add_argument("--db", default="feedback/votes.db", help="the app's votes database")
    exporter.add_argument("--out", default="corrections", help="output folder (a datasets folder)")
    exporter.add_argument("--push", default=None, metavar="USER/NAME", help="also push to this Hub dataset repo")
    exporter.add_argument("--private", action="store_true")
    add_debug_flag(exporter)
    args = parser.parse_args(argv)
    return run_cli(lambda: export_and_report(args), debug=args.debug, expected=(*USER_ERRORS, SourceError))


def export_and_report(args: argparse.Namespace) -> None:
    count = export(args.db, args.out, args.push, args.private)
    print(f"{count} corrections written to {args.out}" + (f" and pushed to {args.push}" if args.push else ""))


if __name__ == "__main__":
    sys.exit(main())
