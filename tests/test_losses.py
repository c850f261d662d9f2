"""The hinge ranking losses against a naive loop over anchors and negatives."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vse.losses import LossTerm, combined_ranking_loss, hinge_ranking_loss, infonce_loss


def naive_hinge(images, texts, margin, max_violation, ids=None):
    """Loop reference: every anchor against every negative that is not a true match."""
    n = images.shape[0]
    ids = list(range(n)) if ids is None else ids.tolist()
    scores = [[float(images[i] @ texts[j]) for j in range(n)] for i in range(n)]
    total = 0.0
    for i in range(n):
        text_costs = [max(0.0, margin + scores[i][j] - scores[i][i]) for j in range(n) if ids[j] != ids[i]]
        image_costs = [max(0.0, margin + scores[j][i] - scores[i][i]) for j in range(n) if ids[j] != ids[i]]
        if max_violation:
            total += max(text_costs, default=0.0) + max(image_costs, default=0.0)
        else:
            total += sum(text_costs) + sum(image_costs)
    return total


def random_pairs(n=9, d=16, seed=0):
    gen = torch.Generator().manual_seed(seed)
    images = F.normalize(torch.randn(n, d, generator=gen, dtype=torch.float64), dim=1)
    texts = F.normalize(images + 0.8 * torch.randn(n, d, generator=gen, dtype=torch.float64), dim=1)
    return images, texts


@pytest.mark.parametrize("max_violation", [False, True])
@pytest.mark.parametrize("margin", [0.0, 0.2, 0.5])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_naive_reference(max_violation, margin, seed):
    images, texts = random_pairs(seed=seed)
    got = hinge_ranking_loss(images, texts, margin=margin, max_violation=max_violation)
    assert got.item() == pytest.approx(naive_hinge(images, texts, margin, max_violation), rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("max_violation", [False, True])
def test_repeated_images_are_not_negatives(max_violation):
    images, texts = random_pairs(n=8, seed=3)
    ids = torch.tensor([0, 0, 1, 2, 2, 2, 3, 4])
    images = images[ids]  # five captions' worth of layout: the same image several times
    got = hinge_ranking_loss(images, texts, max_violation=max_violation, image_ids=ids)
    assert got.item() == pytest.approx(naive_hinge(images, texts, 0.2, max_violation, ids), rel=1e-9)
    # Without ids, the duplicate image's own caption is punished as a negative
    # (always visible in the sum; in the max only when it is the hardest one).
    unmasked = hinge_ranking_loss(images, texts, max_violation=max_violation)
    assert unmasked.item() >= got.item()
    if not max_violation:
        assert unmasked.item() > got.item()


def test_perfect_separation_gives_zero_and_collapse_gives_margin():
    eye = torch.eye(4, dtype=torch.float64)
    assert hinge_ranking_loss(eye, eye, margin=0.2).item() == 0.0
    same = F.normalize(torch.ones(4, 3, dtype=torch.float64), dim=1)
    # Every one of the 4 anchors x 3 negatives x 2 directions violates by exactly the margin.
    assert hinge_ranking_loss(same, same, margin=0.2).item() == pytest.approx(4 * 3 * 2 * 0.2)
    assert hinge_ranking_loss(same, same, margin=0.2, max_violation=True).item() == pytest.approx(4 * 2 * 0.2)


def test_mean_reduction_and_gradients():
    images, texts = random_pairs(n=6, seed=5)
    images.requires_grad_(True)
    total = hinge_ranking_loss(images, texts, reduction="sum")
    mean = hinge_ranking_loss(images, texts, reduction="mean")
    assert mean.item() == pytest.approx(total.item() / 6)
    total.backward()
    assert images.grad is not None and images.grad.abs().sum() > 0


def test_combined_loss_is_weighted_sum_and_skips_empty_terms():
    images, texts = random_pairs(n=6, seed=7)
    tag_images, tags = random_pairs(n=5, seed=8)
    empty = torch.empty(0, images.shape[1], dtype=images.dtype)
    got = combined_ranking_loss(
        [LossTerm(images, texts), LossTerm(tag_images, tags, weight=0.5), LossTerm(empty, empty, weight=3.0)],
        max_violation=True,
    )
    want = naive_hinge(images, texts, 0.2, True) + 0.5 * naive_hinge(tag_images, tags, 0.2, True)
    assert got.item() == pytest.approx(want, rel=1e-9)


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="expected two"):
        hinge_ranking_loss(torch.zeros(3, 4), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="image_ids"):
        hinge_ranking_loss(torch.zeros(3, 4), torch.zeros(3, 4), image_ids=torch.zeros(2))
    with pytest.raises(ValueError, match="at least one term"):
        combined_ranking_loss([])


def naive_infonce(images, texts, scale, ids=None, weights=None):
    """Loop reference: per pair, the mean of both directions' cross-entropies over non-positive rows."""
    import math

    n = images.shape[0]
    ids = list(range(n)) if ids is None else ids.tolist()
    weights = [1.0] * n if weights is None else weights.tolist()
    s = [[scale * float(images[i] @ texts[j]) for j in range(n)] for i in range(n)]
    total = 0.0
    for i in range(n):
        rows = [j for j in range(n) if j == i or ids[j] != ids[i]]
        image_side = -s[i][i] + math.log(sum(math.exp(s[i][j]) for j in rows))
        text_side = -s[i][i] + math.log(sum(math.exp(s[j][i]) for j in rows))
        total += weights[i] * 0.5 * (image_side + text_side)
    return total


@pytest.mark.parametrize("seed", [0, 1])
def test_infonce_matches_naive_reference_with_positives_and_weights(seed):
    images, texts = random_pairs(n=8, seed=seed)
    ids = torch.tensor([0, 0, 1, 2, 3, 3, 3, 4])
    weights = torch.tensor([1.0, 0.5, 0.0, 1.0, 0.2, 1.0, 0.7, 0.9], dtype=torch.float64)
    log_scale = torch.tensor(2.5, dtype=torch.float64)
    got = infonce_loss(images, texts, log_scale, image_ids=ids, pair_weights=weights)
    assert got.item() == pytest.approx(naive_infonce(images, texts, float(log_scale.exp()), ids, weights), rel=1e-9)
    plain = infonce_loss(images, texts, log_scale)
    assert plain.item() == pytest.approx(naive_infonce(images, texts, float(log_scale.exp())), rel=1e-9)
    # The scale is capped as CLIP's: beyond 100 it changes nothing.
    assert infonce_loss(images, texts, torch.tensor(8.0)).item() == pytest.approx(
        infonce_loss(images, texts, torch.tensor(9.0)).item()
    )


@pytest.mark.parametrize("max_violation", [False, True])
def test_pair_weights_scale_each_pair_of_the_hinge_loss(max_violation):
    """Weighted hinge = sum over pairs of weight x (that pair's two anchor costs), as a loop computes it."""
    images, texts = random_pairs(n=7, seed=4)
    weights = torch.tensor([1.0, 0.0, 0.5, 0.25, 1.0, 0.8, 0.1], dtype=torch.float64)
    got = hinge_ranking_loss(images, texts, max_violation=max_violation, pair_weights=weights)
    n, margin = 7, 0.2
    s = images @ texts.t()
    want = 0.0
    for i in range(n):
        text_costs = [max(0.0, margin + float(s[i, j] - s[i, i])) for j in range(n) if j != i]
        image_costs = [max(0.0, margin + float(s[j, i] - s[i, i])) for j in range(n) if j != i]
        reduce = max if max_violation else sum
        want += float(weights[i]) * (reduce(text_costs) + reduce(image_costs))
    assert got.item() == pytest.approx(want, rel=1e-9)
    # A zero-weight pair still serves as a negative for the others.
    dropped = hinge_ranking_loss(images[[0, 2, 3, 4, 5, 6]], texts[[0, 2, 3, 4, 5, 6]], max_violation=max_violation,
                                 pair_weights=weights[[0, 2, 3, 4, 5, 6]])  # fmt: skip
    if not max_violation:
        assert got.item() > dropped.item()


def test_combined_loss_kinds():
    images, texts = random_pairs(n=5, seed=9)
    term = LossTerm(images, texts, weight=2.0)
    assert combined_ranking_loss([term], kind="infonce", logit_scale=torch.tensor(1.0)).item() == pytest.approx(
        2.0 * infonce_loss(images, texts, torch.tensor(1.0)).item()
    )
    with pytest.raises(ValueError, match="logit_scale"):
        combined_ranking_loss([term], kind="infonce")
    with pytest.raises(ValueError, match="loss kind"):
        combined_ranking_loss([term], kind="triplet")
