"""A sharded gallery's fingerprint, taken on most starts from a small record instead of from every image.

``Gallery.fingerprint`` hashes every image (the gallery's embeddings and search
indexes are bound to it): minutes for a million images.  ``write_gallery``
therefore records it beside the shards in ``.fingerprint.json``, with each
shard's stamp (name, size, modification and change times) and the SHA-256 of
its bytes, under a digest of the whole record.  On a start, ``shard_fingerprint``

- takes a record's fingerprint when every shard carries the stamp the record
  gives: one ``stat`` per shard;
- else hashes the shards as files (a checkout or a copy gives unchanged bytes
  new times): when every shard holds the bytes a record gives, its fingerprint
  stands; else the fingerprint is computed from the images again;
- and records what it found in the service's data folder (never in the gallery
  folder, which may be shipped and read-only), so that the next start is one
  ``stat`` per shard again.

Why a stale or edited record cannot get stale embeddings or indexes used: a
record counts only for the very shards it lists (same names, order, sizes and
times), and no program can set a file's change time (ctime) back, so a rewritten
shard never passes for the old one, even with its size and mtime restored; a
record whose digest does not match its content (edited by hand, cut short) is
ignored.  Only someone who rewrites a record and recomputes its digest can get a
wrong fingerprint used, and they could as well write over the embeddings.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from vse.serving.index import write_atomically

log = logging.getLogger(__name__)

RECORD_NAME = ".fingerprint.json"  # hidden: parquet and `datasets` readers of the folder skip it
RECORD_FORMAT = 1
STAMP_KEYS = ("name", "bytes", "mtime_ns", "ctime_ns")
HASH_CHUNK = 1 << 20


def shard_stamp(shard: Path) -> dict[str, int | str]:
    """What changes whenever a shard's bytes may have: its name, size, mtime and ctime."""
    status = shard.stat()
    return {"name": shard.name, "bytes": status.st_size, "mtime_ns": status.st_mtime_ns, "ctime_ns": status.st_ctime_ns}


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes, read in chunks (memory stays flat whatever its size)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def record_digest(record: dict) -> str:
    """SHA-256 of a record without its ``digest`` field, so that an edited or cut record is told apart."""
    content = {key: value for key, value in record.items() if key != "digest"}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def make_record(fingerprint: str, stamps: Sequence[dict], hashes: Sequence[str]) -> dict:
    """A record of ``fingerprint`` for shards of these stamps and file hashes, with its digest."""
    shards = [{**stamp, "sha256": sha256} for stamp, sha256 in zip(stamps, hashes, strict=True)]
    record = {"format": RECORD_FORMAT, "fingerprint": fingerprint, "shards": shards}
    return {**record, "digest": record_digest(record)}


def is_well_formed(record: object) -> bool:
    """A record of this format whose fields have the types written and whose digest matches its content."""
    if not isinstance(record, dict) or record.get("format") != RECORD_FORMAT:
        return False
    shards = record.get("shards")
    if not isinstance(record.get("fingerprint"), str) or not isinstance(shards, list):
        return False
    keys = {*STAMP_KEYS, "sha256"}
    if not all(isinstance(shard, dict) and set(shard) == keys for shard in shards):
        return False
    return record.get("digest") == record_digest(record)


def read_record(path: Path) -> dict | None:
    """The record at ``path``, or None when there is none, it cannot be read or it is not well formed."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not is_well_formed(record):
        log.warning("the gallery fingerprint record %s is damaged or edited: ignored", path)
        return None
    return record


def stamps_match(record: dict, stamps: Sequence[dict]) -> bool:
    return [{key: shard[key] for key in STAMP_KEYS} for shard in record["shards"]] == list(stamps)


def bytes_match(record: dict, stamps: Sequence[dict], hashes: Sequence[str]) -> bool:
    recorded = [(shard["name"], shard["bytes"], shard["sha256"]) for shard in record["shards"]]
    return recorded == [(stamp["name"], stamp["bytes"], sha256) for stamp, sha256 in zip(stamps, hashes, strict=True)]


def write_record(path: Path, record: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, lambda temp: Path(temp).write_text(json.dumps(record, indent=1), encoding="utf-8"))
    return path


def record_beside(shards: Sequence[Path], fingerprint: str) -> Path:
    """Record ``fingerprint`` (computed from these shards' images) in the shards' folder: for builders of galleries."""
    stamps = [shard_stamp(shard) for shard in shards]
    return write_record(
        shards[0].parent / RECORD_NAME, make_record(fingerprint, stamps, [file_sha256(shard) for shard in shards])
    )


def state_record_path(state_dir: Path, gallery_folder: Path) -> Path:
    """Where a service records what it found of the gallery in ``gallery_folder``: one file per gallery folder."""
    name = hashlib.sha256(str(gallery_folder.resolve()).encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return state_dir / f"{name}.json"


def shard_fingerprint(shards: Sequence[Path], compute: Callable[[], str], state_dir: Path | None = None) -> str:
    """The fingerprint of the gallery in ``shards``: from a record whose stamps or file hashes match, else ``compute()``.

    What was found is recorded under ``state_dir`` (when given) if the shards did
    not change meanwhile; a record that cannot be written costs a rehash next start, nothing more.
    """
    folder = shards[0].parent
    before = [shard_stamp(shard) for shard in shards]
    state = state_record_path(state_dir, folder) if state_dir is not None else None
    records = [
        record for record in (read_record(state) if state else None, read_record(folder / RECORD_NAME)) if record
    ]
    for record in records:
        if stamps_match(record, before):
            return record["fingerprint"]
    start = time.perf_counter()
    hashes = [file_sha256(shard) for shard in shards]
    known = next((record["fingerprint"] for record in records if bytes_match(record, before, hashes)), None)
    fingerprint = known or compute()
    why = "its shards changed since they were recorded" if records else "no record of its fingerprint"
    log.info("gallery %s (%s): %s in %.1f s", folder, why,
             "shards hashed, recorded fingerprint confirmed" if known else "fingerprint computed from the images",
             time.perf_counter() - start)  # fmt: skip
    if state is not None and [shard_stamp(shard) for shard in shards] == before:
        try:
            write_record(state, make_record(fingerprint, before, hashes))
        except OSError as err:
            log.warning("could not record the gallery fingerprint in %s: %s", state, err)
    return fingerprint
