"""The shoulder girdle and the muscles round it.

S-shaped clavicles (``clavicula_*``) from the sternoclavicular joints to the acromion; scapulae (``scapula_*``): a
2–3 mm blade thickening at its borders, lying ≈ 6 mm behind the posterolateral ribs 2–7, with the lateral border,
spine, acromion, coracoid and glenoid; humeral heads (``humerus_*``, radius ≈ 22–25 mm) in the glenoid with proximal
shafts pointing laterally/upwards (arms raised, as in a chest CT), fatty marrow. Rotator-cuff/scapular muscle
(``skeletal_muscle``) is added round them where nothing (or only fat) was painted.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..canvas import Canvas
from ..labels import PHANTOM_LABELS as L
from ..patient import Patient
from .bone import Shape, Tube, cortex_hu, ellipsoid_sd, outward_normals, unit
from .plan import Plan, SternumLayout, rib_inset, sternum_y

__all__ = ["ShoulderLayout", "paint_shoulder_girdle", "paint_shoulder_muscles", "shoulder_layout"]


@dataclass
class ShoulderLayout:
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


def shoulder_layout(patient: Patient, plan: Plan, side: float) -> ShoulderLayout:
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
    facing = unit(np.array([side * 1.0, 0.35, 0.1]))  # the glenoid faces laterally and a little forwards
    glenoid = head - (r_head + 2.5) * facing
    # The blade lies ≈ 6 mm behind the posterolateral ribs' outer surface (subscapularis and serratus between).
    inset = max(rib_inset(patient) - 3.6 * s - 6.0 * s, 2.0 + 0.5 * patient.fat_mm + 3.0)
    superior = np.array([side * (50.0 + 12.0 * j[4]) * s, head[2] + (-5.0 + 15.0 * j[5]) * s])
    inferior = np.array([side * (80.0 + 20.0 * j[6]) * s, head[2] - (125.0 + 20.0 * j[7]) * s])
    z_lat = glenoid[2] - 14.0 * s
    width = float(patient.width_profile(np.float64(z_lat))) - inset
    lateral = np.array([side * min(abs(glenoid[0]) - 22.0 * s, 0.86 * width), z_lat])
    return ShoulderLayout(side, head, r_head, glenoid, facing, superior, inferior, lateral, inset, inset)


def _blade_y(patient: Patient, lay: ShoulderLayout, x: np.ndarray, z: np.ndarray, offset: float = 0.0) -> np.ndarray:
    """y of the scapular blade surface (posterior half of the outline inset by ``lay.inset − offset``) at (x, z)."""
    ins = lay.inset - offset
    width = patient.width_profile(z) - ins
    back = patient.ap_profile(z)[1] - ins
    return patient.body_y - back * np.sqrt(np.clip(1.0 - (np.asarray(x) / width) ** 2, 0.04, 1.0))


def _on_blade(patient: Patient, lay: ShoulderLayout, xz: np.ndarray, offset: float = 0.0) -> np.ndarray:
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


def paint_shoulder_muscles(canvas: Canvas, patient: Patient, lay: ShoulderLayout) -> None:
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


def paint_shoulder_girdle(canvas: Canvas, patient: Patient, plan: Plan, lay: ShoulderLayout, st: SternumLayout) -> None:
    s, side = patient.scale, lay.side
    name = "right" if side > 0 else "left"
    density = patient.bone_density
    tex = plan.trabecular.on(canvas)
    trab = np.float32(210.0 * density)

    def trabecular(x, y, z):
        return trab * (1.0 + 0.12 * tex(x, y, z)) + 10.0

    cortex = cortex_hu(patient, 900.0)
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
    shape = Shape(canvas, lo, hi)
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
            Tube.make([p_inf, 0.5 * (p_inf + p_lat), p_lat, neck], [3.5 * s, 4.5 * s, 6.5 * s, 8.0 * s]), 1.2 * s
        )
        # Spine: a posterior ridge from the medial border to the acromion, which arches over the humeral head.
        root = sup + 0.22 * (inf - sup)
        p0 = _on_blade(patient, lay, root, 5.0 * s)
        p1 = _on_blade(patient, lay, 0.5 * (root + lat), 7.0 * s) + np.array([0.0, 0.0, 12.0 * s])
        base = lay.glenoid + np.array([-side * 4.0 * s, -22.0 * s, 20.0 * s])
        acro = lay.head + np.array([side * 8.0 * s, -6.0 * s, lay.r_head + 9.0 * s])
        spine = np.stack([p0, p1, base])
        shape.add_tube(
            Tube.make(
                spine, [3.0 * s, 6.0 * s, 6.5 * s], [2.5 * s, 3.0 * s, 4.0 * s], outward_normals(spine, patient.body_y)
            ),
            1.0 * s,
        )
        acromion = np.stack([base, 0.5 * (base + acro) + np.array([0.0, 0.0, 3.0 * s]), acro])
        shape.add_tube(
            Tube.make(acromion, [4.0 * s, 3.8 * s, 3.2 * s], [9.0 * s, 11.0 * s, 10.0 * s], normals=[0.0, 0.0, 1.0]),
            1.0 * s,
        )
        # Coracoid: from the glenoid neck's top forwards under the clavicle.
        c0 = lay.glenoid + np.array([-side * 8.0 * s, 4.0 * s, 14.0 * s])
        c1 = c0 + np.array([side * 0.0, 22.0 * s, 6.0 * s])
        c2 = c1 + np.array([side * 8.0 * s, 14.0 * s, -6.0 * s])
        shape.add_tube(Tube.make([c0, c1, c2], [6.0 * s, 5.0 * s, 4.2 * s]), 1.0 * s)
        # Glenoid: a pear-shaped cup (taller than wide), its surface 2.5 mm from the humeral head (the joint space).
        g = lay.glenoid - 5.0 * s * lay.facing
        gsd = ellipsoid_sd(
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
    y_man = float(sternum_y(patient, st, st.notch))
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
    tube = Tube.make(pts, rn, rb, unit(np.stack([-t[:, 1], t[:, 0], np.zeros(len(pts))], axis=1)))
    cl = Shape(canvas, *tube.bounds())
    cl.add_tube(tube, shell=1.8 * s)
    cl.paint(cortex, trabecular, L[f"clavicula_{name}"])
    # ---- humerus: head (thin cortex, trabecular) and the proximal shaft (thick cortex, fatty marrow).
    direction = unit(np.array([side * 0.45, 0.1, 0.9]))
    hs = Shape(canvas, lay.head - lay.r_head - 2.0, lay.head + lay.r_head + 2.0)
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
        gt = lay.head + lay.r_head * 0.7 * unit(np.array([side * 1.0, 0.3, -0.2]))
        hs.add_tube(Tube.make([gt, gt + 10.0 * s * direction], [10.0 * s, 9.0 * s]), 1.0 * s)
        hs.paint(cortex_hu(patient, 800.0), trabecular, L[f"humerus_{name}"])
    shaft = np.stack(
        [
            lay.head + 0.5 * lay.r_head * direction,
            lay.head + (lay.r_head + 25.0 * s) * direction,
            lay.head + (lay.r_head + 130.0 * s) * direction,
        ]
    )
    stube = Tube.make(shaft, [16.0 * s, 12.5 * s, 11.0 * s])
    ss = Shape(canvas, *stube.bounds())
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

    ss.paint(cortex_hu(patient, 1100.0), shaft_core, L[f"humerus_{name}"])
