"""The emoji development corpus: CLDR annotations, name-level splits, rendering from Debian's fonts."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from training import emoji_corpus
from training.emoji_corpus import EmojiItem, emoji_tags, read_annotations, split_emoji

CLDR = """<?xml version="1.0" encoding="UTF-8" ?>
<ldml><annotations>
  <annotation cp="😽">cat | eye | face | kiss | kissing cat</annotation>
  <annotation cp="😽" type="tts">kissing cat</annotation>
  <annotation cp="🚒">engine | fire | truck</annotation>
  <annotation cp="🚒" type="tts">fire engine</annotation>
  <annotation cp="🐢">terrapin | tortoise | turtle</annotation>
  <annotation cp="🐢" type="tts">turtle</annotation>
  <annotation cp="🍎">apple | fruit | red</annotation>
  <annotation cp="🍎" type="tts">red apple</annotation>
  <annotation cp="🌻">flower | sun | sunflower</annotation>
  <annotation cp="🌻" type="tts">sunflower</annotation>
  <annotation cp="⏰">alarm | clock</annotation>
  <annotation cp="⏰" type="tts">alarm clock</annotation>
  <annotation cp="【">bracket | lens bracket</annotation>
</annotations></ldml>
"""
DERIVED = """<?xml version="1.0" encoding="UTF-8" ?>
<ldml><annotations>
  <annotation cp="👍🏽">hand | thumb | up | +1</annotation>
  <annotation cp="👍🏽" type="tts">thumbs up: medium skin tone</annotation>
  <annotation cp="🇩🇪">flag</annotation>
  <annotation cp="🇩🇪" type="tts">flag: Germany</annotation>
</annotations></ldml>
"""


@pytest.fixture()
def cldr_root(tmp_path):
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotationsDerived").mkdir()
    (tmp_path / "annotations" / "en.xml").write_text(CLDR, encoding="utf-8")
    (tmp_path / "annotationsDerived" / "en.xml").write_text(DERIVED, encoding="utf-8")
    return tmp_path


def test_annotations_names_and_tags(cldr_root):
    annotations = read_annotations(cldr_root / "annotations" / "en.xml")
    assert annotations["😽"] == ("kissing cat", ["cat", "eye", "face", "kiss", "kissing cat"])
    assert "【" not in annotations  # no spoken name: not an emoji entry
    assert emoji_tags("kissing cat", ["cat", "Kissing Cat", "kiss", "cat"]) == ["cat", "kiss"]


def item(name: str, style: str, tags=("t",)) -> EmojiItem:
    return EmojiItem(f"{style}/{name}", name, style, name, [name], list(tags), style, name + style)


def test_split_is_by_name_and_web_takes_every_style():
    by_name = {f"e{i}": [item(f"e{i}", "noto"), item(f"e{i}", "symbola")] for i in range(12)}
    by_name["e11"] = [item("e11", "noto", tags=())]  # no keyword: never a web image
    splits = split_emoji(by_name, test=3, validation=2, train=2, seed=1)
    names = {split: {i.title for i in getattr(splits, split)} for split in ("train", "validation", "test", "web")}
    assert [len(getattr(splits, s)) for s in ("test", "validation", "train")] == [3, 2, 2]  # one picture per emoji
    for a in names:
        for b in names:
            assert a == b or not names[a] & names[b], (a, b)
    assert all(len([i for i in splits.web if i.title == n]) == 2 for n in names["web"])  # both styles
    assert "e11" not in names["web"]
    assert split_emoji(by_name, 3, 2, 2, seed=1).counts() == splits.counts()
    with pytest.raises(ValueError, match="cannot hold"):
        split_emoji(by_name, 6, 4, 2)


fonts = pytest.mark.skipif(
    not all(path.is_file() for path in emoji_corpus.FONTS.values()),
    reason=f"needs Debian's {emoji_corpus.PACKAGES}",
)


@fonts
def test_build_from_the_fonts(cldr_root, tmp_path):
    import datasets

    by_name = emoji_corpus.read_emoji(cldr_root)
    assert "thumbs up: medium skin tone" not in by_name and "flag: germany" in by_name
    styles = {i.style for i in by_name["kissing cat"]}
    assert styles == {"noto", "symbola"}
    assert {i.style for i in by_name["flag: germany"]} == {"noto"}  # Symbola has no flag ligatures
    picture = Image.open(io.BytesIO(by_name["kissing cat"][0].png))
    assert picture.size == (160, 160) and picture.mode == "RGBA" and picture.getextrema()[3][0] == 0
    out = tmp_path / "emoji"
    argv = ["--out", str(out), "--cldr-root", str(cldr_root), "--test-size", "2", "--validation-size", "1",
            "--train-size", "1"]  # fmt: skip
    assert emoji_corpus.main(argv) == 0
    captions = datasets.load_from_disk(str(out / "captions"))
    web = datasets.load_from_disk(str(out / "web"))
    assert [len(captions[s]) for s in ("train", "validation", "test")] == [1, 1, 2]
    row = web["train"][0]
    assert row["tags"] and row["title"].lower() not in [t.lower() for t in row["tags"]]


def test_missing_packages_are_named(tmp_path, capsys):
    assert emoji_corpus.main(["--cldr-root", str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    assert "apt-get install fonts-noto-color-emoji" in capsys.readouterr().err
