"""DICOM projection radiographs (DX, CR, DR, RG, grey Secondary Capture): displayed pixels, masks, pitch and view.

What :func:`read_dicom` does, in order; each step that changes something leaves one short note in
``DicomImage.notes``, and what lowers the trust in the result goes to ``DicomImage.warnings`` (the inference report
shows both):

1. **Which objects.** Modality DX, CR, DR or RG; or a Secondary Capture SOP class whose Modality is OT, SC or absent,
   assumed to be a digitised or exported chest film as displayed (such headers rarely give a pitch). Other modalities
   (CT, MR, a CT screenshot stored as Secondary Capture with Modality CT, ...) are refused. One frame, 8 to 16 bits
   stored, grey: an RGB/YBR image whose three channels agree (within 1 % of the range, lossy-JPEG noise) is read as
   grey; a coloured or palette image is refused. Compressed transfer syntaxes are decoded by pydicom's plugins
   (``pylibjpeg`` with ``pylibjpeg-libjpeg`` for JPEG baseline/extended/lossless and JPEG-LS, ``pylibjpeg-openjpeg``
   for JPEG 2000 and HTJ2K, ``pylibjpeg-rle`` or pydicom's own decoder for RLE); a missing plugin is named.
2. **Not anatomy**, found on the stored values of the full matrix, before any LUT: ``PixelPaddingValue`` (up to
   ``PixelPaddingRangeLimit``); shutters and collimators (``ShutterShape`` / ``CollimatorShape`` RECTANGULAR,
   CIRCULAR, POLYGONAL with their edge, centre/radius and vertex tags, 1-based row/column; the exposed field is the
   intersection of the shapes); and, only when no such tag is present, constant bands along the image edges at the
   value displayed brightest (an unexposed plate or a burned-in electronic shutter). These pixels are left out of
   the percentile anchors and filled as "no attenuation" on the detector grid. A *dark* constant band cannot be
   told from saturated air and is kept. Burned-in text and markers: a plateau of one saturated value at the bright
   end, at least a tenth of the anatomy's 1st-to-95th percentile range above the brightest anatomy and covering under
   5 % of the field, is left out of the anchors (it stays in the image). Smaller, non-saturated markers cover well
   under 1 % of a chest film, so the 1st/99th percentile anchors do not see them.
3. **Large matrices** (longest side over ``max_matrix``) are block-averaged by an integer factor before the LUTs,
   weighting by the field so padding does not bleed in; the pitch grows by the same factor.
4. **Grey-scale pipeline** (PS3.3 C.11, with ``pydicom.pixels``): the modality LUT (``ModalityLUTSequence``, else
   ``RescaleSlope``/``RescaleIntercept``), then the first VOI transform (``VOILUTSequence``, else ``WindowCenter`` /
   ``WindowWidth`` with ``VOILUTFunction`` LINEAR, LINEAR_EXACT or SIGMOID); a VOI that leaves the field without
   contrast is not applied (a warning). Then ``MONOCHROME1`` (or ``MONOCHROME2`` with ``PresentationLUTShape``
   INVERSE) is inverted so that attenuation is bright. A ``FOR PROCESSING`` image whose ``PixelIntensityRelationship``
   is LIN (sign +1) holds raw exposure: ``-log`` of it is taken instead, with no VOI.
5. **Pitch and magnification.** ``ImagerPixelSpacing`` (at the detector); else ``PixelSpacing``, which is at the
   patient when ``PixelSpacingCalibrationType`` is given (then magnification 1) and otherwise taken as the imager
   pitch. A zero, negative or malformed spacing (e.g. a CR's ``0.000\\0.000``) gives a warning and no pitch.
   Magnification: ``EstimatedRadiographicMagnificationFactor``, else ``DistanceSourceToDetector /
   DistanceSourceToPatient``; otherwise the mapping assumes one (1.1 for PA, a bedside AP's 1.15).
6. **View and orientation.** The training convention (``DESIGN.md``, ``physics/geometry.py``): the PA view is
   displayed radiologically, patient's right on the image's left and head at the top, i.e. ``PatientOrientation``
   ``['L', 'F']`` (rows run toward the patient's left, columns toward the feet); the lateral has the beam from the
   patient's right to left (DICOM ``ViewPosition`` LL) seen from the detector: anterior on the image's left,
   ``['P', 'F']``. DICOM pixels are stored in display order, so the image is mirrored, flipped or transposed until
   its ``PatientOrientation`` reads as the convention (letters beyond the first, i.e. obliquity, are ignored). An AP
   film needs no flip of its own: displayed by its ``PatientOrientation`` it shows the same line integrals as a PA
   (only the magnification differs: anterior structures such as the heart are farther from the detector and look
   larger; a warning). A right lateral (RL, beam left to right) stored ``['A', 'F']`` is mirrored to the convention;
   the side nearer the detector is then the other one than in training (a note). Without ``PatientOrientation`` the
   image is assumed to be in the convention (a note): PA displayed radiologically, lateral anterior on the image's
   left, the usual display whatever side faced the detector. ``ImageLaterality`` names the side of a paired organ,
   not the display, and is not used. A ``ViewPosition`` that names the other view than the one the file was given
   as is refused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image, ImageDraw
from pydicom import uid as dicom_uid
from pydicom.multival import MultiValue

try:  # pydicom 3 (the bundle's pin)
    from pydicom.pixels import apply_modality_lut, apply_voi, apply_windowing, get_decoder
except ImportError:  # pydicom 2.4 (MONAI Label's environment, pinned there by pydicom-seg): the same LUT functions
    from pydicom.pixel_data_handlers.util import apply_modality_lut, apply_voi, apply_windowing

    get_decoder = None  # pydicom 2 names a missing decoder itself when the pixels are read

__all__ = [
    "RADIOGRAPH_MODALITIES",
    "DicomImage",
    "grey_from_rgb",
    "header_view",
    "radiograph_kind",
    "read_dicom",
    "unexposed_masks",
]

#: DICOM modalities accepted as projection radiographs.
RADIOGRAPH_MODALITIES = ("DX", "CR", "DR", "RG")
#: Secondary Capture SOP classes (single-bit, grey byte, grey word, true colour and the original one).
_SECONDARY_CAPTURE = ("1.2.840.10008.5.1.4.1.1.7", *(f"1.2.840.10008.5.1.4.1.1.7.{i}" for i in range(1, 5)))
_PA_POSITIONS, _LATERAL_POSITIONS = ("PA", "AP"), ("LL", "RL", "LATERAL", "LAT", "LLAT", "RLAT")
#: The training convention as ``PatientOrientation`` (row direction, column direction), per view.
_CONVENTION = {"pa": ("L", "F"), "lateral": ("P", "F")}
_OPPOSITE = {"L": "R", "R": "L", "A": "P", "P": "A", "H": "F", "F": "H"}


@dataclass
class DicomImage:
    """A DICOM radiograph as read: ``pixels`` ``(rows, columns)`` float32 (attenuation bright, training orientation),
    ``mask`` (True: exposed field) and ``markers`` (True: burned-in markers, left out of the anchors), the imager
    pitch (mm) and magnification when the header gives them, the ``ViewPosition``, and what was applied."""

    pixels: np.ndarray
    mask: np.ndarray | None
    markers: np.ndarray | None
    pixel_pitch_mm: tuple[float, float] | None
    magnification: float | None
    view_position: str | None
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def radiograph_kind(ds: pydicom.Dataset) -> str | None:
    """The modality a dataset is read as (``DX``, ``CR``, ``DR``, ``RG`` or ``SC``), None if not a radiograph."""
    modality = str(ds.get("Modality", "") or "").upper()
    if modality in RADIOGRAPH_MODALITIES:
        return modality
    if str(ds.get("SOPClassUID", "")) in _SECONDARY_CAPTURE and modality in ("", "OT", "SC"):
        return "SC"
    return None


def _orientation_letters(ds: pydicom.Dataset) -> tuple[list[str], list[str]]:
    """``PatientOrientation`` as upper-case values and their first letters."""
    raw = ds.get("PatientOrientation")
    values = [str(v).upper() for v in (raw if isinstance(raw, MultiValue) else [raw] if raw else [])]
    return values, [v[:1] for v in values]


def _view_of_letters(letters: list[str]) -> str | None:
    """PA/AP rows run across the patient (L/R), a lateral's front to back (A/P)."""
    if len(letters) != 2:
        return None
    return "pa" if {"L", "R"} & set(letters) else "lateral" if {"A", "P"} & set(letters) else None


def header_view(ds: pydicom.Dataset) -> str | None:
    """The view a radiograph's header names: ``"pa"`` (a PA or AP chest film), ``"lateral"``, or None.

    ``ViewPosition`` decides (PA, AP; LL, RL, LATERAL, ...); without one, ``PatientOrientation``: a row direction across
    the patient (L/R) is a frontal view, front to back (A/P) a lateral. It works on a full header or on a query's
    answer (QIDO-RS with those attributes included).
    """
    position = str(ds.get("ViewPosition", "") or "").upper().strip()
    if position in _PA_POSITIONS:
        return "pa"
    if position in _LATERAL_POSITIONS:
        return "lateral"
    return _view_of_letters(_orientation_letters(ds)[1])


def grey_from_rgb(rgb: np.ndarray, max_value: float, name: str, what: str) -> tuple[np.ndarray, str]:
    """The grey image of a ``(rows, columns, 3)`` image whose channels agree within 1 % of ``max_value``; a note."""
    rgb = np.asarray(rgb, dtype=np.float32)
    spread = float((rgb.max(axis=-1) - rgb.min(axis=-1)).max())
    if spread > 0.01 * max_value:
        raise ValueError(
            f"{name}: colour image ({what}, channels differ by up to {spread:g}); expected a grayscale radiograph."
        )
    return rgb.mean(axis=-1), f"{what} with equal channels (spread {spread:g}) read as grey"


def _leading(flags: np.ndarray) -> int:
    """How many leading entries of a boolean vector are True."""
    return int(flags.argmin()) if not flags.all() else int(flags.size)


def unexposed_masks(
    values: np.ndarray, field_mask: np.ndarray | None, bright_high: bool, borders: bool
) -> tuple[np.ndarray | None, np.ndarray | None, list[str]]:
    """Constant bright edge bands (when ``borders``) and burned-in marker plateaus (see the module docstring).

    Args:
        values: ``(rows, columns)`` stored values.
        field_mask: exposed field found so far (True: exposed), or None.
        bright_high: whether high values are displayed bright (False for ``MONOCHROME1``).
        borders: look for constant bands along the edges.

    Returns:
        the exposed field (None when all is exposed), the markers (None when none) and notes.
    """
    notes = []
    mask = field_mask
    # Brightest displayed = largest, without widening the array (memory: a 3000 x 3000 matrix stays 18 MB).
    if bright_high:
        signed = values
    elif values.dtype.kind == "u":
        signed = values.max() - values
    else:
        signed = -(values.astype(np.int32) if values.dtype.kind == "i" else values)
    if borders:
        equal = signed == signed.max()  # the value displayed brightest
        rows, cols = values.shape
        top, bottom = _leading(equal.mean(axis=1) >= 0.95), _leading(equal.mean(axis=1)[::-1] >= 0.95)
        inner = equal[top : rows - bottom] if top + bottom < rows else equal[:0]
        left = _leading(inner.mean(axis=0) >= 0.95) if inner.size else 0
        right = _leading(inner.mean(axis=0)[::-1] >= 0.95) if inner.size else 0
        if any((top, bottom, left, right)) and (rows - top - bottom) * (cols - left - right) > 0.1 * values.size:
            band = np.zeros(values.shape, dtype=bool)
            band[top : rows - bottom, left : cols - right] = True
            mask = band if mask is None else mask & band
            notes.append(
                f"constant bright border masked (top {top}, bottom {bottom}, left {left}, right {right} pixels)"
            )
    inside = signed[mask] if mask is not None else signed.ravel()
    markers = None
    n = inside.size
    k = max(2, int(0.05 * n))
    if n > 2 * k:
        top_values = np.sort(np.partition(inside, n - k)[n - k :])  # the brightest 5 %
        gaps = np.diff(top_values)
        i = int(gaps.argmax())
        low = float(np.percentile(inside[:: max(1, n // 1_000_000)], 1.0))
        if gaps[i] > 0.1 * (float(top_values[0]) - low) and gaps[i] > 0:
            threshold, saturated = top_values[i + 1], top_values[-1]
            candidates = signed >= threshold
            if mask is not None:
                candidates &= mask
            plateau = int((top_values == saturated).sum())
            if plateau >= max(4, 0.5 * (k - i - 1)):
                markers = candidates
                notes.append(f"burned-in markers ({plateau / n:.2%} of the field, saturated) left out of the anchors")
    return mask, markers, notes


def _decode(ds: pydicom.Dataset, name: str) -> np.ndarray:
    """The stored pixel values, with a message naming the plugins when the transfer syntax has no decoder."""
    tsyntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if tsyntax is not None and tsyntax.is_compressed and get_decoder is not None:
        try:
            available = get_decoder(tsyntax).is_available
        except NotImplementedError:
            raise ValueError(f"{name}: pixel data in {tsyntax.name} cannot be decoded by pydicom.") from None
        if not available:
            if tsyntax in dicom_uid.JPEG2000TransferSyntaxes:
                plugins = "pylibjpeg and pylibjpeg-openjpeg"
            elif tsyntax == dicom_uid.RLELossless:
                plugins = "pylibjpeg-rle"
            else:
                plugins = "pylibjpeg and pylibjpeg-libjpeg"
            raise ValueError(
                f"{name}: pixel data in {tsyntax.name} cannot be decoded: no decoder plugin is installed; expected "
                f"{plugins} (see setup.cfg)."
            )
    try:
        return ds.pixel_array
    except Exception as err:  # truncated data, inconsistent header, codec errors
        raise ValueError(f"{name}: pixel data could not be decoded ({' '.join(str(err).split())}).") from None


def _shutter_field(ds: pydicom.Dataset, shape: tuple[int, int], kind: str, image: DicomImage) -> np.ndarray | None:
    """Exposed field of the ``kind`` (``Shutter`` or ``Collimator``) shapes, 1-based row/column tags; None if none."""
    shapes = ds.get(f"{kind}Shape")
    if not shapes:
        return None
    shapes = [str(s).upper() for s in (shapes if isinstance(shapes, MultiValue) else [shapes])]
    rows, cols = shape
    r, c = np.arange(1, rows + 1, dtype=np.float32)[:, None], np.arange(1, cols + 1, dtype=np.float32)[None, :]
    exposed, applied = np.ones(shape, dtype=bool), False
    for s in shapes:
        try:
            if s == "RECTANGULAR":
                left, right, upper, lower = (
                    float(ds[f"{kind}{edge}"].value)
                    for edge in ("LeftVerticalEdge", "RightVerticalEdge", "UpperHorizontalEdge", "LowerHorizontalEdge")
                )
                exposed &= (c >= left) & (c <= right) & (r >= upper) & (r <= lower)
            elif s == "CIRCULAR":
                (row0, col0), radius = (
                    map(float, ds[f"CenterOfCircular{kind}"].value),
                    float(ds[f"RadiusOfCircular{kind}"].value),
                )
                exposed &= (r - row0) ** 2 + (c - col0) ** 2 <= radius**2
            elif s == "POLYGONAL":
                v = [float(x) for x in ds[f"VerticesOfThePolygonal{kind}"].value]
                polygon = Image.new("1", (cols, rows), 0)
                ImageDraw.Draw(polygon).polygon([(v[i + 1] - 1, v[i] - 1) for i in range(0, len(v) - 1, 2)], 1, 1)
                exposed &= np.asarray(polygon, dtype=bool)
            else:
                image.warnings.append(f"{kind}Shape {s} not applied (only RECTANGULAR, CIRCULAR, POLYGONAL are)")
                continue
            applied = True
        except (KeyError, TypeError, ValueError, IndexError):
            image.warnings.append(f"{kind}Shape {s}: its geometry tags are missing or malformed; not applied")
    if not applied:
        return None
    if exposed.mean() < 0.01:
        image.warnings.append(f"{kind}Shape {'/'.join(shapes)} leaves under 1 % of the image exposed; not applied")
        return None
    image.notes.append(f"{kind.lower()} {'/'.join(shapes)}: {1 - exposed.mean():.1%} of the pixels masked")
    return exposed


def _padding_field(ds: pydicom.Dataset, raw: np.ndarray, image: DicomImage) -> np.ndarray | None:
    """Exposed field outside ``PixelPaddingValue`` .. ``PixelPaddingRangeLimit`` (stored values); None if no tag."""
    if ds.get("PixelPaddingValue") is None:
        return None
    ends = [int(ds.PixelPaddingValue), int(ds.get("PixelPaddingRangeLimit", ds.PixelPaddingValue))]
    if int(ds.get("PixelRepresentation", 0)) == 1:  # the tag's US/SS ambiguity: read the bits as signed
        ends = [e - 65536 if e >= 32768 else e for e in ends]
    lo, hi = min(ends), max(ends)
    exposed = (raw < lo) | (raw > hi)
    image.notes.append(f"pixel padding {lo}..{hi}: {1 - exposed.mean():.1%} of the pixels masked")
    return exposed


def _block_mean(values: np.ndarray, mask: np.ndarray | None, markers: np.ndarray | None, k: int):
    """Integer-factor block mean weighted by the exposed field (float32); masks: field half-covered, any marker."""
    rows, cols = values.shape[0] // k, values.shape[1] // k
    blocks = values[: rows * k, : cols * k].astype(np.float32).reshape(rows, k, cols, k)
    if mask is None:
        return blocks.mean(axis=(1, 3)), None, None if markers is None else _any_block(markers, k)
    weight = mask[: rows * k, : cols * k].reshape(rows, k, cols, k).astype(np.float32)
    covered = weight.sum(axis=(1, 3))
    mean = np.where(covered > 0, (blocks * weight).sum(axis=(1, 3)) / np.maximum(covered, 1.0), blocks.mean((1, 3)))
    return mean, covered >= 0.5 * k * k, None if markers is None else _any_block(markers, k)


def _any_block(flags: np.ndarray, k: int) -> np.ndarray:
    rows, cols = flags.shape[0] // k, flags.shape[1] // k
    return flags[: rows * k, : cols * k].reshape(rows, k, cols, k).any(axis=(1, 3))


def _has_contrast(values: np.ndarray, mask: np.ndarray | None) -> bool:
    """Whether the field's 1st and 99th percentiles differ (on a subsample of at most ~250k pixels)."""
    inside = values[mask] if mask is not None else values.ravel()
    inside = inside[:: max(1, inside.size // 250_000)]
    lo, hi = np.percentile(inside, [1.0, 99.0]) if inside.size else (0.0, 0.0)
    return bool(hi - lo > 1e-6 * max(1.0, abs(float(hi))))


def _grey_levels(ds: pydicom.Dataset, values: np.ndarray, image: DicomImage) -> np.ndarray:
    """Stored values -> float32 displayed grey levels with attenuation bright (step 4 of the module docstring)."""
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    relationship = str(ds.get("PixelIntensityRelationship", "")).upper()
    if str(ds.get("PresentationIntentType", "")).upper() == "FOR PROCESSING" and relationship == "LIN":
        if int(ds.get("PixelIntensityRelationshipSign", 1) or 1) == 1:
            exposure = np.asarray(apply_modality_lut(values, ds), dtype=np.float64)
            image.notes.append("FOR PROCESSING, linear in exposure: -log(exposure) used, no VOI")
            image.warnings.append("raw FOR PROCESSING image: not processed like the radiographs a PACS holds")
            return (-np.log(np.maximum(exposure, 1.0))).astype(np.float32)
    lut_sequence = ds.get("ModalityLUTSequence")
    if lut_sequence or ds.get("RescaleSlope") is not None or ds.get("RescaleIntercept") is not None:
        if lut_sequence and values.dtype.kind == "f":
            values = np.rint(values).astype(np.int32)  # a LUT is indexed by stored values
        grey = apply_modality_lut(values, ds)
        if lut_sequence:
            image.notes.append(f"modality LUT sequence ({lut_sequence[0].LUTDescriptor[0] or 65536} entries)")
        else:
            slope, intercept = float(ds.get("RescaleSlope", 1.0)), float(ds.get("RescaleIntercept", 0.0))
            if (slope, intercept) != (1.0, 0.0):
                image.notes.append(f"rescale slope {slope:g}, intercept {intercept:g}")
    else:
        grey = values
    mask = image.mask
    voi, what = None, None
    try:
        lut = ds.get("VOILUTSequence")
        if lut and lut[0].get("LUTDescriptor") is not None and lut[0].get("LUTData") is not None:
            voi = apply_voi(np.rint(grey).astype(np.int64) if grey.dtype.kind == "f" else grey, ds, 0)
            explanation = str(lut[0].get("LUTExplanation", "") or "")
            entries = lut[0].LUTDescriptor[0] or 65536
            what = f"VOI LUT sequence item 1 of {len(lut)} ({entries} entries{explanation and ', '}{explanation})"
        elif ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None:
            voi = apply_windowing(grey, ds, 0)
            centre, width = (ds[t].value for t in ("WindowCenter", "WindowWidth"))
            centre, width = (float(v[0] if isinstance(v, MultiValue) else v) for v in (centre, width))
            what = f"VOI window centre {centre:g}, width {width:g} ({str(ds.get('VOILUTFunction', 'LINEAR')).upper()})"
    except (ValueError, TypeError, AttributeError, KeyError, IndexError, NotImplementedError) as err:
        image.warnings.append(f"VOI transform not applied ({' '.join(str(err).split())})")
    if voi is not None:
        if _has_contrast(voi, mask) or not _has_contrast(grey, mask):
            grey = voi
            image.notes.append(what)
        else:
            image.warnings.append(f"{what} leaves the exposed field without contrast; not applied")
    grey = np.asarray(grey, dtype=np.float32)
    inverse = str(ds.get("PresentationLUTShape", "")).upper() == "INVERSE"
    if photometric == "MONOCHROME1" or (photometric == "MONOCHROME2" and inverse):
        inside = grey[mask] if mask is not None else grey
        grey = (float(inside.min()) + float(inside.max())) - grey  # any constant gives the same anchored mapping
        reason = "MONOCHROME1" if photometric == "MONOCHROME1" else "PresentationLUTShape INVERSE"
        image.notes.append(f"{reason}: inverted so that attenuation is bright")
    return grey


def _spacing(ds: pydicom.Dataset, keyword: str, image: DicomImage) -> tuple[float, float] | None:
    """A usable (row, column) spacing in mm from ``keyword``, or None with a warning when present but unusable."""
    element = ds.get(keyword)
    if element is None or element == "":
        return None
    try:
        pair = tuple(float(v) for v in (element if isinstance(element, MultiValue) else [element]))
    except (TypeError, ValueError):
        pair = ()
    if len(pair) == 1:
        pair = pair * 2
    if len(pair) == 2 and all(math.isfinite(p) and p > 0 for p in pair):
        return pair
    text = "\\".join(str(v) for v in (element if isinstance(element, MultiValue) else [element]))
    image.warnings.append(f"{keyword} {text} is not a usable pixel pitch (expected two positive numbers in mm)")
    return None


def _geometry(ds: pydicom.Dataset, image: DicomImage) -> tuple[tuple[float, float] | None, float | None]:
    """Imager pixel pitch (mm) and magnification from the header (step 5 of the module docstring)."""
    imager, pixel = _spacing(ds, "ImagerPixelSpacing", image), _spacing(ds, "PixelSpacing", image)
    magnification = None
    if imager is None and pixel is not None and ds.get("PixelSpacingCalibrationType"):
        image.notes.append(
            f"PixelSpacing calibrated at the patient ({ds.PixelSpacingCalibrationType}): magnification 1"
        )
        return pixel, 1.0
    pitch = imager or pixel
    if pitch is not None:
        source = "ImagerPixelSpacing" if imager else "PixelSpacing, taken as the imager pitch"
        image.notes.append(f"pitch {pitch[0]:g} x {pitch[1]:g} mm ({source})")
    try:
        estimated = ds.get("EstimatedRadiographicMagnificationFactor")
        sdd, sod = ds.get("DistanceSourceToDetector"), ds.get("DistanceSourceToPatient")
        if estimated is not None and 1.0 <= float(estimated) <= 3.0:
            magnification = float(estimated)
            image.notes.append(f"magnification {magnification:g} (EstimatedRadiographicMagnificationFactor)")
        elif sdd is not None and sod is not None and 0 < float(sod) <= float(sdd):
            magnification = float(sdd) / float(sod)
            image.notes.append(
                f"magnification {magnification:.4g} (DistanceSourceToDetector / DistanceSourceToPatient)"
            )
    except (TypeError, ValueError):
        image.warnings.append("magnification tags are malformed; not used")
    return pitch, magnification


def _view(ds: pydicom.Dataset, view: str | None, name: str, image: DicomImage) -> str | None:
    """The view (``pa``/``lateral``) the image is oriented as; refuses a ``ViewPosition`` of the other view."""
    position = str(ds.get("ViewPosition", "") or "").upper().strip()
    image.view_position = position or None
    stated = "pa" if position in _PA_POSITIONS else "lateral" if position in _LATERAL_POSITIONS else None
    if view is not None and stated is not None and stated != view:
        raise ValueError(
            f"{name}: ViewPosition {position!r} is a {'PA/AP' if stated == 'pa' else 'lateral'} view; the file was "
            f"given as the {view!r} view."
        )
    if position == "AP":
        image.warnings.append("AP view: the network was trained on PA views; the heart looks larger in an AP film")
    elif position == "RL":
        image.notes.append("right lateral (beam left to right): the side nearer the detector differs from training")
    elif position and stated is None:
        image.warnings.append(f"ViewPosition {position!r} is neither PA/AP nor lateral; read as the given view")
    return view or stated


def _orient(ds: pydicom.Dataset, view: str | None, image: DicomImage) -> bool:
    """Flip/transpose ``image`` to the training convention from ``PatientOrientation``; True if transposed."""
    values, letters = _orientation_letters(ds)
    if view is None:
        view = _view_of_letters(letters)
    if view is None:
        image.notes.append("orientation not checked: the view is unknown")
        return False
    across, down = _CONVENTION[view]
    if len(letters) != 2 or not all(letters):
        where = "patient's right" if view == "pa" else "anterior"
        image.notes.append(f"no PatientOrientation: assumed in the training convention ({where} on the image's left)")
        return False
    transposed = letters[0] in "HF" and letters[1] in (across, _OPPOSITE[across])
    if transposed:
        letters = letters[::-1]
        image.pixels, image.mask, image.markers = (
            None if a is None else a.T for a in (image.pixels, image.mask, image.markers)
        )
    if letters[0] not in (across, _OPPOSITE[across]) or letters[1] not in "HF":
        image.warnings.append(f"PatientOrientation {values} does not fit a {view} view; orientation not changed")
        return False
    flips = [axis for axis, (got, want) in ((1, (letters[0], across)), (0, (letters[1], down))) if got != want]
    for axis in flips:
        image.pixels, image.mask, image.markers = (
            None if a is None else np.flip(a, axis) for a in (image.pixels, image.mask, image.markers)
        )
    done = ["transposed"] * transposed + [{1: "mirrored left-right", 0: "flipped upside down"}[a] for a in flips]
    image.notes.append(f"PatientOrientation {values}: {', '.join(done) or 'already'} in the training convention")
    return transposed


def read_dicom(path: Path, name: str, view: str | None = None, max_matrix: int = 2048) -> DicomImage:
    """Read a DICOM radiograph as the module docstring describes.

    Args:
        path: the file.
        name: the file as the user gave it, for messages.
        view: ``"pa"`` or ``"lateral"`` when known (orientation and view checks), else taken from the header.
        max_matrix: longest side (pixels) above which the image is block-averaged before the LUTs.

    Raises:
        ValueError: naming the file, for an unreadable file, a non-radiograph object, a colour, multi-frame or
            out-of-range bit depth image, undecodable pixel data, or a ``ViewPosition`` of the other view.
    """
    try:
        ds = pydicom.dcmread(path)
    except Exception as err:  # pydicom raises several types for damaged files
        raise ValueError(f"{name}: not a readable DICOM file ({' '.join(str(err).split())}).") from None
    kind = radiograph_kind(ds)
    if kind is None:
        modality = str(ds.get("Modality", "") or "")
        raise ValueError(
            f"{name}: DICOM modality {modality or 'missing'!r} is not a radiograph; expected one of "
            f"{list(RADIOGRAPH_MODALITIES)} or a grey Secondary Capture (Modality OT/SC)."
        )
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise ValueError(f"{name}: expected a single 2D radiograph, got {frames} frames.")
    bits = int(ds.get("BitsStored", 0) or 0)
    if not 8 <= bits <= 16:
        raise ValueError(f"{name}: BitsStored {bits}; expected an 8- to 16-bit grey radiograph.")
    photometric = str(ds.get("PhotometricInterpretation", "") or "").upper()
    if photometric not in ("MONOCHROME1", "MONOCHROME2", "RGB") and not photometric.startswith("YBR"):
        raise ValueError(
            f"{name}: colour image (PhotometricInterpretation {photometric or 'missing'}); expected a grayscale "
            "radiograph."
        )
    raw = _decode(ds, name)
    image = DicomImage(raw, None, None, None, None, None)
    sop = ds.get("SOPClassUID")
    syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    image.notes.append(
        f"DICOM {kind} ({getattr(sop, 'name', sop) or 'no SOP class'}), {raw.shape[0]}x{raw.shape[1]}, {bits}-bit, "
        f"{photometric}, {getattr(syntax, 'name', syntax) or 'no transfer syntax'}"
    )
    if kind == "SC":
        conversion = str(ds.get("ConversionType", "") or "unknown")
        image.notes.append(f"Secondary Capture (conversion {conversion}): assumed a chest film as displayed")
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        if raw.ndim != 3 or raw.shape[-1] != 3:
            raise ValueError(f"{name}: expected a single 2D radiograph, got an array of shape {raw.shape}.")
        raw, note = grey_from_rgb(raw, 2.0**bits - 1, name, f"PhotometricInterpretation {photometric}")
        image.notes.append(note)
    if raw.ndim != 2:
        raise ValueError(f"{name}: expected a single 2D radiograph, got an array of shape {raw.shape}.")
    inverse = str(ds.get("PresentationLUTShape", "")).upper() == "INVERSE"
    bright_high = not (photometric == "MONOCHROME1" or (photometric == "MONOCHROME2" and inverse))
    fields = [_padding_field(ds, raw, image)] + [
        _shutter_field(ds, raw.shape, k, image) for k in ("Shutter", "Collimator")
    ]
    mask = None
    for f in fields:
        mask = f if mask is None else mask if f is None else mask & f
    tagged = fields[1] is not None or fields[2] is not None
    mask, markers, notes = unexposed_masks(raw, mask, bright_high, borders=not tagged)
    image.notes += notes
    if mask is not None and not mask.any():
        raise ValueError(f"{name}: no exposed pixel left after masking padding, shutters and borders.")
    image.mask, image.markers = mask, markers
    k = math.ceil(max(raw.shape) / max_matrix)
    values = raw
    if k > 1 and photometric in ("MONOCHROME1", "MONOCHROME2"):
        values, image.mask, image.markers = _block_mean(raw, mask, markers, k)
        image.notes.append(
            f"downsampled {k}x by block mean ({raw.shape[0]}x{raw.shape[1]} -> "
            f"{values.shape[0]}x{values.shape[1]}) before the LUTs"
        )
    else:
        k = 1
    image.pixels = _grey_levels(ds, values, image) if photometric.startswith("MONO") else values.astype(np.float32)
    pitch, image.magnification = _geometry(ds, image)
    if pitch is not None:
        pitch = (pitch[0] * k, pitch[1] * k)
    if _orient(ds, _view(ds, view, name, image), image) and pitch is not None:
        pitch = pitch[::-1]
    image.pixel_pitch_mm = pitch
    image.pixels = np.ascontiguousarray(image.pixels, dtype=np.float32)
    return image
