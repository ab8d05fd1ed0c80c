"""Heart, great vessels and oesophagus (non-contrast CT numbers).

The heart is an ellipsoid whose long axis runs from the base (right, posterior, superior) to the apex (left, anterior,
inferior), ~45° to the sagittal plane; inside it the four chambers (blood ≈ 40 HU) sit in their places — the right
ventricle anterior, the left ventricle posterior-left towards the apex with a ~10 mm wall, the left atrium posterior
at the base against the oesophagus, the right atrium to the right — within myocardium (≈ 50 HU), wrapped in
epicardial fat (≈ −95 HU, 3–10 mm, thicker with age and habitus). On non-contrast CT blood and myocardium differ by
only ~10 HU, as here. Vessels (blood ≈ 42 HU): aortic root → ascending aorta → arch with its three branches →
descending aorta left-anterolateral of the spine → aortic hiatus; pulmonary trunk from the right ventricle,
bifurcating under the arch into the right and left pulmonary arteries that end at the hila; superior vena cava right
of the ascending aorta with the brachiocephalic veins; inferior vena cava through the liver into the right atrium;
the oesophagus behind the trachea and left atrium, to the stomach.
"""

from __future__ import annotations

import numpy as np

from .canvas import Canvas
from .labels import PHANTOM_LABELS as L
from .patient import Patient

__all__ = ["paint_heart_and_vessels"]

_BLOOD, _MYOCARDIUM, _EPICARDIAL_FAT, _WALL = 40.0, 50.0, -95.0, 35.0


def _frame(direction: np.ndarray) -> np.ndarray:
    """Orthonormal rows (long axis, second, third) from the long axis and the patient's anterior direction."""
    d1 = direction / np.linalg.norm(direction)
    d2 = np.array([0.0, 1.0, 0.0]) - d1[1] * d1
    d2 /= np.linalg.norm(d2)
    return np.stack([d1, d2, np.cross(d1, d2)])


def paint_heart_and_vessels(canvas: Canvas, patient: Patient, rng: np.random.Generator) -> dict:
    """Paint the heart, great vessels and oesophagus; returns ``{"occupied": mask, "heart": {...}}`` where the mask
    is what the lungs must not fill (heart with pericardium, vessels, oesophagus)."""
    s = patient.scale
    c = np.asarray(patient.heart_centre, dtype=np.float64)
    r = np.asarray(patient.heart_radii, dtype=np.float64) * patient.heart_scale
    axes = _frame(np.array([-0.62, 0.48, -0.55]) + rng.normal(0.0, 0.05, 3))
    reach = 1.25 * r.max() + 12.0  # the atria bulge beyond the ellipsoid
    sl, (px, py, pz) = canvas.box(c - reach, c + reach)
    rel = [px - c[0], py - c[1], pz - c[2]]
    u = [a[0] * rel[0] + a[1] * rel[1] + a[2] * rel[2] for a in axes]  # heart-frame coordinates (mm)

    # The heart's inferior (diaphragmatic) surface is flat where it rests on the central tendon.
    above = pz > patient.diaphragm_z(px, py) - 4.0

    def ellipsoid(centre, radii):  # heart frame, cut at the diaphragm
        return (sum(((ui - ci) / ri) ** 2 for ui, ci, ri in zip(u, centre, radii, strict=True)) <= 1.0) & above

    fat_mm = float(np.clip(3.0 + 0.06 * max(patient.age - 30.0, 0.0) + 0.15 * patient.fat_mm, 3.0, 12.0))
    outer = ellipsoid((0, 0, 0), r + 2.0)  # pericardial sac
    muscle = ellipsoid((0, 0, 0), r - fat_mm * 0.5)
    hu, lab = canvas.hu[sl], canvas.labels[sl]
    hu[outer] = _EPICARDIAL_FAT + 10.0 * canvas.noise(rng, 4.0, sl)[outer]
    lab[outer] = L["epicardial_fat"]
    hu[muscle], lab[muscle] = _MYOCARDIUM, L["heart_myocardium"]
    # Chambers in the heart frame: u0 base→apex, u1 ≈ anterior, u2 ≈ patient's right-left.
    # Sizes give adult end-diastolic volumes (LV ≈ 120, RV ≈ 130, LA ≈ 60, RA ≈ 70 mL) and a myocardium of
    # ≈ 150–250 mL (Kawel-Boehm et al., J Cardiovasc Magn Reson 2015).
    lv_c, lv_r = (0.12 * r[0], -0.2 * r[1], -0.1 * r[2]), (0.62 * r[0], 0.55 * r[1], 0.55 * r[2])
    lv_wall = ellipsoid(lv_c, np.asarray(lv_r) + 8.0 * s)
    chambers = (
        ("heart_ventricle_right", (0.0, 0.45 * r[1], 0.12 * r[2]), (0.7 * r[0], 0.5 * r[1], 0.7 * r[2]), lv_wall),
        ("heart_atrium_left", (-0.62 * r[0], -0.45 * r[1], -0.15 * r[2]), (0.34 * r[0], 0.42 * r[1], 0.6 * r[2]), None),
        ("heart_atrium_right", (-0.5 * r[0], 0.2 * r[1], 0.62 * r[2]), (0.38 * r[0], 0.42 * r[1], 0.4 * r[2]), None),
        ("heart_ventricle_left", lv_c, lv_r, None),
    )
    occupied = np.zeros(canvas.shape, dtype=bool)
    occupied[sl] |= ellipsoid((0, 0, 0), r + 4.0)
    for name, centre, radii, exclude in chambers:
        if "atrium" in name:
            # The atria bulge out of the ventricles' ellipsoid at the base, inside a 2.5 mm wall.
            wall = ellipsoid(centre, np.asarray(radii) + 2.5 * s) & ~muscle
            hu[wall], lab[wall] = _MYOCARDIUM, L["heart_myocardium"]
            occupied[sl] |= ellipsoid(centre, np.asarray(radii) + 5.0 * s)
            blood = ellipsoid(centre, radii)
        else:
            blood = ellipsoid(centre, radii) & muscle
        if exclude is not None:
            blood &= ~exclude
        hu[blood], lab[blood] = _BLOOD, L[name]

    def base(offset):  # heart-frame point -> patient frame
        return c + np.asarray(offset, dtype=np.float64) @ axes

    # Great vessels (patient-frame polylines, mm).
    spine = patient.spine_y
    vr = patient.vertebral_radius
    top = canvas.axes[2][-1] + 20.0 - canvas.shift[2]
    bottom = canvas.axes[2][0] - 20.0 - canvas.shift[2]
    z_arch = patient.z_carina + s * rng.uniform(25.0, 40.0)
    r_asc = s * (13.0 + 0.06 * max(patient.age - 30.0, 0.0)) * rng.uniform(0.9, 1.1)
    r_desc = 0.78 * r_asc
    root = base((-0.55 * r[0], 0.05 * r[1], 0.1 * r[2]))
    desc_x = -(vr[0] + 6.0)
    ys = lambda z: float(spine(np.float32(z))) + vr[1] + 4.0  # noqa: E731 - the front of the vertebral bodies
    # The arch runs from right-anterior to left-posterior, anterior and then left of the trachea (which lies at about
    # ys + 18…24 mm on the midline), to descend left-anterolateral of the spine.
    aorta = [
        root,
        (18.0 * s, root[1] + 5.0, 0.5 * (root[2] + z_arch)),
        (10.0 * s, ys(z_arch) + 55.0 * s, z_arch - 10.0),
        (-10.0 * s, ys(z_arch) + 48.0 * s, z_arch),
        (-26.0 * s, ys(z_arch) + 20.0 * s, z_arch - 8.0),
        (desc_x, ys(z_arch) + 2.0, z_arch - 28.0),
        (desc_x, ys(patient.z_carina - 60.0), patient.z_carina - 60.0),
        (desc_x + 8.0, ys(patient.z_dome_left - 20.0) + 2.0, patient.z_dome_left - 20.0),
        (-6.0, ys(bottom) + 6.0, bottom),
    ]
    aorta = [np.asarray(p, dtype=np.float64) for p in aorta]
    radii = [r_asc, r_asc, r_asc * 0.95, r_asc * 0.9, r_asc * 0.85, r_desc, r_desc, r_desc * 0.95, r_desc * 0.9]
    tubes = [("aorta", np.asarray(aorta), radii)]
    arch_top = np.asarray(aorta[3])
    tubes += [
        (
            "brachiocephalic_trunk",
            np.array([aorta[2] + (0, 0, r_asc * 0.6), (22.0 * s, aorta[2][1] - 5, top)]),
            6.5 * s,
        ),
        ("common_carotid_artery_left", np.array([arch_top + (-4, 0, 0), (-12.0 * s, arch_top[1] - 4, top)]), 4.0 * s),
        ("subclavian_artery_left", np.array([arch_top + (-12, -8, 0), (-30.0 * s, arch_top[1] - 12, top)]), 5.0 * s),
    ]
    # Pulmonary trunk from the right ventricle's outflow, up, back and left under the arch; it bifurcates in front
    # of the carina, the right artery passing in front of the right main bronchus, the left one over the left.
    outflow = base((-0.2 * r[0], 0.75 * r[1], -0.35 * r[2]))
    bifurcation = np.array([-8.0 * s, ys(patient.z_carina) + 52.0 * s, patient.z_carina - 10.0])
    tubes += [
        ("pulmonary_artery", np.array([outflow, 0.5 * (outflow + bifurcation) + (-6, 5, 8), bifurcation]), 14.0 * s),
        (
            "pulmonary_artery",
            np.array([bifurcation, (14.0 * s, bifurcation[1] - 4, bifurcation[2] - 8), patient.hilum(1)]),
            [12.0 * s, 11.0 * s, 9.0 * s],
        ),
        (
            "pulmonary_artery",
            np.array([bifurcation, (-30.0 * s, bifurcation[1] - 12, bifurcation[2] + 6), patient.hilum(-1)]),
            [12.0 * s, 11.0 * s, 9.0 * s],
        ),
    ]
    # Systemic veins.
    ra = base((-0.5 * r[0], 0.2 * r[1], 0.62 * r[2]))
    svc_top = np.array([30.0 * s, aorta[1][1] - 8.0, patient.z_sternal_notch - 15.0])
    tubes += [
        ("superior_vena_cava", np.array([ra, (ra[0] + 5, ra[1] - 10, ra[2] + 25), svc_top]), 10.0 * s),
        ("brachiocephalic_vein_right", np.array([svc_top, (45.0 * s, svc_top[1] - 10, top)]), 8.0 * s),
        (
            "brachiocephalic_vein_left",
            np.array([svc_top, (-20.0 * s, svc_top[1] + 12, svc_top[2] + 8), (-60.0 * s, svc_top[1], top)]),
            6.5 * s,
        ),
        (
            "inferior_vena_cava",
            np.array(
                [
                    ra + (0, -10, -20),
                    (22.0 * s, ys(patient.z_dome_right) + 25, patient.z_dome_right - 20),
                    (20.0 * s, ys(bottom) + 22, bottom),
                ]
            ),
            12.0 * s,
        ),
    ]
    for name, points, radius in tubes:
        frac = canvas.tube_fraction(points, radius)
        canvas.blend(frac, _BLOOD + 2.0, L[name])
        occupied |= frac > 0.0
    # Oesophagus: behind the trachea and the left atrium, to the gastric hiatus on the left.
    la = base((-0.62 * r[0], -0.45 * r[1], -0.15 * r[2]))
    oes = np.array(
        [
            (-4.0, ys(top) + 8.0, top),
            (-6.0, ys(patient.z_carina) + 10.0, patient.z_carina),
            (-10.0, min(la[1] - 0.35 * r[1] - 10.0, ys(la[2]) + 14.0), la[2]),
            (-28.0 * s, ys(patient.z_dome_left) + 30.0, patient.z_dome_left - 10.0),
            (-0.36 * patient.half_width, patient.body_y + 5.0, patient.z_dome_left - 35.0 * s),
        ]
    )
    frac = canvas.tube_fraction(oes, 6.0 * s)  # collapsed, behind the trachea
    canvas.blend(frac, _WALL, L["esophagus"])
    occupied |= frac > 0.0
    if rng.random() < 0.4:  # a little swallowed air in the lumen
        canvas.blend(canvas.tube_fraction(oes[:3], 2.5), -900.0, None)
    return {"occupied": occupied, "heart": {"centre": c.tolist(), "radii": r.tolist(), "axes": axes.tolist()}}
