"""Karpathy's split files as a source: splits, restval, errors, the ready configs, the CLI, a Hub id.

Each test writes a small ``dataset_coco.json`` / ``dataset_flickr30k.json`` in
the real files' schema (``images`` with ``filepath``, ``filename``, ``split``,
``sentences`` of ``raw`` and ``tokens``, ``imgid``, ``sentids``, COCO's
``cocoid``; ``dataset``) and one tiny JPEG per image, in a tmp dir.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from training import evaluate as evaluate_cli
from training.config import SourceConfig, TrainConfig
from training.configuration import load_config
from training.pipeline import open_source, read_sources
from training.sources import ImageResolver, SourceError, load_source
from vse.config import VSEConfig
from vse.model import VSEModel
from vse.testing.shapes import write_split
from vse.vocab import build_vocabulary

ROOT = Path(__file__).resolve().parents[1]
COLOURS = ("red", "green", "blue", "yellow", "white", "black")
COCO_SPLITS = {"train": 3, "restval": 2, "val": 2, "test": 3}
FLICKR_SPLITS = {"train": 3, "val": 2, "test": 2}


def sentence(text: str, imgid: int, sentid: int) -> dict:
    return {"tokens": text.lower().rstrip(".").split(), "raw": text, "imgid": imgid, "sentid": sentid}


def karpathy_entry(dataset: str, imgid: int, split: str, sixth_caption: bool = False) -> dict:
    colour = COLOURS[imgid % len(COLOURS)]
    texts = [f"A {colour} square.", f"Something {colour}.", f"A square that is {colour}.",
             f"One {colour} square on a white background.", f"The {colour} picture."]  # fmt: skip
    if sixth_caption:
        texts.append(f"A sixth caption of a {colour} square.")  # COCO has a few images with more than five
    sentid = imgid * 10
    entry = {
        "sentids": [sentid + k for k in range(len(texts))],
        "imgid": imgid,
        "sentences": [sentence(text, imgid, sentid + k) for k, text in enumerate(texts)],
        "split": split,
    }
    if dataset == "coco":
        folder = "train2014" if split == "train" else "val2014"
        cocoid = 100000 + imgid
        entry.update(filepath=folder, filename=f"COCO_{folder}_{cocoid:012d}.jpg", cocoid=cocoid)
    else:
        entry["filename"] = f"{1000000 + imgid}.jpg"
    return entry


def write_karpathy(root: Path, dataset: str = "coco", splits: dict[str, int] | None = None) -> tuple[Path, Path]:
    """``root/dataset_<name>.json`` and its images under ``root/images``; returns both paths."""
    splits = splits or (COCO_SPLITS if dataset == "coco" else FLICKR_SPLITS)
    order = [split for split, count in splits.items() for _ in range(count)]
    # Interleave splits as the real files do (they are not sorted by split).
    order = order[::2] + order[1::2]
    first_test = order.index("test")  # it gets a sixth caption
    entries = [karpathy_entry(dataset, imgid, split, imgid == first_test) for imgid, split in enumerate(order)]
    images = root / "images"
    for entry in entries:
        path = images / entry.get("filepath", "") / entry["filename"]
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (16, 16), (40 * entry["imgid"] % 256, 90, 160)).save(path, format="JPEG")
    root.mkdir(parents=True, exist_ok=True)
    name = "dataset_flickr30k.json" if dataset == "flickr30k" else f"dataset_{dataset}.json"
    (root / name).write_text(json.dumps({"images": entries, "dataset": dataset}))
    return root / name, images


def source(path: Path, images: Path, split: str = "test", **kwargs) -> SourceConfig:
    return SourceConfig(path=str(path), image_root=str(images), split=split, **kwargs)


# ------------------------------------------------------------------ reading


def test_splits_restval_and_columns(tmp_path):
    path, images = write_karpathy(tmp_path)
    entries = json.loads(path.read_text())["images"]
    train = load_source(source(path, images, "train"))
    assert train.column_names == ["image", "captions", "image_id", "split"]
    assert train["split"] == ["train"] * 3 and all(p.startswith("train2014/COCO_train2014_") for p in train["image"])
    with_restval = load_source(source(path, images, "train", extra_splits=["restval"]))
    assert with_restval["split"] == ["train"] * 3 + ["restval"] * 2  # train first, then restval, file order within
    assert with_restval["image"][3].startswith("val2014/")  # restval images live in val2014
    assert len(load_source(source(path, images, "validation"))) == len(load_source(source(path, images, "val"))) == 2
    test = load_source(source(path, images, "test"))
    want = [e for e in entries if e["split"] == "test"]
    assert test["image_id"] == [str(e["cocoid"]) for e in want]
    assert test["captions"] == [[s["raw"] for s in e["sentences"]] for e in want]  # raw text, file order
    assert len(test["captions"][0]) == 6  # all kept here; the protocols take the first five
    with pytest.raises(SourceError, match=r"has splits \['restval', 'test', 'train', 'val'\], not \['dev'\]"):
        load_source(source(path, images, "dev"))


def test_flickr30k_layout_has_no_filepath_and_opens_its_images(tmp_path):
    path, images = write_karpathy(tmp_path, "flickr30k")
    prepared = open_source(source(path, images, "test"), "captions")
    entries = json.loads(path.read_text())["images"]
    assert "filepath" not in entries[0] and "cocoid" not in entries[0]
    test_files = [e["filename"] for e in entries if e["split"] == "test"]
    assert prepared.ds["image"] == prepared.ds["image_id"] == test_files  # the file name is path and id
    assert prepared.table.ids == test_files
    resolver = ImageResolver(str(images))
    assert [resolver.open(value).size for value in prepared.ds["image"]] == [(16, 16)] * 2


def test_missing_image_file_is_named(tmp_path):
    path, images = write_karpathy(tmp_path)
    first_test = next(e for e in json.loads(path.read_text())["images"] if e["split"] == "test")
    gone = images / "val2014" / first_test["filename"]
    gone.unlink()
    with pytest.raises(SourceError, match=rf"image file {gone} of {path} does not exist \(1 of 3 images missing\)"):
        load_source(source(path, images, "test"))
    assert len(load_source(source(path, images, "train"))) == 3  # only the selected splits are checked
    with pytest.raises(SourceError, match="set image_root"):
        load_source(SourceConfig(path=str(path), split="train"))


@pytest.mark.parametrize(
    "text, message",
    [
        ('{"images": [{"filepath": "val2014", ', "is not a readable Karpathy split file"),
        ('{"dataset": "coco"}', 'has no "images" list'),
        (
            '{"images": [{"filename": "a.jpg", "split": "test"}], "dataset": "coco"}',
            r"images\[0\] has no \['sentences'\]",
        ),
    ],
)
def test_malformed_split_file_is_named(tmp_path, text, message):
    path = tmp_path / "dataset_coco.json"
    path.write_text(text)
    with pytest.raises(SourceError, match=message) as caught:
        load_source(source(path, tmp_path))
    assert str(path) in str(caught.value)


def test_other_json_files_still_load_as_data_files_and_renamed_split_files_are_recognised(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    rows = tmp_path / "rows.json"
    rows.write_text(json.dumps([{"image": "a.png", "captions": ["a black square"]}]))
    ds = load_source(SourceConfig(path=str(rows), image_root=str(tmp_path)))
    assert ds["captions"] == [["a black square"]]
    path, images = write_karpathy(tmp_path / "coco")
    renamed = path.rename(path.with_name("karpathy_splits.json"))  # still recognised by its content
    assert load_source(source(renamed, images, "test")).column_names == ["image", "captions", "image_id", "split"]


# ------------------------------------------------------------------ the ready configs


@pytest.mark.parametrize("config_name, dataset", [("coco_paper.yaml", "coco"), ("flickr30k.yaml", "flickr30k")])
def test_ready_config_builds_its_sources_from_a_karpathy_file(tmp_path, config_name, dataset):
    path, images = write_karpathy(tmp_path / dataset, dataset)
    web = tmp_path / "web"
    write_split(web / "train", [("red", "circle", 0), ("blue", "square", 1)], with_tags=True, seed=0)
    overrides = [f"--data.{role}.{key}={value}" for role in ("captions", "validation", "test")
                 for key, value in (("path", path), ("image_root", images))]  # fmt: skip
    config = load_config(TrainConfig, ROOT / "configs" / config_name, [*overrides, f"--data.web.path={web}"])
    sources = read_sources(config)
    entries = json.loads(path.read_text())["images"]
    expected = {
        "captions": ["train", "restval"] if dataset == "coco" else ["train"],
        "validation": ["val"],
        "test": ["test"],
    }
    for role, splits in expected.items():
        prepared = getattr(sources, role)
        assert prepared.ds["split"] == [s for s in splits for e in entries if e["split"] == s], role
        assert sum(map(len, prepared.table.texts)) == sum(len(e["sentences"]) for e in entries if e["split"] in splits)
        resolver = ImageResolver(prepared.config.image_root)
        assert all(resolver.open(value).size == (16, 16) for value in prepared.ds["image"])
    assert len(sources.web.table.ids) == 2


# ------------------------------------------------------------------ through the evaluation CLI


@pytest.fixture(scope="module")
def model_dir(tiny_vit, tmp_path_factory) -> Path:
    torch.manual_seed(0)
    vocabulary = build_vocabulary([f"a {c} square" for c in COLOURS], min_frequency=1)
    config = VSEConfig(image_backbone=str(tiny_vit), image_pooling="cls", text_encoder="gru", embed_dim=16, word_dim=8)
    folder = tmp_path_factory.mktemp("karpathy_model") / "model"
    VSEModel(config, tokenizer=vocabulary).save_pretrained(folder)
    return folder


def test_evaluate_cli_reads_a_karpathy_file(tmp_path, model_dir, capsys):
    path, images = write_karpathy(tmp_path / "coco")
    args = ["--model", str(model_dir), "--data", str(path), "--image-root", str(images), "--split", "test",
            "--cache-dir", str(tmp_path / "cache"), "--json", str(tmp_path / "eval.json")]  # fmt: skip
    assert evaluate_cli.main(args) == 0
    out = capsys.readouterr().out
    assert "full: all 3 images with all 16 captions" in out
    assert list(json.loads((tmp_path / "eval.json").read_text())) == ["full"]  # too small for 1K or 5K
    assert evaluate_cli.main([*args, "--protocol", "5k"]) == 2
    assert "the 5k protocol does not fit the test split: need 5000 images, got 3" in capsys.readouterr().err
    (images / "val2014" / "COCO_val2014_000000100004.jpg").unlink()  # a test image
    assert evaluate_cli.main(args) == 2
    assert "COCO_val2014_000000100004.jpg of" in capsys.readouterr().err


@pytest.mark.slow
def test_evaluate_cli_reports_coco_1k_and_5k_on_a_coco_shaped_split(tmp_path, model_dir, capsys):
    """Karpathy's COCO test split has 5,000 images and a few extra captions: 1K and 5K are still reported."""
    path, images = write_karpathy(tmp_path / "coco", "coco", {"test": 5000})  # one image with six captions
    args = ["--model", str(model_dir), "--data", str(path), "--image-root", str(images), "--split", "test",
            "--cache-dir", str(tmp_path / "cache"), "--json", str(tmp_path / "eval.json")]  # fmt: skip
    assert evaluate_cli.main(args) == 0
    out = capsys.readouterr().out
    assert "full: all 5,000 images with all 25,001 captions" in out
    assert "1k: COCO 1K, mean over 5 folds of 1,000 images, first 5 captions each" in out
    assert "5k: COCO 5K, 5,000 images, first 5 captions each" in out
    assert list(json.loads((tmp_path / "eval.json").read_text())) == ["full", "1k", "5k"]


# ------------------------------------------------------------------ a Hub id (download faked)

HUB_ID = "yerevann/coco-karpathy"


def fake_hub(monkeypatch, tmp_path: Path) -> list[tuple]:
    """``datasets.load_dataset`` answering for HUB_ID with tables in its schema (image URLs as file:// URLs)."""
    import datasets

    path, images = write_karpathy(tmp_path / "hub")
    entries = json.loads(path.read_text())["images"]
    calls = []

    def load_dataset(name, *args, split=None, revision=None, streaming=False, **kwargs):
        calls.append((name, split, revision, streaming))
        if name != HUB_ID:
            raise FileNotFoundError(f"Dataset '{name}' doesn't exist on the Hub")
        wanted = [e for e in entries if e["split"] == {"validation": "val"}.get(split, split)]
        return datasets.Dataset.from_dict({
            "filepath": [e["filepath"] for e in wanted],
            "sentids": [e["sentids"] for e in wanted],
            "filename": [e["filename"] for e in wanted],
            "imgid": [e["imgid"] for e in wanted],
            "split": [e["split"] for e in wanted],
            "sentences": [[s["raw"] for s in e["sentences"]] for e in wanted],
            "cocoid": [e["cocoid"] for e in wanted],
            "url": [(images / e["filepath"] / e["filename"]).as_uri() for e in wanted],
        })  # fmt: skip

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return calls


def test_hub_id_source_with_the_download_faked(monkeypatch, tmp_path, model_dir, capsys):
    calls = fake_hub(monkeypatch, tmp_path)
    train = load_source(SourceConfig(path=HUB_ID, split="train", extra_splits=["restval"], image_column="url",
                                     text_column="sentences", id_column="cocoid", revision="abc123"))  # fmt: skip
    assert calls == [(HUB_ID, "train", "abc123", False), (HUB_ID, "restval", "abc123", False)]
    assert train["split"] == ["train"] * 3 + ["restval"] * 2
    args = ["--model", str(model_dir), "--data", HUB_ID, "--split", "test", "--image-column", "url",
            "--text-column", "sentences", "--cache-dir", str(tmp_path / "cache")]  # fmt: skip
    assert evaluate_cli.main(args) == 0
    assert "full: all 3 images with all 16 captions" in capsys.readouterr().out
    assert calls[-1] == (HUB_ID, "test", None, False)
