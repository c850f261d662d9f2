"""Gradio app: search images by sentence, browse nearest captions, review noisy web tags.

    python app.py                                   # the offline default in assets/
    python app.py --model USER/MODEL --gallery USER/DATASET

Search: a sentence returns the best gallery images; selecting one shows its
nearest captions (image-to-text over the caption pool) and its web tags; an
uploaded image gets its nearest captions and similar images.  Review: web images
ordered by what a review is worth (expected wrong tags over the square root of
the tag count, ``vse.suspicion.review_priority``), each tag shown with its
probability of being wrong (``vse.suspicion``) and the likely wrong ones ticked
as a suggestion; each vote is stored at once in SQLite (``<data-dir>/votes.db``)
and ``python -m training.close_loop`` turns the votes into the corrections table
of the next training run, retrains and evaluates.

Settings are ``AppConfig``, read by ``training.configuration`` like the training
scripts' (``python app.py --help``): defaults, then ``VSE_*`` variables (a Space's
way), then ``--config FILE``, then ``--key=value`` arguments.

Works as a Hugging Face Space (see the README front matter): with OAuth enabled
reviewers sign in with their Hub account and the review tab stays read-only
until they do.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import csv
import hashlib
import json
import logging
import math
import os
import pickle
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr
import pydantic
import torch
from gradio.blocks import BlocksConfig
from gradio.exceptions import InvalidPathError
from gradio.utils import get_upload_folder

from training.configuration import CommandLine, run_command
from vse.cli import USER_ERRORS
from vse.images import ImageLoadError
from vse.model import QUERY_PRECISIONS
from vse.serving.engine_index import EngineError, check_index_setting
from vse.serving.feedback import FeedbackStore, RateLimited, VoteError, clean_user_name, majority_table
from vse.serving.gallery import GalleryItem
from vse.serving.index import KINDS as INDEX_KINDS
from vse.serving.retrieval import Progress, QueryError, RetrievalService, ReviewQueueNotReady
from vse.serving.review_progress import Leases, ReviewProgress
from vse.serving.thumbnails import THUMBNAIL_SIDE, ThumbnailCache, scaled_down, stored_side
from vse.serving.vote_backup import FolderFiles, HubDatasetFiles, HubFiles, VoteBackup
from vse.text import normalize_tag

PERSISTENT_STORAGE = Path("/data")  # where a Space mounts its persistent storage, when it has some


def static_folder_first(folder: Path) -> None:
    """Serve ``folder``'s files in place (``gr.set_static_paths``), checked before Gradio's own static files.

    Gradio tests every file path an event returns against its static paths in order,
    resolving both paths component by component on its event loop; its own icons come
    first, so each thumbnail cost 0.24 ms, against 0.07 ms with this folder first, and a
    search returns 12 thumbnails checked twice (measured here; benchmarks/load.py).  The
    order is Gradio's private list: where it is not there, the folder is only added.
    """
    gr.set_static_paths([folder])
    try:
        from gradio.data_classes import _StaticFiles

        paths = _StaticFiles.all_paths
        paths.insert(0, paths.pop())  # the folder just added
    except (ImportError, AttributeError, IndexError):
        log.warning("Gradio's static paths are not where this app expects: thumbnails are checked last")


def default_data_dir() -> str:
    """``/data/vse`` on a Space with persistent storage, else ``feedback`` (``VSE_DATA_DIR`` overrides both)."""
    if PERSISTENT_STORAGE.is_dir() and os.access(PERSISTENT_STORAGE, os.W_OK):
        return str(PERSISTENT_STORAGE / "vse")
    return "feedback"


def space_has_oauth() -> bool:
    """OAuth exists only on a Space with ``hf_oauth: true``; elsewhere reviewers type a name."""
    return bool(os.environ.get("SPACE_ID") and os.environ.get("OAUTH_CLIENT_ID"))


# The app's settings are AppConfig (below); these process-wide limits are read
# from the environment only (the README's table of variables).
DEFAULT_TOP_K = 12
MAX_TOP_K = 48
CAPTIONS_SHOWN = 5
SIMILAR_SHOWN = 8
# Requests served at once, per group of events sharing one Gradio queue (more wait in
# it).  Queries (search, a result's neighbours) are quick and many run at once, each
# encoding on one thread (vse.text.QUERY_THREADS); an upload decodes and encodes an
# image, so one runs at a time and uploads wait behind each other rather than take the
# cores that searches need.  benchmarks/load.py, 32 clients mixing searches, uploads and
# votes with no pause: 2 queries at a time gave /search p50 1.1 s; 8 give 0.1-0.2 s, while
# uploads then wait seconds (docs/RELIABILITY.md, "Load").
CONCURRENCY = {"query": 8, "upload": 1, "review": 2}
# Gradio recomputes its monitoring summary (a pandas table of up to 10,000 past events) after
# every event unless told otherwise: 5.6 ms of CPU per event at 1,000 past events, 10 ms at
# 10,000, measured here.  Every 100 events keeps the summary fresh for /monitoring.
os.environ.setdefault("GRADIO_ANALYTICS_CACHE_FREQUENCY", "100")
QUEUE_SIZE = int(os.environ.get("VSE_QUEUE_SIZE", "64"))  # requests waiting beyond that are turned away
MAX_UPLOAD = os.environ.get("VSE_MAX_UPLOAD", "10mb")  # larger uploads are refused before they reach the app
CACHE_CLEANUP = (3600, 3600)  # every hour, delete Gradio's cached uploads older than an hour
EXAMPLE_QUERIES = 6
# Gallery image files kept for the browser (vse/serving/thumbnails.py); the least recently shown go beyond this.
# Galleries up to this many images compute their review queue in the background as soon as they
# are loaded (seconds); larger ones on the first review request, which is told to come back. At a
# million images it takes 30-50 s and 1.4-1.8 GB while it runs (docs/PERFORMANCE.md), which at
# start would slow the first searches and lift resident memory past 3 GB.
EAGER_REVIEW_QUEUE_MAX = 200_000
THUMBNAIL_CACHE_BYTES = int(float(os.environ.get("VSE_THUMBNAIL_CACHE_MB", "2000")) * 1e6)
SUGGEST_WRONG = 0.5  # tags at least this likely wrong are shown ticked (the suggested verdict)
MAX_TAGS_PER_REVIEW = 200

log = logging.getLogger("app")
IMAGE_SIGNATURES = {b"\x89PNG": ".png", b"\xff\xd8\xff": ".jpg", b"GIF8": ".gif"}


def backup_files(target: str) -> HubFiles:
    """A local folder (``file://...``, an absolute path or an existing folder), else a Hub dataset repo id."""
    path = Path(target.removeprefix("file://"))
    if target.startswith("file://") or path.is_absolute() or path.is_dir():
        return FolderFiles(path)
    return HubDatasetFiles(target)


def image_suffix(data: bytes) -> str | None:
    """File suffix of encoded image bytes the browser can show as they are, else None."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ".webp"
    return next((suffix for signature, suffix in IMAGE_SIGNATURES.items() if data.startswith(signature)), None)


def refusal(message: str) -> gr.Error:
    """An expected refusal (bad input, rate limit): shown to the user, logged as one line, no traceback."""
    log.info("refused: %s", message)
    return gr.Error(message, print_exception=False)


def result_count(value: object, lowest: int, highest: int) -> int:
    """The number of results asked for, whatever JSON the client sent; refuses what is not a whole number in range."""
    number = value
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            number = float(value)
    if isinstance(number, bool) or not isinstance(number, (int, float)) or not math.isfinite(number):
        raise refusal(f"The number of results must be a whole number from {lowest} to {highest}, not {value!r:.40}.")
    if number != int(number) or not lowest <= number <= highest:
        raise refusal(f"The number of results must be a whole number from {lowest} to {highest}, not {number:g}.")
    return int(number)


def data_url_bytes(url: str, limit: int) -> bytes:
    """The bytes of a ``data:...;base64,`` URL (how some clients send an image), at most ``limit`` of them."""
    header, _, body = url.partition(",")
    if not header.endswith(";base64") or not body:
        raise refusal("An image sent as a data URL must be base64-encoded.")
    if len(body) > limit * 4 // 3 + 4:
        raise refusal(f"The image is larger than the upload limit ({limit / 1e6:.0f} MB).")
    try:
        return base64.b64decode(body, validate=True)
    except binascii.Error:
        raise refusal("The image's data URL is not valid base64.") from None


def upload_source(payload: dict | None, upload_folder: str | Path) -> str | bytes:
    """What ``vse.images.load_image`` reads of an upload, untouched by Gradio: the uploaded file's path, or a data URL's bytes.

    The upload event runs with ``preprocess=False``: Gradio's own image preprocessing
    opens and converts every upload before the handler runs, so broken, huge or
    hostile files failed inside Gradio with a bare "Error" and transparency landed
    on black. Here every upload goes through the library's one decoding rule, as the
    gallery and training do; its pixel budget is read from the header, so nothing
    large is ever decoded.
    """
    if not payload:
        raise refusal("Upload an image first.")
    url, path = payload.get("url"), payload.get("path")
    if isinstance(url, str) and url.startswith("data:"):
        return data_url_bytes(url, upload_limit_bytes())
    if not isinstance(path, str) or not path:
        raise refusal("The upload holds no file.")
    if not Path(path).resolve().is_relative_to(Path(upload_folder).resolve()):
        raise refusal("Only files uploaded to this app can be used.")  # never a path elsewhere on the server
    return path


class SavedBlockConfigs(BlocksConfig):
    """Gradio's block configuration, with the config of each of the page's own blocks made once.

    Gradio builds a new session state for every call that brings no session hash (each
    ``curl`` call of the HTTP API does), and with it the config of every block on the
    page: 5.9 ms for this app's 64 blocks, most of it ``inspect.signature`` of each
    component's constructor. Here a block's config is made the first time it is asked
    for and handed out afterwards as a fresh copy (a pickle round trip, 0.3 ms for all
    of them), so sessions never share a dict Gradio may change. Only the page's own
    blocks are saved, and only while they are the page's: a block a session replaced,
    a rendered block, or a config that does not pickle is made as before.
    Sessions copy their configuration with ``copy``; this subclass's copies keep the store.
    """

    def __init__(self, root_block: gr.Blocks):
        super().__init__(root_block)
        self.saved: dict[int, tuple[object, bytes]] = {}

    def __copy__(self) -> SavedBlockConfigs:
        new = super().__copy__()
        new.__class__ = SavedBlockConfigs
        new.saved = self.saved
        return new

    def config_for_block(self, _id: int, rendered_ids: list[int], block, renderable=None) -> dict:
        own = not rendered_ids and renderable is None and self.root_block.default_config.blocks.get(_id) is block
        if not own:
            return BlocksConfig.config_for_block(_id, rendered_ids, block, renderable)
        saved = self.saved.get(_id)
        if saved is not None and saved[0] is block:
            return pickle.loads(saved[1])  # bytes this process pickled itself a moment ago, never read from outside
        config = BlocksConfig.config_for_block(_id, rendered_ids, block, renderable)
        # A config that does not pickle is made each time, as Gradio does.
        with contextlib.suppress(pickle.PicklingError, TypeError, AttributeError):
            self.saved[_id] = (block, pickle.dumps(config))
        return config


class CheckedBlocks(gr.Blocks):
    """``gr.Blocks`` that refuses a malformed API call like any other bad input.

    Gradio checks the number and shape of a call's arguments before any handler
    runs, and what it raises there reached clients as a bare "Error" (with a
    traceback in the log). Here a call with too few arguments, or an argument of
    the wrong shape (a string where an upload belongs), gets a message and one log line.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if type(self.default_config) is BlocksConfig and not self.default_config.blocks:
            self.default_config = SavedBlockConfigs(self)
        else:  # a Gradio that builds its configuration differently: run as it does
            log.warning("Gradio's block configuration has changed; block configs are made per session")

    async def preprocess_data(self, block_fn, inputs: list, state, explicit_call: bool = False):
        wanted = len(block_fn.inputs)
        if not isinstance(inputs, list) or len(inputs) < wanted:
            got = len(inputs) if isinstance(inputs, list) else "no list of"
            raise refusal(f"This call takes {wanted} argument{'s' * (wanted != 1)}, got {got}.")
        try:
            return await super().preprocess_data(block_fn, inputs, state, explicit_call)
        except InvalidPathError:  # a file path the client did not upload
            raise refusal("Only files uploaded to this app can be used.") from None
        except pydantic.ValidationError as err:
            problem = err.errors()[0]
            raise refusal(f"An argument has the wrong form: {problem['msg']} (got {problem['input']!r:.60}).") from None


def upload_limit_bytes() -> int:
    """``MAX_UPLOAD`` ("10mb", "500kb", or a number of bytes) in bytes."""
    text = MAX_UPLOAD.strip().lower()
    for suffix, unit in (("gb", 10**9), ("mb", 10**6), ("kb", 10**3), ("b", 1)):
        if text.endswith(suffix):
            return int(float(text.removesuffix(suffix)) * unit)
    return int(text)


@dataclass
class AppConfig:
    """The app's settings: ``python app.py --key=value``, or ``VSE_*`` variables on a Space (APP_COMMAND_LINE)."""

    model: str = field(default="assets/model", metadata={"help": "Hub repo id or local model folder"})
    gallery: str = field(default="assets/gallery", metadata={"help": "datasets source or gallery folder"})
    data_dir: str = field(
        default_factory=default_data_dir,
        metadata={"help": "votes database and index cache (/data/vse on a Space with storage, else feedback)"},
    )
    reviewer: str = field(default="local-reviewer", metadata={"help": "reviewer name when OAuth is off"})
    # A vector engine URL puts the indexes in Qdrant, shared by replicas (vse/serving/engine_index.py, docs/SCALING.md).
    index: str = field(
        default="auto",
        metadata={"help": f"faiss index kind, one of {INDEX_KINDS}, or qdrant+http://HOST:PORT, qdrant+file:FOLDER, "
                  "qdrant+memory:, qdrant+edge:FOLDER (vse.serving.engine_index)"},
    )  # fmt: skip
    query_precision: str = field(
        default="int8",
        metadata={"help": f"how a search query is encoded, one of {QUERY_PRECISIONS}: int8 runs the quantised "
                  "copy of a frozen transformer text backbone (about twice as fast; docs/PERFORMANCE.md)"},
    )  # fmt: skip
    votes_per_minute: int = field(default=120, metadata={"help": "votes a reviewer may cast a minute"})
    # An image leaves the review queue once this many different people reviewed it
    # (3 for majority voting over three reviewers).
    reviews_per_image: int = field(default=1, metadata={"help": "reviewers per image before it leaves the queue"})
    # Reviewers working at the same time are given different images: one handed out is kept from the
    # others until its reviewer votes on it or skips it, or this long (vse/serving/review_progress.py).
    review_lease_seconds: float = field(
        default=600.0, metadata={"help": "seconds an image handed to a reviewer is kept from others (0: off)"}
    )
    backup: str | None = field(
        default=None,
        metadata={"help": "Hub dataset repo id or folder the votes are backed up to (vse/serving/vote_backup.py)"},
    )
    backup_seconds: float = field(default=60.0, metadata={"help": "backup period: a kill loses at most this much"})
    # VSE_OAUTH=1 turns it on locally too, with Gradio's mocked sign-in (your own Hub login) to try the flow.
    oauth: bool = field(
        default_factory=space_has_oauth, metadata={"help": "reviewers sign in with their Hub account (Space default)"}
    )
    host: str = field(default="127.0.0.1", metadata={"help": "address to serve on"})
    port: int = field(default=7860, metadata={"help": "port to serve on"})

    def __post_init__(self) -> None:
        check_index_setting(self.index)
        if self.query_precision not in QUERY_PRECISIONS:
            raise ValueError(f"query_precision must be one of {QUERY_PRECISIONS}, got {self.query_precision!r}")
        if self.votes_per_minute < 1 or self.reviews_per_image < 1 or self.backup_seconds <= 0:
            raise ValueError("votes_per_minute and reviews_per_image must be at least 1, backup_seconds positive")
        if not self.review_lease_seconds >= 0:
            raise ValueError("review_lease_seconds must not be negative")


# A Space passes no arguments: its variables set the fields. Precedence, lowest
# first: AppConfig's defaults, these variables, --config FILE, the command line.
APP_COMMAND_LINE = CommandLine(
    prog="python app.py",
    description="Image-text retrieval app (Gradio).",
    environment={
        "model": "VSE_MODEL",
        "gallery": "VSE_GALLERY",
        "data_dir": "VSE_DATA_DIR",
        "index": "VSE_INDEX",
        "query_precision": "VSE_QUERY_PRECISION",
        "votes_per_minute": "VSE_VOTES_PER_MINUTE",
        "reviews_per_image": "VSE_REVIEWS_PER_IMAGE",
        "review_lease_seconds": "VSE_REVIEW_LEASE_SECONDS",
        "backup": "VSE_FEEDBACK_REPO",
        "backup_seconds": "VSE_BACKUP_SECONDS",
        "oauth": "VSE_OAUTH",
        "host": "GRADIO_SERVER_NAME",
        "port": "GRADIO_SERVER_PORT",
    },
)


class VSEApp:
    """Typed handlers over a retrieval service and a feedback store."""

    def __init__(
        self, service: RetrievalService, store: FeedbackStore, config: AppConfig, backup: VoteBackup | None = None
    ):
        self.service, self.store, self.config, self.backup = service, store, config, backup
        self._progress: ReviewProgress | None = None
        self._progress_lock = threading.Lock()
        self.leases = Leases(config.review_lease_seconds)
        self.thumbnail_dir = Path(config.data_dir) / "thumbnails"
        self.thumbnails = ThumbnailCache(self.thumbnail_dir, THUMBNAIL_CACHE_BYTES)
        # Thumbnails are public gallery images written on their first view:
        # served in place, not hashed and copied into Gradio's cache on every search.
        static_folder_first(self.thumbnail_dir)

    # How long a review request waits for the review queue while it is being computed, before
    # it is told to come back: a worker is not held for the minutes a huge gallery could take.
    queue_wait_seconds = 10.0

    @property
    def queue(self) -> list[int]:
        """The review queue (gallery rows, the review worth most first), waiting for it if need be.

        ``create`` starts computing it in the background as soon as the service is
        loaded (galleries up to ``EAGER_REVIEW_QUEUE_MAX`` images; larger ones on the
        first review request); review handlers use ``ready_queue``, which waits a
        bounded time."""
        return self.service.review_queue()

    def ready_queue(self) -> list[int]:
        """The review queue; a refusal saying it is being prepared when it is not ready in ``queue_wait_seconds``."""
        try:
            return self.service.review_queue(timeout=self.queue_wait_seconds)
        except ReviewQueueNotReady as err:
            raise refusal(str(err)) from None

    @classmethod
    def create(cls, config: AppConfig, progress: Progress | None = None) -> VSEApp:
        service = RetrievalService.load(
            config.model, config.gallery, config.data_dir, config.index, progress, config.query_precision
        )
        if len(service.gallery) <= EAGER_REVIEW_QUEUE_MAX:
            service.start_review_queue()  # in the background: the search is served at once
        store = FeedbackStore(os.path.join(config.data_dir, "votes.db"))
        backup = None
        if config.backup:  # restores every backed-up vote before the app serves anyone
            if progress is not None:
                progress("restoring the backed-up votes", 0, 0)
            backup = VoteBackup(store, backup_files(config.backup), every_seconds=config.backup_seconds).start()
            log.info("votes are backed up to %s every %.0f s", config.backup, config.backup_seconds)
        return cls(service, store, config, backup)

    def close(self) -> None:
        """Upload the votes not backed up yet (a clean shutdown) and release the index engine."""
        if self.backup is not None:
            self.backup.stop()
        self.service.close()

    # ------------------------------------------------------------ downloads
    def download_corrections(self) -> str:
        """The corrections table as it stands (majority verdict per image and tag), as a CSV file."""
        rows = majority_table(self.store.votes())
        path = self.export_dir() / f"corrections-{time.strftime('%Y%m%dT%H%M%S')}.csv"
        with path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=["image_id", "tag", "verdict", "votes", "total_votes"])
            writer.writeheader()
            writer.writerows(rows)
        return str(path)

    def download_votes(self) -> str:
        """Every stored vote, one JSON object a line."""
        path = self.export_dir() / f"votes-{time.strftime('%Y%m%dT%H%M%S')}.jsonl"
        with path.open("w", encoding="utf-8") as handle:
            for vote in self.store.votes():
                handle.write(json.dumps(vote.__dict__, ensure_ascii=False) + "\n")
        return str(path)

    def export_dir(self) -> Path:
        """A temporary folder (Gradio serves downloads from there, wherever the data folder is)."""
        folder = (
            Path(tempfile.gettempdir()) / f"vse-exports-{hashlib.sha256(self.config.data_dir.encode()).hexdigest()[:8]}"
        )
        folder.mkdir(parents=True, exist_ok=True)
        for old in sorted(folder.iterdir())[:-20]:  # keep the newest few
            old.unlink(missing_ok=True)
        return folder

    def example_queries(self) -> list[str]:
        """A few captions of held-out gallery images (the test split when marked), as search examples."""
        gallery = self.service.gallery
        held_out = gallery.captioned_rows("test") or gallery.captioned_rows()
        step = max(1, len(held_out) // EXAMPLE_QUERIES)
        return [gallery.items[row].captions[0] for row in held_out[::step][:EXAMPLE_QUERIES]]

    # ------------------------------------------------------------ search tab
    def thumbnail_file(self, index: int) -> str:
        """A file holding the gallery image's encoded bytes (written on its first view, atomically).

        Returning files (not PIL images) spares re-encoding every result and lets
        Gradio serve the same bytes to concurrent requests safely; a later view
        finds the file without reading the image from the gallery (vse/serving/thumbnails.py).
        """
        gallery = self.service.gallery
        return str(self.thumbnails.file(gallery.image_key(index), lambda: self.displayable_image(index)))

    def displayable_image(self, index: int) -> tuple[bytes, str]:
        """The gallery image's bytes and file suffix as a browser shows them.

        As stored when the browser can show them and the image is at most
        ``THUMBNAIL_SIDE`` pixels on its longest side; else decoded (safely, as
        for search) and scaled down to WebP.
        """
        data = self.service.gallery.image_bytes(index)
        suffix = image_suffix(data)
        side = stored_side(data)
        if suffix is not None and side is not None and side <= THUMBNAIL_SIDE:
            return data, suffix
        return scaled_down(self.service.gallery.image(index), THUMBNAIL_SIDE)

    def _labels(self, hits) -> list[tuple[str, str | None]]:
        """(id, title) of each hit's image, read from their two columns: a page of results shows
        nothing else of its items (building whole items cost 0.2-0.4 ms a search at 1M)."""
        gallery = self.service.gallery
        return [(gallery.ids[h.index], gallery.titles[h.index]) for h in hits]

    def _gallery_cells(self, hits, labels: list[tuple[str, str | None]] | None = None) -> list[tuple[str, str]]:
        labels = self._labels(hits) if labels is None else labels
        return [
            (self.thumbnail_file(h.index), f"{title or image_id} · {h.score:.2f}")
            for h, (image_id, title) in zip(hits, labels, strict=True)
        ]

    @staticmethod
    def _results_table(hits, labels: list[tuple[str, str | None]]) -> list[list]:
        return [
            [rank + 1, title, image_id, round(h.score, 4)]
            for rank, (h, (image_id, title)) in enumerate(zip(hits, labels, strict=True))
        ]

    @torch.inference_mode()
    def search(self, query: object, k: object) -> tuple[list, list[list], list[int]]:
        """Top-k gallery images for a sentence: gallery cells, a results table, hit indices."""
        if not isinstance(query, str):
            raise refusal("Type a sentence to search for.")
        try:
            hits = self.service.search_text(query, result_count(k, 1, MAX_TOP_K))
        except QueryError as err:
            raise refusal(str(err)) from None
        labels = self._labels(hits)
        return self._gallery_cells(hits, labels), self._results_table(hits, labels), [h.index for h in hits]

    def _captions_table(self, embedding: torch.Tensor) -> list[list]:
        pool = self.service.gallery
        hits = self.service.nearest_captions(embedding, CAPTIONS_SHOWN)
        return [[pool.caption_texts[h.index], pool.caption_owners[h.index], round(h.score, 4)] for h in hits]

    @torch.inference_mode()
    def select_result(self, hit_indices: list[int], event: gr.SelectData) -> tuple[list[list], list[list], str, list]:
        """Nearest captions, web tags and visually similar images of the selected result."""
        if not hit_indices or event.index is None or event.index >= len(hit_indices):
            return [], [], "", []
        index = hit_indices[event.index]
        item = self.service.gallery.items[index]
        embedding = self.service.image_embedding(index)
        similar = self._gallery_cells(self.service.similar_images(embedding, SIMILAR_SHOWN, exclude=index))
        return self._captions_table(embedding), [[tag] for tag in item.tags], item.title or item.id, similar

    @torch.inference_mode()
    def describe_upload(self, upload: dict | None) -> tuple[list[list], list]:
        """Nearest captions and visually similar gallery images of an uploaded picture (Gradio's file data, raw)."""
        source = upload_source(upload, get_upload_folder())
        try:
            embedding = self.service.embed_image(source)
        except ImageLoadError as err:
            raise refusal(f"This image cannot be used: {err}") from None
        similar = self.service.similar_images(embedding, SIMILAR_SHOWN)
        return self._captions_table(embedding), self._gallery_cells(similar)

    # ------------------------------------------------------------ review tab
    def reviewer(self, typed_name: str | None, profile: gr.OAuthProfile | None) -> str:
        """Who votes: the Hub username under OAuth, else the typed (or configured) name."""
        if self.config.oauth:
            if profile is None:
                raise refusal("Sign in with Hugging Face to review tags.")
            return profile.username
        try:
            return clean_user_name(self.config.reviewer if typed_name is None else typed_name)
        except VoteError as err:
            raise refusal(f"Reviewer name: {err}.") from None

    @staticmethod
    def checked_verdict(item: GalleryItem, tag: object, verdict: object) -> str:
        """The verdict to store for ``tag`` of ``item``; refuses what cannot mean anything."""
        if verdict not in ("wrong", "right", "added"):
            raise refusal("The verdict must be wrong, right or added.")
        if not isinstance(tag, str) or not normalize_tag(tag):
            raise refusal("The tag must be a non-empty string.")
        has_tag = normalize_tag(tag) in {normalize_tag(t) for t in item.tags}
        if verdict in ("wrong", "right") and not has_tag:
            raise refusal(f"Image {item.id!r} has no tag {tag!r}: only its own tags can be judged wrong or right.")
        return "right" if verdict == "added" and has_tag else verdict  # adding a tag it has confirms it

    def _vote(self, user: str, item: GalleryItem, tag: object, verdict: object) -> None:
        """Store one vote; refuses a verdict on a tag the image does not have, and bursts."""
        verdict = self.checked_verdict(item, tag, verdict)
        try:
            self.store.add_vote(
                user, item.id, tag, verdict, self.service.revision, per_minute=self.config.votes_per_minute
            )
        except RateLimited:
            raise refusal(
                f"Too many votes: at most {self.config.votes_per_minute} a minute. Please slow down."
            ) from None
        except VoteError as err:
            raise refusal(str(err)) from None
        self.leases.release(item.id, user)  # a vote on it ends the reviewer's lease; their vote counts now

    def reviewable(self, position: int, user: str | None) -> bool:
        """Not yet reviewed by this reviewer, nor by as many people as an image needs."""
        image_id = self.current_item(position).id
        if user is not None and self.store.reviewed_images(user, [image_id]):
            return False
        return self.store.reviewer_counts([image_id]).get(image_id, 0) < self.config.reviews_per_image

    def review_progress(self) -> ReviewProgress:
        """The queue's progress tracker (a new one when the queue, the store or ``reviews_per_image`` changed)."""
        queue, need = self.ready_queue(), self.config.reviews_per_image
        with self._progress_lock:
            if self._progress is None or not self._progress.matches(self.store, queue, need):
                self._progress = ReviewProgress(self.store, queue, self.service.gallery.ids.take, need, self.leases)
            return self._progress

    def next_position(self, position: int, user: str | None, include_current: bool = False) -> int | None:
        """The next reviewable queue position after (or at) ``position``, wrapping; None when the queue is done."""
        return self.review_progress().next_position(position + (0 if include_current else 1), user)

    def tag_rows(self, index: int) -> list[tuple[str, float]]:
        """(tag, P(wrong)) of a gallery item, most suspicious first, repeats dropped."""
        item, suspicion = self.service.gallery.items[index], self.service.tag_suspicion()[index]
        seen, rows = set(), []
        for tag, probability in zip(item.tags, suspicion.tolist(), strict=True):
            if normalize_tag(tag) and normalize_tag(tag) not in seen:
                seen.add(normalize_tag(tag))
                rows.append((tag, float(probability)))
        return sorted(rows, key=lambda row: -row[1])

    def review_view(self, position: int, user: str | None = None) -> tuple:
        """Image, title, detail, tag choices (suspicion shown, suggested verdicts ticked), counter."""
        queue = self.ready_queue()
        if not queue:
            return None, "No tagged images in this gallery.", "", gr.update(choices=[], value=[]), self.counter(user)
        position = position % len(queue)
        index = queue[position]
        item = self.service.gallery.items[index]
        rows = self.tag_rows(index)
        mine = {v.tag: v.verdict for v in self.store.votes(image_id=item.id, user=user)} if user else {}
        ticked = [
            tag for tag, probability in rows
            if mine.get(normalize_tag(tag)) == "wrong" or (normalize_tag(tag) not in mine and probability >= SUGGEST_WRONG)
        ]  # fmt: skip
        expected = float(sum(probability for _, probability in rows))
        detail = (
            f"Image {position + 1} of {len(queue)} · about {expected:.1f} wrong tags expected "
            f"(ranked by model {self.service.revision[:8]}). Ticked = suggested wrong."
        )
        choices = [(f"{tag}  ·  {probability:.0%} likely wrong", tag) for tag, probability in rows]
        return (
            self.service.gallery.image(index),
            item.title or item.id,
            detail,
            gr.update(choices=choices, value=ticked),
            self.counter(user),
        )

    def counter(self, user: str | None) -> str:
        mine = len(self.store.reviewed_images(user)) if user else 0
        return f"{mine} images reviewed by you · {self.store.count()} votes stored in total"

    def current_item(self, position: int) -> GalleryItem:
        queue = self.ready_queue()
        return self.service.gallery.items[queue[position % len(queue)]]

    def mark_tags(
        self, position: int, ticked: list[str], previous: list[str], name: str, profile: gr.OAuthProfile | None
    ):
        """Store a vote at once for each tag whose tick changed (ticked = wrong, unticked = right)."""
        user = self.reviewer(name, profile)
        item = self.current_item(position)
        for tag in set(ticked or []) ^ set(previous or []):
            self._vote(user, item, tag, "wrong" if tag in ticked else "right")
        return ticked, self.counter(user)

    def add_tag(self, position: int, text: str, name: str, profile: gr.OAuthProfile | None):
        """Record missing tags (comma-separated) for the current image."""
        user = self.reviewer(name, profile)
        tags = [t.strip() for t in str(text or "").split(",") if t.strip()]
        if not tags:
            raise refusal("Type the missing tag (several: separate them with commas).")
        for tag in tags:
            self._vote(user, self.current_item(position), tag, "added")
        return "", self.counter(user)

    def next_image(self, position: int, ticked: list[str], name: str, profile: gr.OAuthProfile | None):
        """Record the shown verdicts (ticked = wrong, unticked = right) for tags not voted yet, then move on."""
        user = self.reviewer(name, profile)
        item = self.current_item(position)
        voted = {v.tag for v in self.store.votes(image_id=item.id, user=user)}
        for tag in item.tags:
            if normalize_tag(tag) and normalize_tag(tag) not in voted:
                voted.add(normalize_tag(tag))
                self._vote(user, item, tag, "wrong" if tag in (ticked or []) else "right")
        return self.skip(position, name, profile)

    def skip(self, position: int, name: str, profile: gr.OAuthProfile | None):
        """Show the next image that still needs a review (this one stays in the queue for others)."""
        user = self.reviewer(name, profile)
        self.leases.release(self.current_item(position).id, user)
        candidate = self.next_position(position, user)
        if candidate is None:
            candidate = position
            gr.Info("No more images need a review from you. Thank you!")
        view = self.review_view(candidate, user)
        return (candidate, *view, view[3]["value"])

    def open_review(self, position: int, name: str, profile: gr.OAuthProfile | None):
        """The first image that needs this reviewer; the controls stay read-only until the reviewer is known."""
        user = None
        with contextlib.suppress(gr.Error):
            user = self.reviewer(name, profile)
        try:
            queue = self.service.review_queue(timeout=self.queue_wait_seconds)
        except ReviewQueueNotReady as err:  # said in the tab, its controls off, until it is opened again
            view = (None, "The review queue is not ready yet", str(err), gr.update(choices=[], value=[]),
                    self.counter(user))  # fmt: skip
            return (position, *view, [], *[gr.update(interactive=False) for _ in range(4)])
        if queue:
            position = self.next_position(position, user, include_current=True) or position
        view = self.review_view(position, user)
        controls = [gr.update(interactive=user is not None) for _ in range(4)]
        return (position, *view, view[3]["value"], *controls)

    # ------------------------------------------------------------ API
    def gallery_item(self, image_id: object) -> GalleryItem:
        if not isinstance(image_id, str) or image_id not in self.service.gallery.position:
            raise refusal(f"Unknown image id {image_id!r}.")
        return self.service.gallery.items[self.service.gallery.position[image_id]]

    def vote_api(
        self, image_id: str, tag: str, verdict: str, reviewer: str, profile: gr.OAuthProfile | None = None
    ) -> str:
        """Store one vote (verdict: wrong, right or added); returns the counter."""
        user = self.reviewer(reviewer, profile)
        self._vote(user, self.gallery_item(image_id), tag, verdict)
        return self.counter(user)

    def review_api(
        self,
        image_id: str,
        wrong: list[str],
        right: list[str],
        added: list[str],
        reviewer: str,
        profile: gr.OAuthProfile | None = None,
    ) -> str:
        """Store one image's whole review: its tags judged wrong and right, and missing tags added.

        Everything is checked before anything is stored, so a bad tag stores nothing.
        """
        user = self.reviewer(reviewer, profile)
        item = self.gallery_item(image_id)
        votes = []
        for verdict, tags in (("wrong", wrong), ("right", right), ("added", added)):
            tags = [] if tags is None else tags
            if not isinstance(tags, list) or len(tags) > MAX_TAGS_PER_REVIEW:
                raise refusal(f"{verdict} must be a list of at most {MAX_TAGS_PER_REVIEW} tags.")
            votes += [(tag, self.checked_verdict(item, tag, verdict)) for tag in tags]
        if not votes:
            raise refusal("A review needs at least one tag.")
        for tag, verdict in votes:
            self._vote(user, item, tag, verdict)
        return self.counter(user)

    def review_next_api(self, reviewer: str, profile: gr.OAuthProfile | None = None) -> dict:
        """The image the review queue gives this reviewer next: id, title and tags with P(wrong), most suspicious first.

        Returns ``{"image_id": None}`` when nothing needs this reviewer any more.
        """
        user = self.reviewer(reviewer, profile)
        queue = self.ready_queue()
        position = self.next_position(0, user, include_current=True) if queue else None
        if position is None:
            return {"image_id": None, "remaining": 0}
        index = queue[position]
        item = self.service.gallery.items[index]
        return {
            "image_id": item.id,
            "title": item.title,
            "position": position,
            "queue_length": len(queue),
            "tags": [{"tag": tag, "p_wrong": round(p, 4)} for tag, p in self.tag_rows(index)],
            "model_revision": self.service.revision,
        }


def restore_name(saved: str | None):
    """The reviewer name saved in this browser, if any (else the field keeps its default)."""
    return saved if isinstance(saved, str) and saved.strip() else gr.update()


# Keyboard shortcuts of the review tab: digits toggle the tags, Enter goes to the
# next image, S skips. Keys typed into text fields are left alone.
REVIEW_KEYS_JS = """
() => {
  if (window.__vseReviewKeys) return;
  window.__vseReviewKeys = true;
  document.addEventListener("keydown", (event) => {
    const target = event.target;
    const typing = target && (target.tagName === "TEXTAREA" || target.isContentEditable ||
      (target.tagName === "INPUT" && target.type !== "checkbox"));
    if (typing || event.ctrlKey || event.metaKey || event.altKey) return;
    const tags = document.querySelector("#review-tags");
    if (!tags || tags.offsetParent === null) return;
    if (/^[1-9]$/.test(event.key)) {
      const box = tags.querySelectorAll("input[type=checkbox]")[Number(event.key) - 1];
      if (box && !box.disabled) { box.click(); event.preventDefault(); }
    } else if (event.key === "Enter") {
      document.querySelector("#review-next")?.click(); event.preventDefault();
    } else if (event.key === "s" || event.key === "S") {
      document.querySelector("#review-skip")?.click(); event.preventDefault();
    }
  });
}
"""


def ping() -> str:
    """Health check; also the protocol's round-trip floor in benchmarks/app.py."""
    return "ok"


def build_ui(app: VSEApp) -> gr.Blocks:
    with CheckedBlocks(title="Webly supervised image-text retrieval", delete_cache=CACHE_CLEANUP) as demo:
        # Outside the tabs, so that the browser restores it when the page loads, whichever tab shows.
        saved_name = gr.BrowserState("", storage_key="vse-reviewer-name")
        gr.Markdown("# Image-text retrieval\nSearch images by sentence, see what the model says about an image, "
                    "and help clean noisy web tags.")  # fmt: skip
        with gr.Tab("Search", id="search"):
            hit_state = gr.State([])
            with gr.Row():
                query = gr.Textbox(label="Describe an image", placeholder="a red apple", scale=4, max_length=500)
                top_k = gr.Slider(1, MAX_TOP_K, value=DEFAULT_TOP_K, step=1, label="results")
                search_button = gr.Button("Search", variant="primary", elem_id="search-button")
            if app.example_queries():
                gr.Examples(app.example_queries(), inputs=[query], label="Try")
            results = gr.Gallery(label="Results", columns=6, height="auto", allow_preview=False, elem_id="results")
            with gr.Row():
                selected_title = gr.Textbox(label="Selected image", interactive=False)
            with gr.Row():
                captions = gr.Dataframe(headers=["nearest caption", "image", "score"], datatype=["str", "str", "number"],
                                        label="Nearest captions", interactive=False, elem_id="captions")  # fmt: skip
                tags = gr.Dataframe(
                    headers=["web tag"], datatype=["str"], label="Web tags", interactive=False, elem_id="tags"
                )
            table = gr.Dataframe(headers=["rank", "title", "id", "score"], label="Result list", interactive=False)
            with gr.Accordion("Search with an image", open=False):
                upload = gr.Image(type="filepath", label="Upload an image", sources=["upload", "clipboard"])
                upload_button = gr.Button("Describe this image")
                upload_captions = gr.Dataframe(headers=["nearest caption", "image", "score"], interactive=False)
                similar = gr.Gallery(label="Similar images", columns=8, height="auto", allow_preview=False)
            # preprocess=False: the handlers check what clients send themselves (any JSON may arrive as k)
            search_button.click(
                app.search, [query, top_k], [results, table, hit_state], api_name="search", preprocess=False,
                **queue_group("query"),
            )  # fmt: skip
            query.submit(
                app.search, [query, top_k], [results, table, hit_state], api_visibility="private", preprocess=False,
                **queue_group("query"),
            )  # fmt: skip
            selected_similar = gr.Gallery(label="Visually similar", columns=8, height="auto", allow_preview=False)
            results.select(
                app.select_result,
                [hit_state],
                [captions, tags, selected_title, selected_similar],
                api_visibility="private",
                **queue_group("query"),
            )
            upload_button.click(
                app.describe_upload, [upload], [upload_captions, similar], api_name="describe", preprocess=False,
                **queue_group("upload"),
            )  # fmt: skip
        with gr.Tab("Review tags", id="review") as review_tab:
            position = gr.State(0)
            ticked_state = gr.State([])
            with gr.Row():
                if app.config.oauth:
                    gr.LoginButton()
                    reviewer = gr.Textbox(visible=False, value="")
                else:
                    reviewer = gr.Textbox(label="Reviewer name", value=app.config.reviewer, max_length=100)
                counter = gr.Markdown()
            with gr.Row():
                review_image = gr.Image(label="Web image", interactive=False, height=280)
                with gr.Column():
                    review_title = gr.Textbox(label="Title", interactive=False)
                    review_detail = gr.Textbox(label="Why this image", interactive=False)
                    wrong = gr.CheckboxGroup(
                        label="Tick the tags that are WRONG (saved at once; keys 1-9 toggle, Enter = next, S = skip)",
                        choices=[], elem_id="review-tags",
                    )  # fmt: skip
                    with gr.Row():
                        new_tag = gr.Textbox(label="Missing tag", placeholder="e.g. apple", scale=3, max_length=200)
                        add_button = gr.Button("Add tag")
                    with gr.Row():
                        next_button = gr.Button(
                            "Next image (record: ticked wrong, unticked right)",
                            variant="primary",
                            elem_id="review-next",
                        )
                        skip_button = gr.Button("Skip", elem_id="review-skip")
            view = [review_image, review_title, review_detail, wrong, counter, ticked_state]
            controls = [wrong, add_button, next_button, skip_button]
            review_tab.select(
                app.open_review, [position, reviewer], [position, *view, *controls], api_visibility="private",
                **queue_group("review"),
            )  # fmt: skip
            if app.config.oauth:
                demo.load(app.open_review, [position, reviewer], [position, *view, *controls], api_visibility="private",
                          **queue_group("review"))  # fmt: skip
            else:  # a local reviewer's name is remembered in the browser across reloads
                demo.load(restore_name, [saved_name], [reviewer], api_visibility="private").then(
                    app.open_review, [position, reviewer], [position, *view, *controls], api_visibility="private",
                    **queue_group("review"),
                )  # fmt: skip
                reviewer.change(lambda name: name, [reviewer], [saved_name], api_visibility="private")
            wrong.input(
                app.mark_tags,
                [position, wrong, ticked_state, reviewer],
                [ticked_state, counter],
                api_visibility="private",
                **queue_group("review"),
            )
            review = {"api_visibility": "private", **queue_group("review")}
            add_button.click(app.add_tag, [position, new_tag, reviewer], [new_tag, counter], **review)
            next_button.click(app.next_image, [position, wrong, reviewer], [position, *view], **review)
            skip_button.click(app.skip, [position, reviewer], [position, *view], **review)
            demo.load(None, js=REVIEW_KEYS_JS)
            with gr.Accordion("Download the reviews", open=False), gr.Row():
                corrections_button = gr.DownloadButton("Corrections table (CSV)")
                votes_button = gr.DownloadButton("All votes (JSON lines)")
            corrections_button.click(app.download_corrections, None, corrections_button, api_visibility="private")
            votes_button.click(app.download_votes, None, votes_button, api_visibility="private")
        gr.api(app.vote_api, api_name="vote", **queue_group("review"))
        gr.api(app.review_next_api, api_name="review_next", **queue_group("review"))
        gr.api(app.review_api, api_name="review", **queue_group("review"))
        gr.api(ping, api_name="ping")
    return demo


def create_demo(config: AppConfig, progress: Progress | None = None) -> tuple[gr.Blocks, VSEApp]:
    app = VSEApp.create(config, progress)
    resolve_plot_backend()
    return queued(build_ui(app)), app


def resolve_plot_backend() -> None:
    """Ask matplotlib for its backend once, before serving.

    Gradio asks around every event (``gradio.utils.MatplotlibBackendMananger``), and
    the first answer resolves the backend by importing pyplot: 0.3 s on a quiet
    machine (0.9 s in a profile under load), which the first search after a start
    waited for.
    """
    with contextlib.suppress(ImportError):
        import matplotlib

        matplotlib.get_backend()


def queued(demo: gr.Blocks) -> gr.Blocks:
    """``demo`` with Gradio's queue sized as the app serves it (events name their group: ``queue_group``)."""
    return demo.queue(default_concurrency_limit=CONCURRENCY["review"], max_size=QUEUE_SIZE)


def queue_group(name: str) -> dict:
    """Event options putting an event in one of the app's queues (``CONCURRENCY``)."""
    return {"concurrency_id": name, "concurrency_limit": CONCURRENCY[name]}


def launch_options() -> dict:
    """What ``demo.launch`` needs besides host and port: the upload size limit."""
    return {"max_file_size": MAX_UPLOAD}


class StartupStatus:
    """What the app is doing while it starts (a large gallery takes minutes to index), for the status page."""

    def __init__(self) -> None:
        self.what, self.done, self.total = "starting", 0, 0
        self.lock = threading.Lock()

    def update(self, what: str, done: int, total: int) -> None:
        with self.lock:
            self.what, self.done, self.total = what, done, total

    def text(self) -> str:
        with self.lock:
            count = f": {self.done:,} of {self.total:,}" if self.total else ""
            return f"## Starting up\n\nThe app is {self.what}{count}. This page reloads by itself when it is ready."


# While the real app starts, its port serves this page; when the real app answers
# (its API has a "search" endpoint), the page reloads into it.
RELOAD_WHEN_READY_JS = """
() => {
  const check = async () => {
    try {
      const info = await (await fetch("/gradio_api/info")).json();
      if (JSON.stringify(info).includes("search")) { location.reload(); return; }
    } catch (error) {}
    setTimeout(check, 3000);
  };
  setTimeout(check, 3000);
}
"""


def status_page(status: StartupStatus) -> gr.Blocks:
    """A page that shows ``status`` every two seconds until the app replaces it."""
    with gr.Blocks(title="Starting: webly supervised image-text retrieval") as page:
        shown = gr.Markdown(status.text(), elem_id="startup-status")
        gr.Timer(2.0).tick(status.text, None, shown, api_visibility="private")
        page.load(None, js=RELOAD_WHEN_READY_JS)
    return page


def serve(config: AppConfig, host: str, port: int) -> None:
    """Serve a status page on the port while the app loads (and indexes), then the app itself."""
    status = StartupStatus()
    waiting = status_page(status)
    waiting.launch(server_name=host, server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        demo, app = create_demo(config, status.update)
    finally:
        waiting.close()
    try:
        demo.launch(server_name=host, server_port=port, **launch_options())
    finally:  # back up the last votes, release the index engine
        app.close()


def main(argv: list[str] | None = None, environ: dict[str, str] | None = None) -> int:
    """``python app.py``: serve the app of the config read from ``argv`` and ``environ`` (default: this process's)."""
    return run_command(AppConfig, argv, APP_COMMAND_LINE, lambda config: serve(config, config.host, config.port),
                       expected=(*USER_ERRORS, EngineError), environ=environ)  # fmt: skip  # a refused config, model, gallery or engine: one line


if __name__ == "__main__":
    # A Space stops its container with SIGTERM: exit cleanly so that unsent votes are flushed (atexit).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sys.exit(main())
