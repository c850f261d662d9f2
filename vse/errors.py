"""The errors this library raises for input it refuses: a model folder, a gallery.

Each message is meant for the person who gave the input and names the file or
folder at fault; ``vse.cli.run_cli`` shows it as one ``error: ...`` line.  Both
are ``ValueError`` subclasses, so code that caught ``ValueError`` still does.
"""

from __future__ import annotations


class ModelLoadError(ValueError):
    """A saved model that cannot or must not be loaded; the message names the file."""


class GalleryError(ValueError):
    """A gallery that cannot be served; the message names the folder or file."""
