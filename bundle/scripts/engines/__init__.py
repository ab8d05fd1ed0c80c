"""Engines: diffusion objectives over MONAI schedulers, the DRR consistency loss, the cascade trainer, sampling,
inference, evaluation and the PACS round trip over DICOMweb."""

from .evaluation import CTEvaluation, drr_consistency, volume_metrics, x2ct_metrics
from .guidance import DRRGuidance
from .inference import CTInferenceWorkflow
from .losses import DRRConsistencyLoss
from .objective import PREDICTION_TYPES, DiffusionObjective, RegressionObjective
from .pacs import DicomWebRoundTrip, choose_views
from .preview import orthogonal_slices, save_preview
from .sampler import (
    CascadeSampler,
    CTInferer,
    RegressionInferer,
    RegressionPrior,
    XrayToCT,
    load_regression_prior,
    shipped_prior,
    views_and_mask,
)
from .trainer import CascadeDiffusionTrainer, freeze_for_stage
from .workflow import DRRPreviewHandler, StageBatch, drr_error_pairs

__all__ = [
    "CTEvaluation",
    "CTInferenceWorkflow",
    "CTInferer",
    "CascadeDiffusionTrainer",
    "CascadeSampler",
    "DRRConsistencyLoss",
    "DRRGuidance",
    "DRRPreviewHandler",
    "DicomWebRoundTrip",
    "DiffusionObjective",
    "PREDICTION_TYPES",
    "RegressionInferer",
    "RegressionPrior",
    "RegressionObjective",
    "StageBatch",
    "XrayToCT",
    "load_regression_prior",
    "shipped_prior",
    "choose_views",
    "drr_consistency",
    "drr_error_pairs",
    "freeze_for_stage",
    "orthogonal_slices",
    "save_preview",
    "views_and_mask",
    "volume_metrics",
    "x2ct_metrics",
]
