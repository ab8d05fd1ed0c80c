"""Lobes, fissures and parenchyma: where each lobe is, the visceral-pleura sheets between them, and the lung's own
CT numbers.

* **Lobes** — the right lung is cut by the oblique (major) and horizontal (minor) fissures into upper, middle and
  lower lobes, the left by its oblique fissure into upper (with the lingula) and lower lobes. The oblique fissure runs
  from the posterior lung surface at T4 (the left a little higher) down and forward to the diaphragm 2–5 cm behind
  the anterior chest wall, bowed a little and twisted like a propeller (facing anterolaterally above the hilum,
  anteromedially below it; Proto & Speckman 1979), so on axial slices it is a curved line that moves forward as one
  goes down. The minor fissure is nearly horizontal at the 4th anterior rib (4–5 cm below the carina, the level of
  the bronchus intermedius), a little lower anterolaterally. Lobe shares come out near the usual ones (right upper
  ~40 %, middle ~15 %, lower ~45 % of the right lung; left upper ~55 %, lower ~45 %).
* **Fissures** — two layers of visceral pleura, blurred by voxel and scanner to ~1 mm: a soft-tissue sheet (20 HU,
  0.5–1.2 mm, thinning out where fissures are incomplete — most often medially) mixed in by its partial volume over
  ``sqrt(h² + 1 mm²)``, so it is a faint −760…−500 HU line at 2.5 mm voxels and a sharper one (≈ −400) at 1.25 mm.
* **Parenchyma** — −925 HU at full inspiration, +170 HU from full to no inspiration (less air per gram of tissue), so
  that with the vessels the whole-lung mean is ≈ −860 HU in deep and ≈ −810 HU in shallow inspiration (healthy
  adults: −850…−870 HU at total lung capacity). Supine, the dependent (posterior) lung is 80–150 HU denser than the
  anterior, mostly in its posterior third (gravity squeezes the sponge and draws blood there). Texture: a ±18–24 HU
  field of 4.5 mm (lobules, unresolved vessels) on a ±10 HU regional one of 2 cm.

The fissures are drawn in millimetres from the landmarks and the lungs' extent (:func:`draw_fissures`), so the lobe
of any point (:func:`lobe_of`: the trees' lattice points, the voxels) is the same on every grid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..canvas import Canvas
from ..labels import PHANTOM_LABELS as L
from ..patient import Patient
from .raster import patient_coords

__all__ = [
    "LLL",
    "LOBES",
    "LUL",
    "RLL",
    "RML",
    "RUL",
    "Horizontal",
    "Oblique",
    "draw_fissures",
    "lobe_of",
    "paint_parenchyma",
]

_PLEURA = 20.0  # visceral pleura of the fissures

LOBES = (  # (label name, side); the position in this tuple is the lobe index used throughout
    ("lung_upper_lobe_right", 1.0),
    ("lung_middle_lobe_right", 1.0),
    ("lung_lower_lobe_right", 1.0),
    ("lung_upper_lobe_left", -1.0),
    ("lung_lower_lobe_left", -1.0),
)
RUL, RML, RLL, LUL, LLL = range(5)


@dataclass
class Oblique:
    """Oblique fissure of one lung: in each sagittal plane a line from the posterior lung surface at T4–T5 down and
    forward to the anterior third of the diaphragm, bowed a little; towards the mediastinum it turns steeper about a
    pivot at the hilum's height, because medially the fissure ends at the hilum. On axial slices this makes it run
    from the hilum posterolaterally above the hilum and anterolaterally below it, as on CT."""

    y_back: float  # posterior lung surface
    z_post: float  # where the fissure meets it (T4–T5)
    y_ant: float  # where it meets the diaphragm anteriorly
    z_ant: float
    y_front: float  # anterior lung surface (for the gravity gradient)
    z_pivot: float  # height of the fissure's middle, about which its medial part turns
    turn_deg: float  # how much steeper it is at the mediastinum than at the lateral wall
    bow: float  # mid-fissure displacement (mm, + upwards/forwards)
    bend: float  # displacement of its mid-width against its medial and lateral edges (mm)
    x_medial: float  # |x| of the lung's medial and lateral surfaces
    x_lateral: float

    def distance(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Signed distance (mm) in the sagittal plane: > 0 above/anterior (upper lobe side), < 0 in the lower lobe."""
        dy, dz = self.y_ant - self.y_back, self.z_ant - self.z_post
        half = 0.5 * math.hypot(dy, dz)
        alpha = math.atan2(dz, dy)  # between −90° (vertical) and 0° (horizontal)
        u = (self.z_pivot - self.z_post) / dz
        py, pz = self.y_back + u * dy, self.z_pivot
        # −½ at the lateral wall … +½ at the mediastinum: the fissure turns about its middle (a propeller, Proto 1979).
        medial = np.clip((self.x_lateral - np.abs(x)) / (self.x_lateral - self.x_medial), 0.0, 1.0) - np.float32(0.5)
        a = np.float32(alpha) - np.float32(math.radians(self.turn_deg)) * medial
        ca, sa = np.cos(a), np.sin(a)
        ry, rz = y - np.float32(py), z - np.float32(pz)
        along = (ca * ry + sa * rz - np.float32((0.5 - u) * 2.0 * half)) / np.float32(half)
        bow = np.float32(self.bow) * np.clip(1.0 - along * along, 0.0, 1.0)
        bend = np.float32(self.bend) * (1.0 - 4.0 * medial * medial)  # curved on axial slices
        return -sa * ry + ca * rz - bow - bend


@dataclass
class Horizontal:
    """Right minor fissure: ``z(x, y)`` nearly horizontal, a little lower anteriorly and laterally."""

    z0: float
    y0: float
    x0: float
    slope_y: float  # mm per 100 mm anterior
    slope_x: float  # mm per 100 mm lateral
    dome: float  # mm of upward bulge at its middle

    def distance(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        dy, dx = (y - self.y0) / 100.0, (np.abs(x) - self.x0) / 100.0
        height = self.z0 + self.slope_y * dy + self.slope_x * dx + self.dome * (1.0 - 4.0 * (dy**2 + dx**2))
        return z - height


def draw_fissures(
    patient: Patient, rng: np.random.Generator, pts: np.ndarray, pts_right: np.ndarray
) -> tuple[dict[float, Oblique], Horizontal]:
    """The oblique fissures of both lungs and the right minor fissure, from the landmarks and the lungs' extent."""
    s = patient.scale
    level = {lv.name: lv for lv in patient.levels}
    t4 = level["vertebrae_T4"]
    oblique = {}
    for side in (1.0, -1.0):
        p = pts[pts_right] if side > 0 else pts[~pts_right]
        dome = patient.z_dome_right if side > 0 else patient.z_dome_left
        if len(p) < 10:  # a lung (nearly) outside the grid: a plausible default
            p = np.array([[side * 60.0, patient.body_y - 60.0, dome], [side * 60.0, patient.body_y + 80.0, dome + 100]])
        y_back = float(np.percentile(p[:, 1], 2))
        low = p[p[:, 2] < dome + 40.0 * s]
        y_front = float(np.percentile((low if len(low) > 10 else p)[:, 1], 98))
        # Posteriorly at T4–T5 (the left a little higher and its fissure steeper), anteriorly on the diaphragm
        # 2–5 cm behind the anterior chest wall.
        z_post = t4.top + (0.0 if side > 0 else 8.0 * s) + rng.uniform(-8.0, 8.0) * s
        y_ant = y_front - rng.uniform(0.12, 0.25 if side > 0 else 0.2) * (y_front - y_back)
        z_ant = dome - rng.uniform(5.0, 20.0) * s
        ax = np.abs(p[:, 0])
        oblique[side] = Oblique(
            y_back=y_back,
            z_post=float(z_post),
            y_ant=float(y_ant),
            z_ant=float(z_ant),
            y_front=y_front,
            z_pivot=float(0.5 * (z_post + z_ant) + rng.uniform(-10.0, 10.0) * s),
            turn_deg=float(rng.uniform(10.0, 25.0)),
            bow=float(rng.uniform(6.0, 16.0) * s),
            bend=float(rng.uniform(-4.0, 10.0) * s),
            x_medial=float(np.percentile(ax, 3)),
            x_lateral=float(np.percentile(ax, 97)),
        )
    hx, hy, _ = patient.hilum(1.0)
    horizontal = Horizontal(
        z0=float(patient.z_carina - rng.uniform(40.0, 55.0) * s),
        y0=float(hy + 30.0 * s),
        x0=float(hx + 20.0 * s),
        slope_y=float(-rng.uniform(4.0, 15.0)),
        slope_x=float(-rng.uniform(0.0, 10.0)),
        dome=float(rng.uniform(0.0, 6.0)),
    )
    return oblique, horizontal


def lobe_of(x, y, z, is_right, oblique: dict[float, Oblique], horizontal: Horizontal) -> np.ndarray:
    """Lobe index (``RUL`` … ``LLL``) of each point."""
    d_obl = np.where(is_right, oblique[1.0].distance(x, y, z), oblique[-1.0].distance(x, y, z))
    return _lobe_from(d_obl, horizontal.distance(x, y, z), is_right)


def _lobe_from(d_obl: np.ndarray, d_hor: np.ndarray, is_right: np.ndarray) -> np.ndarray:
    """Lobe index from the signed distances to the oblique and horizontal fissures."""
    right_lobe = np.where(d_obl < 0.0, RLL, np.where(d_hor < 0.0, RML, RUL))
    return np.where(is_right, right_lobe, np.where(d_obl < 0.0, LLL, LUL)).astype(np.int64)


def _round(d: dict) -> dict:
    return {k: round(float(v), 2) for k, v in d.items()}


def paint_parenchyma(
    canvas: Canvas,
    patient: Patient,
    sl: tuple[slice, slice, slice],
    lung_box: np.ndarray,
    right_box: np.ndarray,
    oblique: dict[float, Oblique],
    horizontal: Horizontal,
    shape_rng: np.random.Generator,
    texture_rng: np.random.Generator,
) -> dict:
    """Paint the parenchyma (inspiration level, gravity gradient, texture), the fissure sheets and the lobe labels
    into the lung voxels of the box ``sl``; returns the facts ``lobe_voxels``, ``parenchyma`` and ``fissures``."""
    facts: dict = {}
    ii, jj, kk = np.nonzero(lung_box)
    x, y, z = patient_coords(canvas, sl, ii, jj, kk).T.astype(np.float32)
    is_right = right_box[ii, jj, kk]

    # ---- parenchyma: inspiration level, gravity gradient, texture -------------------------------------------------
    insp = float(np.clip(patient.inspiration, 0.0, 1.0))
    base = -925.0 + 170.0 * (1.0 - insp)
    gradient = shape_rng.uniform(80.0, 130.0) + 50.0 * (1.0 - insp)
    hu = np.full(len(x), base, dtype=np.float32)
    for side_mask, fis in ((is_right, oblique[1.0]), (~is_right, oblique[-1.0])):
        dep = np.clip((fis.y_front - y[side_mask]) / (fis.y_front - fis.y_back), 0.0, 1.0)
        # Mostly in the dependent third (the sponge is squeezed by the lung above it): (depth)² centred on zero mean.
        hu[side_mask] += np.float32(gradient) * (dep * dep - np.float32(1.0 / 3.0))
    fine = canvas.noise(texture_rng, 4.5, sl)[ii, jj, kk]
    regional = canvas.noise(texture_rng, 20.0, sl)[ii, jj, kk]
    hu += np.float32(shape_rng.uniform(18.0, 24.0)) * fine + np.float32(10.0) * regional

    # ---- fissures: partial-volume sheets ----------------------------------------------------------------------------
    h = canvas.voxel_mm
    blur = math.sqrt(h * h + 1.0)  # voxel plus a ~1 mm scanner point-spread: the width a thin sheet is spread over
    completeness = canvas.noise(texture_rng, 30.0, sl)[ii, jj, kk]
    sheet_mm = np.float32(shape_rng.uniform(0.8, 1.0)) * np.clip(0.6 + 0.6 * completeness, 0.0, 1.2)
    # Real fissures undulate a little (±2–3 mm over a few cm); the lobe labels follow the same surface.
    wobble = np.float32(2.5) * regional
    d_obl = np.where(is_right, oblique[1.0].distance(x, y, z), oblique[-1.0].distance(x, y, z)) + wobble
    sheet = sheet_mm / blur * np.clip(1.0 - np.abs(d_obl) / blur, 0.0, 1.0)
    d_hor = horizontal.distance(x, y, z) + wobble
    lobe = _lobe_from(d_obl, d_hor, is_right)
    minor = is_right & (d_obl > 0.0)
    minor_thick = sheet_mm * np.clip(0.3 + 0.5 * completeness + 0.01 * (np.abs(x) - horizontal.x0), 0.0, 1.0)
    sheet = np.where(minor, np.maximum(sheet, minor_thick / blur * np.clip(1.0 - np.abs(d_hor) / blur, 0, 1)), sheet)
    hu += sheet * (np.float32(_PLEURA) - hu)

    hub, labb = canvas.hu[sl], canvas.labels[sl]
    hub[ii, jj, kk] = hu
    lobe_ids = np.array([L[name] for name, _ in LOBES], dtype=np.uint8)
    labb[ii, jj, kk] = lobe_ids[lobe]
    facts["lobe_voxels"] = {name: int(n) for (name, _), n in zip(LOBES, np.bincount(lobe, minlength=5), strict=True)}
    facts["parenchyma"] = {"base_hu": round(base, 1), "gravity_gradient_hu": round(float(gradient), 1)}
    facts["fissures"] = {
        "oblique_right": _round(vars(oblique[1.0])),
        "oblique_left": _round(vars(oblique[-1.0])),
        "horizontal": _round(vars(horizontal)),
    }
    return facts
