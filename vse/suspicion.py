"""Per-tag suspicion: the probability that a web tag is wrong for its image.

One function, ``tag_suspicion``, serves both the training's noise-aware web term
(``training.suspicion``) and the app's review queue.  It reads three pieces of
evidence for each (image, tag) pair from a joint embedding:

* **agreement**: the cosine of the image and the tag;
* **coherence**: the cosine of the tag and the mean of the image's *other* tags
  (web tags of one image describe one picture; a wrong tag rarely fits the rest);
* **alone**: 1 when the image has no other tag (coherence then says nothing).

and turns them into a calibrated probability with the two-groups model of the
local false discovery rate (Efron, *Large-Scale Inference*, 2010) and an
empirical null.  A wrong web tag looks like a tag drawn at random from the tag
pool, so the evidence of wrong tags is simulated by giving every image a random
tag in place of each of its own (occurrence-weighted, never one it has).  A
logistic discriminator between observed and simulated evidence estimates the
density ratio ``f0(x) / f(x)`` (noise-contrastive estimation, Gutmann and
Hyvärinen, AISTATS 2010); the share of wrong tags ``pi0`` is estimated from the
null p-values as Storey (JRSS-B 2002); and

    P(wrong | x) = min(1, pi0 * f0(x) / f(x)).

On data with no wrong tags ``pi0`` comes out near zero and every tag keeps its
weight; on data with known injected noise the probabilities match the share of
wrong tags (docs/FEEDBACK.md, tests/test_suspicion.py).

The evidence must come from a model that did not train on the pairs it scores:
a model fits its own training pairs, wrong ones included, and in-sample
agreement overstates them.  ``training.suspicion`` therefore scores each web
image with models trained without it (cross-fitting, as confident learning does,
Northcutt et al., JAIR 2021).  Everything here is pure NumPy/PyTorch.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from vse.errors import ModelLoadError

EVIDENCE = ("agreement", "coherence", "alone")
STOREY_LAMBDA = 0.8
EVIDENCE_CHUNK = 1 << 15  # pairs scored at once: a few (chunk, D) float32 matrices
FIT_CHUNK = 1 << 18  # rows of the discriminator's design matrix held at once


@dataclass(frozen=True)
class TagPairs:
    """(image, tag) occurrences: ``image[k]`` is a row of the image embeddings, ``tag[k]`` a row of the tag ones."""

    image: np.ndarray  # (P,) int
    tag: np.ndarray  # (P,) int

    def __post_init__(self) -> None:
        if self.image.shape != self.tag.shape or self.image.ndim != 1:
            raise ValueError("image and tag must be 1-d arrays of the same length")

    def __len__(self) -> int:
        return int(self.image.shape[0])

    @classmethod
    def from_lists(cls, tag_lists: list[list[str]]) -> tuple[TagPairs, list[str]]:
        """Pairs of every image's distinct tags, and the tag vocabulary they index."""
        vocabulary: dict[str, int] = {}
        images, tags = [], []
        for row, tag_list in enumerate(tag_lists):
            for tag in dict.fromkeys(tag_list):
                images.append(row)
                tags.append(vocabulary.setdefault(tag, len(vocabulary)))
        return cls(np.asarray(images, dtype=np.int64), np.asarray(tags, dtype=np.int64)), list(vocabulary)


@dataclass(frozen=True)
class FlatTags:
    """Every image's tags as flat arrays: image ``i``'s are ``tag[offsets[i] : offsets[i + 1]]``.

    Tags are rows of ``vocabulary`` (normalised tags, ``vse.text.normalize_tag``, in order
    of first occurrence); -1 marks a tag that normalises to nothing.
    """

    offsets: np.ndarray  # (N + 1,) int64
    tag: np.ndarray  # (T,) int64
    vocabulary: list[str]

    @classmethod
    def from_arrow(cls, column) -> FlatTags:
        """From an Arrow ``list<string>`` column (a null list counts as no tags); each distinct tag normalised once."""
        import pyarrow as pa
        import pyarrow.compute as pc

        from vse.text import normalize_tag

        if isinstance(column, pa.ChunkedArray):
            column = column.combine_chunks() if column.num_chunks else pa.array([], column.type)
        lengths = pc.fill_null(pc.list_value_length(column), 0).to_numpy(zero_copy_only=False).astype(np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        flat = pc.list_flatten(column)
        distinct = pc.unique(flat)  # in order of first occurrence
        normalized: dict[str, int] = {}
        rows = [-1 if not (n := normalize_tag(t)) else normalized.setdefault(n, len(normalized))
                for t in distinct.to_pylist()]  # fmt: skip
        codes = pc.index_in(flat, value_set=distinct).to_numpy(zero_copy_only=False)
        tag = np.asarray(rows, dtype=np.int64)[codes] if len(flat) else np.zeros(0, dtype=np.int64)
        return cls(offsets, tag, list(normalized))

    @classmethod
    def from_lists(cls, tag_lists: list[list[str]]) -> FlatTags:
        import pyarrow as pa

        return cls.from_arrow(pa.array(tag_lists, pa.list_(pa.string())))

    def image(self) -> np.ndarray:
        """(T,) the image row of every tag occurrence."""
        return np.repeat(np.arange(len(self.offsets) - 1), np.diff(self.offsets))

    def pairs(self) -> tuple[TagPairs, np.ndarray]:
        """Each image's distinct tags as pairs (the order of ``TagPairs.from_lists``), and every occurrence's pair.

        Returns ``(pairs, pair_of)``: ``pair_of`` (T,) is the pair of each occurrence, -1
        for a tag that normalises to nothing.
        """
        kept = np.flatnonzero(self.tag >= 0)
        keys = pair_keys(self.image()[kept], self.tag[kept])
        _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
        order = np.argsort(first, kind="stable")  # pairs by first occurrence: image by image, in tag order
        rank = np.empty_like(order)
        rank[order] = np.arange(len(order))
        pair_of = np.full(len(self.tag), -1, dtype=np.int64)
        pair_of[kept] = rank[inverse.reshape(-1)]
        chosen = kept[first[order]]
        return TagPairs(self.image()[chosen], self.tag[chosen]), pair_of


def null_tags(pairs: TagPairs, seed: int = 0, tries: int = 32) -> np.ndarray:
    """(P,) a random replacement for every pair's tag: another occurrence's tag, not one the image has.

    Every pair draws one occurrence at random; the few whose draw is a tag of their own
    image draw again (up to ``tries`` times), in pair order, from the same generator.
    """
    rng = np.random.default_rng(seed)
    span = int(pairs.tag.max()) + 1 if len(pairs) else 1
    own = np.sort(pairs.image.astype(np.int64) * span + pairs.tag)
    replacement = pairs.tag[rng.integers(len(pairs), size=len(pairs))]
    clashes = contains(own, pairs.image.astype(np.int64) * span + replacement)
    for k in np.flatnonzero(clashes).tolist():
        base = int(pairs.image[k]) * span
        for _ in range(tries):
            key = base + int(replacement[k])
            if own[min(int(np.searchsorted(own, key)), len(own) - 1)] != key:
                break
            replacement[k] = pairs.tag[rng.integers(len(pairs))]
    return replacement


def pair_keys(image: np.ndarray, tag: np.ndarray) -> np.ndarray:
    """One int64 per (image, tag) pair that sorts image by image: ``image * U + tag``, U above every tag."""
    span = int(tag.max()) + 1 if len(tag) else 1
    return image.astype(np.int64) * span + tag.astype(np.int64)


def contains(sorted_keys: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """(K,) whether each key is in ``sorted_keys``."""
    if not len(sorted_keys):
        return np.zeros(len(keys), dtype=bool)
    return sorted_keys[np.minimum(np.searchsorted(sorted_keys, keys), len(sorted_keys) - 1)] == keys


def tag_evidence(
    image_emb: torch.Tensor,
    tag_emb: torch.Tensor,
    pairs: TagPairs,
    candidate: np.ndarray | None = None,
    chunk: int = EVIDENCE_CHUNK,
) -> np.ndarray:
    """(P, 3) evidence (``EVIDENCE``) for each pair, or for a candidate tag in its place.

    Pairs are scored a chunk of whole images at a time (about ``chunk`` pairs), so that
    memory does not grow with the number of pairs times the embedding size.

    Args:
        image_emb: (N, D) normalised image embeddings.
        tag_emb: (U, D) normalised embeddings of the tag vocabulary.
        pairs: the observed (image, tag) pairs; they define each image's tags.
        candidate: optional (P,) tag rows scored instead of ``pairs.tag`` against
            the same image and the same other tags (the null evidence).
    """
    return evidence_of(image_emb, tag_emb, pairs, [pairs.tag if candidate is None else candidate], chunk)[0]


def evidence_of(
    image_emb: torch.Tensor,
    tag_emb: torch.Tensor,
    pairs: TagPairs,
    candidates: list[np.ndarray],
    chunk: int = EVIDENCE_CHUNK,
) -> list[np.ndarray]:
    """``tag_evidence`` of several (P,) candidate tag rows in one pass (each image's tags summed once)."""
    order = np.argsort(pairs.image, kind="stable")  # each image's pairs together, in their order
    image, own = pairs.image[order], pairs.tag[order]
    scored = [np.asarray(candidate)[order] for candidate in candidates]
    tag_emb = tag_emb.float().cpu()
    evidence = [np.empty((len(pairs), len(EVIDENCE)), dtype=np.float64) for _ in candidates]
    for start, stop in image_chunks(image, chunk):
        part = slice(start, stop)
        found = _chunk_evidence(image_emb, tag_emb, image[part], own[part], [rows[part] for rows in scored])
        for out, rows in zip(evidence, found, strict=True):
            out[order[part]] = rows
    return evidence


def image_chunks(image: np.ndarray, chunk: int) -> list[tuple[int, int]]:
    """(start, stop) ranges of about ``chunk`` pairs of sorted ``image`` rows that never split an image."""
    bounds, start = [], 0
    while start < len(image):
        stop = min(start + chunk, len(image))
        if stop < len(image):
            stop = int(np.searchsorted(image, image[stop], side="left"))
            if stop <= start:  # one image with more than ``chunk`` pairs
                stop = int(np.searchsorted(image, image[start], side="right"))
        bounds.append((start, stop))
        start = stop
    return bounds


def _chunk_evidence(
    image_emb: torch.Tensor, tag_emb: torch.Tensor, image: np.ndarray, own: np.ndarray, scored: list[np.ndarray]
) -> list[np.ndarray]:
    """``evidence_of`` pairs that hold every pair of their images."""
    first = int(image[0])
    local = torch.as_tensor(image - first)
    rows = int(image[-1]) - first + 1
    own_emb = tag_emb[torch.as_tensor(own)]
    image_rows = image_emb[torch.as_tensor(image, device=image_emb.device)].float().cpu()
    totals = torch.zeros(rows, tag_emb.shape[1]).index_add_(0, local, own_emb)
    alone = torch.bincount(local, minlength=rows)[local] <= 1
    others = F.normalize(totals[local] - own_emb, dim=1)
    found = []
    for candidate in scored:
        scored_emb = tag_emb[torch.as_tensor(candidate)]
        agreement = (image_rows * scored_emb).sum(dim=1)
        coherence = (scored_emb * others).sum(dim=1).masked_fill(alone, 0.0)
        found.append(torch.stack([agreement, coherence, alone.float()], dim=1).numpy().astype(np.float64))
    return found


def _expand(z: np.ndarray) -> np.ndarray:
    """Standardised evidence with its squares and pairwise products: a quadratic log density ratio."""
    columns = [z] + [z[:, i : i + 1] * z[:, j : j + 1] for i in range(z.shape[1]) for j in range(i, z.shape[1])]
    return np.concatenate(columns, axis=1)


def _logistic_fit(z: np.ndarray, labels: np.ndarray, l2: float = 1e-3, iterations: int = 25) -> np.ndarray:
    """Weights (with intercept last) of an L2-regularised logistic regression on ``_expand(z)``, by Newton's method.

    The design matrix is built ``FIT_CHUNK`` rows at a time and its gradient and
    Hessian summed over the chunks, so that memory does not grow with the rows.
    """
    weights = np.zeros(_expand(z[:1]).shape[1] + 1)
    for _ in range(iterations):
        gradient, hessian = l2 * weights, l2 * np.eye(len(weights))
        for start in range(0, len(z), FIT_CHUNK):
            design = _design(z[start : start + FIT_CHUNK])
            prob = 1.0 / (1.0 + np.exp(-np.clip(design @ weights, -30, 30)))
            gradient = gradient + design.T @ (prob - labels[start : start + FIT_CHUNK])
            hessian = hessian + (design * (prob * (1 - prob))[:, None]).T @ design
        step = np.linalg.solve(hessian, gradient)
        weights -= step
        if np.abs(step).max() < 1e-8:
            break
    return weights


def _design(z: np.ndarray) -> np.ndarray:
    """The discriminator's design matrix: ``_expand(z)`` and a column of ones (the intercept)."""
    return np.concatenate([_expand(z), np.ones((len(z), 1))], axis=1)


def pool_adjacent_violators(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The non-decreasing sequence closest to ``values`` in weighted least squares."""
    blocks: list[list[float]] = []  # [value, weight, length]
    for value, weight in zip(values.tolist(), weights.tolist(), strict=True):
        blocks.append([value, weight, 1])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            (v1, w1, n1), (v2, w2, n2) = blocks[-2], blocks[-1]
            blocks[-2:] = [[(v1 * w1 + v2 * w2) / max(w1 + w2, 1e-12), w1 + w2, n1 + n2]]
    return np.concatenate([np.full(n, v) for v, _, n in blocks])


@dataclass(frozen=True)
class SuspicionCalibration:
    """A fitted two-groups model: ``probability(evidence)`` is P(wrong)."""

    weights: np.ndarray  # logistic weights on quadratic features of standardised evidence, intercept last
    mean: np.ndarray
    scale: np.ndarray
    knots: np.ndarray  # discriminator scores at which the density ratio was measured ...
    ratios: np.ndarray  # ... and f0 / f there, non-decreasing
    pi0: float  # estimated share of wrong tags

    def score(self, evidence: np.ndarray) -> np.ndarray:
        """(P,) the discriminator's logit: higher looks more like a random tag."""
        evidence = np.asarray(evidence, dtype=np.float64)
        scores = np.empty(len(evidence))
        for start in range(0, len(evidence), FIT_CHUNK):
            scores[start : start + FIT_CHUNK] = (
                _design((evidence[start : start + FIT_CHUNK] - self.mean) / self.scale) @ self.weights
            )
        return scores

    def null_odds(self, evidence: np.ndarray) -> np.ndarray:
        """(P,) f0(x) / f(x): how much likelier the evidence is under the null (a random tag)."""
        return np.interp(self.score(evidence), self.knots, self.ratios)

    def probability(self, evidence: np.ndarray) -> np.ndarray:
        return np.clip(self.pi0 * self.null_odds(evidence), 0.0, 1.0)


def density_ratio(observed: np.ndarray, null: np.ndarray, bins: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """f0 / f of two samples of a 1-d score, measured in quantile bins and made non-decreasing.

    The logistic discriminator ranks well but its odds are only roughly the density
    ratio; counting both samples in bins of its score and smoothing by isotonic
    regression gives the calibrated ratio (Zadrozny and Elkan, KDD 2002).
    """
    edges = np.unique(np.quantile(np.concatenate([observed, null]), np.linspace(0, 1, bins + 1)))
    inner = edges[1:-1]
    observed_counts = np.bincount(np.searchsorted(inner, observed, side="right"), minlength=len(edges) - 1)
    null_counts = np.bincount(np.searchsorted(inner, null, side="right"), minlength=len(edges) - 1)
    keep = (observed_counts + null_counts) > 0
    share = null_counts[keep] / (observed_counts[keep] + null_counts[keep])  # P(null | bin), balanced samples
    share = pool_adjacent_violators(share, (observed_counts + null_counts)[keep].astype(np.float64))
    ratio = share / np.maximum(1.0 - share, 1e-6) * len(observed) / len(null)
    centres = ((edges[:-1] + edges[1:]) / 2)[keep]
    return centres, ratio


def fit_calibration(
    observed: np.ndarray, null: np.ndarray, storey_lambda: float = STOREY_LAMBDA
) -> SuspicionCalibration:
    """Fit the discriminator between observed and null evidence, its density ratio, and ``pi0``.

    Args:
        observed: (P, E) evidence of the observed pairs.
        null: (P, E) evidence of random replacement tags (same images, same size).
        storey_lambda: p-value threshold of Storey's estimator; larger is less
            biased (correct tags that look random push pi0 up) and noisier.
    """
    if observed.shape != null.shape or len(observed) < 2:
        raise ValueError("observed and null evidence must have the same (P, E) shape, with P >= 2")
    both = np.concatenate([observed, null])
    mean, scale = both.mean(axis=0), both.std(axis=0)
    scale = np.where(scale > 1e-9, scale, 1.0)
    labels = np.concatenate([np.zeros(len(observed)), np.ones(len(null))])  # 1 = null
    both -= mean  # standardised in place: at a million images each copy is hundreds of megabytes
    both /= scale
    weights = _logistic_fit(both, labels)
    del both
    unfitted = SuspicionCalibration(weights, mean, scale, np.zeros(1), np.zeros(1), pi0=1.0)
    observed_score, null_score = unfitted.score(observed), unfitted.score(null)
    knots, ratios = density_ratio(observed_score, null_score)
    # Under the null a pair's score is distributed as the simulated ones: its p-value is the
    # share of null scores at or below its own (correct tags score low, with small p-values).
    p_values = np.searchsorted(np.sort(null_score), observed_score, side="right") / len(null_score)
    pi0 = float(min(1.0, np.mean(p_values > storey_lambda) / (1.0 - storey_lambda)))
    return SuspicionCalibration(weights, mean, scale, knots, ratios, pi0)


def tag_suspicion(
    image_emb: torch.Tensor, tag_emb: torch.Tensor, pairs: TagPairs, seed: int = 0
) -> tuple[np.ndarray, SuspicionCalibration]:
    """(P,) P(wrong) of every (image, tag) pair, and the calibration it came from.

    Args:
        image_emb: (N, D) normalised image embeddings.
        tag_emb: (U, D) normalised embeddings of the tag vocabulary.
        pairs: the (image, tag) pairs to score, all tags of each image included.
        seed: seeds the random replacement tags of the null.
    """
    observed, null = evidence_of(image_emb, tag_emb, pairs, [pairs.tag, null_tags(pairs, seed)])
    calibration = fit_calibration(observed, null)
    return calibration.probability(observed), calibration


def review_priority(p_wrong: np.ndarray) -> float:
    """What reviewing one image is worth: its expected wrong tags over the square root of its tag count.

    A review fixes every tag of an image, but its tags are not worth the same.  On
    an image with many tags a wrong one is already down-weighted by the noise-aware
    web term (the other tags disagree with it) and the image keeps right tags to
    learn from; on an image with one or two tags a wrong one is its whole
    supervision.  Ranking by the plain sum (the expected number of wrong tags)
    sends reviewers to long tag lists, ranking by the mean to single tags; the
    square root between them gained the most from a 10% review in the review-loop
    benchmark (docs/ABLATION_NOTES.md, "Choosing the review order").  NaN for an image
    without tags.
    """
    p_wrong = np.asarray(p_wrong, dtype=np.float64)
    return float(p_wrong.sum() / np.sqrt(len(p_wrong))) if len(p_wrong) else float("nan")


def segment_sums(values: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """(N,) the sum of each segment ``values[offsets[i] : offsets[i + 1]]``; NaN for an empty one.

    Each segment is summed in order from zero, as Python's ``sum`` does (and NumPy's
    for fewer than eight values), one position of every segment at a time: equal
    priorities stay equal to the last bit, so that the queue's ties keep gallery order.
    """
    values, lengths = np.asarray(values, dtype=np.float64), np.diff(offsets)
    by_length = np.argsort(-lengths, kind="stable")  # segments still running at position j: a prefix
    starts, sorted_lengths = offsets[:-1][by_length], lengths[by_length]
    sums = np.zeros(len(lengths))
    running = len(lengths)
    for position in range(int(lengths.max()) if len(lengths) else 0):
        running = int(np.searchsorted(-sorted_lengths[:running], -position, side="left"))
        sums[:running] += values[starts[:running] + position]
    out = np.full(len(lengths), np.nan)
    out[by_length] = np.where(sorted_lengths > 0, sums, np.nan)
    return out


def review_priorities(p_wrong: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """(N,) ``review_priority`` of every image at once, its tags' P(wrong) being a segment of ``p_wrong``."""
    return segment_sums(p_wrong, offsets) / np.sqrt(np.diff(offsets))


class TagSuspicion(Sequence):
    """P(wrong) of every image's tags, as flat arrays: image ``i``'s are ``values[offsets[i] : offsets[i + 1]]``.

    Reads as a sequence of (tags,) arrays, one per image, aligned with its tags.
    """

    def __init__(self, values: np.ndarray, offsets: np.ndarray):
        if offsets.ndim != 1 or len(offsets) < 1 or offsets[0] != 0 or offsets[-1] != len(values):
            raise ValueError("offsets must run from 0 to the number of values")
        self.values, self.offsets = np.asarray(values, dtype=np.float64), np.asarray(offsets, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, index: int) -> np.ndarray:
        index = range(len(self))[index]  # IndexError out of range, negatives counted from the end
        return self.values[self.offsets[index] : self.offsets[index + 1]]

    def __iter__(self) -> Iterator[np.ndarray]:
        return (self.values[a:b] for a, b in zip(self.offsets[:-1].tolist(), self.offsets[1:].tolist(), strict=True))

    def expected_wrong(self) -> np.ndarray:
        """(N,) expected number of wrong tags of each image (NaN when it has no tags)."""
        return segment_sums(self.values, self.offsets)

    def review_priority(self) -> np.ndarray:
        """(N,) ``review_priority`` of each image (NaN when it has no tags)."""
        return review_priorities(self.values, self.offsets)


SUSPICION_FILE = "tag_suspicion.parquet"


@dataclass
class SuspicionTable:
    """P(wrong) of the web tags a model was trained on, as its training estimated them.

    Saved in the model folder (``tag_suspicion.parquet``: image_id, tag, p_wrong)
    so that the app's review queue ranks the very pairs the model trained on by
    the cross-fitted estimate, not by the model's own (overfitted) agreement.
    Tags are normalised (``vse.text.normalize_tag``).
    """

    image_ids: list[str]
    tags: list[str]
    p_wrong: np.ndarray  # (P,) float
    pi0: float = float("nan")  # the estimated share of wrong tags

    def __post_init__(self) -> None:
        self.p_wrong = np.asarray(self.p_wrong, dtype=np.float32)
        if not len(self.image_ids) == len(self.tags) == len(self.p_wrong):
            raise ValueError("image_ids, tags and p_wrong must have the same length")
        if len(self.p_wrong) and (
            not np.isfinite(self.p_wrong).all() or self.p_wrong.min() < 0 or self.p_wrong.max() > 1
        ):
            raise ValueError("p_wrong must hold probabilities in [0, 1]")
        self._lookup: dict[tuple[str, str], float] | None = None

    def __len__(self) -> int:
        return len(self.tags)

    def get(self, image_id: str, tag: str) -> float | None:
        if self._lookup is None:
            self._lookup = dict(zip(zip(self.image_ids, self.tags, strict=True), self.p_wrong.tolist(), strict=True))
        return self._lookup.get((image_id, tag))

    def lookup(self, image_ids, vocabulary: list[str], pairs: TagPairs) -> np.ndarray:
        """(P,) ``get`` of every pair at once (NaN where the table has none); a later row wins, as in ``get``.

        Args:
            image_ids: the Arrow string array of image ids that ``pairs.image`` indexes.
            vocabulary: the tags that ``pairs.tag`` indexes.
            pairs: the (image, tag) pairs to look up.
        """
        import pyarrow as pa
        import pyarrow.compute as pc

        if isinstance(image_ids, pa.ChunkedArray):
            image_ids = image_ids.combine_chunks() if image_ids.num_chunks else pa.array([], pa.string())
        image = pc.index_in(pa.array(self.image_ids, pa.string()), value_set=image_ids)
        tag = pc.index_in(pa.array(self.tags, pa.string()), value_set=pa.array(vocabulary, pa.string()))
        found = pc.and_(pc.is_valid(image), pc.is_valid(tag)).to_numpy(zero_copy_only=False)
        rows = np.flatnonzero(found)
        image = image.to_numpy(zero_copy_only=False)[rows].astype(np.int64)
        tag = tag.to_numpy(zero_copy_only=False)[rows].astype(np.int64)
        span = max(len(vocabulary), 1)
        keys = image * span + tag
        keys, last = np.unique(keys[::-1], return_index=True)  # the last row of each (image, tag)
        p_wrong = self.p_wrong[rows][::-1][last].astype(np.float64)
        wanted = pairs.image.astype(np.int64) * span + pairs.tag.astype(np.int64)
        if not len(keys):
            return np.full(len(wanted), np.nan)
        at = np.minimum(np.searchsorted(keys, wanted), len(keys) - 1)
        return np.where(contains(keys, wanted), p_wrong[at], np.nan)

    def image_ids_covered(self) -> set[str]:
        return set(self.image_ids)

    def save(self, folder: str | Path) -> Path:
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.table(
            {
                "image_id": pa.array(self.image_ids, pa.string()),
                "tag": pa.array(self.tags, pa.string()),
                "p_wrong": pa.array(self.p_wrong, pa.float32()),
            },  # fmt: skip
            metadata={"pi0": str(self.pi0)},
        )
        path = Path(folder) / SUSPICION_FILE
        pq.write_table(table, path)
        return path

    @classmethod
    def load(cls, folder: str | Path) -> SuspicionTable | None:
        """The table saved in a model folder, or None when it has none."""
        import pyarrow.parquet as pq

        path = Path(folder) / SUSPICION_FILE
        if not path.is_file():
            return None
        try:
            table = pq.read_table(path, columns=["image_id", "tag", "p_wrong"])
        except (OSError, ValueError, KeyError) as err:
            raise ModelLoadError(f"{path} is not a tag suspicion table: {err}") from err
        metadata = table.schema.metadata or {}
        return cls(
            table.column("image_id").to_pylist(),
            table.column("tag").to_pylist(),
            table.column("p_wrong").to_numpy(zero_copy_only=False),
            float(metadata.get(b"pi0", b"nan")),
        )
