"""Curriculum for stage two: easy web pairs first.

Mithun et al. (ACM MM 2018) adapt the stage-one model to noisy web tags; here the
web pairs are ranked by how much the stage-one model already agrees with them
(image-tag cosine similarity, high = easy, likely a correct tag list), and epoch
``e`` trains on the easiest ``fractions[e]`` of them (the last value repeats).
All functions are pure.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch


def pair_agreement(image_emb: torch.Tensor, text_emb: torch.Tensor) -> np.ndarray:
    """(P,) cosine similarity of each matching pair of (P, D) normalised embeddings."""
    if image_emb.shape != text_emb.shape:
        raise ValueError(f"shape mismatch {tuple(image_emb.shape)} vs {tuple(text_emb.shape)}")
    return (image_emb * text_emb).sum(dim=1).cpu().numpy()


def easy_to_hard(scores: np.ndarray) -> np.ndarray:
    """Pair indices sorted by decreasing agreement (ties keep their original order)."""
    return np.argsort(-np.asarray(scores), kind="stable")


def fraction_at(epoch: int, fractions: Sequence[float]) -> float:
    """Share of the ranked pairs used in ``epoch`` (0-based); the last value repeats."""
    if not fractions:
        return 1.0
    value = float(fractions[min(epoch, len(fractions) - 1)])
    if not 0.0 < value <= 1.0:
        raise ValueError(f"curriculum fractions must be in (0, 1], got {value}")
    return value


def curriculum_subset(order: np.ndarray, epoch: int, fractions: Sequence[float]) -> np.ndarray:
    """The easiest pairs for ``epoch`` (at least one)."""
    count = max(1, math.ceil(fraction_at(epoch, fractions) * len(order)))
    return order[:count]
