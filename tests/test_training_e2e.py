"""End to end: train both stages on a small imagefolder, evaluate, save, load, push."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from training import evaluate as evaluate_cli
from training import push as push_cli
from training.config import TrainConfig
from training.configuration import load_config
from training.train import main as train_main
from vse import VSEModel
from vse.testing.shapes import make_shapes_dataset

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    return make_shapes_dataset(tmp_path_factory.mktemp("shapes"))


# The paper's two-stage recipe (configs/paper_two_stage.yaml); tests of the default recipe override it.
PAPER = ["--stage2.enabled=true", "--stage1.include_web=false", "--stage1.pseudo_tags=true", "--web.unit=list",
         "--stage1.verified_tags=true",
         "--web.noise_aware=false", "--stage1.loss.kind=hinge", "--stage1.optim.steps_per_epoch=0",
         "--stage1.optim.lr=2e-4", "--stage1.optim.lr_decay_epochs=15"]  # fmt: skip


def train_args(shapes: Path, output: Path, cache: Path, *extra: str) -> list[str]:
    return [
        *PAPER,
        f"--data.captions.path={shapes / 'captions'}",
        f"--data.validation.path={shapes / 'captions'}",
        f"--data.test.path={shapes / 'captions'}",
        f"--data.web.path={shapes / 'web'}",
        f"--data.cache_dir={cache}",
        f"--output_dir={output}",
        "--model.embed_dim=64",
        "--stage1.optim.batch_size=16",
        "--stage1.optim.epochs=6",
        "--stage2.optim.batch_size=16",
        "--stage2.optim.epochs=2",
        "--progress=false",
        *extra,
    ]


def read_log(output: Path) -> list[dict]:
    return [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("text_encoder", ["transformer", "gru"])
def test_two_stages_evaluate_save_load(shapes, tmp_path, text_encoder, capsys):
    gru = ["--model.text_encoder=gru", "--data.min_word_frequency=1", "--model.word_dim=64", "--stage1.optim.epochs=12"]
    extra = gru if text_encoder == "gru" else []
    output, cache = tmp_path / "run", tmp_path / "cache"
    assert train_main(train_args(shapes, output, cache, *extra)) == 0
    log = read_log(output)
    stage1 = [r for r in log if r["stage"] == "stage1"]
    stage2 = [r for r in log if r["stage"] == "stage2"]
    assert len(stage1) == (12 if text_encoder == "gru" else 6) and len(stage2) == 2
    assert stage1[-1]["loss"] < stage1[0]["loss"]  # the loss falls
    assert stage2[0]["pairs"]["web_tags"] < stage2[1]["pairs"]["web_tags"]  # curriculum grows
    model = VSEModel.from_pretrained(output / "model")
    test = model.metrics["test"]
    # 12 test images, 3 captions each: chance is R@1 = 1/12 (8.3%) and R@5 = 41.7%.
    assert test["t2i_R@1"] > 25.0 and test["i2t_R@5"] > 60.0
    card = (output / "model" / "README.md").read_text()
    assert f"{test['rsum']:.2f}" in card and "web_tags" in card and "captions" in card
    # The evaluation CLI reproduces the stored test metrics from the saved folder.
    capsys.readouterr()
    code = evaluate_cli.main(["--model", str(output / "model"), "--data", str(shapes / "captions"), "--split", "test",
                              "--cache-dir", str(cache), "--json", str(tmp_path / "eval.json")])  # fmt: skip
    assert code == 0
    assert "rsum" in capsys.readouterr().out
    evaluated = json.loads((tmp_path / "eval.json").read_text())["full"]
    assert evaluated["rsum"] == pytest.approx(test["rsum"], abs=1e-6)
    # --update-card writes the metrics into the folder's metrics.json and its model-index.
    assert evaluate_cli.main(["--model", str(output / "model"), "--data", str(shapes / "captions"), "--split",
                              "validation", "--cache-dir", str(cache), "--update-card"]) == 0  # fmt: skip
    from huggingface_hub import ModelCard

    card = ModelCard.load(output / "model" / "README.md")
    names = {(r.dataset_split, r.metric_name) for r in card.data.eval_results}
    assert {("validation", "rsum"), ("test", "i2t_R@1"), ("test", "rsum")} <= names
    assert json.loads((output / "replicas.json").read_text())["world_size"] == 1


def same_weights(a: Path, b: Path) -> None:
    first, second = VSEModel.from_pretrained(a).state_dict(), VSEModel.from_pretrained(b).state_dict()
    assert first.keys() == second.keys()
    for name in first:
        torch.testing.assert_close(first[name], second[name], msg=name)


def test_interrupted_run_resumes_to_the_same_weights_and_refuses_a_changed_config(shapes, tmp_path, caplog, capsys):
    cache = tmp_path / "cache"
    base = train_args(shapes, tmp_path / "unused", cache, "--stage1.optim.epochs=3", "--stage2.optim.epochs=2",
                      "--stage1.loss.kind=infonce")  # fmt: skip
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    assert train_main([*base, f"--output_dir={straight}"]) == 0
    for stop in (2, 4):  # once inside stage one, once inside stage two
        assert train_main([*base, f"--output_dir={interrupted}", f"--stop_after_epochs={stop}"]) == 0
        assert not (interrupted / "model").exists()
    caplog.set_level("INFO")
    capsys.readouterr()
    assert train_main([*base, f"--output_dir={interrupted}", "--stage1.optim.lr=1e-3"]) == 2
    refusal = capsys.readouterr().err  # one "error:" line (vse.cli.run_cli)
    assert refusal.startswith("error: ") and "different config" in refusal
    assert "stage1.optim.lr: 0.0002 -> 0.001" in refusal
    assert train_main([*base, f"--output_dir={interrupted}"]) == 0
    assert "stage2: resuming after epoch 1" in caplog.text
    epochs = [(r["stage"], r["epoch"]) for r in read_log(interrupted)]
    assert epochs == [("stage1", 1), ("stage1", 2), ("stage1", 3), ("stage2", 1), ("stage2", 2)]  # nothing retrained
    same_weights(straight / "model", interrupted / "model")
    # Starting afresh in the same folder clears the earlier state, so nothing stale is picked up.
    assert train_main([*base, f"--output_dir={interrupted}", "--resume=false", "--seed=1"]) == 0
    assert [r["epoch"] for r in read_log(interrupted)] == [1, 2, 3, 1, 2]
    assert len(list(interrupted.glob("curriculum-*.npy"))) == 2  # keyed by the stage-one model it came from


class SimulatedCrash(Exception):
    """The process dies (here: while writing a checkpoint)."""


def crash_at_checkpoint(monkeypatch, number: int) -> None:
    """Make the ``number``-th checkpoint of the next run die before it is written."""
    from training import loop

    calls = []

    def save_or_crash(*args, **kwargs):
        calls.append(1)
        if len(calls) == number:
            raise SimulatedCrash(f"killed while writing checkpoint {number}")
        return save_checkpoint(*args, **kwargs)

    save_checkpoint = loop.save_checkpoint
    monkeypatch.setattr(loop, "save_checkpoint", save_or_crash)


def epoch_records(output: Path) -> list[dict]:
    keep = ("stage", "epoch", "global_step", "steps", "lr", "loss", "val_rsum", "temperature", "pairs")
    return [{k: r.get(k) for k in keep} for r in read_log(output) if r["stage"] in ("stage1", "stage2")]


def test_a_run_crashed_and_stopped_mid_epoch_resumes_to_the_same_weights(
    shapes, tmp_path, tiny_vit, tiny_bert, monkeypatch, caplog
):
    """Step-granular resume: weights, Adam state, learned temperature, learning-rate decay, batch order,
    dropout (a fine-tuned text model), noise-aware weights and the curriculum all come back."""
    from training.checkpoint import read_checkpoint_state

    monkeypatch.setenv("VSE_RUNTIME", "torch")  # no ONNX copies of the fine-tuned text model between epochs
    # Steps 1-6: stage one, two epochs of 3; steps 7-10: stage two, two epochs of 2.
    base = train_args(
        shapes, tmp_path / "unused", tmp_path / "cache", f"--model.image_backbone={tiny_vit}",
        "--model.image_pooling=cls", f"--model.text_model={tiny_bert}", "--model.finetune_text=true",
        "--stage1.include_web=true", "--web.unit=tags", "--web.noise_aware=true", "--web.suspicion_steps=1",
        "--web.suspicion_rounds=1", "--web.batch_size=8", "--stage1.loss.kind=infonce", "--stage1.optim.batch_size=8",
        "--stage1.optim.epochs=2", "--stage1.optim.steps_per_epoch=3", "--stage2.optim.batch_size=8",
        "--stage2.optim.epochs=2", "--stage2.optim.steps_per_epoch=2", "--stage2.optim.lr_decay_epochs=1",
        "--stage2.replay_clean=0.5",
    )  # fmt: skip
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    assert train_main([*base, f"--output_dir={straight}"]) == 0
    run = [*base, f"--output_dir={interrupted}"]

    with monkeypatch.context() as patch:
        crash_at_checkpoint(patch, 2)  # checkpoints after every step; dies writing step 2's
        with pytest.raises(SimulatedCrash):
            train_main([*run, "--checkpoint_every_steps=1"])
    assert read_checkpoint_state(interrupted)["steps_done"] == 1  # step 2 is lost and redone
    assert train_main([*run, "--stop_after_steps=9"]) == 0  # stops in stage two, epoch 2, after step 1
    assert not (interrupted / "model").exists()
    state = read_checkpoint_state(interrupted)
    assert (state["stage"], state["epoch"], state["step"], state["steps_done"]) == ("stage2", 1, 1, 9)
    caplog.set_level("INFO")
    assert train_main(run) == 0
    assert "stage2: resuming at step 1 of epoch 2" in caplog.text

    assert epoch_records(interrupted) == epoch_records(straight)  # every epoch logged once, with the same loss
    for folder in ("model", "checkpoint/model"):  # the selected model and the last weights
        first = VSEModel.from_pretrained(straight / folder).state_dict()
        second = VSEModel.from_pretrained(interrupted / folder).state_dict()
        assert first.keys() == second.keys()
        for name in first:
            torch.testing.assert_close(second[name], first[name], rtol=1e-6, atol=1e-7, msg=name)


def quick_args(shapes: Path, output: Path, cache: Path, *extra: str) -> list[str]:
    """Stage one only, a GRU text encoder: two epochs of three steps in about a second."""
    return train_args(shapes, output, cache, "--model.text_encoder=gru", "--data.min_word_frequency=1",
                      "--model.word_dim=16", "--stage2.enabled=false", "--stage1.optim.epochs=2",
                      "--stage1.optim.steps_per_epoch=3", *extra)  # fmt: skip


def test_tensorboard_tracker_gets_every_epoch_record(shapes, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    output = tmp_path / "run"
    assert train_main(quick_args(shapes, output, tmp_path / "cache", "--log.trackers=[tensorboard]")) == 0
    events = EventAccumulator(str(output / "logs" / "webly-vse"))
    events.Reload()
    logged = [(e.step, e.value) for e in events.Scalars("stage1/loss")]
    expected = [(r["global_step"], r["loss"]) for r in read_log(output)]  # metrics.jsonl is written as before
    assert [step for step, _ in logged] == [step for step, _ in expected] == [3, 6]
    assert [value for _, value in logged] == pytest.approx([value for _, value in expected], rel=1e-6)
    assert "stage1/val_rsum" in events.Tags()["scalars"]


def test_missing_tracker_and_fp16_without_cuda_are_refused_at_start(shapes, tmp_path, monkeypatch, capsys):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real_find_spec(name))
    output = tmp_path / "run"
    assert train_main(quick_args(shapes, output, tmp_path / "cache", "--log.trackers=[wandb]")) == 2
    assert capsys.readouterr().err == "error: log.trackers: wandb is not installed (pip install wandb)\n"
    assert not output.exists()  # refused before anything was written
    if not torch.cuda.is_available():
        assert train_main(quick_args(shapes, output, tmp_path / "cache", "--mixed_precision=fp16")) == 2
        assert "fp16 needs a CUDA GPU" in capsys.readouterr().err


@pytest.fixture
def fresh_accelerator_state():
    """accelerate keeps one mixed-precision mode per process; let a test choose another, then restore."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()
    yield
    AcceleratorState._reset_state()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU's bfloat16 autocast")
def test_bf16_on_cpu_trains_with_autocast_and_saves_float32(shapes, tmp_path, fresh_accelerator_state):
    cache = tmp_path / "cache"
    assert train_main(quick_args(shapes, tmp_path / "fp32", cache)) == 0
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()
    assert train_main(quick_args(shapes, tmp_path / "bf16", cache, "--mixed_precision=bf16")) == 0
    fp32, bf16 = read_log(tmp_path / "fp32"), read_log(tmp_path / "bf16")
    assert all(math.isfinite(r["loss"]) for r in bf16)
    assert [r["loss"] for r in bf16] != [r["loss"] for r in fp32]  # the steps really ran in bfloat16
    assert [r["loss"] for r in bf16] == pytest.approx([r["loss"] for r in fp32], rel=0.1)
    weights = VSEModel.from_pretrained(tmp_path / "bf16" / "model").state_dict()
    assert {t.dtype for t in weights.values() if t.is_floating_point()} == {torch.float32}


def test_selection_spans_both_stages(shapes, tmp_path):
    """A stage two that only makes things worse leaves the stage-one model selected."""
    output = tmp_path / "run"
    args = train_args(shapes, output, tmp_path / "cache", "--stage2.optim.lr=0.5", "--stage2.optim.grad_clip=0")
    assert train_main(args) == 0
    log = read_log(output)
    best_stage1 = max(r["val_rsum"] for r in log if r["stage"] == "stage1")
    assert max(r["val_rsum"] for r in log if r["stage"] == "stage2") < best_stage1
    model = VSEModel.from_pretrained(output / "model")
    assert model.config.extra["selected_stage"] == "stage1"
    assert model.metrics["validation"]["rsum"] == pytest.approx(best_stage1)


def test_corrections_feed_stage_one(shapes, tmp_path):
    from training.config import TrainConfig
    from training.configuration import load_config
    from training.pipeline import attach_images, build_model, read_sources
    from training.runtime import Runtime
    from training.train import build_pairs

    web_ids = [
        json.loads(line)["id"] for line in (shapes / "web" / "train" / "metadata.jsonl").read_text().splitlines()
    ]
    corrections = tmp_path / "corrections.jsonl"
    rows = [
        {"image_id": web_ids[0], "tag": "clipart", "verdict": "wrong"},
        {"image_id": web_ids[0], "tag": "image", "verdict": "wrong"},
        {"image_id": web_ids[0], "tag": "unsorted", "verdict": "wrong"},
        {"image_id": web_ids[0], "tag": "icon", "verdict": "wrong"},
        {"image_id": web_ids[0], "tag": "public domain", "verdict": "wrong"},
        {"image_id": web_ids[1], "tag": "shiny", "verdict": "added"},
    ]
    corrections.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = load_config(
        TrainConfig, None, train_args(shapes, tmp_path / "run", tmp_path / "cache", f"--data.corrections={corrections}")
    )
    runtime = Runtime()
    sources = read_sources(config)
    model = build_model(config, sources)
    attach_images(model, sources, config, runtime)
    pairs = build_pairs(model, sources, config, runtime)
    verified = pairs.verified_tags
    assert len(verified) == 2
    texts = dict(zip([sources.web.table.ids[r] for r in verified.image_rows], verified.texts, strict=True))
    assert "clipart" not in texts[web_ids[0]] and "unsorted" not in texts[web_ids[0]]
    assert texts[web_ids[1]].endswith("shiny")


def test_bad_rows_are_skipped_and_bad_sources_explained(shapes, tmp_path, caplog, capsys):
    import shutil

    data = Path(shutil.copytree(shapes, tmp_path / "data"))
    train = data / "captions" / "train"
    images = sorted(p for p in train.iterdir() if p.suffix == ".png")
    images[0].write_bytes(b"not a png")  # corrupt
    images[1].write_bytes(images[1].read_bytes()[:50])  # truncated
    lines = (train / "metadata.jsonl").read_text().splitlines()
    row = json.loads(lines[2])
    row["captions"] = ["", "   "]
    lines[2] = json.dumps(row)
    (train / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    caplog.set_level("INFO")
    output = tmp_path / "run"
    args = train_args(data, output, tmp_path / "cache", "--stage1.optim.epochs=1", "--stage2.enabled=false")
    assert train_main(args) == 0
    assert "unreadable images skipped" in caplog.text and "empty captions" in caplog.text
    assert read_log(output)[0]["pairs"]["captions"] == (36 - 3) * 3

    # A missing column and an absent web source stop the run before training, with a clear message.
    capsys.readouterr()
    args = [*args, "--resume=false"]  # the same folder, another config: start afresh
    assert train_main([*args, "--data.captions.text_column=caption"]) == 2
    assert "has no column ['caption']" in capsys.readouterr().err
    empty_web = tmp_path / "web.jsonl"
    empty_web.write_text(json.dumps({"image": str(images[5]), "tags": [], "id": "x"}) + "\n")
    assert train_main([*args, "--stage2.enabled=true", f"--data.web.path={empty_web}", "--data.web.split=train"]) == 2
    assert "the web term needs web image-tag pairs" in capsys.readouterr().err


def test_push_cli_uploads_model_with_card(shapes, tmp_path, monkeypatch, capsys):
    import huggingface_hub

    output = tmp_path / "run"
    assert (
        train_main(train_args(shapes, output, tmp_path / "cache", "--stage1.optim.epochs=1", "--stage2.optim.epochs=1"))
        == 0
    )
    uploaded = {}

    class Repo:
        repo_id = "someone/vse-shapes"

    def upload_folder(self, repo_id, folder_path, **kwargs):
        folder = Path(folder_path)
        uploaded.update(files=sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()),
                        card=(folder / "README.md").read_text(), repo_id=repo_id, kwargs=kwargs)  # fmt: skip
        return "https://huggingface.co/someone/vse-shapes/commit/1"

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", lambda self, **k: Repo())
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    assert push_cli.main(["--model", str(output / "model"), "--repo", "someone/vse-shapes"]) == 0
    assert "pushed to https://huggingface.co/someone/vse-shapes/commit/1" in capsys.readouterr().out
    assert {"model.safetensors", "config.json", "README.md", "metrics.json", "backbones.json"} <= set(uploaded["files"])
    card = uploaded["card"]
    assert "someone/vse-shapes" in card and "## Results" in card and "fingerprint" in card and "stage2" in card
    assert push_cli.main(["--model", str(tmp_path / "missing"), "--repo", "someone/x"]) == 2


def test_two_processes_end_with_identical_weights(shapes, tmp_path):
    """Two CPU processes (gloo) with negatives gathered across them."""
    output = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29517",
        "-m", "training.train", *train_args(shapes, output, tmp_path / "cache", "--stage1.optim.epochs=2",
                                             "--stage2.optim.epochs=1", "--stage1.optim.batch_size=8"),
    ]  # fmt: skip
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    replicas = json.loads((output / "replicas.json").read_text())
    assert replicas["world_size"] == 2 and len(set(replicas["digests"])) == 1
    log = read_log(output)
    assert len([r for r in log if r["stage"] == "stage1"]) == 2  # only rank 0 logs
    assert torch.isfinite(torch.tensor([r["loss"] for r in log])).all()


def test_streamed_web_source_and_fine_tuned_backbone(shapes, tmp_path, tiny_vit):
    """A web set read as a stream (never loaded whole), and end-to-end backbone training."""
    web_rows = [json.loads(line) for line in (shapes / "web" / "train" / "metadata.jsonl").read_text().splitlines()]
    web_file = tmp_path / "web.jsonl"
    web_file.write_text("".join(json.dumps({**r, "image": r["file_name"]}) + "\n" for r in web_rows))
    output = tmp_path / "run"
    args = train_args(
        shapes, output, tmp_path / "cache", f"--data.web.path={web_file}", "--data.web.streaming=true",
        f"--data.web.image_root={shapes / 'web' / 'train'}", "--data.web.split=train", f"--model.image_backbone={tiny_vit}",
        "--model.image_pooling=cls", "--model.finetune_image=true", "--stage1.optim.epochs=2", "--stage2.optim.epochs=2",
    )  # fmt: skip
    before = VSEModel(load_config(TrainConfig, None, args).model)
    assert train_main(args) == 0
    after = VSEModel.from_pretrained(output / "model")
    assert after.config.finetune_image
    changed = [
        not torch.equal(a, b)
        for a, b in zip(
            before.image_encoder.backbone.parameters(), after.image_encoder.backbone.parameters(), strict=True
        )
    ]
    assert any(changed)  # the backbone itself was trained and saved
    assert [r for r in read_log(output) if r["stage"] == "stage2"][0]["pairs"]["web_tags"] > 0


def test_close_the_loop_in_one_command(shapes, tmp_path, capsys):
    """Votes -> export -> retrain -> evaluate: the corrected tags change the training pairs and the model."""
    from training import close_loop
    from training.pairs import web_tag_pairs
    from training.pipeline import attach_images, build_model, read_sources
    from training.runtime import Runtime
    from vse.serving.feedback import FeedbackStore

    recipe = ["--stage2.enabled=false", "--stage1.include_web=true", "--web.unit=tags", "--web.noise_aware=true",
              "--web.suspicion_steps=20", "--stage1.loss.kind=infonce", "--stage1.optim.epochs=4",
              "--web.batch_size=16"]  # fmt: skip
    before = tmp_path / "before"
    assert train_main(train_args(shapes, before, tmp_path / "cache", *recipe)) == 0
    served = VSEModel.from_pretrained(before / "model")
    assert served.suspicion is not None and len(served.suspicion) > 0  # the queue's ranking comes with the model
    web = [json.loads(line) for line in (shapes / "web" / "train" / "metadata.jsonl").read_text().splitlines()]
    store = FeedbackStore(tmp_path / "votes.db")
    noisy = [row for row in web if len(row["tags"]) > 3][:4]
    for reviewer in ("ann", "bob"):
        for row in noisy:
            for tag in row["tags"]:
                verdict = "wrong" if tag in row["tags"][2:] else "right"
                store.add_vote(reviewer, row["id"], tag, verdict, "rev-before")
        store.add_vote(reviewer, web[0]["id"], "shiny", "added", "rev-before")
    args = ["--db", str(store.path), "--config", str(ROOT / "configs" / "offline_default.yaml"),
            "--output-dir", str(tmp_path / "after"), "--previous", str(before / "model"),
            *train_args(shapes, tmp_path / "after", tmp_path / "cache", *recipe)[:-1]]  # fmt: skip
    assert close_loop.main([a for a in args if not a.startswith("--output_dir")]) == 0
    out = capsys.readouterr().out
    removed = sum(len(row["tags"][2:]) for row in noisy)
    assert f"{removed} tags removed, 1 added" in out and "previous" in out
    after = VSEModel.from_pretrained(tmp_path / "after" / "model")
    record = after.metrics["corrections"]
    assert record["reviewers"] == 2 and record["votes"] == store.count() and record["queue_models"] == {
        "rev-before": store.count()}  # fmt: skip
    assert record["removed"] == removed and record["confirmed"] == 2 * len(noisy) and record["images"] == len(noisy) + 1
    card = (tmp_path / "after" / "model" / "README.md").read_text()
    assert record["fingerprint"][:16] in card and f"{removed} tags removed" in card
    # The corrected tags are what the retrained model's pairs hold: rejected tags gone, confirmed ones fixed.
    config = load_config(TrainConfig, None, train_args(shapes, tmp_path / "x", tmp_path / "cache", *recipe,
                                                       f"--data.corrections={tmp_path / 'after' / 'corrections'}"))  # fmt: skip
    sources = read_sources(config)
    attach_images(build_model(config, sources), sources, config, Runtime())
    pairs = web_tag_pairs(sources.web, sources.corrections, unit="tags")
    by_image = {}
    for row, text, fixed in zip(pairs.image_rows.tolist(), pairs.texts, pairs.fixed.tolist(), strict=True):
        by_image.setdefault(sources.web.table.ids[row], []).append((text, fixed))
    for row in noisy:
        assert by_image[row["id"]] == [(tag, True) for tag in row["tags"][:2]]
    assert ("shiny", True) in by_image[web[0]["id"]]
    assert after.suspicion.get(noisy[0]["id"], noisy[0]["tags"][0]) == 0.0  # confirmed: never suspected
    assert after.suspicion.get(noisy[0]["id"], noisy[0]["tags"][2]) is None  # removed
    changed = [
        not torch.equal(a, b) for a, b in zip(served.state_dict().values(), after.state_dict().values(), strict=True)
    ]
    assert any(changed)
