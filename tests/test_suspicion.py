"""Per-tag suspicion: evidence against a naive loop, calibration on synthetic data with known noise."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import vse.suspicion
from vse.suspicion import (
    SuspicionTable,
    TagPairs,
    TagSuspicion,
    fit_calibration,
    null_tags,
    review_priority,
    segment_sums,
    tag_evidence,
    tag_suspicion,
)


def naive_evidence(image_emb, tag_emb, tag_lists_rows, image, scored_tag, own_tag):
    """Loop reference for one pair: agreement, coherence with the other tags, alone."""
    agreement = float(image_emb[image] @ tag_emb[scored_tag])
    others = [t for t in tag_lists_rows[image] if t != own_tag]
    if not others:
        return [agreement, 0.0, 1.0]
    mean = F.normalize(torch.stack([tag_emb[t] for t in others]).sum(0), dim=0)
    return [agreement, float(tag_emb[scored_tag] @ mean), 0.0]


def test_evidence_matches_a_naive_loop():
    gen = torch.Generator().manual_seed(0)
    images = F.normalize(torch.randn(5, 8, generator=gen), dim=1)
    tags = F.normalize(torch.randn(7, 8, generator=gen), dim=1)
    rows = [[0, 1, 2], [3], [4, 5], [6, 0, 1, 3], [2]]
    pairs = TagPairs(np.array([i for i, r in enumerate(rows) for _ in r]), np.array([t for r in rows for t in r]))
    got = tag_evidence(images, tags, pairs)
    want = [naive_evidence(images, tags, rows, i, t, t) for i, t in zip(pairs.image, pairs.tag, strict=True)]
    np.testing.assert_allclose(got, want, atol=1e-6)
    candidate = (pairs.tag + 3) % 7
    got = tag_evidence(images, tags, pairs, candidate)
    want = [
        naive_evidence(images, tags, rows, i, c, t) for i, t, c in zip(pairs.image, pairs.tag, candidate, strict=True)
    ]
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_pairs_from_lists_and_null_tags_avoid_the_image_own_tags():
    pairs, vocabulary = TagPairs.from_lists([["cat", "pet", "cat"], ["car"], ["pet", "dog"], []])
    assert vocabulary == ["cat", "pet", "car", "dog"]
    assert pairs.image.tolist() == [0, 0, 1, 2, 2] and pairs.tag.tolist() == [0, 1, 2, 1, 3]
    replacement = null_tags(pairs, seed=1)
    own = {(i, t) for i, t in zip(pairs.image.tolist(), pairs.tag.tolist(), strict=True)}
    assert all((i, r) not in own for i, r in zip(pairs.image.tolist(), replacement.tolist(), strict=True))
    assert set(replacement.tolist()) <= set(pairs.tag.tolist())  # drawn from the tag pool


def synthetic_web(noise: float, seed: int = 0, images: int = 600, concepts: int = 60, dim: int = 32):
    """Images of latent concepts with 3-4 tags near their concept; ``noise`` of the tags replaced at random."""
    rng = np.random.default_rng(seed)
    concept_emb = F.normalize(torch.from_numpy(rng.normal(size=(concepts, dim))).float(), dim=1)
    vocabulary = concepts * 4  # four tags per concept
    tag_emb = F.normalize(
        concept_emb.repeat_interleave(4, 0)
        + 1.0 * torch.from_numpy(rng.normal(size=(vocabulary, dim))).float() / dim**0.5,
        dim=1,
    )
    owner = rng.integers(concepts, size=images)
    image_emb = F.normalize(
        concept_emb[owner] + 1.6 * torch.from_numpy(rng.normal(size=(images, dim))).float() / dim**0.5, dim=1
    )
    image_rows, tag_rows, wrong = [], [], []
    for i, c in enumerate(owner):
        own = rng.choice(4, size=rng.integers(3, 5), replace=False) + 4 * c
        for t in own:
            flip = rng.random() < noise
            if flip:
                t = rng.integers(vocabulary)
                while t // 4 == c:
                    t = rng.integers(vocabulary)
            image_rows.append(i)
            tag_rows.append(int(t))
            wrong.append(flip)
    return image_emb, tag_emb, TagPairs(np.array(image_rows), np.array(tag_rows)), np.array(wrong)


def auc(scores, labels):
    order = np.argsort(scores)
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    positives = labels.sum()
    return (ranks[labels].sum() - positives * (positives + 1) / 2) / (positives * (len(labels) - positives))


@pytest.mark.parametrize("noise", [0.3, 0.5])
def test_calibrated_on_known_noise(noise):
    image_emb, tag_emb, pairs, wrong = synthetic_web(noise)
    probability, calibration = tag_suspicion(image_emb, tag_emb, pairs)
    assert auc(probability, wrong) > 0.9
    assert calibration.pi0 == pytest.approx(wrong.mean(), abs=0.07)
    assert probability.mean() == pytest.approx(wrong.mean(), abs=0.07)
    # Reads as a probability: among tags given about p, about p are wrong.
    for low, high in [(0.0, 0.2), (0.8, 1.01)]:
        chosen = (probability >= low) & (probability < high)
        assert chosen.sum() > 50
        assert wrong[chosen].mean() == pytest.approx(probability[chosen].mean(), abs=0.1)


def test_clean_tags_are_not_suspected():
    image_emb, tag_emb, pairs, wrong = synthetic_web(0.0, seed=3)
    assert not wrong.any()
    probability, calibration = tag_suspicion(image_emb, tag_emb, pairs)
    assert calibration.pi0 < 0.05 and probability.mean() < 0.05


def test_calibration_refuses_mismatched_evidence():
    with pytest.raises(ValueError, match="same"):
        fit_calibration(np.zeros((4, 3)), np.zeros((3, 3)))


def test_review_priority_weighs_expected_wrong_tags_by_list_length():
    assert review_priority(np.array([0.5, 0.5, 0.5, 0.5])) == pytest.approx(1.0)  # 2 expected wrong / sqrt(4)
    assert review_priority(np.array([0.9])) > review_priority(np.array([0.4, 0.4, 0.4, 0.4]))  # 0.9 > 0.8
    assert review_priority(np.array([0.4, 0.4, 0.4, 0.4])) > review_priority(np.array([0.7]))  # 0.8 > 0.7
    assert np.isnan(review_priority(np.array([])))


def naive_null_tags(pairs: TagPairs, seed: int = 0, tries: int = 32) -> np.ndarray:
    """The loop ``null_tags`` replaced: a set of the pairs, every pair checked in turn."""
    rng = np.random.default_rng(seed)
    own = {(int(i), int(t)) for i, t in zip(pairs.image, pairs.tag, strict=True)}
    replacement = pairs.tag[rng.integers(len(pairs), size=len(pairs))]
    for k in range(len(pairs)):
        image = int(pairs.image[k])
        for _ in range(tries):
            if (image, int(replacement[k])) not in own:
                break
            replacement[k] = pairs.tag[rng.integers(len(pairs))]
    return replacement


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_null_tags_draw_as_the_naive_loop(seed):
    _, _, pairs, _ = synthetic_web(0.2, seed=seed, images=300, concepts=4)  # few tags: many draws hit the image's own
    np.testing.assert_array_equal(null_tags(pairs, seed=seed), naive_null_tags(pairs, seed=seed))
    np.testing.assert_array_equal(null_tags(pairs, seed=seed, tries=1), naive_null_tags(pairs, seed=seed, tries=1))


def test_evidence_and_suspicion_do_not_depend_on_the_chunk_size(monkeypatch):
    image_emb, tag_emb, pairs, _ = synthetic_web(0.3, seed=4)
    shuffled = np.random.default_rng(0).permutation(len(pairs))  # pairs need not come image by image
    pairs = TagPairs(pairs.image[shuffled], pairs.tag[shuffled])
    whole = tag_evidence(image_emb, tag_emb, pairs)
    for chunk in (1, 7, 100):
        np.testing.assert_allclose(tag_evidence(image_emb, tag_emb, pairs, chunk=chunk), whole, atol=1e-6)
    probability, calibration = tag_suspicion(image_emb, tag_emb, pairs)
    monkeypatch.setattr(vse.suspicion, "FIT_CHUNK", 97)
    monkeypatch.setattr(vse.suspicion, "EVIDENCE_CHUNK", 50)
    chunked, chunked_calibration = tag_suspicion(image_emb, tag_emb, pairs)
    np.testing.assert_allclose(chunked_calibration.weights, calibration.weights, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(chunked, probability, rtol=1e-7, atol=1e-9)


def test_segment_sums_and_priorities_match_the_per_image_ones():
    rng = np.random.default_rng(0)
    lengths = rng.integers(0, 12, size=200)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    values = rng.random(offsets[-1])
    suspicion = TagSuspicion(values, offsets)
    per_image = [values[a:b] for a, b in zip(offsets[:-1], offsets[1:], strict=True)]
    assert all(np.array_equal(got, want) for got, want in zip(suspicion, per_image, strict=True))
    assert np.array_equal(suspicion[-1], per_image[-1]) and len(suspicion) == 200
    want = np.array([float(sum(v.tolist())) if len(v) else np.nan for v in per_image])
    np.testing.assert_array_equal(segment_sums(values, offsets), want)  # summed in order: equal to the bit
    np.testing.assert_array_equal(suspicion.expected_wrong(), want)
    short = lengths < 8  # NumPy's own sum is in order too below eight values
    np.testing.assert_array_equal(
        suspicion.review_priority()[short], [review_priority(v) for v in np.array(per_image, dtype=object)[short]]
    )
    np.testing.assert_allclose(suspicion.review_priority(), [review_priority(v) for v in per_image], rtol=1e-12)
    with pytest.raises(IndexError):
        suspicion[200]


def test_table_lookup_matches_get():
    import pyarrow as pa

    table = SuspicionTable(["a", "a", "b", "c", "a"], ["cat", "dog", "cat", "cat", "cat"], [0.1, 0.2, 0.3, 0.4, 0.9])
    ids, vocabulary = pa.array(["b", "a", "z"]), ["dog", "cat", "owl"]
    pairs = TagPairs(np.array([0, 0, 1, 1, 1, 2]), np.array([0, 1, 0, 1, 2, 1]))
    want = [table.get(ids[i].as_py(), vocabulary[t]) for i, t in zip(pairs.image, pairs.tag, strict=True)]
    got = table.lookup(ids, vocabulary, pairs)
    assert (
        [None if np.isnan(v) else pytest.approx(v) for v in got]
        == want
        == [None, pytest.approx(0.3), pytest.approx(0.2), pytest.approx(0.9), None, None]
    )
