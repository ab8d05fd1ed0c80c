"""Lungs: lobes and fissures, parenchyma, the airways and the pulmonary arteries and veins (non-contrast CT).

Painted into the pleural space the integrator hands over (:func:`.torso.lung_region`), after the body wall, heart
and mediastinum and before the bones, by :func:`paint_lungs`, in this order:

* the fissures, drawn from the landmarks and the lungs' extent, which split the lungs into lobes; the parenchyma
  (inspiration level, gravity gradient, texture), the fissure sheets and the lobe labels (:mod:`.lobes`);
* the trachea, main and lobar bronchi, hand-built from the landmarks (:mod:`.airways`);
* in each lobe a bronchovascular bundle tree (artery + bronchus) and a vein tree, grown in millimetres on a 5 mm
  world lattice of the lung masks (:mod:`.trees`);
* the pulmonary vessels (label ``lung_vessels``, blood 40 HU non-contrast), then the walls and lumens of all airways
  (:mod:`.airways`), as partial-volume tubes and thin-tube splats (:mod:`.raster`).

:func:`paint_lungs` draws three child streams from its ``rng`` (shapes, trees, textures), so the shapes drawn do not
depend on how many numbers the grid-sized noise fields or the mask-sized trees consume, and everything is laid out in
millimetres: one seed gives the same lungs on every grid. About 0.2–0.45 s at 128³ (2.5 mm) and 0.7–1.7 s at 256³
(1.25 mm) on one core.
"""

from __future__ import annotations

import numpy as np

from ..canvas import Canvas
from ..labels import PHANTOM_LABELS as L
from ..patient import Patient
from .airways import main_airways, paint_airways
from .lobes import LOBES, draw_fissures, lobe_of, paint_parenchyma
from .raster import Lattice, bbox, blend_box, patient_coords, rasterise, splat
from .trees import COARSE_MM, grow_trees, vein_roots

__all__ = ["paint_lungs"]

_BLOOD = 40.0  # non-contrast blood 35–45 HU


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
    facts: dict = {"lobe_labels": {name: L[name] for name, _ in LOBES}}
    # Three child streams, so the shapes drawn (fissures, airways, HU levels) do not depend on how many numbers the
    # grid-sized noise fields or the mask-sized trees consume: one seed gives the same patient on every grid.
    shape_rng, tree_rng, texture_rng = (np.random.default_rng(int(v)) for v in rng.integers(0, 2**63, 3))
    sl = bbox(lung)
    if sl is None:  # no lung in the grid (a field of view above or below the chest)
        facts.update(lobe_voxels={}, fissures={}, parenchyma={}, branches={}, tube_segments=0, faint_segments=0)
        facts.update(vessel_share=0.0, airway_voxels_withheld=0, airway_overlaps={}, trachea={})
        return facts
    lung_box, right_box = lung[sl], right[sl]

    # ---- points the trees fill: the lung mask on a fixed 5 mm world lattice (the same on every grid), jittered ----
    lattice = Lattice(canvas, sl, COARSE_MM)
    sub = lung_box[np.ix_(*lattice.index)]
    li, lj, lk = np.nonzero(sub)
    ci, cj, ck = lattice.index[0][li], lattice.index[1][lj], lattice.index[2][lk]
    pts = patient_coords(canvas, sl, ci, cj, ck)
    pts_right = right_box[ci, cj, ck]
    cell = np.full(3, COARSE_MM)

    # ---- lobes ---------------------------------------------------------------------------------------------------
    oblique, horizontal = draw_fissures(patient, shape_rng, pts, pts_right)
    pts_lobe = lobe_of(pts[:, 0], pts[:, 1], pts[:, 2], pts_right, oblique, horizontal)

    # ---- parenchyma, fissure sheets and lobe labels --------------------------------------------------------------
    facts.update(
        paint_parenchyma(canvas, patient, sl, lung_box, right_box, oblique, horizontal, shape_rng, texture_rng)
    )

    # ---- main airways (hand-built from the landmarks) and the lobar roots of the trees -------------------------------
    airways = main_airways(canvas, patient, shape_rng)

    # ---- trees: bronchovascular bundles (artery + bronchus) and veins, all lobes in one vectorised growth ------------
    depth = lattice.depth_lookup(sub)
    veins_at = vein_roots(patient, shape_rng)
    trees = grow_trees(patient, tree_rng, pts, pts_lobe, cell, airways, veins_at, canvas.voxel_mm, depth)
    facts["branches"] = trees["counts"]
    vessel_segs, faint = trees["vessels"], trees["faint"]
    airway_walls, airway_lumens = trees["airway_walls"], trees["airway_lumens"]

    # ---- rasterise: vessels, then airways (walls of all, then lumens) ----------------------------------------------
    buf = np.zeros(canvas.shape, dtype=np.float32)
    n_tube = rasterise(canvas, vessel_segs, buf)
    frac = buf[sl]
    if len(faint):
        np.maximum(frac, splat(canvas, sl, faint), out=frac)
    frac *= lung_box
    np.minimum(frac, 1.0, out=frac)
    n_lung = int(np.count_nonzero(lung_box))
    facts["vessel_share"] = round(float(frac.sum(dtype=np.float64)) / max(n_lung, 1), 4)
    blend_box(canvas, sl, frac, _BLOOD, L["lung_vessels"])
    facts["tube_segments"], facts["faint_segments"] = n_tube, int(len(faint))
    n_air, airway_facts = paint_airways(canvas, sl, lung_box, airways, airway_walls, airway_lumens, buf)
    facts.update(airway_facts)
    facts["tube_segments"] = n_tube + n_air
    return facts
