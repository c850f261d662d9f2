"""Text encoders for sentences and tag lists, and how a tag list becomes text.

Tags and sentences go through the same encoder (Mithun et al., ACM MM 2018,
embed web tags with the sentence encoder).  A tag list becomes one string:

1. each tag is NFKC-normalised and lower-cased; ``_`` and ``-`` become spaces and
   runs of whitespace collapse to one space;
2. empty tags are dropped and repeats removed, keeping the first occurrence;
3. the tags are joined with ", " in their original order.

So ``["Red_Apple", "fruit", "FRUIT", " "]`` becomes ``"red apple, fruit"``.
An empty list becomes the empty string, which the GRU encodes as a lone ``[UNK]``.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from pathlib import Path

import torch
from tokenizers import Tokenizer
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from vse.backbones import quiet_loading
from vse.onnx_copy import OnnxCopy, check_runtime, default_runtime, run_frozen
from vse.vocab import PAD_ID, UNK_ID, save_vocabulary

_SEPARATORS = re.compile(r"[_\-\s]+")


def normalize_tag(tag: str) -> str:
    """One tag in the canonical form used for encoding and for feedback storage."""
    return _SEPARATORS.sub(" ", unicodedata.normalize("NFKC", str(tag)).lower()).strip()


def tags_to_text(tags: Sequence[str]) -> str:
    """The exact encoder input for a tag list (see the module docstring)."""
    if isinstance(tags, str):
        raise TypeError("tags must be a list of strings, not one string")
    seen: dict[str, None] = {}
    for tag in tags:
        normalized = normalize_tag(tag)
        if normalized:
            seen.setdefault(normalized, None)
    return ", ".join(seen)


class GRUTextEncoder(nn.Module):
    """The paper's encoder: word embeddings, a GRU, the last hidden state: (B, embed_dim)."""

    def __init__(self, tokenizer: Tokenizer, word_dim: int, embed_dim: int, num_layers: int, max_tokens: int):
        super().__init__()
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens
        self.embedding = nn.Embedding(tokenizer.get_vocab_size(), word_dim, padding_idx=PAD_ID)
        self.gru = nn.GRU(word_dim, embed_dim, num_layers=num_layers, batch_first=True)
        nn.init.uniform_(self.embedding.weight, -0.1, 0.1)  # as VSE++
        with torch.no_grad():
            self.embedding.weight[PAD_ID].zero_()

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """{"input_ids": (B, L) padded ids, "lengths": (B,)}; empty texts become [UNK]."""
        encoded = [enc.ids[: self.max_tokens] or [UNK_ID] for enc in self.tokenizer.encode_batch(list(texts))]
        lengths = torch.tensor([len(ids) for ids in encoded], dtype=torch.long)
        input_ids = torch.full((len(encoded), max(map(len, encoded), default=1)), PAD_ID, dtype=torch.long)
        for row, ids in enumerate(encoded):
            input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return {"input_ids": input_ids, "lengths": lengths}

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        words = self.embedding(batch["input_ids"])
        packed = pack_padded_sequence(words, batch["lengths"].cpu(), batch_first=True, enforce_sorted=False)
        _, hidden = self.gru(packed)
        return hidden[-1]

    def save_files(self, folder: Path) -> None:
        save_vocabulary(self.tokenizer, folder)


# Tokenizer outputs a transformer text model takes, in the order PooledTokens takes them.
TOKEN_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
QUERY_THREADS = 1  # intra-op threads of the int8 query copy (see TransformerTextEncoder)


def pool_tokens(hidden: torch.Tensor, attention_mask: torch.Tensor | None, pooling: str) -> torch.Tensor:
    """(B, hidden) from (B, T, hidden) token states: the first token, or the mean over real tokens."""
    if pooling == "cls":
        return hidden[:, 0]
    if attention_mask is None:
        return hidden.mean(dim=1)
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


class PooledTokens(nn.Module):
    """A ``transformers`` text model pooled over tokens: (B, T) ids and mask -> (B, hidden)."""

    def __init__(self, backbone: nn.Module, pooling: str):
        super().__init__()
        self.backbone = backbone
        self.pooling = pooling

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        batch = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            batch["token_type_ids"] = token_type_ids
        return pool_tokens(self.backbone(**batch).last_hidden_state, attention_mask, self.pooling)


class TransformerTextEncoder(nn.Module):
    """A ``transformers`` text model, pooled over tokens, projected: (B, embed_dim).

    When frozen, inference runs on an ONNX Runtime copy of the backbone where that
    is installed (``runtime``: "auto", "onnx" or "torch"; see ``vse.onnx_copy``).
    """

    def __init__(
        self,
        source: str,
        embed_dim: int,
        pooling: str = "mean",
        max_tokens: int = 64,
        load_weights: bool = True,
        architecture_dir: str | Path | None = None,
        runtime: str | None = None,
    ):
        super().__init__()
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        if load_weights:
            with quiet_loading():
                self.backbone = AutoModel.from_pretrained(source, trust_remote_code=False, use_safetensors=True)
        else:
            config = AutoConfig.from_pretrained(architecture_dir or source, trust_remote_code=False)
            self.backbone = AutoModel.from_config(config, trust_remote_code=False)
        self.tokenizer = AutoTokenizer.from_pretrained(architecture_dir or source, trust_remote_code=False)
        self.pooling = pooling
        self.max_tokens = max_tokens
        self.feature_dim = int(self.backbone.config.hidden_size)
        self.projection = nn.Linear(self.feature_dim, embed_dim)
        # The backbone wrapped for export; not a submodule, so the state dict is unchanged.
        object.__setattr__(self, "pooled", PooledTokens(self.backbone, pooling))
        self.runtime = check_runtime(runtime or default_runtime())
        self.onnx_copy = OnnxCopy({0: "batch", 1: "tokens"}, spin=False)  # a query's latency, beside the search
        # Search queries: int8, one thread (a query of a few tokens gains nothing from a second
        # one, and concurrent queries then do not contend for each other's pool).
        self.query_copy = OnnxCopy({0: "batch", 1: "tokens"}, spin=False, int8=True, threads=QUERY_THREADS)

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        return dict(
            self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_tokens, return_tensors="pt")
        )

    def features(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, hidden) pooled token states of the backbone (cacheable when frozen)."""
        inputs = {name: batch[name] for name in TOKEN_INPUTS if name in batch}
        if set(batch) != set(inputs) or "attention_mask" not in inputs:  # an unusual tokenizer: PyTorch only
            return pool_tokens(self.backbone(**batch).last_hidden_state, batch.get("attention_mask"), self.pooling)
        return run_frozen(self.pooled, self.onnx_copy, self.runtime, inputs, self.backbone.training)

    def query_features(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """``features`` computed by the int8-quantised ONNX copy (``OnnxCopy(int8=True)``): for
        search queries, where latency counts and an embedding within about 1% in cosine serves.
        As ``features`` where ONNX Runtime does not run (``runtime`` "torch", training, autograd)."""
        inputs = {name: batch[name] for name in TOKEN_INPUTS if name in batch}
        if set(batch) != set(inputs) or "attention_mask" not in inputs:
            return self.features(batch)
        return run_frozen(self.pooled, self.query_copy, self.runtime, inputs, self.backbone.training)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.projection(self.features(batch))

    def save_files(self, folder: Path) -> None:
        """Backbone config and tokenizer, so the architecture rebuilds offline."""
        target = folder / "text_backbone"
        self.backbone.config.save_pretrained(target)
        self.tokenizer.save_pretrained(target)
