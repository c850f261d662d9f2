"""VSEModel: every backbone kind, encoding, and the save/load round trip."""

from __future__ import annotations

import io
import json

import pytest
import torch
from PIL import Image

from vse import VSEConfig, VSEModel
from vse.backbones import EFFICIENTNET_LITE, packaged_path, resolve_text_model
from vse.hub import UnsafeModelError
from vse.vocab import build_vocabulary

SENTENCES = ["a red apple", "a flag with a star", "a telephone", "a clock"]


def images():
    return [Image.new("RGB", (40, 30), color) for color in [(200, 0, 0), (0, 0, 200), (0, 160, 0)]]


@pytest.fixture(scope="module")
def default_model():
    """The offline default: packaged EfficientNet-Lite0 + packaged MiniLM."""
    return VSEModel(VSEConfig(embed_dim=64)).eval()


@pytest.fixture()
def gru_model(tiny_vit):
    torch.manual_seed(0)
    vocab = build_vocabulary(SENTENCES, min_frequency=1)
    config = VSEConfig(image_backbone=str(tiny_vit), image_pooling="cls", text_encoder="gru", embed_dim=16, word_dim=8)
    return VSEModel(config, tokenizer=vocab).eval()


def test_packaged_backbones_load_offline(default_model):
    assert packaged_path(EFFICIENTNET_LITE["efficientnet-lite0"]).is_file()
    assert resolve_text_model("sentence-transformers/all-MiniLM-L6-v2") != "sentence-transformers/all-MiniLM-L6-v2"
    state = torch.load(packaged_path(EFFICIENTNET_LITE["efficientnet-lite0"]), map_location="cpu", weights_only=True)
    trunk = default_model.image_encoder.backbone.trunk.state_dict()
    assert torch.equal(trunk["_conv_stem.weight"], state["_conv_stem.weight"])  # ImageNet weights, not random
    emb = default_model.encode_image(images())
    text = default_model.encode_text(SENTENCES)
    assert emb.shape == (3, 64) and text.shape == (4, 64)
    assert torch.allclose(emb.norm(dim=1), torch.ones(3)) and torch.allclose(text.norm(dim=1), torch.ones(4))
    assert not emb.requires_grad
    # MiniLM is a real sentence encoder: paraphrases are closer than unrelated sentences.
    features = default_model.text_features(
        default_model.tokenize(["a red apple", "an apple that is red", "a telephone"])
    )
    features = torch.nn.functional.normalize(features, dim=1)
    assert features[0] @ features[1] > features[0] @ features[2]


def test_length_sorted_batches_keep_order_and_match_one_at_a_time(default_model):
    texts = ["a clock", "a very long sentence about a red apple lying on a wooden kitchen table", "", "star",
             "two flags, one with a star and one with a moon", "a clock"]  # fmt: skip
    one_by_one = torch.cat([default_model.encode_text([text]) for text in texts])
    for batch_size in (1, 2, 64):
        torch.testing.assert_close(
            default_model.encode_text(texts, batch_size=batch_size), one_by_one, atol=1e-5, rtol=0
        )
    assert torch.equal(default_model.encode_text(texts)[0], default_model.encode_text(texts)[5])


@pytest.mark.parametrize(
    "backbone, pooling", [("vit", "cls"), ("vit", "avg"), ("vit", "pooler"), ("resnet", "pooler"), ("resnet", "avg")]
)
def test_transformers_backbones_from_a_folder(request, tiny_bert, backbone, pooling):
    folder = request.getfixturevalue(f"tiny_{backbone}")
    model = VSEModel(
        VSEConfig(image_backbone=str(folder), image_pooling=pooling, text_model=str(tiny_bert), embed_dim=16)
    ).eval()
    assert model.encode_image(images()).shape == (3, 16)
    assert model.encode_text(SENTENCES + [""]).shape == (5, 16)


def test_encode_image_accepts_every_input_kind(gru_model, tmp_path):
    pil = images()[0]
    path = tmp_path / "red.png"
    pil.save(path)
    buffer = io.BytesIO()
    pil.save(buffer, format="PNG")
    from_pil = gru_model.encode_image([pil])
    assert torch.equal(gru_model.encode_image(pil), from_pil)
    assert torch.equal(gru_model.encode_image([path]), from_pil)
    assert torch.equal(gru_model.encode_image([buffer.getvalue()]), from_pil)
    pixels = gru_model.preprocess([pil])
    assert torch.equal(gru_model.encode_image(pixels), from_pil)
    features = gru_model.image_features(pixels)
    assert torch.allclose(gru_model.encode_image(features), from_pil, atol=1e-6)
    with pytest.raises(ValueError, match="expected"):
        gru_model.encode_image(torch.zeros(3))


def test_one_entry_per_modality_decides_the_input_kind(default_model, gru_model):
    """embed_images / embed_texts take features, pixels, images, strings or tokens, and agree."""
    pil = images()
    with torch.no_grad():
        pixels = default_model.preprocess(pil)
        from_images = default_model.embed_images(pil)
        torch.testing.assert_close(default_model.embed_images(pixels), from_images)
        torch.testing.assert_close(default_model.embed_images(default_model.image_features(pixels)), from_images)
        from_strings = default_model.embed_texts(SENTENCES)
        tokens = default_model.tokenize(SENTENCES)
        torch.testing.assert_close(default_model.embed_texts(tokens), from_strings)
        features = default_model.text_features(tokens)
        torch.testing.assert_close(default_model.embed_texts(features), from_strings, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(default_model.encode_text(features), default_model.encode_text(SENTENCES),
                                   atol=1e-5, rtol=1e-4)  # fmt: skip
        assert default_model.embed_texts("a clock").shape == (1, 64)
    with pytest.raises(TypeError, match="transformer"):
        gru_model.embed_texts(torch.zeros(2, 8))
    with pytest.raises(ValueError, match="text features"):
        default_model.embed_texts(torch.zeros(2, 3, 4))
    with pytest.raises(ValueError, match="pixels"):
        default_model.embed_images(torch.zeros(2, 3, 4))


def test_batching_does_not_change_results(gru_model):
    whole = gru_model.encode_text(SENTENCES, batch_size=100)
    assert torch.allclose(gru_model.encode_text(SENTENCES, batch_size=1), whole, atol=1e-6)
    assert gru_model.encode_tags([["red", "apple"]]).shape == (1, 16)
    assert torch.allclose(gru_model.encode_tags([["Red", "apple", "red"]]), gru_model.encode_text(["red, apple"]))
    assert gru_model.encode_text([]).shape == (0, 16)


def test_training_mode_keeps_gradients_and_frozen_backbones_in_eval(gru_model):
    gru_model.train()
    assert gru_model.image_encoder.backbone.training is False  # frozen: no dropout, fixed BatchNorm
    assert gru_model.text_encoder.training is True
    assert gru_model.encode_text(SENTENCES).requires_grad
    assert not any(p.requires_grad for p in gru_model.image_encoder.backbone.parameters())
    gru_model.eval()
    sims = gru_model.similarity(gru_model.encode_image(images()), gru_model.encode_text(SENTENCES))
    assert sims.shape == (3, 4) and sims.abs().max() <= 1.0 + 1e-6


def test_round_trip_gru_model(gru_model, tmp_path):
    gru_model.metrics = {"test": {"rsum": 123.4, "i2t_R@1": 10.0}}
    gru_model.save_pretrained(tmp_path / "m")
    files = {p.name for p in (tmp_path / "m").iterdir()}
    assert {
        "model.safetensors",
        "config.json",
        "tokenizer.json",
        "README.md",
        "backbones.json",
        "metrics.json",
    } <= files
    loaded = VSEModel.from_pretrained(str(tmp_path / "m"))
    assert loaded.text_encoder.tokenizer.get_vocab() == gru_model.text_encoder.tokenizer.get_vocab()
    assert torch.equal(
        loaded.encode_text(SENTENCES + ["unknown words here"]),
        gru_model.encode_text(SENTENCES + ["unknown words here"]),
    )
    assert torch.equal(loaded.encode_image(images()), gru_model.encode_image(images()))
    assert loaded.metrics == gru_model.metrics
    card = (tmp_path / "m" / "README.md").read_text()
    assert "123.40" in card and "library_name: vse" in card and "Mithun" in card


def test_round_trip_default_model_small_file(default_model, tmp_path):
    default_model.save_pretrained(tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    assert weights.stat().st_size < 2_000_000  # heads only; frozen backbones come from their packages
    records = json.loads((tmp_path / "m" / "backbones.json").read_text())
    assert records["image"]["bundled"] is False and len(records["text"]["sha256"]) == 64
    loaded = VSEModel.from_pretrained(tmp_path / "m")
    assert torch.equal(loaded.encode_image(images()), default_model.encode_image(images()))
    assert torch.equal(loaded.encode_text(SENTENCES), default_model.encode_text(SENTENCES))


def test_bundled_backbones_load_without_their_source(tiny_vit, tiny_bert, tmp_path):
    config = VSEConfig(image_backbone=str(tiny_vit), image_pooling="cls", text_model=str(tiny_bert), embed_dim=16,
                       bundle_frozen_backbones=True)  # fmt: skip
    model = VSEModel(config).eval()
    model.save_pretrained(tmp_path / "m")
    want = model.encode_text(SENTENCES), model.encode_image(images())
    config_data = json.loads((tmp_path / "m" / "config.json").read_text())
    config_data["image_backbone"] = str(tmp_path / "gone-vit")  # the source disappears
    config_data["text_model"] = str(tmp_path / "gone-bert")
    (tmp_path / "m" / "config.json").write_text(json.dumps(config_data))
    loaded = VSEModel.from_pretrained(tmp_path / "m")
    assert torch.equal(loaded.encode_text(SENTENCES), want[0])
    assert torch.equal(loaded.encode_image(images()), want[1])


def test_changed_backbone_source_is_detected(tiny_vit, tiny_bert, tmp_path):
    import shutil

    from tests.tiny_models import make_tiny_bert

    own_bert = shutil.copytree(tiny_bert, tmp_path / "bert")
    model = VSEModel(
        VSEConfig(image_backbone=str(tiny_vit), image_pooling="cls", text_model=str(own_bert), embed_dim=16)
    )
    model.save_pretrained(tmp_path / "m")
    make_tiny_bert(own_bert, seed=123)  # same architecture, other weights
    with pytest.raises(ValueError, match="SHA-256"):
        VSEModel.from_pretrained(tmp_path / "m")


@pytest.mark.parametrize(
    "bad_file", ["pytorch_model.bin", "extra.pkl", "modeling_evil.py", "image_backbone/weights.pt"]
)
def test_pickles_and_code_are_refused(gru_model, tmp_path, bad_file):
    gru_model.save_pretrained(tmp_path / "m")
    (tmp_path / "m" / bad_file).write_bytes(b"\x80\x04 anything")
    with pytest.raises(UnsafeModelError, match="can run code"):
        VSEModel.from_pretrained(tmp_path / "m")


def test_hub_repo_is_listed_and_refused_before_download(monkeypatch):
    import huggingface_hub

    downloads = []
    monkeypatch.setattr(
        huggingface_hub.HfApi, "list_repo_files", lambda self, repo, revision=None: ["config.json", "model.pkl"]
    )
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda *a, **k: downloads.append(a))
    from vse.hub import resolve_model_dir

    with pytest.raises(UnsafeModelError, match="Hub repository user/model"):
        resolve_model_dir("user/model")
    assert downloads == []


def test_hub_repo_id_loads_through_snapshot(gru_model, tmp_path, monkeypatch):
    import huggingface_hub

    gru_model.save_pretrained(tmp_path / "snapshot")
    calls = {}

    def fake_snapshot(repo_id, **kwargs):
        calls.update(kwargs, repo_id=repo_id)
        return str(tmp_path / "snapshot")

    monkeypatch.setattr(
        huggingface_hub.HfApi, "list_repo_files", lambda self, repo, revision=None: ["config.json", "model.safetensors"]
    )
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    monkeypatch.setattr(
        "huggingface_hub.hub_mixin.hf_hub_download", lambda **k: str(tmp_path / "snapshot" / "config.json")
    )
    loaded = VSEModel.from_pretrained("user/model", revision="abc123")
    assert calls["repo_id"] == "user/model" and calls["revision"] == "abc123"
    assert "*.safetensors" in calls["allow_patterns"] and "*.bin" not in calls["allow_patterns"]
    assert torch.equal(loaded.encode_text(SENTENCES), gru_model.encode_text(SENTENCES))


def test_push_to_hub_uploads_a_complete_folder(gru_model, monkeypatch):
    import huggingface_hub

    uploaded = {}

    class FakeRepo:
        repo_id = "user/vse-test"

    def fake_upload(self, repo_id, folder_path, **kwargs):
        from pathlib import Path

        uploaded["files"] = sorted(
            p.relative_to(folder_path).as_posix() for p in Path(folder_path).rglob("*") if p.is_file()
        )
        uploaded["repo_id"] = repo_id
        return "https://huggingface.co/user/vse-test/commit/0"

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", lambda self, **k: FakeRepo())
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", fake_upload)
    url = gru_model.push_to_hub("user/vse-test")
    assert url.endswith("/commit/0") and uploaded["repo_id"] == "user/vse-test"
    assert {"model.safetensors", "config.json", "tokenizer.json", "README.md"} <= set(uploaded["files"])


def test_bad_configs_and_folders_get_clear_errors(tmp_path, gru_model):
    with pytest.raises(ValueError, match="text_encoder"):
        VSEConfig(text_encoder="lstm")
    with pytest.raises(ValueError, match="unknown VSEConfig keys"):
        VSEConfig.from_dict({"embed_dims": 3})
    with pytest.raises(ValueError, match="needs a vocabulary"):
        VSEModel(VSEConfig(text_encoder="gru"))
    with pytest.raises(FileNotFoundError, match="no model folder"):
        VSEModel.from_pretrained(str(tmp_path / "nothing-here"))
    gru_model.save_pretrained(tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        VSEModel.from_pretrained(tmp_path / "m")


def test_model_card_carries_hub_metadata(default_model, tmp_path):
    """model-index with Recall@K per split, base models, license, pipeline tag, Hub dataset ids only."""
    from huggingface_hub import ModelCard

    default_model.config.extra = {"datasets": [
        {"id": "someone/captions", "role": "test", "split": "test"},
        {"id": str(tmp_path / "local-web"), "role": "web_tags", "split": "train"},
        {"id": "someone/captions", "role": "validation", "split": "validation"}]}  # fmt: skip
    default_model.metrics = {"test": {"i2t_R@1": 10.0, "rsum": 123.45}, "corrections": {"votes": 3}}
    default_model.save_pretrained(tmp_path / "m")
    card = ModelCard.load(tmp_path / "m" / "README.md")
    assert card.data.datasets == ["someone/captions"]
    assert card.data.base_model == ["sentence-transformers/all-MiniLM-L6-v2"]
    assert card.data.pipeline_tag == "feature-extraction" and card.data.license == "mit"
    results = {(r.dataset_type, r.dataset_split, r.metric_name): r.metric_value for r in card.data.eval_results}
    assert results == {("someone/captions", "test", "i2t_R@1"): 10.0, ("someone/captions", "test", "rsum"): 123.45}
    default_model.config.extra, default_model.metrics = {}, {}
