"""Parquet gallery shards read lazily: the metadata in Arrow, an image only when it is asked for.

A gallery of a million images holds tens of gigabytes of encoded images but a
few hundred megabytes of ids, titles, captions and tags.  ``open_shards`` reads
the metadata columns alone, so opening a gallery costs its metadata, never its
images.  ``ShardImages`` reads an image on demand: the row group that holds it
(``vse.serving.gallery.write_gallery`` keeps row groups near ``ROW_GROUP_BYTES`` of
images), keeping the last few, so that reading a gallery in order (indexing,
fingerprinting) reads each row group once.

Rows are cleaned as ``vse.serving.gallery.gallery_from_rows`` cleans the rows of other
sources (blank captions and tags dropped, missing ids named ``row-<n>``, repeated
ids skipped and counted), with one difference that keeps images unread: a row
whose image is missing or empty is not skipped here but left out at indexing,
where every unreadable image is (``vse.serving.retrieval.embed_gallery``).
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from vse.errors import GalleryError

# Rows of one row group read to show one image: about this many bytes of images.
ROW_GROUP_BYTES = 1_000_000
# Row groups of images kept in memory: the few a page of results or a sequential read touches.
ROW_GROUPS_KEPT = 4
METADATA_SCHEMA = pa.schema(
    [("id", pa.string()), ("title", pa.string()), ("captions", pa.list_(pa.string())), ("tags", pa.list_(pa.string())),
     ("category", pa.string()), ("split", pa.string()), ("row", pa.int64())]
)  # fmt: skip
# The columns read when a shard is opened: all but the images.
SOURCE_COLUMNS = ("id", "title", "captions", "caption", "tags", "category", "split")
# Every character ``str.strip()`` removes (``str.isspace``): a caption or tag of only these is blank.
PYTHON_WHITESPACE = (
    "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009"
    "\u200a\u2028\u2029\u202f\u205f\u3000"
)
BLANK_PATTERN = "^[" + "".join(f"\\x{{{ord(ch):x}}}" for ch in PYTHON_WHITESPACE) + "]*$"


def image_values(column: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """The encoded bytes of an image column: binary as written by ``write_gallery``, or ``datasets``' image struct."""
    if pa.types.is_struct(column.type):
        return pc.struct_field(column, "bytes")
    return column


def image_column_problem(schema: pa.Schema) -> str | None:
    """Why a shard's image column cannot be read as encoded images, or None when it can."""
    if "image" not in schema.names:
        return f"it has no image column; its columns are {schema.names}"
    kind = schema.field("image").type
    if pa.types.is_struct(kind):
        names = [kind.field(i).name for i in range(kind.num_fields)]
        if "bytes" in names and pa.types.is_binary(kind.field("bytes").type):
            return None
    elif pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
        return None
    return f"its image column holds {kind}, not encoded image bytes"


def blank_strings(values: pa.Array) -> np.ndarray:
    """Mask of the null and blank (whitespace only, as ``str.strip`` sees it) strings."""
    if not len(values):
        return np.zeros(0, dtype=bool)
    blank = pc.match_substring_regex(values, BLANK_PATTERN)
    if blank.null_count:
        blank = pc.fill_null(blank, True)
    return blank.to_numpy(zero_copy_only=False)


def string_lists(column: pa.Array | None, length: int) -> pa.ListArray:
    """A list-of-strings column without nulls and blank strings; a string column becomes one-item lists."""
    if column is None:
        return pa.ListArray.from_arrays(pa.array(np.zeros(length + 1, np.int32)), pa.array([], pa.string()))
    if pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
        values = pc.cast(pc.list_flatten(column), pa.string())
        owners = pc.list_parent_indices(column).to_numpy()
    else:
        values, owners = pc.cast(column, pa.string()), np.arange(length)
    kept = ~blank_strings(values)
    offsets = np.zeros(length + 1, dtype=np.int32)
    np.cumsum(np.bincount(owners[kept], minlength=length), out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets), values.filter(pa.array(kept)))


def text_column(column: pa.Array | None, length: int) -> pa.Array:
    """A string column with empty strings for nulls (and for a missing column)."""
    if column is None:
        return pa.array([""] * length, pa.string())
    text = pc.cast(column, pa.string())
    return pc.fill_null(text, "") if text.null_count else text  # fill_null's kernels cost 30 MB of RSS to load


def id_column(column: pa.Array, first_row: int) -> pa.Array:
    """Ids as strings; a missing id is ``row-<n>``, n counting rows across the shards (as other sources are named)."""
    ids = pc.cast(column, pa.string())
    if ids.null_count == 0:
        return ids
    names = ids.to_pylist()
    for row in np.flatnonzero(ids.is_null().to_numpy(zero_copy_only=False)):
        names[row] = f"row-{first_row + row}"
    return pa.array(names, pa.string())


def metadata_of(shard_table: pa.Table, first_row: int) -> pa.Table:
    """One shard's metadata columns in ``METADATA_SCHEMA``; ``row`` numbers its rows across the shards."""
    length = shard_table.num_rows

    def column(name: str) -> pa.Array | None:
        return shard_table[name].combine_chunks() if name in shard_table.column_names else None

    ids = column("id")
    captions = column("captions") if "captions" in shard_table.column_names else column("caption")
    return pa.Table.from_arrays(
        [id_column(pa.nulls(length, pa.string()) if ids is None else ids, first_row), text_column(column("title"), length), string_lists(captions, length),
         string_lists(column("tags"), length), text_column(column("category"), length),
         text_column(column("split"), length), pa.array(np.arange(first_row, first_row + length, dtype=np.int64))],
        schema=METADATA_SCHEMA,
    )  # fmt: skip


def first_occurrences(ids: pa.ChunkedArray) -> np.ndarray:
    """Mask of the rows whose id has not appeared in an earlier row."""
    kept = np.ones(len(ids), dtype=bool)
    if pc.count_distinct(ids).as_py() == len(ids):
        return kept
    codes = pc.dictionary_encode(ids.combine_chunks()).indices.to_numpy(zero_copy_only=False)
    kept[:] = False
    kept[np.unique(codes, return_index=True)[1]] = True
    return kept


def read_shard(shard: Path, first_row: int) -> tuple[pa.Table, list[int]]:
    """A shard's metadata (``metadata_of``) and row group sizes; ``GalleryError`` naming the shard if unreadable."""
    try:
        with pq.ParquetFile(shard) as parquet:
            problem = image_column_problem(parquet.schema_arrow)
            if problem:
                raise GalleryError(f"{shard} is not a gallery shard: {problem}")
            names = [name for name in SOURCE_COLUMNS if name in parquet.schema_arrow.names]
            metadata = metadata_of(parquet.read(columns=names), first_row)
            groups = [parquet.metadata.row_group(g).num_rows for g in range(parquet.metadata.num_row_groups)]
    except (OSError, pa.ArrowException) as err:
        raise GalleryError(f"{shard} is not a readable gallery shard: {err}") from err
    return metadata, groups


class ShardImages:
    """The encoded images of parquet shards, read a row group at a time when one is asked for.

    Rows are numbered across the shards in order (``METADATA_SCHEMA``'s ``row``).
    Safe to share between threads: threads asking for one row group at once wait for one
    read of it (a burst of first views, e.g. a page of results on a fresh start, would
    otherwise read and decompress the same row group once per thread).
    """

    def __init__(self, shards: Sequence[Path], row_groups: Sequence[Sequence[int]]):
        self.shards = list(shards)
        self._places = [(shard, group) for shard, sizes in enumerate(row_groups) for group in range(len(sizes))]
        sizes = [size for shard_sizes in row_groups for size in shard_sizes]
        self._starts = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])
        self._row_group = functools.lru_cache(maxsize=ROW_GROUPS_KEPT)(self._read_row_group)
        self._reading = [threading.Lock() for _ in self._places]  # one read of a row group at a time

    def __len__(self) -> int:
        return int(self._starts[-1])

    def read(self, row: int) -> bytes:
        """The encoded image of ``row`` (empty when the shard holds none there)."""
        if not 0 <= row < len(self):
            raise IndexError(f"image row {row} out of range (0-{len(self) - 1})")
        place = int(np.searchsorted(self._starts, row, side="right")) - 1
        with self._reading[place]:  # a second thread waits, then finds the group in the cache
            group = self._row_group(place)
        value = group[row - int(self._starts[place])].as_py()
        return value or b""

    def _read_row_group(self, place: int) -> pa.Array:
        shard, group = self._places[place]
        try:
            with pq.ParquetFile(self.shards[shard]) as parquet:
                table = parquet.read_row_group(group, columns=["image"])
        except (OSError, pa.ArrowException) as err:
            raise GalleryError(f"{self.shards[shard]} can no longer be read: {err}") from err
        return image_values(table["image"].combine_chunks())


def open_shards(shards: Sequence[Path]) -> tuple[pa.Table, ShardImages, dict[str, int]]:
    """The metadata of all shards (repeated ids left out), their image reader, and the skip counts."""
    tables, row_groups, first_row = [], [], 0
    for shard in shards:
        table, groups = read_shard(shard, first_row)
        tables.append(table)
        row_groups.append(groups)
        first_row += table.num_rows
    metadata = pa.concat_tables(tables) if tables else METADATA_SCHEMA.empty_table()
    kept = first_occurrences(metadata["id"])
    skipped = {"duplicate id": int((~kept).sum())} if not kept.all() else {}
    if skipped:
        metadata = metadata.filter(pa.array(kept))
    return metadata, ShardImages(shards, row_groups), skipped
