"""Configuration of a visual-semantic embedding model.

One dataclass describes the architecture; it is what ``config.json`` holds in a
saved model folder, so every field is a plain JSON value.  The defaults are the
offline default of this project (EfficientNet-Lite0 images, MiniLM text); the
paper setting of Mithun et al. (ACM MM 2018) / VSE++ (Faghri et al., BMVC 2018)
is ``image_backbone="microsoft/resnet-152"``, ``text_encoder="gru"``,
``embed_dim=1024``, ``word_dim=300``.
"""

from __future__ import annotations

import dataclasses
import reprlib
import typing
from dataclasses import dataclass, field
from typing import Any

TEXT_ENCODERS = ("gru", "transformer")
IMAGE_POOLINGS = ("avg", "cls", "pooler")
TEXT_POOLINGS = ("mean", "cls")
IMAGE_RESIZES = ("pad", "crop")
CHOICES = {
    "text_encoder": TEXT_ENCODERS,
    "image_pooling": IMAGE_POOLINGS,
    "image_resize": IMAGE_RESIZES,
    "text_pooling": TEXT_POOLINGS,
}
# Inclusive ranges of the integer fields.  The upper limits are far above any
# sensible model (the paper: embed_dim 1024, word_dim 300, one GRU layer) and far
# below what would exhaust memory while the model is built.
LIMITS = {
    "embed_dim": (1, 8192),
    "word_dim": (1, 4096),
    "gru_layers": (1, 8),
    "max_text_tokens": (1, 8192),
    "image_size": (0, 2048),
    "vocab_size": (0, 2_000_000),
}


@dataclass
class VSEConfig:
    # Image backbone: a registry name ("efficientnet-lite0/1/2") or a transformers
    # vision model given as a Hub repo id or a local folder.
    image_backbone: str = "efficientnet-lite0"
    # How backbone feature maps become one vector: "avg" (global average pooling),
    # "cls" (first token of a ViT) or "pooler" (the backbone's own pooled output).
    image_pooling: str = "avg"
    # Square input resolution in pixels; 0 means the backbone's native size.
    image_size: int = 0
    # How an image becomes a square: "pad" letterboxes onto white (keeps the whole
    # picture; suits clip art and icons) or "crop" (ImageNet resize + centre crop).
    image_resize: str = "pad"
    # Train the image backbone end to end (False: only the projection is trained,
    # which lets training run on a cache of backbone features).
    finetune_image: bool = False
    # Text encoder kind: "gru" (the paper's word embeddings + GRU) or
    # "transformer" (a pretrained transformers text model, pooled and projected).
    text_encoder: str = "transformer"
    # The transformers text model (Hub id, local folder or registry alias);
    # ignored by the GRU encoder.
    text_model: str = "sentence-transformers/all-MiniLM-L6-v2"
    # Pooling of transformer token states: "mean" over real tokens or "cls".
    text_pooling: str = "mean"
    # Train the transformer text model end to end (the GRU is always trained).
    finetune_text: bool = False
    # Longest token sequence fed to the text encoder; longer inputs are truncated.
    max_text_tokens: int = 64
    # Dimension of the joint embedding space (VSE++ and the paper: 1024).
    embed_dim: int = 1024
    # GRU encoder: word embedding size (the paper: 300).
    word_dim: int = 300
    # GRU encoder: number of stacked GRU layers.
    gru_layers: int = 1
    # GRU encoder: vocabulary size including special tokens; set from the
    # tokenizer when a vocabulary is built, 0 means "not built yet".
    vocab_size: int = 0
    # Store frozen backbone weights in the model file (True) or reload them from
    # their source on load (False: small files, needs the source available).
    bundle_frozen_backbones: bool = False
    # Free-form provenance (datasets, revisions, training config) for the model card.
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` with a readable message on an impossible config.

        Types are checked first (a config read from JSON can hold anything), then
        ranges: the upper limits keep a hostile or mistyped ``config.json`` from
        allocating gigabytes before its weights are even looked at.
        """
        problems = type_problems(self)
        if problems:
            raise ValueError("; ".join(problems))
        for name in ("text_encoder", "image_pooling", "image_resize", "text_pooling"):
            allowed = CHOICES[name]
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        for name, (low, high) in LIMITS.items():
            value = getattr(self, name)
            if not low <= value <= high:
                raise ValueError(f"{name} must be between {low} and {high:,}, got {value:,}")
        if not self.image_backbone:
            raise ValueError("image_backbone must not be empty")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VSEConfig:
        """Build a config from JSON data, rejecting keys this version does not know."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known - IGNORED_KEYS)
        if unknown:
            raise ValueError(f"unknown VSEConfig keys {unknown}; known keys are {sorted(known)}")
        return cls(**{k: v for k, v in data.items() if k in known})


# Keys written beside the config in config.json that are not config fields.
IGNORED_KEYS = frozenset({"vse_format_version"})


def field_types() -> dict[str, type]:
    """The plain type of each field (``dict[str, Any]`` -> ``dict``)."""
    hints = typing.get_type_hints(VSEConfig)
    return {name: typing.get_origin(hint) or hint for name, hint in hints.items()}


def type_problems(config: VSEConfig) -> list[str]:
    """One message per field whose value is not of the field's type (``True`` is not an int)."""
    problems = []
    for name, expected in field_types().items():
        value = getattr(config, name)
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            shown = reprlib.repr(value)
            problems.append(f"{name} must be of type {expected.__name__}, got {shown} ({type(value).__name__})")
    return problems
