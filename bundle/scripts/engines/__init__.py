"""Engines: diffusion objectives over MONAI schedulers, the DRR consistency loss, the cascade trainer."""

from .losses import DRRConsistencyLoss
from .objective import PREDICTION_TYPES, DiffusionObjective
from .sampler import CascadeSampler
from .trainer import CascadeDiffusionTrainer, freeze_for_stage
from .workflow import (
    DRRPreviewHandler,
    StageBatch,
    drr_error_pairs,
    ensure_dataset,
    load_earlier_stages,
    stage_checkpoint,
    write_run_config,
)

__all__ = [
    "CascadeDiffusionTrainer",
    "CascadeSampler",
    "DRRConsistencyLoss",
    "DiffusionObjective",
    "PREDICTION_TYPES",
    "DRRPreviewHandler",
    "StageBatch",
    "drr_error_pairs",
    "ensure_dataset",
    "freeze_for_stage",
    "load_earlier_stages",
    "stage_checkpoint",
    "write_run_config",
]
