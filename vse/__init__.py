"""vse: visual-semantic embeddings for cross-modal image-text retrieval.

The model library of this project: encoders, ranking losses, retrieval metrics
and Hub I/O for the webly supervised joint embedding of Mithun, Panda, Papalexakis
and Roy-Chowdhury (ACM MM 2018), built on VSE++ (Faghri et al., BMVC 2018).
It needs no training-only dependency; training code lives in ``training/``.
"""

from vse.config import VSEConfig
from vse.losses import LossTerm, combined_ranking_loss, hinge_ranking_loss, infonce_loss
from vse.metrics import coco_protocols, fold_metrics, retrieval_metrics
from vse.model import VSEModel
from vse.suspicion import TagPairs, tag_suspicion
from vse.text import tags_to_text

__all__ = [
    "LossTerm",
    "TagPairs",
    "VSEConfig",
    "VSEModel",
    "coco_protocols",
    "combined_ranking_loss",
    "fold_metrics",
    "hinge_ranking_loss",
    "infonce_loss",
    "retrieval_metrics",
    "tag_suspicion",
    "tags_to_text",
]
__version__ = "0.1.0"
