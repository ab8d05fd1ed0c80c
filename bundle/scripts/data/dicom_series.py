"""DICOM CT series: which series a folder holds, which one to read, its slice geometry, and gantry tilt.

Used by :mod:`.io` (``LoadCTd``, ``load_ct``, ``find_ct_sources``); the behaviour is described in that module's
docstring (several series in one folder, ``folder#SeriesInstanceUID``, gantry tilt, 4D series).
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
import torch
from monai.data import MetaTensor
from monai.transforms import SpatialResample
from monai.utils import optional_import

from .transforms import add_ct_warning

itk, _ = optional_import("itk")

logger = logging.getLogger(__name__)

_UID = re.compile(r"^[0-9]+(\.[0-9]+)+$")
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def _is_dicom(path: Path) -> bool:
    """True for a file with the DICOM preamble (``DICM`` at byte 128) or a ``.dcm`` ending."""
    if path.suffix.lower() == ".dcm":
        return True
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def split_series_source(source: str | os.PathLike) -> tuple[Path, str | None]:
    """``"folder#1.2.840..."`` -> ``(folder, SeriesInstanceUID)``; any other path -> ``(path, None)``."""
    text = os.fspath(source)
    head, sep, tail = text.rpartition("#")
    if sep and _UID.match(tail) and not Path(text).exists():
        return Path(head), tail
    return Path(text), None


# ---- DICOM series ------------------------------------------------------------------------------------------------


@dataclass
class _Series:
    """The image files of one SeriesInstanceUID in a folder, with their headers."""

    uid: str
    headers: list[tuple[Path, pydicom.Dataset]] = field(default_factory=list)

    def tag(self, name: str, default: str = "") -> str:
        return str(self.headers[0][1].get(name, default))

    @property
    def frames(self) -> int:
        return sum(int(ds.get("NumberOfFrames", 1) or 1) for _, ds in self.headers)

    @property
    def is_volume(self) -> bool:
        """A CT that may be a 3D volume: not a localizer, more than one slice."""
        image_type = [str(v).upper() for v in (self.headers[0][1].get("ImageType") or [])]
        return self.tag("Modality") == "CT" and "LOCALIZER" not in image_type and self.frames > 1

    def summary(self) -> str:
        try:
            thickness = f"{float(self.tag('SliceThickness')):g} mm"
        except ValueError:
            thickness = "unknown thickness"
        return (
            f"{self.uid} (series {self.tag('SeriesNumber', '?')} '{self.tag('SeriesDescription')}', "
            f"{self.tag('Modality', '?')}, {self.frames} slices of {thickness})"
        )

    def order(self) -> tuple[int, str]:
        """PACS order: by series number."""
        number = self.tag("SeriesNumber")
        return (int(number) if number.lstrip("-").isdigit() else 1 << 30, self.uid)


def _check_pixel_data(path: Path, ds: pydicom.Dataset) -> None:
    """Native (uncompressed) pixel data must be complete: a cut-off copy is named, not read as zeros."""
    raw = ds.get_item("PixelData", keep_deferred=True)
    if raw is None or getattr(raw, "length", None) in (None, 0xFFFFFFFF):  # absent or encapsulated (compressed)
        return
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    need = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1)) * int(ds.BitsAllocated) // 8 * frames
    end = raw.value_tell + raw.length if raw.value_tell is not None else raw.length
    size = path.stat().st_size
    if raw.length < need or end > size:
        have = max(0, min(raw.length, size - (raw.value_tell or 0)))
        raise ValueError(
            f"{path}: truncated DICOM file: its pixel data holds {have} of the {need} bytes of a {ds.Rows}x"
            f"{ds.Columns} image; expected a complete CT slice (copy it again from the archive)."
        )


def _scan_dicom_folder(folder: Path) -> dict[str, _Series]:
    """The image series of a folder by SeriesInstanceUID (DICOMDIR and objects without pixels are skipped)."""
    series: dict[str, _Series] = {}
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.name.upper() == "DICOMDIR" or not _is_dicom(path):
            continue
        if path.stat().st_size == 0:
            raise ValueError(f"{path}: not a readable DICOM file (the file is empty).")
        try:
            ds = pydicom.dcmread(path, defer_size=1024)
        except Exception as err:  # pydicom raises several types for damaged files
            raise ValueError(f"{path}: not a readable DICOM file ({err}).") from None
        if "Rows" not in ds:  # not an image
            continue
        _check_pixel_data(path, ds)
        uid = str(ds.get("SeriesInstanceUID", "missing"))
        series.setdefault(uid, _Series(uid)).headers.append((path, ds))
    return dict(sorted(series.items(), key=lambda item: item[1].order()))


def _choose_series(folder: Path, uid: str | None) -> _Series:
    """The one CT series of a folder, or the one named by ``uid``; several candidates are refused with a list."""
    series = _scan_dicom_folder(folder)
    if not series:
        raise ValueError(f"{folder}: holds no DICOM images; expected a folder holding one CT series.")
    listing = "; ".join(s.summary() for s in series.values())
    if uid is not None:
        if uid not in series:
            raise ValueError(f"{folder}: has no DICOM series {uid}; it holds: {listing}.")
        chosen = series[uid]
        if chosen.tag("Modality") != "CT":
            raise ValueError(f"{folder}#{uid}: DICOM modality '{chosen.tag('Modality')}' is not a CT series.")
        return chosen
    modalities = sorted({s.tag("Modality", "missing") for s in series.values()})
    if "CT" not in modalities:
        raise ValueError(f"{folder}: DICOM modality {modalities} is not supported; expected a CT series.")
    volumes = [s for s in series.values() if s.is_volume]
    if not volumes:
        raise ValueError(
            f"{folder}: holds no CT volume, only {listing}; expected a CT series of two or more slices "
            "(localizers and single images are skipped)."
        )
    if len(volumes) > 1:
        raise ValueError(
            f"{folder}: holds {len(volumes)} CT series: {'; '.join(s.summary() for s in volumes)}. Choose one as "
            f"'{folder}#<SeriesInstanceUID>', or put each series in its own folder."
        )
    skipped = [s.summary() for s in series.values() if s is not volumes[0]]
    if skipped:
        logger.info("%s: reading series %s; skipped %s", folder, volumes[0].uid, "; ".join(skipped))
    return volumes[0]


def _refuse_multiframe(path: Path, ds: pydicom.Dataset) -> None:
    """Enhanced (multi-frame) CT objects are refused, 4D ones (several temporal positions) as such."""
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    temporal = set()
    for item in ds.get("PerFrameFunctionalGroupsSequence") or []:
        for content in item.get("FrameContentSequence") or []:
            if "TemporalPositionIndex" in content:
                temporal.add(int(content.TemporalPositionIndex))
    if len(temporal) > 1:
        raise ValueError(
            f"{path}: a 4D multi-frame CT with {len(temporal)} temporal positions ({frames} frames); expected one "
            "3D CT volume (export one phase as its own series)."
        )
    raise ValueError(
        f"{path}: an enhanced multi-frame CT object ({frames} frames) is not supported; expected a CT series with "
        "one slice per file (convert it, e.g. with dcm2niix, to NIfTI)."
    )


@dataclass
class _SliceGeometry:
    """Where the slices of a series lie (LPS mm): positions sorted along the slice normal."""

    normal: np.ndarray  # (3,) unit normal of the slice planes
    positions: np.ndarray  # (N, 3) ImagePositionPatient, ascending along the normal
    pixel_spacing: tuple[float, float]
    tilt_tag: str  # GantryDetectorTilt as written, for messages


def _check_series_geometry(folder: Path, chosen: _Series) -> _SliceGeometry:
    """One CT series must be one 3D volume of parallel, evenly spaced slices with known geometry."""
    for path, ds in chosen.headers:
        if int(ds.get("NumberOfFrames", 1) or 1) > 1:
            _refuse_multiframe(path, ds)
    slices = []
    for path, ds in chosen.headers:
        missing = [t for t in ("PixelSpacing", "ImagePositionPatient", "ImageOrientationPatient") if t not in ds]
        if missing:
            raise ValueError(f"{path}: missing {', '.join(missing)}; the voxel spacing and position are unknown.")
        slices.append((path, np.array(ds.ImageOrientationPatient, float), np.array(ds.ImagePositionPatient, float)))
    temporal = {str(ds.TemporalPositionIndex) for _, ds in chosen.headers if "TemporalPositionIndex" in ds}
    if len(temporal) > 1:
        raise ValueError(
            f"{folder}: a 4D series with {len(temporal)} temporal positions (TemporalPositionIndex) in "
            f"{len(slices)} slices; expected one 3D CT volume (export one phase as its own series)."
        )
    orientation = slices[0][1]
    for path, iop, _ in slices:
        if not np.allclose(iop, orientation, atol=1e-4):
            raise ValueError(
                f"{path}: slice orientation {iop.tolist()} differs from the series' {orientation.tolist()}."
            )
    sizes = {(int(ds.Rows), int(ds.Columns)) for _, ds in chosen.headers}
    if len(sizes) > 1:
        raise ValueError(f"{folder}: slices of different sizes {sorted(sizes)}; expected one CT volume.")
    normal = np.cross(orientation[:3], orientation[3:])
    normal /= np.linalg.norm(normal)
    order = np.argsort([float(ipp @ normal) for _, _, ipp in slices], kind="stable")
    positions = np.stack([slices[i][2] for i in order])  # (N, 3)
    along = positions @ normal
    repeats = Counter(np.round(along, 2).tolist())
    if max(repeats.values()) > 1:
        counts = set(repeats.values())
        if len(counts) == 1:
            raise ValueError(
                f"{folder}: {counts.pop()} slices at each of {len(repeats)} positions (a 4D or multi-phase series, "
                "or several reconstructions under one SeriesInstanceUID); expected one 3D CT volume (export one "
                "phase as its own series)."
            )
        twice = sorted(p for p, c in repeats.items() if c > 1)
        raise ValueError(f"{folder}: {len(twice)} slice positions occur more than once (first at {twice[0]} mm).")
    gaps = np.diff(along)
    if len(gaps) and (gaps.min() <= 0 or gaps.max() - gaps.min() > 0.01 * gaps.mean() + 1e-3):
        raise ValueError(
            f"{folder}: slices are not evenly spaced (gaps {gaps.min():.3f}..{gaps.max():.3f} mm); "
            "a slice is missing or duplicated."
        )
    ds = chosen.headers[0][1]
    return _SliceGeometry(
        normal, positions, tuple(float(v) for v in ds.PixelSpacing), str(ds.get("GantryDetectorTilt", "absent"))
    )


def _itk_series_name(folder: Path, chosen: _Series) -> str:
    """ITK's identifier of the chosen series (its UID plus series details), checked to hold exactly its files."""
    names = itk.GDCMSeriesFileNames.New()  # the settings of MONAI's ITKReader
    names.SetUseSeriesDetails(True)
    names.AddSeriesRestriction("0008|0021")
    names.SetDirectory(str(folder))
    ids = [i for i in names.GetSeriesUIDs() if i.startswith(chosen.uid)]
    wanted = {p.resolve(): p for p, _ in chosen.headers}
    found = [{Path(f).resolve() for f in names.GetFileNames(ident)} for ident in ids]
    for ident, files in zip(ids, found, strict=True):
        if files == set(wanted):
            return ident
    unread = sorted(set(wanted).difference(*found))
    if len(ids) <= 1 and unread:  # GDCM skips a file it cannot parse (e.g. cut-off compressed pixel data)
        raise ValueError(
            f"{wanted[unread[0]]}: a damaged or truncated DICOM slice (ITK cannot read it); expected a complete "
            "CT slice."
        )
    raise ValueError(
        f"{folder}: ITK reads series {chosen.uid} as {len(ids)} parts (slices differ in thickness, size or date); "
        "expected one consistent CT series."
    )


def _undo_gantry_tilt(img: MetaTensor, geometry: _SliceGeometry, folder: Path) -> MetaTensor:
    """Resample a sheared (gantry-tilted) stack onto a regular grid: each slice at its true in-plane position."""
    positions, normal = geometry.positions, geometry.normal
    n = len(positions)
    step = (positions[-1] - positions[0]) / (n - 1)  # (3,) LPS mm between neighbouring slices
    along = float(step @ normal)
    drift = step - along * normal  # the in-plane shift per slice
    if np.linalg.norm(drift) * (n - 1) <= 0.25 * min(geometry.pixel_spacing):
        return img  # no tilt (or below a quarter pixel over the whole scan): ITK's grid is right
    affine = np.asarray(img.affine, dtype=np.float64)  # RAS; columns 0, 1 in-plane, column 2 along the normal
    step_ras = _LPS_TO_RAS @ step
    first = positions[0]
    if float(affine[:3, 2] @ step_ras) < 0:  # ITK stacked the slices the other way
        step_ras, first = -step_ras, positions[-1]
    if not np.allclose(affine[:3, 3], _LPS_TO_RAS @ first, atol=1e-2):
        raise ValueError(f"{folder}: ITK's first slice is not at a slice position; cannot undo the gantry tilt.")
    sheared = affine.copy()
    sheared[:3, 2] = step_ras  # the true geometry: slice k is at origin + k * step
    columns = affine[:3, :2]
    shift = (step_ras @ columns) / (columns * columns).sum(0)  # (2,) in-plane voxels per slice
    total = shift * (n - 1)
    low = np.floor(np.minimum(total, 0.0) + 1e-6)
    high = np.ceil(np.maximum(total, 0.0) - 1e-6)
    regular = affine.copy()
    regular[:3, 2] = affine[:3, 2] / np.linalg.norm(affine[:3, 2]) * abs(along)
    regular[:3, 3] = affine[:3, 3] + columns @ low
    size = [int(img.shape[1] + high[0] - low[0]), int(img.shape[2] + high[1] - low[1]), int(img.shape[3])]
    meta = {k: v for k, v in img.meta.items() if k != "affine"}
    air = -1000.0  # the padding outside the scanned slab
    shifted = MetaTensor(img.as_tensor().double() - air, affine=torch.as_tensor(sheared), meta=meta)
    out = SpatialResample(mode="bilinear", padding_mode="zeros")(
        shifted, dst_affine=torch.as_tensor(regular), spatial_size=size
    )  # (1, X', Y', Z)
    out = MetaTensor((out.as_tensor() + air).to(img.dtype), affine=torch.as_tensor(regular), meta=meta)
    angle = math.degrees(math.atan2(float(np.linalg.norm(drift)), abs(along)))
    add_ct_warning(
        out,
        f"gantry tilt {angle:.1f} degrees (GantryDetectorTilt {geometry.tilt_tag}): the sheared slices were "
        "resampled onto a regular grid",
    )
    return out


# ---- reading -----------------------------------------------------------------------------------------------------
