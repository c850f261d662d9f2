"""Loading refuses broken or hostile model folders before building them, naming the file at fault.

Each case starts from a tiny saved model and breaks one file, as a bad upload,
a hand edit or a truncated copy would; the command lines show the refusal as
one ``error:`` line (exit status 2) and the traceback only under ``--debug``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from training import evaluate as evaluate_cli
from training import feedback as feedback_cli
from training import push as push_cli
from vse import VSEConfig, VSEModel
from vse.cli import error_line, run_cli
from vse.errors import ModelLoadError
from vse.vocab import save_vocabulary, vocabulary_from_words

ROOT = Path(__file__).resolve().parents[1]
SENTENCES = ["a red apple", "a red"]


@pytest.fixture(scope="module")
def saved_gru(tiny_vit, tmp_path_factory) -> Path:
    torch.manual_seed(0)
    config = VSEConfig(image_backbone=str(tiny_vit), image_pooling="cls", text_encoder="gru", embed_dim=8, word_dim=4)
    folder = tmp_path_factory.mktemp("gru") / "model"
    VSEModel(config, tokenizer=vocabulary_from_words(["a", "red"])).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def saved_transformer(tiny_vit, tiny_bert, tmp_path_factory) -> Path:
    config = VSEConfig(image_backbone=str(tiny_vit), image_pooling="cls", text_model=str(tiny_bert), embed_dim=8)
    folder = tmp_path_factory.mktemp("transformer") / "model"
    VSEModel(config).save_pretrained(folder)
    return folder


@pytest.fixture()
def model_copy(saved_gru, tmp_path) -> Path:
    return Path(shutil.copytree(saved_gru, tmp_path / "model"))


def edit_config(folder: Path, **changes) -> None:
    data = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**data, **changes}))


def edit_weights(folder: Path, **tensors: torch.Tensor) -> None:
    state = load_file(str(folder / "model.safetensors"))
    state.update({name.replace("__", "."): tensor for name, tensor in tensors.items()})
    save_file(state, str(folder / "model.safetensors"))


def refusal(folder: Path) -> str:
    with pytest.raises(ModelLoadError) as caught:
        VSEModel.from_pretrained(folder)
    return str(caught.value)


@pytest.fixture()
def nothing_is_built(monkeypatch):
    """Building any part of the model fails the test: the refusal must come first."""

    def refuse(*args, **kwargs):
        raise AssertionError("the model was built before its files were checked")

    monkeypatch.setattr("vse.model.build_image_backbone", refuse)
    monkeypatch.setattr("vse.model.GRUTextEncoder", refuse)


# ------------------------------------------------------------------ config.json
@pytest.mark.parametrize(
    "content, message",
    [
        (b"{not json", "is not valid JSON"),
        (b"\xff\xfe\x00\x01binary", "is not a text file"),
        (b"[1, 2]", "must hold a JSON object"),
        (b'{"embed_dim": 8}', "no vse_format_version"),
    ],
)
def test_unreadable_config_json_is_named(model_copy, nothing_is_built, content, message):
    (model_copy / "config.json").write_bytes(content)
    text = refusal(model_copy)
    assert f"{model_copy / 'config.json'}" in text and message in text


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"embed_dim": "256"}, "embed_dim must be of type int, got '256' (str)"),
        ({"embed_dim": 8.0}, "embed_dim must be of type int"),
        ({"finetune_image": "no"}, "finetune_image must be of type bool"),
        ({"gru_layers": True}, "gru_layers must be of type int, got True (bool)"),
        ({"extra": []}, "extra must be of type dict"),
        ({"text_encoder": "lstm"}, "text_encoder must be one of"),
        ({"embed_dim": 0}, "embed_dim must be between 1 and 8,192, got 0"),
        ({"vocab_size": 10**9}, "vocab_size must be between 0 and 2,000,000"),
        ({"vse_format_version": "1"}, "vse_format_version must be a positive integer"),
        ({"vse_format_version": 99}, "newer version"),
        ({"embed_dims": 8}, "unknown VSEConfig keys"),
    ],
)
def test_config_types_and_ranges_are_checked_before_building(model_copy, nothing_is_built, changes, message):
    edit_config(model_copy, **changes)
    text = refusal(model_copy)
    assert text.startswith(f"{model_copy / 'config.json'}") and message in text


@pytest.mark.parametrize("embed_dim", [200_000, 10**9])
def test_huge_embed_dim_is_refused_before_any_allocation(model_copy, nothing_is_built, embed_dim):
    edit_config(model_copy, embed_dim=embed_dim)
    start = time.perf_counter()
    text = refusal(model_copy)
    assert time.perf_counter() - start < 1.0
    assert "embed_dim must be between 1 and 8,192" in text and f"{embed_dim:,}" in text


def test_embed_dim_that_disagrees_with_the_weights_is_refused_before_building(model_copy, nothing_is_built):
    edit_config(model_copy, embed_dim=4096)  # within range: only the weights' header can tell
    text = refusal(model_copy)
    assert text.startswith(f"{model_copy / 'model.safetensors'}: tensor image_encoder.projection.weight")
    assert "has shape [8, 32]" in text and "embed_dim=4096" in text and "implies [4096, *]" in text
    assert str(model_copy / "config.json") in text


def test_gru_sizes_are_checked_against_the_weights(model_copy, nothing_is_built):
    edit_config(model_copy, word_dim=300)
    text = refusal(model_copy)
    assert "text_encoder.embedding.weight has shape [4, 4]" in text and "implies [4, 300]" in text


# ------------------------------------------------------------------ model.safetensors
@pytest.mark.parametrize("dtype", [torch.int8, torch.uint8, torch.float64, torch.int32])
def test_unexpected_weight_dtypes_are_refused(model_copy, nothing_is_built, dtype):
    weight = load_file(str(model_copy / "model.safetensors"))["text_encoder.gru.weight_hh_l0"]
    edit_weights(model_copy, text_encoder__gru__weight_hh_l0=weight.to(dtype))
    text = refusal(model_copy)
    assert text.startswith(f"{model_copy / 'model.safetensors'}: tensor text_encoder.gru.weight_hh_l0")
    assert f"has dtype {str(dtype).removeprefix('torch.')}" in text and "float32, float16, bfloat16" in text


def test_int64_in_place_of_a_float_weight_is_refused(model_copy, nothing_is_built):
    edit_weights(model_copy, image_encoder__projection__bias=torch.zeros(8, dtype=torch.int64))
    assert "image_encoder.projection.bias has dtype int64" in refusal(model_copy)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_weights_are_accepted(saved_gru, model_copy, dtype):
    state = load_file(str(model_copy / "model.safetensors"))
    save_file({name: tensor.to(dtype) for name, tensor in state.items()}, str(model_copy / "model.safetensors"))
    loaded, original = VSEModel.from_pretrained(model_copy), VSEModel.from_pretrained(saved_gru)
    torch.testing.assert_close(loaded.encode_text(SENTENCES), original.encode_text(SENTENCES), atol=0.05, rtol=0)


def test_a_backbone_shape_mismatch_names_the_tensor(model_copy):
    """The backbone's feature size is only known once it is built: caught before the weights are copied."""
    edit_weights(model_copy, image_encoder__projection__weight=torch.zeros(8, 31))
    text = refusal(model_copy)
    assert text.startswith(f"{model_copy / 'model.safetensors'}: tensor image_encoder.projection.weight")
    assert "has shape [8, 31]" in text and "[8, 32]" in text


@pytest.mark.parametrize(
    "content, message",
    [(b"not a safetensors file", "is not a readable safetensors file"), (b"", "is not a readable safetensors file")],
)
def test_unreadable_weights_file_is_named(model_copy, nothing_is_built, content, message):
    (model_copy / "model.safetensors").write_bytes(content)
    text = refusal(model_copy)
    assert text.startswith(f"{model_copy / 'model.safetensors'}") and message in text


def test_missing_and_unexpected_tensors_are_named(model_copy):
    state = load_file(str(model_copy / "model.safetensors"))
    state["text_encoder.gru.weight_ih_l1"] = torch.zeros(24, 8)
    save_file(state, str(model_copy / "model.safetensors"))
    assert "unexpected ['text_encoder.gru.weight_ih_l1']" in refusal(model_copy)
    del state["text_encoder.gru.weight_ih_l1"], state["text_encoder.gru.bias_hh_l0"]
    save_file(state, str(model_copy / "model.safetensors"))
    assert "has no tensor text_encoder.gru.bias_hh_l0" in refusal(model_copy)


# ------------------------------------------------------------------ tokenizer and vocabulary files
def test_binary_gru_vocabulary_is_named(model_copy, nothing_is_built):
    (model_copy / "tokenizer.json").write_bytes(b"\x00\x01\xffPK\x03\x04 binary")
    text = refusal(model_copy)
    assert text.startswith(f"{model_copy / 'tokenizer.json'}") and "not a text file" in text


def test_json_that_is_no_tokenizer_is_named(model_copy, nothing_is_built):
    (model_copy / "tokenizer.json").write_text('{"hello": "world"}')
    text = refusal(model_copy)
    assert text.startswith(f"{model_copy / 'tokenizer.json'} is not a readable tokenizers file")


def test_vocabulary_size_must_match_the_config(model_copy, nothing_is_built):
    save_vocabulary(vocabulary_from_words(["a", "red", "green", "blue"]), model_copy)
    text = refusal(model_copy)
    assert text == f"{model_copy / 'tokenizer.json'} has 6 words but {model_copy / 'config.json'} records vocab_size=4"


@pytest.mark.parametrize(
    "name", ["text_backbone/tokenizer.json", "text_backbone/config.json", "text_backbone/vocab.txt",
             "image_backbone/config.json", "backbones.json", "metrics.json"]
)  # fmt: skip
def test_binary_backbone_and_vocabulary_files_are_named(saved_transformer, tmp_path, name):
    folder = Path(shutil.copytree(saved_transformer, tmp_path / "model"))
    (folder / name).write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff\xfe")
    text = refusal(folder)
    assert text.startswith(f"{folder / name}") and "not a text file" in text


def test_a_well_formed_transformer_model_still_loads(saved_transformer):
    model = VSEModel.from_pretrained(saved_transformer)
    assert model.encode_text(SENTENCES).shape == (2, 8)


# ------------------------------------------------------------------ the command lines
def broken_model(folder: Path) -> Path:
    edit_config(folder, embed_dim="256")
    return folder


def only_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err and len([line for line in lines if line.startswith("error:")]) == 1, err
    return next(line for line in lines if line.startswith("error:"))


@pytest.mark.parametrize(
    "cli, argv",
    [
        (push_cli, ["--repo", "someone/x", "--model"]),
        (evaluate_cli, ["--data", "nowhere", "--model"]),
    ],
)
def test_cli_prints_one_error_line_and_exits_2(model_copy, capsys, cli, argv):
    assert cli.main([*argv, str(broken_model(model_copy))]) == 2
    line = only_error_line(capsys.readouterr().err)
    assert line == f"error: {model_copy / 'config.json'}: embed_dim must be of type int, got '256' (str)"
    with pytest.raises(ModelLoadError, match="embed_dim must be of type int"):
        cli.main([*argv, str(model_copy), "--debug"])


def test_feedback_export_refuses_a_file_that_is_no_votes_database(tmp_path, capsys):
    db = tmp_path / "votes.db"
    db.write_bytes(b"this is not sqlite" * 100)
    assert feedback_cli.main(["export", "--db", str(db), "--out", str(tmp_path / "out")]) == 2
    assert only_error_line(capsys.readouterr().err).startswith(f"error: {db} is not a votes database")


def test_entry_point_shows_the_traceback_only_under_debug(model_copy):
    """The real ``python -m training.push`` process: its exit status and all it writes to stderr."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "training.push", "--model", str(broken_model(model_copy)), "--repo", "someone/x"]
    plain = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert plain.returncode == 2 and plain.stdout == ""
    assert plain.stderr.strip().splitlines() == [
        f"error: {model_copy / 'config.json'}: embed_dim must be of type int, got '256' (str)"
    ], plain.stderr
    debug = subprocess.run([*command, "--debug"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert debug.returncode == 1
    assert "Traceback (most recent call last)" in debug.stderr and "vse.errors.ModelLoadError" in debug.stderr


def test_run_cli_maps_only_expected_errors():
    def refuse():
        raise ModelLoadError("model.safetensors: tensor x has\n dtype int8")

    def crash():
        raise KeyError("a bug")

    assert run_cli(lambda: None) == 0 and run_cli(lambda: 3) == 3
    assert run_cli(refuse) == 2
    with pytest.raises(ModelLoadError):
        run_cli(refuse, debug=True)
    with pytest.raises(KeyError):
        run_cli(crash)  # a bug keeps its traceback
    assert error_line(ModelLoadError("a\n  b")) == "error: a b"
    assert error_line(FileNotFoundError()) == "error: FileNotFoundError"


def test_images_are_untouched_by_the_checks(model_copy):
    """A model folder may hold pictures (model card figures): they are not text and are not read."""
    Image.new("RGB", (4, 4)).save(model_copy / "figure.png")
    assert VSEModel.from_pretrained(model_copy).encode_text(SENTENCES).shape == (2, 8)
