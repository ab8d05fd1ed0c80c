"""Ellipsoid phantoms with closed-form line integrals: ground truth for the renderer and a demo volume.

A phantom is a list of axis-aligned ellipsoids, each adding a constant attenuation ``value`` (1/mm, may be
negative to carve a cavity) inside ``Σ ((x − c)/a)² ≤ 1``. Its line integral along a ray is the sum over
ellipsoids of ``value × chord length``, with the chord from the quadratic ``|(o + t·d − c)/a|² = 1``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch

__all__ = ["Ellipsoid", "ellipsoid_line_integrals", "voxelize_ellipsoids"]


@dataclass(frozen=True)
class Ellipsoid:
    """Axis-aligned ellipsoid in RAS mm (isocentre at the origin).

    Attributes:
        center_mm: ``(x, y, z)`` centre.
        semi_axes_mm: ``(a, b, c)`` semi-axes along x, y, z.
        value: attenuation added inside, 1/mm.
    """

    center_mm: tuple[float, float, float]
    semi_axes_mm: tuple[float, float, float]
    value: float

    def __post_init__(self) -> None:
        if len(self.center_mm) != 3 or len(self.semi_axes_mm) != 3:
            raise ValueError(f"Ellipsoid needs 3 centre and 3 semi-axis values, got {self}.")
        if min(self.semi_axes_mm) <= 0:
            raise ValueError(f"Ellipsoid semi_axes_mm must be positive, got {self.semi_axes_mm}.")

    @classmethod
    def from_config(cls, item: Ellipsoid | Mapping) -> Ellipsoid:
        """Build from a YAML mapping with keys ``center_mm``, ``semi_axes_mm``, ``value``."""
        if isinstance(item, Ellipsoid):
            return item
        return cls(tuple(map(float, item["center_mm"])), tuple(map(float, item["semi_axes_mm"])), float(item["value"]))


def _ellipsoids(items: Iterable) -> list[Ellipsoid]:
    return [Ellipsoid.from_config(e) for e in items]


def ellipsoid_line_integrals(
    ellipsoids: Iterable[Ellipsoid | Mapping],
    origins: torch.Tensor,
    directions: torch.Tensor,
    lengths: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact line integrals of an ellipsoid phantom along rays (float64).

    Args:
        ellipsoids: the phantom.
        origins, directions: ``(..., 3)`` ray starts (mm) and unit directions.
        lengths: ``(...)`` ray lengths in mm; chords are clipped to ``[0, length]``.

    Returns:
        ``(line_integral, chords)``: ``(...)`` dimensionless integrals and ``(N, ...)`` chord lengths in mm per
        ellipsoid.
    """
    o, d, t_max = origins.double(), directions.double(), lengths.double()
    integral = torch.zeros(o.shape[:-1], dtype=torch.float64, device=o.device)
    chords = []
    for e in _ellipsoids(ellipsoids):
        c = torch.tensor(e.center_mm, dtype=torch.float64, device=o.device)
        a = torch.tensor(e.semi_axes_mm, dtype=torch.float64, device=o.device)
        oo, dd = (o - c) / a, d / a
        qa = (dd * dd).sum(-1)
        qb = (oo * dd).sum(-1)
        qc = (oo * oo).sum(-1) - 1.0
        disc = torch.clamp(qb * qb - qa * qc, min=0.0).sqrt()
        t0 = (-qb - disc) / qa
        t1 = (-qb + disc) / qa
        chord = torch.clamp(torch.minimum(t1, t_max) - torch.clamp(t0, min=0.0), min=0.0)
        chords.append(chord)
        integral = integral + e.value * chord
    return integral, torch.stack(chords)


def voxelize_ellipsoids(
    ellipsoids: Iterable[Ellipsoid | Mapping],
    shape: Sequence[int],
    spacing_mm: Sequence[float],
    supersample: int = 4,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Voxelise a phantom with partial-volume weights: each voxel holds its mean attenuation (1/mm).

    The fraction of a voxel inside an ellipsoid is estimated on a ``supersample³`` grid of sub-voxel centres,
    so boundary voxels carry fractional values and line integrals converge to the continuous ones.

    Args:
        ellipsoids: the phantom.
        shape: ``(X, Y, Z)`` voxels, RAS axes, centred on the isocentre.
        spacing_mm: ``(sx, sy, sz)`` in mm.
        supersample: sub-samples per voxel edge.

    Returns:
        ``(X, Y, Z)`` attenuation in 1/mm.
    """
    items = _ellipsoids(ellipsoids)
    n = int(supersample)
    if n < 1:
        raise ValueError(f"supersample must be a positive integer, got {supersample!r}.")
    axes = []
    for size, s in zip(shape, spacing_mm, strict=True):
        centres = (torch.arange(size, dtype=torch.float64) - (size - 1) / 2.0) * s
        axes.append(centres)
    offsets = (torch.arange(n, dtype=torch.float64) + 0.5) / n - 0.5  # sub-voxel offsets in voxel units
    volume = torch.zeros(tuple(shape), dtype=torch.float64)
    for e in items:
        c = torch.tensor(e.center_mm, dtype=torch.float64)
        a = torch.tensor(e.semi_axes_mm, dtype=torch.float64)
        frac = torch.zeros_like(volume)
        for ox in offsets:
            qx = ((axes[0] + ox * spacing_mm[0] - c[0]) / a[0]) ** 2  # (X,)
            for oy in offsets:
                qy = ((axes[1] + oy * spacing_mm[1] - c[1]) / a[1]) ** 2  # (Y,)
                qxy = qx[:, None, None] + qy[None, :, None]
                for oz in offsets:
                    qz = ((axes[2] + oz * spacing_mm[2] - c[2]) / a[2]) ** 2  # (Z,)
                    frac += (qxy + qz[None, None, :] <= 1.0).double()
        volume += e.value * frac / n**3
    return volume.to(dtype)
