"""The rib cage: ribs, costal cartilages and the sternum.

* **Ribs** 1–12 each side (``rib_right_k`` at x > 0): from the costovertebral joint at T_k past the transverse
  process, round the chest wall on the body outline inset by :func:`.plan.rib_inset` (the rib's inner surface ≈ 3 mm
  outside the parietal pleura at ``wall_mm``), descending anteriorly as far as the sternal attachments demand
  (≈ 40 mm for rib 1, ≈ 110–130 mm for ribs 6–8: real ribs lie ≈ 35–45° to the axial plane). Flattened cross-section
  (≈ 12–14 × 7 mm mid-rib; rib 1 broad and flat in the axial plane; 11–12 thin and tapering), cortex ≈ 850 HU ×
  (0.55 + 0.45 density), trabecular core ≈ 200 HU × density.
* **Costal cartilages** (``costal_cartilages``, ≈ 120 HU, hyaline cartilage): ribs 1–7 to the sternum, 8–10 to the
  cartilage above (the costal margin); calcification with age, marginal in men and central in women, as seen on CT.
* **Sternum** (``sternum``): manubrium (≈ 50 mm, up to 54 mm wide at the clavicular notches, with the jugular notch)
  and body down to ``z_xiphoid``, a fibrocartilaginous manubriosternal joint, and the xiphoid (cartilage ossifying
  with age); cortex + trabecular core; anterior midline just under the presternal fat.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from ..canvas import Canvas
from ..labels import PHANTOM_LABELS as L
from ..patient import Patient
from .bone import Knots, Shape, Tube, chaikin, cortex_hu, knot, outward_normals, resample
from .plan import Plan, SternumLayout, rib_inset, sternum_y

__all__ = ["paint_ribs", "paint_sternum"]

# Ribs k = 1..12: share of the rib ring's half width where the bony rib ends anteriorly (ribs 1–10), the cage's
# half width relative to mid-chest (the upper cage is a cone), how much lower (mm, × scale) the costochondral
# junction lies than the cartilage's sternal end (upper cartilages run down to the sternum, lower ones up).
_RIB_END_X = (0.70, 0.60, 0.58, 0.58, 0.60, 0.64, 0.70, 0.78, 0.86, 0.92)
_RIB_CAGE = (0.52, 0.70, 0.80, 0.87, 0.93, 0.97, 1.0, 1.0, 1.0, 1.0, 1.0, 0.98)
_RIB_END_DZ = (6.0, 3.0, 0.0, -6.0, -14.0, -24.0, -36.0)


# ---- ribs and costal cartilages --------------------------------------------------------------------------------------
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


def _rib_path(patient: Patient, plan: Plan, sternum: SternumLayout, k: int, side: float) -> tuple:
    """Rib ``k``'s axis (right side, mirrored later), its end angle and height, and the ring parameters."""
    s = patient.scale
    si = 0 if side > 0 else 1
    v = next(vt for vt in plan.vertebrae if vt.name == f"vertebrae_T{k}")
    inset = rib_inset(patient)
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
    inset_back = float(np.clip(back - need, 2.0 + patient.fat_mm + knot(0.3, rn_prof) * s + 2.0, inset))
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
    smooth = chaikin(control, 2)
    length = float(np.sum(np.linalg.norm(np.diff(smooth, axis=0), axis=1)))
    n = int(np.clip(round(length / 14.0), 10, 24))
    pts, share = resample(smooth, n)
    rn = np.array([knot(t, rn_prof) for t in share]) * size
    rb = np.array([knot(t, rb_prof) for t in share]) * size
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


def paint_ribs(canvas: Canvas, patient: Patient, plan: Plan, sternum: SternumLayout) -> None:
    density = patient.bone_density
    cortex = cortex_hu(patient, 850.0)
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
            normals = outward_normals(world_pts, patient.body_y)
            tube = Tube.make(world_pts, rn, rb, normals)
            shape = Shape(canvas, *tube.bounds())
            shape.add_tube(tube, shell=1.0 * s)
            shape.paint(cortex, trabecular, L[f"rib_{name}_{k}"])
            if k > 10:
                continue
            # Costal cartilage: 1–7 to the sternal notch, 8–10 forwards and up into the cartilage above.
            start = pts[-1]
            if k <= 7:
                z_k = sternum.attach[k - 1]
                end = np.array([sternum.width(z_k) - 2.0, float(sternum_y(patient, sternum, z_k)), z_k])
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
            ctube = Tube.make(cpts, rn_c, rb_c, outward_normals(cpts, patient.body_y))
            cshape = Shape(canvas, *ctube.bounds())
            cshape.add_tube(ctube, shell=1.3 * s)
            shell_hu, core_hu = cart_hu(k)
            cshape.paint(shell_hu, core_hu, L["costal_cartilages"])


def _cartilage_hu(canvas: Canvas, patient: Patient, plan: Plan) -> Callable[[int], tuple]:
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


# ---- sternum ---------------------------------------------------------------------------------------------------------
def paint_sternum(canvas: Canvas, patient: Patient, plan: Plan, st: SternumLayout) -> None:
    s = patient.scale
    wmax = float(st.half_width.max())
    ys = sternum_y(patient, st, st.z)
    lo = (-wmax - 4.0, float(ys.min()) - 12.0, st.xiphoid - 2.0)
    hi = (wmax + 4.0, float(ys.max()) + 12.0, st.notch + 10.0)
    shape = Shape(canvas, lo, hi)
    if not shape.empty:
        px, py, pz = shape.coords
        zz = pz[0, 0].astype(np.float64)
        w = np.interp(zz, st.z, st.half_width).astype(np.float32)[None, None, :]
        d = np.interp(zz, st.z, st.half_depth).astype(np.float32)[None, None, :]
        yc = sternum_y(patient, st, zz).astype(np.float32)[None, None, :]
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

        shape.paint(cortex_hu(patient, 850.0), core, L["sternum"])
    # Xiphoid: a flat plate angled slightly backwards; cartilage that ossifies from middle age.
    ossified = float(np.clip((patient.age - 30.0) / 40.0, 0.0, 1.0))
    y0 = float(sternum_y(patient, st, st.xiphoid))
    pts = np.array(
        [[0.0, y0, st.xiphoid + 1.0], [0.0, y0 - 3.0 * s, 0.5 * (st.xiphoid + st.tip)], [0.0, y0 - 7.0 * s, st.tip]]
    )
    tube = Tube.make(pts, [3.5 * s, 3.0 * s, 2.2 * s], [10.0 * s, 8.0 * s, 4.0 * s], normals=[0.0, 1.0, 0.0])
    xs = Shape(canvas, *tube.bounds())
    xs.add_tube(tube, shell=1.0 * s)
    xs.paint(110.0 + 600.0 * ossified, 110.0 + 80.0 * ossified, L["sternum"])
