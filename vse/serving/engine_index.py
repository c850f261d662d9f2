"""Search indexes held by a vector engine that runs as a cluster (Qdrant), chosen with ``--index URL``.

``vse.serving.index`` keeps the vectors in this process (a matrix or a faiss
index): one machine holds the whole gallery.  Here a Qdrant collection holds them,
on a server or a sharded, replicated cluster (docs/SCALING.md), so that many app
replicas share one copy; ``QdrantIndex`` answers ``search`` like
``vse.serving.index.SearchIndex`` (the ``VectorIndex`` protocol below).

Index URLs (``parse_index_url``; the faiss kinds of ``vse.serving.index.KINDS`` stay as they are):

    qdrant+http://HOST[:PORT][/PREFIX][?api_key_env=NAME]   a server or cluster (port 6333 by default)
    qdrant+https://HOST[:PORT][/PREFIX][?api_key_env=NAME]  the same over TLS
    qdrant+file:///ABSOLUTE/FOLDER  or  qdrant+file:RELATIVE/FOLDER   local mode, kept in a folder
    qdrant+memory:                                          local mode in this process (tests)
    qdrant+edge:///ABSOLUTE/FOLDER  or  qdrant+edge:RELATIVE/FOLDER   Qdrant Edge, kept in a folder

An API key is never written in the URL: ``api_key_env`` names the environment
variable that holds it.  Local mode is the client's own brute-force Python
implementation (no server, one process per folder): right for tests and small
galleries, not a stand-in for the server's speed.  Qdrant Edge (``qdrant-edge-py``,
``EdgeEngine``) is the engine's own storage, optimizer and HNSW code run in this
process, one shard per collection: no server either, but the server's indexing and
search, so its recall and speed are the engine's.

A collection is named by a digest of everything its vectors depend on (model,
gallery, index name, size, dimension), as ``vse.serving.index`` keys stored faiss
indexes: a collection of another model or gallery is never used.  One that holds
every row is reused (origin "loaded"); a missing one is created and a partial one
(a start killed part-way) completed, both by idempotent upserts of every row, so
replicas that start together cannot undo each other's work.  Point ids are row
numbers and points carry no payload: the app keeps the gallery's metadata itself.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol
from urllib.parse import parse_qsl, urlsplit

import numpy as np
from tqdm.auto import tqdm

from vse.serving.index import (
    CALIBRATION_K,
    HNSW_BUILD_DEPTH,
    HNSW_NEIGHBOURS,
    KINDS,
    RECALL_TARGET,
    Calibration,
    calibration_key,
    candidate_settings,
    choose_measured,
    exact_search,
    hnsw_search_depth,
    recall_at_k,
    write_atomically,
)

if TYPE_CHECKING:
    from qdrant_client import QdrantClient

log = logging.getLogger(__name__)

ENGINE_SCHEMES = ("qdrant+http", "qdrant+https", "qdrant+file", "qdrant+memory", "qdrant+edge")
URL_FORMS = (
    "qdrant+http://HOST[:PORT], qdrant+https://HOST[:PORT], qdrant+file:FOLDER, qdrant+memory: or qdrant+edge:FOLDER"
)
# Part of every collection's name: bump it when what a collection holds changes.
COLLECTION_FORMAT = 1
UPLOAD_BATCH = 256  # points per upsert request: Qdrant advises 64-256 (docs/SCALING.md)
REQUEST_TIMEOUT_S = 60  # a server request; an upsert of one batch is the longest
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class VectorIndex(Protocol):
    """What the app asks of an index: ``vse.serving.index.SearchIndex`` and ``QdrantIndex`` both fit."""

    kind: str
    size: int
    dim: int
    origin: str  # "built" by this start, or "loaded" (read back or found ready)

    def memory_bytes(self) -> int: ...

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]: ...


class IndexURLError(ValueError):
    """An ``--index`` value that is neither a faiss kind nor an engine URL this module reads."""


class EngineError(RuntimeError):
    """The engine cannot be used as configured (unreachable, refused, its key variable unset)."""


# ------------------------------------------------------------------ URLs
@dataclass(frozen=True)
class EngineLocation:
    """Where the engine is: a ``server`` at ``url``, a local-mode ``file`` folder, or ``memory``."""

    mode: str  # "server", "file", "memory" or "edge"
    url: str | None = None  # http(s)://HOST:PORT[/PREFIX], for a server
    path: str | None = None  # the folder, for local mode on disk and for Qdrant Edge
    api_key_env: str | None = None  # the variable holding a server's API key (never the key)

    def describe(self) -> str:
        """The location for logs: no key, only the variable's name."""
        if self.mode == "server":
            return self.url + (f" (API key from ${self.api_key_env})" if self.api_key_env else "")
        if self.mode == "edge":
            return f"Qdrant Edge in {self.path}"
        return f"local mode in {self.path}" if self.mode == "file" else "local mode in memory"


def is_engine_url(setting: str) -> bool:
    """An index setting is a URL when it names a scheme; the faiss kinds never do."""
    return ":" in setting


def parse_index_url(url: str) -> EngineLocation:
    """The engine location an index URL names (grammar in the module docstring); ``IndexURLError`` if bad."""
    scheme, _, rest = url.partition(":")
    if scheme not in ENGINE_SCHEMES:
        raise IndexURLError(f"unknown index URL scheme {scheme!r} in {shown(url)!r}: use {URL_FORMS}")
    if scheme == "qdrant+memory":
        if rest:
            raise IndexURLError(f"qdrant+memory: takes nothing after the colon, got {shown(url)!r}")
        return EngineLocation("memory")
    if scheme in ("qdrant+file", "qdrant+edge"):
        return EngineLocation(scheme.removeprefix("qdrant+"), path=_local_folder(url, scheme, rest))
    return _server_location(url, scheme.removeprefix("qdrant+"))


def shown(url: str) -> str:
    """``url`` as errors may show it: without its options or fragment, where a key may have been put."""
    return re.split(r"[?#]", url, maxsplit=1)[0]


def _local_folder(url: str, scheme: str, rest: str) -> str:
    """The folder of ``<scheme>:RELATIVE`` or ``<scheme>:///ABSOLUTE`` (``qdrant+file``, ``qdrant+edge``)."""
    if "?" in rest or "#" in rest:
        raise IndexURLError(f"{scheme}: takes a folder and no options, got {shown(url)!r}")
    if rest.startswith("//"):
        host, slash, path = rest[2:].partition("/")
        if host:
            raise IndexURLError(f"{scheme}:// names a folder on this machine, not on {host!r}: use {scheme}:///PATH")
        rest = slash + path
    if not rest.strip("/"):
        raise IndexURLError(f"{url!r} names no folder: use {scheme}:///ABSOLUTE/FOLDER or {scheme}:RELATIVE/FOLDER")
    return rest


def _server_location(url: str, scheme: str) -> EngineLocation:
    parts = urlsplit(url.removeprefix("qdrant+"))
    url = shown(url)
    if parts.username is not None or parts.password is not None:
        raise IndexURLError(
            "an index URL holds no credentials: put the API key in a variable, name it ?api_key_env=NAME"
        )
    if not parts.hostname:
        raise IndexURLError(f"{url!r} names no host: use qdrant+{scheme}://HOST[:PORT]")
    try:
        port = parts.port
    except ValueError:  # its message repeats the text after the colon, which may be a key put there
        raise IndexURLError(f"{parts.hostname!r}: the port must be a whole number from 0 to 65535") from None
    if parts.fragment:
        raise IndexURLError(f"{url!r}: an index URL has no #fragment")
    options = dict(parse_qsl(parts.query, keep_blank_values=True))
    unknown = sorted(set(options) - {"api_key_env"})
    if unknown or len(options) != len(parse_qsl(parts.query, keep_blank_values=True)):
        named = sorted(name for name, _ in parse_qsl(parts.query, keep_blank_values=True))
        raise IndexURLError(f"{url!r}: the only option is api_key_env=NAME (once), got options {named}")
    key_env = options.get("api_key_env")
    if key_env is not None and not ENV_NAME.fullmatch(key_env):
        raise IndexURLError(f"api_key_env must name an environment variable, got {key_env!r}")
    address = f"{scheme}://{parts.hostname}:{port or 6333}{parts.path.rstrip('/')}"
    return EngineLocation("server", url=address, api_key_env=key_env)


def check_index_setting(setting: str) -> None:
    """Refuse an index setting that is neither a faiss kind (``vse.serving.index.KINDS``) nor a good engine URL."""
    if is_engine_url(setting):
        parse_index_url(setting)
    elif setting not in KINDS:
        raise IndexURLError(f"index must be one of {KINDS} or an engine URL ({URL_FORMS}), got {setting!r}")


# ------------------------------------------------------------------ the engine
def connect(location: EngineLocation, environ: dict[str, str] | None = None) -> QdrantClient | EdgeEngine:
    """A client of the engine at ``location``; one per process and location (local mode locks its folder)."""
    if location.mode == "edge":
        return EdgeEngine(Path(location.path))
    from qdrant_client import QdrantClient

    if location.mode == "memory":
        return QdrantClient(location=":memory:")
    if location.mode == "file":
        try:
            return QdrantClient(path=location.path)
        except RuntimeError as err:  # another process holds the folder's lock
            raise EngineError(f"cannot open {location.describe()}: {err}") from err
    return QdrantClient(url=location.url, api_key=_api_key(location, environ), timeout=REQUEST_TIMEOUT_S)


def _api_key(location: EngineLocation, environ: dict[str, str] | None) -> str | None:
    if location.api_key_env is None:
        return None
    key = (os.environ if environ is None else environ).get(location.api_key_env)
    if not key:
        raise EngineError(f"the index URL reads its API key from ${location.api_key_env}, which is not set")
    return key


def collection_key(name: str, model: str, gallery: str, size: int, dim: int) -> dict:
    """Everything a collection's vectors depend on; a collection is used only when all of it matches."""
    return {"format": COLLECTION_FORMAT, "name": name, "model": model, "gallery": gallery, "size": size, "dim": dim,
            "distance": "dot", "hnsw": {"m": HNSW_NEIGHBOURS, "ef_construct": HNSW_BUILD_DEPTH}}  # fmt: skip


def collection_name(key: dict) -> str:
    """``vse-<name>-<digest[:24]>``: short enough for any engine, distinct for every key."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
    return f"vse-{key['name']}-{digest[:24]}"


@dataclass
class QdrantIndex:
    """One collection of a Qdrant engine, searched by inner product (the embeddings are normalised)."""

    client: QdrantClient
    collection: str
    size: int
    dim: int
    origin: str = "built"  # "built": filled by this start; "loaded": found whole
    local: bool = True  # local mode: the client holds the vectors in this process
    kind: str = "qdrant"

    def memory_bytes(self) -> int:
        """Bytes of vectors this process holds: local mode keeps a float32 copy; a server keeps them itself."""
        return self.size * self.dim * 4 if self.local else 0

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(Q, k) scores and (Q, k) row ids, best first (ties: lower id first); ids are -1 where fewer than k exist."""
        from qdrant_client import models

        queries = np.ascontiguousarray(np.asarray(queries, dtype=np.float32))
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise ValueError(f"expected (Q, {self.dim}) queries, got shape {queries.shape}")
        k = max(1, min(int(k), self.size)) if self.size else 1
        if self.size == 0:
            return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
        # A server searches its HNSW graph as deep as vse.serving.index searches faiss's; local mode is exact.
        params = None if self.local else models.SearchParams(hnsw_ef=max(k, hnsw_search_depth(self.size)))
        requests = [
            models.QueryRequest(query=query.tolist(), limit=k, params=params, with_payload=False) for query in queries
        ]
        responses = self.client.query_batch_points(self.collection, requests=requests)
        return _as_arrays([[(p.score, int(p.id)) for p in response.points] for response in responses], k)


def _as_arrays(rows: list[list[tuple[float, int]]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """(Q, k) scores and ids from per-query (score, id) lists, ordered best first then by id; padded with -1."""
    scores, ids = np.full((len(rows), k), -np.inf, np.float32), np.full((len(rows), k), -1, np.int64)
    for row, hits in enumerate(rows):
        for column, (score, point) in enumerate(sorted(hits, key=lambda hit: (-hit[0], hit[1]))[:k]):
            scores[row, column], ids[row, column] = score, point
    return scores, ids


def points_stored(client: QdrantClient, collection: str) -> int | None:
    """How many points ``collection`` holds; None when it does not exist."""
    if not client.collection_exists(collection):
        return None
    return int(client.count(collection, exact=True).count)


def create_collection(client: QdrantClient, collection: str, dim: int) -> None:
    """An empty collection for ``dim``-d vectors compared by inner product, HNSW as ``vse.serving.index`` builds it.

    Another replica may create it first: then the existing one is used.
    """
    from qdrant_client import models

    try:
        client.create_collection(
            collection,
            vectors_config=models.VectorParams(size=dim, distance=models.Distance.DOT),
            hnsw_config=models.HnswConfigDiff(m=HNSW_NEIGHBOURS, ef_construct=HNSW_BUILD_DEPTH),
        )
    except (ValueError, *_api_errors()):  # local mode says "already exists" with a ValueError, a server with a 409
        if not client.collection_exists(collection):
            raise


def fill_collection(client: QdrantClient, collection: str, vectors: np.ndarray, name: str) -> None:
    """Upsert every row (point id = row number) in batches, waiting for each; idempotent."""
    from qdrant_client import models

    for start in tqdm(range(0, len(vectors), UPLOAD_BATCH), desc=f"filling the {name} collection", unit="batch"):
        chunk = vectors[start : start + UPLOAD_BATCH]
        batch = models.Batch(ids=list(range(start, start + len(chunk))), vectors=chunk.tolist())
        client.upsert(collection, points=batch, wait=True)


def _api_errors() -> tuple[type[Exception], ...]:
    """What the client raises when a server refuses a request or cannot be reached."""
    from qdrant_client.http.exceptions import ApiException

    return (ApiException,)


def load_or_fill_index(
    client: QdrantClient | EdgeEngine,
    embeddings: np.ndarray,
    *,
    name: str,
    model: str,
    gallery: str,
    local: bool,
    queries: np.ndarray | None = None,
) -> VectorIndex:
    """The collection of ``name`` ("image", "caption") for these digests: reused when whole, else filled.

    ``model`` and ``gallery`` are the digests the embeddings depend on, as for
    ``vse.serving.index.load_or_build_index``.  ``EngineError`` when the engine refuses or cannot be reached.
    ``queries``: calibration queries (Qdrant Edge chooses its ``hnsw_ef`` by measured recall on them).
    """
    if isinstance(client, EdgeEngine):
        return client.load_or_fill(embeddings, name=name, model=model, gallery=gallery, queries=queries)
    try:
        return _load_or_fill(client, embeddings, name=name, model=model, gallery=gallery, local=local)
    except _api_errors() as err:
        raise EngineError(f"the vector engine refused or did not answer: {err}") from err


def _load_or_fill(
    client: QdrantClient, embeddings: np.ndarray, *, name: str, model: str, gallery: str, local: bool
) -> QdrantIndex:
    vectors = np.ascontiguousarray(np.asarray(embeddings, dtype=np.float32))
    size, dim = vectors.shape
    collection = collection_name(collection_key(name, model, gallery, size, dim))
    stored = points_stored(client, collection)
    if stored == size:
        log.info("the %s index is the engine's collection %s (%d vectors)", name, collection, size)
        return QdrantIndex(client, collection, size, dim, origin="loaded", local=local)
    if stored is None:
        create_collection(client, collection, dim)
    else:
        log.warning("collection %s holds %d of %d vectors: completing it", collection, stored, size)
    start = time.perf_counter()
    fill_collection(client, collection, vectors, name)
    log.info("filled the %s collection %s (%d vectors) in %.1f s", name, collection, size, time.perf_counter() - start)
    return QdrantIndex(client, collection, size, dim, origin="built", local=local)


# ------------------------------------------------------------------ Qdrant Edge
EDGE_BATCH = 1024  # points per upsert: in-process, so no request size to respect
LOCK_FILE = ".vse-lock"  # in an Edge folder: held by the one engine using it
# A segment with less vector data than this is scanned, not indexed and searched by graph (Qdrant's
# default for both its indexing and full-scan thresholds).
EDGE_FULL_SCAN_KB = 10_000


def _is_edge_error(err: BaseException) -> bool:
    """An error of the engine or its folder: qdrant-edge raises plain ``Exception`` ("Service runtime
    error: ..."); the folder raises ``OSError``.  Anything else is a defect and keeps its traceback."""
    return type(err) is Exception or isinstance(err, OSError)


@dataclass
class EdgeIndex:
    """One Qdrant Edge shard (one collection), searched by inner product through the engine's own HNSW."""

    shard: object  # qdrant_edge.EdgeShard
    size: int
    dim: int
    origin: str = "built"
    kind: str = "qdrant-edge"
    ef_search: int = 0  # the engine's hnsw_ef; 0: vse.serving.index.hnsw_search_depth for the size
    calibration: Calibration | None = None  # how ef_search was chosen (calibrate_edge)

    def memory_bytes(self) -> int:
        """Bytes of the vectors the shard keeps (memory-mapped, cached by the engine), graph not counted."""
        return self.size * self.dim * 4

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(Q, k) scores and (Q, k) row ids, best first (ties: lower id first); ids are -1 where fewer than k exist."""
        import qdrant_edge

        queries = np.ascontiguousarray(np.asarray(queries, dtype=np.float32))
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise ValueError(f"expected (Q, {self.dim}) queries, got shape {queries.shape}")
        if self.size == 0:
            return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
        k = max(1, min(int(k), self.size))
        params = qdrant_edge.SearchParams(hnsw_ef=max(k, self.ef_search or hnsw_search_depth(self.size)))
        requests = [
            qdrant_edge.QueryRequest(limit=k, query=qdrant_edge.Query.Nearest(query.tolist()), params=params)
            for query in queries
        ]
        try:
            responses = self.shard.query_batch(qdrant_edge.QueryBatchRequest(requests))
        except Exception as err:
            if not _is_edge_error(err):
                raise
            raise EngineError(f"Qdrant Edge could not search: {err}") from err
        return _as_arrays([[(p.score, int(p.id)) for p in response] for response in responses], k)


class EdgeEngine:
    """Qdrant Edge in ``folder``: one shard per collection (``<folder>/<collection name>``), opened once.

    A shard holding every row is reused; a missing one is created, a partial one (a
    start killed part-way) completed by idempotent upserts; then the engine's
    optimizer builds its HNSW graph (``EdgeShard.optimize``, which returns at once
    when there is nothing left to do).  One engine per folder at a time: the folder
    is locked (``<folder>/.vse-lock``) until ``close``, and a second engine, in this
    process or another, gets an ``EngineError`` instead of touching shards in use.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.shards: dict[str, object] = {}
        self._lock = None
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._lock = open(self.folder / LOCK_FILE, "a")  # noqa: SIM115 - held until close()
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise EngineError(f"Qdrant Edge in {self.folder} is in use by another engine (one at a time)") from None
        except OSError as err:
            if self._lock is not None:
                self._lock.close()
            raise EngineError(f"cannot use {self.folder} for Qdrant Edge: {err}") from err

    def close(self) -> None:
        for shard in self.shards.values():
            shard.close()
        self.shards.clear()
        if self._lock is not None and not self._lock.closed:
            self._lock.close()  # releases the lock

    def load_or_fill(
        self, embeddings: np.ndarray, *, name: str, model: str, gallery: str, queries: np.ndarray | None = None
    ) -> EdgeIndex:
        try:
            import qdrant_edge  # noqa: F401 - an absent package is named in the error below
        except ImportError as err:
            raise EngineError("qdrant+edge: needs the qdrant-edge-py package (pip install qdrant-edge-py)") from err
        if np.ndim(embeddings) != 2:
            raise ValueError(f"expected (N, D) vectors, got shape {np.shape(embeddings)}")
        size, dim = np.shape(embeddings)  # a whole shard needs no float32 copy of a mapped float16 matrix
        collection = collection_name(collection_key(name, model, gallery, size, dim))
        try:
            index = self._load_or_fill(embeddings, name, collection)
        except Exception as err:
            if not _is_edge_error(err):
                raise
            raise EngineError(f"Qdrant Edge in {self.folder} could not serve {collection}: {err}") from err
        if queries is not None and len(queries):
            self._calibrate(index, embeddings, queries, collection)
        return index

    def _calibrate(self, index: EdgeIndex, vectors: np.ndarray, queries: np.ndarray, collection: str) -> None:
        """Set ``index``'s ef_search by measured recall (``calibrate_edge``), read back from
        ``<folder>/<collection>.search.json`` when a calibration on these queries of this shard, as
        stored, is there (a shard this start filled is measured again)."""
        path = self.folder / f"{collection}.search.json"
        key = {"collection": collection, "calibration": calibration_key(queries), "size": index.size}
        try:
            stored = json.loads(path.read_text())
            if index.origin == "loaded" and stored.get("key") == key:
                index.calibration = Calibration.from_json(stored["search"])
                index.ef_search = int(index.calibration.settings["ef_search"])
                return
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            pass  # none yet, or unreadable: measure again
        index.calibration = calibrate_edge(index, vectors, queries)
        if index.calibration is not None:
            log.info("Qdrant Edge %s: hnsw_ef %d, recall@%d %.3f on %d queries", collection, index.ef_search,
                     index.calibration.k, index.calibration.recall, index.calibration.queries)  # fmt: skip
            record = json.dumps({"key": key, "search": index.calibration.to_json()}, indent=1)
            try:
                write_atomically(path, lambda temp: Path(temp).write_text(record))
            except OSError as err:  # a full disk or read-only folder costs a calibration next start, not this one
                log.warning("could not save the Qdrant Edge calibration to %s: %s", path, err)

    def _load_or_fill(self, vectors: np.ndarray, name: str, collection: str) -> EdgeIndex:
        import qdrant_edge

        size, dim = vectors.shape
        path = self.folder / collection
        shard = self.shards.get(collection)
        if shard is None:
            shard = _open_shard(path, dim) if path.is_dir() and any(path.iterdir()) else None
            if shard is None:
                path.mkdir(parents=True, exist_ok=True)
                shard = qdrant_edge.EdgeShard.create(str(path), edge_config(dim))
                (self.folder / f"{collection}.search.json").unlink(missing_ok=True)  # measured on a graph now gone
            self.shards[collection] = shard
        stored = shard.count(qdrant_edge.CountRequest(exact=True))
        origin = "loaded"
        if stored != size:
            if stored:
                log.warning("Qdrant Edge shard %s holds %d of %d vectors: completing it", collection, stored, size)
            start = time.perf_counter()
            for first in tqdm(range(0, size, EDGE_BATCH), desc=f"filling the {name} shard", unit="batch"):
                rows = np.asarray(vectors[first : first + EDGE_BATCH], dtype=np.float32)
                points = [qdrant_edge.Point(first + offset, row.tolist()) for offset, row in enumerate(rows)]
                shard.update(qdrant_edge.UpdateOperation.upsert_points(points))
            log.info(
                "filled the %s shard %s (%d vectors) in %.1f s", name, collection, size, time.perf_counter() - start
            )
            origin = "built"
        start = time.perf_counter()
        if shard.optimize():  # a graph built by this start (after a fill, a killed start or a changed config)
            shard.flush()
            origin = "built"
            log.info("Qdrant Edge indexed the %s shard in %.1f s", name, time.perf_counter() - start)
        log.info("the %s index is the Qdrant Edge shard %s (%d vectors)", name, path, size)
        return EdgeIndex(shard, size, dim, origin=origin)


def calibrate_edge(
    index: EdgeIndex, vectors: np.ndarray, queries: np.ndarray, target: float = RECALL_TARGET, k: int = CALIBRATION_K
) -> Calibration | None:
    """Choose the engine's ``hnsw_ef`` as ``vse.serving.index.calibrate_search`` chooses faiss's efSearch:
    the cheapest value on HNSW's ladder whose recall@k on ``queries`` reaches ``target``, else the cheapest
    within the slack of the best (None, nothing set, with no queries or no more rows than k)."""
    vectors, queries = np.asarray(vectors, dtype=np.float32), np.asarray(queries, dtype=np.float32)
    if not len(queries) or index.size <= k:
        return None
    kth_scores = exact_search(vectors, queries, k)[0][:, -1]
    measured: list[tuple[float, dict[str, int]]] = []
    for settings in candidate_settings("hnsw", index.size, index.dim):
        index.ef_search = settings["ef_search"]
        measured.append((recall_at_k(vectors, queries, index.search(queries, k)[1], kth_scores), settings))
        if measured[-1][0] >= target:
            break
    recall, settings = choose_measured(measured, target)
    index.ef_search = settings["ef_search"]
    if recall < target:
        log.warning("Qdrant Edge: no hnsw_ef reached recall@%d %.2f (best %.3f); kept %d at %.3f",
                    k, target, max(r for r, _ in measured), index.ef_search, recall)  # fmt: skip
    return Calibration(settings, recall, len(queries), target, k)


def _open_shard(path: Path, dim: int):
    """The shard stored at ``path``, or None after removing one the engine cannot read (a start killed
    while writing it): like a damaged stored faiss index, it is made again from the embeddings.  The
    folder's lock (``EdgeEngine``) means no other engine has it open; a file-system error is raised."""
    import qdrant_edge

    try:
        return qdrant_edge.EdgeShard.load(str(path), edge_config(dim))  # checked against the config
    except Exception as err:
        if type(err) is not Exception or "WouldBlock" in str(err):  # not the engine's "cannot read this"
            raise
        log.warning("Qdrant Edge cannot read the shard %s, it will be made again: %s", path, err)
    shutil.rmtree(path)
    return None


def edge_config(dim: int):
    """A shard of ``dim``-d vectors compared by inner product, HNSW as ``vse.serving.index`` builds it."""
    import qdrant_edge

    return qdrant_edge.EdgeConfig(
        vectors=qdrant_edge.EdgeVectorParams(size=dim, distance=qdrant_edge.Distance.Dot),
        hnsw_config=qdrant_edge.HnswIndexConfig(
            m=HNSW_NEIGHBOURS, ef_construct=HNSW_BUILD_DEPTH, full_scan_threshold=EDGE_FULL_SCAN_KB
        ),
        optimizers=qdrant_edge.EdgeOptimizersConfig(indexing_threshold=EDGE_FULL_SCAN_KB),
    )
