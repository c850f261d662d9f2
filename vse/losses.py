"""Bidirectional ranking losses for visual-semantic embeddings.

The hinge ranking loss of VSE++ (Faghri et al., BMVC 2018), used by Mithun et al.
(ACM MM 2018) for both image-sentence and image-tag pairs, and the symmetric
InfoNCE loss with a learned temperature (van den Oord et al. 2018; CLIP, Radford
et al., ICML 2021).  For a batch of matching pairs (image ``i``, text ``i``) with
similarity matrix ``S``, the hinge loss is:

    image anchor:  [margin + S[i, j] - S[i, i]]_+   over negative texts j
    text anchor:   [margin + S[j, i] - S[i, i]]_+   over negative images j

VSE0 sums the violations over all negatives; VSE++ (``max_violation=True``) keeps
only the hardest negative of each anchor.  When the same image occurs more than
once in a batch (several captions of one image, or a caption and a tag list of
one image), pairs that share an image id are positives of each other and never
count as negatives.  InfoNCE is the cross-entropy of picking the matching text
among the batch for each image, and the matching image for each text, over
``scale * S``; other positives are left out of the softmax.

Optional per-pair weights (``pair_weights``, in [0, 1]) scale each pair's own
loss in both directions, so a web tag that is probably wrong teaches less while
still serving as a negative for the other pairs (the noise-aware web term,
``training.method``).

All functions are pure: they take tensors and return a scalar tensor.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

DEFAULT_MARGIN = 0.2
LOSS_KINDS = ("hinge", "infonce")
MAX_LOGIT_SCALE = 100.0  # CLIP's cap on the learned inverse temperature


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
    pair_weights: torch.Tensor | None = None,
    reduction: str = "sum",
) -> torch.Tensor:
    """Bidirectional hinge ranking loss over a batch of matching pairs.

    Args:
        image_emb: (B, D) image embeddings; row i matches ``text_emb`` row i.
        text_emb: (B, D) text (sentence or tag-list) embeddings.
        margin: the hinge margin alpha.
        max_violation: hardest negative only (VSE++) instead of the sum (VSE0).
        image_ids: optional (B,) integer ids; rows with equal ids are positives.
        pair_weights: optional (B,) weights of the pairs' own losses.
        reduction: "sum" over anchors (as VSE++) or "mean".

    Returns:
        A scalar tensor.
    """
    _check_pairs(image_emb, text_emb)
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
    return _reduce(per_anchor, pair_weights, reduction)


def infonce_loss(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    logit_scale: torch.Tensor | float,
    *,
    image_ids: torch.Tensor | None = None,
    pair_weights: torch.Tensor | None = None,
    reduction: str = "sum",
) -> torch.Tensor:
    """Symmetric InfoNCE over a batch of matching pairs.

    Args:
        image_emb, text_emb: (B, D) normalised embeddings; row i matches row i.
        logit_scale: the log of the inverse temperature (a learned scalar);
            the scale is capped at ``MAX_LOGIT_SCALE``.
        image_ids: optional (B,) ids; other rows of the same image are left out
            of each other's softmax (they are not negatives).
        pair_weights: optional (B,) weights of the pairs' own losses.
        reduction: "sum" over pairs (comparable with the hinge loss) or "mean".

    Returns:
        A scalar tensor: per pair, the mean of the image->text and text->image
        cross-entropies, reduced over pairs.
    """
    _check_pairs(image_emb, text_emb)
    scale = torch.as_tensor(logit_scale, device=image_emb.device).exp().clamp(max=MAX_LOGIT_SCALE)
    logits = scale * (image_emb @ text_emb.t())
    others = positive_mask(image_ids, logits.shape[0], logits.device)
    others.fill_diagonal_(False)
    logits = logits.masked_fill(others, float("-inf"))
    targets = torch.arange(logits.shape[0], device=logits.device)
    per_pair = 0.5 * (
        torch.nn.functional.cross_entropy(logits, targets, reduction="none")
        + torch.nn.functional.cross_entropy(logits.t(), targets, reduction="none")
    )
    return _reduce(per_pair, pair_weights, reduction)


def _check_pairs(image_emb: torch.Tensor, text_emb: torch.Tensor) -> None:
    if image_emb.shape != text_emb.shape or image_emb.ndim != 2:
        raise ValueError(f"expected two (B, D) tensors, got {tuple(image_emb.shape)} and {tuple(text_emb.shape)}")


def _reduce(per_pair: torch.Tensor, pair_weights: torch.Tensor | None, reduction: str) -> torch.Tensor:
    if pair_weights is not None:
        if pair_weights.shape != per_pair.shape:
            raise ValueError(f"pair_weights must have shape {tuple(per_pair.shape)}, got {tuple(pair_weights.shape)}")
        per_pair = per_pair * pair_weights.to(per_pair)
    if reduction == "sum":
        return per_pair.sum()
    if reduction == "mean":
        return per_pair.mean()
    raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")


@dataclass(frozen=True)
class LossTerm:
    """One weighted ranking term: matching image and text embeddings."""

    image_emb: torch.Tensor  # (B, D)
    text_emb: torch.Tensor  # (B, D)
    weight: float = 1.0
    image_ids: torch.Tensor | None = None  # (B,), equal ids are positives
    pair_weights: torch.Tensor | None = None  # (B,), each pair's own weight


def combined_ranking_loss(
    terms: Sequence[LossTerm],
    *,
    kind: str = "hinge",
    margin: float = DEFAULT_MARGIN,
    max_violation: bool = False,
    logit_scale: torch.Tensor | float | None = None,
    reduction: str = "sum",
) -> torch.Tensor:
    """Weighted sum of ranking losses, e.g. image-sentence + lambda * image-tag.

    ``kind`` is "hinge" (``margin``, ``max_violation``) or "infonce" (``logit_scale``).
    Terms with an empty batch contribute nothing, so a batch without tags is fine.
    """
    if not terms:
        raise ValueError("combined_ranking_loss needs at least one term")
    if kind not in LOSS_KINDS:
        raise ValueError(f"loss kind must be one of {LOSS_KINDS}, got {kind!r}")
    if kind == "infonce" and logit_scale is None:
        raise ValueError("the infonce loss needs a logit_scale")
    total = None
    for term in terms:
        if term.image_emb.shape[0] == 0 or term.weight == 0:
            continue
        common = {"image_ids": term.image_ids, "pair_weights": term.pair_weights, "reduction": reduction}
        if kind == "hinge":
            value = hinge_ranking_loss(
                term.image_emb, term.text_emb, margin=margin, max_violation=max_violation, **common
            )
        else:
            value = infonce_loss(term.image_emb, term.text_emb, logit_scale, **common)
        value = term.weight * value
        total = value if total is None else total + value
    if total is None:
        return terms[0].image_emb.new_zeros(())
    return total
