"""Shared bone-painting helpers of the skeleton (paints nothing itself).

Geometry (signed distances, partial-volume fractions, polyline resampling and smoothing, the normals of the chest
wall), :class:`Tube` (a polyline with elliptic cross-sections) and :class:`Shape` (a structure's outer and core
occupancies in its bounding box, mixed into the canvas as cortical shell and trabecular core), :class:`Texture`
(grid-independent trabecular texture and calcification spots) and the age-dependent cortical CT number.

Work is confined to each structure's bounding box (:meth:`Canvas.box`); tubes are painted by their partial-volume
fraction segment by segment, like :meth:`Canvas.tube_fraction`, but with elliptic (flattened) cross-sections, a core
for the cortical shell and box-local accumulation, so a cortex thinner than a voxel still raises the voxel's CT number.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ..canvas import Canvas
from ..patient import Patient

__all__ = [
    "Knots",
    "Shape",
    "Texture",
    "Tube",
    "chaikin",
    "cortex_hu",
    "ellipsoid_sd",
    "fraction",
    "knot",
    "outward_normals",
    "resample",
    "unit",
]

Knots = dict[float, float]


def knot(i: float, knots: Knots) -> float:
    keys = sorted(knots)
    return float(np.interp(i, keys, [knots[k] for k in keys]))


# ---- geometry helpers ------------------------------------------------------------------------------------------------
def ellipsoid_sd(
    u: np.ndarray, v: np.ndarray, w: np.ndarray | float, ru, rv, rw: float | np.ndarray = 1.0e9
) -> np.ndarray:
    """Approximate signed distance (mm) to the ellipsoid ``(u/ru)² + (v/rv)² + (w/rw)² = 1``: ``(ρ − 1)/|∇ρ|``,
    exact on the surface and good to a fraction of a voxel within a voxel of it (all partial volume needs)."""
    qu, qv, qw = u / ru, v / rv, w / rw
    rho2 = qu * qu + qv * qv + qw * qw
    grad = np.sqrt((qu / ru) ** 2 + (qv / rv) ** 2 + (qw / rw) ** 2)
    rho = np.sqrt(rho2)
    eps = np.float32(1e-3)
    # (ρ − 1)·ρ/|ρ∇ρ| with a tiny ε so the centre (ρ = 0) reads deep inside rather than 0/0.
    return (rho - 1.0) * (rho + eps) / (grad + eps / np.maximum(np.maximum(ru, rv), 1.0))


def fraction(sd: np.ndarray, h: float) -> np.ndarray:
    """Partial-volume occupancy of a voxel of size ``h`` at signed distance ``sd`` (the canvas's convention)."""
    return np.clip(np.float32(0.5) - sd / np.float32(h), 0.0, 1.0)


def unit(v: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(v, axis=-1, keepdims=True)
    return v / np.maximum(n, 1e-9)


def resample(points: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` points evenly spaced along a polyline and their arc-length share in [0, 1]."""
    seg = np.linalg.norm(np.diff(points, axis=0), axis=1)
    s = np.concatenate([[0.0], np.cumsum(seg)])
    t = np.linspace(0.0, s[-1], n)
    out = np.stack([np.interp(t, s, points[:, i]) for i in range(3)], axis=1)
    return out, t / max(s[-1], 1e-9)


def chaikin(points: np.ndarray, iterations: int = 2) -> np.ndarray:
    """Corner-cutting smoothing that keeps the end points (smooth rib necks and joins)."""
    p = points
    for _ in range(iterations):
        q = 0.75 * p[:-1] + 0.25 * p[1:]
        r = 0.25 * p[:-1] + 0.75 * p[1:]
        p = np.concatenate([p[:1], np.stack([q, r], axis=1).reshape(-1, 3), p[-1:]])
    return p


def outward_normals(points: np.ndarray, centre_y: float) -> np.ndarray:
    """Horizontal unit normals of a polyline pointing away from the body axis ``(0, centre_y)``: the direction the
    flat faces of a rib or cartilage look (inwards to the lung / outwards to the muscles)."""
    t = np.gradient(points, axis=0)
    n = np.stack([t[:, 1], -t[:, 0], np.zeros(len(points))], axis=1)
    radial = np.stack([points[:, 0], points[:, 1] - centre_y, np.zeros(len(points))], axis=1)
    n *= np.where(np.sum(n * radial, axis=1, keepdims=True) < 0, -1.0, 1.0)
    return unit(n)


# ---- partial-volume painting -----------------------------------------------------------------------------------------
@dataclass
class Tube:
    """A polyline with per-point cross-section half sizes: ``rn`` along ``normals``, ``rb`` across (circular when
    ``normals`` is None)."""

    points: np.ndarray
    rn: np.ndarray
    rb: np.ndarray
    normals: np.ndarray | None = None

    @staticmethod
    def make(points, rn, rb=None, normals=None) -> Tube:
        p = np.asarray(points, dtype=np.float64)
        rn_ = np.broadcast_to(np.asarray(rn, dtype=np.float64), (len(p),)).copy()
        rb_ = rn_.copy() if rb is None else np.broadcast_to(np.asarray(rb, dtype=np.float64), (len(p),)).copy()
        nrm = None if normals is None else np.broadcast_to(np.asarray(normals, dtype=np.float64), p.shape).copy()
        return Tube(p, rn_, rb_, nrm)

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        r = float(max(self.rn.max(), self.rb.max()))
        return self.points.min(axis=0) - r, self.points.max(axis=0) + r


class Shape:
    """Outer and core partial-volume occupancies of one structure in its bounding box, painted in one go so joined
    parts (a pedicle into its body) have no cortex inside them."""

    def __init__(self, canvas: Canvas, lo: Sequence[float], hi: Sequence[float]) -> None:
        h = canvas.voxel_mm
        self.canvas = canvas
        self.sl, self.coords = canvas.box(np.asarray(lo) - h, np.asarray(hi) + h)
        self.shape = tuple(s.stop - s.start for s in self.sl)
        self.empty = min(self.shape) == 0
        self.outer = np.zeros(self.shape, dtype=np.float32)
        self.core = np.zeros(self.shape, dtype=np.float32)
        self.axes = [canvas.axes[i][self.sl[i]] for i in range(3)]

    def add(self, outer_sd: np.ndarray, core_sd: np.ndarray | None = None, where: np.ndarray | None = None) -> None:
        """Add an implicit part from its signed distances (box-shaped or broadcastable)."""
        h = self.canvas.voxel_mm
        fo = fraction(outer_sd, h)
        if where is not None:
            fo = fo * where
        np.maximum(self.outer, fo, out=self.outer)
        if core_sd is not None:
            fi = fraction(core_sd, h)
            if where is not None:
                fi = fi * where
            np.maximum(self.core, fi, out=self.core)

    def add_tube(self, tube: Tube, shell: float | None) -> None:
        """Add a tube segment by segment (each in its own small box); ``shell`` None: no core (solid)."""
        if self.empty:
            return
        canvas, h = self.canvas, np.float32(self.canvas.voxel_mm)
        pts = canvas.to_world(tube.points)
        nrm = None if tube.normals is None else canvas.to_world(tube.normals) - canvas.shift
        for j in range(len(pts) - 1):
            a, b = pts[j], pts[j + 1]
            reach = max(tube.rn[j], tube.rn[j + 1], tube.rb[j], tube.rb[j + 1]) + float(h)
            sl = []
            for axis in range(3):
                ax = self.axes[axis]
                i0 = int(np.searchsorted(ax, min(a[axis], b[axis]) - reach))
                i1 = int(np.searchsorted(ax, max(a[axis], b[axis]) + reach, side="right"))
                sl.append(slice(i0, i1))
            if any(s.start >= s.stop for s in sl):
                continue
            qx = self.axes[0][sl[0]][:, None, None] - np.float32(a[0])
            qy = self.axes[1][sl[1]][None, :, None] - np.float32(a[1])
            qz = self.axes[2][sl[2]][None, None, :] - np.float32(a[2])
            d = b - a
            length = float(np.linalg.norm(d))
            if length < 1e-6:
                d, length = np.array([0.0, 0.0, 1e-6]), 1e-6
            e = d / length
            tpar = qx * np.float32(e[0]) + qy * np.float32(e[1]) + qz * np.float32(e[2])  # mm along the axis
            tc = np.clip(tpar, 0.0, np.float32(length))
            frac = tc / np.float32(length)
            rn = np.float32(tube.rn[j]) + frac * np.float32(tube.rn[j + 1] - tube.rn[j])
            if nrm is None:
                dist = np.sqrt(
                    (qx - tc * np.float32(e[0])) ** 2
                    + (qy - tc * np.float32(e[1])) ** 2
                    + (qz - tc * np.float32(e[2])) ** 2
                )
                sd_o = dist - rn
                sd_i = None if shell is None else sd_o + np.float32(shell)
            else:
                n = nrm[j] + nrm[j + 1]
                n = n - (n @ e) * e
                if np.linalg.norm(n) < 1e-6:  # normal along the axis: any perpendicular will do
                    n = np.cross(e, [0.0, 0.0, 1.0]) if abs(e[2]) < 0.9 else np.cross(e, [1.0, 0.0, 0.0])
                n = n / np.linalg.norm(n)
                bv = np.cross(e, n)
                rb = np.float32(tube.rb[j]) + frac * np.float32(tube.rb[j + 1] - tube.rb[j])
                un = qx * np.float32(n[0]) + qy * np.float32(n[1]) + qz * np.float32(n[2])
                ub = qx * np.float32(bv[0]) + qy * np.float32(bv[1]) + qz * np.float32(bv[2])
                ut = tpar - tc  # beyond the ends: rounded caps
                rc = np.minimum(rn, rb)
                sd_o = ellipsoid_sd(un, ub, ut, rn, rb, rc)
                if shell is None:
                    sd_i = None
                else:
                    sh = np.float32(shell)
                    lo = np.float32(0.3)
                    sd_i = ellipsoid_sd(
                        un, ub, ut, np.maximum(rn - sh, lo), np.maximum(rb - sh, lo), np.maximum(rc - sh, lo)
                    )
            view = (sl[0], sl[1], sl[2])
            fo = fraction(sd_o, h)
            np.maximum(self.outer[view], fo, out=self.outer[view])
            if sd_i is not None:
                np.maximum(self.core[view], fraction(sd_i, h), out=self.core[view])

    def paint(
        self,
        shell_hu: float | Callable[..., np.ndarray],
        core_hu: float | Callable[..., np.ndarray],
        label: int | None,
    ) -> None:
        """Mix into the canvas: a voxel holds ``core`` of core tissue, ``outer − core`` of shell and keeps the rest
        of what was there; the label goes where the structure fills at least half the voxel. Callables get the
        patient coordinates ``(x, y, z)`` of the touched voxels and return their CT numbers."""
        if self.empty:
            return
        hu, lab = self.canvas.hu[self.sl], self.canvas.labels[self.sl]
        outer = self.outer
        touched = outer > 0.0
        if not touched.any():
            return
        fo = outer[touched]
        fi = np.minimum(self.core[touched], fo)
        pts = None
        if callable(shell_hu) or callable(core_hu):
            pts = [np.broadcast_to(c, self.shape)[touched] for c in self.coords]
        sh = shell_hu(*pts) if callable(shell_hu) else np.float32(shell_hu)
        co = core_hu(*pts) if callable(core_hu) else np.float32(core_hu)
        base = hu[touched]
        hu[touched] = base + fo * (sh - base) + fi * (co - sh)
        if label is not None:
            lab[outer >= 0.5] = label


class Texture:
    """A smooth random field in the patient frame (a sum of random plane waves): trabecular texture and calcification
    spots that do not depend on the grid, so every resolution shows the same bone. Each wave is attenuated by the
    voxel's averaging (``sinc`` per axis, as partial volume does), so waves finer than a voxel fade instead of
    aliasing into stripes."""

    def __init__(self, rng: np.random.Generator, wavelength_mm: tuple[float, float], waves: int = 6) -> None:
        direction = unit(rng.standard_normal((waves, 3)))
        k = 2.0 * math.pi / rng.uniform(*wavelength_mm, waves)
        self.k = (direction * k[:, None]).astype(np.float32)
        self.phase = rng.uniform(0.0, 2.0 * math.pi, waves).astype(np.float32)
        self.norm = np.float32(math.sqrt(2.0 / waves))
        self.gain = np.ones(waves, dtype=np.float32)

    def on(self, canvas: Canvas) -> Texture:
        """This texture as ``canvas``'s voxels see it (band-limited to its spacing)."""
        out = Texture.__new__(Texture)
        out.k, out.phase, out.norm = self.k, self.phase, self.norm
        h = np.asarray(canvas.spacing, dtype=np.float64)
        out.gain = np.prod(np.sinc(self.k * h[None, :] / (2.0 * math.pi)), axis=1).astype(np.float32)
        return out

    def __call__(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        out = np.zeros(np.broadcast_shapes(np.shape(x), np.shape(y), np.shape(z)), dtype=np.float32)
        for k, ph, g in zip(self.k, self.phase, self.gain, strict=True):
            if abs(g) > 0.02:
                out += g * np.cos(k[0] * x + k[1] * y + k[2] * z + ph)
        return out * self.norm


def cortex_hu(patient: Patient, young: float) -> float:
    # Cortical bone loses less density with age than trabecular bone.
    return young * (0.55 + 0.45 * patient.bone_density)
