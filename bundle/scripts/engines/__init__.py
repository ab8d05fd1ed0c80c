"""Engines: diffusion objectives over MONAI schedulers, the DRR consistency loss, the cascade trainer."""

from .checkpointing import AtomicCheckpointSaver, ResumableRandomSampler, TrainingStateHandler
from .evaluation import CTEvaluation, drr_consistency, volume_metrics, x2ct_metrics
from .inference import CTInferenceWorkflow, CTOutputd, XrayInputsd, ct_scale_to_hu, ensure_cases, load_cases
from .losses import DRRConsistencyLoss
from .objective import PREDICTION_TYPES, DiffusionObjective, RegressionObjective
from .preview import orthogonal_slices, save_preview
from .sampler import CascadeSampler, CTInferer, RegressionInferer, views_and_mask
from .settings import check_training_settings
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
    "AtomicCheckpointSaver",
    "ResumableRandomSampler",
    "TrainingStateHandler",
    "check_training_settings",
    "CTEvaluation",
    "CTInferenceWorkflow",
    "CTInferer",
    "CTOutputd",
    "RegressionInferer",
    "RegressionObjective",
    "XrayInputsd",
    "ct_scale_to_hu",
    "drr_consistency",
    "ensure_cases",
    "load_cases",
    "orthogonal_slices",
    "save_preview",
    "views_and_mask",
    "volume_metrics",
    "x2ct_metrics",
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
