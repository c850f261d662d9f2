"""Push a trained model folder to the Hugging Face Hub with its model card.

    python -m training.push --model runs/x/model --repo USER/NAME [--private]

The folder is loaded first (so a broken or unsafe folder is never published),
then saved again into the upload: safetensors weights, config, tokenizer files
and a model card that records the metrics, the datasets with their revisions and
fingerprints, and the training config.  Authentication comes from ``--token``,
``HF_TOKEN`` or ``hf auth login``.  The command line is ``PushConfig`` read by
``training.configuration``; ``--print-config`` masks the token.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

from training.configuration import CommandLine, run_command
from vse.cli import USER_ERRORS
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


@dataclass
class PushConfig:
    """Which model folder ``python -m training.push`` uploads, and where."""

    model: str = field(metadata={"help": "a saved model folder (e.g. runs/x/model)"})
    repo: str = field(metadata={"help": "target Hub repository, USER/NAME"})
    private: bool = field(default=False, metadata={"help": "create the repository as private"})
    # Masked by --print-config.
    token: str | None = field(
        default=None, metadata={"help": "Hub token (default: HF_TOKEN or the saved login)", "secret": True}
    )
    branch: str | None = field(default=None, metadata={"help": "branch to push to (default: main)"})
    message: str | None = field(default=None, metadata={"help": "commit message"})


COMMAND_LINE = CommandLine(prog="python -m training.push", description=__doc__.split("\n\n")[0])


def main(argv: list[str] | None = None) -> int:
    # ValueError as well: the Hub client refuses bad repository ids with it.
    return run_command(PushConfig, argv, COMMAND_LINE, push_and_report, expected=(*USER_ERRORS, ValueError))


def push_and_report(config: PushConfig) -> None:
    url = push(config.model, config.repo, private=config.private, token=config.token, branch=config.branch,
               message=config.message)  # fmt: skip
    print(f"pushed to {url}")


if __name__ == "__main__":
    sys.exit(main())
