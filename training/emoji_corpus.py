"""A second development corpus: emoji pictures with their CLDR names and keywords.

    python -m training.emoji_corpus [--out data/emoji]

Built from three Debian packages, offline: the pictures are rendered from the
``fonts-noto-color-emoji`` (colour) and ``fonts-symbola`` (black outlines) fonts,
the text comes from the English annotations of the Unicode Common Locale Data
Repository (``unicode-cldr-core``), written by people for screen readers and
emoji pickers:

* **caption**: the emoji's spoken name (CLDR ``type="tts"``), e.g. "oncoming
  police car", "flag: Germany";
* **tags**: its CLDR keywords without the name itself, e.g. ``car``, ``oncoming``,
  ``police``.  They are clean; ablations inject tag noise on top
  (``data.web_tag_noise``).

Skin-tone variants are left out (the same picture with a near-identical name);
an emoji is kept when the colour font draws its whole sequence as one glyph.
Emoji are split by name, hash-ordered (seeded): ``test`` / ``validation`` /
``train`` emoji give one picture each (a style chosen by hash), every remaining
emoji with a keyword gives all its pictures to the web tag set.  No emoji
appears in two splits, in any style.  Written in the same layout as the
Openclipart corpus (``training.demo_data``), so configs only change data paths.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import logging
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

from training.demo_data import Splits, write_datasets
from vse.cli import add_debug_flag, run_cli

log = logging.getLogger("training.emoji_corpus")
CLDR_ROOT = Path("/usr/share/unicode/cldr/common")
FONTS = {
    "noto": Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf"),
    "symbola": Path("/usr/share/fonts/truetype/ancient-scripts/Symbola_hint.ttf"),
}
FONT_SIZES = {"noto": 109, "symbola": 110}  # Noto's bitmaps exist at 109 px only
CANVAS = 160
JOINERS = "\u200d\ufe0f\ufe0e"
PACKAGES = "fonts-noto-color-emoji fonts-symbola unicode-cldr-core"


@dataclass
class EmojiItem:
    """One emoji in one drawing style; ``captions``/``tags`` as the other corpus items."""

    id: str  # "<style>/<code points>", e.g. "noto/1f693"
    sequence: str
    style: str
    title: str
    captions: list[str]
    tags: list[str]
    category: str = ""
    sha256: str = ""
    png: bytes = field(default=b"", repr=False)


def read_annotations(path: Path) -> dict[str, tuple[str, list[str]]]:
    """``{sequence: (name, keywords)}`` of a CLDR annotations file (entries with a name)."""
    names: dict[str, str] = {}
    keywords: dict[str, list[str]] = {}
    for node in ET.parse(path).getroot().iter("annotation"):
        sequence, text = node.get("cp"), (node.text or "").strip()
        if not sequence or not text:
            continue
        if node.get("type") == "tts":
            names[sequence] = text
        else:
            keywords[sequence] = [word.strip() for word in text.split("|") if word.strip()]
    return {seq: (name, keywords.get(seq, [])) for seq, name in names.items()}


def emoji_tags(name: str, keywords: list[str]) -> list[str]:
    """The keywords that are not the name itself (CLDR repeats the name among them)."""
    return [word for word in dict.fromkeys(keywords) if word.lower() != name.lower()]


def codepoints(sequence: str) -> str:
    return "-".join(f"{ord(c):x}" for c in sequence if c not in JOINERS)


class Renderer:
    """Draws an emoji sequence in a font onto a transparent square (PNG bytes)."""

    def __init__(self, style: str, path: Path):
        from fontTools.ttLib import TTFont
        from PIL import ImageFont

        self.style = style
        self.font = ImageFont.truetype(str(path), FONT_SIZES[style])
        self.cmap = TTFont(str(path), lazy=True).getBestCmap()

    def draws(self, sequence: str) -> bool:
        """True when the font has every code point and shapes the sequence into one glyph."""
        core = [c for c in sequence if c not in JOINERS]
        if not core or not all(ord(c) in self.cmap for c in core):
            return False
        if self.style == "symbola" and len(core) > 1:  # Unicode 9 outlines: no ligated sequences
            return False
        return self.font.getlength(sequence) <= 1.3 * FONT_SIZES[self.style]

    def render(self, sequence: str) -> bytes:
        from PIL import Image, ImageDraw

        image = Image.new("RGBA", (2 * CANVAS, 2 * CANVAS), (255, 255, 255, 0))
        ImageDraw.Draw(image).text(
            (CANVAS // 4, CANVAS // 4), sequence, font=self.font, fill=(0, 0, 0, 255), embedded_color=True
        )
        box = image.getbbox()
        if box is None:
            raise ValueError(f"{sequence!r} draws nothing in {self.style}")
        glyph = image.crop(box)
        glyph.thumbnail((CANVAS - 16, CANVAS - 16))
        canvas = Image.new("RGBA", (CANVAS, CANVAS), (255, 255, 255, 0))
        canvas.paste(glyph, ((CANVAS - glyph.width) // 2, (CANVAS - glyph.height) // 2))
        buffer = io.BytesIO()
        canvas.save(buffer, format="PNG", optimize=True)
        return buffer.getvalue()


def read_emoji(cldr_root: Path = CLDR_ROOT, fonts: dict[str, Path] = FONTS) -> dict[str, list[EmojiItem]]:
    """Every drawable emoji (skin tones left out) in every style that draws it, keyed by name."""
    annotations = read_annotations(cldr_root / "annotations" / "en.xml")
    derived = read_annotations(cldr_root / "annotationsDerived" / "en.xml")
    annotations.update({seq: entry for seq, entry in derived.items() if "skin tone" not in entry[0]})
    renderers = [Renderer(style, path) for style, path in fonts.items()]
    by_name: dict[str, list[EmojiItem]] = {}
    for sequence, (name, keywords) in sorted(annotations.items()):
        if not renderers[0].draws(sequence) or name.lower() in by_name:
            continue  # the colour font decides which emoji exist; names are unique
        items = []
        for renderer in renderers:
            if renderer.draws(sequence):
                png = renderer.render(sequence)
                items.append(
                    EmojiItem(
                        f"{renderer.style}/{codepoints(sequence)}", sequence, renderer.style, name, [name],
                        emoji_tags(name, keywords), renderer.style, hashlib.sha256(png).hexdigest(), png,
                    )
                )  # fmt: skip
        by_name[name.lower()] = items
    return by_name


def _rank(key: str, seed: int) -> str:
    return hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()


def split_emoji(by_name: dict[str, list[EmojiItem]], test: int, validation: int, train: int, seed: int = 0) -> Splits:
    """Name-level split (see the module docstring); web = every style of the other emoji with tags."""
    if test + validation + train >= len(by_name):
        raise ValueError(f"{len(by_name)} emoji cannot hold {test} + {validation} + {train} captioned ones")
    order = sorted(by_name, key=lambda name: _rank(name, seed))
    sizes = {"test": test, "validation": validation, "train": train}
    chosen: dict[str, list[EmojiItem]] = {name: [] for name in sizes}
    position = 0
    for split, size in sizes.items():
        for name in order[position : position + size]:
            styles = by_name[name]
            chosen[split].append(styles[int(_rank(name + ":style", seed), 16) % len(styles)])
        position += size
    web = [item for name in order[position:] for item in by_name[name] if item.tags]
    return Splits(chosen["train"], chosen["validation"], chosen["test"], web)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training.emoji_corpus", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="data/emoji", help="where the datasets are written")
    parser.add_argument("--cldr-root", default=str(CLDR_ROOT), help="unicode-cldr-core's common/ folder")
    parser.add_argument("--test-size", type=int, default=500)
    parser.add_argument("--validation-size", type=int, default=150)
    parser.add_argument("--train-size", type=int, default=250)
    parser.add_argument("--seed", type=int, default=0)
    add_debug_flag(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run_cli(lambda: build_corpus(args), debug=args.debug)


def build_corpus(args: argparse.Namespace) -> int:
    cldr_root = Path(args.cldr_root)
    missing = [str(p) for p in [cldr_root / "annotations" / "en.xml", *FONTS.values()] if not p.is_file()]
    if missing:
        print(f"error: missing {missing}; install them with: apt-get install {PACKAGES}", file=sys.stderr)
        return 2
    by_name = read_emoji(cldr_root)
    splits = split_emoji(by_name, args.test_size, args.validation_size, args.train_size, args.seed)
    log.info("%d emoji; %s", len(by_name), splits.counts())
    write_datasets(splits, Path(args.out), image_bytes=lambda item: item.png)
    print(f"datasets written to {args.out}: {splits.counts()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
