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
``added`` tags; and images with any verdict join stage one as clean image-tag pairs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from vse.text import normalize_tag

VERDICTS = ("wrong", "right", "added")
COLUMNS = ("image_id", "tag", "verdict", "votes", "total_votes")


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
    """Verdicts by image id, then by normalised tag."""

    by_image: dict[str, dict[str, str]] = field(default_factory=dict)

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
    return Corrections.from_rows(table)
