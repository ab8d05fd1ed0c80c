"""CT files: discovery of volumes and DICOM series, validated loading, NIfTI writing.

DICOM series handling (which series, slice geometry, gantry tilt) lives in :mod:`.dicom_series`. Reading goes
through MONAI's ``LoadImage`` (NIfTI via nibabel; NRRD, MHA/MHD and DICOM series folders via ITK):
:class:`LoadCTd` is ``LoadImaged`` with the checks below and is what ``configs/common.yaml#ct_preprocessing``
loads with; :func:`load_ct` adds :class:`~.transforms.ValidateCTd` and ``Orientation(RAS)`` (the prepare workflow).
For a readable, unambiguous file both give exactly what ``LoadImage`` gives.

CTs as hospitals store them — what is accepted, and what ends with one line naming the file as given:

* **Damaged files** (empty, truncated, a gzip stream cut short, not the format the name says, a DICOM slice whose
  pixel data is cut off): ``ValueError`` naming the file and the format that was expected.
* **DICOM folders with several series.** Localizers (ImageType LOCALIZER), single images (dose screens), other
  modalities and objects without pixels (DICOMDIR, reports) are skipped. Two or more CT series are refused with a
  list of them (SeriesInstanceUID, series number and description, slices, slice thickness): a series is never
  guessed, since two reconstructions of one acquisition (lung and soft-tissue kernels, thin and thick slices)
  teach the network different things. Choose one with ``"<folder>#<SeriesInstanceUID>"`` wherever a CT path goes
  (datalist ``image`` entries, :func:`load_ct`), or export each series into its own folder (what ``prepare`` needs).
* **Gantry tilt.** A tilted acquisition stacks its slices obliquely: each slice is shifted within its plane (the
  positions step along the table, not along the slice normal). ITK stacks them along the normal instead, at the
  distance between slice positions (a 20° tilt: 6 % too far apart, and shifted by up to tan 20° of the scan
  length). The slices are resampled onto a regular grid in their true positions (in-plane bilinear) and the tilt
  is noted in ``meta["ct_warnings"]``.
* **Oblique, sagittal or coronal acquisitions** keep their true affine; ``Orientationd`` and
  ``Spacingd(diagonal=True)`` in the preprocessing bring them onto an axis-aligned RAS grid.
* **4D data** (a 4D NIfTI/NRRD/MHA, a DICOM series with several TemporalPositionIndex values or several slices
  at each position, an enhanced multi-frame CT) is refused: one 3D volume is expected (export one phase).

Written NIfTI files carry no identifiers (NIfTI has no patient fields); the generated CT as a DICOM series is written
by :func:`.dicom_output.write_ct_dicom_series` (re-exported here).
"""

from __future__ import annotations

import gzip
import inspect
import logging
import math
import os
import re
import zlib
from collections.abc import Hashable, Mapping
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
from monai.config import KeysCollection
from monai.data import ITKReader, MetaTensor
from monai.transforms import LoadImage, LoadImaged, Orientation
from monai.utils import optional_import

from ..utils import atomic_write
from .dicom_output import write_ct_dicom_series
from .dicom_series import (
    _check_series_geometry,
    _choose_series,
    _is_dicom,
    _itk_series_name,
    _refuse_multiframe,
    _undo_gantry_tilt,
    split_series_source,
)
from .transforms import ValidateCTd

itk, _ = optional_import("itk")

__all__ = [
    "CT_SUFFIXES",
    "LoadCTd",
    "find_ct_sources",
    "load_ct",
    "split_series_source",
    "write_ct_dicom_series",
    "write_nifti",
]

logger = logging.getLogger(__name__)

#: File endings read as single-file CT volumes.
CT_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")

#: What a file with each ending must be (for messages).
_FORMATS = {
    ".nii.gz": "a gzip-compressed NIfTI volume",
    ".nii": "a NIfTI volume",
    ".nrrd": "an NRRD volume",
    ".nhdr": "an NRRD header with its data file",
    ".mha": "a MetaImage (.mha) volume",
    ".mhd": "a MetaImage header (.mhd) with its data file",
}
_ANY_FORMAT = "a CT volume (NIfTI, NRRD, MHA/MHD) or a folder holding one DICOM CT series"


def find_ct_sources(source_dir: str | os.PathLike) -> list[Path]:
    """Every CT under ``source_dir``: single-file volumes and folders holding a DICOM series, sorted by path.

    Raises:
        ValueError: the folder does not exist or holds no CT.
    """
    root = Path(source_dir)
    if not root.is_dir():
        raise ValueError(f"source_dir {root}: not a folder.")
    sources: list[Path] = []
    for folder, dirs, files in os.walk(root, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))  # hidden folders are skipped like hidden files
        paths = [Path(folder) / f for f in sorted(files) if not f.startswith(".")]
        sources += [p for p in paths if p.name.lower().endswith(CT_SUFFIXES)]
        if any(_is_dicom(p) for p in paths if not p.name.lower().endswith(CT_SUFFIXES)):
            sources.append(Path(folder))
    if not sources:
        raise ValueError(
            f"source_dir {root}: no CT volumes found (expected NIfTI, NRRD, MHA/MHD files or DICOM series folders)."
        )
    return sorted(sources)


def _expected_format(path: Path) -> str:
    name = path.name.lower()
    return next((text for suffix, text in _FORMATS.items() if name.endswith(suffix)), _ANY_FORMAT)


def _reason(err: BaseException) -> str:
    """A reader's exception in one short line (ITK's span many lines and start with its source file)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    lines = [line for line in lines if not re.fullmatch(r"\S+\.(cxx|cpp|h|hxx):\d+:?", line)]
    text = re.sub(r"^ITK ERROR: \w+\(0x[0-9a-fA-F]+\):\s*", "", lines[0]) if lines else ""
    return f"{type(err).__name__}: {text}"[:200].rstrip()


def _check_file(path: Path, given: str, expected: str) -> None:
    """What can be told before a reader runs: an empty file, a missing gzip header, a lone DICOM file."""
    if path.stat().st_size == 0:
        raise ValueError(
            f"{given}: could not be read as a CT volume: the file is empty (0 bytes); expected {expected}."
        )
    if path.name.lower().endswith(".gz"):
        with open(path, "rb") as f:
            if f.read(2) != b"\x1f\x8b":
                raise ValueError(
                    f"{given}: could not be read as a CT volume: expected {expected}, but the file is not "
                    "gzip-compressed."
                )
    if not path.name.lower().endswith(CT_SUFFIXES) and _is_dicom(path):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception as err:
            raise ValueError(f"{given}: not a readable DICOM file ({err}).") from None
        if int(ds.get("NumberOfFrames", 1) or 1) > 1:
            _refuse_multiframe(Path(given), ds)
        raise ValueError(f"{given}: a single DICOM file; expected the folder holding the whole CT series.")


def _check_nifti_header(path: Path, given: str) -> None:
    """A NIfTI must hold one 3D volume with its voxel-to-patient affine."""
    header = nib.load(path).header
    dims = tuple(int(n) for n in header.get_data_shape())
    if len(dims) > 3 and math.prod(dims[3:]) > 1:
        raise ValueError(
            f"{given}: holds {math.prod(dims[3:])} volumes of {'x'.join(map(str, dims[:3]))} voxels (a 4D image: time "
            "points, phases or channels); expected a 3D CT volume (extract one first)."
        )
    if int(header["sform_code"]) == 0 and int(header["qform_code"]) == 0:
        # nibabel then falls back to pixdim (zeros become 1 mm) and an arbitrary orientation.
        raise ValueError(
            f"{given}: the NIfTI header has no orientation or spacing (sform_code and qform_code are 0); "
            "expected a CT with its voxel-to-patient affine."
        )


def _read_ct(source, loader: LoadImage, reader=None, reader_kwargs: Mapping | None = None):
    """``loader(source)`` with the checks of the module docstring; ``LoadImage``'s own output otherwise."""
    try:
        given = os.fspath(source)
    except TypeError:
        raise ValueError(f"expected a CT file or DICOM folder path, got {type(source).__name__}.") from None
    path, uid = split_series_source(given)
    if not path.exists():
        raise ValueError(f"{given}: no such file or folder.")
    geometry = None
    if path.is_dir():
        chosen = _choose_series(path, uid)
        geometry = _check_series_geometry(path, chosen)
        reader = ITKReader(series_name=_itk_series_name(path, chosen), **dict(reader_kwargs or {}))
        expected = "a DICOM CT series"
    elif uid is not None:
        raise ValueError(f"{given}: '#<SeriesInstanceUID>' chooses a series in a DICOM folder; {path} is a file.")
    else:
        expected = _expected_format(path)
        _check_file(path, given, expected)
    try:
        if path.name.lower().endswith((".nii", ".nii.gz")):
            _check_nifti_header(path, given)
        loaded = loader(str(path), reader)
    except ValueError as err:
        if str(err).startswith(given):  # ours
            raise
        raise ValueError(_read_error(given, expected, err)) from None
    except Exception as err:  # readers raise many types for damaged files; the message must name the file
        raise ValueError(_read_error(given, expected, err)) from None
    img = loaded[0] if isinstance(loaded, (tuple, list)) else loaded
    volumes = img.shape[0] if loader.ensure_channel_first else (img.shape[3] if img.ndim > 3 else 1)
    if img.ndim > 4 or volumes > 1:
        spatial = tuple(img.shape[1:] if loader.ensure_channel_first else img.shape[:3])
        raise ValueError(
            f"{given}: holds {volumes} volumes of {'x'.join(map(str, spatial))} voxels (a 4D image: time points, "
            "phases or channels); expected a 3D CT volume (extract one first)."
        )
    if geometry is not None:
        img = _undo_gantry_tilt(img if img.ndim == 4 else img[None], geometry, path)
        img = img if loader.ensure_channel_first else img[0]
    return img if loader.image_only else (img, img.meta)


def _read_error(given: str, expected: str, err: BaseException) -> str:
    if isinstance(err, (EOFError, zlib.error, gzip.BadGzipFile)):
        what = "its gzip stream is truncated or corrupt"
    elif expected == "a DICOM CT series":
        what = "ITK could not read it"
    else:
        what = "the file is damaged, truncated or in another format"
    return f"{given}: could not be read as a CT volume: expected {expected}, but {what} ({_reason(err)})."


class LoadCTd(LoadImaged):
    """``LoadImaged`` for CTs (same arguments, same output for a readable file): anything else ends with a
    ``ValueError`` naming the file as given and what was expected, instead of a reader's bare exception (a truncated
    ``.nii.gz`` gives zlib's "Error -3 while decompressing data" without a file name). See the module docstring for
    DICOM folders (one CT series, or ``"folder#SeriesInstanceUID"``), gantry tilt and 4D data.

    It is a ``LoadImaged``: MONAI Label's ``BundleInferTask(extend_load_image=True)`` wraps a top-level ``LoadImaged``
    of ``preprocessing`` in its ``LoadImageTensord``, which calls this transform back for a file path and builds a
    MetaTensor itself for an in-memory image. In this bundle it sits inside ``XrayInputsd``'s CT chain, which MONAI
    Label does not look into.
    """

    def __init__(self, keys: KeysCollection, *args, **kwargs) -> None:
        super().__init__(keys, *args, **kwargs)
        named = inspect.signature(LoadImaged.__init__).parameters
        self._reader_kwargs = {k: v for k, v in kwargs.items() if k not in named}  # ITKReader's, for DICOM folders

    def __call__(self, data: Mapping[Hashable, object], reader=None) -> dict[Hashable, object]:
        d = dict(data)
        for key, meta_key, meta_key_postfix in self.key_iterator(d, self.meta_keys, self.meta_key_postfix):
            loaded = _read_ct(d[key], self._loader, reader, self._reader_kwargs)
            if self._loader.image_only:
                d[key] = loaded
                continue
            d[key] = loaded[0]
            meta_key = meta_key or f"{key}_{meta_key_postfix}"
            if meta_key in d and not self.overwriting:
                raise KeyError(f"Metadata with key {meta_key} already exists and overwriting=False.")
            d[meta_key] = loaded[1]
        return d


def load_ct(path: str | os.PathLike, validator: ValidateCTd | None = None) -> MetaTensor:
    """Load one CT (file, DICOM series folder, or ``"folder#SeriesInstanceUID"``) as a validated ``(1, X, Y, Z)``
    HU MetaTensor in RAS.

    Raises:
        ValueError: naming the file, for anything unreadable, truncated, ambiguous, 4D or implausible as a CT.
    """
    img = _read_ct(path, LoadImage(image_only=True, ensure_channel_first=True))
    (validator or ValidateCTd(keys="image")).check(img)
    return Orientation(axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S")))(img)


# ---- writing -----------------------------------------------------------------------------------------------------
def write_nifti(path: Path, volume: np.ndarray, affine: np.ndarray, overwrite: bool = False) -> None:
    """Atomically write a 3D volume (RAS affine in mm) as NIfTI with sform and qform set, in its own dtype."""
    image = nib.Nifti1Image(np.asarray(volume), np.asarray(affine, dtype=np.float64))
    image.header.set_xyzt_units("mm")
    image.set_qform(image.affine, code=1)
    image.set_sform(image.affine, code=1)
    atomic_write(path, lambda p: nib.save(image, p), overwrite)
