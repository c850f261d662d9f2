"""Push a trained model folder to the Hugging Face Hub with its model card.

    python -m training.push --model runs/x/model --repo USER/NAME [--private]

The folder is loaded first (so a broken or unsafe folder is never published),
then saved again into the upload: safetensors weights, config, tokenizer files
and a model card that records the metrics, the datasets with their revisions and
fingerprints, and the training config.  Authentication comes from ``--token``,
``HF_TOKEN`` or ``hf auth login``.
"""

from __future__ import annotations

import argparse
import sys

from vse.cli import USER_ERRORS, add_debug_flag, run_cli
from vse.model import VSEModel


def push(model_dir: str, repo_id: str, *, private: bool = False, token: str | None = None,
         branch: str | None = None, message: str | None = None) -> str:  # fmt: skip
    """Load ``model_dir`` and upload it to ``repo_id``; returns the commit URL."""
    model = VSEModel.from_pretrained(model_dir)
    return model.push_to_hub(
        repo_id,
        private=private,
        token=token,
        branch=branch,
        commit_message=message or f"Upload VSE model ({model.config.image_backbone} + {model.config.text_encoder})",
        model_card_kwargs={"repo_id": repo_id},
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training.push", description=__doc__.split("\n\n")[0], allow_abbrev=False
    )
    parser.add_argument("--model", required=True, help="a saved model folder (e.g. runs/x/model)")
    parser.add_argument("--repo", required=True, help="target Hub repository, USER/NAME")
    parser.add_argument("--private", action="store_true", help="create the repository as private")
    parser.add_argument("--token", default=None, help="Hub token (default: HF_TOKEN or the saved login)")
    parser.add_argument("--branch", default=None, help="branch to push to (default: main)")
    parser.add_argument("--message", default=None, help="commit message")
    add_debug_flag(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # ValueError as well: the Hub client refuses bad repository ids with it.
    return run_cli(lambda: push_and_report(args), debug=args.debug, expected=(*USER_ERRORS, ValueError))


def push_and_report(args: argparse.Namespace) -> None:
    url = push(args.model, args.repo, private=args.private, token=args.token, branch=args.branch, message=args.message)
    print(f"pushed to {url}")


if __name__ == "__main__":
    sys.exit(main())
