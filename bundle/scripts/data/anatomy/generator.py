"""The anatomical chest phantom: one seeded patient painted module by module, then seen through a scanner.

Order (later modules overwrite earlier ones where they overlap): body wall → upper abdomen → heart, great vessels,
oesophagus → lungs (lobes, fissures, parenchyma, airways, pulmonary vessels) in the pleural space the mediastinum
leaves → skeleton → findings → scanner (kernel blur, correlated noise, streaks). Each module draws from its own
random stream (spawned from the seed), so changing one module does not change the patients the others draw.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .canvas import Canvas
from .heart import paint_heart_and_vessels
from .labels import PHANTOM_LABELS
from .lungs import paint_lungs
from .pathology import draw_findings, paint_findings
from .patient import Patient, draw_patient
from .scanner import apply_scanner, draw_scanner
from .skeleton import paint_skeleton
from .torso import lung_region, mediastinum_mask, paint_abdomen, paint_body_wall

__all__ = ["ChestPhantom", "chest_phantom", "phantom_spacing", "synthetic_chest_ct"]

_STREAMS = ("patient", "findings", "body", "abdomen", "heart", "lungs", "skeleton", "pathology", "scanner")


@dataclass
class ChestPhantom:
    """One generated chest: ``hu`` (X, Y, Z) float32 HU, ``labels`` (X, Y, Z) uint8 (:data:`PHANTOM_LABELS`), the
    ``patient`` it was drawn from, its ``findings`` and the ``scanner`` settings (JSON-ready)."""

    hu: np.ndarray
    labels: np.ndarray
    spacing: tuple[float, float, float]
    patient: Patient
    findings: dict = field(default_factory=dict)
    scanner: dict = field(default_factory=dict)

    def summary(self) -> dict:
        """JSON-ready description: who the patient is, what was found, how it was scanned, label volumes (mL)."""
        voxel_ml = float(np.prod(self.spacing)) / 1000.0
        counts = np.bincount(self.labels.ravel(), minlength=len(PHANTOM_LABELS))
        p = self.patient
        return {
            "synthetic": True,
            "patient": {
                "sex": p.sex,
                "age": round(p.age, 1),
                "scale": round(p.scale, 3),
                "inspiration": round(p.inspiration, 3),
                "heart_scale": round(p.heart_scale, 3),
            },
            "findings": self.findings,
            "scanner": dict(self.scanner),
            "volumes_ml": {
                n: round(float(counts[i]) * voxel_ml, 2) for n, i in PHANTOM_LABELS.items() if i and counts[i]
            },
        }


def phantom_spacing(spacing_mm: float | Sequence[float]) -> tuple[float, float, float]:
    """``(sx, sy, sz)`` in mm from one number (isotropic) or three, or a ValueError naming ``spacing_mm``."""
    spacing = (float(spacing_mm),) * 3 if isinstance(spacing_mm, numbers.Real) else tuple(map(float, spacing_mm))
    if len(spacing) != 3 or not all(math.isfinite(s) and s > 0 for s in spacing):
        raise ValueError(f"spacing_mm must be a positive number or three positive numbers in mm, got {spacing_mm!r}.")
    return spacing


def chest_phantom(
    size: int | Sequence[int] = 128,
    spacing_mm: float | Sequence[float] = 2.5,
    seed: int = 0,
    pathology_share: float = 0.3,
    findings: Sequence[str] | None = None,
    noise_hu: float | None = None,
    scanner: bool = True,
) -> ChestPhantom:
    """Generate one anatomical chest CT.

    Args:
        size: grid ``(X, Y, Z)`` in voxels (an int means a cube), RAS axes.
        spacing_mm: voxel size ``(sx, sy, sz)`` in mm (a number means isotropic).
        seed: patient seed; the same seed (and arguments) gives the same volume bit for bit.
        pathology_share: probability that the patient has findings (one to three, drawn at random).
        findings: exactly these findings instead (names in ``scripts.data.anatomy.PATHOLOGIES``); ``[]`` for none.
        noise_hu: soft-tissue noise standard deviation, HU; ``None``: drawn from the patient's size; 0: no noise.
        scanner: apply the reconstruction kernel, noise and streaks; false gives the ideal anatomy.

    Returns:
        :class:`ChestPhantom`. The grid centre is the world origin: voxel ``(i, j, k)`` is at
        ``((i − (X−1)/2)·sx, …)`` mm. Outside the body is exactly −1000 HU.
    """
    shape = (int(size),) * 3 if isinstance(size, numbers.Integral) else tuple(int(s) for s in size)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"size must be a positive int or three positive ints (X, Y, Z), got {size!r}.")
    spacing = phantom_spacing(spacing_mm)
    if noise_hu is not None and not (math.isfinite(noise_hu) and noise_hu >= 0):
        raise ValueError(f"noise_hu must be a non-negative number of HU or None, got {noise_hu!r}.")
    if not (isinstance(pathology_share, numbers.Real) and 0.0 <= pathology_share <= 1.0):
        raise ValueError(f"pathology_share must be a probability in [0, 1], got {pathology_share!r}.")
    streams = dict(
        zip(_STREAMS, (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(9)), strict=True)
    )
    patient = draw_patient(streams["patient"])
    found = draw_findings(streams["findings"], patient, float(pathology_share), findings)
    canvas = Canvas(shape, spacing, patient.yaw_deg, patient.shift_mm)
    paint_body_wall(canvas, patient, streams["body"])
    paint_abdomen(canvas, patient, streams["abdomen"])
    heart = paint_heart_and_vessels(canvas, patient, streams["heart"])
    occupied = heart["occupied"] | mediastinum_mask(canvas, patient)
    right, left = lung_region(canvas, patient, occupied)
    paint_lungs(canvas, patient, streams["lungs"], right, left)
    paint_skeleton(canvas, patient, streams["skeleton"])
    paint_findings(canvas, patient, streams["pathology"], right, left)
    hu = canvas.hu
    # Water-equivalent diameter: the body's width, less the lungs' air (≈ 0.85 of it across the chest).
    model = draw_scanner(streams["scanner"], 2.0 * patient.half_width * 0.85, noise_hu)
    if scanner:
        hu = apply_scanner(hu, canvas.labels > 0, spacing, streams["scanner"], model)
    else:
        model = {}
    return ChestPhantom(np.ascontiguousarray(hu, dtype=np.float32), canvas.labels, spacing, patient, found, dict(model))


def synthetic_chest_ct(
    size: int | Sequence[int] = 64,
    spacing_mm: float | Sequence[float] = 5.0,
    seed: int = 0,
    pathology_share: float = 0.3,
    findings: Sequence[str] | None = None,
    noise_hu: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``(hu, labels)`` of :func:`chest_phantom` (the arrays only; ``noise_hu=0`` also turns off the kernel)."""
    phantom = chest_phantom(size, spacing_mm, seed, pathology_share, findings, noise_hu, scanner=noise_hu != 0)
    return phantom.hu, phantom.labels
