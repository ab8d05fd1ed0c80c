"""Lungs: lobes and fissures, parenchyma, the airways and the pulmonary arteries and veins (non-contrast CT).

Painted into the pleural space the integrator hands over (:func:`.torso.lung_region`), after the body wall, heart
and mediastinum and before the bones:

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
* **Airways** (−1000 HU air) — the trachea (label ``trachea``, radius 8–10 mm, larger in men, 2 mm wall of 40 HU)
  from the top of the grid down the midline just in front of the oesophagus (``spine_y + vertebral half-depth +
  22–28 mm``) to the carina at ``patient.z_carina``; the right main bronchus short (20–26 mm) and steep (22–32° from
  vertical), the left long (42–50 mm) and flatter (38–50°); the right upper lobe bronchus, bronchus intermedius and
  middle/lower lobe bronchi, the left upper/lower lobe bronchi, to lobar roots around ``patient.hilum``; then in each
  lobe the bronchi of the bundle tree below (label ``lung_trachea_bronchia``), walls 30 HU and 30 % of the radius,
  down to 2 mm across (2.5 mm at 2.5 mm voxels), the smallest CT resolves.
* **Pulmonary arteries and veins** (label ``lung_vessels``, blood 40 HU non-contrast) — arteries from the hilum (where
  the heart module's pulmonary arteries end, radius 8 mm) into each lobe, each running beside its bronchus (the
  bronchovascular bundle: one tree, artery and bronchus offset to either side); veins a second tree per lobe that
  runs between the arterial branches and drains medially to the superior (upper/middle lobes) and inferior (lower
  lobes) pulmonary veins at the left atrium's level. Radii follow Murray's law (r³ conserved), r = 5.6 mm for a litre
  of lung supplied: lobar ≈ 5 mm, segmental ≈ 3 mm, 1 cm³ ≈ 0.55 mm; twigs towards the pleura thin out further, so the
  outer 1 cm is nearly vessel-free at 2.5 mm. Vessels and airways are ≈ 4–5 % of the lung volume (partial volume
  counted) and raise the lung's 10th–90th percentile spread to ~150–230 HU, as in real CT.

The trees are grown in millimetres on a 5 mm world lattice of the lung masks, so one patient gets the same trees on
any grid, by the volume-filling method of Tawhai et al. (J Appl Physiol 2000; after Kitaoka et al. 1999): a branch
supplies a set of points of its lobe, heads for their centroid (at most 65° off its parent) and covers 40 % of the
way; its points are split in two by a plane along the branch across their widest extent, and each half gets a
daughter, down to regions of ≈ 0.75 cm³ (~40 000 branches, all trees grown together in one vectorised pass).
Branches thicker than half a voxel are rasterised as partial-volume tubes (:meth:`Canvas.tube_fraction`'s
occupancy, batched); thinner ones are sampled along their axis and splatted with their true cross-section, so a
0.3 mm twig raises its voxel by its real volume share instead of vanishing or looking a voxel wide. About
0.2–0.45 s at 128³ (2.5 mm) and 0.7–1.7 s at 256³ (1.25 mm) on one core.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .canvas import Canvas
from .labels import PHANTOM_LABELS as L
from .patient import Patient

__all__ = ["paint_lungs"]

# CT numbers (HU).
_AIR = -1000.0
_BLOOD = 40.0  # non-contrast blood 35–45 HU
_BRONCHIAL_WALL = 30.0  # cartilage, smooth muscle and mucosa, partial-volumed with air
_TRACHEAL_WALL = 40.0  # cartilage rings and membranous wall (soft tissue; calcification comes with age)
_PLEURA = 20.0  # visceral pleura of the fissures

# Tree growth (mm).
_COARSE_MM = 5.0  # spacing of the points a tree fills (each 0.125 cm³)
_GAMMA = 3.0  # Murray's law: r³ of a parent = Σ r³ of its daughters
_R_LITRE_ARTERY = 5.6  # radius of an artery supplying 1 L: lobar ≈ 4.5, segmental ≈ 3, lobular (1 cm³) ≈ 0.5 mm
_R_LITRE_VEIN = 5.8  # the veins are a little wider than the arteries
_LEAF_POINTS = 6  # a region of ≤ 6 points (≈ 0.75 cm³) gets one terminal twig
_BRANCH_FRACTION = 0.4  # Tawhai's rule: a branch covers 40 % of the way to its region's centroid
_MAX_ANGLE = math.radians(65.0)  # daughters turn at most this far from their parent
_BUNDLE_GAP = 0.3  # mm between an artery and its bronchus

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

_LOBES = (  # (label name, side); the position in this tuple is the lobe index used throughout
    ("lung_upper_lobe_right", 1.0),
    ("lung_middle_lobe_right", 1.0),
    ("lung_lower_lobe_right", 1.0),
    ("lung_upper_lobe_left", -1.0),
    ("lung_lower_lobe_left", -1.0),
)
_RUL, _RML, _RLL, _LUL, _LLL = range(5)


@dataclass
class _Oblique:
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
class _Horizontal:
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


def paint_lungs(
    canvas: Canvas, patient: Patient, rng: np.random.Generator, right: np.ndarray, left: np.ndarray
) -> dict:
    """Paint lobes, fissures, parenchyma, airways and pulmonary vessels into the ``right``/``left`` lung spaces.

    Args:
        canvas: the grid being painted (body wall, abdomen, heart and mediastinum already there).
        patient: the patient's landmarks (carina, hila, spine, diaphragm, inspiration, size).
        rng: this module's random stream; the same state gives the same lungs bit for bit.
        right, left: boolean masks (grid shape) of the space each lung fills.

    Returns:
        Facts for the integrator and tests: ``lobe_labels`` (name → id), ``lobe_voxels``, ``fissures`` (their
        parameters, mm), ``trachea`` (radius, carina point), ``branches`` (counts per tree), ``tube_segments`` and
        ``faint_segments`` (how they were rasterised), ``vessel_share`` (vessel volume / lung volume, partial volume
        counted), ``airway_voxels_withheld`` (main-airway voxels not painted because the heart or aorta is there)
        and ``airway_overlaps`` (label name → voxels of other structures the airways were painted over).
    """
    lung = right | left
    facts: dict = {"lobe_labels": {name: L[name] for name, _ in _LOBES}}
    # Three child streams, so the shapes drawn (fissures, airways, HU levels) do not depend on how many numbers the
    # grid-sized noise fields or the mask-sized trees consume: one seed gives the same patient on every grid.
    shape_rng, tree_rng, texture_rng = (np.random.default_rng(int(v)) for v in rng.integers(0, 2**63, 3))
    sl = _bbox(lung)
    if sl is None:  # no lung in the grid (a field of view above or below the chest)
        facts.update(lobe_voxels={}, fissures={}, parenchyma={}, branches={}, tube_segments=0, faint_segments=0)
        facts.update(vessel_share=0.0, airway_voxels_withheld=0, airway_overlaps={}, trachea={})
        return facts
    lung_box, right_box = lung[sl], right[sl]

    # ---- points the trees fill: the lung mask on a fixed 5 mm world lattice (the same on every grid), jittered ----
    lattice = _Lattice(canvas, sl, _COARSE_MM)
    sub = lung_box[np.ix_(*lattice.index)]
    li, lj, lk = np.nonzero(sub)
    ci, cj, ck = lattice.index[0][li], lattice.index[1][lj], lattice.index[2][lk]
    pts = _patient_coords(canvas, sl, ci, cj, ck)
    pts_right = right_box[ci, cj, ck]
    cell = np.full(3, _COARSE_MM)

    # ---- lobes ---------------------------------------------------------------------------------------------------
    oblique, horizontal = _draw_fissures(patient, shape_rng, pts, pts_right)
    pts_lobe = _lobe_of(pts[:, 0], pts[:, 1], pts[:, 2], pts_right, oblique, horizontal)

    ii, jj, kk = np.nonzero(lung_box)
    x, y, z = _patient_coords(canvas, sl, ii, jj, kk).T.astype(np.float32)
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
    lobe_ids = np.array([L[name] for name, _ in _LOBES], dtype=np.uint8)
    labb[ii, jj, kk] = lobe_ids[lobe]
    facts["lobe_voxels"] = {name: int(n) for (name, _), n in zip(_LOBES, np.bincount(lobe, minlength=5), strict=True)}
    facts["parenchyma"] = {"base_hu": round(base, 1), "gravity_gradient_hu": round(float(gradient), 1)}
    facts["fissures"] = {
        "oblique_right": _round(vars(oblique[1.0])),
        "oblique_left": _round(vars(oblique[-1.0])),
        "horizontal": _round(vars(horizontal)),
    }
    del x, y, z, hu, fine, regional, wobble, completeness, sheet_mm, d_obl, d_hor, sheet, minor, minor_thick

    # ---- main airways (hand-built from the landmarks) and the lobar roots of the trees -------------------------------
    airways = _main_airways(canvas, patient, shape_rng)

    # ---- trees: bronchovascular bundles (artery + bronchus) and veins, all lobes in one vectorised growth ------------
    depth = lattice.depth_lookup(sub)
    veins_at = _vein_roots(patient, shape_rng)
    trees = _trees(patient, tree_rng, pts, pts_lobe, cell, airways, veins_at, canvas.voxel_mm, depth)
    facts["branches"] = trees["counts"]
    vessel_segs, faint = trees["vessels"], trees["faint"]
    airway_walls, airway_lumens = trees["airway_walls"], trees["airway_lumens"]

    # ---- rasterise: vessels --------------------------------------------------------------------------------------
    buf = np.zeros(canvas.shape, dtype=np.float32)
    n_tube = _rasterise(canvas, vessel_segs, buf)
    frac = buf[sl]
    faint_rows = faint
    if len(faint_rows):
        np.maximum(frac, _splat(canvas, sl, faint_rows), out=frac)
    frac *= lung_box
    np.minimum(frac, 1.0, out=frac)
    facts["vessel_share"] = round(float(frac.sum(dtype=np.float64)) / max(len(ii), 1), 4)
    _blend_box(canvas, sl, frac, _BLOOD, L["lung_vessels"])
    facts["tube_segments"], facts["faint_segments"] = n_tube, int(len(faint_rows))

    # ---- rasterise: airways (walls of all, then lumens, so a wall never lies across another airway's lumen) -------
    trachea_wall, trachea_lumen = airways["trachea"]
    sl_air = _union(sl, _polyline_box(canvas, [trachea_wall, *airways["bronchi"]]))
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
            n_tube += _rasterise(canvas, intrapulmonary, buf)
            inside = buf[sl] * lung_box  # the tree stays inside the lungs
            buf.fill(0.0)
        n_tube += _rasterise(canvas, main, buf)  # the trachea and main bronchi cross the mediastinum
        if inside is not None:
            np.maximum(buf[sl], inside, out=buf[sl])
        frac = buf[sl_air]
        if value != _AIR:
            withheld += int((protected & (frac > 0.0)).sum())
        frac[protected] = 0.0
        _blend_box(canvas, sl_air, frac, value, label)
    # What the airways displaced (for the integrator: a neighbour that sits where an airway should run).
    names = {i: n for n, i in L.items()}
    after = canvas.labels[sl_air]
    moved = (after != before) & np.isin(after, [L["trachea"], L["lung_trachea_bronchia"]])
    moved &= ~np.isin(before, [L[n] for n in _LUNG_OR_FAT] + [L[n] for n, _ in _LOBES])
    ids, counts = np.unique(before[moved], return_counts=True)
    facts["airway_overlaps"] = {names.get(int(i), str(int(i))): int(c) for i, c in zip(ids, counts, strict=True)}
    facts["tube_segments"] = n_tube
    facts["airway_voxels_withheld"] = withheld
    facts["trachea"] = {
        "radius_mm": round(airways["r_trachea"], 2),
        "carina": [round(float(v), 1) for v in airways["carina"]],
    }
    return facts


# ---- geometry helpers ------------------------------------------------------------------------------------------------
def _unit(v: np.ndarray) -> np.ndarray:
    n = float(np.linalg.norm(v))
    return v / n if n > 1e-9 else np.array([0.0, 0.0, -1.0])


def _round(d: dict) -> dict:
    return {k: round(float(v), 2) for k, v in d.items()}


def _bbox(mask: np.ndarray) -> tuple[slice, slice, slice] | None:
    """Slices of the smallest box holding ``mask`` (None when empty)."""
    out = []
    for axis in range(3):
        any_ = np.nonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))[0]
        if len(any_) == 0:
            return None
        out.append(slice(int(any_[0]), int(any_[-1]) + 1))
    return tuple(out)


class _Lattice:
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


def _union(a: tuple[slice, ...], b: tuple[slice, ...]) -> tuple[slice, slice, slice]:
    return tuple(slice(min(p.start, q.start), max(p.stop, q.stop)) for p, q in zip(a, b, strict=True))


def _polyline_box(canvas: Canvas, lines: list[tuple[np.ndarray, np.ndarray]]) -> tuple[slice, slice, slice]:
    """World-grid slices covering tubes ``[(points, radii), ...]`` (clipped to the grid)."""
    pts = np.concatenate([p for p, _ in lines])
    reach = max(float(np.max(r)) for _, r in lines) + canvas.voxel_mm
    sl, _ = canvas.box(pts.min(axis=0) - reach, pts.max(axis=0) + reach)
    return tuple(slice(min(q.start, n), min(max(q.stop, q.start), n)) for q, n in zip(sl, canvas.shape, strict=True))


def _patient_coords(
    canvas: Canvas, sl: tuple[slice, slice, slice], i: np.ndarray, j: np.ndarray, k: np.ndarray
) -> np.ndarray:
    """Patient-frame ``(N, 3)`` mm of voxels ``(i, j, k)`` given in the box ``sl``."""
    gi, gj, gk = i + sl[0].start, j + sl[1].start, k + sl[2].start
    px = canvas.px[gi if canvas.px.shape[0] > 1 else 0, gj if canvas.px.shape[1] > 1 else 0, 0]
    py = canvas.py[gi if canvas.py.shape[0] > 1 else 0, gj if canvas.py.shape[1] > 1 else 0, 0]
    pz = canvas.pz[0, 0, gk]
    return np.column_stack([np.broadcast_to(px, gi.shape), np.broadcast_to(py, gi.shape), pz]).astype(np.float64)


def _draw_fissures(
    patient: Patient, rng: np.random.Generator, pts: np.ndarray, pts_right: np.ndarray
) -> tuple[dict[float, _Oblique], _Horizontal]:
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
        oblique[side] = _Oblique(
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
    horizontal = _Horizontal(
        z0=float(patient.z_carina - rng.uniform(40.0, 55.0) * s),
        y0=float(hy + 30.0 * s),
        x0=float(hx + 20.0 * s),
        slope_y=float(-rng.uniform(4.0, 15.0)),
        slope_x=float(-rng.uniform(0.0, 10.0)),
        dome=float(rng.uniform(0.0, 6.0)),
    )
    return oblique, horizontal


def _lobe_of(x, y, z, is_right, oblique: dict[float, _Oblique], horizontal: _Horizontal) -> np.ndarray:
    """Lobe index (``_RUL`` … ``_LLL``) of each point."""
    d_obl = np.where(is_right, oblique[1.0].distance(x, y, z), oblique[-1.0].distance(x, y, z))
    return _lobe_from(d_obl, horizontal.distance(x, y, z), is_right)


def _lobe_from(d_obl: np.ndarray, d_hor: np.ndarray, is_right: np.ndarray) -> np.ndarray:
    """Lobe index from the signed distances to the oblique and horizontal fissures."""
    right_lobe = np.where(d_obl < 0.0, _RLL, np.where(d_hor < 0.0, _RML, _RUL))
    return np.where(is_right, right_lobe, np.where(d_obl < 0.0, _LLL, _LUL)).astype(np.int64)


# ---- airways ---------------------------------------------------------------------------------------------------------
def _main_airways(canvas: Canvas, patient: Patient, rng: np.random.Generator) -> dict:
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
        return p + _unit(np.asarray(d, dtype=np.float64)) * length * s

    hr = np.asarray(patient.hilum(1.0), dtype=np.float64)
    hl = np.asarray(patient.hilum(-1.0), dtype=np.float64)
    a_r = math.radians(rng.uniform(22.0, 32.0))
    a_l = math.radians(rng.uniform(38.0, 50.0))
    b1 = ray(carina, (math.sin(a_r), -0.12, -math.cos(a_r)), rng.uniform(20.0, 26.0))  # right main bronchus
    b2 = ray(b1, (0.3, 0.15, -1.0), rng.uniform(22.0, 30.0))  # bronchus intermedius
    l1 = ray(carina, (-math.sin(a_l), -0.12, -math.cos(a_l)), rng.uniform(42.0, 50.0))  # left main bronchus
    jit = lambda: rng.uniform(-4.0, 4.0, 3) * s  # noqa: E731
    roots_at = {
        _RUL: hr + np.array([-10.0, -6.0, 10.0]) * s + jit(),
        _RML: hr + np.array([-4.0, 14.0, -26.0]) * s + jit(),
        _RLL: hr + np.array([-8.0, -10.0, -30.0]) * s + jit(),
        _LUL: hl + np.array([8.0, 6.0, 12.0]) * s + jit(),
        _LLL: hl + np.array([8.0, -8.0, -22.0]) * s + jit(),
    }
    r_main_r, r_bi, r_main_l = 0.76 * r_tr, 0.62 * r_tr, 0.7 * r_tr
    r_lobar = {_RUL: 0.52 * r_tr, _RML: 0.4 * r_tr, _RLL: 0.55 * r_tr, _LUL: 0.56 * r_tr, _LLL: 0.56 * r_tr}
    origin = {_RUL: b1, _RML: b2, _RLL: b2, _LUL: l1, _LLL: l1}
    bronchi = [
        (np.array([carina, b1]), np.array([r_main_r, r_main_r])),
        (np.array([b1, b2]), np.array([r_bi, r_bi])),
        (np.array([carina, l1]), np.array([r_main_l, r_main_l * 0.95])),
    ]
    roots = {}
    for lobe_id, point in roots_at.items():
        bronchi.append((np.array([origin[lobe_id], point]), np.array([r_lobar[lobe_id]] * 2)))
        roots[lobe_id] = (point, _unit(point - origin[lobe_id]), r_lobar[lobe_id])
    walls = [(p, _wall_radius(r)) for p, r in bronchi]
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


def _trees(
    patient: Patient,
    rng: np.random.Generator,
    pts: np.ndarray,
    pts_lobe: np.ndarray,
    cell: np.ndarray,
    airways: dict,
    veins_at: dict[int, np.ndarray],
    voxel_mm: float,
    depth: Callable[[np.ndarray], np.ndarray],
) -> dict:
    """Grow every lobe's bundle (artery + bronchus) and vein tree and turn them into tubes.

    Returns ``vessels`` and ``airway_walls``/``airway_lumens`` (polylines ``(points, radii)`` thick enough for
    :meth:`Canvas.tube_fraction`), ``faint`` (rows ``(a, b, r_a, r_b)`` of vessels thinner than half a voxel),
    ``counts`` and the raw ``tree``. Appends each lobe's bronchus from its lobar root to ``airways``.
    """
    s = patient.scale
    h = voxel_mm
    point_ml = float(np.prod(cell)) / 1000.0
    roots = airways["roots"]  # lobe -> (point, direction, radius of the lobar bronchus)
    groups_pts, groups_tree, tree_roots, tree_dirs, tree_kind, tree_lobe = [], [], [], [], [], []
    for lobe_id in range(5):
        members = np.nonzero(pts_lobe == lobe_id)[0]
        if len(members) < 8:
            continue
        centroid = pts[members].mean(axis=0)
        for kind in (0, 1):  # 0: bundle (artery with bronchus), 1: vein
            start = roots[lobe_id][0] if kind == 0 else veins_at[lobe_id]
            jitter = rng.uniform(-0.5, 0.5, (len(members), 3)) * cell
            groups_pts.append(pts[members] + jitter)
            groups_tree.append(np.full(len(members), len(tree_roots)))
            tree_roots.append(start)
            tree_dirs.append(_unit(centroid - start))
            tree_kind.append(kind)
            tree_lobe.append(lobe_id)
    counts = {"arteries": 0, "bronchi": 0, "veins": 0}
    tree: dict = {}
    vessel_segs: list[tuple[np.ndarray, np.ndarray]] = []  # (points (P,3), radii (P,)) polylines
    faint: list[np.ndarray] = []  # rows (ax, ay, az, bx, by, bz, ra, rb)
    airway_walls: list[tuple[np.ndarray, np.ndarray]] = []
    airway_lumens: list[tuple[np.ndarray, np.ndarray]] = []
    thick_r = 0.5 * h  # below this a tube is drawn as a faint line with its true cross-section
    airway_r = max(1.0, 0.5 * h)  # bronchi thinner than this are below what CT resolves
    if tree_roots:
        kinds = np.asarray(tree_kind)
        tree = _grow(
            np.concatenate(groups_pts),
            np.concatenate(groups_tree),
            np.asarray(tree_roots),
            np.asarray(tree_dirs),
            np.where(kinds == 0, 0, 1),
            rng,
        )
        vol_ml = tree["count"] * point_ml
        is_vein = kinds[tree["tree"]] == 1
        radius = np.where(is_vein, _R_LITRE_VEIN, _R_LITRE_ARTERY) * (vol_ml / 1000.0) ** (1.0 / _GAMMA) * s**0.3
        # Supine: the dependent vessels carry more blood and look a little wider.
        radius *= 1.0 + 0.08 * np.clip(-(tree["end"][:, 1] - patient.body_y) / 80.0, -1.0, 1.0)
        # The outer 1–2 cm holds only terminal arterioles and venules (< 0.5 mm), below what CT resolves: twigs
        # that reach towards the pleura thin out (wide vessels running near it, at the hilum, stay as they are).
        near = np.clip((depth(tree["end"]) - 3.0) / 12.0, 0.25, 1.0)
        small = np.clip((1.5 - radius) / 1.0, 0.0, 1.0)
        radius *= 1.0 - small * (1.0 - near)
        tree["radius"] = radius
        bundle = ~is_vein
        offset = _bundle_offsets(tree, bundle)
        ends = tree["end"]
        roots_of = np.asarray(tree_roots)[tree["tree"]]
        art_end = ends + offset * (radius + 0.5 * _BUNDLE_GAP)[:, None]
        bro_end = ends - offset * (radius + 0.5 * _BUNDLE_GAP)[:, None]
        par = tree["parent"]
        top = par < 0
        root_off = offset[top] * (radius[top] + 0.5 * _BUNDLE_GAP)[:, None]
        art_start = np.where(top[:, None], 0.0, art_end[np.maximum(par, 0)])
        art_start[top] = roots_of[top] + np.where(bundle[top, None], root_off, 0.0)
        bro_start = np.where(top[:, None], 0.0, bro_end[np.maximum(par, 0)])
        bro_start[top] = roots_of[top] - root_off
        vessel_start = np.where(bundle[:, None], art_start, tree["start"])
        vessel_end = np.where(bundle[:, None], art_end, ends)
        tree.update(vessel_start=vessel_start, vessel_end=vessel_end, is_vein=is_vein)
        # The bronchus of each lobe starts where its lobar bronchus ends, beside the lobar artery.
        for b in np.nonzero(top & bundle)[0]:
            point, _, r_lobar = roots[tree_lobe[tree["tree"][b]]]
            line = np.array([point, bro_start[b]])
            airways["bronchi"].append((line, np.full(2, _wall_radius(r_lobar))))
            airways["lumens"].append((line, np.full(2, r_lobar)))
        # Arteries from the hilum to each lobe's first branch (the pulmonary artery ends at the hilum).
        for b in np.nonzero(top & bundle)[0]:
            side = 1.0 if roots_of[b][0] > 0 else -1.0
            hilum = np.asarray(patient.hilum(side), dtype=np.float64)
            r_h = 8.0 * s
            vessel_segs.append(
                (
                    np.array([hilum, 0.5 * (hilum + art_start[b]), art_start[b]]),
                    np.array([r_h, 0.5 * (r_h + radius[b]), radius[b]]),
                )
            )
        # Veins from each lobe's first branch medially towards the left atrium (they leave the lung there).
        for b in np.nonzero(top & is_vein)[0]:
            side = 1.0 if tree["start"][b][0] > 0 else -1.0
            atrium = tree["start"][b] + np.array([-side * 25.0 * s, 4.0, -4.0])
            vessel_segs.append((np.array([atrium, tree["start"][b]]), np.array([radius[b] * 1.2, radius[b]])))
        thick = radius >= thick_r
        counts["arteries"] = int(bundle.sum())
        counts["veins"] = int(is_vein.sum())
        vessel_segs += _paths(vessel_start, vessel_end, radius, par, thick, tree["count"])
        leaf_taper = np.where(tree["leaf"], 0.2, 0.85)  # terminal twigs fade out
        thin = ~thick
        faint.append(
            np.column_stack([vessel_start[thin], vessel_end[thin], radius[thin], radius[thin] * leaf_taper[thin]])
        )
        air = bundle & (radius >= airway_r)
        counts["bronchi"] = int(air.sum())
        r_out = radius * 0.95
        r_in = r_out - np.maximum(0.3 * r_out, 0.35)
        airway_walls += _paths(bro_start, bro_end, r_out, par, air, tree["count"])
        airway_lumens += _paths(bro_start, bro_end, r_in, par, air, tree["count"])

    faint_rows = np.concatenate(faint) if faint else np.zeros((0, 8))
    return {
        "vessels": vessel_segs,
        "faint": faint_rows,
        "airway_walls": airway_walls,
        "airway_lumens": airway_lumens,
        "counts": counts,
        "tree": tree,
    }


def _vein_roots(patient: Patient, rng: np.random.Generator) -> dict[int, np.ndarray]:
    """Where each lobe's vein tree starts: the superior (upper/middle lobes) and inferior (lower lobes) pulmonary
    veins, anterior and inferior to the bronchi at the hilum, medially at the left atrium's level."""
    s = patient.scale
    out = {}
    for lobe_id, side, dx, dy, dz in (
        (_RUL, 1.0, -10.0, 16.0, -14.0),
        (_RML, 1.0, -8.0, 20.0, -24.0),
        (_RLL, 1.0, -12.0, -2.0, -44.0),
        (_LUL, -1.0, 10.0, 14.0, -14.0),
        (_LLL, -1.0, 12.0, -2.0, -40.0),
    ):
        h = np.asarray(patient.hilum(side), dtype=np.float64)
        out[lobe_id] = h + np.array([dx, dy, dz]) * s + rng.uniform(-3.0, 3.0, 3) * s
    return out


def _wall_radius(lumen: np.ndarray | float) -> np.ndarray | float:
    """Outer radius of a main/lobar bronchus: walls ~1–2 mm (a quarter of the lumen radius, at least 1 mm)."""
    return lumen + np.maximum(0.25 * np.asarray(lumen), 1.0)


# ---- tree growth -----------------------------------------------------------------------------------------------------
def _grow(
    points: np.ndarray,
    tree_of: np.ndarray,
    roots: np.ndarray,
    root_dirs: np.ndarray,
    split_rule: np.ndarray,
    rng: np.random.Generator,
) -> dict[str, np.ndarray]:
    """Volume-filling growth of many trees at once (Tawhai et al. 2000).

    ``points (N, 3)`` mm, ``tree_of (N,)`` which tree each point belongs to, ``roots``/``root_dirs (T, 3)``;
    ``split_rule (T,)`` 0: split a region across its widest extent (bundles), 1: across its second-widest for the
    first two generations (veins, so they run between the arterial branches rather than along them).

    Returns per branch: ``start``, ``end`` (B, 3), ``count`` (points supplied), ``parent`` (−1 for a tree's first),
    ``tree``, ``leaf``, ``depth``. Parents precede their daughters.
    """
    start, parent_dir = roots.astype(np.float64), root_dirs.astype(np.float64)
    parent = np.full(len(roots), -1)
    tree = np.arange(len(roots))
    gid = tree_of.astype(np.int64)
    pts = points.astype(np.float64)
    rows: dict[str, list] = {k: [] for k in ("start", "end", "count", "parent", "tree", "leaf", "depth")}
    n_branches, depth, cos_max, sin_max = 0, 0, math.cos(_MAX_ANGLE), math.sin(_MAX_ANGLE)
    while len(gid) and len(start):
        g_n = len(start)
        cnt = np.bincount(gid, minlength=g_n).astype(np.float64)
        centroid = np.stack([np.bincount(gid, pts[:, a], g_n) for a in range(3)], axis=1) / cnt[:, None]
        v = centroid - start
        dist = np.linalg.norm(v, axis=1)
        u = np.where(dist[:, None] > 1e-6, v / np.maximum(dist, 1e-6)[:, None], parent_dir)
        # Daughters turn at most _MAX_ANGLE away from their parent (real branching angles are 30–60°).
        cos_a = (u * parent_dir).sum(axis=1)
        perp = u - cos_a[:, None] * parent_dir
        pn = np.linalg.norm(perp, axis=1)
        bend = (cos_a < cos_max) & (pn > 1e-6)
        turned = cos_max * parent_dir + sin_max * perp / np.maximum(pn, 1e-9)[:, None]
        u = np.where(bend[:, None], turned, u)
        leaf = cnt <= _LEAF_POINTS
        frac = _BRANCH_FRACTION * rng.uniform(0.8, 1.25, g_n)
        length = np.where(leaf, dist * rng.uniform(0.4, 0.8, g_n), dist * frac)
        length = np.maximum(length, 1.5)
        end = start + u * length[:, None]
        ids = np.arange(n_branches, n_branches + g_n)
        for k, val in (
            ("start", start),
            ("end", end),
            ("count", cnt),
            ("parent", parent),
            ("tree", tree),
            ("leaf", leaf),
            ("depth", np.full(g_n, depth)),
        ):
            rows[k].append(val)
        n_branches += g_n
        # Split each region by a plane along its branch, across the region's widest (or second-widest) extent.
        d = pts - centroid[gid]
        cov = np.empty((g_n, 3, 3))
        for a in range(3):
            for b in range(a, 3):
                cov[:, a, b] = cov[:, b, a] = np.bincount(gid, d[:, a] * d[:, b], g_n)
        # Principal axes of the region seen along its branch: a 2×2 eigenproblem in a basis perpendicular to u.
        e1 = np.cross(u, np.where(np.abs(u[:, 2:3]) < 0.9, [[0.0, 0.0, 1.0]], [[1.0, 0.0, 0.0]]))
        e1 /= np.linalg.norm(e1, axis=1)[:, None]
        e2 = np.cross(u, e1)
        c11 = np.einsum("gi,gij,gj->g", e1, cov, e1)
        c12 = np.einsum("gi,gij,gj->g", e1, cov, e2)
        c22 = np.einsum("gi,gij,gj->g", e2, cov, e2)
        theta = 0.5 * np.arctan2(2.0 * c12, c11 - c22)  # the widest direction
        second = (split_rule[tree] == 1) & (depth < 2)
        theta = theta + np.where(second, 0.5 * math.pi, 0.0)
        theta = theta + rng.normal(0.0, 0.35, g_n)  # some variety in the branching planes
        axis = np.cos(theta)[:, None] * e1 + np.sin(theta)[:, None] * e2
        side = (d * axis[gid]).sum(axis=1) > 0.0
        key = np.where(leaf[gid], -1, 2 * gid + side)
        keep = key >= 0
        present = np.bincount(key[keep], minlength=2 * g_n) > 0
        remap = np.cumsum(present) - 1
        new_parent_g = np.nonzero(present)[0] // 2
        pts, gid = pts[keep], remap[key[keep]]
        start, parent_dir = end[new_parent_g], u[new_parent_g]
        parent, tree = ids[new_parent_g], tree[new_parent_g]
        depth += 1
        if depth > 60:  # cannot happen with a finite point set, but never loop for ever
            break
    return {k: np.concatenate(v) for k, v in rows.items()}


def _bundle_offsets(tree: dict[str, np.ndarray], bundle: np.ndarray) -> np.ndarray:
    """Unit vectors, perpendicular to each branch, from the bundle's axis to its artery (the bronchus lies opposite),
    carried down the tree so a pair never swaps sides abruptly."""
    direction = tree["end"] - tree["start"]
    direction /= np.maximum(np.linalg.norm(direction, axis=1), 1e-9)[:, None]
    offset = np.zeros_like(direction)
    depth, parent = tree["depth"], tree["parent"]
    for level in range(int(depth.max()) + 1):
        at = np.nonzero(depth == level)[0]
        if level == 0:
            # At the hilum the arteries lie anterolateral to the bronchi.
            side = np.sign(tree["start"][at, 0])
            ref = np.column_stack([side, np.full(len(at), 0.8), np.zeros(len(at))])
        else:
            ref = offset[parent[at]]
        ref = ref - (ref * direction[at]).sum(axis=1)[:, None] * direction[at]
        n = np.linalg.norm(ref, axis=1)
        fallback = np.cross(direction[at], np.array([0.0, 0.0, 1.0]))
        ref = np.where((n > 1e-6)[:, None], ref / np.maximum(n, 1e-9)[:, None], fallback)
        offset[at] = ref / np.maximum(np.linalg.norm(ref, axis=1), 1e-9)[:, None]
    return offset * bundle[:, None]


def _paths(
    start: np.ndarray,
    end: np.ndarray,
    radius: np.ndarray,
    parent: np.ndarray,
    keep: np.ndarray,
    count: np.ndarray,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Split the kept branches (a top part of the tree) into polylines that follow the larger daughter, so each
    polyline tapers smoothly and joints are drawn once: ``[(points (P, 3), radii (P,)), ...]``."""
    idx = np.nonzero(keep)[0]
    if len(idx) == 0:
        return []
    main_child = {}
    for b in idx:  # parents precede daughters; the daughter supplying more volume continues its parent's path
        p = int(parent[b])
        if p >= 0 and keep[p] and (p not in main_child or count[b] > count[main_child[p]]):
            main_child[p] = int(b)
    continues = set(main_child.values())
    out = []
    for b in idx:
        if int(b) in continues:
            continue
        pts, rad = [start[b]], [radius[b]]
        cur = int(b)
        while True:
            nxt = main_child.get(cur)
            pts.append(end[cur])
            rad.append(radius[nxt] if nxt is not None else 0.8 * radius[cur])
            if nxt is None:
                break
            cur = nxt
        out.append((np.asarray(pts), np.asarray(rad)))
    return out


# ---- rasterisation -------------------------------------------------------------------------------------------------
_BATCH_SIZES = (4, 6, 8, 12, 16)  # voxel windows of the batched rasteriser; longer segments use Canvas.tube_fraction


def _rasterise(canvas: Canvas, lines: list[tuple[np.ndarray, np.ndarray]], out: np.ndarray) -> int:
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


def _splat(canvas: Canvas, sl: tuple[slice, slice, slice], rows: np.ndarray) -> np.ndarray:
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


def _blend_box(canvas: Canvas, sl: tuple[slice, slice, slice], frac: np.ndarray, hu: float, label: int) -> None:
    """:meth:`Canvas.blend` restricted to the box ``sl`` (``frac`` has the box's shape)."""
    hub, labb = canvas.hu[sl], canvas.labels[sl]
    touched = frac > 0.0
    hub[touched] += frac[touched] * (np.float32(hu) - hub[touched])
    labb[frac >= 0.5] = label
