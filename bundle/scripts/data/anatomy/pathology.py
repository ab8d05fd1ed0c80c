"""Findings a chest radiograph is read for, each painted with its own label (cardiomegaly: a larger heart).

CT numbers (non-contrast): solid nodules and masses ≈ 30–45 HU (ground-glass nodules ≈ −500); transudative
pleural effusion 0–20 HU, layering posteriorly because the patient lies supine and climbing the lateral chest wall
(the meniscus); consolidation −100…+40 HU with air bronchograms (the airways inside keep their air); atelectasis
≈ 20–50 HU, posterior-basal, where the lung is compressed; pneumothorax −1000 HU without lung markings, anterior
(non-dependent in supine); emphysema −950…−1000 HU (below the −950 HU threshold used to quantify it), centrilobular
and upper-lobe predominant; cardiomegaly a heart enlarged by 20–45 % (cardiothoracic ratio > 0.5).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .canvas import Canvas
from .labels import PATHOLOGIES
from .labels import PHANTOM_LABELS as L
from .patient import Patient

__all__ = ["draw_findings", "paint_findings"]

_LOBES = {
    1.0: ("lung_upper_lobe_right", "lung_middle_lobe_right", "lung_lower_lobe_right"),
    -1.0: ("lung_upper_lobe_left", "lung_lower_lobe_left"),
}


def draw_findings(
    rng: np.random.Generator, patient: Patient, share: float, findings: Sequence[str] | None = None
) -> dict[str, dict]:
    """Choose the findings of one phantom: the ``findings`` named, else with probability ``share`` one to three
    drawn at random. Sets the heart size for cardiomegaly. Returns ``{name: parameters}``."""
    if findings is None:
        chosen = []
        if rng.random() < share:
            chosen = list(rng.choice(PATHOLOGIES, size=int(rng.integers(1, 4)), replace=False))
    else:
        unknown = sorted(set(findings) - set(PATHOLOGIES))
        if unknown:
            raise ValueError(f"findings must be among {list(PATHOLOGIES)}, got {unknown}.")
        chosen = list(findings)
    out: dict[str, dict] = {}
    for name in PATHOLOGIES:  # a fixed order keeps the draws of one seed reproducible
        if name not in chosen:
            continue
        side = float(rng.choice([1.0, -1.0]))
        if name == "cardiomegaly":
            patient.heart_scale = float(rng.uniform(1.2, 1.45))
            out[name] = {"heart_scale": patient.heart_scale}
        elif name == "nodule":
            out[name] = {"count": int(rng.integers(1, 5)), "ground_glass": bool(rng.random() < 0.25)}
        elif name == "pleural_effusion":
            out[name] = {
                "side": "both" if rng.random() < 0.3 else ("right" if side > 0 else "left"),
                "depth_mm": float(rng.uniform(15.0, 45.0) * patient.scale),
            }
        elif name == "pneumothorax":
            out[name] = {"side": "right" if side > 0 else "left", "depth_mm": float(rng.uniform(8.0, 30.0))}
        else:
            out[name] = {"side": "right" if side > 0 else "left"}
    patient.findings = out
    return out


def paint_findings(
    canvas: Canvas, patient: Patient, rng: np.random.Generator, right: np.ndarray, left: np.ndarray
) -> None:
    """Paint ``patient.findings`` into the lungs (``right``/``left``: the pleural spaces the lungs fill)."""
    px, py, pz = canvas.px, canvas.py, canvas.pz
    lungs = right | left
    f = patient.findings
    hu, labels = canvas.hu, canvas.labels
    airway = np.isin(labels, [L["trachea"], L["lung_trachea_bronchia"]])
    for name in PATHOLOGIES:
        if name not in f or name == "cardiomegaly":
            continue
        params = f[name]
        sides = (1.0, -1.0) if params.get("side") == "both" else ((1.0,) if params.get("side") == "right" else (-1.0,))
        space = {1.0: right, -1.0: left}
        if name == "emphysema":
            for side in sides:
                upper = space[side] & (pz > 0.5 * (patient.z_apex + patient.z_carina) - 60.0)
                holes = (canvas.noise(rng, 7.0) > 0.6) & upper & (hu < -600.0)
                canvas.paint(holes, -975.0 + 10.0 * canvas.noise(rng, 3.0), L["emphysema"])
        elif name == "nodule":
            for _ in range(params["count"]):
                centre, radius = _point_in(rng, canvas, lungs), rng.uniform(3.0, 12.0)
                value = -520.0 if params["ground_glass"] else rng.uniform(25.0, 45.0)
                ball = canvas.ellipsoid(centre, (radius, radius * rng.uniform(0.8, 1.2), radius)) & lungs
                canvas.paint(ball, value, L["lung_nodules"])
        elif name == "mass":
            side = sides[0]
            centre = _point_in(rng, canvas, space[side])
            blob = np.zeros(canvas.shape, dtype=bool)
            for _ in range(4):  # lobulated: a few overlapping balls
                r = rng.uniform(12.0, 25.0)
                blob |= canvas.ellipsoid(centre + rng.normal(0.0, 10.0, 3), (r, r, r * 1.1))
            canvas.paint(blob & space[side], 38.0 + 8.0 * canvas.noise(rng, 5.0), L["lung_mass"])
        elif name == "consolidation":
            side = sides[0]
            lobe = labels == L[_LOBES[side][int(rng.integers(len(_LOBES[side])))]]
            centre = _point_in(rng, canvas, lobe if lobe.any() else space[side])
            radius = rng.uniform(25.0, 50.0)
            patch = canvas.ellipsoid(centre, (radius, radius, 1.3 * radius)) & space[side] & ~airway
            patch &= canvas.noise(rng, 10.0) > -0.8
            canvas.paint(patch, -20.0 + 40.0 * canvas.noise(rng, 4.0), L["consolidation"])
        elif name == "atelectasis":
            for side in sides:
                base = space[side] & (pz < patient.z_dome_right + 50.0 * patient.scale)
                dependent = base & (py < patient.spine_y(pz) + rng.uniform(15.0, 35.0))
                canvas.paint(dependent & ~airway, 35.0 + 6.0 * canvas.noise(rng, 4.0), L["atelectasis"])
        elif name == "pleural_effusion":
            for side in sides:
                # Supine: the fluid layers posteriorly; its surface rises towards the base (the posterior recess)
                # and climbs the lateral wall — the meniscus.
                wall = patient.body_radius(px, py, pz, patient.wall_mm)
                level = (
                    patient.spine_y(pz)
                    - 10.0
                    + params["depth_mm"]
                    + 0.25 * np.clip(patient.z_dome_right + 60.0 - pz, 0.0, None)
                    + 40.0 * np.clip(wall - 0.85, 0.0, None) / 0.15
                )
                fluid = space[side] & (py < level)
                canvas.paint(fluid, 8.0 + 4.0 * canvas.noise(rng, 6.0), L["pleural_effusion"])
        elif name == "pneumothorax":
            for side in sides:
                wall = patient.body_radius(px, py, pz, patient.wall_mm)
                front = py - patient.body_y
                # Supine: air collects anteriorly (non-dependent), a rim between the chest wall and the lung.
                rim = space[side] & (front > 0.0) & (wall > 1.0 - params["depth_mm"] / patient.half_ap_anterior)
                canvas.paint(rim, -1000.0, L["pneumothorax"])


def _point_in(rng: np.random.Generator, canvas: Canvas, mask: np.ndarray) -> np.ndarray:
    """A random patient-frame point (mm) inside ``mask`` (the patient-frame origin when it has none)."""
    idx = np.flatnonzero(mask)
    if idx.size == 0:
        return np.zeros(3)
    i, j, k = np.unravel_index(int(idx[rng.integers(idx.size)]), canvas.shape)
    return canvas.patient_points(i, j, k)[0]
