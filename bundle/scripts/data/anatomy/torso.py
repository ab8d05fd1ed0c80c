"""The body wall, the thoracic cavity and the upper abdomen.

Painted first (later modules overwrite): skin (2 mm, ≈ 20 HU), subcutaneous fat (≈ −100 HU with fibrous septa),
breasts (fibroglandular tissue in fat, −80…+20 HU), the chest-wall muscles (pectoralis, serratus, intercostals,
≈ 50 HU), the mediastinal fat (≈ −95 HU) and, below the diaphragm, liver (≈ 58 HU non-contrast), spleen (≈ 48 HU),
stomach (wall and fluid ≈ 25 HU, a gas cap anterior because the patient lies supine), kidneys (≈ 32 HU) and
bowel/mesentery in fat. :func:`lung_region` then gives the space the lungs fill: the pleural cavity above the
domes, outside the mediastinum.
"""

from __future__ import annotations

import numpy as np

from .canvas import Canvas
from .labels import PHANTOM_LABELS as L
from .patient import Patient

__all__ = ["lung_region", "mediastinum_mask", "paint_abdomen", "paint_body_wall"]


def paint_body_wall(canvas: Canvas, patient: Patient, rng: np.random.Generator) -> None:
    """Skin, subcutaneous fat, breasts, chest-wall muscles and the body's inner soft tissue."""
    px, py, pz = canvas.px, canvas.py, canvas.pz
    radius = patient.body_radius(px, py, pz)
    body = radius <= 1.0
    texture = canvas.noise(rng, 6.0)
    # The body's interior starts as mediastinal/visceral fat; organs are painted into it.
    canvas.paint(body, -92.0 + 12.0 * texture, L["torso_fat"])
    # Muscle from under the fat down to the parietal pleura: pectorals/serratus outside, intercostals between the
    # ribs (the skeleton module paints the ribs into this layer).
    muscle_in = patient.inside_body(px, py, pz, patient.wall_mm)
    fat_in = patient.inside_body(px, py, pz, 2.0 + patient.fat_mm)
    muscle = fat_in & ~muscle_in
    # Pectoralis major: the muscle layer thickened to 1.6× over the anterior upper chest.
    front = py - patient.body_y
    upper = (pz < patient.z_sternal_notch) & (pz > patient.z_xiphoid + 40.0 * patient.scale)
    pectoral = fat_in & ~patient.inside_body(px, py, pz, 2.0 + patient.fat_mm + 1.6 * patient.muscle_mm)
    pectoral &= upper & (front > 0.35 * patient.half_ap_anterior) & (np.abs(px) > 15.0)
    muscle |= pectoral
    canvas.paint(muscle, 50.0 + 6.0 * texture, L["skeletal_muscle"])
    fat = body & ~fat_in
    septa = np.abs(canvas.noise(rng, 4.0)) < 0.08  # thin fibrous septa in the fat
    canvas.paint(fat, np.where(septa, -40.0, -105.0 + 8.0 * texture), L["subcutaneous_fat"])
    skin = body & (radius > 1.0 - 2.0 / np.minimum(patient.width_profile(pz), patient.half_ap_posterior))
    canvas.paint(skin, 20.0, L["skin"])
    if patient.breasts:
        _paint_breasts(canvas, patient, rng, texture)


def _paint_breasts(canvas: Canvas, patient: Patient, rng: np.random.Generator, texture: np.ndarray) -> None:
    """Two ellipsoids on the anterior chest wall, rooted in the subcutaneous fat over the pectorals: fat with
    fibroglandular tissue (≈ +15 HU) in a share drawn per patient (breast density), skin over the outside."""
    size = rng.uniform(0.6, 1.4) * (1.0 if patient.sex == "female" else 0.35)
    z_c = patient.z_xiphoid + rng.uniform(50.0, 75.0) * patient.scale
    r = np.array([55.0, 42.0, 50.0]) * size * patient.scale
    density = rng.uniform(0.2, 0.7)  # fibroglandular share
    a = float(patient.width_profile(np.float32(z_c)))
    front = float(patient.ap_profile(np.float32(z_c))[0])
    for side in (1.0, -1.0):
        x_c = side * 0.45 * a
        surface = patient.body_y + front * np.sqrt(max(0.0, 1.0 - (x_c / a) ** 2))  # the skin under the breast
        y_c = surface - 0.35 * r[1]
        sl, (px, py, pz) = canvas.box((x_c - r[0], y_c - r[1], z_c - r[2]), (x_c + r[0], y_c + r[1], z_c + r[2]))
        value = ((px - x_c) / r[0]) ** 2 + ((py - y_c) / r[1]) ** 2 + ((pz - z_c) / r[2]) ** 2
        region_hu, region_lab = canvas.hu[sl], canvas.labels[sl]
        # The breast replaces air and subcutaneous fat only; the pectoral muscle and ribs beneath stay.
        inside = (value <= 1.0) & np.isin(region_lab, [0, L["skin"], L["subcutaneous_fat"]])
        glandular = canvas.noise(rng, 8.0, sl) > (1.0 - 2.0 * density)
        hu = np.where(glandular, 15.0, -95.0) + 8.0 * texture[sl]
        region_hu[inside] = np.broadcast_to(hu, inside.shape)[inside]
        region_lab[inside] = L["breast"]
        skin = inside & (value > (1.0 - 2.5 / r[1]) ** 2) & (region_lab == L["breast"])
        skin &= np.broadcast_to(py > surface, skin.shape)
        region_hu[skin] = 20.0
        region_lab[skin] = L["skin"]


def mediastinum_mask(canvas: Canvas, patient: Patient) -> np.ndarray:
    """The midline compartment between the lungs (patient frame): superior mediastinum, the anterior junction and the
    prevertebral space around the spine, aorta and oesophagus (the heart is added by the heart module)."""
    px, py, pz = canvas.px, canvas.py, canvas.pz
    s = patient.scale
    spine_y = patient.spine_y(pz)
    # Superior mediastinum (above the carina): 35–60 mm wide round the trachea and great vessels, narrowing to the
    # anterior junction line where the lungs meet behind the sternum; below the carina only a thin septum separates
    # the lungs (≈ 2.5 mm, the four pleural layers of the junction line; the heart, vessels and oesophagus are added
    # as their own masks), so the lower lobes reach behind
    # the heart as real ones do.
    superior = np.clip((pz - patient.z_carina + 15.0) / 30.0, 0.0, 1.0)
    front = np.clip((py - patient.body_y - 10.0) / 50.0, 0.0, 1.0)
    width = 1.2 + s * superior * (18.0 + 10.0 * np.clip((patient.z_sternal_notch - pz) / 60.0, 0.0, 1.0)) * (
        1.0 - 0.7 * front
    )
    sup = (np.abs(px + 4.0) < width) & (py > spine_y - 5.0)
    # Prevertebral/paravertebral block: the lungs wrap round the vertebral body but not into the canal.
    vr = patient.vertebral_radius
    pre = ((px / (vr[0] + 10.0)) ** 2 + ((py - spine_y) / (vr[1] + 12.0)) ** 2) <= 1.0
    pre |= (np.abs(px) < vr[0] + 4.0) & (py < spine_y + vr[1] + 25.0)
    # Descending aorta's bed, left of the spine.
    aorta = ((px + 0.9 * vr[0] + 6.0) ** 2 + (py - spine_y - vr[1] - 6.0) ** 2) <= (s * 18.0) ** 2
    return sup | pre | aorta


def lung_region(canvas: Canvas, patient: Patient, occupied: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(right, left) masks of the space the lungs fill: pleural cavity above the diaphragm and below the apex caps,
    outside ``occupied`` (mediastinum, heart and great vessels)."""
    px, py, pz = canvas.px, canvas.py, canvas.pz
    cavity = patient.inside_body(px, py, pz, patient.wall_mm)
    cavity &= pz > patient.diaphragm_z(px, py)
    # Apices: domes rising to z_apex over each lung's posterior-medial third.
    ax = 0.42 * patient.half_width
    ay = patient.spine_y0 + 35.0 * patient.scale
    apex = patient.z_apex - 85.0 * (
        ((np.abs(px) - ax) / (0.5 * patient.half_width)) ** 2 + ((py - ay) / (0.95 * patient.half_ap_anterior)) ** 2
    )
    cavity &= pz < apex
    cavity &= ~occupied
    return cavity & (px > 0), cavity & (px < 0)


def paint_abdomen(canvas: Canvas, patient: Patient, rng: np.random.Generator) -> None:
    """Organs under the diaphragm: liver (right, with its left lobe across the midline), spleen, stomach, kidneys."""
    px, py, pz = canvas.px, canvas.py, canvas.pz
    s = patient.scale
    below = pz < patient.diaphragm_z(px, py) - 3.0
    inner = patient.inside_body(px, py, pz, 2.0 + patient.fat_mm + patient.muscle_mm + 4.0)
    abdomen = below & inner
    texture = canvas.noise(rng, 5.0)
    # Bowel and mesentery: soft tissue loops in fat, filling what the organs leave.
    loops = canvas.noise(rng, 14.0) > -0.2
    canvas.paint(abdomen & loops, 30.0 + 8.0 * texture, L["small_bowel"])
    # Liver: everything right of a plane that slants to the left anteriorly (the left lobe), down to a sloping
    # inferior edge; ~1.4–1.8 L in adults.
    front = (py - patient.body_y) / patient.half_ap_anterior
    medial = -25.0 * s - 55.0 * s * np.clip(front + 0.1, 0.0, 1.0)
    depth = s * rng.uniform(150.0, 180.0)
    lower = patient.z_dome_right - depth + 0.45 * (px + 20.0) + 30.0 * np.clip(front, 0.0, 1.0)
    liver = abdomen & (px > medial) & (pz > lower)
    canvas.paint(liver, rng.uniform(52.0, 64.0) + 6.0 * texture, L["liver"])
    # Spleen: posterolateral under the left dome.
    sc = (-0.68 * patient.half_width, patient.spine_y0 + 20.0 * s, patient.z_dome_left - 45.0 * s)
    spleen = canvas.ellipsoid(sc, np.array([28.0, 42.0, 55.0]) * s * rng.uniform(0.85, 1.15)) & abdomen
    canvas.paint(spleen, rng.uniform(44.0, 52.0) + 5.0 * texture, L["spleen"])
    # Stomach: anterior left upper quadrant, with a supine gas cap anteriorly.
    gc = (-0.36 * patient.half_width, patient.body_y + 10.0 * s, patient.z_dome_left - 40.0 * s)
    gr = np.array([45.0, 38.0, 50.0]) * s * rng.uniform(0.8, 1.2)
    stomach = canvas.ellipsoid(gc, gr) & abdomen & ~spleen
    canvas.paint(stomach, 25.0 + 5.0 * texture, L["stomach"])
    gas_level = gc[1] + gr[1] * rng.uniform(0.35, 0.8)
    lumen = canvas.ellipsoid(gc, gr - 4.0) & stomach & (py > gas_level)
    canvas.paint(lumen, -990.0, L["stomach_gas"])
    # Kidneys: upper poles at T12, the left a little higher.
    t12 = next(level for level in patient.levels if level.name == "vertebrae_T12")
    for side, name, dz in ((1.0, "kidney_right", -12.0), (-1.0, "kidney_left", 0.0)):
        kc = (side * 62.0 * s, patient.spine_y(np.float32(t12.centre)) + 8.0, t12.bottom - 40.0 * s + dz)
        kidney = canvas.ellipsoid(kc, np.array([28.0, 24.0, 55.0]) * s) & abdomen
        canvas.paint(kidney, rng.uniform(28.0, 36.0) + 4.0 * texture, L[name])
