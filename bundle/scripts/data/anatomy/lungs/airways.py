"""The main airways: trachea, main and lobar bronchi, hand-built from the landmarks, and the painting of every airway
(these and the intrapulmonary bronchi the trees grow).

* **Airways** (−1000 HU air) — the trachea (label ``trachea``, radius 8–10 mm, larger in men, 2 mm wall of 40 HU)
  from the top of the grid down the midline just in front of the oesophagus (``spine_y + vertebral half-depth +
  22–28 mm``) to the carina at ``patient.z_carina``; the right main bronchus short (20–26 mm) and steep (22–32° from
  vertical), the left long (42–50 mm) and flatter (38–50°); the right upper lobe bronchus, bronchus intermedius and
  middle/lower lobe bronchi, the left upper/lower lobe bronchi, to lobar roots around ``patient.hilum``; then in each
  lobe the bronchi of its bundle tree (:mod:`.trees`; label ``lung_trachea_bronchia``), walls 30 HU and 30 % of the
  radius, down to 2 mm across (2.5 mm at 2.5 mm voxels), the smallest CT resolves.

Walls are painted for all airways first and then the lumens, so a wall never lies across another airway's lumen; the
trachea and main bronchi cross the mediastinum but never drill through the heart or aorta.
"""

from __future__ import annotations

import math

import numpy as np

from ..canvas import Canvas
from ..labels import PHANTOM_LABELS as L
from ..patient import Patient
from .lobes import LLL, LOBES, LUL, RLL, RML, RUL
from .raster import blend_box, polyline_box, rasterise, union

__all__ = ["main_airways", "paint_airways", "unit", "wall_radius"]

# CT numbers (HU).
_AIR = -1000.0
_BRONCHIAL_WALL = 30.0  # cartilage, smooth muscle and mucosa, partial-volumed with air
_TRACHEAL_WALL = 40.0  # cartilage rings and membranous wall (soft tissue; calcification comes with age)

# Structures the trachea and main bronchi must not drill through if a neighbouring module put them in the way (an
# air hole in the heart or aorta would be worse than a narrowed airway). The pulmonary arteries, veins and the
# oesophagus do lie against the airways, so an overlap of a few mm with them is resolved in the airway's favour.
_PROTECTED = (
    "heart_myocardium",
    "heart_atrium_left",
    "heart_ventricle_left",
    "heart_atrium_right",
    "heart_ventricle_right",
    "aorta",
)
_LUNG_OR_FAT = ("background", "torso_fat", "trachea", "lung_trachea_bronchia", "lung_vessels")  # no overlap to report


def unit(v: np.ndarray) -> np.ndarray:
    """``v`` scaled to length 1 (straight down when ``v`` is nearly zero)."""
    n = float(np.linalg.norm(v))
    return v / n if n > 1e-9 else np.array([0.0, 0.0, -1.0])


def main_airways(canvas: Canvas, patient: Patient, rng: np.random.Generator) -> dict:
    """Trachea, main and lobar bronchi as patient-frame polylines; the lobar roots the trees grow from."""
    s = patient.scale
    male = patient.sex == "male"
    r_tr = 9.0 * (1.08 if male else 0.9) * math.sqrt(s) * rng.uniform(0.92, 1.08)
    wall = 2.0 * rng.uniform(0.85, 1.15)
    front = patient.vertebral_radius[1]
    gap = rng.uniform(22.0, 28.0)

    def trachea_y(zz: float) -> float:  # midline, in front of the oesophagus on the vertebral bodies
        return float(patient.spine_y(np.float32(zz))) + front + gap

    x_t = rng.uniform(0.0, 4.0)  # the aortic arch pushes the trachea a little to the right
    z_top = float(canvas.pz.max()) + 10.0
    zc = patient.z_carina
    zs = np.linspace(max(z_top, zc + 20.0), zc, 7)
    trachea = np.array([[x_t, trachea_y(zz), zz] for zz in zs])
    carina = trachea[-1]

    def ray(p: np.ndarray, d: tuple[float, float, float], length: float) -> np.ndarray:
        return p + unit(np.asarray(d, dtype=np.float64)) * length * s

    hr = np.asarray(patient.hilum(1.0), dtype=np.float64)
    hl = np.asarray(patient.hilum(-1.0), dtype=np.float64)
    a_r = math.radians(rng.uniform(22.0, 32.0))
    a_l = math.radians(rng.uniform(38.0, 50.0))
    b1 = ray(carina, (math.sin(a_r), -0.12, -math.cos(a_r)), rng.uniform(20.0, 26.0))  # right main bronchus
    b2 = ray(b1, (0.3, 0.15, -1.0), rng.uniform(22.0, 30.0))  # bronchus intermedius
    l1 = ray(carina, (-math.sin(a_l), -0.12, -math.cos(a_l)), rng.uniform(42.0, 50.0))  # left main bronchus
    jit = lambda: rng.uniform(-4.0, 4.0, 3) * s  # noqa: E731
    roots_at = {
        RUL: hr + np.array([-10.0, -6.0, 10.0]) * s + jit(),
        RML: hr + np.array([-4.0, 14.0, -26.0]) * s + jit(),
        RLL: hr + np.array([-8.0, -10.0, -30.0]) * s + jit(),
        LUL: hl + np.array([8.0, 6.0, 12.0]) * s + jit(),
        LLL: hl + np.array([8.0, -8.0, -22.0]) * s + jit(),
    }
    r_main_r, r_bi, r_main_l = 0.76 * r_tr, 0.62 * r_tr, 0.7 * r_tr
    r_lobar = {RUL: 0.52 * r_tr, RML: 0.4 * r_tr, RLL: 0.55 * r_tr, LUL: 0.56 * r_tr, LLL: 0.56 * r_tr}
    origin = {RUL: b1, RML: b2, RLL: b2, LUL: l1, LLL: l1}
    bronchi = [
        (np.array([carina, b1]), np.array([r_main_r, r_main_r])),
        (np.array([b1, b2]), np.array([r_bi, r_bi])),
        (np.array([carina, l1]), np.array([r_main_l, r_main_l * 0.95])),
    ]
    roots = {}
    for lobe_id, point in roots_at.items():
        bronchi.append((np.array([origin[lobe_id], point]), np.array([r_lobar[lobe_id]] * 2)))
        roots[lobe_id] = (point, unit(point - origin[lobe_id]), r_lobar[lobe_id])
    walls = [(p, wall_radius(r)) for p, r in bronchi]
    lumens = list(bronchi)
    out = {  # the caller adds the stretch from each lobar root to its tree
        "trachea": ((trachea, np.full(len(trachea), r_tr + wall)), (trachea, np.full(len(trachea), r_tr))),
        "bronchi": walls,
        "lumens": lumens,
        "roots": roots,
        "r_trachea": r_tr,
        "carina": carina,
    }
    return out


def wall_radius(lumen: np.ndarray | float) -> np.ndarray | float:
    """Outer radius of a main/lobar bronchus: walls ~1–2 mm (a quarter of the lumen radius, at least 1 mm)."""
    return lumen + np.maximum(0.25 * np.asarray(lumen), 1.0)


def paint_airways(
    canvas: Canvas,
    sl: tuple[slice, slice, slice],
    lung_box: np.ndarray,
    airways: dict,
    airway_walls: list[tuple[np.ndarray, np.ndarray]],
    airway_lumens: list[tuple[np.ndarray, np.ndarray]],
    buf: np.ndarray,
) -> tuple[int, dict]:
    """Paint the walls of all airways, then their lumens: the main airways of :func:`main_airways` (the trachea, main
    and lobar bronchi, across the mediastinum) and the intrapulmonary ``airway_walls``/``airway_lumens`` (kept inside
    the lungs, ``lung_box`` being their mask in the box ``sl``); ``buf`` is a grid-shaped float32 scratch buffer.

    Returns the number of tube segments rasterised and the facts ``airway_overlaps`` (label name → voxels of other
    structures the airways were painted over), ``airway_voxels_withheld`` (main-airway voxels not painted because
    the heart or aorta is there) and ``trachea`` (radius, carina point).
    """
    n_tube = 0
    trachea_wall, trachea_lumen = airways["trachea"]
    sl_air = union(sl, polyline_box(canvas, [trachea_wall, *airways["bronchi"]]))
    protected = np.isin(canvas.labels[sl_air], [L[n] for n in _PROTECTED if n in L])
    before = canvas.labels[sl_air].copy()
    withheld = 0
    steps = (
        ([trachea_wall], [], _TRACHEAL_WALL, L["trachea"]),
        (airways["bronchi"], airway_walls, _BRONCHIAL_WALL, L["lung_trachea_bronchia"]),
        ([trachea_lumen], [], _AIR, L["trachea"]),
        (airways["lumens"], airway_lumens, _AIR, L["lung_trachea_bronchia"]),
    )
    for main, intrapulmonary, value, label in steps:
        buf.fill(0.0)
        inside = None
        if intrapulmonary:
            n_tube += rasterise(canvas, intrapulmonary, buf)
            inside = buf[sl] * lung_box  # the tree stays inside the lungs
            buf.fill(0.0)
        n_tube += rasterise(canvas, main, buf)  # the trachea and main bronchi cross the mediastinum
        if inside is not None:
            np.maximum(buf[sl], inside, out=buf[sl])
        frac = buf[sl_air]
        if value != _AIR:
            withheld += int((protected & (frac > 0.0)).sum())
        frac[protected] = 0.0
        blend_box(canvas, sl_air, frac, value, label)
    # What the airways displaced (for the integrator: a neighbour that sits where an airway should run).
    names = {i: n for n, i in L.items()}
    after = canvas.labels[sl_air]
    moved = (after != before) & np.isin(after, [L["trachea"], L["lung_trachea_bronchia"]])
    moved &= ~np.isin(before, [L[n] for n in _LUNG_OR_FAT] + [L[n] for n, _ in LOBES])
    ids, counts = np.unique(before[moved], return_counts=True)
    facts = {
        "airway_overlaps": {names.get(int(i), str(int(i))): int(c) for i, c in zip(ids, counts, strict=True)},
        "airway_voxels_withheld": withheld,
        "trachea": {
            "radius_mm": round(airways["r_trachea"], 2),
            "carina": [round(float(v), 1) for v in airways["carina"]],
        },
    }
    return n_tube, facts
