"""The contrastive objectives of ferroclip: one library for every training path.

Projection heads on frozen embeddings (:mod:`ferroclip.train`) and whole-model fine-tuning
(:mod:`ferroclip.finetune`) both compute their loss here, so an InfoNCE is written once.
The functional cores (:func:`infonce_loss`, :func:`sigmoid_loss`) take L2-normalised
features and an explicit scale; the modules (seed 001's names) normalise their inputs, own
their temperature when no scale is passed, and return the seed's output dict.
"""

from __future__ import annotations

from .contrastive import (
    MAX_LOGIT_SCALE,
    CLIPContrastiveLoss,
    ContrastiveLossBase,
    SigLIPLoss,
    infonce_loss,
    sigmoid_loss,
)
from .domain import DOMAIN_MARGINS, DomainSpecificLoss
from .hard_negative import HardNegativeMiningLoss
from .multi_scale import MultiScaleLoss
from .temperature import TemperatureScheduler

__all__ = [
    "DOMAIN_MARGINS",
    "MAX_LOGIT_SCALE",
    "CLIPContrastiveLoss",
    "ContrastiveLossBase",
    "DomainSpecificLoss",
    "HardNegativeMiningLoss",
    "MultiScaleLoss",
    "SigLIPLoss",
    "TemperatureScheduler",
    "infonce_loss",
    "sigmoid_loss",
]
