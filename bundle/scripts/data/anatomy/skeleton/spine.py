"""The spine and the muscles along it.

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
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from ..canvas import Canvas
from ..labels import PHANTOM_LABELS as L
from ..patient import Patient
from .bone import Knots, Shape, Tube, cortex_hu, ellipsoid_sd, fraction, knot, outward_normals
from .plan import Plan, Vertebra

__all__ = ["paint_autochthons", "paint_spine"]

# Spinous process: angle below the horizontal (deg) and length (mm); steep and long mid-thoracic, C7 prominent.
_SP_ANGLE: Knots = {-2: 15.0, 0: 18.0, 1: 30.0, 4: 55.0, 8: 60.0, 10: 42.0, 12: 25.0, 14: 5.0}
_SP_LENGTH: Knots = {-2: 22.0, 0: 40.0, 1: 38.0, 6: 40.0, 10: 34.0, 12: 30.0, 14: 30.0}


# ---- paraspinal muscles ----------------------------------------------------------------------------------------------
def _along_spine(vs: list[Vertebra], z: np.ndarray, attr: str, patient: Patient) -> np.ndarray:
    """A vertebral quantity interpolated in z between the levels' pedicle heights (smooth along the spine); canal
    positions also follow the kyphosis between those heights."""
    order = vs[::-1]  # increasing z for np.interp
    zs = [v.z_ped for v in order]
    vals = [float(v.tp_tip[0]) if attr == "tp_x" else getattr(v, attr) for v in order]
    out = np.interp(z, zs, vals)
    if attr == "y_canal":
        out = out + (patient.spine_y(z) - np.interp(z, zs, [v.y_c for v in order]))
    return out.astype(np.float32)


def paint_autochthons(canvas: Canvas, patient: Patient, plan: Plan) -> None:
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


# ---- spine -----------------------------------------------------------------------------------------------------------
def _body_sd(patient: Patient, v: Vertebra, px, py, pz, grow: float = 0.0, z_range=None) -> np.ndarray:
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
    sd_xy = ellipsoid_sd(px, dy, 0.0, a, np.where(dy < 0, bp, b))
    cup = 0.0 if z_range is not None else 0.9 * np.clip(1.0 - (px / a) ** 2 - (dy / b) ** 2, 0.0, 1.0)
    sd_z = np.abs(pz - np.float32(zc)) - np.float32(hh) + cup
    return np.maximum(sd_xy, sd_z)


def _posterior_tubes(patient: Patient, v: Vertebra, below: Vertebra | None, above: Vertebra | None) -> list:
    """Pedicles, laminae, articular processes, transverse and spinous processes of one vertebra as tubes."""
    s, h = patient.scale, v.height
    lumbar = v.index >= 13
    tubes = []
    rc_x, yk, zp = v.rc_x, v.y_canal, v.z_ped
    ped_w = (4.8 if lumbar else 3.6) * s
    # Spinous process: its tip stays under the subcutaneous fat however posterior the spine lies.
    angle = math.radians(knot(v.index, _SP_ANGLE))
    base = np.array([0.0, yk - v.rc_y - 3.0 * s, zp - 0.15 * h])
    skin = patient.body_y - float(patient.ap_profile(np.float64(zp))[1])
    room = base[1] - (skin + patient.fat_mm + 4.0)
    length = float(np.clip(knot(v.index, _SP_LENGTH) * s, 6.0, max(room / max(math.cos(angle), 0.3), 6.0)))
    tip = base + length * np.array([0.0, -math.cos(angle), -math.sin(angle)])
    mid = 0.5 * (base + tip)
    sp_h = (0.36 if lumbar else 0.26) * h
    tubes.append(
        Tube.make(
            [base, mid, tip], [2.6 * s, 2.8 * s, 3.6 * s], [sp_h, 0.9 * sp_h, 0.8 * sp_h], normals=[1.0, 0.0, 0.0]
        )
    )
    for side in (1.0, -1.0):
        # Pedicle: short and stout, from the body's posterolateral corner back to the canal's mid-depth, in the
        # upper half of the body.
        p0 = np.array([side * 0.6 * v.a, v.y_c - 0.65 * v.b, zp])
        p1 = np.array([side * (rc_x + 2.2 * s), yk + 0.25 * v.rc_y, zp])
        tubes.append(Tube.make([p0, p1], ped_w, 0.3 * h, normals=[1.0, 0.0, 0.0]))
        # Lamina: an arc round the back of the canal to the spinous base, shingled (its lower edge further back).
        arc = np.array(
            [
                [side * (rc_x + 2.2 * s), yk + 0.1 * v.rc_y, zp - 0.03 * h],
                [side * (0.72 * rc_x + 2.4 * s), yk - 0.72 * v.rc_y - 2.2 * s, zp - 0.09 * h],
                base,
            ]
        )
        tubes.append(Tube.make(arc, 3.0 * s, 0.32 * h, normals=outward_normals(arc, yk)))
        # Transverse process: from the pedicle-lamina junction to its tip (the rib's tubercle articulates there).
        tip_tp = v.tp_tip * np.array([side, 1.0, 1.0])
        root = np.array([side * (rc_x + 3.5 * s), yk - 0.1 * v.rc_y, zp + 0.5])
        tubes.append(Tube.make([root, tip_tp], [v.tp_r * 1.1, v.tp_r]))
        # Articular processes: the superior ones rise in front of the inferior ones of the level above, leaving the
        # facet joint (thoracic facets lie nearly in the coronal plane).
        x_sup, x_inf = side * (rc_x + 4.5 * s), side * (rc_x + 3.0 * s)
        y_sup, y_inf = yk - 0.3 * v.rc_y, yk - 0.3 * v.rc_y - 7.5 * s
        z_sup = v.top + (0.25 * (above.height) + (above.bottom - v.top) if above is not None else 0.2 * h)
        tubes.append(Tube.make([[x_sup, y_sup, zp], [x_sup, y_sup, z_sup]], [3.6 * s, 3.3 * s]))
        z_inf = v.disc_bottom - (0.2 * below.height if below is not None else 0.1 * h)
        tubes.append(Tube.make([[x_inf, y_inf, zp - 0.1 * h], [x_inf, y_inf, z_inf]], [3.4 * s, 3.0 * s]))
    return tubes


def paint_spine(canvas: Canvas, patient: Patient, plan: Plan) -> None:
    vs = plan.vertebrae
    h_vox = canvas.voxel_mm
    density = patient.bone_density
    cortex = cortex_hu(patient, 1000.0)
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
        shape = Shape(canvas, lo, hi)
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
                shape.add_tube(Tube.make(rim, v.osteophyte), shell=None)
        for tube in tubes:
            shape.add_tube(tube, shell=1.3 * patient.scale)  # posterior elements: mostly cortical bone
        shape.paint(cortex, trabecular, v.label)
        # Basivertebral vein: a thin low-density channel from the posterior cortex into the body's centre.
        vein = Shape(canvas, (-3.0, v.y_c - v.b - 3.0, v.bottom), (3.0, v.y_c, v.top))
        zc = 0.5 * (v.top + v.bottom)
        yb = float(patient.spine_y(np.float64(zc)))
        vein.add_tube(Tube.make([[0.0, yb - 0.85 * v.b, zc], [0.0, yb - 0.3 * v.b, zc]], [1.4, 1.0]), shell=None)
        vein.outer *= np.clip(fraction(_body_sd(patient, v, *vein.coords) + np.float32(1.5), h_vox), 0.0, 1.0)
        vein.paint(60.0, 60.0, None)


def _paint_discs(canvas: Canvas, patient: Patient, vs: list[Vertebra]) -> None:
    """Intervertebral discs: annulus ≈ 95 HU, nucleus ≈ 75 HU, 0.8 mm into the endplates so no gap shows."""
    label = L["intervertebral_discs"]
    for v, nxt in zip(vs[:-1], vs[1:], strict=True):
        z0, z1 = v.disc_bottom - 0.8, v.bottom + 0.8
        mean = replace(v, index=v.index + 0.5, a=0.5 * (v.a + nxt.a), b=0.5 * (v.b + nxt.b), osteophyte=0.0)
        y0 = float(patient.spine_y(np.float64(0.5 * (z0 + z1))))
        shape = Shape(canvas, (-mean.a - 3.0, y0 - mean.b - 5.0, z0), (mean.a + 3.0, y0 + mean.b + 5.0, z1))
        if shape.empty:
            continue
        px, py, pz = shape.coords
        sd = _body_sd(patient, mean, px, py, pz, grow=0.6, z_range=(z1, z0))
        shape.add(sd, sd + np.float32(2.5 + 0.35 * mean.a))  # the nucleus: the central ~60 %
        shape.paint(95.0, 75.0, label)


def _paint_canal(canvas: Canvas, patient: Patient, vs: list[Vertebra]) -> None:
    """The spinal canal: epidural fat round the dural sac (CSF) and the cord, which ends in the conus at L1."""
    label = L["spinal_cord"]
    s = patient.scale
    z_lo, z_hi = vs[-1].disc_bottom, vs[0].top + 30.0
    ys = [v.y_canal for v in vs]
    rx = max(v.rc_x for v in vs) + 3.0
    canal = Shape(canvas, (-rx, min(ys) - 14.0, z_lo), (rx, max(ys) + 14.0, z_hi))
    if canal.empty:
        return
    px, py, pz = canal.coords
    # Canal centre follows the kyphosis between the levels.
    zs = pz[0, 0]
    y_k = _along_spine(vs, zs, "y_canal", patient)[None, None, :]
    cx = _along_spine(vs, zs, "rc_x", patient)[None, None, :]
    cy = _along_spine(vs, zs, "rc_y", patient)[None, None, :]
    dy = py - y_k
    canal.add(ellipsoid_sd(px, dy, 0.0, cx, cy))
    canal.paint(-70.0, -70.0, label)  # epidural fat fills the bony canal
    sac = Shape(canvas, (-rx, min(ys) - 14.0, z_lo), (rx, max(ys) + 14.0, z_hi))
    sac.add(ellipsoid_sd(px, dy - 0.8, 0.0, cx - 1.3, cy - 1.6))
    sac.paint(8.0, 8.0, label)
    # Cord: cervical enlargement at C5–C7, lumbar enlargement at T11–T12, conus tapering to nothing at L1's base.
    l1 = next((v for v in vs if v.name == "vertebrae_L1"), vs[-1])
    t10 = next((v for v in vs if v.name == "vertebrae_T10"), vs[-3])
    t1 = next((v for v in vs if v.name == "vertebrae_T1"), vs[2])
    knots_z = [l1.bottom, l1.top, t10.top, t1.top, vs[0].top + 30.0]
    wx = np.interp(zs, knots_z, [0.0, 4.6, 4.2, 5.8, 6.2]).astype(np.float32)[None, None, :] * np.float32(s**0.3)
    wy = np.interp(zs, knots_z, [0.0, 3.8, 3.2, 4.0, 4.2]).astype(np.float32)[None, None, :] * np.float32(s**0.3)
    cord = Shape(canvas, (-rx, min(ys) - 14.0, z_lo), (rx, max(ys) + 14.0, z_hi))
    present = wx > 0.4
    cord.add(ellipsoid_sd(px, dy - 0.12 * cy, 0.0, np.maximum(wx, 0.4), np.maximum(wy, 0.4)), where=present)
    cord.paint(35.0, 35.0, label)
