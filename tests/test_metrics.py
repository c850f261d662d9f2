"""Retrieval metrics against a naive reference that sorts every list explicitly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vse.metrics import coco_protocols, fold_metrics, retrieval_metrics


def naive_ranks(images: np.ndarray, texts: np.ndarray, owners: list[int]):
    """Sort every ranking with negatives placed before positives on equal scores."""
    i2t, t2i = [], []
    for i in range(len(images)):
        scored = [(-float(images[i] @ texts[j]), owners[j] == i, j) for j in range(len(texts))]
        order = sorted(scored, key=lambda item: (item[0], item[1]))  # ties: negatives first
        i2t.append(min(pos for pos, item in enumerate(order) if item[1]))
    for j in range(len(texts)):
        scored = [(-float(images[i] @ texts[j]), i == owners[j], i) for i in range(len(images))]
        order = sorted(scored, key=lambda item: (item[0], item[1]))
        t2i.append(next(pos for pos, item in enumerate(order) if item[1]))
    return np.array(i2t), np.array(t2i)


def naive_metrics(images, texts, owners):
    out = {}
    for prefix, ranks in zip(("i2t", "t2i"), naive_ranks(images, texts, owners), strict=True):
        for k in (1, 5, 10):
            out[f"{prefix}_R@{k}"] = 100.0 * np.mean(ranks < k)
        out[f"{prefix}_medr"] = np.floor(np.median(ranks)) + 1
        out[f"{prefix}_meanr"] = ranks.mean() + 1
    out["rsum"] = sum(out[f"{p}_R@{k}"] for p in ("i2t", "t2i") for k in (1, 5, 10))
    return out


def noisy_embeddings(n_images, per_image, dim=8, noise=1.0, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.normal(size=(n_images, dim))
    texts = np.repeat(images, per_image, axis=0) + noise * rng.normal(size=(n_images * per_image, dim))
    images /= np.linalg.norm(images, axis=1, keepdims=True)
    texts /= np.linalg.norm(texts, axis=1, keepdims=True)
    return images, texts


def assert_metrics_equal(got, want):
    assert set(got) == set(want)
    for key in want:
        assert got[key] == pytest.approx(want[key], abs=1e-9), key


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("per_image", [1, 5])
def test_matches_naive_reference(seed, per_image):
    images, texts = noisy_embeddings(40, per_image, seed=seed)
    owners = [j // per_image for j in range(len(texts))]
    got = retrieval_metrics(images, texts, captions_per_image=per_image, chunk_size=7)
    assert_metrics_equal(got, naive_metrics(images, texts, owners))


def test_ties_are_broken_against_the_true_match():
    rng = np.random.default_rng(4)
    # Integer-valued embeddings make many exactly equal scores.
    images = rng.integers(-1, 2, size=(30, 3)).astype(np.float64)
    texts = rng.integers(-1, 2, size=(150, 3)).astype(np.float64)
    owners = [j // 5 for j in range(150)]
    assert_metrics_equal(retrieval_metrics(images, texts, 5), naive_metrics(images, texts, owners))


def test_constant_model_gets_worst_rank_not_best():
    images, texts = np.ones((20, 4)), np.ones((100, 4))
    metrics = retrieval_metrics(images, texts, 5)
    assert metrics["rsum"] == 0.0
    assert metrics["t2i_medr"] == 20.0  # all 19 other images tie with the true one and come first
    assert metrics["i2t_medr"] == 96.0  # all 95 other captions come first


def test_perfect_model_and_chance_level():
    eye = np.eye(50)
    perfect = retrieval_metrics(eye, np.repeat(eye, 5, axis=0), 5)
    assert perfect["rsum"] == 600.0 and perfect["i2t_medr"] == 1.0 and perfect["t2i_meanr"] == 1.0
    images, texts = noisy_embeddings(200, 5, noise=1e6, seed=9)  # texts unrelated to images
    chance = retrieval_metrics(images, texts, 5)
    assert chance["t2i_R@10"] < 15.0  # about 10/200 = 5% expected


def test_variable_captions_per_image():
    images, texts = noisy_embeddings(12, 3, seed=5)
    owners = np.array([j // 3 for j in range(36)])
    keep = np.array([j for j in range(36) if j % 3 != 2 or j < 12])  # some images keep 2 captions, some 3
    got = retrieval_metrics(images, texts[keep], text_image_index=owners[keep])
    assert_metrics_equal(got, naive_metrics(images, texts[keep], owners[keep].tolist()))


def test_fold_protocol_is_mean_of_folds_and_full_protocol_uses_all():
    images, texts = noisy_embeddings(50, 5, seed=6)
    folds = fold_metrics(images, texts, 5, fold_size=10, num_folds=5)
    manual = [retrieval_metrics(images[f * 10 : (f + 1) * 10], texts[f * 50 : (f + 1) * 50], 5) for f in range(5)]
    for key in folds:
        assert folds[key] == pytest.approx(np.mean([m[key] for m in manual]))
    both = coco_protocols(images, texts, 5)
    assert set(both) == {"full"}  # 1K protocol needs 5,000 images
    assert_metrics_equal(both["full"], retrieval_metrics(images, texts, 5))


def test_torch_and_numpy_inputs_agree_and_bad_input_is_refused():
    images, texts = noisy_embeddings(10, 5, seed=8)
    assert retrieval_metrics(torch.from_numpy(images), torch.from_numpy(texts)) == retrieval_metrics(images, texts)
    with pytest.raises(ValueError, match="captions"):
        retrieval_metrics(images, texts[:-1], 5)
    with pytest.raises(ValueError, match="dimension"):
        retrieval_metrics(images, texts[:, :3], 5)
    with pytest.raises(ValueError, match="folds"):
        fold_metrics(images, texts, 5)


@pytest.mark.slow
def test_coco_5k_scale_runs_in_chunks():
    """5,000 images x 25,000 captions: the full protocol, five 1K folds and 5K."""
    images, texts = noisy_embeddings(5000, 5, dim=64, noise=0.3, seed=1)
    results = coco_protocols(images.astype(np.float32), texts.astype(np.float32), 5)
    assert set(results) == {"full", "1k", "5k"}
    assert results["5k"] == results["full"]  # five captions per image: COCO 5K is the full set
    assert results["1k"]["rsum"] >= results["full"]["rsum"]  # fewer distractors in 1K folds
