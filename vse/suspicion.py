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

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from vse.errors import ModelLoadError

EVIDENCE = ("agreement", "coherence", "alone")
STOREY_LAMBDA = 0.8


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


def null_tags(pairs: TagPairs, seed: int = 0, tries: int = 32) -> np.ndarray:
    """(P,) a random replacement for every pair's tag: another occurrence's tag, not one the image has."""
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


def tag_evidence(
    image_emb: torch.Tensor, tag_emb: torch.Tensor, pairs: TagPairs, candidate: np.ndarray | None = None
) -> np.ndarray:
    """(P, 3) evidence (``EVIDENCE``) for each pair, or for a candidate tag in its place.

    Args:
        image_emb: (N, D) normalised image embeddings.
        tag_emb: (U, D) normalised embeddings of the tag vocabulary.
        pairs: the observed (image, tag) pairs; they define each image's tags.
        candidate: optional (P,) tag rows scored instead of ``pairs.tag`` against
            the same image and the same other tags (the null evidence).
    """
    image_index = torch.as_tensor(pairs.image)
    own = torch.as_tensor(pairs.tag)
    scored = own if candidate is None else torch.as_tensor(candidate)
    image_emb, tag_emb = image_emb.float().cpu(), tag_emb.float().cpu()
    agreement = (image_emb[image_index] * tag_emb[scored]).sum(dim=1)
    totals = torch.zeros(image_emb.shape[0], tag_emb.shape[1]).index_add_(0, image_index, tag_emb[own])
    counts = torch.bincount(image_index, minlength=image_emb.shape[0])[image_index]
    others = F.normalize(totals[image_index] - tag_emb[own], dim=1)
    alone = counts <= 1
    coherence = (tag_emb[scored] * others).sum(dim=1).masked_fill(alone, 0.0)
    return torch.stack([agreement, coherence, alone.float()], dim=1).numpy().astype(np.float64)


def _expand(z: np.ndarray) -> np.ndarray:
    """Standardised evidence with its squares and pairwise products: a quadratic log density ratio."""
    columns = [z] + [z[:, i : i + 1] * z[:, j : j + 1] for i in range(z.shape[1]) for j in range(i, z.shape[1])]
    return np.concatenate(columns, axis=1)


def _logistic_fit(features: np.ndarray, labels: np.ndarray, l2: float = 1e-3, iterations: int = 25) -> np.ndarray:
    """Weights (with intercept last) of an L2-regularised logistic regression, by Newton's method."""
    design = np.concatenate([features, np.ones((len(features), 1))], axis=1)
    weights = np.zeros(design.shape[1])
    for _ in range(iterations):
        prob = 1.0 / (1.0 + np.exp(-np.clip(design @ weights, -30, 30)))
        gradient = design.T @ (prob - labels) + l2 * weights
        hessian = (design * (prob * (1 - prob))[:, None]).T @ design + l2 * np.eye(len(weights))
        step = np.linalg.solve(hessian, gradient)
        weights -= step
        if np.abs(step).max() < 1e-8:
            break
    return weights


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
        z = _expand((np.asarray(evidence, dtype=np.float64) - self.mean) / self.scale)
        return np.concatenate([z, np.ones((len(z), 1))], axis=1) @ self.weights

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
    weights = _logistic_fit(_expand((both - mean) / scale), labels)
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
    observed = tag_evidence(image_emb, tag_emb, pairs)
    null = tag_evidence(image_emb, tag_emb, pairs, null_tags(pairs, seed))
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
