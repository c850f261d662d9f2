"""The method, in one place: stage one, stage two and the noise-aware web term.

Mithun et al. (ACM MM 2018) learn a joint image-text embedding from a small clean
caption set and a large noisy web set of images with user tags:

**Stage one** trains on clean pairs:

    loss = rank(image, caption) + lambda * [rank(image, pseudo tags) + rank(image, verified tags)]

pseudo tags are each caption's content words (``training.pseudo_tags``); verified
tags are the web images people reviewed in the app (``data.corrections``).  With
``stage1.include_web`` the web term joins stage one (joint one-stage training).

**Stage two** adapts the stage-one model to the web pairs with a smaller learning
rate, easy pairs first (the curriculum: ranked by the stage-one model's
image-text agreement, epoch e uses the easiest ``curriculum_fractions[e]``),
optionally replaying clean caption pairs:

    loss = lambda * rank(image, web text) + rank(image, caption)   [replay only]

**The web term** is rank(image, web text) over the web pairs, where a web text
is an image's whole tag list (``web.unit: list``, the paper) or each tag on its
own (``web.unit: tags``).  Web tags are noisy tag by tag, not list by list, so
the **noise-aware** term (``web.noise_aware``) weights each (image, tag) pair by
the probability that it is right, ``1 - P(wrong)``, cross-fitted before the
first stage that uses it (``training.suspicion``, ``vse.suspicion``); tags people
confirmed or added keep weight 1, tags they rejected are gone.

``rank`` is the bidirectional hinge ranking loss of VSE++ (margin 0.2, hardest
negative after a warm-up) or InfoNCE with a learned temperature (``loss.kind``).
The model kept is the one with the best validation rsum over the whole run,
whichever stage it came from (``training.loop.RunSelection``).

The default recipe (configs/offline_default.yaml, docs/RESULTS.md) is stage one
only, joint, InfoNCE, with the noise-aware per-tag web term; the paper's schedule
is configs/paper_two_stage.yaml.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from training.config import TrainConfig
from training.curriculum import curriculum_subset
from training.loop import StagePlan, Term, batch_stream
from training.pairs import PairSet
from training.runtime import Runtime

log = logging.getLogger(__name__)
STAGE_SEEDS = {"stage1": 1, "stage2": 2}


@dataclass
class TrainingPairs:
    """Every pair set of a run, built once (``training.train.build_pairs``)."""

    captions: PairSet | None = None
    pseudo_tags: PairSet | None = None
    verified_tags: PairSet | None = None
    web: PairSet | None = None  # one pair per image or per tag (web.unit); weights set when noise-aware

    def named(self) -> dict[str, PairSet]:
        sets = (self.captions, self.pseudo_tags, self.verified_tags, self.web)
        return {pairs.name: pairs for pairs in sets if pairs is not None}


def side_batch(main_pairs: int, side_pairs: int, batch_size: int) -> int:
    """Batch size of a small secondary term, proportional to its share of the data (2..batch)."""
    return int(min(batch_size, max(2, round(batch_size * side_pairs / max(main_pairs, 1)))))


def stage_one(config: TrainConfig, pairs: TrainingPairs, runtime: Runtime) -> StagePlan:
    """Clean captions, lambda * (pseudo tags + verified tags), and the web term when joint."""
    cfg, batch = config.stage1, config.stage1.optim.batch_size

    def terms(epoch: int) -> list[Term]:
        seed = [config.seed, STAGE_SEEDS["stage1"], epoch]
        chosen = [Term(pairs.captions, batch_stream(pairs.captions, batch, [*seed, 0], runtime))]
        if pairs.pseudo_tags is not None and len(pairs.pseudo_tags) >= 2:
            chosen.append(Term(pairs.pseudo_tags, batch_stream(pairs.pseudo_tags, batch, [*seed, 1], runtime),
                               cfg.tag_weight))  # fmt: skip
        if pairs.verified_tags is not None and len(pairs.verified_tags) >= 2:
            size = side_batch(len(pairs.captions), len(pairs.verified_tags), batch)
            chosen.append(Term(pairs.verified_tags, batch_stream(pairs.verified_tags, size, [*seed, 2], runtime),
                               cfg.tag_weight))  # fmt: skip
        if cfg.include_web:
            chosen.append(Term(pairs.web, batch_stream(pairs.web, config.web.batch_size, [*seed, 3], runtime),
                               cfg.tag_weight))  # fmt: skip
        return chosen

    return StagePlan("stage1", cfg.optim, cfg.loss, terms)


def stage_two(config: TrainConfig, pairs: TrainingPairs, order: np.ndarray | None, runtime: Runtime) -> StagePlan:
    """The web term with a curriculum over ``order`` (easy first), plus replayed caption pairs."""
    cfg, batch = config.stage2, config.stage2.optim.batch_size

    def terms(epoch: int) -> list[Term]:
        seed = [config.seed, STAGE_SEEDS["stage2"], epoch]
        subset = curriculum_subset(order, epoch, cfg.curriculum_fractions) if order is not None else None
        chosen = [Term(pairs.web, batch_stream(pairs.web, batch, [*seed, 0], runtime, subset), cfg.tag_weight)]
        if cfg.replay_clean > 0 and pairs.captions is not None:
            size = int(min(batch, max(2, round(batch * cfg.replay_clean))))
            chosen.append(Term(pairs.captions, batch_stream(pairs.captions, size, [*seed, 1], runtime)))
        return chosen

    return StagePlan("stage2", cfg.optim, cfg.loss, terms)


def uses_web(config: TrainConfig) -> bool:
    return config.stage2.enabled or (config.stage1.enabled and config.stage1.include_web)
