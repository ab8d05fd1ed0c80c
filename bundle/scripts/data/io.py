"""CT files: discovery of volumes and DICOM series, validated loading, NIfTI and DICOM series writing.

Reading goes through MONAI's ``LoadImage`` (NIfTI via nibabel; NRRD, MHA/MHD and DICOM series folders via ITK),
then :class:`~.transforms.ValidateCTd` and ``Orientation(RAS)``. Written files carry no identifiers from the
inputs: NIfTI has no patient fields, and generated DICOM gets fresh UIDs and an anonymous patient.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import torch
from monai.data import MetaTensor
from monai.transforms import LoadImage, Orientation
from pydicom.dataset import FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from ..utils import atomic_write
from .transforms import ValidateCTd

__all__ = ["CT_SUFFIXES", "find_ct_sources", "load_ct", "write_ct_dicom_series", "write_nifti"]

#: File endings read as single-file CT volumes.
CT_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")


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


def _check_dicom_series(folder: Path) -> None:
    """A DICOM folder must hold one CT series of parallel, evenly spaced slices with known geometry.

    DICOMDIR files and objects without pixel data (structured reports, presentation states) are ignored; images
    of another modality make the folder fail.
    """
    modalities, series, slices = set(), set(), []
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.name.upper() == "DICOMDIR" or not _is_dicom(path):
            continue
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception as err:  # pydicom raises several types for damaged files
            raise ValueError(f"{path}: not a readable DICOM file ({err}).") from None
        if "Rows" not in ds:  # not an image
            continue
        modalities.add(str(getattr(ds, "Modality", "missing")))
        series.add(str(getattr(ds, "SeriesInstanceUID", "missing")))
        if ds.get("Modality") == "CT":
            missing = [t for t in ("PixelSpacing", "ImagePositionPatient", "ImageOrientationPatient") if t not in ds]
            if missing:
                raise ValueError(f"{path}: missing {', '.join(missing)}; the voxel spacing and position are unknown.")
            slices.append((path, np.array(ds.ImageOrientationPatient, float), np.array(ds.ImagePositionPatient, float)))
    if modalities != {"CT"}:
        raise ValueError(f"{folder}: DICOM modality {sorted(modalities)} is not supported; expected a CT series.")
    if len(series) != 1:
        raise ValueError(f"{folder}: holds {len(series)} DICOM series; put each series in its own folder.")
    orientation = slices[0][1]
    for path, iop, _ in slices:
        if not np.allclose(iop, orientation, atol=1e-4):
            raise ValueError(
                f"{path}: slice orientation {iop.tolist()} differs from the series' {orientation.tolist()}."
            )
    normal = np.cross(orientation[:3], orientation[3:])
    positions = np.sort([float(ipp @ normal) for _, _, ipp in slices])
    gaps = np.diff(positions)
    if len(gaps) and (gaps.min() <= 0 or gaps.max() - gaps.min() > 0.01 * gaps.mean() + 1e-3):
        raise ValueError(
            f"{folder}: slices are not evenly spaced (gaps {gaps.min():.3f}..{gaps.max():.3f} mm); "
            "a slice is missing or duplicated."
        )


def load_ct(path: str | os.PathLike, validator: ValidateCTd | None = None) -> MetaTensor:
    """Load one CT (file or DICOM series folder) as a validated ``(1, X, Y, Z)`` HU MetaTensor in RAS.

    Raises:
        ValueError: naming the file, for anything unreadable, truncated or implausible as a CT.
    """
    path = Path(path)
    if not path.exists():
        raise ValueError(f"{path}: no such file or folder.")
    if path.is_dir():
        _check_dicom_series(path)
    try:
        img = LoadImage(image_only=True, ensure_channel_first=True)(str(path))
    except Exception as err:  # readers raise many types for damaged files; the message must name the file
        raise ValueError(f"{path}: could not be read as a CT volume ({type(err).__name__}: {err}).") from None
    img.meta["filename_or_obj"] = str(path)
    if path.name.lower().endswith((".nii", ".nii.gz")):
        header = nib.load(path).header
        if int(header["sform_code"]) == 0 and int(header["qform_code"]) == 0:
            # nibabel then falls back to pixdim (zeros become 1 mm) and an arbitrary orientation.
            raise ValueError(
                f"{path}: the NIfTI header has no orientation or spacing (sform_code and qform_code are 0); "
                "expected a CT with its voxel-to-patient affine."
            )
    (validator or ValidateCTd(keys="image")).check(img)
    img = Orientation(axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S")))(img)
    return img


def write_nifti(path: Path, volume: np.ndarray, affine: np.ndarray, overwrite: bool = False) -> None:
    """Atomically write a 3D volume (RAS affine in mm) as NIfTI with sform and qform set, in its own dtype."""
    image = nib.Nifti1Image(np.asarray(volume), np.asarray(affine, dtype=np.float64))
    image.header.set_xyzt_units("mm")
    image.set_qform(image.affine, code=1)
    image.set_sform(image.affine, code=1)
    atomic_write(path, lambda p: nib.save(image, p), overwrite)


def write_ct_dicom_series(
    folder: str | os.PathLike,
    hu: np.ndarray | torch.Tensor,
    affine: np.ndarray,
    series_description: str = "Synthetic CT",
    overwrite: bool = False,
) -> list[Path]:
    """Write an axial-ish ``(X, Y, Z)`` RAS HU volume as a DICOM CT series (one file per z slice).

    The affine must be diagonal-direction RAS (after ``Orientation(RAS)``). Slices are stored in LPS patient
    coordinates with ImageOrientationPatient ``[1,0,0, 0,1,0]``: columns run to the patient's left, rows to
    posterior. Fresh UIDs, an anonymous patient, no fields copied from any input. Each slice is written
    atomically; the series as a whole is not (an interrupted write leaves fewer slices, which ``load_ct`` refuses
    as unevenly spaced). Existing ``*.dcm`` files in ``folder`` are refused, or removed first with ``overwrite``.
    """
    folder = Path(folder)
    volume = np.asarray(hu, dtype=np.float32)
    affine = np.asarray(affine, dtype=np.float64)
    if volume.ndim != 3:
        raise ValueError(f"hu must be a 3D (X, Y, Z) volume, got shape {volume.shape}.")
    if not np.allclose(affine[:3, :3], np.diag(np.diag(affine[:3, :3]))) or np.any(np.diag(affine)[:3] <= 0):
        raise ValueError("affine must be a RAS affine with positive diagonal spacing (apply Orientation(RAS) first).")
    existing = sorted(folder.glob("*.dcm")) if folder.is_dir() else []
    if existing and not overwrite:
        raise FileExistsError(f"{folder} already holds DICOM files; refusing to overwrite (pass overwrite=True).")
    for path in existing:  # a shorter new series must not leave old slices behind
        path.unlink()
    sx, sy, sz = np.diag(affine)[:3]
    nx, ny, nz = volume.shape
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    now = dt.datetime.now()
    written = []
    for k in range(nz):
        # Pixel (r, c) = voxel (X-1-c, Y-1-r, k): rows toward posterior, columns toward the patient's left.
        pixels = np.round(volume[::-1, ::-1, k].T).clip(-32768, 32767).astype(np.int16)
        corner = affine @ np.array([nx - 1, ny - 1, k, 1.0])  # RAS of the first transmitted pixel
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = pydicom.Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.Modality, ds.PatientName, ds.PatientID = "CT", "Anonymous", "ANON"
        ds.StudyDate = ds.SeriesDate = now.strftime("%Y%m%d")
        ds.SeriesDescription, ds.SeriesNumber, ds.InstanceNumber = series_description, 1, k + 1
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [float(-corner[0]), float(-corner[1]), float(corner[2])]
        ds.PixelSpacing = [float(sy), float(sx)]  # (between rows, between columns)
        ds.SliceThickness = float(sz)
        ds.Rows, ds.Columns = pixels.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "HU"
        ds.PixelData = pixels.tobytes()
        path = folder / f"slice_{k:04d}.dcm"
        atomic_write(path, lambda p, ds=ds: ds.save_as(p, enforce_file_format=True), overwrite)
        written.append(path)
    return written
