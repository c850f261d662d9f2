"""Gallery images as files for the browser: written on their first view, read back on later ones.

A result page shows gallery images by file (Gradio serves files as they are;
PIL images would be re-encoded on every request).  A gallery served from its
shards reads an image's whole row group to show it, so the file is kept: named
by ``Gallery.image_key`` (the gallery's fingerprint and the image's id), a later
view finds it with a ``stat``, without reading the shard.

Files are written under a temporary name and renamed into place, so concurrent
writers (the app serves several requests at once; several processes may share a
data folder) never show a half-written file: the last rename wins, and every
writer wrote the same bytes.  The folder is kept under ``max_bytes`` by deleting
the files viewed longest ago (a view sets a file's mtime, unless it was set within
``RECENT_SECONDS``: a result page's dozen inode writes are saved on a busy gallery).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from PIL import Image

from vse.files import write_bytes_atomically

log = logging.getLogger(__name__)

# The suffixes a thumbnail is stored under: the formats browsers show as they are.
SUFFIXES = (".webp", ".png", ".jpg", ".gif")
# Longest side of a shown gallery image: larger ones are scaled down (a result grid
# shows a few hundred pixels; a 24-megapixel photo would cost its megabytes per view).
THUMBNAIL_SIDE = 512
# After the folder outgrows its bound, files are deleted down to this share of it,
# so that eviction scans the folder now and then, not on every write.
EVICT_TO = 0.8
# A view marks a file as viewed now (its mtime) only if the mark is older than this: eviction
# needs the order of views to about this precision, not one disk write per result shown.
RECENT_SECONDS = 60.0


class ThumbnailCache:
    """Image files under ``folder`` (two-level: ``ab/abcdef....webp``), at most about ``max_bytes`` in all."""

    def __init__(self, folder: str | Path, max_bytes: int):
        self.folder, self.max_bytes = Path(folder), max_bytes
        self._root = str(self.folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._stored: int | None = None  # bytes in the folder, counted at the first write

    def path(self, key: str, suffix: str) -> Path:
        return self.folder / key[:2] / f"{key}{suffix}"

    def find(self, key: str) -> Path | None:
        """The stored file of ``key`` (marked as just viewed), or None."""
        stem = os.path.join(self._root, key[:2], key)  # strings: a result page looks up a dozen files
        for suffix in SUFFIXES:
            path = stem + suffix
            try:
                status = os.stat(path)
            except OSError:
                continue
            if status.st_size > 0:  # an empty file is a write cut short by a crash: written again
                if time.time() - status.st_mtime > RECENT_SECONDS:
                    with contextlib.suppress(OSError):  # recency is a hint; a file that cannot be touched still serves
                        os.utime(path)
                return Path(path)
        return None

    def file(self, key: str, encode: Callable[[], tuple[bytes, str]]) -> Path:
        """The file of ``key``; on its first view ``encode()`` gives its bytes and suffix (one of ``SUFFIXES``)."""
        found = self.find(key)
        if found is not None:
            return found
        data, suffix = encode()
        if suffix not in SUFFIXES:
            raise ValueError(f"a thumbnail is stored as one of {SUFFIXES}, not {suffix!r}")
        path = self.path(key, suffix)
        write_bytes_atomically(path, data)
        self._count(len(data))
        return path

    def _count(self, added: int) -> None:
        with self._lock:
            self._stored = folder_bytes(self.folder) if self._stored is None else self._stored + added
            if self._stored > self.max_bytes:
                self._stored = evict_oldest(self.folder, int(self.max_bytes * EVICT_TO))


def stored_side(data: bytes) -> int | None:
    """The longest side of encoded image bytes, read from the header only (None: not an image PIL knows)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return max(image.size)
    except (OSError, ValueError, Image.DecompressionBombError):
        return None


def scaled_down(image: Image.Image, side: int = THUMBNAIL_SIDE) -> tuple[bytes, str]:
    """``image`` fitted inside ``side`` × ``side`` (aspect kept, never enlarged) as lossy WebP, alpha kept."""
    image = image.copy()
    image.thumbnail((side, side), Image.Resampling.LANCZOS)
    if image.mode not in ("RGB", "RGBA"):
        image = image.convert("RGBA" if "A" in image.getbands() or "transparency" in image.info else "RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="WEBP", quality=85, method=4)
    return buffer.getvalue(), ".webp"


def stored_files(folder: Path) -> list[os.DirEntry]:
    """The thumbnail files below ``folder`` (temporary files of writes in progress left out)."""
    files = []
    for sub in os.scandir(folder):
        if sub.is_dir(follow_symlinks=False):
            files += [entry for entry in os.scandir(sub.path) if entry.is_file() and not entry.name.startswith(".")]
    return files


def folder_bytes(folder: Path) -> int:
    return sum(entry.stat().st_size for entry in stored_files(folder))


def evict_oldest(folder: Path, target: int) -> int:
    """Delete the files viewed longest ago until at most ``target`` bytes remain; returns the bytes that remain."""
    entries = []
    for entry in stored_files(folder):
        try:
            status = entry.stat()
        except OSError:  # deleted meanwhile by another process
            continue
        entries.append((status.st_mtime_ns, status.st_size, entry.path))
    entries.sort()
    remaining = sum(size for _, size, _ in entries)
    deleted = 0
    for _, size, path in entries:
        if remaining <= target:
            break
        try:
            os.unlink(path)
            deleted += 1
        except FileNotFoundError:
            pass
        remaining -= size
    log.info("thumbnail cache %s: %d files deleted, %.0f MB kept", folder, deleted, remaining / 1e6)
    return remaining
