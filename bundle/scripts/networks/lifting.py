"""Geometry-consistent depth lifting: 2D view features back-projected into a stage's 3D grid along the real rays.

Each voxel of the stage grid is projected onto every detector with the same :class:`ProjectionGeometry` that the
DRR renderer traces, and samples that view's feature map there. Along a ray, where the feature belongs is
unknown; a depth-weight network predicts, per pixel, how the pixel's content splits over three regions along the
beam, and :class:`ResolutionDepthPriors` turns the regions into weights over the voxels' positions on the ray.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..physics import ProjectionGeometry
from .encoder import XrayEncoding

__all__ = ["DepthLifting", "ResolutionDepthPriors", "backproject", "voxel_centres"]


def voxel_centres(grid_size: Sequence[int], fov_mm: Sequence[float]) -> torch.Tensor:
    """``(X, Y, Z, 3)`` RAS voxel centres in mm of a grid spanning ``fov_mm`` centred on the isocentre (float64)."""
    axes = [
        (torch.arange(n, dtype=torch.float64) - (n - 1) / 2.0) * (f / n) for n, f in zip(grid_size, fov_mm, strict=True)
    ]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)


class ResolutionDepthPriors(nn.Module):
    """Soft regions along the beam: source side, middle, detector side, for any number of depth samples.

    For the PA view the source side is posterior and the detector side anterior; for the lateral view they are the
    patient's right and left. A region's weight at depth fraction ``t`` (0 at the source-side face of the field of
    view, 1 at the detector side) is a smoothed box between ``edges``; the three weights sum to 1 everywhere.

    Args:
        edges: region borders as depth fractions.
        softness: width of the smooth transition, as a fraction of the depth.
    """

    def __init__(self, edges: Sequence[float] = (1.0 / 3.0, 2.0 / 3.0), softness: float = 0.03) -> None:
        super().__init__()
        if not (0.0 < edges[0] < edges[1] < 1.0):
            raise ValueError(f"edges must satisfy 0 < first < second < 1, got {edges!r}.")
        if not softness > 0:
            raise ValueError(f"softness must be positive, got {softness!r}.")
        self.edges, self.softness = (float(edges[0]), float(edges[1])), float(softness)

    def weights(self, t: torch.Tensor) -> torch.Tensor:
        """``(3, ...)`` region weights at depth fractions ``t (...)``."""
        near = torch.sigmoid((self.edges[0] - t) / self.softness)
        far = torch.sigmoid((t - self.edges[1]) / self.softness)
        mid = torch.clamp(1.0 - near - far, min=0.0)
        w = torch.stack([near, mid, far])
        return w / w.sum(0, keepdim=True)

    def forward(self, depth: int) -> torch.Tensor:
        """``(3, depth)`` weights at the centres of ``depth`` equal steps (e.g. 64, 128, 256, 512, 604)."""
        if depth < 1:
            raise ValueError(f"depth must be a positive number of samples, got {depth!r}.")
        return self.weights((torch.arange(depth, dtype=torch.float64) + 0.5) / depth).float()


def _sampling(
    geometry: ProjectionGeometry, grid_size: Sequence[int], fov_mm: Sequence[float], feature_stride: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """Feature-map coordinates ``(V, N, 2)`` (x = column, y = row, ``grid_sample`` units), depth fractions ``(V, N)``.

    A map of stride ``s`` has pixel ``j`` centred on detector pixel ``s·j`` (stride-2, kernel-3, padding-1
    convolutions keep that alignment), so detector coordinate ``c`` is map coordinate ``c / s``. The depth fraction
    is measured between the faces of the field of view along each view's beam: 0 on the source side, 1 on the
    detector side.
    """
    pixels, depth = geometry.project_points(voxel_centres(grid_size, fov_mm).reshape(-1, 3))  # (V, N, 2), (V, N)
    h, w = geometry.detector_shape
    if h % feature_stride or w % feature_stride:
        raise ValueError(f"feature_stride {feature_stride} must divide the detector shape {(h, w)}.")
    hm, wm = h // feature_stride, w // feature_stride
    grid = torch.stack(
        [(pixels[..., 1] / feature_stride + 0.5) / wm * 2 - 1, (pixels[..., 0] / feature_stride + 0.5) / hm * 2 - 1],
        dim=-1,
    )
    beam = geometry.frames()["beam"]  # (V, 3)
    half = (beam.abs() * torch.tensor(fov_mm, dtype=torch.float64)).sum(-1) / 2.0  # (V,) half-depth of the FOV
    t = (depth - (geometry.source_to_isocenter_mm - half[:, None])) / (2.0 * half[:, None])
    return grid.float(), t.clamp(0.0, 1.0).float()


def backproject(
    feature_maps: torch.Tensor, geometry: ProjectionGeometry, grid_size: Sequence[int], fov_mm: Sequence[float]
) -> torch.Tensor:
    """Smear each view's detector-resolution image back along its rays: ``(B, V, C, H, W)`` -> ``(B, V, C, X, Y, Z)``.

    A voxel outside a view's field gets 0.
    """
    grid, _ = _sampling(geometry, grid_size, fov_mm)
    return _sample(feature_maps, grid.to(feature_maps.device)).unflatten(-1, tuple(grid_size))


def _sample(maps: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Bilinear samples of ``(B, V, C, h, w)`` maps at ``(V, N, 2)`` coordinates -> ``(B, V, C, N)`` float32.

    Sampling runs in float32 even under bf16 autocast: a bf16 coordinate is off by up to a tenth of a map pixel.
    """
    b, v = maps.shape[:2]
    with torch.autocast(device_type=maps.device.type, enabled=False):
        out = [
            F.grid_sample(maps[:, i].float(), grid[i][None, :, None].expand(b, -1, -1, -1).float(), align_corners=False)
            for i in range(v)
        ]  # V x (B, C, N, 1)
    return torch.stack(out, dim=1)[..., 0]


class DepthLifting(nn.Module):
    """Lift the encoder's view feature maps into one stage's grid, optionally fused with the previous stage.

    ``lifted(x) = Σ_v m_v · value_v(u_v(x)) · Σ_r softmax(depth_net_v(u_v(x)))_r · prior_r(t_v(x)) / Σ_v m_v``, with
    ``u_v(x)`` the detector point of voxel ``x`` in view ``v``, ``t_v(x)`` its depth fraction along the beam and
    ``m_v`` the view mask. With a previous stage, ``[lifted, previous volume]`` go through a 3×3×3 conv on the
    lifting grid (the previous volume must already be resampled onto this stage's field of view).

    The lifting runs on ``lift_size`` (default: the stage grid capped at 64 per axis) and is upsampled trilinearly
    to the stage grid: the feature maps are a fraction of the detector resolution, so lifting at 256³ or
    512 × 512 × 604 would only interpolate them further at a large memory cost.

    Args:
        geometry: the projection geometry (the renderer's).
        grid_size: the stage grid ``(X, Y, Z)``; fov_mm: its field of view (mm, cubic or per axis).
        lift_size: the grid the back-projection is evaluated on (same field of view).
        feature_stride: detector pixels per feature-map pixel (the encoder's ``feature_stride``).
        feature_channels: channels of the encoder's feature maps.
        out_channels: channels of the lifted volume.
        prev_channels: channels of the previous stage's volume (0: first stage).
        hidden: width of the depth-weight network.
        priors: the region priors (default thirds).
    """

    def __init__(
        self,
        geometry: ProjectionGeometry,
        grid_size: Sequence[int],
        fov_mm: float | Sequence[float],
        feature_channels: int,
        out_channels: int = 8,
        prev_channels: int = 0,
        hidden: int = 32,
        priors: ResolutionDepthPriors | None = None,
        lift_size: Sequence[int] | None = None,
        feature_stride: int = 4,
    ) -> None:
        super().__init__()
        fov = (float(fov_mm),) * 3 if isinstance(fov_mm, (int, float)) else tuple(map(float, fov_mm))
        self.grid_size, self.fov_mm = tuple(int(g) for g in grid_size), fov
        self.lift_size = tuple(min(g, 64) for g in self.grid_size) if lift_size is None else tuple(map(int, lift_size))
        self.priors = priors or ResolutionDepthPriors()
        grid, t = _sampling(geometry, self.lift_size, fov, feature_stride)
        # Geometry-only buffers, rebuilt from the config: not saved in checkpoints.
        self.register_buffer("sample_grid", grid, persistent=False)  # (V, N, 2)
        self.register_buffer("prior_weights", self.priors.weights(t), persistent=False)  # (3, V, N)
        self.depth_net = nn.Sequential(
            nn.Conv2d(feature_channels, hidden, 3, padding=1), nn.SiLU(), nn.Conv2d(hidden, 3, 1)
        )
        self.value = nn.Conv2d(feature_channels, out_channels, 1)
        self.fuse = nn.Conv3d(out_channels + prev_channels, out_channels, 3, padding=1) if prev_channels > 0 else None
        self.out_channels, self.prev_channels = out_channels, prev_channels

    def forward(self, encoding: XrayEncoding, previous: torch.Tensor | None = None) -> torch.Tensor:
        """``previous``: ``(B, 1, ...)`` the previous stage's volume on this stage's field of view (any grid)."""
        maps = encoding.feature_maps  # (B, V, C_f, h, w)
        b, v = maps.shape[:2]
        logits = self.depth_net(maps.flatten(0, 1)).unflatten(0, (b, v))  # (B, V, 3, h, w)
        values = self.value(maps.flatten(0, 1)).unflatten(0, (b, v))  # (B, V, C_o, h, w)
        region = torch.softmax(_sample(logits, self.sample_grid), dim=2)  # (B, V, 3, N)
        weight = (region * self.prior_weights.permute(1, 0, 2)[None]).sum(2)  # (B, V, N)
        mask = encoding.view_mask.to(weight.dtype)[:, :, None]  # (B, V, 1)
        lifted = (_sample(values, self.sample_grid) * (weight * mask)[:, :, None]).sum(1)  # (B, C_o, N)
        lifted = (lifted / mask.sum(1, keepdim=True)).unflatten(-1, self.lift_size).to(maps.dtype)  # (B, C_o, x, y, z)
        if self.fuse is not None:
            if previous is None:
                raise ValueError("previous: this stage lifts with the previous stage's volume, got None.")
            # Fused on the lifting grid: at 256³ or 512 x 512 x 604 a full-resolution conv would dominate memory.
            previous = F.interpolate(previous.to(lifted.dtype), size=self.lift_size, mode="trilinear")
            lifted = self.fuse(torch.cat([lifted, previous], dim=1))  # (B, C_o, x, y, z)
        if self.lift_size != self.grid_size:
            lifted = F.interpolate(lifted, size=self.grid_size, mode="trilinear", align_corners=False)
        return lifted  # (B, C_o, X, Y, Z)
