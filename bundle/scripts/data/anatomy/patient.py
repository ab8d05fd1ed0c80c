"""One synthetic patient: the landmarks every anatomy module lays its organs out from (patient frame, mm, RAS).

A seed draws sex, age, body size and habitus, inspiration depth, heart size, position on the table and the
findings; everything else is derived from those, so the organs of one patient agree with each other (the ribs
follow the chest wall, the lungs fill the cage down to the domes, the heart rests on the left dome).

Typical adult values the ranges come from (supine chest CT, inspiration): chest transverse diameter 28–36 cm and
AP diameter 18–26 cm; lung height apex→dome 22–28 cm; the right dome 1.5–2.5 cm above the left; thoracic kyphosis
20–40°, more with age; vertebral body heights T1 ≈ 17 mm to L2 ≈ 27 mm with discs of 4–9 mm.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["Patient", "VertebraLevel", "draw_patient"]

#: Vertebral levels of a chest CT, top to bottom, with their body heights (mm) for an average adult.
_LEVELS = (
    ("vertebrae_C7", 15.0),
    *((f"vertebrae_T{i}", 17.0 + 0.75 * (i - 1)) for i in range(1, 13)),
    ("vertebrae_L1", 26.0),
    ("vertebrae_L2", 27.0),
)


@dataclass(frozen=True)
class VertebraLevel:
    """One vertebra: label name, body top/bottom z (mm) and the disc below it down to ``disc_bottom``."""

    name: str
    top: float
    bottom: float
    disc_bottom: float

    @property
    def centre(self) -> float:
        return 0.5 * (self.top + self.bottom)


@dataclass
class Patient:
    """Landmarks of one patient (patient frame, mm). Functions of z accept arrays and broadcast."""

    sex: str  # "female" | "male"
    age: float  # years
    scale: float  # body size relative to an average adult (1.0)
    fat_mm: float  # subcutaneous fat thickness over the chest
    muscle_mm: float  # chest-wall muscle thickness (pectoral/intercostal/serratus)
    inspiration: float  # 0 = expiration, 1 = deep inspiration
    heart_scale: float  # 1.0 normal heart; > 1.2 cardiomegaly
    bone_density: float  # trabecular density factor (1.0 young adult; ~0.6 at 80 years)
    yaw_deg: float  # rotation on the table about z
    shift_mm: tuple[float, float, float]
    half_width: float  # body half width at mid-chest (x), mm
    half_ap_anterior: float  # body centre to anterior skin (y), mm
    half_ap_posterior: float  # body centre to posterior skin (y), mm
    body_y: float  # body centre (y) relative to the patient-frame origin
    z_apex: float  # lung apex
    z_dome_right: float  # top of the right hemidiaphragm
    z_dome_left: float  # top of the left hemidiaphragm
    z_recess: float  # lowest point of the posterior costophrenic recesses
    z_carina: float
    z_sternal_notch: float
    z_xiphoid: float
    spine_y0: float  # vertebral body centre (y) at its most anterior (ends of the kyphosis)
    kyphosis_mm: float  # posterior bow of the mid-thoracic spine
    vertebral_radius: tuple[float, float]  # vertebral body half width (x), half depth (y) at T6
    levels: list[VertebraLevel] = field(default_factory=list)
    heart_centre: tuple[float, float, float] = (0.0, 0.0, 0.0)
    heart_radii: tuple[float, float, float] = (0.0, 0.0, 0.0)
    hilum_right: tuple[float, float, float] = (0.0, 0.0, 0.0)
    hilum_left: tuple[float, float, float] = (0.0, 0.0, 0.0)
    breasts: bool = False
    findings: dict = field(default_factory=dict)  # finding name -> parameters, drawn by the pathology module

    # ---- body outline ---------------------------------------------------------------------------------------------
    def width_profile(self, z: np.ndarray) -> np.ndarray:
        """Body half width (x, mm) at height z: widest over the lower ribs, narrowing gently towards the apices (the
        shoulders keep the outline wide), the neck above them; the abdomen narrows slightly below the cage."""
        cage = np.clip((z - self.z_carina + 40.0) / max(self.z_apex - self.z_carina + 40.0, 1.0), 0.0, 1.0)
        neck = np.clip((z - self.z_apex - 5.0) / 40.0, 0.0, 1.0)
        low = np.clip((self.z_xiphoid - z) / 200.0, 0.0, 1.0)
        # Shoulders: the deltoids and humeral heads (arms raised) widen the outline round the sternal notch's level.
        shoulder = 24.0 * self.scale * np.exp(-(((z - self.z_sternal_notch - 5.0) / 40.0) ** 2))
        return self.half_width * (1.0 - 0.14 * cage**2) * (1.0 - 0.45 * neck) * (1.0 - 0.06 * low) + shoulder

    def ap_profile(self, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(anterior, posterior) body half depths (y, mm) at height z."""
        u = np.clip((z - self.z_apex + 10.0) / 50.0, 0.0, 1.0)
        shrink = 1.0 - 0.35 * u**2
        belly = 1.0 + 0.10 * np.clip((self.z_xiphoid - z) / 120.0, 0.0, 1.0) * (self.fat_mm / 20.0)
        # The back follows the thoracic kyphosis, as the spine does (spine_y), so the paraspinal depth is kept.
        return self.half_ap_anterior * shrink * belly, self.half_ap_posterior * (1.0 - 0.15 * u**2) + self._bow(z)

    def inside_body(self, px: np.ndarray, py: np.ndarray, pz: np.ndarray, inset_mm: float = 0.0) -> np.ndarray:
        """Voxels inside the skin surface moved inwards by ``inset_mm`` (the layers of the body wall)."""
        return self.body_radius(px, py, pz, inset_mm) <= 1.0

    def body_radius(self, px: np.ndarray, py: np.ndarray, pz: np.ndarray, inset_mm: float = 0.0) -> np.ndarray:
        """Normalised elliptic radius (1 on the surface inset by ``inset_mm``) of the body cross-section.

        The subcutaneous fat in an inset is not uniform: thicker laterally (×1.15) than posteriorly (×0.9) and thinnest
        over the sternum (×0.65), as in adults; every layer below it (muscle, ribs, pleura) follows.
        """
        fat = min(max(inset_mm - 2.0, 0.0), self.fat_mm)
        a = np.maximum(self.width_profile(pz) - inset_mm - 0.15 * fat, 1.0)
        front, back = self.ap_profile(pz)
        dy = py - self.body_y
        b = np.where(
            dy >= 0, np.maximum(front - inset_mm + 0.35 * fat, 1.0), np.maximum(back - inset_mm + 0.1 * fat, 1.0)
        )
        return np.sqrt((px / a) ** 2 + (dy / b) ** 2)

    @property
    def wall_mm(self) -> float:
        """Skin + fat + muscle + rib layer: the inset of the thoracic cavity (parietal pleura) from the skin."""
        return 2.0 + self.fat_mm + 0.7 * self.muscle_mm + 9.0

    # ---- skeleton and diaphragm -----------------------------------------------------------------------------------
    def _bow(self, z: np.ndarray) -> np.ndarray:
        """Posterior displacement (mm) of the kyphosis at height z: ``kyphosis_mm`` mid-spine, 0 at its ends."""
        top, bottom = self.levels[0].top, self.levels[-1].disc_bottom
        u = np.clip((np.asarray(z) - 0.5 * (top + bottom)) / (0.5 * (top - bottom)), -1.0, 1.0)
        return self.kyphosis_mm * (1.0 - u**2)

    def spine_y(self, z: np.ndarray) -> np.ndarray:
        """Vertebral body centre (y, mm) at height z: the thoracic kyphosis bows it posteriorly mid-chest."""
        return self.spine_y0 - self._bow(z)

    def diaphragm_z(self, px: np.ndarray, py: np.ndarray) -> np.ndarray:
        """Height (mm) of the diaphragm's upper surface above (x, y): two domes, the right higher, falling to the
        lateral and posterior costophrenic recesses."""
        x_centre = 0.45 * self.half_width
        dy = py - (self.body_y + 0.1 * self.half_ap_anterior)
        fall_post = np.where(dy < 0, 1.8, 0.8)  # the posterior recess is the deepest
        drop = self.z_dome_right - self.z_recess
        out = []
        for side, top in ((1.0, self.z_dome_right), (-1.0, self.z_dome_left)):
            rx = (px - side * x_centre) / (0.45 * self.half_width)
            ry = dy / (0.9 * self.half_ap_posterior)
            out.append(top - drop * (0.8 * rx**2 + fall_post * ry**2))
        return np.where(px >= 0, out[0], out[1])

    def hilum(self, side: float) -> tuple[float, float, float]:
        """Hilum (where the main bronchus and pulmonary artery enter the lung) of the right (+1) or left (−1) lung."""
        return self.hilum_right if side > 0 else self.hilum_left


def draw_patient(rng: np.random.Generator, female_share: float = 0.5) -> Patient:
    """Draw one adult patient's landmarks from ``rng`` (the caller's seeded generator)."""
    sex = "female" if rng.random() < female_share else "male"
    male = sex == "male"
    age = float(rng.uniform(20.0, 85.0))
    scale = float(np.clip(rng.normal(1.04 if male else 0.95, 0.05), 0.82, 1.18))
    fat_mm = float(np.clip(rng.lognormal(np.log(12.0 if male else 16.0), 0.45), 3.0, 45.0))
    muscle_mm = float(rng.uniform(9.0, 16.0) * (1.1 if male else 0.95) * (1.0 - 0.3 * max(age - 50.0, 0.0) / 35.0))
    inspiration = float(rng.uniform(0.55, 1.0))
    bone_density = float(np.clip(1.0 - 0.009 * max(age - 35.0, 0.0) * (1.3 if not male else 1.0), 0.45, 1.05))
    # The rib cage's inner (pleural) size is skeletal; the body outline adds the wall layers over it, fat
    # distributed as body_radius does (lateral ×1.15, posterior ×0.9, anterior ×0.65) so that every inset agrees.
    wall = 2.0 + 0.7 * muscle_mm + 9.0
    cage_half_width = scale * rng.uniform(112.0, 124.0) * (1.03 if male else 0.97)
    half_width = float(cage_half_width + wall + 1.15 * fat_mm)
    half_ap_posterior = float(scale * rng.uniform(72.0, 84.0) + wall + 0.9 * fat_mm)
    half_ap_anterior = float(scale * rng.uniform(66.0, 78.0) + wall + 0.65 * fat_mm)
    body_y = float(rng.uniform(-8.0, 8.0))

    # Vertical landmarks: the lungs' height grows with inspiration and body size; the right dome sits higher.
    lung_height = scale * (170.0 + 45.0 * inspiration) * (1.04 if male else 0.96)
    dome_gap, recess = rng.uniform(12.0, 28.0), scale * rng.uniform(40.0, 60.0)
    z_apex = float(0.5 * (lung_height + dome_gap + recess) + rng.uniform(-8.0, 8.0))  # lungs centred on the grid
    z_dome_right = float(z_apex - lung_height)
    z_dome_left = float(z_dome_right - dome_gap)
    z_recess = float(z_dome_left - recess)
    z_sternal_notch = float(z_apex - scale * rng.uniform(30.0, 45.0))
    z_carina = float(z_sternal_notch - scale * rng.uniform(45.0, 60.0))
    z_xiphoid = float(z_dome_right - rng.uniform(5.0, 30.0))

    # Spine: levels stacked down from T1, whose top lies a little above the lung apex.
    height_scale = scale * rng.uniform(0.95, 1.05)
    z = z_apex + scale * 10.0 + height_scale * 15.0  # top of C7: the T1 body sits at the level of the apex
    levels = []
    for name, height in _LEVELS:
        h = height * height_scale
        disc = (4.0 + 0.35 * (height - 15.0)) * height_scale * (1.0 - 0.2 * max(age - 50.0, 0.0) / 35.0)
        levels.append(VertebraLevel(name, z, z - h, z - h - disc))
        z = z - h - disc
    # Vertebral body centre 75–95 mm in front of the back's skin (fat, paraspinal muscles, posterior elements).
    spine_y0 = float(body_y - half_ap_posterior + 2.0 + 0.9 * fat_mm + 66.0 * scale)
    kyphosis_mm = float(rng.uniform(6.0, 14.0) + 0.12 * max(age - 40.0, 0.0))

    heart_scale = 1.0  # the pathology module may enlarge it
    heart_radii = tuple(float(r * scale * rng.uniform(0.92, 1.08)) for r in (74.0, 48.0, 52.0))
    heart_centre = (
        float(-rng.uniform(18.0, 30.0) * scale),
        float(body_y + rng.uniform(10.0, 25.0)),
        float(z_dome_left + 1.05 * heart_radii[2]),
    )
    hilum_z = z_carina - 20.0
    hilum_right = (float(48.0 * scale), float(spine_y0 + 45.0), float(hilum_z + 5.0))
    hilum_left = (float(-50.0 * scale), float(spine_y0 + 42.0), float(hilum_z - 5.0))
    return Patient(
        sex=sex,
        age=age,
        scale=scale,
        fat_mm=fat_mm,
        muscle_mm=muscle_mm,
        inspiration=inspiration,
        heart_scale=heart_scale,
        bone_density=bone_density,
        yaw_deg=float(rng.normal(0.0, 2.5)),
        shift_mm=(float(rng.normal(0.0, 5.0)), float(rng.normal(0.0, 5.0)), float(rng.normal(0.0, 6.0))),
        half_width=half_width,
        half_ap_anterior=half_ap_anterior,
        half_ap_posterior=half_ap_posterior,
        body_y=body_y,
        z_apex=z_apex,
        z_dome_right=z_dome_right,
        z_dome_left=z_dome_left,
        z_recess=z_recess,
        z_carina=z_carina,
        z_sternal_notch=z_sternal_notch,
        z_xiphoid=z_xiphoid,
        spine_y0=spine_y0,
        kyphosis_mm=kyphosis_mm,
        vertebral_radius=(float(19.0 * scale), float(15.0 * scale)),
        levels=levels,
        heart_centre=heart_centre,
        heart_radii=heart_radii,
        hilum_right=hilum_right,
        hilum_left=hilum_left,
        breasts=(not male) and rng.random() < 0.9 or (male and rng.random() < 0.1),
    )
