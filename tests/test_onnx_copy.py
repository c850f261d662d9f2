"""ONNX Runtime copies of frozen backbones: same features as PyTorch, never stale, never in the way."""

from __future__ import annotations

import copy
import os
import warnings
from collections.abc import Callable

import pytest
import torch

import vse.onnx_copy as onnx_copy
from vse import VSEConfig, VSEModel
from vse.backbones import EfficientNetLiteBackbone


@pytest.fixture(autouse=True)
def export_every_time(monkeypatch):
    """Every test here exports afresh; the graphs kept on disk have their own tests (the last ones)."""
    monkeypatch.setenv(onnx_copy.CACHE_ENV, "off")


def backbone(runtime: str = "auto") -> EfficientNetLiteBackbone:
    torch.manual_seed(0)
    module = EfficientNetLiteBackbone("efficientnet-lite0", image_size=64, load_weights=False, runtime=runtime)
    module.requires_grad_(False)
    return module.eval()


def torch_features(module: EfficientNetLiteBackbone, pixels: torch.Tensor) -> torch.Tensor:
    """Naive reference: the PyTorch trunk, NCHW, one image at a time."""
    with torch.no_grad():
        return torch.cat([module.trunk.extract_features(image[None]).mean(dim=(2, 3)) for image in pixels])


DEPRECATIONS = (DeprecationWarning, PendingDeprecationWarning, FutureWarning)


def deprecations_from(action: Callable[[], object]) -> list[str]:
    """Every deprecation warning ``action`` emits, whatever the filters around the test say."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        action()
    return [
        f"{w.category.__name__}: {w.message} ({w.filename}:{w.lineno})"
        for w in caught
        if issubclass(w.category, DEPRECATIONS)
    ]


def test_export_is_current_and_quiet(capfd):
    """The torch.export-based exporter: no deprecation warning, nothing printed, same features."""
    module = backbone()
    pixels = torch.randn(3, 3, 64, 64)
    capfd.readouterr()
    with torch.inference_mode():
        assert deprecations_from(lambda: module(pixels)) == []
    assert module.onnx_copy.exported
    assert capfd.readouterr() == ("", "")
    with torch.inference_mode():
        torch.testing.assert_close(module(pixels), torch_features(module, pixels), atol=1e-4, rtol=1e-4)


class WarnsWhenTraced(torch.nn.Module):
    def forward(self, values: torch.Tensor) -> torch.Tensor:
        warnings.warn("the model's own warning", UserWarning, stacklevel=1)
        return values.mean(dim=1)


def test_export_hides_no_warning():
    """Warnings raised while exporting reach the caller (only torch's own notes go to DEBUG)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        onnx_copy.export_onnx(WarnsWhenTraced(), {"values": torch.randn(1, 4)}, {0: "batch"})
    assert any("the model's own warning" in str(w.message) for w in caught)


def test_features_equal_pytorch_for_any_batch_size():
    module = backbone()
    pixels = torch.randn(7, 3, 64, 64)  # not a multiple of the micro-batch
    with torch.inference_mode():
        features = module(pixels)
    assert module.onnx_copy.exported
    assert features.shape == (7, module.feature_dim)
    torch.testing.assert_close(features, torch_features(module, pixels), atol=1e-4, rtol=1e-4)
    with torch.inference_mode():
        torch.testing.assert_close(module(pixels[:1]), features[:1], atol=1e-5, rtol=1e-5)


def test_export_leaves_every_module_mode_alone():
    module = backbone()
    with torch.inference_mode():
        module(torch.randn(1, 3, 64, 64))
    assert not any(submodule.training for submodule in module.modules())


def test_weights_changed_in_place_are_followed():
    module = backbone()
    pixels = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        before = module(pixels)
    state = {name: tensor + 0.05 * torch.randn_like(tensor) if tensor.is_floating_point() else tensor
             for name, tensor in module.state_dict().items()}  # fmt: skip
    module.load_state_dict(state)
    with torch.inference_mode():
        after = module(pixels)
    assert not torch.allclose(before, after, atol=1e-3)
    torch.testing.assert_close(after, torch_features(module, pixels), atol=1e-4, rtol=1e-4)


def naive_stamp(module: torch.nn.Module) -> tuple:
    """Walk the whole module: every parameter and buffer's name, storage, version counter, dtype, shape, device."""
    tensors = [*module.named_parameters(), *module.named_buffers()]
    return tuple(
        (name, t.data_ptr(), None if t.is_inference() else t._version, t.dtype, tuple(t.shape), t.device.type)
        for name, t in tensors
    )


def changes() -> dict[str, Callable[[torch.nn.Module], object]]:
    """Ways a module's weights change between two queries."""

    def assigned_parameter(m):
        m.trunk._conv_head.weight = torch.nn.Parameter(m.trunk._conv_head.weight.detach() * 2, requires_grad=False)

    def assigned_buffer(m):
        m.trunk._bn1.running_mean = m.trunk._bn1.running_mean + 1

    def replaced_submodule(m):
        head = m.trunk._conv_head
        m.trunk._conv_head = torch.nn.Conv2d(head.in_channels, head.out_channels, 1, bias=False).requires_grad_(False)

    def replaced_data(m):
        m.trunk._conv_head.weight.data = m.trunk._conv_head.weight.data * 0.5

    def written_in_place(m):
        with torch.no_grad():
            m.trunk._conv_head.weight.mul_(1.5)

    def deleted_submodule(m):
        del m.trunk._blocks[-1]

    def deleted_buffer(m):
        del m.trunk._bn1.running_mean

    def emptied_parameter(m):
        m.trunk._bn1.weight = None

    return {
        "submodule deleted": deleted_submodule,
        "buffer deleted": deleted_buffer,
        "parameter set to None": emptied_parameter,
        "parameter assigned": assigned_parameter,
        "buffer assigned": assigned_buffer,
        "submodule replaced": replaced_submodule,
        ".data replaced": replaced_data,
        "written in place": written_in_place,
        "moved to float64 and back": lambda m: m.double().float(),
    }


@pytest.mark.parametrize("change", list(changes()))
def test_the_weights_watch_agrees_with_a_walk_of_the_whole_module(change):
    module, watch = backbone(), onnx_copy.WeightsWatch()
    before = watch.stamp(module)
    assert before == naive_stamp(module)
    assert watch.stamp(module) == before  # nothing changed: the same stamp
    changes()[change](module)
    after = watch.stamp(module)
    assert after == naive_stamp(module) and after != before


def test_a_change_landing_after_its_hook_ran_is_still_seen():
    """PyTorch runs the registration hook before the assignment lands; a stamp taken in between must not stick."""
    module, watch = backbone(), onnx_copy.WeightsWatch()
    head = module.trunk._conv_head
    new_head = torch.nn.Conv2d(head.in_channels, head.out_channels, 1, bias=False)  # (its own hooks run here)
    watch.stamp(module)
    watch.stamp(module)  # settled
    onnx_copy._count_registration()  # the hook of replacing the submodule has run ...
    between = watch.stamp(module)  # ... and a query is stamped before the replacement lands
    module.trunk._modules["_conv_head"] = new_head
    after = watch.stamp(module)
    assert after != between and after == naive_stamp(module)


@pytest.mark.parametrize("change", ["parameter assigned", "submodule replaced", "written in place"])
def test_the_onnx_copy_follows_every_kind_of_weight_change(change):
    module = backbone(runtime="onnx")  # ONNX Runtime or an error: never a silent fall back to PyTorch
    pixels = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        before = module(pixels)
    changes()[change](module)
    with torch.inference_mode():
        after = module(pixels)
    scale = float(before.abs().max())  # features of random weights are tiny: compare relative to them
    assert module.onnx_copy.exported and not module.onnx_copy.failed
    assert (after - before).abs().max() > 0.05 * scale
    torch.testing.assert_close(after, torch_features(module, pixels), atol=1e-4 * scale, rtol=1e-4)


def test_a_pinned_copy_reads_no_weights_until_it_is_unpinned(monkeypatch):
    """Pinned (a served model's promise): no stamp per call, so a change goes unseen, as promised,
    until unpinning, after which the next call follows it."""
    module = backbone(runtime="onnx")
    stamps = []
    real_stamp = onnx_copy.WeightsWatch.stamp
    monkeypatch.setattr(onnx_copy.WeightsWatch, "stamp", lambda watch, m: stamps.append(m) or real_stamp(watch, m))
    pixels = torch.randn(2, 3, 64, 64)
    module.onnx_copy.pinned = True
    with torch.inference_mode():
        before = module(pixels)  # the first call makes the session: one stamp
        assert len(stamps) == 1
        for _ in range(3):
            torch.testing.assert_close(module(pixels), before)
    assert len(stamps) == 1
    changes()["written in place"](module)
    with torch.inference_mode():
        torch.testing.assert_close(module(pixels), before)  # not seen while pinned
        module.onnx_copy.pinned = False
        after = module(pixels)
    assert len(stamps) == 2
    scale = float(before.abs().max())
    torch.testing.assert_close(after, torch_features(module, pixels), atol=1e-4 * scale, rtol=1e-4)
    assert (after - before).abs().max() > 0.05 * scale


def test_weights_changed_before_pinning_are_seen_by_the_first_pinned_call():
    module = backbone(runtime="onnx")
    pixels = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        before = module(pixels)
    changes()["written in place"](module)
    module.onnx_copy.pinned = True
    with torch.inference_mode():
        after = module(pixels)
    scale = float(before.abs().max())
    assert (after - before).abs().max() > 0.05 * scale
    torch.testing.assert_close(after, torch_features(module, pixels), atol=1e-4 * scale, rtol=1e-4)


def test_a_pinned_model_sees_weights_loaded_by_load_state_dict():
    model = VSEModel(VSEConfig(embed_dim=16, image_size=64)).eval().pin_weights()
    trunk = model.image_encoder.backbone
    pixels = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        before = trunk(pixels)
    weights = {name for name, _ in model.named_parameters() if name.startswith("image_encoder.backbone.")}
    state = {name: t + 0.05 * torch.randn_like(t) if name in weights else t for name, t in model.state_dict().items()}
    model.load_state_dict(state)
    with torch.inference_mode():
        after = trunk(pixels)
    assert trunk.onnx_copy.exported and trunk.onnx_copy.pinned
    assert not torch.allclose(before, after, atol=1e-3)
    torch.testing.assert_close(after, torch_features(trunk, pixels), atol=1e-4, rtol=1e-4)


def test_a_pinned_copy_still_follows_the_thread_count(text_encoder):
    """Pinning skips only the weights' check: another thread count still gets its own session."""
    copy_ = text_encoder.onnx_copy  # threads=0: torch's thread count at the call
    copy_.pinned = True
    batch = text_encoder.tokenize(["a red circle", "a square"])
    threads = torch.get_num_threads()
    try:
        with torch.inference_mode():
            torch.set_num_threads(1)
            one = text_encoder.features(batch)
            first = copy_._session
            assert text_encoder.features(batch) is not None and copy_._session is first
            torch.set_num_threads(2)
            two = text_encoder.features(batch)
    finally:
        torch.set_num_threads(threads)
    assert copy_._session is not first
    torch.testing.assert_close(two, one, atol=1e-5, rtol=1e-5)


def test_pin_weights_pins_every_copy_of_a_model_and_training_unpins_them(tiny_bert):
    config = VSEConfig(embed_dim=8, image_size=64, text_encoder="transformer", text_model=str(tiny_bert))
    model = VSEModel(config).eval()
    copies = model.onnx_copies()
    expected = [model.image_encoder.backbone.onnx_copy, model.text_encoder.onnx_copy, model.text_encoder.query_copy]
    assert sorted(map(id, copies)) == sorted(map(id, expected))
    assert not any(c.pinned for c in copies)
    assert all(c.pinned for c in model.pin_weights().onnx_copies())
    model.eval()
    assert all(c.pinned for c in copies)
    model.train()
    assert not any(c.pinned for c in copies)


def test_gradients_training_mode_and_the_torch_runtime_use_pytorch():
    module = backbone()
    pixels = torch.randn(2, 3, 64, 64, requires_grad=True)
    out = module(pixels)  # the input asks for a gradient
    assert out.requires_grad and not module.onnx_copy.exported
    module.train()
    with torch.no_grad():
        module(pixels)
    assert not module.onnx_copy.exported
    torch_only = backbone("torch")
    with torch.no_grad():
        torch_only(pixels)
    assert not torch_only.onnx_copy.exported


def test_trainable_image_backbone_keeps_gradients():
    model = VSEModel(VSEConfig(embed_dim=16, finetune_image=True, image_size=64)).train()
    features = model.image_features(torch.randn(2, 3, 64, 64))
    assert features.requires_grad
    features.sum().backward()
    assert model.image_encoder.backbone.trunk._conv_stem.weight.grad is not None
    assert not model.image_encoder.backbone.onnx_copy.exported


def test_copies_and_pickles_start_without_a_session():
    module = backbone()
    with torch.inference_mode():
        module(torch.randn(1, 3, 64, 64))
    clone = copy.deepcopy(module)
    assert not clone.onnx_copy.exported and clone.pooled.trunk is clone.trunk
    restored = copy.copy(module.onnx_copy)  # the __getstate__/__setstate__ path pickling takes
    assert not restored.exported
    pixels = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        torch.testing.assert_close(clone(pixels), module(pixels), atol=1e-5, rtol=1e-5)


def test_state_dict_is_unchanged_by_the_copy():
    assert all(not name.startswith("pooled") for name in backbone().state_dict())


def test_runtime_choice_and_missing_package(monkeypatch):
    monkeypatch.setenv(onnx_copy.RUNTIME_ENV, "tensorrt")
    with pytest.raises(ValueError, match="VSE_RUNTIME"):
        backbone(runtime=None)
    monkeypatch.setenv(onnx_copy.RUNTIME_ENV, "torch")
    assert backbone(runtime=None).runtime == "torch"
    with pytest.raises(ValueError, match="runtime must be"):
        backbone(runtime="gpu")

    monkeypatch.setattr(onnx_copy, "onnx_runtime_installed", lambda: False)
    pixels = torch.randn(1, 3, 64, 64)
    auto = backbone("auto")
    with torch.inference_mode():
        torch.testing.assert_close(auto(pixels), torch_features(auto, pixels))
    assert not auto.onnx_copy.exported
    with pytest.raises(ImportError, match="pip install onnx onnxscript onnxruntime"), torch.inference_mode():
        backbone("onnx")(pixels)


def test_export_failure_falls_back_once(monkeypatch, caplog):
    calls = []

    def broken_export(module, example, dynamic_axes):
        calls.append(1)
        raise RuntimeError("unsupported operator")

    monkeypatch.setattr(onnx_copy, "export_onnx", broken_export)
    module = backbone("auto")
    pixels = torch.randn(5, 3, 64, 64)
    with torch.inference_mode():
        features = module(pixels)
        module(pixels)
    torch.testing.assert_close(features, torch_features(module, pixels), atol=1e-5, rtol=1e-5)
    assert len(calls) == 1 and "using PyTorch" in caplog.text
    with pytest.raises(RuntimeError, match="unsupported"), torch.inference_mode():
        backbone("onnx")(pixels)


@pytest.fixture()
def text_encoder(tiny_bert):
    from vse.text import TransformerTextEncoder

    torch.manual_seed(0)
    encoder = TransformerTextEncoder(str(tiny_bert), embed_dim=8, runtime="auto")
    encoder.backbone.requires_grad_(False)
    return encoder.eval()


def naive_text_features(encoder, texts: list[str]) -> torch.Tensor:
    """Reference: the PyTorch backbone, one unpadded sentence at a time, mean over tokens."""
    rows = []
    with torch.no_grad():
        for text in texts:
            batch = encoder.tokenize([text])
            rows.append(encoder.backbone(**batch).last_hidden_state.mean(dim=1))
    return torch.cat(rows)


@pytest.mark.parametrize("first_call", ["one unpadded sentence", "the shortest sentence", "a padded batch"])
def test_text_features_equal_pytorch_for_padded_batches(text_encoder, first_call):
    """The copy is exported from whatever comes first; padding must still be masked after.

    The empty sentence (two tokens; the batch of one is widened to two for export)
    gives an example whose batch and token counts are equal: they must stay two axes.
    """
    texts = ["a red apple", "a flag with a star and a moon and a sun", "", "clock"]
    first = {"one unpadded sentence": ["warm up"], "the shortest sentence": [""]}.get(first_call)
    with torch.inference_mode():
        if first:
            assert deprecations_from(lambda: text_encoder.features(text_encoder.tokenize(first))) == []
        features = text_encoder.features(text_encoder.tokenize(texts))
        single = text_encoder.features(text_encoder.tokenize(texts[1:2]))
    assert text_encoder.onnx_copy.exported
    torch.testing.assert_close(features, naive_text_features(text_encoder, texts), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(single, features[1:2], atol=1e-5, rtol=1e-4)


def test_text_training_and_unusual_tokenizers_use_pytorch(text_encoder):
    text_encoder.backbone.requires_grad_(True)
    text_encoder.train()
    batch = text_encoder.tokenize(["a red apple", "a clock"])
    features = text_encoder.features(batch)
    assert features.requires_grad and not text_encoder.onnx_copy.exported
    text_encoder.eval()
    with torch.inference_mode():
        reference = text_encoder.features(batch)
        unusual = text_encoder.features({"input_ids": batch["input_ids"]})  # no mask: mean over all tokens
    assert unusual.shape == reference.shape


@pytest.mark.parametrize(
    "backbone_name, pooling",
    [("vit", "cls"), ("vit", "avg"), ("vit", "pooler"), ("resnet", "pooler"), ("resnet", "avg")],
)
def test_transformers_vision_backbones_equal_pytorch(request, backbone_name, pooling):
    from vse.backbones import TransformersVisionBackbone

    torch.manual_seed(0)
    folder = request.getfixturevalue(f"tiny_{backbone_name}")
    module = TransformersVisionBackbone(str(folder), pooling=pooling, runtime="auto").requires_grad_(False).eval()
    size = module.processor.size
    side = size.get("height") or size.get("shortest_edge")
    pixels = torch.randn(3, 3, side, side)
    with torch.inference_mode():
        features = module(pixels)
        module.runtime = "torch"
        reference = torch.cat([module(image[None]) for image in pixels])
    assert module.onnx_copy.exported and not module.onnx_copy.failed
    torch.testing.assert_close(features, reference, atol=1e-5, rtol=1e-4)


def test_exported_graph_is_kept_and_reused_by_the_next_model(monkeypatch, tmp_path):
    monkeypatch.setenv(onnx_copy.CACHE_ENV, str(tmp_path))
    pixels = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        first = backbone()(pixels)
    assert len(list(tmp_path.glob("*.onnx"))) == 1
    monkeypatch.setattr(onnx_copy, "export_onnx", lambda *_: pytest.fail("exported again"))
    fresh = backbone()  # same weights, as in a restarted process
    with torch.inference_mode():
        torch.testing.assert_close(fresh(pixels), first)
    assert fresh.onnx_copy.exported


def test_changed_weights_or_axes_give_another_graph(monkeypatch, tmp_path):
    module = backbone()
    example = {"pixels": torch.randn(1, 3, 64, 64)}
    key = onnx_copy.graph_key(module, example, {0: "batch"})
    assert key == onnx_copy.graph_key(copy.deepcopy(module), example, {0: "batch"})
    assert key == onnx_copy.graph_key(module, {"pixels": torch.randn(5, 3, 64, 64)}, {0: "batch"})  # batch is dynamic
    assert key != onnx_copy.graph_key(module, {"pixels": torch.randn(1, 3, 32, 32)}, {0: "batch"})
    assert key != onnx_copy.graph_key(module, example, {0: "batch", 2: "height"})
    changed = copy.deepcopy(module)
    with torch.no_grad():
        next(changed.parameters()).add_(1e-3)
    assert key != onnx_copy.graph_key(changed, example, {0: "batch"})


def test_damaged_graph_is_exported_again(monkeypatch, tmp_path, caplog):
    monkeypatch.setenv(onnx_copy.CACHE_ENV, str(tmp_path))
    pixels = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        expected = backbone()(pixels)
    (kept,) = tmp_path.glob("*.onnx")
    kept.write_bytes(b"not an onnx graph")
    with torch.inference_mode():
        torch.testing.assert_close(backbone()(pixels), expected)
    assert "unreadable" in caplog.text and kept.read_bytes() != b"not an onnx graph"


def test_only_the_most_recent_graphs_are_kept(tmp_path):
    for number in range(5):
        onnx_copy.keep_graph(tmp_path, f"key{number}", b"graph", keep=3)
        os.utime(tmp_path / f"key{number}.onnx", ns=(number, number))  # distinct times: writes outpace the clock
    assert sorted(p.stem for p in tmp_path.glob("*.onnx")) == ["key2", "key3", "key4"]
    assert onnx_copy.cached_graph(tmp_path, "key4") == b"graph" and onnx_copy.cached_graph(tmp_path, "key0") is None
    assert onnx_copy.cached_graph(None, "key4") is None


# ------------------------------------------------------------------ int8 search queries
def test_int8_query_features_are_close_to_float32_but_computed_apart(text_encoder):
    """The int8 copy: its own session, features within a few percent of the float32 copy's."""
    texts = ["a red apple", "a flag with a star and a moon and a sun", "clock"]
    with torch.inference_mode():
        exact = torch.cat([text_encoder.features(text_encoder.tokenize([t])) for t in texts])
        quantized = torch.cat([text_encoder.query_features(text_encoder.tokenize([t])) for t in texts])
    assert text_encoder.query_copy.exported and text_encoder.query_copy.int8
    assert not torch.equal(quantized, exact)  # really the quantised graph
    cosine = torch.nn.functional.cosine_similarity(quantized, exact)
    assert cosine.min() > 0.95, cosine


def test_the_query_copy_runs_on_one_thread_whatever_torch_uses(text_encoder):
    """Search queries: one intra-op thread (vse.text.QUERY_THREADS), so that concurrent queries do
    not contend for one pool; batches keep torch's thread count.  Copies keep the setting."""
    from vse.text import QUERY_THREADS

    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with torch.inference_mode():
            text_encoder.query_features(text_encoder.tokenize(["a red apple"]))
            text_encoder.features(text_encoder.tokenize(["a red apple"]))
        query_session, batch_session = text_encoder.query_copy._session, text_encoder.onnx_copy._session
        assert query_session.get_session_options().intra_op_num_threads == QUERY_THREADS == 1
        assert batch_session.get_session_options().intra_op_num_threads == 2
    finally:
        torch.set_num_threads(previous)
    assert copy.deepcopy(text_encoder.query_copy).threads == copy.copy(text_encoder.query_copy).threads == 1


def test_int8_graph_is_quantised_from_the_kept_float_graph(monkeypatch, tmp_path, text_encoder):
    """One export serves both copies; the int8 graph is kept beside it and reused by the next start."""
    monkeypatch.setenv(onnx_copy.CACHE_ENV, str(tmp_path))
    batch = text_encoder.tokenize(["a red apple"])
    with torch.inference_mode():
        text_encoder.features(batch)
        exports = []
        real_export = onnx_copy.export_onnx
        monkeypatch.setattr(onnx_copy, "export_onnx", lambda *a: exports.append(1) or real_export(*a))
        first = text_encoder.query_features(batch)
    assert exports == [] and sorted(p.stem.endswith("-int8") for p in tmp_path.glob("*.onnx")) == [False, True]
    monkeypatch.setattr(onnx_copy, "quantized_int8", lambda *_: pytest.fail("quantised again"))
    fresh = copy.deepcopy(text_encoder)  # a new process: no session yet
    with torch.inference_mode():
        torch.testing.assert_close(fresh.query_features(batch), first)


def test_a_damaged_float_graph_is_exported_again_for_the_int8_copy(monkeypatch, tmp_path, text_encoder, caplog):
    monkeypatch.setenv(onnx_copy.CACHE_ENV, str(tmp_path))
    batch = text_encoder.tokenize(["a red apple"])
    with torch.inference_mode():
        text_encoder.features(batch)
    (kept,) = tmp_path.glob("*.onnx")
    kept.write_bytes(b"not an onnx graph")
    with torch.inference_mode():
        features = text_encoder.query_features(batch)
    assert "cannot be quantised" in caplog.text and text_encoder.query_copy.exported
    assert not text_encoder.query_copy.failed and features.shape == (1, text_encoder.feature_dim)


def test_int8_queries_follow_the_torch_runtime_and_training(text_encoder):
    batch = text_encoder.tokenize(["a red apple"])
    text_encoder.runtime = "torch"
    with torch.inference_mode():
        torch.testing.assert_close(text_encoder.query_features(batch), text_encoder.features(batch))
    assert not text_encoder.query_copy.exported
