"""Between the millimetre geometry and the voxel grid: boxes, voxel coordinates, the world lattice the trees fill,
and the partial-volume rasterisers.

Branches thicker than half a voxel are rasterised as partial-volume tubes (:func:`rasterise`:
:meth:`Canvas.tube_fraction`'s occupancy, batched, so the thousands of short tree segments take one numpy pass per
window size); thinner ones are sampled along their axis and splatted with their true cross-section (:func:`splat`),
so a 0.3 mm twig raises its voxel by its real volume share instead of vanishing or looking a voxel wide.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from ..canvas import Canvas

__all__ = ["Lattice", "bbox", "blend_box", "patient_coords", "polyline_box", "rasterise", "splat", "union"]


# ---- boxes and coordinates -------------------------------------------------------------------------------------------
def bbox(mask: np.ndarray) -> tuple[slice, slice, slice] | None:
    """Slices of the smallest box holding ``mask`` (None when empty)."""
    out = []
    for axis in range(3):
        any_ = np.nonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))[0]
        if len(any_) == 0:
            return None
        out.append(slice(int(any_[0]), int(any_[-1]) + 1))
    return tuple(out)


class Lattice:
    """A world-aligned lattice of ``step`` mm over the box ``sl``: ``index[axis]`` are the box voxels nearest to its
    nodes, so a tree grown on it is the same (to half a voxel) whatever the grid."""

    def __init__(self, canvas: Canvas, sl: tuple[slice, slice, slice], step: float) -> None:
        self.canvas, self.sl, self.step = canvas, sl, step
        self.index, self.origin = [], []
        for ax in range(3):
            world = canvas.axes[ax][sl[ax]]
            nodes = np.arange(math.ceil(world[0] / step), math.floor(world[-1] / step) + 1) * step
            if len(nodes) == 0:
                nodes = np.array([0.5 * (world[0] + world[-1])])
            idx = np.rint((nodes - world[0]) / canvas.spacing[ax]).astype(np.int64)
            self.index.append(np.clip(idx, 0, len(world) - 1))
            self.origin.append(float(nodes[0]))

    def depth_lookup(self, mask: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
        """A function giving the depth (mm) of patient-frame points below the surface of ``mask`` (on the lattice)."""
        from scipy import ndimage

        edt = ndimage.distance_transform_edt(np.pad(mask, 1), sampling=self.step)[1:-1, 1:-1, 1:-1].astype(np.float32)

        def depth(points: np.ndarray) -> np.ndarray:
            w = self.canvas.to_world(points)
            idx = [
                np.clip(np.rint((w[:, ax] - self.origin[ax]) / self.step).astype(np.int64), 0, edt.shape[ax] - 1)
                for ax in range(3)
            ]
            return edt[idx[0], idx[1], idx[2]]

        return depth


def union(a: tuple[slice, ...], b: tuple[slice, ...]) -> tuple[slice, slice, slice]:
    return tuple(slice(min(p.start, q.start), max(p.stop, q.stop)) for p, q in zip(a, b, strict=True))


def polyline_box(canvas: Canvas, lines: list[tuple[np.ndarray, np.ndarray]]) -> tuple[slice, slice, slice]:
    """World-grid slices covering tubes ``[(points, radii), ...]`` (clipped to the grid)."""
    pts = np.concatenate([p for p, _ in lines])
    reach = max(float(np.max(r)) for _, r in lines) + canvas.voxel_mm
    sl, _ = canvas.box(pts.min(axis=0) - reach, pts.max(axis=0) + reach)
    return tuple(slice(min(q.start, n), min(max(q.stop, q.start), n)) for q, n in zip(sl, canvas.shape, strict=True))


def patient_coords(
    canvas: Canvas, sl: tuple[slice, slice, slice], i: np.ndarray, j: np.ndarray, k: np.ndarray
) -> np.ndarray:
    """Patient-frame ``(N, 3)`` mm of voxels ``(i, j, k)`` given in the box ``sl``."""
    return canvas.patient_points(i + sl[0].start, j + sl[1].start, k + sl[2].start)


# ---- rasterisation -------------------------------------------------------------------------------------------------
_BATCH_SIZES = (4, 6, 8, 12, 16)  # voxel windows of the batched rasteriser; longer segments use Canvas.tube_fraction


def rasterise(canvas: Canvas, lines: list[tuple[np.ndarray, np.ndarray]], out: np.ndarray) -> int:
    """Partial-volume occupancy of tubes ``[(points (P, 3), radii (P,)), ...]`` max-combined into ``out`` (grid
    shape): :meth:`Canvas.tube_fraction`'s occupancy, but the thousands of short tree segments are done in batches
    of equal window size (one numpy pass each) instead of one at a time. Returns the number of segments."""
    if not lines:
        return 0
    a = np.concatenate([p[:-1] for p, _ in lines])
    b = np.concatenate([p[1:] for p, _ in lines])
    ra = np.concatenate([np.broadcast_to(np.asarray(r, dtype=np.float64), (len(p),))[:-1] for p, r in lines])
    rb = np.concatenate([np.broadcast_to(np.asarray(r, dtype=np.float64), (len(p),))[1:] for p, r in lines])
    wa, wb = canvas.to_world(a), canvas.to_world(b)
    h = canvas.voxel_mm
    reach = np.maximum(ra, rb) + h
    start, stop = [], []
    for ax in range(3):  # the voxel range of each segment's bounding box (as Canvas.tube_fraction takes it)
        axis = canvas.axes[ax]
        start.append(np.searchsorted(axis, np.minimum(wa[:, ax], wb[:, ax]) - reach))
        stop.append(np.searchsorted(axis, np.maximum(wa[:, ax], wb[:, ax]) + reach, side="right"))
    extent = np.max([s1 - s0 for s0, s1 in zip(start, stop, strict=True)], axis=0)
    empty = np.min([s1 - s0 for s0, s1 in zip(start, stop, strict=True)], axis=0) <= 0
    size_class = np.searchsorted(np.asarray(_BATCH_SIZES), extent)
    flat_out = out.reshape(-1)
    for c, k in enumerate(_BATCH_SIZES):
        sel = np.nonzero((size_class == c) & ~empty)[0]
        if len(sel):
            _tube_batch(
                canvas, wa[sel], wb[sel], ra[sel], rb[sel], [s[sel] for s in start], [s[sel] for s in stop], k, flat_out
            )
    for i in np.nonzero((size_class == len(_BATCH_SIZES)) & ~empty)[0]:  # long or wide: one at a time
        canvas.tube_fraction(np.stack([a[i], b[i]]), [ra[i], rb[i]], out=out)
    return len(a)


def _tube_batch(
    canvas: Canvas,
    wa: np.ndarray,
    wb: np.ndarray,
    ra: np.ndarray,
    rb: np.ndarray,
    start: list[np.ndarray],
    stop: list[np.ndarray],
    k: int,
    flat_out: np.ndarray,
) -> None:
    """Occupancy ``clip((r − d)/h + ½, 0, 1)`` of segments (world mm) in ``k``-voxel windows, max-combined."""
    shape = canvas.shape
    q, valid, index = [], None, None
    for ax in range(3):
        idx = start[ax][:, None] + np.arange(k)[None, :]  # (S, k)
        ok = idx < stop[ax][:, None]
        idx = np.minimum(idx, shape[ax] - 1)
        coord = canvas.axes[ax][idx] - wa[:, ax : ax + 1].astype(np.float32)
        view = [slice(None), None, None, None]
        view[1 + ax] = slice(None)
        q.append(coord[tuple(view)])
        ok = ok[tuple(view)]
        valid = ok if valid is None else valid & ok
        idx = idx[tuple(view)]
        index = idx if index is None else index * shape[ax] + idx
    d = (wb - wa).astype(np.float32)
    length2 = np.maximum((d.astype(np.float64) ** 2).sum(axis=1), 1e-6).astype(np.float32)
    dx, dy, dz = (d[:, i, None, None, None] for i in range(3))
    t = np.clip((q[0] * dx + q[1] * dy + q[2] * dz) / length2[:, None, None, None], 0.0, 1.0)
    dist = np.sqrt((q[0] - t * dx) ** 2 + (q[1] - t * dy) ** 2 + (q[2] - t * dz) ** 2)
    r = ra.astype(np.float32)[:, None, None, None] + t * (rb - ra).astype(np.float32)[:, None, None, None]
    frac = np.clip((r - dist) / np.float32(canvas.voxel_mm) + np.float32(0.5), 0.0, 1.0)
    hit = valid & (frac > 0.0)
    np.maximum.at(flat_out, index[hit], frac[hit])


def splat(canvas: Canvas, sl: tuple[slice, slice, slice], rows: np.ndarray) -> np.ndarray:
    """Partial-volume fraction (box ``sl``) of thin tubes ``rows (M, 8)`` = (a, b, r_a, r_b): each is sampled every
    half voxel and its cross-section × length is spread trilinearly over the nearest voxels, so a vessel far thinner
    than a voxel raises it by its true volume share (a faint line), as the scanner would see it."""
    shape = tuple(s_.stop - s_.start for s_ in sl)
    a, b, ra, rb = rows[:, :3], rows[:, 3:6], rows[:, 6], rows[:, 7]
    step = 0.5 * min(canvas.spacing)
    length = np.linalg.norm(b - a, axis=1)
    n = np.maximum(np.ceil(length / step).astype(np.int64), 1)
    seg = np.repeat(np.arange(len(rows)), n)
    first = np.cumsum(n) - n
    t = (np.arange(int(n.sum())) - first[seg] + 0.5) / n[seg]
    pos = a[seg] + t[:, None] * (b - a)[seg]
    r = ra[seg] + t * (rb - ra)[seg]
    vol = math.pi * r * r * (length / n)[seg] / float(np.prod(canvas.spacing))
    w = canvas.to_world(pos)
    acc = np.zeros(int(np.prod(shape)), dtype=np.float64)
    ci = [(w[:, ax] - canvas.axes[ax][0]) / canvas.spacing[ax] - sl[ax].start for ax in range(3)]
    i0 = [np.floor(c).astype(np.int64) for c in ci]
    fr = [c - i for c, i in zip(ci, i0, strict=True)]
    for corner in range(8):
        off = [(corner >> ax) & 1 for ax in range(3)]
        idx = [i0[ax] + off[ax] for ax in range(3)]
        wgt = vol.copy()
        ok = np.ones(len(vol), dtype=bool)
        for ax in range(3):
            wgt *= fr[ax] if off[ax] else 1.0 - fr[ax]
            ok &= (idx[ax] >= 0) & (idx[ax] < shape[ax])
        flat = (idx[0][ok] * shape[1] + idx[1][ok]) * shape[2] + idx[2][ok]
        acc += np.bincount(flat, wgt[ok], minlength=len(acc))
    return acc.reshape(shape).astype(np.float32)


def blend_box(canvas: Canvas, sl: tuple[slice, slice, slice], frac: np.ndarray, hu: float, label: int) -> None:
    """:meth:`Canvas.blend` restricted to the box ``sl`` (``frac`` has the box's shape)."""
    hub, labb = canvas.hu[sl], canvas.labels[sl]
    touched = frac > 0.0
    hub[touched] += frac[touched] * (np.float32(hu) - hub[touched])
    labb[frac >= 0.5] = label
