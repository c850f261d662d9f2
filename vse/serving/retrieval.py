"""Retrieval over a gallery with a loaded model: what the app asks questions of.

``RetrievalService.load`` loads a model (Hub id or folder) and a gallery, then
loads the gallery's embeddings if they were made by this exact model revision
and gallery, or rebuilds them (with a progress bar) and caches them in the data
folder; embeddings of another model are never used.  The search indexes are
stored beside them and read back (memory-mapped) on later starts, under the same
rule (``vse.serving.index.load_or_build_index``).  An index setting that is a vector
engine URL (``qdrant+http://HOST:PORT``, ``qdrant+file:FOLDER``, ...) puts both indexes
in that engine instead (``vse.serving.engine_index``), so that app replicas can share
them.  Queries return row indices into the gallery and the caption pool with cosine scores.
"""

from __future__ import annotations

import logging
import threading
import time
import unicodedata
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from vse.errors import GalleryError
from vse.hub import resolve_model_dir
from vse.images import ImageLoadError, load_image
from vse.model import QUERY_PRECISIONS, VSEModel
from vse.serving.engine_index import VectorIndex, connect, is_engine_url, load_or_fill_index, parse_index_url
from vse.serving.gallery import Gallery, GalleryEmbeddings, embed_tag_lists, load_gallery, model_digest
from vse.serving.index import IndexStore, calibration_queries, load_or_build_index
from vse.suspicion import FlatTags, TagPairs, TagSuspicion, tag_suspicion

log = logging.getLogger(__name__)
MAX_QUERY_CHARS = 500
# Below the data folder: what a start learnt of a sharded gallery's fingerprint (vse.serving.gallery_fingerprint).
GALLERY_STATE = "galleries"


class QueryError(ValueError):
    """A query that cannot be answered; the message is meant for the user."""


class ReviewQueueNotReady(RuntimeError):
    """The review queue is still being computed; the message is meant for the user."""

    def __init__(self, images: int):
        super().__init__(f"The review queue is being prepared ({images:,} images); try again in a minute.")


@dataclass(frozen=True)
class ReviewQueue:
    """Every gallery item's tag suspicion, and the tagged items in review order (gallery rows)."""

    suspicion: TagSuspicion
    queue: list[int]


def clean_query(text: str | None) -> str:
    """The query without control characters; refuses empty and over-long input."""
    if text is None:
        raise QueryError("Type a sentence to search for.")
    cleaned = "".join(" " if unicodedata.category(ch)[0] == "C" else ch for ch in str(text))
    cleaned = " ".join(cleaned.split())
    if not cleaned:
        raise QueryError("Type a sentence to search for.")
    if len(cleaned) > MAX_QUERY_CHARS:
        raise QueryError(f"The query is too long ({len(cleaned):,} characters; at most {MAX_QUERY_CHARS}).")
    return cleaned


@dataclass
class Hit:
    index: int
    score: float


Progress = Callable[[str, int, int], None]  # (what, done, total): start-up status for people waiting


def embed_gallery(
    model: VSEModel, gallery: Gallery, batch_size: int = 64, progress: Progress | None = None
) -> GalleryEmbeddings:
    """Embeddings of the gallery's readable images and of their caption pool (with a progress bar).

    Unreadable images are counted, logged and listed in ``dropped``; the rows
    describe the gallery without them (``gallery.without(dropped)``).
    """
    chunks, dropped = [], []
    for start in tqdm(range(0, len(gallery), batch_size), desc="indexing gallery", unit="batch"):
        if progress is not None:
            progress("indexing the gallery's images", start, len(gallery))
        images = []
        for item in gallery.items[start : start + batch_size]:
            try:
                images.append(load_image(item.image))
            except ImageLoadError as err:
                dropped.append(item.id)
                log.warning("gallery image %r left out: %s", item.id, err)
        if images:
            chunks.append(model.encode_image(images, batch_size=batch_size))
    kept = gallery.without(dropped)
    images = torch.cat(chunks) if chunks else torch.empty(0, model.config.embed_dim)
    if progress is not None:
        progress("indexing the caption pool", len(gallery), len(gallery))
    captions = model.encode_text(kept.caption_texts, batch_size=256)
    return GalleryEmbeddings(images, captions, "", gallery.fingerprint, embed_tag_lists(model, kept), dropped)


def cache_folder(data_dir: Path, revision: str, fingerprint: str) -> Path:
    """``<data_dir>/index/<model digest[:16]>-<gallery fingerprint[:16]>``: embeddings and indexes."""
    return data_dir / "index" / f"{revision[:16]}-{fingerprint[:16]}"


def shipped_folder(gallery_source: Path) -> Path | None:
    """The ``index`` folder shipped beside a gallery folder (read, never written)."""
    return gallery_source.parent / "index" if gallery_source.is_dir() else None


def servable(gallery: Gallery, embeddings: GalleryEmbeddings, source: str) -> Gallery:
    """The gallery without its unreadable images; ``GalleryError`` when that leaves nothing to serve."""
    served = gallery.without(embeddings.dropped)
    if embeddings.dropped:
        log.warning("gallery %s: %d unreadable images left out", source, len(embeddings.dropped))
    if not len(served):
        raise GalleryError(f"none of the {len(gallery):,} images of the gallery {source} can be decoded")
    return served


class RetrievalService:
    """A model, a gallery, its embeddings and their search indexes.

    With an ``index_store`` the indexes are read from it when stored ones match
    this model revision, these embeddings' gallery, kind and size, else built and
    saved there; ``image_index.origin`` / ``caption_index.origin`` say which.
    ``index_kind`` is a faiss kind (``vse.serving.index.KINDS``) or a vector engine
    URL (``vse.serving.engine_index``), whose collections follow the same rule.
    The service puts ``model`` in eval mode and pins its weights (``VSEModel.pin_weights``):
    change them through ``load_state_dict`` or call ``pin_weights`` again after changing them.
    """

    def __init__(
        self,
        model: VSEModel,
        revision: str,
        gallery: Gallery,
        embeddings: GalleryEmbeddings,
        index_kind: str = "auto",
        index_store: IndexStore | None = None,
        query_precision: str = "int8",
    ):
        if embeddings.images.shape[0] != len(gallery) or embeddings.captions.shape[0] != len(gallery.caption_texts):
            raise ValueError("embeddings do not match the gallery")
        if query_precision not in QUERY_PRECISIONS:
            raise ValueError(f"query_precision must be one of {QUERY_PRECISIONS}, got {query_precision!r}")
        self.model, self.revision, self.gallery, self.embeddings = model.eval(), revision, gallery, embeddings
        self.model.pin_weights()  # served: its weights are not read on every query
        self.query_precision = query_precision  # how search_text encodes a query (VSEModel.encode_query)
        # One engine client for both indexes: local mode locks its folder to one client.
        self.engine = connect(parse_index_url(index_kind)) if is_engine_url(index_kind) else None
        # Each index's search settings are calibrated on the other modality, the queries it serves:
        # texts (captions, else tag lists) search the images, images search the captions.
        texts = embeddings.captions if len(embeddings.captions) or embeddings.tags is None else embeddings.tags
        try:
            self.image_index: VectorIndex = self._index("image", embeddings.images, texts, index_kind, index_store)
            self.caption_index: VectorIndex = self._index(
                "caption", embeddings.captions, embeddings.images, index_kind, index_store
            )
        except BaseException:
            if self.engine is not None:
                self.engine.close()  # its folder's lock, for a retry in this process
            raise
        self._review: Future[ReviewQueue] | None = None  # the review queue, computed once (start_review_queue)
        self._review_lock = threading.Lock()
        self._review_thread: threading.Thread | None = None

    @classmethod
    def load(
        cls,
        model_source: str,
        gallery_source: str,
        data_dir: str | Path,
        index_kind: str = "auto",
        progress: Progress | None = None,
        query_precision: str = "int8",
    ) -> RetrievalService:
        start = time.perf_counter()
        report = progress or (lambda what, done, total: None)
        report("loading the model", 0, 0)
        folder = resolve_model_dir(model_source)
        model = VSEModel.from_pretrained(folder)
        revision = model_digest(folder)
        report("loading the gallery", 0, 0)
        gallery, skipped = load_gallery(gallery_source, state_dir=Path(data_dir) / GALLERY_STATE)
        if skipped:
            log.warning("gallery %s: skipped %s", gallery_source, skipped)
        embeddings = cls._embeddings(model, revision, gallery, Path(gallery_source), Path(data_dir), progress)
        report("preparing the search indexes", 0, 0)
        served = servable(gallery, embeddings, gallery_source)
        shipped = shipped_folder(Path(gallery_source))
        store = IndexStore(
            cache_folder(Path(data_dir), revision, embeddings.gallery), (shipped,) if shipped is not None else ()
        )
        service = cls(model, revision, served, embeddings, index_kind, store, query_precision)
        service.warm_up()
        log.info(
            "loaded %d images (%d unreadable left out), %d captions in %.1fs",
            len(served),
            len(embeddings.dropped),
            len(served.caption_texts),
            time.perf_counter() - start,
        )
        return service

    @staticmethod
    def _embeddings(
        model: VSEModel,
        revision: str,
        gallery: Gallery,
        gallery_source: Path,
        data_dir: Path,
        progress: Progress | None = None,
    ) -> GalleryEmbeddings:
        fingerprint = gallery.fingerprint
        cache = cache_folder(data_dir, revision, fingerprint)
        for folder in [f for f in (shipped_folder(gallery_source), cache) if f]:
            found = GalleryEmbeddings.load(folder, revision, fingerprint, mapped=True)
            if found is not None:
                log.info("gallery embeddings from %s", folder)
                return found
        log.info("no embeddings for this model revision and gallery: indexing %d images", len(gallery))
        built = embed_gallery(model, gallery, progress=progress)
        built.digest = revision
        built.save(cache)
        return built

    def _index(
        self, name: str, vectors: torch.Tensor, queries: torch.Tensor, kind: str, store: IndexStore | None
    ) -> VectorIndex:
        digests = {"name": name, "model": self.revision, "gallery": self.embeddings.gallery}
        sample = calibration_queries(queries.numpy())
        if self.engine is not None:
            local = parse_index_url(kind).mode != "server"
            return load_or_fill_index(self.engine, vectors.numpy(), local=local, queries=sample, **digests)
        return load_or_build_index(
            vectors.numpy(), kind, store=store, queries=sample if len(sample) else None, **digests
        )

    def close(self, review_wait: float = 60.0) -> None:
        """Release the engine's client (local mode: its folder's lock; the faiss kinds hold nothing to
        release), and wait up to ``review_wait`` seconds for a review queue still being computed: a
        process that exits while that thread runs inside ONNX Runtime is aborted by the C++ runtime
        ("terminate called without an active exception", exit status 134)."""
        if self.engine is not None:
            self.engine.close()
        if self._review_thread is not None:
            self._review_thread.join(review_wait)

    def warm_up(self) -> None:
        """Encode one query and one image and search both indexes once, so that one-off work
        (exporting the ONNX Runtime copies of frozen backbones, importing faiss: 1-2 s during
        which every request waits) does not land on the first users."""
        self.model.encode_text(["warm up"])
        query = self.model.encode_query("warm up", self.query_precision)
        self._hits(self.image_index, query, 1)
        self._hits(self.caption_index, query, 1)
        if len(self.gallery):
            self.model.encode_image([self.gallery.image(0)])

    # ------------------------------------------------------------ queries
    def search_text(self, query: str, k: int = 12) -> list[Hit]:
        embedding = self.model.encode_query(clean_query(query), self.query_precision)
        return self._hits(self.image_index, embedding, k)

    def embed_image(self, image) -> torch.Tensor:
        """(1, D) embedding of an uploaded image; ``ImageLoadError`` if it cannot be read."""
        return self.model.encode_image([load_image(image)])

    def nearest_captions(self, embedding: torch.Tensor, k: int = 5) -> list[Hit]:
        return self._hits(self.caption_index, embedding, k)

    def similar_images(self, embedding: torch.Tensor, k: int = 8, exclude: int | None = None) -> list[Hit]:
        hits = self._hits(self.image_index, embedding, k + (exclude is not None))
        return [hit for hit in hits if hit.index != exclude][:k]

    def image_embedding(self, index: int) -> torch.Tensor:
        return self.embeddings.images[index : index + 1].float()

    @staticmethod
    def _hits(index: VectorIndex, embedding: torch.Tensor, k: int) -> list[Hit]:
        scores, ids = index.search(embedding.float().numpy(), k)
        return [Hit(int(i), float(s)) for s, i in zip(scores[0], ids[0], strict=True) if i >= 0]

    # ------------------------------------------------------------ review queue
    def start_review_queue(self) -> Future[ReviewQueue]:
        """Start computing the review queue in a daemon thread (once); the future of it.

        The app calls this as soon as the service is loaded, so that the search is
        served at once and the first review does not wait minutes (at a million images).
        """
        with self._review_lock:
            if self._review is None:
                self._review = Future()
                thread = threading.Thread(target=self._compute_review, name="review-queue", daemon=True)
                thread.start()
                self._review_thread = thread
            return self._review

    def _compute_review(self) -> None:
        start = time.perf_counter()
        try:
            suspicion = self.compute_tag_suspicion()
            priority = suspicion.review_priority()
            tagged = np.flatnonzero(~np.isnan(priority))
            queue = tagged[np.argsort(-priority[tagged], kind="stable")].tolist()
        except BaseException as err:  # noqa: BLE001 - handed to whoever waits for the queue
            log.exception("the review queue could not be computed")
            self._review.set_exception(err)
            return
        log.info("review queue of %d images computed in %.1f s", len(queue), time.perf_counter() - start)
        self._review.set_result(ReviewQueue(suspicion, queue))

    def _review_result(self, timeout: float | None) -> ReviewQueue:
        try:
            return self.start_review_queue().result(timeout)
        except FutureTimeout:
            raise ReviewQueueNotReady(len(self.gallery)) from None

    def tag_suspicion(self, timeout: float | None = None) -> TagSuspicion:
        """P(wrong) of every gallery item's tags: ``[i]`` is aligned with ``items[i].tags`` (empty when untagged).

        Waits for the background computation (``start_review_queue``; started here if
        it was not), at most ``timeout`` seconds when given: ``ReviewQueueNotReady`` after.
        """
        return self._review_result(timeout).suspicion

    def review_queue(self, timeout: float | None = None) -> list[int]:
        """Tagged images, the review worth most first (``vse.suspicion.review_priority``); waits as ``tag_suspicion``."""
        return self._review_result(timeout).queue

    def expected_wrong(self) -> np.ndarray:
        """(N,) expected number of wrong tags of each image (NaN when it has no tags)."""
        return self.tag_suspicion().expected_wrong()

    def compute_tag_suspicion(self) -> TagSuspicion:
        """P(wrong) of every tag occurrence of the gallery, computed now over flat arrays.

        Pairs the model's training scored (``VSEModel.suspicion``, cross-fitted) take
        that estimate; the others are estimated here from the model's embeddings with
        the same calibration (``vse.suspicion.tag_suspicion``), which judges tags the
        model trained on too kindly, so a model without a table ranks less sharply.
        A tag that normalises to nothing gets 0; repeats of a tag share its value.
        """
        tags = FlatTags.from_arrow(self.gallery.tag_column())
        pairs, pair_of = tags.pairs()
        table = self.model.suspicion
        known = np.full(len(pairs), np.nan)
        if table is not None:
            known = table.lookup(self.gallery.id_column(), tags.vocabulary, pairs)
        if np.isnan(known).any():
            known = np.where(np.isnan(known), self._live_suspicion(pairs, tags.vocabulary), known)
        values = np.zeros(len(tags.tag))
        values[pair_of >= 0] = known[pair_of[pair_of >= 0]]
        return TagSuspicion(values, tags.offsets)

    def _live_suspicion(self, pairs: TagPairs, vocabulary: list[str]) -> np.ndarray:
        """(P,) P(wrong) of every pair, from the model's embeddings (0 when there are fewer than two pairs)."""
        if len(pairs) < 2:
            return np.zeros(len(pairs))
        tag_emb = self.model.encode_text(vocabulary, batch_size=256)
        probability, _ = tag_suspicion(self.embeddings.images, tag_emb, pairs)
        return probability
