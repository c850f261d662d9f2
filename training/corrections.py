"""The corrections table: human verdicts on web tags, shared by the app and training.

The app's feedback export (``python -m training.feedback export``) writes it; the
next training run reads it.  One row per (image, tag) with a majority verdict:

=============  ======  =========================================================
column         type    meaning
=============  ======  =========================================================
image_id       string  the web image's id (the web source's id column)
tag            string  the tag, normalised with ``vse.text.normalize_tag``
verdict        string  ``wrong`` (remove it), ``right`` (keep it) or ``added``
                       (a missing tag reviewers added)
votes          int32   votes for this verdict
total_votes    int32   all votes cast on this image and tag
=============  ======  =========================================================

Training applies it in two ways (Mithun et al. 2018 keep clean, verified pairs in
stage one): every web image's tag list loses its ``wrong`` tags and gains its
``added`` tags (which keep full weight in the noise-aware web term); with
``stage1.verified_tags`` images with any verdict also join stage one as clean
image-tag pairs.
"""

from __future__ import annotations

import collections
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from vse.text import normalize_tag

VERDICTS = ("wrong", "right", "added")
COLUMNS = ("image_id", "tag", "verdict", "votes", "total_votes")
PROVENANCE_FILE = "provenance.json"  # written beside the table by the export


def corrections_features():
    import datasets

    return datasets.Features(
        {
            "image_id": datasets.Value("string"),
            "tag": datasets.Value("string"),
            "verdict": datasets.Value("string"),
            "votes": datasets.Value("int32"),
            "total_votes": datasets.Value("int32"),
        }
    )


@dataclass
class Corrections:
    """Verdicts by image id, then by normalised tag; where they came from."""

    by_image: dict[str, dict[str, str]] = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)  # votes, reviewers, reviewed images, queue models (the export's)

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the verdicts, independent of row order (what a model trained with them records)."""
        digest = hashlib.sha256()
        for image_id in sorted(self.by_image):
            for tag, verdict in sorted(self.by_image[image_id].items()):
                digest.update(f"{image_id}\x00{tag}\x00{verdict}\x01".encode("utf-8", "surrogatepass"))
        return digest.hexdigest()

    def summary(self) -> dict:
        """Fingerprint, verdict counts and provenance, for the model card and metrics.json."""
        counts = collections.Counter(v for verdicts in self.by_image.values() for v in verdicts.values())
        return {"fingerprint": self.fingerprint, "images": len(self.by_image), "verdicts": dict(sorted(counts.items())),
                **self.provenance}  # fmt: skip

    @classmethod
    def from_rows(cls, rows) -> Corrections:
        by_image: dict[str, dict[str, str]] = {}
        for row in rows:
            verdict = str(row["verdict"]).strip().lower()
            if verdict not in VERDICTS:
                raise ValueError(
                    f"unknown verdict {row['verdict']!r} for image {row['image_id']!r}; expected {VERDICTS}"
                )
            tag = normalize_tag(row["tag"])
            if tag:
                by_image.setdefault(str(row["image_id"]), {})[tag] = verdict
        return cls(by_image)

    def reviewed(self, image_id: str) -> bool:
        return image_id in self.by_image

    def verdict(self, image_id: str, tag: str) -> str | None:
        """The majority verdict on one tag of one image, or None when nobody judged it."""
        return self.by_image.get(image_id, {}).get(normalize_tag(tag))

    def apply(self, image_id: str, tags: list[str]) -> list[str]:
        """The tag list after the verdicts: wrong tags removed, added tags appended."""
        verdicts = self.by_image.get(image_id)
        if not verdicts:
            return tags
        kept = [tag for tag in tags if verdicts.get(normalize_tag(tag)) != "wrong"]
        present = {normalize_tag(tag) for tag in kept}
        kept.extend(tag for tag, verdict in verdicts.items() if verdict == "added" and tag not in present)
        return kept

    def __len__(self) -> int:
        return sum(len(v) for v in self.by_image.values())


def load_corrections(source: str | None) -> Corrections:
    """Read a corrections table: a ``save_to_disk`` folder, a parquet/JSON file or a Hub id."""
    if not source:
        return Corrections()
    import datasets

    path = Path(source)
    if path.is_dir():
        table = datasets.load_from_disk(str(path))
    elif path.suffix in (".parquet", ".json", ".jsonl", ".csv"):
        builder = {".parquet": "parquet", ".csv": "csv"}.get(path.suffix, "json")
        table = datasets.load_dataset(builder, data_files=str(path), split="train")
    elif path.exists():
        raise ValueError(f"cannot read corrections from {path}: expected a dataset folder or .parquet/.jsonl/.csv")
    else:
        table = datasets.load_dataset(source, split="train")
    if isinstance(table, datasets.DatasetDict):
        table = table["train"]
    missing = [c for c in ("image_id", "tag", "verdict") if c not in table.column_names]
    if missing:
        raise ValueError(f"the corrections table {source} lacks columns {missing}; it has {table.column_names}")
    corrections = Corrections.from_rows(table)
    if path.is_dir() and (path / PROVENANCE_FILE).is_file():
        corrections.provenance = json.loads((path / PROVENANCE_FILE).read_text())
    return corrections


def applied_counts(ids: list[str], tag_lists: list[list[str]], corrections: Corrections) -> dict[str, int]:
    """What the verdicts change in a web source: tags removed, added and confirmed, on how many of its images."""
    counts = collections.Counter()
    for image_id, tags in zip(ids, tag_lists, strict=True):
        verdicts = corrections.by_image.get(image_id)
        if not verdicts:
            continue
        counts["images"] += 1
        present = {normalize_tag(tag) for tag in tags}
        for tag, verdict in verdicts.items():
            if verdict == "wrong" and tag in present:
                counts["removed"] += 1
            elif verdict == "right" and tag in present:
                counts["confirmed"] += 1
            elif verdict == "added" and tag not in present:
                counts["added"] += 1
    return {key: counts[key] for key in ("images", "removed", "added", "confirmed")}
