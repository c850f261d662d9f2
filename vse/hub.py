"""Finding a model folder locally or on the Hugging Face Hub, and refusing unsafe ones.

A model of this project is plain data: safetensors weights, JSON configs, text
vocabularies and a model card.  A folder or repository that also holds pickles
(``.bin``, ``.pt``, ``.pkl``...) or code is refused before anything is loaded or
downloaded: such files can run code when opened, and nothing here needs them.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path, PurePosixPath

from vse.errors import ModelLoadError

# Everything a model folder may hold (glob patterns as huggingface_hub matches them).
ALLOWED_PATTERNS = (
    "*.json", "*.safetensors", "*.md", "*.txt", "*.model", ".gitattributes", "*.png", "*.jpg", "*.parquet"
)  # fmt: skip
# Files that can execute code when loaded, or are code.
UNSAFE_SUFFIXES = frozenset(
    {
        ".bin",
        ".pt",
        ".pth",
        ".pkl",
        ".pickle",
        ".ckpt",
        ".joblib",
        ".dill",
        ".npy",
        ".npz",
        ".h5",
        ".keras",
        ".msgpack",
        ".onnx",
        ".py",
        ".pyc",
        ".so",
        ".dll",
        ".dylib",
        ".exe",
        ".sh",
    }
)


class UnsafeModelError(ModelLoadError):
    """The model folder holds files that could run code when loaded."""


def unsafe_files(names: Iterable[str]) -> list[str]:
    """Names (relative paths) whose suffix marks a pickle, an executable or code."""
    return sorted(name for name in names if PurePosixPath(name).suffix.lower() in UNSAFE_SUFFIXES)


def check_model_files(names: Iterable[str], where: str) -> None:
    """Raise ``UnsafeModelError`` if any of ``names`` is a pickle or code file."""
    bad = unsafe_files(names)
    if bad:
        shown = ", ".join(bad[:5]) + (" ..." if len(bad) > 5 else "")
        raise UnsafeModelError(
            f"refusing to load {where}: it contains files that can run code when loaded ({shown}). "
            "Models of this project are safetensors + JSON only; remove those files or re-save the model "
            "with VSEModel.save_pretrained."
        )


def local_file_names(folder: Path) -> list[str]:
    return [path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file() or path.is_symlink()]


def resolve_model_dir(
    model_id: str,
    *,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    force_download: bool = False,
    local_files_only: bool = False,
    token: str | bool | None = None,
) -> Path:
    """A local folder with the model's files: ``model_id`` itself, or a Hub snapshot.

    Hub repositories are listed first and refused if unsafe, then only the allowed
    file types are downloaded.
    """
    local = Path(model_id).expanduser()
    if local.is_dir():
        check_model_files(local_file_names(local), f"the model folder {local}")
        return local
    if local.exists() or model_id.startswith((".", "/", "~")) or model_id.count("/") > 1:
        raise FileNotFoundError(f"no model folder at {model_id!r}")
    from huggingface_hub import HfApi, snapshot_download

    if not local_files_only:
        names = HfApi(token=token).list_repo_files(model_id, revision=revision)
        check_model_files(names, f"the Hub repository {model_id}")
    folder = Path(
        snapshot_download(
            model_id,
            revision=revision,
            cache_dir=cache_dir,
            force_download=force_download,
            local_files_only=local_files_only,
            token=token,
            allow_patterns=list(ALLOWED_PATTERNS),
        )
    )
    check_model_files(local_file_names(folder), f"the Hub repository {model_id}")
    return folder
