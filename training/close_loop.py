"""Close the review loop in one command: export the votes, retrain with them, evaluate, optionally push.

    python -m training.close_loop --db feedback/votes.db --config configs/offline_default.yaml \\
        --output-dir runs/round-2 [--previous assets/model] [--push USER/NAME] [--key=value ...]

1. ``training.feedback export``: the majority verdict per (image, tag) of every
   vote in the app's database, with its provenance (votes, reviewers, the model
   that ranked the queue), into ``<output-dir>/corrections``;
2. ``training.train`` with ``--data.corrections`` set to it: rejected tags leave
   the web data, added ones join it, confirmed and added ones keep full weight
   (with ``stage1.verified_tags`` reviewed images also join stage one as clean tag
   lists, as in the paper); the new model re-estimates every other tag's
   suspicion, so the app's queue is re-ranked by it (an active-learning round);
3. the new model's validation and test metrics, beside those of ``--previous``
   (the model that served the queue) when given;
4. ``--push``: the model, its card (which records the corrections) and its
   suspicion table to a Hub model repository.

Extra ``--section.key=value`` arguments override the training config.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from training.config import TrainConfig
from training.configuration import ConfigError, load_config
from training.feedback import export
from training.push import push
from training.sources import SourceError
from training.train import ResumeError, run_training
from vse.cli import USER_ERRORS, add_debug_flag, run_cli
from vse.model import VSEModel

log = logging.getLogger("training.close_loop")


def comparison(new: dict, previous: dict | None) -> str:
    """A few lines: the new model's rsum per split, and the change from the previous model."""
    lines = []
    for split in ("validation", "test"):
        if split in new:
            line = f"{split} rsum {new[split]['rsum']:.2f}"
            if previous and split in previous:
                line += (
                    f" (previous {previous[split]['rsum']:.2f}, {new[split]['rsum'] - previous[split]['rsum']:+.2f})"
                )
            lines.append(line)
    return "\n".join(lines)


def close_loop(args: argparse.Namespace, overrides: list[str]) -> dict:
    """Export, retrain, evaluate (and push); returns a summary."""
    output = Path(args.output_dir)
    corrections = output / "corrections"
    rows = export(args.db, corrections)
    log.info("exported %d corrections to %s", rows, corrections)
    config: TrainConfig = load_config(
        TrainConfig, args.config, [*overrides, f"--data.corrections={corrections}", f"--output_dir={output}"]
    )
    folder = run_training(config)
    if folder is None:
        raise SourceError("training stopped before the end (stop_after_epochs); run the same command to resume")
    model = VSEModel.from_pretrained(folder)
    previous = VSEModel.from_pretrained(args.previous).metrics if args.previous else None
    summary = {
        "model": str(folder),
        "corrections": model.metrics.get("corrections"),
        "metrics": {split: model.metrics[split] for split in ("validation", "test") if split in model.metrics},
        "previous": {split: previous[split] for split in ("validation", "test") if split in previous}
        if previous
        else None,
    }
    if args.push:
        summary["pushed"] = push(str(folder), args.push, private=args.private)
    (output / "close_loop.json").write_text(json.dumps(summary, indent=2, sort_keys=True))
    return summary


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training.close_loop", description=__doc__.split("\n\n")[0], allow_abbrev=False,
        epilog="Other --section.key=value arguments override the training config.",
    )  # fmt: skip
    parser.add_argument("--db", default="feedback/votes.db", help="the app's votes database")
    parser.add_argument("--config", default="configs/offline_default.yaml", help="the training config")
    parser.add_argument("--output-dir", required=True, help="run folder of the retrained model")
    parser.add_argument("--previous", default=None, help="the model that served the queue, to compare with")
    parser.add_argument("--push", default=None, metavar="USER/NAME", help="push the retrained model to the Hub")
    parser.add_argument("--private", action="store_true")
    add_debug_flag(parser)
    return parser


def close_and_report(parser: argparse.ArgumentParser, args: argparse.Namespace, overrides: list[str]) -> int:
    try:
        summary = close_loop(args, overrides)
    except ConfigError as err:
        parser.error(str(err))
    record = summary["corrections"] or {}
    print(
        f"retrained with {record.get('removed', 0)} tags removed, {record.get('added', 0)} added, "
        f"{record.get('confirmed', 0)} confirmed on {record.get('images', 0)} images: {summary['model']}"
    )
    print(comparison(summary["metrics"], summary["previous"]))
    if summary.get("pushed"):
        print(f"pushed to {summary['pushed']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, overrides = parser.parse_known_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run_cli(
        lambda: close_and_report(parser, args, overrides),
        debug=args.debug,
        expected=(*USER_ERRORS, SourceError, ResumeError, ValueError),
    )


if __name__ == "__main__":
    sys.exit(main())
