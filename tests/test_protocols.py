"""The published protocols (COCO 1K and 5K, Flickr30K 1K) against naive references.

The oracles here pick "the first five captions of each image" with a plain loop
over the captions in data order and rank by sorting every list explicitly; the
library computes the same with index arithmetic and chunked matrix products.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest

from tests.test_metrics import naive_metrics  # ranks by sorting every list
from training.evaluate import protocol_metrics, protocol_notes
from training.pairs import EvalSet, ImageInputs
from training.sources import SourceError
from vse.metrics import (
    coco_protocols,
    first_captions,
    first_captions_metrics,
    fold_metrics,
    metrics_1k,
    published_protocol_names,
    retrieval_metrics,
)


def naive_first_captions(owners: list[int], per_image: int) -> dict[int, list[int]]:
    """Caption positions of each image, the first ``per_image`` met in data order."""
    kept: dict[int, list[int]] = {}
    for position, owner in enumerate(owners):
        if len(kept.setdefault(owner, [])) < per_image:
            kept[owner].append(position)
    return kept


def naive_protocol(images, texts, owners, image_ids: list[int], per_image: int = 5) -> dict[str, float]:
    """The images ``image_ids`` ranked against the first ``per_image`` captions of each."""
    kept = naive_first_captions(owners, per_image)
    positions = [p for i in image_ids for p in kept[i]]
    local = {image: n for n, image in enumerate(image_ids)}
    return naive_metrics(images[image_ids], texts[positions], [local[owners[p]] for p in positions])


def naive_folds(images, texts, owners, fold_size: int, num_folds: int, per_image: int = 5) -> dict[str, float]:
    per_fold = [
        naive_protocol(images, texts, owners, list(range(f * fold_size, (f + 1) * fold_size)), per_image)
        for f in range(num_folds)
    ]
    return {key: float(np.mean([m[key] for m in per_fold])) for key in per_fold[0]}


def shuffled_split(n_images: int, extra: dict[int, int], dim: int = 8, seed: int = 0, noise: float = 1.0):
    """Five captions per image plus ``extra[i]`` more for image i, in a shuffled order (as owners say)."""
    rng = np.random.default_rng(seed)
    owners = [i for i in range(n_images) for _ in range(5 + extra.get(i, 0))]
    rng.shuffle(owners)
    images = rng.normal(size=(n_images, dim))
    texts = images[owners] + noise * rng.normal(size=(len(owners), dim))
    images /= np.linalg.norm(images, axis=1, keepdims=True)
    texts /= np.linalg.norm(texts, axis=1, keepdims=True)
    return images, texts, [int(o) for o in owners]


def assert_same(got: dict[str, float], want: dict[str, float]) -> None:
    assert set(got) == set(want)
    for key in want:
        assert got[key] == pytest.approx(want[key], abs=1e-9), key


def eval_split(n_images: int, owners: list[int]) -> EvalSet:
    texts = [f"caption {t}" for t in range(len(owners))]
    return EvalSet("test", ImageInputs(), np.arange(n_images), texts, np.asarray(owners, dtype=np.int64))


# ------------------------------------------------------------------ first captions


def test_first_captions_keep_data_order_and_refuse_short_images():
    _, _, owners = shuffled_split(30, {2: 1, 7: 2, 29: 1}, seed=1)
    want = naive_first_captions(owners, 5)
    got = first_captions(np.array(owners), 30, 5).numpy()
    assert got.tolist() == [p for i in range(30) for p in want[i]]
    short = [o for o in owners if o != 4] + [4] * 3
    with pytest.raises(ValueError, match=r"fewer than 5 captions \(image 4 has 3\)"):
        first_captions(np.array(short), 30, 5)


# ------------------------------------------------------------------ protocols against the oracle


@pytest.mark.parametrize("seed", [0, 1])
def test_fold_protocol_matches_naive_oracle_with_extra_captions(seed):
    images, texts, owners = shuffled_split(40, {3: 1, 17: 2, 38: 1}, seed=seed)
    got = fold_metrics(images, texts, 5, fold_size=8, num_folds=5, text_image_index=owners)
    assert_same(got, naive_folds(images, texts, owners, fold_size=8, num_folds=5))


def test_fold_protocol_uses_only_the_first_folds_images():
    images, texts, owners = shuffled_split(45, {44: 3}, seed=3)  # 5 images beyond the folds, one with 8 captions
    got = fold_metrics(images, texts, 5, fold_size=8, num_folds=5, text_image_index=owners)
    assert_same(got, naive_folds(images, texts, owners, fold_size=8, num_folds=5))


def test_all_images_protocol_matches_naive_oracle():
    images, texts, owners = shuffled_split(30, {0: 1, 12: 2}, seed=4)
    assert_same(
        first_captions_metrics(images, texts, 5, text_image_index=owners),
        naive_protocol(images, texts, owners, list(range(30))),
    )
    assert_same(
        first_captions_metrics(images, texts, 3, text_image_index=owners, num_images=20),
        naive_protocol(images, texts, owners, list(range(20)), per_image=3),
    )


def test_grouped_layout_without_index_is_unchanged():
    images, texts, _ = shuffled_split(50, {}, seed=5)
    grouped = np.repeat(images, 5, axis=0) + np.random.default_rng(5).normal(size=(250, 8))
    owners = [j // 5 for j in range(250)]
    assert_same(
        fold_metrics(images, grouped, 5, fold_size=10, num_folds=5),
        naive_folds(images, grouped, owners, fold_size=10, num_folds=5),
    )


def test_published_protocol_names_follow_the_split_size():
    assert published_protocol_names(5000) == ["1k", "5k"]
    assert published_protocol_names(1000) == ["1k"]
    assert published_protocol_names(1014) == published_protocol_names(4999) == published_protocol_names(50) == []


# ------------------------------------------------------------------ real sizes


def coco_sized(extra: dict[int, int], seed: int = 0):
    """5,000 random images, five captions each plus extras, captions grouped by image as a source gives them."""
    rng = np.random.default_rng(seed)
    owners = np.array([i for i in range(5000) for _ in range(5 + extra.get(i, 0))])
    images = rng.normal(size=(5000, 32)).astype(np.float32)
    texts = images[owners] + 1.5 * rng.normal(size=(len(owners), 32)).astype(np.float32)
    images /= np.linalg.norm(images, axis=1, keepdims=True)
    texts /= np.linalg.norm(texts, axis=1, keepdims=True)
    return images, texts, owners


@pytest.mark.slow
def test_coco_1k_and_5k_at_real_sizes_with_a_sixth_caption():
    """5,000 images and 25,001 captions (image 1234 has six): 1K and 5K drop the sixth."""
    images, texts, owners = coco_sized({1234: 1})
    sixth = int(np.nonzero(owners == 1234)[0][-1])
    five = np.delete(np.arange(len(owners)), sixth)  # the first five of every image, by a different route
    results = coco_protocols(images, texts, 5, text_image_index=owners)
    assert set(results) == {"full", "1k", "5k"}
    assert_same(results["5k"], retrieval_metrics(images, texts[five], 5))
    folds = [retrieval_metrics(images[f * 1000 : (f + 1) * 1000], texts[five][f * 5000 : (f + 1) * 5000], 5)
             for f in range(5)]  # fmt: skip
    assert_same(results["1k"], {key: float(np.mean([m[key] for m in folds])) for key in folds[0]})
    assert results["full"] != results["5k"]  # the full set keeps the sixth caption
    assert results["1k"]["rsum"] > results["5k"]["rsum"]  # fewer distractors in a fold


def test_flickr30k_1k_is_all_thousand_images_at_once():
    rng = np.random.default_rng(2)
    images, texts, owners = coco_sized({}, seed=2)
    images, texts, owners = images[:1000], texts[:5000], owners[:5000]
    order = rng.permutation(5000)  # captions in any order: owners say whose they are
    results = coco_protocols(images, texts[order], 5, text_image_index=owners[order])
    assert set(results) == {"full", "1k"}
    assert_same(results["1k"], retrieval_metrics(images, texts, 5))
    assert_same(metrics_1k(images, texts, 5), results["full"])  # exactly five captions: 1K is the full set


# ------------------------------------------------------------------ training.evaluate


def test_evaluate_reports_1k_and_5k_on_coco_split_with_a_sixth_caption():
    images, texts, owners = coco_sized({4321: 1}, seed=3)
    results = protocol_metrics(images, texts, eval_split(5000, owners.tolist()), "auto")
    assert list(results) == ["full", "1k", "5k"]  # the values are checked against oracles above
    assert protocol_notes(list(results), 5000, 25001, 5) == [
        "full: all 5,000 images with all 25,001 captions",
        "1k: COCO 1K, mean over 5 folds of 1,000 images, first 5 captions each",
        "5k: COCO 5K, 5,000 images, first 5 captions each",
    ]


def test_evaluate_refuses_or_skips_a_protocol_the_split_does_not_fit(caplog):
    images, texts, owners = shuffled_split(1000, {}, dim=16, seed=6)
    keep = np.delete(np.arange(len(owners)), owners.index(10))  # image 10 keeps four captions
    short, short_texts = [owners[p] for p in keep], texts[keep]
    data = eval_split(1000, short)
    with caplog.at_level(logging.WARNING, logger="training.evaluate"):
        results = protocol_metrics(images, short_texts, data, "auto")
    assert list(results) == ["full"]
    assert "1k protocol not reported" in caplog.text and "image 10 has 4" in caplog.text
    with pytest.raises(SourceError, match="image 10 has 4"):
        protocol_metrics(images, short_texts, data, "1k")
    assert list(protocol_metrics(images, short_texts, data, "auto", captions_per_image=4)) == ["full", "1k"]
    with pytest.raises(SourceError, match="5k protocol does not fit"):
        protocol_metrics(images, texts, eval_split(1000, owners), "5k")
    assert list(protocol_metrics(images, texts, eval_split(1000, owners), "1k")) == ["1k"]
