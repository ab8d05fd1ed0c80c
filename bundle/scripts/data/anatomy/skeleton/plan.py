"""The skeleton's plan: every random choice, drawn before anything is painted, and the layouts several painters
share (paints nothing itself).

The vertebral levels C5–L2 (:class:`Vertebra`: body, canal and transverse-process sizes growing caudally, heights,
osteophytes with age), the textures, the ribs' and shoulders' jitter and the sternum's sizes (:class:`Plan`), the
sternum's profile and costal notches (:class:`SternumLayout`, used by the ribs, the sternum and the clavicles) and the
ribs' inset from the skin (:func:`rib_inset`, used by the ribs and the scapulae).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..labels import PHANTOM_LABELS as L
from ..patient import Patient, VertebraLevel
from .bone import Knots, Texture, knot

__all__ = ["Plan", "SternumLayout", "Vertebra", "draw_plan", "rib_inset", "sternum_layout", "sternum_y"]

# Level index: C5 = −2, C6 = −1, C7 = 0, T1..T12 = 1..12, L1 = 13, L2 = 14 (T6 = 6 is patient.vertebral_radius).
_INDEX = {"vertebrae_C7": 0, **{f"vertebrae_T{i}": i for i in range(1, 13)}, "vertebrae_L1": 13, "vertebrae_L2": 14}

# Vertebral body half width / half depth relative to T6 (real bodies: T1 ≈ 28 × 16 mm, T12 ≈ 42 × 29, L2 ≈ 46 × 32).
_BODY_WIDTH: Knots = {-2: 0.68, 0: 0.72, 1: 0.76, 6: 1.0, 12: 1.18, 14: 1.3}
_BODY_DEPTH: Knots = {-2: 0.58, 0: 0.62, 1: 0.68, 6: 1.0, 12: 1.05, 14: 1.12}
# Spinal canal half width / half depth, mm (thoracic canal ≈ 16–17 mm, cervical and lumbar wider).
_CANAL_X: Knots = {-2: 12.5, 0: 11.5, 1: 10.0, 3: 8.5, 10: 8.5, 12: 9.8, 14: 11.5}
_CANAL_Y: Knots = {-2: 7.0, 0: 7.0, 1: 7.5, 6: 8.0, 12: 8.5, 14: 9.0}
# Transverse-process tip: lateral distance (mm), AP offset from the canal centre (thoracic TPs point backwards).
_TP_X: Knots = {-2: 26.0, 0: 34.0, 1: 38.0, 6: 34.0, 10: 30.0, 11: 26.0, 12: 20.0, 13: 38.0, 14: 44.0}
_TP_DY: Knots = {-2: 4.0, 0: 1.0, 1: -4.0, 6: -8.0, 10: -8.0, 12: -4.0, 13: 0.0, 14: 0.0}
_TP_R: Knots = {-2: 3.2, 0: 3.8, 1: 4.6, 10: 4.4, 12: 3.4, 14: 3.6}

# Where ribs 3–7 meet the sternal body (share of its length from the manubriosternal joint).
_STERNAL_NOTCHES = (0.17, 0.38, 0.58, 0.78, 0.95)


# ---- vertebrae -------------------------------------------------------------------------------------------------------
@dataclass
class Vertebra:
    """One vertebra's layout (patient frame, mm)."""

    name: str
    index: float
    label: int | None
    top: float
    bottom: float
    disc_bottom: float
    a: float  # body half width
    b: float  # body half depth
    rc_x: float  # canal half width
    rc_y: float  # canal half depth
    y_c: float  # body centre y at the pedicles
    y_canal: float  # canal centre y
    z_ped: float  # height of the pedicles and transverse processes
    tp_tip: np.ndarray  # right transverse-process tip (mirror x for the left)
    tp_r: float
    osteophyte: float  # osteophyte size (mm) at its lower endplate, 0 none

    @property
    def height(self) -> float:
        return self.top - self.bottom


def rib_inset(patient: Patient) -> float:
    """Inset (mm from the skin) of the ribs' axis: the rib's inner surface ≈ 3 mm outside the parietal pleura at
    ``wall_mm`` (intercostal muscle and extrapleural fat between), never into the subcutaneous fat."""
    return max(patient.wall_mm - 6.5 * patient.scale, 2.0 + patient.fat_mm + 4.5 * patient.scale)


def _vertebrae(patient: Patient, rng: np.random.Generator) -> list[Vertebra]:
    """The levels of ``patient.levels`` plus C5–C6 above C7 (so the spine does not stop in the neck)."""
    s = patient.scale
    levels: list[tuple[VertebraLevel, float, int | None]] = []
    first = patient.levels[0]
    heights = [(first.top - first.bottom) * r for r in (0.86, 0.93)]  # C5, C6 a little lower than C7
    disc = first.bottom - first.disc_bottom
    z = first.top
    above = []
    for name, index, h in (("C6", -1.0, heights[1]), ("C5", -2.0, heights[0])):
        top = z + disc + h
        above.append((VertebraLevel(name, top, top - h, z), index, None))
        z = top
    levels += above[::-1]
    levels += [(lv, float(_INDEX.get(lv.name, 6)), L.get(lv.name)) for lv in patient.levels]
    age_factor = float(np.clip((patient.age - 45.0) / 35.0, 0.0, 1.0))
    spurs = rng.random(len(levels))
    spur_size = rng.uniform(1.2, 3.0, len(levels))
    out = []
    vr = patient.vertebral_radius
    for (lv, i, label), spur, size in zip(levels, spurs, spur_size, strict=True):
        a, b = vr[0] * knot(i, _BODY_WIDTH), vr[1] * knot(i, _BODY_DEPTH)
        rc_x, rc_y = knot(i, _CANAL_X) * s**0.5, knot(i, _CANAL_Y) * s**0.5
        h = lv.top - lv.bottom
        z_ped = lv.top - 0.4 * h
        y_c = float(patient.spine_y(np.float64(z_ped)))
        conc = 0.1 if i < 13 else 0.16
        y_canal = y_c - b * (1.0 - conc) - rc_y - 0.5
        tp = np.array([knot(i, _TP_X) * s, y_canal + knot(i, _TP_DY) * s, z_ped + 1.5])
        # Osteophytes: common from middle age on, most in the mid/lower thoracic and lumbar spine.
        spur_p = age_factor * (0.35 + 0.35 * float(4 <= i <= 14))
        out.append(
            Vertebra(
                lv.name,
                i,
                label,
                lv.top,
                lv.bottom,
                lv.disc_bottom,
                a,
                b,
                rc_x,
                rc_y,
                y_c,
                y_canal,
                z_ped,
                tp,
                knot(i, _TP_R) * s,
                float(size * s) if spur < spur_p else 0.0,
            )
        )
    return out


# ---- the plan --------------------------------------------------------------------------------------------------------
@dataclass
class Plan:
    """Every random choice of the skeleton, drawn before painting (grid-independent)."""

    vertebrae: list[Vertebra]
    trabecular: Texture
    spots: Texture
    rib_dz: np.ndarray  # (2, 12) jitter of the ribs' anterior height (mm)
    rib_end: np.ndarray  # (2, 12) jitter of where the bony rib ends
    rib_size: np.ndarray  # (2, 12) cross-section scale
    manubrium_mm: float
    xiphoid_mm: float
    sternum_width: float
    calcification: float
    shoulders: np.ndarray  # (2, 8) per side: humeral head x/y/z jitter, radius, scapula angles' jitter …


def draw_plan(patient: Patient, rng: np.random.Generator) -> Plan:
    vertebrae = _vertebrae(patient, rng)
    trabecular = Texture(rng, (2.0, 8.0), 14)
    spots = Texture(rng, (6.0, 16.0), 5)
    rib_dz = rng.normal(0.0, 4.0, (2, 12))
    rib_end = rng.normal(0.0, 0.025, (2, 12))
    rib_size = np.clip(rng.normal(1.0, 0.06, (2, 12)), 0.85, 1.15)
    manubrium = float(rng.uniform(45.0, 55.0) * patient.scale)
    xiphoid = float(rng.uniform(25.0, 45.0) * patient.scale)
    width = float(rng.uniform(0.9, 1.12))
    calcification = float(np.clip((patient.age - 25.0) / 50.0, 0.0, 1.0) * rng.uniform(0.4, 1.2))
    shoulders = rng.uniform(0.0, 1.0, (2, 8))
    return Plan(
        vertebrae, trabecular, spots, rib_dz, rib_end, rib_size, manubrium, xiphoid, width, calcification, shoulders
    )


# ---- sternum layout --------------------------------------------------------------------------------------------------
@dataclass
class SternumLayout:
    notch: float
    angle: float  # manubriosternal joint
    xiphoid: float
    tip: float  # xiphoid tip
    z: np.ndarray  # profile heights (increasing)
    half_width: np.ndarray
    half_depth: np.ndarray
    attach: list[float]  # z of costal notches 1..7

    def width(self, z: float) -> float:
        return float(np.interp(z, self.z, self.half_width))

    def depth(self, z: float) -> float:
        return float(np.interp(z, self.z, self.half_depth))


def sternum_y(patient: Patient, layout: SternumLayout, z) -> np.ndarray:
    """Centre y of the sternum: just under the presternal skin and fat (the midline has no pectoral muscle)."""
    front = patient.ap_profile(np.asarray(z, dtype=np.float64))[0]
    depth = np.interp(z, layout.z, layout.half_depth)
    return patient.body_y + front - (2.0 + 0.85 * patient.fat_mm + 2.0) - depth


def sternum_layout(patient: Patient, plan: Plan) -> SternumLayout:
    s, w = patient.scale, plan.sternum_width
    notch = patient.z_sternal_notch
    angle = notch - plan.manubrium_mm
    xiph = min(patient.z_xiphoid, angle - 60.0 * s)
    body = angle - xiph
    z = np.array(
        [
            xiph - plan.xiphoid_mm,
            xiph,
            xiph + 0.4 * body,
            angle - 1.0,
            angle + 1.0,
            notch - 0.5 * (notch - angle),
            notch + 8.0,
        ]
    )
    half_w = np.array([4.0, 10.0, 14.0, 12.5, 14.5, 21.0, 26.0]) * s * w
    half_d = np.array([3.0, 5.5, 6.2, 6.2, 7.0, 7.5, 7.5]) * s
    attach = [notch - 0.4 * plan.manubrium_mm, angle] + [angle - f * body for f in _STERNAL_NOTCHES]
    return SternumLayout(notch, angle, xiph, xiph - plan.xiphoid_mm, z, half_w, half_d, attach)
