"""The Openclipart corpus (Debian ``openclipart-svg`` / ``openclipart-png``) as web data.

About 8,100 public-domain clip-art images uploaded by many people, each with a
title, sometimes a description, user tags and a category folder.  Titles and tags
are genuinely noisy: collection names instead of titles ("Part of the Flat Icon
Collection (...)", "Lemon SVG theme"), non-English titles, tags such as ``hash``
or ``computer`` on unrelated images.  This module reads the metadata and decides,
by a fixed rule, which images get a clean caption.

**Caption rule** (``clean_caption``).  A title or description becomes a caption when,
after NFKC normalisation, replacing ``_`` with spaces, splitting camelCase and
dropping digits, e-mail addresses and URLs:

1. it has at least one word of three or more letters and at most 30 words;
2. it contains no boilerplate marker (``BOILERPLATE``: collection, theme, clipart
   by, svg, icon set, converted, submission, ...);
3. at least 75% of its words are English words, i.e. whole words of the
   bert-base-uncased vocabulary shipped with the packaged MiniLM model;
4. its text is not shared by more than ``MAX_TITLE_REPEATS`` images (a title used
   for dozens of images names a collection, not a picture).

An image's captions are its usable title and, when different, its usable
description (first sentence).  Images are deduplicated by the SHA-256 of their
PNG bytes (the package holds some files twice under different categories).
"""

from __future__ import annotations

import collections
import hashlib
import re
import unicodedata
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

SVG_ROOT = Path("/usr/share/openclipart/svg")
PNG_ROOT = Path("/usr/share/openclipart/png")
NAMESPACES = {
    "dc": "http://purl.org/dc/elements/1.1/",
    "rdf": "http://www.w3.org/1999/02/22-rdf-syntax-ns#",
    "cc": "http://web.resource.org/cc/",
}
BOILERPLATE = (
    "collection", "theme", "clipart", "clip art", "svg", "icon set", "iconset", "converted", "submission",
    "sibmission", "cliparts", "version", "untitled", "drawing", "image", "picture", "layer", "test",
)  # fmt: skip
MAX_TITLE_REPEATS = 5
MAX_CAPTION_WORDS = 30
ENGLISH_SHARE = 0.75

_CAMEL = re.compile(r"(?<=[a-z])(?=[A-Z])")
_ADDRESSES = re.compile(r"\S+@\S+|https?://\S+|www\.\S+")
_DIGITS = re.compile(r"\d+")
_WORD = re.compile(r"[^\W\d_]+")


@dataclass
class ClipartItem:
    """One image of the corpus with its raw metadata."""

    id: str  # path below the category root, without suffix, e.g. "food/fruit/apple_01"
    png: Path
    category: str
    title: str
    description: str
    tags: list[str]
    creator: str
    sha256: str = ""
    captions: list[str] = field(default_factory=list)


def _text(node) -> str:
    return (node.text or "").strip() if node is not None else ""


def parse_svg_metadata(svg: Path) -> tuple[str, str, list[str], str]:
    """(title, description, tags, creator) from an SVG's RDF metadata; empty when absent."""
    try:
        work = ET.parse(svg).getroot().find(".//cc:Work", NAMESPACES)
    except ET.ParseError:
        return "", "", [], ""
    if work is None:
        return "", "", [], ""
    tags = [_text(li) for li in work.findall("dc:subject/rdf:Bag/rdf:li", NAMESPACES) if _text(li)]
    creator = _text(work.find("dc:creator/cc:Agent/dc:title", NAMESPACES))
    return _text(work.find("dc:title", NAMESPACES)), _text(work.find("dc:description", NAMESPACES)), tags, creator


@lru_cache(maxsize=1)
def english_lexicon() -> frozenset[str]:
    """Whole words of the bert-base-uncased vocabulary (from the packaged MiniLM)."""
    from vse.backbones import PACKAGED_TEXT_MODELS, packaged_path

    vocab = packaged_path(PACKAGED_TEXT_MODELS["all-MiniLM-L6-v2"]) / "vocab.txt"
    words = vocab.read_text(encoding="utf-8").split()
    return frozenset(w for w in words if w.isalpha() and len(w) > 1 or w in ("a", "i"))


def normalize_caption(text: str) -> str:
    """Steps before the checks: NFKC, underscores, camelCase, digits/e-mails/URLs removed."""
    text = _ADDRESSES.sub(" ", unicodedata.normalize("NFKC", text).split("\n")[0])
    text = _DIGITS.sub(" ", _CAMEL.sub(" ", text.replace("_", " ")))
    text = re.sub(r"\s+([,.;:!?])", r"\1", re.sub(r"\s+", " ", text)).strip(" -,.;:")
    return text


def clean_caption(text: str, lexicon: frozenset[str]) -> str | None:
    """The caption ``text`` makes under the rule of the module docstring (without rule 4), or None."""
    caption = normalize_caption(text)
    words = [w.lower() for w in _WORD.findall(caption)]
    if not words or len(words) > MAX_CAPTION_WORDS or max(len(w) for w in words) < 3:
        return None
    lowered = caption.lower()
    if any(marker in lowered for marker in BOILERPLATE):
        return None
    if sum(w in lexicon for w in words) < ENGLISH_SHARE * len(words):
        return None
    return caption[0].upper() + caption[1:]


def read_corpus(svg_root: Path = SVG_ROOT, png_root: Path = PNG_ROOT) -> tuple[list[ClipartItem], collections.Counter]:
    """Every image with a PNG rendering, its metadata and content hash; plus skip counts."""
    items, skipped, seen = [], collections.Counter(), set()
    for svg in sorted(svg_root.rglob("*.svg")):
        relative = svg.relative_to(svg_root).with_suffix("")
        png = png_root / relative.with_suffix(".png")
        if not png.exists():
            skipped["no PNG rendering"] += 1
            continue
        data = png.resolve().read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        if digest in seen:
            skipped["duplicate image"] += 1
            continue
        seen.add(digest)
        title, description, tags, creator = parse_svg_metadata(svg)
        items.append(
            ClipartItem(
                relative.as_posix(), png.resolve(), relative.parts[0], title, description, tags, creator, digest
            )
        )
    return items, skipped


def assign_captions(items: list[ClipartItem], lexicon: frozenset[str] | None = None) -> None:
    """Fill ``captions`` of each item by the caption rule (repeated titles excluded)."""
    lexicon = lexicon if lexicon is not None else english_lexicon()
    candidates = {item.id: [c for c in (clean_caption(item.title, lexicon), clean_caption(item.description, lexicon)) if c]
                  for item in items}  # fmt: skip
    uses = collections.Counter(c.lower() for captions in candidates.values() for c in set(captions))
    for item in items:
        unique: dict[str, str] = {}
        for caption in candidates[item.id]:
            if uses[caption.lower()] <= MAX_TITLE_REPEATS:
                unique.setdefault(caption.lower(), caption)
        item.captions = list(unique.values())
