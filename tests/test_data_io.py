"""CT ingestion: formats, real DICOM, validation errors naming the file, the prepare workflow."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from monai.bundle import ConfigWorkflow
from monai.data import ITKWriter
from pydicom.data import get_testdata_file
from scripts.data import (
    PHANTOM_LABELS,
    find_ct_sources,
    load_ct,
    prepare_dataset,
    synthetic_chest_ct,
    write_ct_dicom_series,
    write_nifti,
)
from scripts.physics import centred_affine

CONFIGS = Path(__file__).resolve().parents[1] / "bundle" / "configs"
SHAPE, SPACING = (24, 20, 16), (12.0, 14.0, 18.0)


@pytest.fixture(scope="module")
def phantom():
    hu, _ = synthetic_chest_ct(SHAPE, SPACING, seed=5)
    return np.round(hu).astype(np.int16), centred_affine(SHAPE, SPACING)


def _assert_same_ct(img, hu, affine):
    assert tuple(img.shape) == (1, *hu.shape)
    np.testing.assert_allclose(img.affine.numpy(), affine, atol=1e-4)
    np.testing.assert_allclose(img[0].numpy(), hu, atol=0.5)


def test_nifti_round_trip(tmp_path, phantom):
    hu, affine = phantom
    write_nifti(tmp_path / "ct.nii.gz", hu, affine)
    _assert_same_ct(load_ct(tmp_path / "ct.nii.gz"), hu, affine)


@pytest.mark.parametrize("ext", [".nrrd", ".mha"])
def test_itk_formats_round_trip(tmp_path, phantom, ext):
    hu, affine = phantom
    writer = ITKWriter(output_dtype=np.int16)
    writer.set_data_array(hu, channel_dim=None)
    writer.set_metadata({"affine": affine, "original_affine": affine}, resample=False)
    writer.write(str(tmp_path / f"ct{ext}"))
    _assert_same_ct(load_ct(tmp_path / f"ct{ext}"), hu, affine)


def test_dicom_series_round_trip_is_anonymous(tmp_path, phantom):
    hu, affine = phantom
    files = write_ct_dicom_series(tmp_path / "series", hu, affine)
    assert len(files) == SHAPE[2]
    ds = pydicom.dcmread(files[0])
    assert ds.Modality == "CT" and str(ds.PatientName) == "Anonymous" and ds.PatientID == "ANON"
    _assert_same_ct(load_ct(tmp_path / "series"), hu, affine)
    assert find_ct_sources(tmp_path) == [tmp_path / "series"]


def test_pydicom_real_ct_slices_read_in_hu(tmp_path):
    # pydicom's CT_small.dcm (a real CT slice) made into a two-slice series 2.5 mm apart.
    src = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    series = tmp_path / "ct_small"
    series.mkdir()
    for k in range(2):
        ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
        ds.SOPInstanceUID = pydicom.uid.generate_uid()
        ds.ImagePositionPatient = [float(v) for v in src.ImagePositionPatient[:2]] + [
            float(src.ImagePositionPatient[2]) + 2.5 * k
        ]
        ds.InstanceNumber = k + 1
        ds.save_as(series / f"{k}.dcm")
    img = load_ct(series)
    expected = src.pixel_array * float(src.RescaleSlope) + float(src.RescaleIntercept)  # (rows, columns)
    assert tuple(img.shape) == (1, src.Columns, src.Rows, 2)
    # RAS: x runs to the patient's right (DICOM columns run to the left), y anterior (DICOM rows run posterior).
    np.testing.assert_allclose(img[0, :, :, 0].numpy(), expected[::-1, ::-1].T, atol=0.5)
    np.testing.assert_allclose(np.linalg.norm(img.affine.numpy()[:3, :3], axis=0), [*src.PixelSpacing, 2.5], rtol=1e-4)


def _nifti(path, data, affine=None):
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), path)
    return path


def _nifti_without_spacing(path):
    """A NIfTI whose header carries no orientation and zero voxel sizes."""
    image = nib.Nifti1Image(np.zeros((8, 8, 8), np.int16), None)
    image.header.set_sform(None, code=0)
    image.header.set_qform(None, code=0)
    image.header["pixdim"][1:4] = 0.0
    nib.save(image, path)
    return path


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: d / "missing.nii.gz", "no such file or folder"),
        (
            lambda d: (d / "corrupt.nii.gz").write_bytes(b"\x00not a nifti" * 50) and d / "corrupt.nii.gz",
            "could not be read",
        ),
        (lambda d: _nifti(d / "flat.nii.gz", np.zeros((16, 16), np.int16)), "expected a 3D CT volume"),
        (lambda d: _nifti(d / "4d.nii.gz", np.zeros((8, 8, 8, 3), np.int16)), "expected a 3D CT volume"),
        (lambda d: _nifti(d / "nan.nii.gz", np.full((8, 8, 8), np.nan, np.float32)), "voxels are NaN or Inf"),
        (lambda d: _nifti_without_spacing(d / "nospacing.nii.gz"), "has no orientation or spacing"),
        (
            lambda d: _nifti(d / "absurd.nii.gz", np.zeros((8, 8, 8), np.int16), np.diag([80.0, 1.0, 1.0, 1.0])),
            r"outside \[0.05, 20.0\] mm",
        ),
        (
            lambda d: _nifti(d / "counts.nii.gz", np.full((8, 8, 8), 60000.0, np.float32)),
            "not in Hounsfield|plausible CT",
        ),
    ],
)
def test_bad_ct_files_are_named(tmp_path, make, message):
    path = make(tmp_path)
    with pytest.raises(ValueError, match=message) as info:
        load_ct(path)
    assert str(path) in str(info.value)


def test_truncated_file_is_named(tmp_path, phantom):
    hu, affine = phantom
    write_nifti(tmp_path / "ct.nii", hu, affine)
    data = (tmp_path / "ct.nii").read_bytes()
    (tmp_path / "cut.nii").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="cut.nii: could not be read"):
        load_ct(tmp_path / "cut.nii")


def test_dicom_without_spacing_is_named(tmp_path, phantom):
    hu, affine = phantom
    files = write_ct_dicom_series(tmp_path / "series", hu, affine)
    ds = pydicom.dcmread(files[3])
    del ds.PixelSpacing
    ds.save_as(files[3])
    with pytest.raises(ValueError, match="slice_0003.dcm: missing PixelSpacing"):
        load_ct(tmp_path / "series")


def test_non_ct_dicom_series_is_refused(tmp_path):
    folder = tmp_path / "mr"
    folder.mkdir()
    shutil.copy(get_testdata_file("MR_small.dcm"), folder / "a.dcm")
    with pytest.raises(ValueError, match=r"mr: DICOM modality \['MR'\] is not supported; expected a CT series"):
        load_ct(folder)


def test_empty_source_folder(tmp_path):
    with pytest.raises(ValueError, match="no CT volumes found"):
        prepare_dataset(tmp_path / "out", source_dir=tmp_path)


def test_prepare_synthetic_through_the_bundle_runner(tmp_path):
    wf = ConfigWorkflow(
        config_file=str(CONFIGS / "prepare.yaml"),
        workflow_type=None,
        dataset_dir=str(tmp_path),
        synthetic_count=3,
        synthetic_size=24,
        synthetic_spacing_mm=13.0,
    )
    wf.initialize()
    wf.run()
    datalist = json.loads((tmp_path / "datalist.json").read_text())
    assert [len(datalist[k]) for k in ("training", "validation", "test")] == [1, 1, 1]
    names = sorted(e["image"] for k in datalist for e in datalist[k])
    assert names == [f"volumes/phantom_{i:04d}.nii.gz" for i in range(3)]
    ct = nib.load(tmp_path / names[0])
    assert ct.shape == (24, 24, 24) and ct.get_data_dtype() == np.int16
    np.testing.assert_allclose(ct.header.get_zooms(), (13.0, 13.0, 13.0))
    # The label table beside the data set, each label map beside its CT with the phantom's own record.
    table = json.loads((tmp_path / "labels.json").read_text())
    assert table["labels"] == {str(i): n for n, i in PHANTOM_LABELS.items()} and "pleural_effusion" in table["findings"]
    entry = datalist["training"][0]
    labels = nib.load(tmp_path / entry["label"])
    assert labels.get_data_dtype() == np.uint8 and np.array_equal(
        labels.affine, nib.load(tmp_path / entry["image"]).affine
    )
    record = json.loads((tmp_path / entry["label"].replace(".nii.gz", ".json")).read_text())
    assert record["synthetic"] is True and record["patient"]["sex"] in ("female", "male") and record["volumes_ml"]
    # Never silently over an existing data set.
    before = (tmp_path / "datalist.json").read_text()
    with pytest.raises(FileExistsError, match="datalist.json exists; refusing to overwrite a prepared data set"):
        prepare_dataset(tmp_path, synthetic_count=2, synthetic_size=24, synthetic_spacing_mm=13.0)
    assert (tmp_path / "datalist.json").read_text() == before


def test_prepare_source_folder_lists_failures_and_keeps_going(tmp_path, phantom):
    hu, affine = phantom
    src = tmp_path / "src"
    write_nifti(src / "patient_smith.nii.gz", hu, affine)
    write_ct_dicom_series(src / "series", hu, affine)
    (src / "broken.nii.gz").write_bytes(b"garbage" * 10)
    datalist = prepare_dataset(tmp_path / "out", source_dir=src, split=(1.0, 0.0, 0.0))
    assert len(datalist["training"]) == 2 and datalist["validation"] == [] and datalist["test"] == []
    text = (tmp_path / "out" / "datalist.json").read_text()
    assert "smith" not in text  # source names may identify patients: not recorded unless asked
    report_text = (tmp_path / "out" / "prepare_report.json").read_text()
    report = json.loads(report_text)
    # The failure is reported by position in the sorted discovery order, not by file name.
    assert report["failures"] == [
        {"source": "<source #0 of 3 under source_dir>", "error": report["failures"][0]["error"]}
    ]
    assert "could not be read as a CT volume" in report_text and "broken" not in report_text
    for entry in datalist["training"]:
        _assert_same_ct(load_ct(tmp_path / "out" / entry["image"]), hu, affine)
    # Asked for, the sources are recorded; an overwrite removes the cases of the previous run.
    datalist = prepare_dataset(
        tmp_path / "out", source_dir=src, split=(1.0, 0.0, 0.0), overwrite=True, record_sources=True
    )
    assert sorted(e["source"] for e in datalist["training"]) == [str(src / "patient_smith.nii.gz"), str(src / "series")]
    assert "broken.nii.gz" in (tmp_path / "out" / "prepare_report.json").read_text()
    prepare_dataset(tmp_path / "out", synthetic_count=1, synthetic_size=16, synthetic_spacing_mm=20.0, overwrite=True)
    assert sorted(p.name for p in (tmp_path / "out" / "volumes").iterdir()) == ["phantom_0000.nii.gz"]
    umask = os.umask(0)
    os.umask(umask)
    mode = (tmp_path / "out" / "volumes" / "phantom_0000.nii.gz").stat().st_mode & 0o777
    assert mode == 0o666 & ~umask  # an ordinary new file's permissions, not mkstemp's 0600


def test_bad_arguments_fail_before_anything_is_written(tmp_path):
    with pytest.raises(ValueError, match="split must be three non-negative fractions"):
        prepare_dataset(tmp_path / "a", synthetic_count=2, synthetic_size=16, split=(1.0, -1.0, 0.0))
    with pytest.raises(ValueError, match="synthetic_count must be a positive number"):
        prepare_dataset(tmp_path / "b", synthetic_count=0)
    with pytest.raises(ValueError, match="spacing_mm must be a positive number"):
        prepare_dataset(tmp_path / "c", synthetic_count=1, synthetic_spacing_mm=-2.0)
    assert not any(tmp_path.iterdir())


def test_uneven_or_gapped_dicom_series_is_refused(tmp_path, phantom):
    hu, affine = phantom
    files = write_ct_dicom_series(tmp_path / "series", hu, affine)
    files[5].unlink()  # a missing slice
    with pytest.raises(ValueError, match="series: slices are not evenly spaced"):
        load_ct(tmp_path / "series")
    # Rewriting the series (overwrite) removes all old slices first.
    write_ct_dicom_series(tmp_path / "series", hu[:, :, :8], affine, overwrite=True)
    assert load_ct(tmp_path / "series").shape == (1, 24, 20, 8)
    with pytest.raises(FileExistsError, match="already holds DICOM files"):
        write_ct_dicom_series(tmp_path / "series", hu, affine)


def test_split_is_reproducible():
    from scripts.data import split_cases

    a = split_cases(20, (0.8, 0.1, 0.1), seed=3)
    assert a == split_cases(20, (0.8, 0.1, 0.1), seed=3)
    assert [len(x) for x in a] == [16, 2, 2] and sorted(sum(a, [])) == list(range(20))
    assert a != split_cases(20, (0.8, 0.1, 0.1), seed=4)
    sizes = {
        n: [len(x) for x in split_cases(n, f, 0)]
        for n, f in [(1, (0.8, 0.1, 0.1)), (2, (1, 1, 1)), (3, (0.8, 0.1, 0.1)), (4, (0.2, 0.4, 0.4)), (10, (1, 0, 0))]
    }
    assert sizes == {1: [1, 0, 0], 2: [1, 1, 0], 3: [1, 1, 1], 4: [1, 2, 1], 10: [10, 0, 0]}
    for bad in [(0.5, -0.1, 0.6), (0.0, 0.5, 0.5), (1.0, 0.0)]:
        with pytest.raises(ValueError, match="split must be three non-negative fractions"):
            split_cases(5, bad, seed=0)
