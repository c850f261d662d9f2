"""Bidirectional hinge ranking losses for visual-semantic embeddings.

The loss of VSE++ (Faghri et al., BMVC 2018), used by Mithun et al. (ACM MM 2018)
for both image-sentence and image-tag pairs.  For a batch of matching pairs
(image ``i``, text ``i``) with similarity matrix ``S``:

    image anchor:  [margin + S[i, j] - S[i, i]]_+   over negative texts j
    text anchor:   [margin + S[j, i] - S[i, i]]_+   over negative images j

VSE0 sums the violations over all negatives; VSE++ (``max_violation=True``) keeps
only the hardest negative of each anchor.  When the same image occurs more than
once in a batch (several captions of one image, or a caption and a tag list of
one image), pairs that share an image id are positives of each other and never
count as negatives.

All functions are pure: they take tensors and return a scalar tensor.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

DEFAULT_MARGIN = 0.2


def positive_mask(image_ids: torch.Tensor | None, batch_size: int, device: torch.device) -> torch.Tensor:
    """(B, B) boolean mask, True where row pair and column pair share an image."""
    if image_ids is None:
        return torch.eye(batch_size, dtype=torch.bool, device=device)
    ids = image_ids.to(device)
    if ids.shape != (batch_size,):
        raise ValueError(f"image_ids must have shape ({batch_size},), got {tuple(ids.shape)}")
    return ids[:, None] == ids[None, :]


def hinge_ranking_loss(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    *,
    margin: float = DEFAULT_MARGIN,
    max_violation: bool = False,
    image_ids: torch.Tensor | None = None,
    reduction: str = "sum",
) -> torch.Tensor:
    """Bidirectional hinge ranking loss over a batch of matching pairs.

    Args:
        image_emb: (B, D) image embeddings; row i matches ``text_emb`` row i.
        text_emb: (B, D) text (sentence or tag-list) embeddings.
        margin: the hinge margin alpha.
        max_violation: hardest negative only (VSE++) instead of the sum (VSE0).
        image_ids: optional (B,) integer ids; rows with equal ids are positives.
        reduction: "sum" over anchors (as VSE++) or "mean".

    Returns:
        A scalar tensor.
    """
    if image_emb.shape != text_emb.shape or image_emb.ndim != 2:
        raise ValueError(f"expected two (B, D) tensors, got {tuple(image_emb.shape)} and {tuple(text_emb.shape)}")
    scores = image_emb @ text_emb.t()  # (B, B): scores[i, j] = s(image i, text j)
    diagonal = scores.diag()
    positives = positive_mask(image_ids, scores.shape[0], scores.device)
    # Image i as anchor, text j as negative: compare with image i's own text.
    cost_text = (margin + scores - diagonal[:, None]).clamp(min=0).masked_fill(positives, 0)
    # Text j as anchor, image i as negative: compare with text j's own image.
    cost_image = (margin + scores - diagonal[None, :]).clamp(min=0).masked_fill(positives, 0)
    if max_violation:
        per_anchor = cost_text.max(dim=1).values + cost_image.max(dim=0).values
    else:
        per_anchor = cost_text.sum(dim=1) + cost_image.sum(dim=0)
    if reduction == "sum":
        return per_anchor.sum()
    if reduction == "mean":
        return per_anchor.mean()
    raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")


@dataclass(frozen=True)
class LossTerm:
    """One weighted ranking term: matching image and text embeddings."""

    image_emb: torch.Tensor  # (B, D)
    text_emb: torch.Tensor  # (B, D)
    weight: float = 1.0
    image_ids: torch.Tensor | None = None  # (B,), equal ids are positives


def combined_ranking_loss(
    terms: Sequence[LossTerm],
    *,
    margin: float = DEFAULT_MARGIN,
    max_violation: bool = False,
    reduction: str = "sum",
) -> torch.Tensor:
    """Weighted sum of hinge ranking losses, e.g. image-sentence + lambda * image-tag.

    Terms with an empty batch contribute nothing, so a batch without tags is fine.
    """
    if not terms:
        raise ValueError("combined_ranking_loss needs at least one term")
    total = None
    for term in terms:
        if term.image_emb.shape[0] == 0 or term.weight == 0:
            continue
        value = term.weight * hinge_ranking_loss(
            term.image_emb,
            term.text_emb,
            margin=margin,
            max_violation=max_violation,
            image_ids=term.image_ids,
            reduction=reduction,
        )
        total = value if total is None else total + value
    if total is None:
        return terms[0].image_emb.new_zeros(())
    return total
