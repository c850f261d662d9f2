"""Unit tests of the training pieces: configs, pseudo tags, corrections, curriculum, cache, sources."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch

from training.cache import FeatureStore, build_store
from training.config import TrainConfig
from training.configuration import ConfigError, load_config
from training.corrections import Corrections, load_corrections
from training.curriculum import curriculum_subset, easy_to_hard, fraction_at, pair_agreement
from training.loop import BatchStream, learning_rate, uses_hardest_negatives
from training.pseudo_tags import pseudo_tags
from training.runtime import Runtime
from training.sources import ImageResolver, SourceError, normalize_texts
from vse.images import ImageLoadError

# ------------------------------------------------------------------ configs


def test_config_file_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: {embed_dim: 64, text_encoder: gru}\nstage1: {optim: {lr: 1e-3}}\n")
    config = load_config(
        TrainConfig,
        path,
        ["--stage1.optim.epochs=3", "--data.validation.path=x", "--stage2.curriculum_fractions=[0.5, 1]"],
    )
    assert config.model.embed_dim == 64 and config.model.text_encoder == "gru"
    assert config.stage1.optim.lr == 1e-3 and config.stage1.optim.epochs == 3
    assert config.data.validation.path == "x" and config.data.validation.split == "validation"  # defaults kept
    assert config.stage2.curriculum_fractions == [0.5, 1.0]
    assert config.stage2.optim.lr == 2e-5  # stage two keeps its smaller default rate


@pytest.mark.parametrize(
    "override, message",
    [
        ("--stage1.optim.lrr=1", "unknown config keys"),
        ("--stage1.optim.epochs=two", "expected int"),
        ("--stage1.enabled=maybe", "true or false"),
        ("--model.text_encoder=lstm", "text_encoder"),
        ("stage1.enabled=true", "--key=value"),
        ("--stage2.curriculum_fractions=0.5", "expected a list"),
        ("--stage1.loss.kind=triplet", "loss kind"),
        ("--web.unit=words", "web unit"),
        ("--data.web_tag_noise=1.5", "web_tag_noise"),
        ("--log.trackers=[tensorboard, neptune]", "unknown trackers \\['neptune'\\]"),
        ("--log.trackers=tensorboard", "expected a list"),
        ("--mixed_precision=fp8", "mixed_precision must be one of"),
        ("--mixed_precision=true", "mixed_precision must be one of"),
        ("--tensorboard=true", "unknown config keys"),  # replaced by log.trackers
        ("--stop_after_steps=-1", "must not be negative"),
    ],
)
def test_bad_overrides_are_rejected(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(TrainConfig, None, [override])


def test_mixed_precision_no_survives_yaml():
    """YAML reads a bare ``no`` as false; accelerate's name for float32 must still work, in files and overrides."""
    assert load_config(TrainConfig, None, ["--mixed_precision=no"]).mixed_precision == "no"
    assert load_config(TrainConfig, None, ["--mixed_precision=bf16"]).mixed_precision == "bf16"
    assert TrainConfig().mixed_precision == "no"


def test_ready_configs_parse():
    from pathlib import Path

    configs = Path(__file__).resolve().parents[1] / "configs"
    for path in sorted(configs.glob("*.yaml")):
        config = load_config(TrainConfig, path)
        assert config.stage1.loss.margin == pytest.approx(0.2), path
    default = load_config(TrainConfig, configs / "offline_default.yaml")
    assert default.stage1.include_web and default.web.noise_aware and default.web.unit == "tags"
    assert default.stage1.loss.kind == "infonce" and not default.stage2.enabled
    paper = load_config(TrainConfig, configs / "paper_two_stage.yaml")
    assert paper.stage2.enabled and paper.stage2.curriculum and paper.web.unit == "list" and not paper.web.noise_aware
    assert paper.stage2.optim.lr == pytest.approx(paper.stage1.optim.lr / 10) and paper.stage1.loss.kind == "hinge"


# ------------------------------------------------------------------ pseudo tags


@pytest.mark.parametrize(
    "sentence, tags",
    [
        ("A man's red bicycle is leaning against the wall.", ["man", "red", "bicycle", "leaning", "wall"]),
        ("Two DOGS, two dogs & 3 cats!", ["two", "dogs", "cats"]),
        ("There is a well-lit kitchen with an oven", ["well-lit", "kitchen", "oven"]),
        ("", []),
        ("the of and", []),
        ("Ｃａｆé au lait", ["café", "au", "lait"]),
    ],
)
def test_pseudo_tags(sentence, tags):
    assert pseudo_tags(sentence) == tags


def test_pseudo_tags_are_deterministic():
    sentence = "A group of people standing around a large white truck"
    assert pseudo_tags(sentence) == pseudo_tags(sentence) == ["group", "people", "standing", "large", "white", "truck"]


# ------------------------------------------------------------------ corrections


def test_corrections_apply_and_review():
    rows = [
        {"image_id": "a", "tag": "Hash", "verdict": "wrong"},
        {"image_id": "a", "tag": "apple", "verdict": "right"},
        {"image_id": "a", "tag": "red fruit", "verdict": "added"},
        {"image_id": "b", "tag": "star", "verdict": "added"},
    ]
    corrections = Corrections.from_rows(rows)
    assert corrections.apply("a", ["apple", "hash", "computer"]) == ["apple", "computer", "red fruit"]
    assert corrections.apply("b", ["star", "flag"]) == ["star", "flag"]  # not added twice
    assert corrections.apply("c", ["x"]) == ["x"]
    assert corrections.reviewed("a") and not corrections.reviewed("c")
    with pytest.raises(ValueError, match="unknown verdict"):
        Corrections.from_rows([{"image_id": "a", "tag": "x", "verdict": "maybe"}])


def test_corrections_table_files(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps({"image_id": "1", "tag": "x", "verdict": "wrong", "votes": 2, "total_votes": 3}) + "\n")
    assert load_corrections(str(path)).by_image == {"1": {"x": "wrong"}}
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"image": "1", "tag": "x"}) + "\n")
    with pytest.raises(ValueError, match="lacks columns"):
        load_corrections(str(bad))
    assert len(load_corrections(None)) == 0


# ------------------------------------------------------------------ curriculum and schedules


def test_curriculum_orders_easy_first_and_grows():
    scores = np.array([0.1, 0.9, 0.5, 0.9, -0.2])
    order = easy_to_hard(scores)
    assert order.tolist() == [1, 3, 2, 0, 4]
    fractions = [0.2, 0.6, 1.0]
    sizes = [len(curriculum_subset(order, epoch, fractions)) for epoch in range(5)]
    assert sizes == [1, 3, 5, 5, 5]
    assert fraction_at(10, [0.5]) == 0.5
    with pytest.raises(ValueError):
        fraction_at(0, [1.5])
    emb = torch.nn.functional.normalize(torch.randn(4, 8), dim=1)
    assert np.allclose(pair_agreement(emb, emb), 1.0)


def test_learning_rate_decay_and_warmup():
    from training.config import LossConfig, OptimConfig

    optim = OptimConfig(lr=1.0, lr_decay_epochs=2, lr_decay_factor=0.5)
    assert [learning_rate(optim, e) for e in range(5)] == [1.0, 1.0, 0.5, 0.5, 0.25]
    hinge = LossConfig(kind="hinge", warmup_epochs=1)
    assert [uses_hardest_negatives(hinge, e) for e in range(3)] == [False, True, True]
    assert not any(uses_hardest_negatives(LossConfig(kind="infonce"), e) for e in range(3))


@dataclass
class FakeRuntime:
    rank: int = 0
    world_size: int = 1
    extra: dict = field(default_factory=dict)


def test_batch_streams_split_the_global_batch_without_overlap():
    indices = np.arange(50)
    streams = [BatchStream(indices, 4, 7, FakeRuntime(rank, 3)) for rank in range(3)]
    seen = []
    for _ in range(streams[0].batches_per_pass()):
        parts = [s.next() for s in streams]
        assert all(len(p) == 4 for p in parts)
        seen.extend(np.concatenate(parts).tolist())
    assert len(seen) == len(set(seen)) == 48  # 4 global batches of 12, remainder dropped
    small = BatchStream(np.arange(5), 8, 0, FakeRuntime(0, 2))
    assert len(small.next()) == 2  # shrinks to what the data allows


def test_a_batch_stream_continues_from_its_state_dict():
    """A stream rebuilt from a checkpointed position draws the batches the original would have, across passes."""
    original = BatchStream(np.arange(10), 4, 3, FakeRuntime())
    for _ in range(3):  # into the second pass (2 batches per pass)
        original.next()
    resumed = BatchStream(np.arange(10), 4, 3, FakeRuntime())
    resumed.load_state_dict(json.loads(json.dumps(original.state_dict())))  # as state.json holds it
    for _ in range(5):
        np.testing.assert_array_equal(resumed.next(), original.next())
    fresh = BatchStream(np.arange(10), 4, 3, FakeRuntime())
    fresh.load_state_dict(BatchStream(np.arange(10), 4, 3, FakeRuntime()).state_dict())
    np.testing.assert_array_equal(fresh.next(), BatchStream(np.arange(10), 4, 3, FakeRuntime()).next())


def test_random_state_round_trips_through_a_weights_only_file(tmp_path):
    import random

    from training.checkpoint import capture_random_state, restore_random_state

    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    torch.save(capture_random_state(torch.device("cpu")), tmp_path / "streams.pt")
    expected = (torch.rand(3), np.random.rand(3), random.random(), np.random.standard_normal())
    restore_random_state(torch.load(tmp_path / "streams.pt", weights_only=True), torch.device("cpu"))
    got = (torch.rand(3), np.random.rand(3), random.random(), np.random.standard_normal())
    torch.testing.assert_close(got[0], expected[0], rtol=0, atol=0)
    np.testing.assert_array_equal(got[1], expected[1])
    assert got[2:] == expected[2:]


def test_tracker_scalars_name_numbers_by_stage():
    from training.checkpoint import tracker_scalars

    record = {"time": 1.0, "stage": "stage1", "epoch": 2, "loss": 0.5, "selected": True, "val_rsum": float("nan"),
              "pairs": {"captions": 10, "web_tags": 4}, "note": "x"}  # fmt: skip
    assert tracker_scalars(record) == {
        "stage1/epoch": 2.0, "stage1/loss": 0.5, "stage1/pairs/captions": 10.0, "stage1/pairs/web_tags": 4.0,
    }  # fmt: skip


def test_setup_refuses_fp16_without_cuda_and_missing_trackers(monkeypatch):
    import importlib.util

    from training.runtime import SetupError, check_setup

    with pytest.raises(SetupError, match="fp16 needs a CUDA GPU"):
        check_setup("fp16", [], cuda=False)
    check_setup("bf16", [], cuda=False)  # CPUs autocast to bfloat16
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real_find_spec(name))
    with pytest.raises(SetupError, match=r"^log.trackers: wandb is not installed \(pip install wandb\)$"):
        check_setup("no", ["wandb"], cuda=False)


# ------------------------------------------------------------------ feature cache


def fake_encoder(calls):
    def encode(items):
        calls.append(len(items))
        values = np.asarray(items, dtype=np.float32)
        valid = values >= 0
        return np.stack([values, values * 2], axis=1) * valid[:, None], valid

    return encode


def test_feature_store_round_trip_and_resume(tmp_path):
    items = list(range(10)) + [-1] + list(range(11, 23))  # row 10 is "unreadable"
    store = FeatureStore(tmp_path / "s", shard_size=8)
    calls = []
    rows = build_store(store, items, fake_encoder(calls), batch_size=3, progress=False)
    store.mark_complete(rows, 2, {})
    assert store.is_complete() and len(store) == 23
    assert store.valid().tolist() == [i != 10 for i in range(23)]
    got = store.gather(np.array([22, 0, 9, 10]))
    assert np.allclose(got, [[22, 44], [0, 0], [9, 18], [0, 0]])
    # Interrupted build: delete one shard, rebuild: only that shard is recomputed.
    (tmp_path / "s" / "features-00001.npy").unlink()
    calls.clear()
    again = FeatureStore(tmp_path / "s", shard_size=8)
    assert not again.is_complete()
    build_store(again, items, fake_encoder(calls), batch_size=8, progress=False)
    assert calls == [8]
    again.mark_complete(23, 2, {})
    assert np.allclose(again.gather(np.arange(23)), store.gather(np.arange(23)))


def test_feature_store_ranks_share_the_work(tmp_path):
    items = list(range(20))
    for rank in range(2):
        build_store(
            FeatureStore(tmp_path / "s", 4),
            items,
            fake_encoder([]),
            batch_size=4,
            rank=rank,
            world_size=2,
            progress=False,
        )
    store = FeatureStore(tmp_path / "s", 4)
    store.mark_complete(20, 2, {})
    assert np.allclose(store.gather(np.arange(20))[:, 0], np.arange(20))


def test_missing_shards_cannot_be_marked_complete(tmp_path):
    store = FeatureStore(tmp_path / "s", 4)
    build_store(store, list(range(8)), fake_encoder([]), batch_size=4, rank=0, world_size=2, progress=False)
    with pytest.raises(RuntimeError, match="missing shards"):
        store.mark_complete(8, 2, {})


# ------------------------------------------------------------------ sources


def test_normalize_texts():
    assert normalize_texts("  a cat ") == ["a cat"]
    assert normalize_texts(["a", "", None, "  ", "b"]) == ["a", "b"]
    assert normalize_texts(None) == []


def test_image_paths_cannot_escape_their_root(tmp_path):
    from PIL import Image

    root = tmp_path / "root"
    root.mkdir()
    Image.new("RGB", (4, 4)).save(root / "ok.png")
    Image.new("RGB", (4, 4)).save(tmp_path / "secret.png")
    resolver = ImageResolver(str(root))
    assert resolver.open("ok.png").size == (4, 4)
    assert resolver.open({"bytes": None, "path": "ok.png"}).size == (4, 4)
    for bad in ("../secret.png", str(tmp_path / "secret.png"), "sub/../../secret.png"):
        with pytest.raises(ImageLoadError, match="leaves the image root"):
            resolver.open(bad)
    with pytest.raises(ImageLoadError, match="leaves the image root"):
        ImageResolver("https://example.invalid/images").open("../x.png")


def test_missing_source_and_columns_are_reported(tmp_path):
    from training.config import SourceConfig
    from training.sources import load_source

    with pytest.raises(SourceError, match="no captions source"):
        load_source(SourceConfig())
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"image": "a.png", "text": "a cat"}) + "\n")
    with pytest.raises(SourceError, match=r"has no column \['captions'\]"):
        load_source(SourceConfig(path=str(data)))


def test_runtime_without_accelerate_is_single_process():
    runtime = Runtime()
    assert runtime.rank == 0 and runtime.world_size == 1 and runtime.is_main
    assert runtime.mean(3.0) == 3.0


def test_replace_tags_swaps_the_requested_share():
    from training.pairs import replace_tags

    lists = [[f"tag{i}"] for i in range(100)]
    noisy = replace_tags(lists, 0.25, seed=3)
    changed = [i for i in range(100) if noisy[i] != lists[i]]
    assert len(changed) == 25 and all(noisy[i] in lists for i in changed)
    assert replace_tags(lists, 0.0, seed=3) == lists
    assert replace_tags(lists, 0.25, seed=3) == noisy  # deterministic
    with pytest.raises(ValueError):
        replace_tags(lists, 1.5, seed=0)


def test_tag_noise_replaces_the_requested_share_with_tags_the_image_lacks():
    from training.pairs import corrupt_tags, noisy_tag_lists

    lists = [[f"a{i}", f"b{i}", f"c{i % 7}"] for i in range(400)]
    noisy, flags = corrupt_tags(lists, 0.3, seed=5)
    replaced = [
        (new, old)
        for n, o, f in zip(noisy, lists, flags, strict=True)
        for new, old, flag in zip(n, o, f, strict=True)
        if flag
    ]
    assert len(replaced) / 1200 == pytest.approx(0.3, abs=0.04)
    assert all(new != old for new, old in replaced)
    pool = {tag for tags in lists for tag in tags}
    assert all(len(set(tags)) == len(tags) and set(tags) <= pool for tags in noisy)  # no duplicates, from the pool
    unflagged = [
        (new, old)
        for n, o, f in zip(noisy, lists, flags, strict=True)
        for new, old, flag in zip(n, o, f, strict=True)
        if not flag
    ]
    assert all(new == old for new, old in unflagged)
    assert corrupt_tags(lists, 0.3, seed=5) == (noisy, flags)  # deterministic
    assert noisy_tag_lists(lists, 0.0, "tag", 0)[0] == lists
    whole, whole_flags = noisy_tag_lists(lists, 0.25, "list", 3)
    assert sum(all(f) for f in whole_flags) == 100
