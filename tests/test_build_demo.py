"""The Openclipart builder: caption rule, splits, and a whole build on a small corpus."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.build_demo import main as build_main
from training.demo_data import split_items
from training.openclipart import (
    PNG_ROOT,
    SVG_ROOT,
    ClipartItem,
    assign_captions,
    clean_caption,
    english_lexicon,
    read_corpus,
)
from vse import VSEModel
from vse.serving.gallery import GalleryEmbeddings, load_gallery, model_digest
from vse.serving.gallery_fingerprint import RECORD_NAME, read_record
from vse.testing.shapes import COLOURS, SHAPES, draw

SVG = """<?xml version="1.0" encoding="UTF-8"?>
<svg xmlns="http://www.w3.org/2000/svg" xmlns:dc="http://purl.org/dc/elements/1.1/"
     xmlns:cc="http://web.resource.org/cc/" xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
  <metadata><rdf:RDF><cc:Work rdf:about="">
    <dc:title>{title}</dc:title><dc:description>{description}</dc:description>
    <dc:subject><rdf:Bag>{tags}</rdf:Bag></dc:subject>
    <dc:creator><cc:Agent><dc:title>someone</dc:title></cc:Agent></dc:creator>
  </cc:Work></rdf:RDF></metadata>
</svg>"""


@pytest.mark.parametrize(
    "text, caption",
    [
        ("Red_Apple", "Red Apple"),
        ("pointingFinger2", "Pointing Finger"),
        ("Part of the Flat Icon Collection (Wed Aug 25 23:29:46 2004)", None),
        ("Lemon SVG theme", None),
        ("Provetta plasma sangue", None),  # Italian
        ("12345", None),
        ("", None),
        ("Fire engine http://example.org", "Fire engine"),
        ("fire_engine@example.org truck", "Truck"),
    ],
)
def test_caption_rule(text, caption):
    assert clean_caption(text, english_lexicon()) == caption


def test_repeated_titles_are_boilerplate():
    items = [ClipartItem(f"x/{i}", Path("."), "x", "card", "", [], "") for i in range(6)]
    items.append(ClipartItem("y/1", Path("."), "y", "Violin", "A violin with a bow", [], ""))
    assign_captions(items, english_lexicon())
    assert all(not item.captions for item in items[:6])
    assert items[-1].captions == ["Violin", "A violin with a bow"]


def make_corpus(root: Path) -> tuple[Path, Path]:
    svg_root, png_root = root / "svg", root / "png"
    index = 0
    for colour in COLOURS:
        for shape in SHAPES:
            for variant in range(4):
                folder = f"shapes/{colour}"
                (svg_root / folder).mkdir(parents=True, exist_ok=True)
                (png_root / folder).mkdir(parents=True, exist_ok=True)
                title = (
                    f"{colour} {shape} number {['one', 'two', 'three', 'four'][variant]}"
                    if variant < 3
                    else "gramastar"
                )
                tags = "".join(f"<rdf:li>{t}</rdf:li>" for t in (colour, shape, "hash", "computer"))
                name = f"{shape}_{variant}"
                (svg_root / folder / f"{name}.svg").write_text(SVG.format(title=title, description="", tags=tags))
                draw(colour, shape, size=96, jitter=variant).save(png_root / folder / f"{name}.png")
                index += 1
    return svg_root, png_root


def test_corpus_reading_and_splits(tmp_path):
    svg_root, png_root = make_corpus(tmp_path)
    items, skipped = read_corpus(svg_root, png_root)
    assert len(items) == 48 and skipped == {}
    assign_captions(items, english_lexicon())
    assert sum(bool(i.captions) for i in items) == 36  # "gramastar" is used 12 times: boilerplate
    splits = split_items(items, test_size=8, validation_size=4)
    held_out = {i.id for i in splits.test + splits.validation}
    assert (
        len(splits.test) >= 8
        and not held_out & {i.id for i in splits.train}
        and not held_out & {i.id for i in splits.web}
    )
    titles = lambda part: {i.captions[0].lower() for i in part}  # noqa: E731
    assert not titles(splits.test) & titles(splits.train)
    with pytest.raises(ValueError, match="cannot hold out"):
        split_items(items, test_size=40, validation_size=4)


@pytest.mark.slow
def test_whole_build_on_a_small_corpus(tmp_path):
    svg_root, png_root = make_corpus(tmp_path / "corpus")
    assets = tmp_path / "assets"
    args = [
        "--svg-root", str(svg_root), "--png-root", str(png_root), "--out", str(tmp_path / "data"),
        "--assets", str(assets), "--cache-dir", str(tmp_path / "cache"), "--run-dir", str(tmp_path / "run"),
        "--test-size", "8", "--validation-size", "4", "--",
        "--stage1.optim.epochs=2", "--stage1.optim.steps_per_epoch=5", "--model.embed_dim=32", "--progress=false",
        "--stage1.optim.batch_size=8", "--web.batch_size=8", "--web.suspicion_steps=10",
    ]  # fmt: skip
    assert build_main(args) == 0
    model = VSEModel.from_pretrained(assets / "model")
    gallery, _ = load_gallery(assets / "gallery")
    assert len(gallery) == 48 and {i.split for i in gallery.items} >= {"train", "validation", "test", "web"}
    embeddings = GalleryEmbeddings.load(assets / "index", model_digest(assets / "model"), gallery.fingerprint)
    assert embeddings is not None and embeddings.images.shape == (48, 32)
    record = read_record(assets / "gallery" / RECORD_NAME)  # so that a start need not hash every image
    assert record is not None and record["fingerprint"] == embeddings.gallery
    assert "test" in model.metrics
    assert model.suspicion is not None and len(model.suspicion) > 0  # the review queue's ranking ships with it
    sizes = [p.stat().st_size for p in assets.rglob("*") if p.is_file()]
    assert max(sizes) < 10_000_000 and sum(sizes) < 50_000_000


def test_missing_corpus_is_explained(tmp_path, capsys):
    assert build_main(["--svg-root", str(tmp_path / "nope"), "--png-root", str(tmp_path / "nope")]) == 2
    assert "apt-get install openclipart-svg openclipart-png" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.skipif(not (SVG_ROOT.is_dir() and PNG_ROOT.is_dir()), reason="openclipart-svg/png not installed")
def test_build_on_a_subset_of_the_real_corpus(tmp_path):
    assets = tmp_path / "assets"
    args = [
        "--limit", "160", "--test-size", "30", "--validation-size", "10", "--out", str(tmp_path / "data"),
        "--assets", str(assets), "--cache-dir", str(tmp_path / "cache"), "--run-dir", str(tmp_path / "run"), "--",
        "--stage1.optim.epochs=3", "--stage1.optim.steps_per_epoch=10", "--web.suspicion_steps=20", "--progress=false",
    ]  # fmt: skip
    assert build_main(args) == 0
    gallery, _ = load_gallery(assets / "gallery")
    assert len(gallery) >= 140
    assert sum(item.split == "test" for item in gallery.items) >= 30
    model = VSEModel.from_pretrained(assets / "model")
    assert GalleryEmbeddings.load(assets / "index", model_digest(assets / "model"), gallery.fingerprint) is not None
    assert model.metrics["test"]["rsum"] > 0
