"""Deterministic regression baselines from the same inputs as the cascade, for the evaluation's comparison table.

``LiftedRegressor`` = the cascade's X-ray encoder + geometry-consistent depth lifting onto the output grid, then a
decoder that regresses the CT directly (no diffusion):

* ``decoder="unet"``: a 3D U-Net (MONAI ``BasicUNet``) on the lifted features — the X2CT-style baseline (2D encoder,
  features carried into 3D, 3D decoder), with the lifting along the real rays instead of X2CT's plain repetition;
* ``decoder="linear"``: a per-voxel linear read-out (1×1×1 convolution) — "the lifted prior alone": what the
  back-projected features say about the CT before any 3D network reasons about them.

Both predict a residual over a constant ``output_offset`` (CT scale) with their last layer zeroed at construction,
so the untrained regressor outputs that constant everywhere. From PyTorch's default init the U-Net outputs a random
field (std ≈ 0.5 on the CT scale: three times the squared error of the mean volume on the synthetic phantoms), which
the training's EMA weights carry for hundreds of steps; at a CPU budget that left the shipped U-Net below the best
constant volume (``benchmarks/results/baselines.md``). ``decoder_grid`` below ``grid_size`` runs the
lifting and the U-Net on a coarser grid and upsamples with a learned 3×3×3 convolution: the lifted features come
from stride-4 feature maps (32 × 32 per view on the default detector), and on the synthetic phantoms a 32³ U-Net
matched the 64³ one at equal iterations for a 4.5× cheaper CPU iteration.

It is :class:`~scripts.networks.CascadeLike` and takes the cascade's constructor arguments (one stage entry), so
``configs/train.yaml`` trains it with ``network_def#_target_`` switched, the objective (``RegressionObjective``) and
the validation inferer (``RegressionInferer``); see ``configs/stages/baseline_*.yaml``. ``x_t`` and ``t`` are
accepted and ignored: the regression has no noisy input.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from typing import Literal

import torch
from monai.networks.nets import BasicUNet
from torch import nn

from ..physics import ProjectionGeometry
from .encoder import XrayEncoder, XrayEncoding
from .interface import check_stage, skip_checkpoint_records
from .lifting import DepthLifting

__all__ = ["LiftedRegressor"]

DECODERS = ("unet", "linear")
#: The keys of a regressor's stage entry (see :class:`LiftedRegressor`).
STAGE_KEYS = ("grid_size", "decoder", "lift_channels", "unet_features", "output_offset", "decoder_grid")


class LiftedRegressor(nn.Module):
    """X-rays -> CT (CT scale, [−1, 1]) in one forward pass.

    Args:
        geometry: the projection geometry (the renderer's).
        fov_mm: field of view of the output grid (mm, cubic).
        stages: one entry: ``grid_size`` (voxels per edge, cubic), ``decoder`` (``"unet"`` or ``"linear"``, see the
            module docstring), ``lift_channels`` (channels of the lifted volume, default 16), ``unet_features``
            (``BasicUNet`` features, six numbers, for ``decoder="unet"``), ``output_offset`` (the constant the
            decoder's residual is added to, CT scale [−1, 1], default 0; the training set's mean volume value is the
            natural choice), ``decoder_grid`` (voxels per edge of the grid the lifting and the U-Net run on, from 32 to
            ``grid_size``, default ``grid_size``; for ``decoder="unet"`` only).
        encoder: XrayEncoder keyword arguments (views and image size come from the geometry).
        use_depth_lifting: must be true: the lifted features are the regressor's only input.
        gradient_checkpointing: accepted for the cascade's signature; the regressors are small and do not use it.
    """

    def __init__(
        self,
        geometry: ProjectionGeometry,
        fov_mm: float,
        stages: Sequence[Mapping],
        encoder: Mapping | None = None,
        use_depth_lifting: bool = True,
        gradient_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        if len(stages) != 1 or not isinstance(stages[0], Mapping):
            raise ValueError(f"stages must hold one stage entry for a regressor, got {stages!r}.")
        unknown = sorted(set(stages[0]) - set(STAGE_KEYS))
        if unknown:
            raise ValueError(f"stages[0]: unknown keys {unknown} for a regressor; allowed: {list(STAGE_KEYS)}.")
        if not use_depth_lifting:
            raise ValueError("use_depth_lifting must be true for a regressor: the lifted features are its input.")
        grid_size = stages[0].get("grid_size")
        decoder: Literal["unet", "linear"] = stages[0].get("decoder", "unet")
        lift_channels = stages[0].get("lift_channels", 16)
        unet_features = stages[0].get("unet_features", (16, 16, 32, 64, 128, 16))
        if decoder not in DECODERS:
            raise ValueError(f"stages[0].decoder must be one of {DECODERS}, got {decoder!r}.")
        if isinstance(grid_size, bool) or not isinstance(grid_size, numbers.Integral) or grid_size < 8:
            raise ValueError(f"stages[0].grid_size must be an integer of at least 8 voxels, got {grid_size!r}.")
        offset = stages[0].get("output_offset", 0.0)
        if isinstance(offset, bool) or not isinstance(offset, numbers.Real) or not -1 <= offset <= 1:
            raise ValueError(f"stages[0].output_offset must be a number on the CT scale [-1, 1], got {offset!r}.")
        decoder_grid = stages[0].get("decoder_grid", grid_size)
        if (
            isinstance(decoder_grid, bool)
            or not isinstance(decoder_grid, numbers.Integral)
            or not (decoder_grid == grid_size or 32 <= decoder_grid <= grid_size)
        ):
            # BasicUNet halves its grid four times and instance-normalises the result: below 32 voxels that is 1.
            raise ValueError(
                f"stages[0].decoder_grid must be an integer from 32 (the U-Net halves it four times) to grid_size "
                f"({grid_size}), got {decoder_grid!r}."
            )
        if decoder_grid != grid_size and decoder != "unet":
            raise ValueError(f"stages[0].decoder_grid applies to decoder 'unet' only, got decoder {decoder!r}.")
        if not isinstance(fov_mm, numbers.Real) or not fov_mm > 0:
            raise ValueError(f"fov_mm must be a positive length in mm, got {fov_mm!r}.")
        encoder_kwargs = dict(encoder or {})
        self.encoder = XrayEncoder(num_views=geometry.num_views, image_size=geometry.detector_shape, **encoder_kwargs)
        grid, inner = (int(grid_size),) * 3, (int(decoder_grid),) * 3
        self.stage_configs = [{"grid_size": grid, "fov_mm": (float(fov_mm),) * 3}]
        lifting = DepthLifting(
            geometry,
            inner,  # the same field of view, sampled on the decoder's grid
            float(fov_mm),
            self.encoder.feature_channels,
            int(lift_channels),
            feature_stride=self.encoder.feature_stride,
        )
        modules = {"lifting": lifting}
        if decoder == "linear":
            modules["decoder"] = nn.Conv3d(int(lift_channels), 1, kernel_size=1)
        elif inner == grid:
            modules["decoder"] = BasicUNet(3, int(lift_channels), 1, features=unet_features)
        else:
            # The U-Net hands its last features (not one channel) to a learned upsampling: trilinear to the output
            # grid, then a 3×3×3 convolution that can place sub-voxel detail the interpolation alone would blur.
            modules["decoder"] = BasicUNet(3, int(lift_channels), unet_features[-1], features=unet_features)
            modules["upsample"] = nn.Sequential(
                nn.Upsample(size=grid, mode="trilinear", align_corners=False),
                nn.Conv3d(unet_features[-1], 1, kernel_size=3, padding=1),
            )
        self.decoder, self.output_offset = decoder, float(offset)
        self.stages = nn.ModuleList([nn.ModuleDict(modules)])
        self.initialize_weights()
        self.register_load_state_dict_pre_hook(skip_checkpoint_records)  # model.pt's records beside the weights

    def _output_layer(self) -> nn.Conv3d:
        """The convolution that writes the CT residual."""
        modules = self.stages[0]
        if "upsample" in modules:
            return modules["upsample"][-1]
        return modules["decoder"] if self.decoder == "linear" else modules["decoder"].final_conv

    def initialize_weights(self) -> None:
        """Zero the output layer: the untrained regressor predicts ``output_offset`` everywhere (the residual-at-zero
        start of DiT's adaLN-Zero / ControlNet's zero convolution); the layers below keep PyTorch's init and start
        receiving gradients after the first step."""
        layer = self._output_layer()
        nn.init.zeros_(layer.weight)
        nn.init.zeros_(layer.bias)

    @property
    def num_stages(self) -> int:
        return 1

    def grid_size(self, stage: int = 0) -> tuple[int, int, int]:
        return self.stage_configs[0]["grid_size"]

    def encode(self, xray: torch.Tensor, view_mask: torch.Tensor | None = None) -> XrayEncoding:
        """``xray (B, V, H, W)`` network-scale views -> the encoding."""
        return self.encoder(xray, view_mask)

    def forward(
        self,
        x_t: torch.Tensor | None = None,
        t: torch.Tensor | None = None,
        xray: torch.Tensor | None = None,
        stage: int = 0,
        previous: torch.Tensor | None = None,
        view_mask: torch.Tensor | None = None,
        encoding: XrayEncoding | None = None,
    ) -> torch.Tensor:
        """``(B, 1, X, Y, Z)`` CT estimate on the CT scale; ``x_t``, ``t`` and ``previous`` are ignored."""
        check_stage(1, stage)
        if encoding is None:
            if xray is None:
                raise ValueError("xray or encoding must be given.")
            encoding = self.encode(xray, view_mask)
        modules = self.stages[0]
        lifted = modules["lifting"](encoding, None)  # (B, C_l, x, y, z) on the decoder grid
        residual = modules["decoder"](lifted)  # (B, 1, X, Y, Z), or (B, C_u, x, y, z) before the upsampling
        if "upsample" in modules:
            residual = modules["upsample"](residual)  # (B, 1, X, Y, Z)
        return residual + self.output_offset  # (B, 1, X, Y, Z)
