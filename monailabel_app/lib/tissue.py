"""A tissue label map derived from a CT in HU: what 3D Slicer's segmentation path receives beside the synthetic CT.

Each voxel inside the body gets one of four classes by its HU value; voxels outside the body are background (0):

=====  ===============  ==================  ====================================================
label  name             HU                  what it holds
=====  ===============  ==================  ====================================================
0      background       (outside the body)  the air around the patient
1      lung             < −200              air inside the body: lungs, airways, gas
2      fat              −200 … −30          subcutaneous, mediastinal, epicardial fat
3      soft tissue      −30 … 150           muscle, blood, organs, skin, cartilage
4      bone             ≥ 150               cortical and trabecular bone
=====  ===============  ==================  ====================================================

The fat window is the usual one of body-composition CT (−190 … −30 HU); its lower edge is moved to −200 so that the
partial-volume voxels between lung (≈ −850 HU) and fat (≈ −100 HU) fall on the nearer side. 150 HU lies above every
non-contrast soft tissue (liver ≈ 60 HU) and below trabecular bone on a 5 mm grid.

The body is what a radiologist would outline on each axial slice: the voxels above ``body_hu`` (−500 HU), closed over
gaps of up to ``closing_radius`` voxels (2: the noise of a generated CT opens the chest wall here and there) and with
the holes inside them filled, so the lungs and airways enclosed by the chest wall stay inside while the air around
the patient, which reaches the slice's border, does not. Slices are axial (constant superior coordinate), so a
trachea that leaves the top of the volume is still enclosed on every slice. Air that reaches the border of the field
of view on a slice (a body cut by the field of view) counts as outside. The classes are read voxel by voxel, without
smoothing: a noisy CT gives a speckled label map (a median filter would also erase thin ribs at 5 mm).

Numpy and scipy only: this module is imported by the MONAI Label app and by the project's tests, which run without
MONAI Label.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

__all__ = ["TISSUE_CLASSES", "TissueClass", "axial_axis", "label_info", "label_names", "tissue_labels"]


@dataclass(frozen=True)
class TissueClass:
    """One class of the label map: its value, name (as clients list it), colour and HU interval."""

    label: int
    name: str
    color: tuple[int, int, int]  # RGB, 0-255
    hu_min: float  # lower edge, HU (inclusive); -inf for the first class
    hu_max: float  # upper edge, HU (exclusive); +inf for the last class


#: The classes in label order, 1..N (3D Slicer's MONAI Label module maps the i-th name to the value i + 1).
TISSUE_CLASSES: tuple[TissueClass, ...] = (
    TissueClass(1, "lung", (120, 170, 230), -np.inf, -200.0),
    TissueClass(2, "fat", (230, 210, 80), -200.0, -30.0),
    TissueClass(3, "soft tissue", (200, 90, 80), -30.0, 150.0),
    TissueClass(4, "bone", (245, 240, 220), 150.0, np.inf),
)

#: Voxels above this HU value are tissue when the body outline is drawn (air −1000 HU, lung ≈ −850, fat ≈ −100).
BODY_HU = -500.0


def label_names(classes: Sequence[TissueClass] = TISSUE_CLASSES) -> dict[str, int]:
    """``{name: label}`` in label order: MONAI Label's ``labels`` / ``label_names`` of a segmentation model."""
    return {c.name: c.label for c in classes}


def label_info(classes: Sequence[TissueClass] = TISSUE_CLASSES) -> list[dict]:
    """Name, value, colour (RGB 0-255) and HU interval of each class, JSON-ready (``None`` for an open edge)."""

    def edge(value: float) -> float | None:
        return None if np.isinf(value) else float(value)

    return [
        {"name": c.name, "idx": c.label, "color": list(c.color), "hu_range": [edge(c.hu_min), edge(c.hu_max)]}
        for c in classes
    ]


def axial_axis(affine: np.ndarray) -> int:
    """The array axis that runs along the patient's superior-inferior direction (RAS/LPS: world z) of ``affine``."""
    direction = np.asarray(affine, dtype=np.float64)[:3, :3]
    return int(np.argmax(np.abs(direction[2])))


def tissue_labels(
    hu: np.ndarray,
    axis: int = -1,
    classes: Sequence[TissueClass] = TISSUE_CLASSES,
    body_hu: float = BODY_HU,
    closing_radius: int = 2,
) -> np.ndarray:
    """The tissue label map of a CT volume in HU (see the module docstring).

    Args:
        hu: ``(X, Y, Z)`` CT in HU (any real dtype).
        axis: the axial axis of ``hu`` (the one along superior-inferior; :func:`axial_axis` reads it from an affine).
        classes: the classes, labels 1..N in order, each ``hu_min`` the previous class's ``hu_max``.
        body_hu: voxels above this value are tissue when the body outline is drawn.
        closing_radius: gaps in the outline up to this many voxels are closed (a disc, in each axial slice).

    Returns:
        ``uint8`` label map of ``hu``'s shape: 0 outside the body, else the label of the class whose HU interval holds
        the voxel.
    """
    hu = np.nan_to_num(np.asarray(hu, dtype=np.float32), nan=-1000.0)
    if hu.ndim != 3:
        raise ValueError(f"hu must be a 3D volume (X, Y, Z), got shape {hu.shape}.")
    edges = np.asarray([c.hu_min for c in classes[1:]], dtype=np.float32)
    axis = axis % 3
    body = np.stack([_outline(axial, closing_radius) for axial in np.moveaxis(hu > body_hu, axis, 0)])
    body = np.moveaxis(body, 0, axis)
    labels = np.searchsorted(edges, hu, side="right").astype(np.uint8) + 1  # lower edges inclusive
    labels[~body] = 0
    return labels


def _outline(tissue: np.ndarray, radius: int) -> np.ndarray:
    """The body of one axial slice: ``tissue`` closed with a disc of ``radius`` voxels, its holes filled."""
    if radius > 0:
        y, x = np.mgrid[-radius : radius + 1, -radius : radius + 1]
        padded = np.pad(tissue, radius)  # so that closing does not erode a body that touches the border
        tissue = ndimage.binary_closing(padded, structure=x**2 + y**2 <= radius**2)[radius:-radius, radius:-radius]
    return ndimage.binary_fill_holes(tissue)
