"""Engines: diffusion objectives over MONAI schedulers, the DRR consistency loss, the cascade trainer."""

from .losses import DRRConsistencyLoss
from .objective import PREDICTION_TYPES, DiffusionObjective
from .trainer import CascadeDiffusionTrainer, freeze_for_stage

__all__ = [
    "CascadeDiffusionTrainer",
    "DRRConsistencyLoss",
    "DiffusionObjective",
    "PREDICTION_TYPES",
    "freeze_for_stage",
]
