"""Cross-modal retrieval metrics: Recall@K, median and mean rank, rsum.

The protocol of VSE++ (Faghri et al., BMVC 2018) and Mithun et al. (ACM MM 2018):
image-to-text retrieval counts a hit at K when any of the image's captions is
among the K best texts; text-to-image retrieval ranks the images for each caption.
``rsum`` is the sum of R@1, R@5 and R@10 in both directions.

Ties are broken against the true match: a negative scoring exactly as high as the
best positive is ranked before it.  A degenerate model that gives every pair the
same score therefore gets the worst rank, not a perfect one.

Similarities are computed chunk by chunk, so 5,000 images x 25,000 captions never
needs the full score matrix in memory.
"""

from __future__ import annotations

import numpy as np
import torch

RECALL_AT = (1, 5, 10)


def caption_owners(num_images: int, num_texts: int, captions_per_image: int) -> torch.Tensor:
    """(T,) image index of each caption when captions are grouped by image."""
    if num_texts != num_images * captions_per_image:
        raise ValueError(
            f"{num_texts} captions do not make {captions_per_image} per image for {num_images} images; "
            "pass text_image_index for a variable number of captions per image"
        )
    return torch.arange(num_images).repeat_interleave(captions_per_image)


def _as_tensor(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    tensor = torch.as_tensor(x)
    if tensor.ndim != 2:
        raise ValueError(f"embeddings must be 2-d (N, D), got shape {tuple(tensor.shape)}")
    return tensor.float()


def image_to_text_ranks(
    image_emb: torch.Tensor, text_emb: torch.Tensor, owners: torch.Tensor, chunk_size: int = 1024
) -> torch.Tensor:
    """(N,) zero-based rank of each image's best-scoring true caption among all texts.

    Args:
        image_emb: (N, D) image embeddings.
        text_emb: (T, D) text embeddings.
        owners: (T,) image index of each text.
    """
    owners = owners.to(text_emb.device)
    ranks = []
    for start in range(0, image_emb.shape[0], chunk_size):
        rows = torch.arange(start, min(start + chunk_size, image_emb.shape[0]), device=text_emb.device)
        scores = image_emb[rows] @ text_emb.t()  # (chunk, T)
        is_true = owners[None, :] == rows[:, None]
        if not bool(is_true.any(dim=1).all()):
            raise ValueError("every image needs at least one caption")
        best_true = scores.masked_fill(~is_true, float("-inf")).max(dim=1).values
        ranks.append(((scores >= best_true[:, None]) & ~is_true).sum(dim=1))
    return torch.cat(ranks).cpu()


def text_to_image_ranks(
    image_emb: torch.Tensor, text_emb: torch.Tensor, owners: torch.Tensor, chunk_size: int = 4096
) -> torch.Tensor:
    """(T,) zero-based rank of each caption's image among all images."""
    owners = owners.to(image_emb.device)
    ranks = []
    for start in range(0, text_emb.shape[0], chunk_size):
        stop = min(start + chunk_size, text_emb.shape[0])
        scores = text_emb[start:stop] @ image_emb.t()  # (chunk, N)
        own = owners[start:stop]
        true_score = scores.gather(1, own[:, None])
        beats = scores >= true_score
        beats[torch.arange(stop - start), own] = False
        ranks.append(beats.sum(dim=1))
    return torch.cat(ranks).cpu()


def summarize_ranks(ranks: torch.Tensor, prefix: str) -> dict[str, float]:
    """Recall@K in percent, median and mean rank (one-based) of zero-based ranks."""
    ranks_np = ranks.numpy().astype(np.float64)
    out = {f"{prefix}_R@{k}": float(100.0 * np.mean(ranks_np < k)) for k in RECALL_AT}
    out[f"{prefix}_medr"] = float(np.floor(np.median(ranks_np)) + 1)
    out[f"{prefix}_meanr"] = float(np.mean(ranks_np) + 1)
    return out


def retrieval_metrics(
    image_emb: np.ndarray | torch.Tensor,
    text_emb: np.ndarray | torch.Tensor,
    captions_per_image: int = 5,
    *,
    text_image_index: np.ndarray | torch.Tensor | None = None,
    chunk_size: int = 1024,
) -> dict[str, float]:
    """Recall@{1,5,10}, medr, meanr in both directions, and rsum.

    Args:
        image_emb: (N, D) embeddings of N distinct images.
        text_emb: (T, D) caption embeddings; by default T = N * captions_per_image
            and captions i*K ... i*K+K-1 belong to image i (VSE++'s (5N, D) layout).
        captions_per_image: K.
        text_image_index: optional (T,) image index of each caption, for a
            variable number of captions per image (overrides captions_per_image).

    Returns:
        {"i2t_R@1", "i2t_R@5", "i2t_R@10", "i2t_medr", "i2t_meanr", the same with
        "t2i_", "rsum"}; recalls are percentages.
    """
    images, texts = _as_tensor(image_emb), _as_tensor(text_emb)
    if images.shape[1] != texts.shape[1]:
        raise ValueError(f"dimension mismatch: images {images.shape[1]}, texts {texts.shape[1]}")
    if text_image_index is None:
        owners = caption_owners(images.shape[0], texts.shape[0], captions_per_image)
    else:
        owners = torch.as_tensor(text_image_index).long().cpu()
        if owners.shape != (texts.shape[0],) or owners.min() < 0 or owners.max() >= images.shape[0]:
            raise ValueError("text_image_index must hold one valid image index per caption")
    owners = owners.to(texts.device)
    metrics = summarize_ranks(image_to_text_ranks(images, texts, owners, chunk_size), "i2t")
    metrics.update(summarize_ranks(text_to_image_ranks(images, texts, owners, chunk_size), "t2i"))
    metrics["rsum"] = sum(metrics[f"{d}_R@{k}"] for d in ("i2t", "t2i") for k in RECALL_AT)
    return metrics


def fold_metrics(
    image_emb: np.ndarray | torch.Tensor,
    text_emb: np.ndarray | torch.Tensor,
    captions_per_image: int = 5,
    *,
    fold_size: int = 1000,
    num_folds: int = 5,
) -> dict[str, float]:
    """COCO 1K protocol: metrics averaged over ``num_folds`` folds of ``fold_size`` images."""
    images, texts = _as_tensor(image_emb), _as_tensor(text_emb)
    if images.shape[0] < fold_size * num_folds:
        raise ValueError(f"{num_folds} folds of {fold_size} images need {fold_size * num_folds}, got {images.shape[0]}")
    per_fold = []
    for fold in range(num_folds):
        img = images[fold * fold_size : (fold + 1) * fold_size]
        txt = texts[fold * fold_size * captions_per_image : (fold + 1) * fold_size * captions_per_image]
        per_fold.append(retrieval_metrics(img, txt, captions_per_image))
    return {key: float(np.mean([m[key] for m in per_fold])) for key in per_fold[0]}


def coco_protocols(
    image_emb: np.ndarray | torch.Tensor, text_emb: np.ndarray | torch.Tensor, captions_per_image: int = 5
) -> dict[str, dict[str, float]]:
    """Both COCO protocols: ``{"1k": five-fold mean, "full": all images at once}``.

    The 1K protocol is reported only when there are at least 5,000 images.
    """
    results = {"full": retrieval_metrics(image_emb, text_emb, captions_per_image)}
    if torch.as_tensor(image_emb).shape[0] >= 5000:
        results["1k"] = fold_metrics(image_emb, text_emb, captions_per_image)
    return results
