"""The thoracic skeleton: spine, ribs and costal cartilages, sternum, clavicles, scapulae and humeral heads.

Painted after the soft organs (bones win where they overlap), in this order:

* **Paraspinal muscles** (``autochthon_left/right``, ≈ 50 HU, a little lower with age as fat infiltrates them):
  either side of the spinous processes, behind the transverse processes and laminae, under the subcutaneous fat.
* **Spine** C5–L2 following ``patient.spine_y`` (kyphosis). Vertebral bodies: elliptic, slightly waisted, with a
  posterior concavity facing the canal, growing caudally (``patient.vertebral_radius`` is T6's); a 1–1.3 mm cortical
  shell of ≈ 1000 HU (less with age) painted by partial volume, so it reads ≈ 500–700 HU at 2.5 mm as in real scans,
  round trabecular bone of ≈ 230 HU × ``bone_density`` (≈ 230 young, ≈ 110 osteoporotic) with a fine texture and a
  basivertebral vein. Discs ≈ 95 HU annulus / 75 HU nucleus (``intervertebral_discs``), anterior osteophytes with age.
  Posterior elements per level: pedicles, laminae, superior/inferior articular processes with a facet-joint gap,
  transverse processes and a spinous process pointing posteriorly-inferiorly (steepest mid-thoracic). Canal
  (≈ 16 mm thoracic, wider at C7 and L1–2) holding epidural fat (≈ −70 HU), CSF (≈ 8 HU) and the cord (≈ 35 HU,
  conus at L1), all labelled ``spinal_cord``. C5–C6 have no label of their own and keep the label under them.
* **Ribs** 1–12 each side (``rib_right_k`` at x > 0): from the costovertebral joint at T_k past the transverse
  process, round the chest wall on the body outline inset by :func:`_rib_inset` (the rib's inner surface ≈ 3 mm
  outside the parietal pleura at ``wall_mm``), descending anteriorly as far as the sternal attachments demand
  (≈ 40 mm for rib 1, ≈ 110–130 mm for ribs 6–8: real ribs lie ≈ 35–45° to the axial plane). Flattened cross-section
  (≈ 12–14 × 7 mm mid-rib; rib 1 broad and flat in the axial plane; 11–12 thin and tapering), cortex ≈ 850 HU ×
  (0.55 + 0.45 density), trabecular core ≈ 200 HU × density.
* **Costal cartilages** (``costal_cartilages``, ≈ 120 HU, hyaline cartilage): ribs 1–7 to the sternum, 8–10 to the
  cartilage above (the costal margin); calcification with age, marginal in men and central in women, as seen on CT.
* **Sternum** (``sternum``): manubrium (≈ 50 mm, up to 54 mm wide at the clavicular notches, with the jugular notch)
  and body down to ``z_xiphoid``, a fibrocartilaginous manubriosternal joint, and the xiphoid (cartilage ossifying
  with age); cortex + trabecular core; anterior midline just under the presternal fat.
* **Shoulder girdle**: S-shaped clavicles (``clavicula_*``) from the sternoclavicular joints to the acromion;
  scapulae (``scapula_*``): a 2–3 mm blade thickening at its borders, lying ≈ 6 mm behind the posterolateral ribs
  2–7, with the lateral border, spine, acromion, coracoid and glenoid; humeral heads (``humerus_*``, radius ≈ 22–25
  mm) in the glenoid with proximal shafts pointing laterally/upwards (arms raised, as in a chest CT), fatty marrow.
  Rotator-cuff/scapular muscle (``skeletal_muscle``) is added round them where nothing (or only fat) was painted.

All geometry is drawn from ``rng`` before anything is painted and is defined in millimetres in the patient frame, so
every grid (2.5 mm, 1.25 mm …) samples the same skeleton and the same rng state gives bit-identical volumes. Work is
confined to each structure's bounding box (:meth:`Canvas.box`); tubes are painted by their partial-volume fraction
segment by segment, like :meth:`Canvas.tube_fraction`, but with elliptic (flattened) cross-sections, a core for the
cortical shell and box-local accumulation, so a cortex thinner than a voxel still raises the voxel's CT number.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from .canvas import Canvas
from .labels import PHANTOM_LABELS as L
from .patient import Patient, VertebraLevel

__all__ = ["paint_skeleton"]

# Level index: C5 = −2, C6 = −1, C7 = 0, T1..T12 = 1..12, L1 = 13, L2 = 14 (T6 = 6 is patient.vertebral_radius).
_INDEX = {"vertebrae_C7": 0, **{f"vertebrae_T{i}": i for i in range(1, 13)}, "vertebrae_L1": 13, "vertebrae_L2": 14}

Knots = dict[float, float]

# Vertebral body half width / half depth relative to T6 (real bodies: T1 ≈ 28 × 16 mm, T12 ≈ 42 × 29, L2 ≈ 46 × 32).
_BODY_WIDTH: Knots = {-2: 0.68, 0: 0.72, 1: 0.76, 6: 1.0, 12: 1.18, 14: 1.3}
_BODY_DEPTH: Knots = {-2: 0.58, 0: 0.62, 1: 0.68, 6: 1.0, 12: 1.05, 14: 1.12}
# Spinal canal half width / half depth, mm (thoracic canal ≈ 16–17 mm, cervical and lumbar wider).
_CANAL_X: Knots = {-2: 12.5, 0: 11.5, 1: 10.0, 3: 8.5, 10: 8.5, 12: 9.8, 14: 11.5}
_CANAL_Y: Knots = {-2: 7.0, 0: 7.0, 1: 7.5, 6: 8.0, 12: 8.5, 14: 9.0}
# Transverse-process tip: lateral distance (mm), AP offset from the canal centre (thoracic TPs point backwards).
_TP_X: Knots = {-2: 26.0, 0: 34.0, 1: 38.0, 6: 34.0, 10: 30.0, 11: 26.0, 12: 20.0, 13: 38.0, 14: 44.0}
_TP_DY: Knots = {-2: 4.0, 0: 1.0, 1: -4.0, 6: -8.0, 10: -8.0, 12: -4.0, 13: 0.0, 14: 0.0}
_TP_R: Knots = {-2: 3.2, 0: 3.8, 1: 4.6, 10: 4.4, 12: 3.4, 14: 3.6}
# Spinous process: angle below the horizontal (deg) and length (mm); steep and long mid-thoracic, C7 prominent.
_SP_ANGLE: Knots = {-2: 15.0, 0: 18.0, 1: 30.0, 4: 55.0, 8: 60.0, 10: 42.0, 12: 25.0, 14: 5.0}
_SP_LENGTH: Knots = {-2: 22.0, 0: 40.0, 1: 38.0, 6: 40.0, 10: 34.0, 12: 30.0, 14: 30.0}

# Ribs k = 1..12: share of the rib ring's half width where the bony rib ends anteriorly (ribs 1–10), the cage's
# half width relative to mid-chest (the upper cage is a cone), how much lower (mm, × scale) the costochondral
# junction lies than the cartilage's sternal end (upper cartilages run down to the sternum, lower ones up).
_RIB_END_X = (0.70, 0.60, 0.58, 0.58, 0.60, 0.64, 0.70, 0.78, 0.86, 0.92)
_RIB_CAGE = (0.52, 0.70, 0.80, 0.87, 0.93, 0.97, 1.0, 1.0, 1.0, 1.0, 1.0, 0.98)
_RIB_END_DZ = (6.0, 3.0, 0.0, -6.0, -14.0, -24.0, -36.0)
# Where ribs 3–7 meet the sternal body (share of its length from the manubriosternal joint).
_STERNAL_NOTCHES = (0.17, 0.38, 0.58, 0.78, 0.95)


def _knot(i: float, knots: Knots) -> float:
    keys = sorted(knots)
    return float(np.interp(i, keys, [knots[k] for k in keys]))


# ---- geometry helpers -------------------------------------------------------------------------------------------
def _ellipsoid_sd(
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


def _fraction(sd: np.ndarray, h: float) -> np.ndarray:
    """Partial-volume occupancy of a voxel of size ``h`` at signed distance ``sd`` (the canvas's convention)."""
    return np.clip(np.float32(0.5) - sd / np.float32(h), 0.0, 1.0)


def _unit(v: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(v, axis=-1, keepdims=True)
    return v / np.maximum(n, 1e-9)


def _resample(points: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` points evenly spaced along a polyline and their arc-length share in [0, 1]."""
    seg = np.linalg.norm(np.diff(points, axis=0), axis=1)
    s = np.concatenate([[0.0], np.cumsum(seg)])
    t = np.linspace(0.0, s[-1], n)
    out = np.stack([np.interp(t, s, points[:, i]) for i in range(3)], axis=1)
    return out, t / max(s[-1], 1e-9)


def _chaikin(points: np.ndarray, iterations: int = 2) -> np.ndarray:
    """Corner-cutting smoothing that keeps the end points (smooth rib necks and joins)."""
    p = points
    for _ in range(iterations):
        q = 0.75 * p[:-1] + 0.25 * p[1:]
        r = 0.25 * p[:-1] + 0.75 * p[1:]
        p = np.concatenate([p[:1], np.stack([q, r], axis=1).reshape(-1, 3), p[-1:]])
    return p


def _outward_normals(points: np.ndarray, centre_y: float) -> np.ndarray:
    """Horizontal unit normals of a polyline pointing away from the body axis ``(0, centre_y)``: the direction the
    flat faces of a rib or cartilage look (inwards to the lung / outwards to the muscles)."""
    t = np.gradient(points, axis=0)
    n = np.stack([t[:, 1], -t[:, 0], np.zeros(len(points))], axis=1)
    radial = np.stack([points[:, 0], points[:, 1] - centre_y, np.zeros(len(points))], axis=1)
    n *= np.where(np.sum(n * radial, axis=1, keepdims=True) < 0, -1.0, 1.0)
    return _unit(n)


@dataclass
class _Tube:
    """A polyline with per-point cross-section half sizes: ``rn`` along ``normals``, ``rb`` across (circular when
    ``normals`` is None)."""

    points: np.ndarray
    rn: np.ndarray
    rb: np.ndarray
    normals: np.ndarray | None = None

    @staticmethod
    def make(points, rn, rb=None, normals=None) -> _Tube:
        p = np.asarray(points, dtype=np.float64)
        rn_ = np.broadcast_to(np.asarray(rn, dtype=np.float64), (len(p),)).copy()
        rb_ = rn_.copy() if rb is None else np.broadcast_to(np.asarray(rb, dtype=np.float64), (len(p),)).copy()
        nrm = None if normals is None else np.broadcast_to(np.asarray(normals, dtype=np.float64), p.shape).copy()
        return _Tube(p, rn_, rb_, nrm)

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        r = float(max(self.rn.max(), self.rb.max()))
        return self.points.min(axis=0) - r, self.points.max(axis=0) + r


class _Shape:
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
        fo = _fraction(outer_sd, h)
        if where is not None:
            fo = fo * where
        np.maximum(self.outer, fo, out=self.outer)
        if core_sd is not None:
            fi = _fraction(core_sd, h)
            if where is not None:
                fi = fi * where
            np.maximum(self.core, fi, out=self.core)

    def add_tube(self, tube: _Tube, shell: float | None) -> None:
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
                sd_o = _ellipsoid_sd(un, ub, ut, rn, rb, rc)
                if shell is None:
                    sd_i = None
                else:
                    sh = np.float32(shell)
                    lo = np.float32(0.3)
                    sd_i = _ellipsoid_sd(
                        un, ub, ut, np.maximum(rn - sh, lo), np.maximum(rb - sh, lo), np.maximum(rc - sh, lo)
                    )
            view = (sl[0], sl[1], sl[2])
            fo = _fraction(sd_o, h)
            np.maximum(self.outer[view], fo, out=self.outer[view])
            if sd_i is not None:
                np.maximum(self.core[view], _fraction(sd_i, h), out=self.core[view])

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


class _Texture:
    """A smooth random field in the patient frame (a sum of random plane waves): trabecular texture and calcification
    spots that do not depend on the grid, so every resolution shows the same bone. Each wave is attenuated by the
    voxel's averaging (``sinc`` per axis, as partial volume does), so waves finer than a voxel fade instead of
    aliasing into stripes."""

    def __init__(self, rng: np.random.Generator, wavelength_mm: tuple[float, float], waves: int = 6) -> None:
        direction = _unit(rng.standard_normal((waves, 3)))
        k = 2.0 * math.pi / rng.uniform(*wavelength_mm, waves)
        self.k = (direction * k[:, None]).astype(np.float32)
        self.phase = rng.uniform(0.0, 2.0 * math.pi, waves).astype(np.float32)
        self.norm = np.float32(math.sqrt(2.0 / waves))
        self.gain = np.ones(waves, dtype=np.float32)

    def on(self, canvas: Canvas) -> _Texture:
        """This texture as ``canvas``'s voxels see it (band-limited to its spacing)."""
        out = _Texture.__new__(_Texture)
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


# ---- the patient's skeleton plan ---------------------------------------------------------------------------------
@dataclass
class _Vertebra:
    """One vertebra's layout (patient frame, mm)."""

    name: str
    index: float
    label: int | None
    top: float
    bottom: float
    disc_bottom: float
    a: float  # body half width
    b: float  # body half depth
    rc_x: float  # canal half width
    rc_y: float  # canal half depth
    y_c: float  # body centre y at the pedicles
    y_canal: float  # canal centre y
    z_ped: float  # height of the pedicles and transverse processes
    tp_tip: np.ndarray  # right transverse-process tip (mirror x for the left)
    tp_r: float
    osteophyte: float  # osteophyte size (mm) at its lower endplate, 0 none

    @property
    def height(self) -> float:
        return self.top - self.bottom


def _rib_inset(patient: Patient) -> float:
    """Inset (mm from the skin) of the ribs' axis: the rib's inner surface ≈ 3 mm outside the parietal pleura at
    ``wall_mm`` (intercostal muscle and extrapleural fat between), never into the subcutaneous fat."""
    return max(patient.wall_mm - 6.5 * patient.scale, 2.0 + patient.fat_mm + 4.5 * patient.scale)


def _vertebrae(patient: Patient, rng: np.random.Generator) -> list[_Vertebra]:
    """The levels of ``patient.levels`` plus C5–C6 above C7 (so the spine does not stop in the neck)."""
    s = patient.scale
    levels: list[tuple[VertebraLevel, float, int | None]] = []
    first = patient.levels[0]
    heights = [(first.top - first.bottom) * r for r in (0.86, 0.93)]  # C5, C6 a little lower than C7
    disc = first.bottom - first.disc_bottom
    z = first.top
    above = []
    for name, index, h in (("C6", -1.0, heights[1]), ("C5", -2.0, heights[0])):
        top = z + disc + h
        above.append((VertebraLevel(name, top, top - h, z), index, None))
        z = top
    levels += above[::-1]
    levels += [(lv, float(_INDEX.get(lv.name, 6)), L.get(lv.name)) for lv in patient.levels]
    age_factor = float(np.clip((patient.age - 45.0) / 35.0, 0.0, 1.0))
    spurs = rng.random(len(levels))
    spur_size = rng.uniform(1.2, 3.0, len(levels))
    out = []
    vr = patient.vertebral_radius
    for (lv, i, label), spur, size in zip(levels, spurs, spur_size, strict=True):
        a, b = vr[0] * _knot(i, _BODY_WIDTH), vr[1] * _knot(i, _BODY_DEPTH)
        rc_x, rc_y = _knot(i, _CANAL_X) * s**0.5, _knot(i, _CANAL_Y) * s**0.5
        h = lv.top - lv.bottom
        z_ped = lv.top - 0.4 * h
        y_c = float(patient.spine_y(np.float64(z_ped)))
        conc = 0.1 if i < 13 else 0.16
        y_canal = y_c - b * (1.0 - conc) - rc_y - 0.5
        tp = np.array([_knot(i, _TP_X) * s, y_canal + _knot(i, _TP_DY) * s, z_ped + 1.5])
        # Osteophytes: common from middle age on, most in the mid/lower thoracic and lumbar spine.
        spur_p = age_factor * (0.35 + 0.35 * float(4 <= i <= 14))
        out.append(
            _Vertebra(
                lv.name,
                i,
                label,
                lv.top,
                lv.bottom,
                lv.disc_bottom,
                a,
                b,
                rc_x,
                rc_y,
                y_c,
                y_canal,
                z_ped,
                tp,
                _knot(i, _TP_R) * s,
                float(size * s) if spur < spur_p else 0.0,
            )
        )
    return out


@dataclass
class _Plan:
    """Every random choice of the skeleton, drawn before painting (grid-independent)."""

    vertebrae: list[_Vertebra]
    trabecular: _Texture
    spots: _Texture
    rib_dz: np.ndarray  # (2, 12) jitter of the ribs' anterior height (mm)
    rib_end: np.ndarray  # (2, 12) jitter of where the bony rib ends
    rib_size: np.ndarray  # (2, 12) cross-section scale
    manubrium_mm: float
    xiphoid_mm: float
    sternum_width: float
    calcification: float
    shoulders: np.ndarray  # (2, 8) per side: humeral head x/y/z jitter, radius, scapula angles' jitter …


def _draw_plan(patient: Patient, rng: np.random.Generator) -> _Plan:
    vertebrae = _vertebrae(patient, rng)
    trabecular = _Texture(rng, (2.0, 8.0), 14)
    spots = _Texture(rng, (6.0, 16.0), 5)
    rib_dz = rng.normal(0.0, 4.0, (2, 12))
    rib_end = rng.normal(0.0, 0.025, (2, 12))
    rib_size = np.clip(rng.normal(1.0, 0.06, (2, 12)), 0.85, 1.15)
    manubrium = float(rng.uniform(45.0, 55.0) * patient.scale)
    xiphoid = float(rng.uniform(25.0, 45.0) * patient.scale)
    width = float(rng.uniform(0.9, 1.12))
    calcification = float(np.clip((patient.age - 25.0) / 50.0, 0.0, 1.0) * rng.uniform(0.4, 1.2))
    shoulders = rng.uniform(0.0, 1.0, (2, 8))
    return _Plan(
        vertebrae, trabecular, spots, rib_dz, rib_end, rib_size, manubrium, xiphoid, width, calcification, shoulders
    )


def _cortex_hu(patient: Patient, young: float) -> float:
    # Cortical bone loses less density with age than trabecular bone.
    return young * (0.55 + 0.45 * patient.bone_density)


# ---- painting ----------------------------------------------------------------------------------------------------
def paint_skeleton(canvas: Canvas, patient: Patient, rng: np.random.Generator) -> None:
    """Paint the thoracic skeleton (and the muscles that wrap it) into ``canvas`` for ``patient``."""
    plan = _draw_plan(patient, rng)
    _paint_autochthons(canvas, patient, plan)
    shoulders = [_shoulder_layout(patient, plan, side) for side in (1.0, -1.0)]
    for layout in shoulders:
        _paint_shoulder_muscles(canvas, patient, layout)
    _paint_spine(canvas, patient, plan)
    sternum = _sternum_layout(patient, plan)
    _paint_ribs(canvas, patient, plan, sternum)
    _paint_sternum(canvas, patient, plan, sternum)
    for layout in shoulders:
        _paint_shoulder_girdle(canvas, patient, plan, layout, sternum)


# ---- paraspinal muscles -------------------------------------------------------------------------------------------
def _along_spine(vs: list[_Vertebra], z: np.ndarray, attr: str, patient: Patient) -> np.ndarray:
    """A vertebral quantity interpolated in z between the levels' pedicle heights (smooth along the spine); canal
    positions also follow the kyphosis between those heights."""
    order = vs[::-1]  # increasing z for np.interp
    zs = [v.z_ped for v in order]
    vals = [float(v.tp_tip[0]) if attr == "tp_x" else getattr(v, attr) for v in order]
    out = np.interp(z, zs, vals)
    if attr == "y_canal":
        out = out + (patient.spine_y(z) - np.interp(z, zs, [v.y_c for v in order]))
    return out.astype(np.float32)


def _paint_autochthons(canvas: Canvas, patient: Patient, plan: _Plan) -> None:
    """Erector spinae and transversospinalis: a rounded mass each side from the spinous processes to beyond the
    transverse-process tips, behind the laminae, under the subcutaneous fat (only soft tissue is replaced)."""
    vs = plan.vertebrae
    s = patient.scale
    x_max = 95.0 * s
    back = float(np.max(patient.ap_profile(np.array([v.z_ped for v in vs]))[1]))
    y_front = max(v.y_canal for v in vs) + 5.0
    lo = (-x_max, patient.body_y - back - 2.0, vs[-1].disc_bottom)
    hi = (x_max, y_front, vs[0].top + 20.0)
    sl, (px, py, pz) = canvas.box(lo, hi)
    if min(t.stop - t.start for t in sl) == 0:
        return
    front = _along_spine(vs, pz, "y_canal", patient) + np.float32(2.0)
    x_lat = _along_spine(vs, pz, "tp_x", patient) + np.float32(20.0 * s)
    beneath_fat = patient.body_radius(px, py, pz, 2.0 + patient.fat_mm + 1.0)
    depth = np.maximum(front - (patient.body_y - patient.ap_profile(pz)[1] + 2.0 + patient.fat_mm), 5.0)
    # A quarter-ellipse each side, anchored at the lamina: as wide as the transverse processes plus ≈ 2 cm.
    inside = (px / x_lat) ** 2 + ((py - front) / depth) ** 2 <= 1.0
    muscle = inside & (py <= front) & (np.abs(px) >= 2.5) & (beneath_fat <= 1.0)
    hu, lab = canvas.hu[sl], canvas.labels[sl]
    muscle &= hu > -400.0  # soft tissue only (never lung)
    value = np.float32(52.0 - 14.0 * np.clip((patient.age - 50.0) / 30.0, 0.0, 1.0))
    hu[muscle] = value
    right = muscle & (px > 0)
    lab[right] = L["autochthon_right"]
    lab[muscle & ~right] = L["autochthon_left"]


# ---- spine --------------------------------------------------------------------------------------------------------
def _body_sd(patient: Patient, v: _Vertebra, px, py, pz, grow: float = 0.0, z_range=None) -> np.ndarray:
    """Signed distance to a vertebral body (or, with ``z_range``, a disc): elliptic, waisted at mid-height, concave
    posteriorly (the canal's anterior wall) and with slightly concave endplates."""
    top, bottom = (v.top, v.bottom) if z_range is None else z_range
    zc, hh = 0.5 * (top + bottom), 0.5 * (top - bottom)
    zeta = np.clip((pz - np.float32(zc)) / np.float32(hh), -1.0, 1.0)
    waist = 1.0 - (0.05 if z_range is None else -0.02) * (1.0 - zeta * zeta)  # discs bulge a little
    a = np.float32(v.a + grow) * waist
    b = np.float32(v.b + grow) * waist
    dy = py - patient.spine_y(pz).astype(np.float32)
    conc = 0.1 if v.index < 13 else 0.16
    bp = b * (1.0 - conc * np.clip(1.0 - (px / np.float32(0.7 * v.a)) ** 2, 0.0, 1.0))
    sd_xy = _ellipsoid_sd(px, dy, 0.0, a, np.where(dy < 0, bp, b))
    cup = 0.0 if z_range is not None else 0.9 * np.clip(1.0 - (px / a) ** 2 - (dy / b) ** 2, 0.0, 1.0)
    sd_z = np.abs(pz - np.float32(zc)) - np.float32(hh) + cup
    return np.maximum(sd_xy, sd_z)


def _posterior_tubes(patient: Patient, v: _Vertebra, below: _Vertebra | None, above: _Vertebra | None) -> list:
    """Pedicles, laminae, articular processes, transverse and spinous processes of one vertebra as tubes."""
    s, h = patient.scale, v.height
    lumbar = v.index >= 13
    tubes = []
    rc_x, yk, zp = v.rc_x, v.y_canal, v.z_ped
    ped_w = (4.8 if lumbar else 3.6) * s
    # Spinous process: its tip stays under the subcutaneous fat however posterior the spine lies.
    angle = math.radians(_knot(v.index, _SP_ANGLE))
    base = np.array([0.0, yk - v.rc_y - 3.0 * s, zp - 0.15 * h])
    skin = patient.body_y - float(patient.ap_profile(np.float64(zp))[1])
    room = base[1] - (skin + patient.fat_mm + 4.0)
    length = float(np.clip(_knot(v.index, _SP_LENGTH) * s, 6.0, max(room / max(math.cos(angle), 0.3), 6.0)))
    tip = base + length * np.array([0.0, -math.cos(angle), -math.sin(angle)])
    mid = 0.5 * (base + tip)
    sp_h = (0.36 if lumbar else 0.26) * h
    tubes.append(
        _Tube.make(
            [base, mid, tip], [2.6 * s, 2.8 * s, 3.6 * s], [sp_h, 0.9 * sp_h, 0.8 * sp_h], normals=[1.0, 0.0, 0.0]
        )
    )
    for side in (1.0, -1.0):
        # Pedicle: short and stout, from the body's posterolateral corner back to the canal's mid-depth, in the
        # upper half of the body.
        p0 = np.array([side * 0.6 * v.a, v.y_c - 0.65 * v.b, zp])
        p1 = np.array([side * (rc_x + 2.2 * s), yk + 0.25 * v.rc_y, zp])
        tubes.append(_Tube.make([p0, p1], ped_w, 0.3 * h, normals=[1.0, 0.0, 0.0]))
        # Lamina: an arc round the back of the canal to the spinous base, shingled (its lower edge further back).
        arc = np.array(
            [
                [side * (rc_x + 2.2 * s), yk + 0.1 * v.rc_y, zp - 0.03 * h],
                [side * (0.72 * rc_x + 2.4 * s), yk - 0.72 * v.rc_y - 2.2 * s, zp - 0.09 * h],
                base,
            ]
        )
        tubes.append(_Tube.make(arc, 3.0 * s, 0.32 * h, normals=_outward_normals(arc, yk)))
        # Transverse process: from the pedicle-lamina junction to its tip (the rib's tubercle articulates there).
        tip_tp = v.tp_tip * np.array([side, 1.0, 1.0])
        root = np.array([side * (rc_x + 3.5 * s), yk - 0.1 * v.rc_y, zp + 0.5])
        tubes.append(_Tube.make([root, tip_tp], [v.tp_r * 1.1, v.tp_r]))
        # Articular processes: the superior ones rise in front of the inferior ones of the level above, leaving the
        # facet joint (thoracic facets lie nearly in the coronal plane).
        x_sup, x_inf = side * (rc_x + 4.5 * s), side * (rc_x + 3.0 * s)
        y_sup, y_inf = yk - 0.3 * v.rc_y, yk - 0.3 * v.rc_y - 7.5 * s
        z_sup = v.top + (0.25 * (above.height) + (above.bottom - v.top) if above is not None else 0.2 * h)
        tubes.append(_Tube.make([[x_sup, y_sup, zp], [x_sup, y_sup, z_sup]], [3.6 * s, 3.3 * s]))
        z_inf = v.disc_bottom - (0.2 * below.height if below is not None else 0.1 * h)
        tubes.append(_Tube.make([[x_inf, y_inf, zp - 0.1 * h], [x_inf, y_inf, z_inf]], [3.4 * s, 3.0 * s]))
    return tubes


def _paint_spine(canvas: Canvas, patient: Patient, plan: _Plan) -> None:
    vs = plan.vertebrae
    h_vox = canvas.voxel_mm
    density = patient.bone_density
    cortex = _cortex_hu(patient, 1000.0)
    trab = np.float32(230.0 * density)
    tex = plan.trabecular.on(canvas)

    def trabecular(x, y, z):
        return trab * (1.0 + 0.13 * tex(x, y, z)) + 10.0

    _paint_discs(canvas, patient, vs)
    _paint_canal(canvas, patient, vs)
    for k, v in enumerate(vs):
        above = vs[k - 1] if k > 0 else None
        below = vs[k + 1] if k + 1 < len(vs) else None
        tubes = _posterior_tubes(patient, v, below, above)
        lo = np.min([t.bounds()[0] for t in tubes], axis=0)
        hi = np.max([t.bounds()[1] for t in tubes], axis=0)
        y_top = float(patient.spine_y(np.float64(v.top)))
        y_bot = float(patient.spine_y(np.float64(v.bottom)))
        lo = np.minimum(lo, [-v.a - 4.0, min(y_top, y_bot) - v.b - 4.0, v.bottom - 4.0])
        hi = np.maximum(hi, [v.a + 4.0, max(y_top, y_bot) + v.b + 4.0, v.top + 4.0])
        shape = _Shape(canvas, lo, hi)
        if shape.empty:
            continue
        px, py, pz = shape.coords
        shell = 1.2 * patient.scale
        sd = _body_sd(patient, v, px, py, pz)
        shape.add(sd, sd + np.float32(shell))
        if v.osteophyte > 0:  # marginal spurs at the anterolateral rims of both endplates of this disc
            for z_rim in (v.bottom + 0.6, v.disc_bottom - 0.6):
                theta = np.linspace(0.15 * math.pi, 0.85 * math.pi, 9)
                yc = float(patient.spine_y(np.float64(z_rim)))
                rim = np.stack(
                    [(v.a + 0.3) * np.cos(theta), yc + (v.b + 0.3) * np.sin(theta), np.full_like(theta, z_rim)], axis=1
                )
                shape.add_tube(_Tube.make(rim, v.osteophyte), shell=None)
        for tube in tubes:
            shape.add_tube(tube, shell=1.3 * patient.scale)  # posterior elements: mostly cortical bone
        shape.paint(cortex, trabecular, v.label)
        # Basivertebral vein: a thin low-density channel from the posterior cortex into the body's centre.
        vein = _Shape(canvas, (-3.0, v.y_c - v.b - 3.0, v.bottom), (3.0, v.y_c, v.top))
        zc = 0.5 * (v.top + v.bottom)
        yb = float(patient.spine_y(np.float64(zc)))
        vein.add_tube(_Tube.make([[0.0, yb - 0.85 * v.b, zc], [0.0, yb - 0.3 * v.b, zc]], [1.4, 1.0]), shell=None)
        vein.outer *= np.clip(_fraction(_body_sd(patient, v, *vein.coords) + np.float32(1.5), h_vox), 0.0, 1.0)
        vein.paint(60.0, 60.0, None)


def _paint_discs(canvas: Canvas, patient: Patient, vs: list[_Vertebra]) -> None:
    """Intervertebral discs: annulus ≈ 95 HU, nucleus ≈ 75 HU, 0.8 mm into the endplates so no gap shows."""
    label = L["intervertebral_discs"]
    for v, nxt in zip(vs[:-1], vs[1:], strict=True):
        z0, z1 = v.disc_bottom - 0.8, v.bottom + 0.8
        mean = replace(v, index=v.index + 0.5, a=0.5 * (v.a + nxt.a), b=0.5 * (v.b + nxt.b), osteophyte=0.0)
        y0 = float(patient.spine_y(np.float64(0.5 * (z0 + z1))))
        shape = _Shape(canvas, (-mean.a - 3.0, y0 - mean.b - 5.0, z0), (mean.a + 3.0, y0 + mean.b + 5.0, z1))
        if shape.empty:
            continue
        px, py, pz = shape.coords
        sd = _body_sd(patient, mean, px, py, pz, grow=0.6, z_range=(z1, z0))
        shape.add(sd, sd + np.float32(2.5 + 0.35 * mean.a))  # the nucleus: the central ~60 %
        shape.paint(95.0, 75.0, label)


def _paint_canal(canvas: Canvas, patient: Patient, vs: list[_Vertebra]) -> None:
    """The spinal canal: epidural fat round the dural sac (CSF) and the cord, which ends in the conus at L1."""
    label = L["spinal_cord"]
    s = patient.scale
    z_lo, z_hi = vs[-1].disc_bottom, vs[0].top + 30.0
    ys = [v.y_canal for v in vs]
    rx = max(v.rc_x for v in vs) + 3.0
    canal = _Shape(canvas, (-rx, min(ys) - 14.0, z_lo), (rx, max(ys) + 14.0, z_hi))
    if canal.empty:
        return
    px, py, pz = canal.coords
    # Canal centre follows the kyphosis between the levels.
    zs = pz[0, 0]
    y_k = _along_spine(vs, zs, "y_canal", patient)[None, None, :]
    cx = _along_spine(vs, zs, "rc_x", patient)[None, None, :]
    cy = _along_spine(vs, zs, "rc_y", patient)[None, None, :]
    dy = py - y_k
    canal.add(_ellipsoid_sd(px, dy, 0.0, cx, cy))
    canal.paint(-70.0, -70.0, label)  # epidural fat fills the bony canal
    sac = _Shape(canvas, (-rx, min(ys) - 14.0, z_lo), (rx, max(ys) + 14.0, z_hi))
    sac.add(_ellipsoid_sd(px, dy - 0.8, 0.0, cx - 1.3, cy - 1.6))
    sac.paint(8.0, 8.0, label)
    # Cord: cervical enlargement at C5–C7, lumbar enlargement at T11–T12, conus tapering to nothing at L1's base.
    l1 = next((v for v in vs if v.name == "vertebrae_L1"), vs[-1])
    t10 = next((v for v in vs if v.name == "vertebrae_T10"), vs[-3])
    t1 = next((v for v in vs if v.name == "vertebrae_T1"), vs[2])
    knots_z = [l1.bottom, l1.top, t10.top, t1.top, vs[0].top + 30.0]
    wx = np.interp(zs, knots_z, [0.0, 4.6, 4.2, 5.8, 6.2]).astype(np.float32)[None, None, :] * np.float32(s**0.3)
    wy = np.interp(zs, knots_z, [0.0, 3.8, 3.2, 4.0, 4.2]).astype(np.float32)[None, None, :] * np.float32(s**0.3)
    cord = _Shape(canvas, (-rx, min(ys) - 14.0, z_lo), (rx, max(ys) + 14.0, z_hi))
    present = wx > 0.4
    cord.add(_ellipsoid_sd(px, dy - 0.12 * cy, 0.0, np.maximum(wx, 0.4), np.maximum(wy, 0.4)), where=present)
    cord.paint(35.0, 35.0, label)


# ---- ribs and costal cartilages ------------------------------------------------------------------------------------
@dataclass
class _SternumLayout:
    notch: float
    angle: float  # manubriosternal joint
    xiphoid: float
    tip: float  # xiphoid tip
    z: np.ndarray  # profile heights (increasing)
    half_width: np.ndarray
    half_depth: np.ndarray
    attach: list[float]  # z of costal notches 1..7

    def width(self, z: float) -> float:
        return float(np.interp(z, self.z, self.half_width))

    def depth(self, z: float) -> float:
        return float(np.interp(z, self.z, self.half_depth))


def _sternum_y(patient: Patient, layout: _SternumLayout, z) -> np.ndarray:
    """Centre y of the sternum: just under the presternal skin and fat (the midline has no pectoral muscle)."""
    front = patient.ap_profile(np.asarray(z, dtype=np.float64))[0]
    depth = np.interp(z, layout.z, layout.half_depth)
    return patient.body_y + front - (2.0 + 0.85 * patient.fat_mm + 2.0) - depth


def _sternum_layout(patient: Patient, plan: _Plan) -> _SternumLayout:
    s, w = patient.scale, plan.sternum_width
    notch = patient.z_sternal_notch
    angle = notch - plan.manubrium_mm
    xiph = min(patient.z_xiphoid, angle - 60.0 * s)
    body = angle - xiph
    z = np.array(
        [
            xiph - plan.xiphoid_mm,
            xiph,
            xiph + 0.4 * body,
            angle - 1.0,
            angle + 1.0,
            notch - 0.5 * (notch - angle),
            notch + 8.0,
        ]
    )
    half_w = np.array([4.0, 10.0, 14.0, 12.5, 14.5, 21.0, 26.0]) * s * w
    half_d = np.array([3.0, 5.5, 6.2, 6.2, 7.0, 7.5, 7.5]) * s
    attach = [notch - 0.4 * plan.manubrium_mm, angle] + [angle - f * body for f in _STERNAL_NOTCHES]
    return _SternumLayout(notch, angle, xiph, xiph - plan.xiphoid_mm, z, half_w, half_d, attach)


def _ring(patient: Patient, phi: np.ndarray, z: np.ndarray, inset: float, inset_back: float, cap: float) -> np.ndarray:
    """Points on the body outline inset by ``inset`` (``inset_back`` behind the body's centre), angle ``phi`` from
    the posterior midline (π/2 lateral, π anterior), half width capped at ``cap``; right side (x ≥ 0)."""
    width = np.minimum(patient.width_profile(z) - inset, cap)
    front, back = patient.ap_profile(z)
    c = np.cos(phi)
    depth = np.where(c > 0, back - inset_back, front - inset)
    return np.stack([width * np.sin(phi), patient.body_y - depth * c, z], axis=1)


def _rib_profile(k: int) -> tuple[Knots, Knots]:
    """Half sizes (mm, × scale) along the rib (arc-length share): ``rn`` across the chest wall (the flat faces look in
    and out), ``rb`` along it. Rib 1 is broad and flat in the axial plane; 11–12 thin and tapering."""
    if k == 1:
        return {0: 4.5, 0.12: 4.0, 0.4: 6.5, 0.8: 7.0, 1: 6.5}, {0: 4.5, 0.12: 3.8, 0.4: 3.0, 1: 3.5}
    if k == 2:
        return {0: 4.5, 0.1: 4.0, 0.5: 4.6, 1: 4.2}, {0: 4.5, 0.1: 4.0, 0.5: 5.2, 1: 6.0}
    if k >= 11:
        return {0: 4.2, 0.12: 3.5, 0.5: 3.1, 0.85: 2.4, 1: 1.4}, {0: 4.5, 0.12: 4.0, 0.5: 5.0, 0.85: 3.8, 1: 1.8}
    return {0: 4.6, 0.08: 3.8, 0.25: 3.9, 0.6: 3.3, 1: 3.6}, {0: 4.8, 0.08: 4.2, 0.25: 5.8, 0.6: 6.4, 1: 7.0}


def _rib_path(patient: Patient, plan: _Plan, sternum: _SternumLayout, k: int, side: float) -> tuple:
    """Rib ``k``'s axis (right side, mirrored later), its end angle and height, and the ring parameters."""
    s = patient.scale
    si = 0 if side > 0 else 1
    v = next(vt for vt in plan.vertebrae if vt.name == f"vertebrae_T{k}")
    inset = _rib_inset(patient)
    a_ref = patient.half_width - inset
    cap = _RIB_CAGE[k - 1] * a_ref
    rn_prof, rb_prof = _rib_profile(k)
    size = plan.rib_size[si, k - 1] * s
    # Head: against the body's posterolateral surface at the disc above (ribs 2–9 have demifacets on two bodies).
    z_head = v.top - (0.3 * v.height if k in (1, 10, 11, 12) else 0.5)
    y_head_c = float(patient.spine_y(np.float64(z_head)))
    r_head = rn_prof[0] * size
    head = np.array([0.94 * v.a + r_head + 1.0, y_head_c - 0.35 * v.b, z_head])
    # Tubercle: in front of the transverse-process tip (ribs 11–12 have no costotransverse joint).
    if k <= 10:
        tub = v.tp_tip + np.array([-1.5, v.tp_r + 4.0 * size / s + 0.8, -2.0])
    else:
        tub = np.array([v.tp_tip[0] + 6.0, v.tp_tip[1] + 6.0, v.z_ped - 3.0])
    # Where the rib joins the chest-wall ring: the angle, ≈ 3 cm lateral to the tubercle (rib 1 has none).
    join_dx = {1: 5.0, 2: 15.0}.get(k, 30.0) * s
    z_join = tub[2] - 2.0
    width_j = float(min(patient.width_profile(np.float64(z_join)) - inset, cap))
    x_join = min(tub[0] + join_dx, 0.9 * width_j)
    # The posterior ring sits at the outline's inset, or further back where the (posterior) spine demands, so the
    # rib runs posterolaterally from its tubercle; never into the subcutaneous fat.
    back = float(patient.ap_profile(np.float64(z_join))[1])
    need = (patient.body_y - (tub[1] - 3.0 * s)) / math.sqrt(max(1.0 - (x_join / width_j) ** 2, 0.05))
    inset_back = float(np.clip(back - need, 2.0 + patient.fat_mm + _knot(0.3, rn_prof) * s + 2.0, inset))
    phi_join = math.asin(min(x_join / width_j, 0.99))
    # Anterior end (bony rib) and its height.
    if k <= 10:
        phi_end = math.pi - math.asin(np.clip(_RIB_END_X[k - 1] + plan.rib_end[si, k - 1], 0.3, 0.97))
    else:
        phi_end = math.radians(100.0 if k == 11 else 72.0) + 3.0 * plan.rib_end[si, k - 1]
    if k <= 7:
        z_end = sternum.attach[k - 1] + _RIB_END_DZ[k - 1] * s + plan.rib_dz[si, k - 1]
    elif k <= 10:
        z7 = sternum.attach[6] + _RIB_END_DZ[6] * s
        z_end = z7 - {8: 20.0, 9: 38.0, 10: 53.0}[k] * s + plan.rib_dz[si, k - 1]
    else:
        z_end = z_join - (40.0 if k == 11 else 25.0) * s + plan.rib_dz[si, k - 1]
    z_end = min(z_end, z_join - 8.0)
    # Ring samples; the rib is roughly planar, tilted about the transverse axis, so its height falls with its
    # AP position (flat posteriorly, steepest laterally), plus a share linear in angle.
    phi = np.linspace(phi_join, phi_end, 40)
    z_lin = z_join + (z_end - z_join) * (phi - phi_join) / (phi_end - phi_join)
    ring = _ring(patient, phi, z_lin, inset, inset_back, cap)
    ys = ring[:, 1]
    ap = (ys - ys[0]) / (ys[-1] - ys[0]) if abs(ys[-1] - ys[0]) > 1.0 else np.linspace(0.0, 1.0, len(phi))
    w_ap = 0.7 if k <= 10 else 0.3
    share = np.clip(w_ap * ap + (1.0 - w_ap) * (phi - phi_join) / (phi_end - phi_join), 0.0, 1.0)
    z = z_join + (z_end - z_join) * share
    ring = _ring(patient, phi, z, inset, inset_back, cap)
    neck = 0.5 * (head + tub) + np.array([0.0, -1.0, 0.0])
    control = np.concatenate([[head, neck, tub], ring])
    smooth = _chaikin(control, 2)
    length = float(np.sum(np.linalg.norm(np.diff(smooth, axis=0), axis=1)))
    n = int(np.clip(round(length / 14.0), 10, 24))
    pts, share = _resample(smooth, n)
    rn = np.array([_knot(t, rn_prof) for t in share]) * size
    rb = np.array([_knot(t, rb_prof) for t in share]) * size
    return pts, rn, rb, phi_end, z_end, inset, inset_back, cap


def _mirror(points: np.ndarray, side: float) -> np.ndarray:
    return points * np.array([side, 1.0, 1.0])


def _cartilage_path(
    patient: Patient,
    start: np.ndarray,
    phi0: float,
    end: np.ndarray,
    inset0: float,
    cap: float,
    ascend_late: bool,
    n: int,
) -> np.ndarray:
    """A costal cartilage (right side) from the bony rib's end round the anterior chest wall to ``end``."""
    s = np.linspace(0.0, 1.0, n)
    x_end = abs(end[0])
    z = start[2] + (end[2] - start[2]) * (s**2 if ascend_late else s)
    front = patient.ap_profile(z)[0]
    width = np.minimum(patient.width_profile(z) - inset0, cap)
    phi1 = math.pi - math.asin(min(x_end / float(width[-1]), 0.99))
    phi = phi0 + (phi1 - phi0) * s
    # Depth: from the rib ring forwards to the end (the sternum lies in front of the rib ring by the pectoral
    # thickness); the radial inset blends towards the end's own.
    depth_ring = front - inset0
    ring = np.stack([width * np.sin(phi), patient.body_y - depth_ring * np.cos(phi), z], axis=1)
    blend = s**1.5
    pts = ring * (1.0 - blend[:, None]) + np.asarray(end)[None, :] * blend[:, None]
    pts[0] = start
    return pts


def _paint_ribs(canvas: Canvas, patient: Patient, plan: _Plan, sternum: _SternumLayout) -> None:
    density = patient.bone_density
    cortex = _cortex_hu(patient, 850.0)
    trab = np.float32(200.0 * density)
    tex = plan.trabecular.on(canvas)
    s = patient.scale

    def trabecular(x, y, z):
        return trab * (1.0 + 0.12 * tex(x, y, z)) + 15.0

    cart_hu = _cartilage_hu(canvas, patient, plan)
    for side in (1.0, -1.0):
        name = "right" if side > 0 else "left"
        cartilages: dict[int, np.ndarray] = {}
        for k in range(1, 13):
            pts, rn, rb, phi_end, z_end, inset, inset_back, cap = _rib_path(patient, plan, sternum, k, side)
            world_pts = _mirror(pts, side)
            normals = _outward_normals(world_pts, patient.body_y)
            tube = _Tube.make(world_pts, rn, rb, normals)
            shape = _Shape(canvas, *tube.bounds())
            shape.add_tube(tube, shell=1.0 * s)
            shape.paint(cortex, trabecular, L[f"rib_{name}_{k}"])
            if k > 10:
                continue
            # Costal cartilage: 1–7 to the sternal notch, 8–10 forwards and up into the cartilage above.
            start = pts[-1]
            if k <= 7:
                z_k = sternum.attach[k - 1]
                end = np.array([sternum.width(z_k) - 2.0, float(_sternum_y(patient, sternum, z_k)), z_k])
                n = 10 if k > 2 else 6
                path = _cartilage_path(patient, start, phi_end, end, inset, cap, ascend_late=k >= 5, n=n)
            else:
                above = cartilages[k - 1]
                end = above[int(0.25 * (len(above) - 1))] + np.array([0.0, 0.0, -2.0])
                path = _cartilage_path(patient, start, phi_end, end, inset, cap, ascend_late=True, n=8)
            cartilages[k] = path
            r_end = 4.5 if k > 1 else 5.5
            rn_c = np.linspace(rn[-1], 0.85 * r_end * s if k <= 7 else rn[-1] * 0.8, len(path))
            rb_c = np.linspace(rb[-1], 0.8 * r_end * s if k <= 7 else rb[-1] * 0.75, len(path))
            cpts = _mirror(path, side)
            ctube = _Tube.make(cpts, rn_c, rb_c, _outward_normals(cpts, patient.body_y))
            cshape = _Shape(canvas, *ctube.bounds())
            cshape.add_tube(ctube, shell=1.3 * s)
            shell_hu, core_hu = cart_hu(k)
            cshape.paint(shell_hu, core_hu, L["costal_cartilages"])


def _cartilage_hu(canvas: Canvas, patient: Patient, plan: _Plan) -> Callable[[int], tuple]:
    """Costal cartilage ≈ 120 HU; calcification grows with age in spots (≈ 300–800 HU), marginal (the shell) in men
    and central (the core) in women; the first cartilage calcifies earliest."""
    male = patient.sex == "male"
    spots = plan.spots.on(canvas)

    def make(k: int):
        level = plan.calcification * (1.5 if k == 1 else 1.0)
        if level <= 0.02:
            return 120.0, 115.0

        def calcified(x, y, z):
            spot = np.clip(spots(x, y, z) - 0.2, 0.0, 1.0)  # up to ≈ 700 HU in the densest spots
            return 120.0 + np.float32(600.0 * level) * spot

        return (calcified, 115.0) if male else (120.0, calcified)

    return make


# ---- sternum ------------------------------------------------------------------------------------------------------
def _paint_sternum(canvas: Canvas, patient: Patient, plan: _Plan, st: _SternumLayout) -> None:
    s = patient.scale
    wmax = float(st.half_width.max())
    ys = _sternum_y(patient, st, st.z)
    lo = (-wmax - 4.0, float(ys.min()) - 12.0, st.xiphoid - 2.0)
    hi = (wmax + 4.0, float(ys.max()) + 12.0, st.notch + 10.0)
    shape = _Shape(canvas, lo, hi)
    if not shape.empty:
        px, py, pz = shape.coords
        zz = pz[0, 0].astype(np.float64)
        w = np.interp(zz, st.z, st.half_width).astype(np.float32)[None, None, :]
        d = np.interp(zz, st.z, st.half_depth).astype(np.float32)[None, None, :]
        yc = _sternum_y(patient, st, zz).astype(np.float32)[None, None, :]
        # Cross-section: a rounded rectangle (superellipse, p = 3): flat anterior and posterior cortices.
        u, q = np.abs(px) / w, np.abs(py - yc) / d
        rho = (u**3 + q**3) ** (1.0 / 3.0)
        grad = rho ** (-2.0) * np.sqrt((u**2 / w) ** 2 + (q**2 / d) ** 2) + np.float32(1e-3)
        sd_xy = (rho - 1.0) / grad
        # Top: the jugular notch in the middle, the clavicular notches higher at the corners; bottom: xiphisternum.
        top = np.float32(st.notch) + np.float32(7.0 * s) * np.minimum((px / np.float32(0.8 * wmax)) ** 2, 1.0)
        sd_z = np.maximum(pz - top, np.float32(st.xiphoid) - pz)
        sd = np.maximum(sd_xy, sd_z)
        shape.add(sd, sd + np.float32(1.2 * s))
        trab = np.float32(230.0 * patient.bone_density)
        tex = plan.trabecular.on(canvas)

        def core(x, y, z):
            joint = np.clip(1.6 - np.abs(z - np.float32(st.angle)) / np.float32(1.0), 0.0, 1.0)
            return (trab * (1.0 + 0.12 * tex(x, y, z)) + 10.0) * (1.0 - joint) + 100.0 * joint

        shape.paint(_cortex_hu(patient, 850.0), core, L["sternum"])
    # Xiphoid: a flat plate angled slightly backwards; cartilage that ossifies from middle age.
    ossified = float(np.clip((patient.age - 30.0) / 40.0, 0.0, 1.0))
    y0 = float(_sternum_y(patient, st, st.xiphoid))
    pts = np.array(
        [[0.0, y0, st.xiphoid + 1.0], [0.0, y0 - 3.0 * s, 0.5 * (st.xiphoid + st.tip)], [0.0, y0 - 7.0 * s, st.tip]]
    )
    tube = _Tube.make(pts, [3.5 * s, 3.0 * s, 2.2 * s], [10.0 * s, 8.0 * s, 4.0 * s], normals=[0.0, 1.0, 0.0])
    xs = _Shape(canvas, *tube.bounds())
    xs.add_tube(tube, shell=1.0 * s)
    xs.paint(110.0 + 600.0 * ossified, 110.0 + 80.0 * ossified, L["sternum"])


# ---- shoulder girdle ---------------------------------------------------------------------------------------------
@dataclass
class _ShoulderLayout:
    side: float
    head: np.ndarray  # humeral head centre
    r_head: float
    glenoid: np.ndarray  # articular surface centre
    facing: np.ndarray  # glenoid's outward direction
    superior: np.ndarray  # scapular corners on the blade surface (x, z)
    inferior: np.ndarray
    lateral: np.ndarray
    inset: float  # blade surface inset from the skin (posterior half)
    inset_side: float


def _shoulder_layout(patient: Patient, plan: _Plan, side: float) -> _ShoulderLayout:
    s = patient.scale
    j = plan.shoulders[0 if side > 0 else 1]
    notch = patient.z_sternal_notch
    r_head = (22.0 + 3.0 * j[3]) * s
    back = patient.half_ap_posterior
    head = np.array(
        [
            side * (patient.half_width - 10.0 + 25.0 * j[0]),
            patient.body_y - 0.2 * j[1] * back,
            notch + (-5.0 + 25.0 * j[2]) * s,
        ]
    )
    facing = _unit(np.array([side * 1.0, 0.35, 0.1]))  # the glenoid faces laterally and a little forwards
    glenoid = head - (r_head + 2.5) * facing
    # The blade lies ≈ 6 mm behind the posterolateral ribs' outer surface (subscapularis and serratus between).
    inset = max(_rib_inset(patient) - 3.6 * s - 6.0 * s, 2.0 + 0.5 * patient.fat_mm + 3.0)
    superior = np.array([side * (50.0 + 12.0 * j[4]) * s, head[2] + (-5.0 + 15.0 * j[5]) * s])
    inferior = np.array([side * (80.0 + 20.0 * j[6]) * s, head[2] - (125.0 + 20.0 * j[7]) * s])
    z_lat = glenoid[2] - 14.0 * s
    width = float(patient.width_profile(np.float64(z_lat))) - inset
    lateral = np.array([side * min(abs(glenoid[0]) - 22.0 * s, 0.86 * width), z_lat])
    return _ShoulderLayout(side, head, r_head, glenoid, facing, superior, inferior, lateral, inset, inset)


def _blade_y(patient: Patient, lay: _ShoulderLayout, x: np.ndarray, z: np.ndarray, offset: float = 0.0) -> np.ndarray:
    """y of the scapular blade surface (posterior half of the outline inset by ``lay.inset − offset``) at (x, z)."""
    ins = lay.inset - offset
    width = patient.width_profile(z) - ins
    back = patient.ap_profile(z)[1] - ins
    return patient.body_y - back * np.sqrt(np.clip(1.0 - (np.asarray(x) / width) ** 2, 0.04, 1.0))


def _on_blade(patient: Patient, lay: _ShoulderLayout, xz: np.ndarray, offset: float = 0.0) -> np.ndarray:
    x, z = float(xz[0]), float(xz[1])
    return np.array([x, float(_blade_y(patient, lay, np.float64(x), np.float64(z), offset)), z])


def _triangle_sd(px, pz, a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Signed distance in the (x, z) plane to triangle abc (negative inside)."""
    orient = float(np.sign((b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0])))
    d2, inside = None, None
    for p0, p1 in ((a, b), (b, c), (c, a)):
        ex, ez = np.float32(p1[0] - p0[0]), np.float32(p1[1] - p0[1])
        wx, wz = px - np.float32(p0[0]), pz - np.float32(p0[1])
        t = np.clip((wx * ex + wz * ez) / (ex * ex + ez * ez), 0.0, 1.0)
        e2 = (wx - t * ex) ** 2 + (wz - t * ez) ** 2
        left = (ex * wz - ez * wx) * orient >= 0
        d2 = e2 if d2 is None else np.minimum(d2, e2)
        inside = left if inside is None else inside & left
    return np.where(inside, -1.0, 1.0).astype(np.float32) * np.sqrt(d2)


def _paint_shoulder_muscles(canvas: Canvas, patient: Patient, lay: _ShoulderLayout) -> None:
    """Subscapularis/infraspinatus round the blade and the rotator cuff/deltoid round the humeral head: muscle where
    only fat or nothing was painted (the body outline has no shoulders of its own)."""
    s = patient.scale
    muscle = L["skeletal_muscle"]
    soft = np.array([0, L["subcutaneous_fat"], L["torso_fat"], L["skeletal_muscle"]], dtype=np.uint8)
    pts = np.array([lay.superior, lay.inferior, lay.lateral])
    lo = (
        min(pts[:, 0].min(), lay.head[0]) - 25.0,
        patient.body_y - patient.half_ap_posterior - 5.0,
        pts[:, 1].min() - 15.0,
    )
    hi = (max(pts[:, 0].max(), lay.head[0]) + 25.0, patient.body_y + 10.0, pts[:, 1].max() + 15.0)
    sl, (px, py, pz) = canvas.box(lo, hi)
    if min(t.stop - t.start for t in sl) == 0:
        return
    hu, lab = canvas.hu[sl], canvas.labels[sl]
    ok = np.isin(lab, soft)
    sd_tri = _triangle_sd(px, pz, lay.superior, lay.inferior, lay.lateral)
    y_blade = _blade_y(patient, lay, px, pz)
    # Infraspinatus behind the blade (≈ 12 mm mid-fossa), subscapularis in front (≈ 7 mm), both tapering to the
    # borders, so the blade sits inside muscle as it does in life.
    taper = np.sqrt(np.clip(-sd_tri / np.float32(20.0 * s), 0.0, 1.0))
    behind = np.float32(y_blade) - py
    cuff = (sd_tri < 3.0 * s) & (behind <= 2.0 * s + 10.0 * s * taper) & (behind >= -(2.0 * s + 5.0 * s * taper))
    cuff &= patient.inside_body(px, py, pz, 2.0 + 0.35 * patient.fat_mm)
    head_cuff = (px - lay.head[0]) ** 2 + (py - lay.head[1]) ** 2 + (pz - lay.head[2]) ** 2 <= (
        lay.r_head + 12.0 * s
    ) ** 2
    mask = (cuff | head_cuff) & ok
    hu[mask] = 48.0
    lab[mask] = muscle


def _paint_shoulder_girdle(
    canvas: Canvas, patient: Patient, plan: _Plan, lay: _ShoulderLayout, st: _SternumLayout
) -> None:
    s, side = patient.scale, lay.side
    name = "right" if side > 0 else "left"
    density = patient.bone_density
    tex = plan.trabecular.on(canvas)
    trab = np.float32(210.0 * density)

    def trabecular(x, y, z):
        return trab * (1.0 + 0.12 * tex(x, y, z)) + 10.0

    cortex = _cortex_hu(patient, 900.0)
    # ---- scapula: blade (thin, thicker at its borders), lateral border, spine, acromion, coracoid, glenoid.
    sup, inf, lat = lay.superior, lay.inferior, lay.lateral
    lo = np.array(
        [min(sup[0], inf[0], lat[0], lay.glenoid[0]) - 20.0, patient.body_y - patient.half_ap_posterior, inf[1] - 10.0]
    )
    hi = np.array(
        [
            max(sup[0], inf[0], lat[0], lay.glenoid[0]) + 20.0,
            lay.head[1] + 45.0 * s,
            max(sup[1], lay.head[2] + lay.r_head + 20.0 * s),
        ]
    )
    shape = _Shape(canvas, lo, hi)
    if not shape.empty:
        px, py, pz = shape.coords
        sd_tri = _triangle_sd(px, pz, sup, inf, lat).astype(np.float32)
        y_blade = _blade_y(patient, lay, px, pz).astype(np.float32)
        half = np.float32(1.2 * s) + np.float32(2.2 * s) * np.exp(np.minimum(sd_tri, 0.0) / np.float32(6.0 * s))
        # Intersection of "inside the triangle" and "within the thickness", its rims rounded (a box SDF in those two
        # distances, shrunk and re-grown by the rim radius) so the borders end in rounded edges, not cut faces.
        rim = np.float32(0.9) * half
        ea, eb = sd_tri + rim, np.abs(py - y_blade) - half + rim
        sd_blade = np.sqrt(np.maximum(ea, 0.0) ** 2 + np.maximum(eb, 0.0) ** 2) + np.minimum(np.maximum(ea, eb), 0.0)
        sd_blade = sd_blade - rim
        shape.add(sd_blade, sd_blade + np.float32(0.9 * s))
        # Lateral border (thick) from the inferior angle to the glenoid neck, a little in front of the blade.
        p_inf, p_lat = _on_blade(patient, lay, inf, -2.0), _on_blade(patient, lay, lat, -2.0)
        neck = lay.glenoid - 6.0 * s * lay.facing
        shape.add_tube(
            _Tube.make([p_inf, 0.5 * (p_inf + p_lat), p_lat, neck], [3.5 * s, 4.5 * s, 6.5 * s, 8.0 * s]), 1.2 * s
        )
        # Spine: a posterior ridge from the medial border to the acromion, which arches over the humeral head.
        root = sup + 0.22 * (inf - sup)
        p0 = _on_blade(patient, lay, root, 5.0 * s)
        p1 = _on_blade(patient, lay, 0.5 * (root + lat), 7.0 * s) + np.array([0.0, 0.0, 12.0 * s])
        base = lay.glenoid + np.array([-side * 4.0 * s, -22.0 * s, 20.0 * s])
        acro = lay.head + np.array([side * 8.0 * s, -6.0 * s, lay.r_head + 9.0 * s])
        spine = np.stack([p0, p1, base])
        shape.add_tube(
            _Tube.make(
                spine, [3.0 * s, 6.0 * s, 6.5 * s], [2.5 * s, 3.0 * s, 4.0 * s], _outward_normals(spine, patient.body_y)
            ),
            1.0 * s,
        )
        acromion = np.stack([base, 0.5 * (base + acro) + np.array([0.0, 0.0, 3.0 * s]), acro])
        shape.add_tube(
            _Tube.make(acromion, [4.0 * s, 3.8 * s, 3.2 * s], [9.0 * s, 11.0 * s, 10.0 * s], normals=[0.0, 0.0, 1.0]),
            1.0 * s,
        )
        # Coracoid: from the glenoid neck's top forwards under the clavicle.
        c0 = lay.glenoid + np.array([-side * 8.0 * s, 4.0 * s, 14.0 * s])
        c1 = c0 + np.array([side * 0.0, 22.0 * s, 6.0 * s])
        c2 = c1 + np.array([side * 8.0 * s, 14.0 * s, -6.0 * s])
        shape.add_tube(_Tube.make([c0, c1, c2], [6.0 * s, 5.0 * s, 4.2 * s]), 1.0 * s)
        # Glenoid: a pear-shaped cup (taller than wide), its surface 2.5 mm from the humeral head (the joint space).
        g = lay.glenoid - 5.0 * s * lay.facing
        gsd = _ellipsoid_sd(
            px - np.float32(g[0]),
            py - np.float32(g[1]),
            pz - np.float32(g[2]),
            np.float32(9.0 * s),
            np.float32(14.0 * s),
            np.float32(19.0 * s),
        )
        dist_head = np.sqrt(
            (px - np.float32(lay.head[0])) ** 2
            + (py - np.float32(lay.head[1])) ** 2
            + (pz - np.float32(lay.head[2])) ** 2
        )
        gsd = np.maximum(gsd, np.float32(lay.r_head + 2.5) - dist_head)
        shape.add(gsd, gsd + np.float32(1.2 * s))
        shape.paint(cortex, trabecular, L[f"scapula_{name}"])
    # ---- clavicle: S-shaped, from the sternoclavicular joint laterally, back and up to the acromioclavicular joint.
    z0 = st.notch + 7.0 * s
    y_man = float(_sternum_y(patient, st, st.notch))
    med = np.array([side * (st.width(st.notch) + 6.0 * s), y_man + 2.0 * s, z0])
    lat_end = lay.head + np.array([-side * 8.0 * s, -15.0 * s, lay.r_head + 10.0 * s])
    u = np.linspace(0.0, 1.0, 12)
    pts = med[None, :] + u[:, None] * (lat_end - med)[None, :]
    pts[:, 2] += 4.0 * s * np.sin(np.pi * u)
    # The medial two thirds run under the anterior skin and fat (convex forwards, following the chest wall), the
    # lateral third curves back (concave forwards) to the acromion.
    ins = 2.0 + patient.fat_mm + 7.0 * s
    width = patient.width_profile(pts[:, 2]) - ins
    front = patient.ap_profile(pts[:, 2])[0] - ins
    y_wall = patient.body_y + front * np.sqrt(np.clip(1.0 - (pts[:, 0] / width) ** 2, 0.02, 1.0))
    smooth = lambda t: t * t * (3.0 - 2.0 * t)  # noqa: E731
    w = smooth(np.clip(u / 0.15, 0.0, 1.0)) * smooth(np.clip((1.0 - u) / 0.45, 0.0, 1.0))
    pts[:, 1] = w * y_wall + (1.0 - w) * pts[:, 1]
    rn = np.interp(u, [0.0, 0.15, 0.5, 0.8, 1.0], [9.0, 7.0, 5.8, 7.5, 9.0]) * s  # AP (flattened laterally)
    rb = np.interp(u, [0.0, 0.15, 0.5, 0.8, 1.0], [9.0, 7.0, 5.8, 4.8, 4.2]) * s  # vertical
    # Horizontal normals across the clavicle (≈ AP), so ``rn`` is its AP half size and ``rb`` its height.
    t = np.gradient(pts, axis=0)
    tube = _Tube.make(pts, rn, rb, _unit(np.stack([-t[:, 1], t[:, 0], np.zeros(len(pts))], axis=1)))
    cl = _Shape(canvas, *tube.bounds())
    cl.add_tube(tube, shell=1.8 * s)
    cl.paint(cortex, trabecular, L[f"clavicula_{name}"])
    # ---- humerus: head (thin cortex, trabecular) and the proximal shaft (thick cortex, fatty marrow).
    direction = _unit(np.array([side * 0.45, 0.1, 0.9]))
    hs = _Shape(canvas, lay.head - lay.r_head - 2.0, lay.head + lay.r_head + 2.0)
    marrow = np.float32(30.0 - 120.0 * np.clip((patient.age - 20.0) / 50.0, 0.0, 1.0))
    if not hs.empty:
        px, py, pz = hs.coords
        dist = np.sqrt(
            (px - np.float32(lay.head[0])) ** 2
            + (py - np.float32(lay.head[1])) ** 2
            + (pz - np.float32(lay.head[2])) ** 2
        )
        sd = dist - np.float32(lay.r_head)
        hs.add(sd, sd + np.float32(1.0 * s))
        # Greater tuberosity: lateral to the head.
        gt = lay.head + lay.r_head * 0.7 * _unit(np.array([side * 1.0, 0.3, -0.2]))
        hs.add_tube(_Tube.make([gt, gt + 10.0 * s * direction], [10.0 * s, 9.0 * s]), 1.0 * s)
        hs.paint(_cortex_hu(patient, 800.0), trabecular, L[f"humerus_{name}"])
    shaft = np.stack(
        [
            lay.head + 0.5 * lay.r_head * direction,
            lay.head + (lay.r_head + 25.0 * s) * direction,
            lay.head + (lay.r_head + 130.0 * s) * direction,
        ]
    )
    stube = _Tube.make(shaft, [16.0 * s, 12.5 * s, 11.0 * s])
    ss = _Shape(canvas, *stube.bounds())
    ss.add_tube(stube, shell=3.5 * s)

    def shaft_core(x, y, z):
        # Metaphysis near the head: trabecular; the diaphysis: fatty (yellow) marrow, more with age.
        along = (
            (x - np.float32(lay.head[0])) * np.float32(direction[0])
            + (y - np.float32(lay.head[1])) * np.float32(direction[1])
            + (z - np.float32(lay.head[2])) * np.float32(direction[2])
        )
        w = np.clip((along - np.float32(lay.r_head + 15.0 * s)) / np.float32(30.0 * s), 0.0, 1.0)
        return trabecular(x, y, z) * (1.0 - w) + marrow * w

    ss.paint(_cortex_hu(patient, 1100.0), shaft_core, L[f"humerus_{name}"])
