"""The phantom's voxel grid and the painting primitives every anatomy module uses.

Frames, both in millimetres, RAS (+x towards the patient's right, +y anterior, +z superior):

* **world** — the CT grid; its centre is the origin, voxel ``(i, j, k)`` sits at ``((i − (X−1)/2)·sx, …)``.
* **patient** — world rotated about z by the patient's ``yaw`` and moved by ``shift``: the anatomy is laid out in
  this frame, so a seed turns or moves the patient on the table without any organ code knowing.

Coordinates are broadcastable: ``px, py`` are ``(X, Y, 1)`` (``(X, 1, 1)``/``(1, Y, 1)`` without yaw), ``pz`` is
``(1, 1, Z)``. Thin structures (vessels, airways, cortices, ribs) are painted with their partial-volume fraction
(the share of a voxel a tube covers, from its distance to the axis), so a 1 mm vessel in a 2.5 mm voxel still
raises the voxel's CT number as it would in a real reconstruction.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["Canvas"]


class Canvas:
    """A CT grid being painted: HU, labels and the patient frame.

    Args:
        shape: ``(X, Y, Z)`` voxels.
        spacing: ``(sx, sy, sz)`` mm.
        yaw_deg: patient rotation about the superior axis, degrees (positive: the patient's right turns anterior).
        shift_mm: patient position ``(x, y, z)`` in world mm.
    """

    def __init__(
        self,
        shape: tuple[int, int, int],
        spacing: tuple[float, float, float],
        yaw_deg: float = 0.0,
        shift_mm: Sequence[float] = (0.0, 0.0, 0.0),
    ) -> None:
        self.shape, self.spacing = shape, spacing
        self.axes = [(np.arange(n, dtype=np.float32) - (n - 1) / 2.0) * s for n, s in zip(shape, spacing, strict=True)]
        self.yaw = math.radians(float(yaw_deg))
        self.shift = np.asarray(shift_mm, dtype=np.float64)
        wx = self.axes[0][:, None, None] - np.float32(self.shift[0])
        wy = self.axes[1][None, :, None] - np.float32(self.shift[1])
        c, s = np.float32(math.cos(self.yaw)), np.float32(math.sin(self.yaw))
        if self.yaw == 0.0:
            self.px, self.py = wx, wy
        else:  # world = R(yaw)·patient + shift, so patient = R(−yaw)·(world − shift)
            self.px, self.py = c * wx + s * wy, -s * wx + c * wy
        self.pz = self.axes[2][None, None, :] - np.float32(self.shift[2])
        self.voxel_mm = float(np.mean(spacing))
        self.hu = np.full(shape, -1000.0, dtype=np.float32)
        self.labels = np.zeros(shape, dtype=np.uint8)

    # ---- frames ---------------------------------------------------------------------------------------------------
    def to_world(self, points: np.ndarray) -> np.ndarray:
        """Patient-frame points ``(..., 3)`` mm -> world mm."""
        p = np.asarray(points, dtype=np.float64)
        c, s = math.cos(self.yaw), math.sin(self.yaw)
        x = c * p[..., 0] - s * p[..., 1]
        y = s * p[..., 0] + c * p[..., 1]
        return np.stack([x, y, p[..., 2]], axis=-1) + self.shift

    def patient_points(self, i: np.ndarray, j: np.ndarray, k: np.ndarray) -> np.ndarray:
        """Patient-frame ``(N, 3)`` mm of grid voxels ``(i, j, k)`` (index arrays or ints); ``px``/``py`` may be
        broadcast along an axis (no yaw), where any index reads the same value."""
        i, j, k = np.atleast_1d(i), np.atleast_1d(j), np.atleast_1d(k)
        px = self.px[i if self.px.shape[0] > 1 else 0, j if self.px.shape[1] > 1 else 0, 0]
        py = self.py[i if self.py.shape[0] > 1 else 0, j if self.py.shape[1] > 1 else 0, 0]
        pz = self.pz[0, 0, k]
        return np.column_stack([np.broadcast_to(px, i.shape), np.broadcast_to(py, i.shape), pz]).astype(np.float64)

    def z_slices(self, z_min: float, z_max: float) -> slice:
        """The k-range whose patient z lies in ``[z_min, z_max]`` (to restrict work to a structure's height)."""
        z = self.pz[0, 0]
        lo, hi = np.searchsorted(z, z_min), np.searchsorted(z, z_max, side="right")
        return slice(int(lo), int(max(lo, hi)))

    def box(self, lo: Sequence[float], hi: Sequence[float]) -> tuple[tuple[slice, slice, slice], tuple]:
        """World-grid slices covering the patient-frame box ``[lo, hi]`` (mm), and the patient coordinates there.

        Returns ``(slices, (px, py, pz))`` with the coordinates cut to the slices, so a structure's work is confined
        to its bounding box. Empty slices when the box misses the grid.
        """
        corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
        w = self.to_world(corners)
        sl = []
        for axis in range(3):
            ax = self.axes[axis]
            i0 = np.searchsorted(ax, w[:, axis].min() - self.spacing[axis])
            i1 = np.searchsorted(ax, w[:, axis].max() + self.spacing[axis], side="right")
            sl.append(slice(int(i0), int(max(i0, i1))))
        sx, sy, sz = sl
        px = self.px[sx, :, :][:, sy if self.px.shape[1] > 1 else slice(None), :]
        py = self.py[sx if self.py.shape[0] > 1 else slice(None), :, :][:, sy, :]
        return (sx, sy, sz), (px, py, self.pz[:, :, sz])

    def noise(
        self, rng: np.random.Generator, scale_mm: float, sl: tuple[slice, slice, slice] | None = None
    ) -> np.ndarray:
        """A smooth zero-mean, unit-variance random field with correlation length ``scale_mm`` (texture, density
        variation). Drawn on a coarse lattice of ``scale_mm / 2`` spacing, Gaussian-smoothed and interpolated, so its
        cost does not grow with the grid; ``sl`` (from :meth:`box`) limits it to a region."""
        from scipy import ndimage

        sl = sl or (slice(0, self.shape[0]), slice(0, self.shape[1]), slice(0, self.shape[2]))
        shape = tuple(s.stop - s.start for s in sl)
        step = max(scale_mm / 2.0, 1e-3)
        coarse = tuple(max(2, int(math.ceil(n * sp / step)) + 2) for n, sp in zip(shape, self.spacing, strict=True))
        field = ndimage.gaussian_filter(rng.standard_normal(coarse).astype(np.float32), 1.0, mode="wrap")
        field /= field.std() or 1.0
        if min(shape) == 0:
            return np.zeros(shape, dtype=np.float32)
        # Trilinear upsampling (torch's is separable and fast; map_coordinates costs ~10x more at 128³).
        up = torch.nn.functional.interpolate(
            torch.from_numpy(field)[None, None], size=shape, mode="trilinear", align_corners=True
        )
        return up[0, 0].numpy()

    # ---- shapes ---------------------------------------------------------------------------------------------------
    def ellipsoid(self, centre: Sequence[float], radii: Sequence[float]) -> np.ndarray:
        """Boolean mask of an axis-aligned (patient frame) ellipsoid."""
        return self.ellipsoid_value(centre, radii) <= 1.0

    def ellipsoid_value(self, centre: Sequence[float], radii: Sequence[float]) -> np.ndarray:
        """``Σ((p − c)/r)²``: 1 on the ellipsoid's surface, < 1 inside."""
        return (
            ((self.px - centre[0]) / radii[0]) ** 2
            + ((self.py - centre[1]) / radii[1]) ** 2
            + ((self.pz - centre[2]) / radii[2]) ** 2
        )

    def tube_fraction(
        self, points: np.ndarray, radii: float | Sequence[float], out: np.ndarray | None = None
    ) -> np.ndarray:
        """Partial-volume occupancy in [0, 1] of a tube around a patient-frame polyline ``points (P, 3)`` mm.

        ``radii`` is one radius or one per point (linear taper along each segment). Occupancy is
        ``clip((r − d)/h + ½, 0, 1)`` with ``d`` the distance to the axis and ``h`` the mean voxel size: the area
        share of a voxel crossed by a straight edge. Segments overlap at joints: the maximum is kept, so a joint is
        not counted twice. Only each segment's bounding box is computed. ``out`` (float32, grid shape) accumulates.
        """
        pts = self.to_world(np.asarray(points, dtype=np.float64))
        rad = np.broadcast_to(np.asarray(radii, dtype=np.float64), (len(pts),))
        occ = np.zeros(self.shape, dtype=np.float32) if out is None else out
        h = self.voxel_mm
        for a, b, ra, rb in zip(pts[:-1], pts[1:], rad[:-1], rad[1:], strict=True):
            reach = max(ra, rb) + h
            sl = []
            for axis in range(3):
                ax = self.axes[axis]
                i0 = np.searchsorted(ax, min(a[axis], b[axis]) - reach)
                i1 = np.searchsorted(ax, max(a[axis], b[axis]) + reach, side="right")
                sl.append(slice(int(i0), int(i1)))
            if any(s.start >= s.stop for s in sl):
                continue
            qx = self.axes[0][sl[0]][:, None, None] - np.float32(a[0])
            qy = self.axes[1][sl[1]][None, :, None] - np.float32(a[1])
            qz = self.axes[2][sl[2]][None, None, :] - np.float32(a[2])
            d = (b - a).astype(np.float32)
            length2 = float(d @ d) or 1e-6
            t = np.clip((qx * d[0] + qy * d[1] + qz * d[2]) / np.float32(length2), 0.0, 1.0)
            dist = np.sqrt((qx - t * d[0]) ** 2 + (qy - t * d[1]) ** 2 + (qz - t * d[2]) ** 2)
            r = np.float32(ra) + t * np.float32(rb - ra)
            frac = np.clip((r - dist) / np.float32(h) + 0.5, 0.0, 1.0)
            np.maximum(occ[sl[0], sl[1], sl[2]], frac, out=occ[sl[0], sl[1], sl[2]])
        return occ

    # ---- painting -------------------------------------------------------------------------------------------------
    def paint(self, mask: np.ndarray, hu: float | np.ndarray, label: int | None) -> None:
        """Set ``hu`` (a value or an array broadcast to the mask's voxels) and ``label`` where ``mask`` is true."""
        mask = np.broadcast_to(mask, self.shape)
        if isinstance(hu, np.ndarray) and hu.shape == self.shape:
            self.hu[mask] = hu[mask]
        else:
            self.hu[mask] = hu
        if label is not None:
            self.labels[mask] = label

    def blend(self, fraction: np.ndarray, hu: float, label: int | None, where: np.ndarray | None = None) -> None:
        """Mix ``hu`` in by a partial-volume ``fraction``; the label goes where the structure fills ≥ half a voxel.

        ``where`` confines it (e.g. vessels to the lungs).
        """
        f = fraction if where is None else fraction * where
        touched = f > 0.0
        self.hu[touched] += f[touched] * (np.float32(hu) - self.hu[touched])
        if label is not None:
            self.labels[f >= 0.5] = label
