"""Cross-fitted suspicion of web tags: the weights of the noise-aware web term.

A model scores its own training pairs too kindly: after a few epochs it has
fitted the wrong tags as well (on the emoji corpus with 30% injected noise, the
AUC of a model's in-sample image-tag cosine falls from 0.80 to 0.60 while it
trains).  So every web image is scored by models that never trained on it, as
confident learning does (Northcutt et al., JAIR 2021): the web images are split
into ``web.suspicion_folds`` folds, and for each fold a short model (clean
captions plus the other folds' web tags, one text per tag, InfoNCE,
``web.suspicion_steps`` steps, the early-learning regime of small-loss selection,
Arpit et al. 2017; Han et al., NeurIPS 2018) embeds the fold's images and tags.
The evidence of all folds is calibrated together into P(wrong) by
``vse.suspicion`` (local false discovery rate with a simulated null).  Later
rounds train their fold models with the previous round's weights, so that they
learn less from the tags already suspected.

Human verdicts override the estimate: a tag reviewers marked wrong is gone from
the pairs before this runs, and tags they confirmed or added keep weight 1.
"""

from __future__ import annotations

import copy
import hashlib
import logging
from dataclasses import dataclass

import numpy as np
import torch

from training.config import LossConfig, TrainConfig
from training.loop import EmbeddingStep, Term, batch_stream, train_steps
from training.pairs import PairSet
from training.runtime import Runtime
from vse.model import VSEModel
from vse.suspicion import TagPairs, fit_calibration, null_tags, tag_evidence

log = logging.getLogger(__name__)
FOLD_LOSS = LossConfig(kind="infonce")


@dataclass
class SuspicionReport:
    """What one round of estimation found, for the training log."""

    round: int
    pi0: float
    mean_wrong: float
    auc_injected: float | None  # against injected noise, when the run injected some

    def record(self) -> dict:
        return {"stage": "suspicion", **self.__dict__}


def fold_of(web: PairSet, folds: int, seed: int) -> np.ndarray:
    """(P,) fold of each pair: all pairs of one image share a fold, chosen by a seeded hash of its row."""
    salt = f"{seed}:".encode()
    by_row = {
        row: int.from_bytes(hashlib.sha256(salt + str(row).encode()).digest()[:8], "little") % folds
        for row in np.unique(web.image_rows).tolist()
    }
    return np.array([by_row[row] for row in web.image_rows.tolist()], dtype=np.int64)


def web_tag_pairs_index(web: PairSet) -> tuple[TagPairs, np.ndarray, np.ndarray]:
    """The web pairs as ``TagPairs`` over their distinct images and texts; the first pair of each image and text."""
    _, image_pairs, image_index = np.unique(web.image_rows, return_index=True, return_inverse=True)
    index_of: dict[str, int] = {}
    text_pairs, text_index = [], np.empty(len(web), dtype=np.int64)
    for pair, text in enumerate(web.texts):
        if text not in index_of:
            index_of[text] = len(text_pairs)
            text_pairs.append(pair)
        text_index[pair] = index_of[text]
    return TagPairs(image_index.astype(np.int64), text_index), image_pairs, np.asarray(text_pairs, dtype=np.int64)


def embed_web(model: VSEModel, web: PairSet, image_pairs: np.ndarray, text_pairs: np.ndarray, batch: int):
    """(N, D) embeddings of the web images and (U, D) of the distinct web texts."""
    was_training = model.training
    model.eval()
    try:
        images = torch.cat(
            [model.encode_image(web.image_batch(image_pairs[s : s + batch])) for s in range(0, len(image_pairs), batch)]
        )
        texts = torch.cat(
            [model.encode_text(web.text_batch(text_pairs[s : s + batch])) for s in range(0, len(text_pairs), batch)]
        )
        return images, texts
    finally:
        model.train(was_training)


def train_fold_model(
    pristine: VSEModel,
    captions: PairSet,
    web: PairSet,
    held_out: np.ndarray,
    config: TrainConfig,
    runtime: Runtime,
    seed: list[int],
) -> VSEModel:
    """A model trained on the captions and the web pairs outside ``held_out``."""
    model = copy.deepcopy(pristine)
    step_module = EmbeddingStep(model, FOLD_LOSS)
    optimizer = torch.optim.Adam([p for p in step_module.parameters() if p.requires_grad], lr=config.stage1.optim.lr)
    step, optimizer = runtime.prepare(step_module, optimizer)
    terms = [
        Term(captions, batch_stream(captions, config.stage1.optim.batch_size, [*seed, 0], runtime)),
        Term(
            web,
            batch_stream(web, config.web.batch_size, [*seed, 1], runtime, indices=np.nonzero(~held_out)[0]),
            config.stage1.tag_weight,
        ),
    ]
    train_steps(
        step, optimizer, terms, config.web.suspicion_steps, FOLD_LOSS, False, config.stage1.optim.grad_clip, runtime,
        progress=config.progress, desc="suspicion fold",
    )  # fmt: skip
    return model


def crossfit_wrong_probability(
    model: VSEModel, captions: PairSet, web: PairSet, config: TrainConfig, runtime: Runtime, round_: int
) -> tuple[np.ndarray, SuspicionReport]:
    """(P,) cross-fitted P(wrong) of every web pair (one round), and a report."""
    pairs, image_pairs, text_pairs = web_tag_pairs_index(web)
    folds = fold_of(web, config.web.suspicion_folds, config.seed + round_)
    observed = np.zeros((len(pairs), 3))
    null = np.zeros((len(pairs), 3))
    replacement = null_tags(pairs, seed=config.seed + round_)
    image_fold = np.zeros(len(image_pairs), dtype=np.int64)
    image_fold[pairs.image] = folds
    for fold in range(config.web.suspicion_folds):
        held_out = folds == fold
        if not held_out.any():
            continue
        fold_model = train_fold_model(model, captions, web, held_out, config, runtime, [config.seed, 3, round_, fold])
        image_emb, text_emb = embed_web(fold_model, web, image_pairs, text_pairs, config.eval_batch_size)
        observed[held_out] = tag_evidence(image_emb, text_emb, pairs)[held_out]
        null[held_out] = tag_evidence(image_emb, text_emb, pairs, replacement)[held_out]
        del fold_model
    calibration = fit_calibration(observed, null)
    wrong = calibration.probability(observed)
    if web.fixed is not None:
        wrong[web.fixed] = 0.0
    report = SuspicionReport(round_, calibration.pi0, float(wrong.mean()), injected_auc(wrong, web.injected))
    return wrong, report


def injected_auc(wrong: np.ndarray, injected: np.ndarray | None) -> float | None:
    """ROC AUC of P(wrong) at finding the injected wrong tags (None without injected noise)."""
    if injected is None or not injected.any() or injected.all():
        return None
    ranks = np.empty(len(wrong))
    order = np.argsort(wrong, kind="stable")
    ranks[order] = np.arange(1, len(wrong) + 1)
    for value in np.unique(wrong):  # average ranks of ties
        tied = wrong == value
        ranks[tied] = ranks[tied].mean()
    positives = int(injected.sum())
    return float((ranks[injected].sum() - positives * (positives + 1) / 2) / (positives * (len(wrong) - positives)))


def noise_aware_weights(
    model: VSEModel, captions: PairSet, web: PairSet, config: TrainConfig, runtime: Runtime
) -> tuple[np.ndarray, list[SuspicionReport]]:
    """(P,) weight of every web pair, 1 - P(wrong), after ``web.suspicion_rounds`` rounds."""
    pristine = copy.deepcopy(model)
    reports = []
    web.weights = None
    for round_ in range(config.web.suspicion_rounds):
        wrong, report = crossfit_wrong_probability(pristine, captions, web, config, runtime, round_)
        web.weights = 1.0 - wrong
        reports.append(report)
        log.info(
            "suspicion round %d: estimated wrong share %.3f, mean P(wrong) %.3f%s", round_ + 1, report.pi0,
            report.mean_wrong, "" if report.auc_injected is None else f", AUC on injected noise {report.auc_injected:.3f}",
        )  # fmt: skip
    return web.weights, reports
