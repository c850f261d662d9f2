"""Cross-modal retrieval metrics: Recall@K, median and mean rank, rsum.

The protocol of VSE++ (Faghri et al., BMVC 2018) and Mithun et al. (ACM MM 2018):
image-to-text retrieval counts a hit at K when any of the image's captions is
among the K best texts; text-to-image retrieval ranks the images for each caption.
``rsum`` is the sum of R@1, R@5 and R@10 in both directions.

Ties are broken against the true match: a negative scoring exactly as high as the
best positive is ranked before it.  A degenerate model that gives every pair the
same score therefore gets the worst rank, not a perfect one.

The published protocols (``metrics_1k``, ``metrics_5k``, ``coco_protocols``)
follow VSE++: COCO 1K is the mean over five folds of 1,000 test images, COCO 5K
all 5,000 test images at once, Flickr30K 1K its 1,000 test images; each image is
represented by its first five captions (``captions_per_image``), so the few
extra captions of COCO (25,010 sentences for 5,000 test images in Karpathy's
split) are left out, and an image with fewer is refused rather than padded.
The ``full`` metrics (``retrieval_metrics``) use every caption.

Similarities are computed chunk by chunk, so 5,000 images x 25,000 captions never
needs the full score matrix in memory.
"""

from __future__ import annotations

import numpy as np
import torch

RECALL_AT = (1, 5, 10)
FOLD_IMAGES = 1000  # one COCO 1K fold; Flickr30K's test split
COCO_FOLDS = 5
COCO_IMAGES = COCO_FOLDS * FOLD_IMAGES  # Karpathy's COCO test split


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


def first_captions(owners: np.ndarray | torch.Tensor, num_images: int, captions_per_image: int) -> torch.Tensor:
    """(N*K,) indices of the first K captions of each image, image by image.

    "First" is the order of ``owners`` (the order of the captions in the data:
    for Karpathy's split files, the order of each image's ``sentences``).

    Raises:
        ValueError: an image has fewer than K captions (it names the first such image).
    """
    owners_np = torch.as_tensor(owners).cpu().numpy().astype(np.int64)
    counts = np.bincount(owners_np, minlength=num_images)
    short = np.nonzero(counts < captions_per_image)[0]
    if len(short):
        raise ValueError(
            f"{len(short)} image(s) have fewer than {captions_per_image} captions (image {short[0]} has "
            f"{counts[short[0]]}); the published protocols use the first {captions_per_image} of each image"
        )
    by_image = np.argsort(owners_np, kind="stable")  # caption positions grouped by image, data order kept
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    return torch.from_numpy(by_image[starts[:, None] + np.arange(captions_per_image)].reshape(-1))


def protocol_layout(
    images: torch.Tensor,
    texts: torch.Tensor,
    captions_per_image: int,
    text_image_index: np.ndarray | torch.Tensor | None,
    num_images: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``num_images`` images (all by default) and their first K captions, as (M, D) and (M*K, D).

    Without ``text_image_index`` the texts must already be K per image, image by image.
    """
    num_images = images.shape[0] if num_images is None else num_images
    if text_image_index is None:
        caption_owners(images.shape[0], texts.shape[0], captions_per_image)  # checks the layout
        return images[:num_images], texts[: num_images * captions_per_image]
    owners = torch.as_tensor(text_image_index).long().cpu()
    if owners.shape != (texts.shape[0],) or bool(((owners < 0) | (owners >= images.shape[0])).any()):
        raise ValueError("text_image_index must hold one valid image index per caption")
    kept = owners < num_images
    index = first_captions(owners[kept], num_images, captions_per_image)
    return images[:num_images], texts[torch.nonzero(kept).squeeze(1)[index].to(texts.device)]


def fold_metrics(
    image_emb: np.ndarray | torch.Tensor,
    text_emb: np.ndarray | torch.Tensor,
    captions_per_image: int = 5,
    *,
    fold_size: int = 1000,
    num_folds: int = 5,
    text_image_index: np.ndarray | torch.Tensor | None = None,
) -> dict[str, float]:
    """COCO 1K protocol: metrics averaged over ``num_folds`` folds of ``fold_size`` images.

    The folds are the first ``fold_size * num_folds`` images in order; each image
    is ranked against the captions of its fold only.

    Args:
        image_emb: (N, D), N >= fold_size * num_folds.
        text_emb: (T, D); T = N * K grouped by image, or any T with ``text_image_index``.
        captions_per_image: K; with ``text_image_index`` the first K captions of
            each image are used and an image with fewer is refused (ValueError).
        text_image_index: optional (T,) image index of each caption.
    """
    images, texts = _as_tensor(image_emb), _as_tensor(text_emb)
    if images.shape[0] < fold_size * num_folds:
        raise ValueError(f"{num_folds} folds of {fold_size} images need {fold_size * num_folds}, got {images.shape[0]}")
    images, texts = protocol_layout(images, texts, captions_per_image, text_image_index, fold_size * num_folds)
    per_fold = []
    for fold in range(num_folds):
        img = images[fold * fold_size : (fold + 1) * fold_size]
        txt = texts[fold * fold_size * captions_per_image : (fold + 1) * fold_size * captions_per_image]
        per_fold.append(retrieval_metrics(img, txt, captions_per_image))
    return {key: float(np.mean([m[key] for m in per_fold])) for key in per_fold[0]}


def first_captions_metrics(
    image_emb: np.ndarray | torch.Tensor,
    text_emb: np.ndarray | torch.Tensor,
    captions_per_image: int = 5,
    *,
    text_image_index: np.ndarray | torch.Tensor | None = None,
    num_images: int | None = None,
) -> dict[str, float]:
    """The first ``num_images`` images (default all) ranked against the first K captions of each, at once.

    COCO 5K is this on Karpathy's 5,000 test images; Flickr30K 1K on its 1,000.
    Shapes and ``text_image_index`` as in ``fold_metrics``.
    """
    images, texts = _as_tensor(image_emb), _as_tensor(text_emb)
    if num_images is not None and images.shape[0] < num_images:
        raise ValueError(f"need {num_images} images, got {images.shape[0]}")
    images, texts = protocol_layout(images, texts, captions_per_image, text_image_index, num_images)
    return retrieval_metrics(images, texts, captions_per_image)


def metrics_1k(
    image_emb: np.ndarray | torch.Tensor,
    text_emb: np.ndarray | torch.Tensor,
    captions_per_image: int = 5,
    *,
    text_image_index: np.ndarray | torch.Tensor | None = None,
) -> dict[str, float]:
    """The published 1K protocol: COCO 1K with at least 5,000 images, Flickr30K 1K with 1,000.

    COCO 1K: the mean over five folds of 1,000 images (the first 5,000 images);
    Flickr30K 1K: its 1,000 test images at once (one fold).  First K captions of
    each image in both.
    """
    num_images = torch.as_tensor(image_emb).shape[0]
    folds = COCO_FOLDS if num_images >= COCO_FOLDS * FOLD_IMAGES else 1 if num_images == FOLD_IMAGES else 0
    if not folds:
        raise ValueError(
            f"the 1K protocol needs {FOLD_IMAGES:,} images (Flickr30K test) or at least "
            f"{COCO_FOLDS * FOLD_IMAGES:,} (COCO test), got {num_images:,}"
        )
    return fold_metrics(
        image_emb, text_emb, captions_per_image,
        fold_size=FOLD_IMAGES, num_folds=folds, text_image_index=text_image_index,
    )  # fmt: skip


def metrics_5k(
    image_emb: np.ndarray | torch.Tensor,
    text_emb: np.ndarray | torch.Tensor,
    captions_per_image: int = 5,
    *,
    text_image_index: np.ndarray | torch.Tensor | None = None,
) -> dict[str, float]:
    """COCO 5K: the first 5,000 images against the first K captions of each, at once."""
    return first_captions_metrics(
        image_emb, text_emb, captions_per_image, text_image_index=text_image_index, num_images=COCO_IMAGES
    )


PUBLISHED_PROTOCOLS = {"1k": metrics_1k, "5k": metrics_5k}


def published_protocol_names(num_images: int) -> list[str]:
    """The published protocols a split of ``num_images`` fits: ["1k", "5k"] (COCO), ["1k"] (Flickr30K) or []."""
    if num_images >= COCO_IMAGES:
        return ["1k", "5k"]
    return ["1k"] if num_images == FOLD_IMAGES else []


def coco_protocols(
    image_emb: np.ndarray | torch.Tensor,
    text_emb: np.ndarray | torch.Tensor,
    captions_per_image: int = 5,
    *,
    text_image_index: np.ndarray | torch.Tensor | None = None,
) -> dict[str, dict[str, float]]:
    """The full set and every published protocol the split fits.

    ``{"full": all images with all their captions}``, plus, with at least 5,000
    images, ``"1k"`` (COCO 1K: mean over five folds of 1,000) and ``"5k"`` (COCO
    5K), both on the first 5,000 images; with exactly 1,000 images, ``"1k"``
    (Flickr30K 1K).  The published protocols use the first K captions of each
    image and refuse an image with fewer (ValueError).
    """
    results = {"full": retrieval_metrics(image_emb, text_emb, captions_per_image, text_image_index=text_image_index)}
    for name in published_protocol_names(torch.as_tensor(image_emb).shape[0]):
        results[name] = PUBLISHED_PROTOCOLS[name](
            image_emb, text_emb, captions_per_image, text_image_index=text_image_index
        )
    return results
