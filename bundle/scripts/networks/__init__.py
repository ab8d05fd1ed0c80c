"""Networks: shared X-ray encoder, geometry-consistent depth lifting, HybridViT3D denoiser, cascade."""

from .baselines import LiftedRegressor
from .blocks import ATTENTION_MODES, DiTBlock, TimestepEmbedder
from .cascade import STAGE_KEYS, CascadeStage, XrayToCTCascade
from .denoiser import HybridViT3D
from .encoder import XrayEncoder, XrayEncoding
from .interface import CHECKPOINT_RECORDS, CascadeLike, check_stage, is_cascade_like, skip_checkpoint_records, unwrap
from .lifting import DepthLifting, ResolutionDepthPriors, backproject, voxel_centres

__all__ = [
    "ATTENTION_MODES",
    "CHECKPOINT_RECORDS",
    "CascadeLike",
    "is_cascade_like",
    "CascadeStage",
    "DepthLifting",
    "DiTBlock",
    "HybridViT3D",
    "LiftedRegressor",
    "ResolutionDepthPriors",
    "STAGE_KEYS",
    "TimestepEmbedder",
    "XrayEncoder",
    "XrayEncoding",
    "XrayToCTCascade",
    "backproject",
    "check_stage",
    "skip_checkpoint_records",
    "unwrap",
    "voxel_centres",
]
