"""How the command lines of this project report refused input: one ``error: ...`` line.

A refused model folder, gallery or data source is the user's to fix, not a bug:
it is shown as one line on stderr and the command exits with status 2.  With
``--debug`` the exception propagates instead, with its full traceback.  Other
exceptions (bugs) always propagate.

    parser = argparse.ArgumentParser(...)
    add_debug_flag(parser)
    args = parser.parse_args(argv)
    return run_cli(lambda: work(args), debug=args.debug)
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from vse.errors import GalleryError, ModelLoadError

# Errors whose message is meant for the user: the input they gave is refused.
USER_ERRORS: tuple[type[BaseException], ...] = (
    ModelLoadError,  # includes vse.hub.UnsafeModelError
    GalleryError,
    FileNotFoundError,
    NotADirectoryError,
    IsADirectoryError,
    PermissionError,
)
EXIT_REFUSED = 2  # as argparse exits on a bad command line


def add_debug_flag(parser: argparse.ArgumentParser) -> None:
    """``--debug``: show the full traceback of a refused input instead of one line."""
    parser.add_argument("--debug", action="store_true", help="on an error, show the full traceback instead of one line")


def error_line(err: BaseException) -> str:
    """``error: <message>`` on one line (runs of whitespace and newlines become one space)."""
    message = " ".join(str(err).split()) or type(err).__name__
    return f"error: {message}"


def run_cli(
    work: Callable[[], int | None],
    *,
    debug: bool = False,
    expected: tuple[type[BaseException], ...] = USER_ERRORS,
) -> int:
    """The exit status of ``work()``: its return value (None is 0), or 2 after one
    ``error:`` line on stderr when it raises one of ``expected``; re-raised when ``debug``."""
    try:
        status = work()
    except expected as err:
        if debug:
            raise
        print(error_line(err), file=sys.stderr)
        return EXIT_REFUSED
    return 0 if status is None else status
