"""The generated CT as a DICOM series: marked synthetic, new UIDs, the study link and nothing more, geometry, HU."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from scripts.data import STUDY_LINK_KEYWORDS, SYNTHETIC_SERIES_DESCRIPTION, load_ct, write_ct_dicom_series
from scripts.physics import centred_affine

SHAPE, SPACING = (6, 5, 4), (5.0, 6.0, 7.0)
DX = "1.2.840.10008.5.1.4.1.1.1.1"


def _volume():
    hu = np.arange(np.prod(SHAPE), dtype=np.float32).reshape(SHAPE) * 10.0 - 1000.0
    return hu, centred_affine(SHAPE, SPACING)


def _radiograph(**tags) -> Dataset:
    """The header of a radiograph of a patient's study, with every identifier a DX may carry."""
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = DX, generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = generate_uid(), generate_uid(), generate_uid()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName, ds.PatientID, ds.IssuerOfPatientID = "Müller^Jürgen", "PAT-0042", "HOSPITAL-A"
    ds.PatientBirthDate, ds.PatientSex, ds.PatientAge, ds.OtherPatientIDs = "19600101", "M", "064Y", "X-99"
    ds.AccessionNumber, ds.StudyID, ds.StudyDate, ds.StudyTime = "ACC123", "S77", "20250101", "101010"
    ds.ReferringPhysicianName, ds.InstitutionName, ds.StationName = "Dr^Who", "St Mary", "DXROOM1"
    ds.OperatorsName, ds.DeviceSerialNumber, ds.StudyDescription = "Tech^One", "SN-1", "CHEST 2 VIEWS"
    ds.Modality, ds.ViewPosition = "DX", "PA"
    issuer = Dataset()
    issuer.UniversalEntityID, issuer.UniversalEntityIDType = "2.16.840.1.999", "ISO"
    ds.IssuerOfPatientIDQualifiersSequence = [issuer]
    for key, value in tags.items():
        setattr(ds, key, value)
    return ds


def _as_stored(ds: Dataset, path) -> Dataset:
    """``ds`` written (Latin-1 text, as its SpecificCharacterSet says) and read back, the way a header arrives."""
    ds.save_as(path, implicit_vr=False, little_endian=True)
    assert "Müller".encode("latin-1") in path.read_bytes()
    return pydicom.dcmread(path, stop_before_pixels=True, force=True)


def test_a_series_that_joins_a_study_copies_the_link_and_nothing_else(tmp_path):
    hu, affine = _volume()
    pa = _as_stored(_radiograph(), tmp_path / "pa.dcm")
    lateral = _radiograph(ViewPosition="LL", StudyInstanceUID=pa.StudyInstanceUID)
    files = write_ct_dicom_series(tmp_path / "ct", hu, affine, study=pa, sources=[pa, lateral], series_number=901)
    slices = [pydicom.dcmread(f) for f in files]
    assert len(slices) == SHAPE[2]
    series = {s.SeriesInstanceUID for s in slices}
    sops = [s.SOPInstanceUID for s in slices]
    assert len(series) == 1 and len(set(sops)) == len(sops) == SHAPE[2]
    assert series.isdisjoint({pa.SeriesInstanceUID, lateral.SeriesInstanceUID}) and pa.SOPInstanceUID not in sops
    for ds in slices:
        # The link: study, patient ID (with its issuer) and name; the name survives the character set change.
        assert ds.StudyInstanceUID == pa.StudyInstanceUID
        assert (ds.PatientID, ds.IssuerOfPatientID, str(ds.PatientName)) == ("PAT-0042", "HOSPITAL-A", "Müller^Jürgen")
        assert ds.IssuerOfPatientIDQualifiersSequence[0].UniversalEntityID == "2.16.840.1.999"
        assert ds.SpecificCharacterSet == "ISO_IR 192"
        # Nothing else from the inputs: Type 2 attributes present and empty, the others absent.
        for keyword in ("PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID", "ReferringPhysicianName"):
            assert keyword in ds and ds[keyword].value in ("", None), keyword
        assert ds.StudyDate == "" and ds.StudyTime == ""
        for keyword in ("PatientAge", "OtherPatientIDs", "InstitutionName", "StationName", "OperatorsName"):
            assert keyword not in ds, keyword
        assert "DeviceSerialNumber" not in ds and "StudyDescription" not in ds and "ViewPosition" not in ds
        assert ds.FrameOfReferenceUID != pa.FrameOfReferenceUID
        # Marked synthetic and derived, naming its sources and the software.
        assert list(ds.ImageType) == ["DERIVED", "SECONDARY", "AXIAL"] and ds.Modality == "CT"
        assert ds.SeriesDescription == SYNTHETIC_SERIES_DESCRIPTION and len(ds.SeriesDescription) <= 64
        assert "SYNTHETIC" in ds.SeriesDescription and "NOT FOR DIAGNOSIS" in ds.SeriesDescription
        assert "not for diagnosis" in ds.ImageComments and "synthetic" in ds.DerivationDescription
        assert [(r.ReferencedSOPClassUID, r.ReferencedSOPInstanceUID) for r in ds.SourceImageSequence] == [
            (DX, pa.SOPInstanceUID),
            (DX, lateral.SOPInstanceUID),
        ]
        assert ds.Manufacturer.startswith("xray2ct") and ds.SoftwareVersions and ds.SeriesNumber == 901
        assert (
            ds.SOPClassUID == pydicom.uid.CTImageStorage
            and ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        )
    # Every element of the inputs that a slice holds is one of the link attributes (or a UID it references).
    assert "Müller".encode() in files[0].read_bytes()  # UTF-8, as ISO_IR 192 says
    copied = {e.keyword for e in pa if e.keyword in slices[0] and slices[0][e.keyword].value == e.value}
    assert copied == set(STUDY_LINK_KEYWORDS)


def test_geometry_and_rescale_give_back_the_volume_in_hu(tmp_path):
    hu, affine = _volume()
    files = write_ct_dicom_series(tmp_path / "ct", hu, affine, study=_radiograph())
    first, second = pydicom.dcmread(files[0]), pydicom.dcmread(files[1])
    assert [float(v) for v in first.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
    # First pixel = voxel (X-1, Y-1, 0) in RAS, i.e. (-x, -y, z) in LPS.
    corner = affine @ np.array([SHAPE[0] - 1, SHAPE[1] - 1, 0, 1.0])
    np.testing.assert_allclose([float(v) for v in first.ImagePositionPatient], [-corner[0], -corner[1], corner[2]])
    assert float(second.ImagePositionPatient[2]) - float(first.ImagePositionPatient[2]) == pytest.approx(SPACING[2])
    assert [float(v) for v in first.PixelSpacing] == [SPACING[1], SPACING[0]]  # (rows = y, columns = x)
    assert float(first.SliceThickness) == float(first.SpacingBetweenSlices) == SPACING[2]
    assert float(first.SliceLocation) == pytest.approx(corner[2])
    assert (float(first.RescaleSlope), float(first.RescaleIntercept), first.RescaleType) == (1.0, 0.0, "HU")
    assert first.PixelRepresentation == 1 and (first.Rows, first.Columns) == (SHAPE[1], SHAPE[0])
    assert [float(w) for w in first.WindowCenter] == [40.0, -600.0]
    ct = load_ct(tmp_path / "ct")  # through ITK, the way a CT is read anywhere in the bundle
    np.testing.assert_allclose(ct.affine.numpy(), affine, atol=1e-4)
    np.testing.assert_allclose(ct[0].numpy(), hu, atol=0.5)


def test_a_standalone_series_is_a_new_anonymous_study(tmp_path):
    hu, affine = _volume()
    a = pydicom.dcmread(write_ct_dicom_series(tmp_path / "a", hu, affine)[0])
    b = pydicom.dcmread(write_ct_dicom_series(tmp_path / "b", hu, affine)[0])
    assert (str(a.PatientName), a.PatientID) == ("Anonymous", "ANON") and "SpecificCharacterSet" not in a
    assert a.StudyInstanceUID != b.StudyInstanceUID and a.SeriesInstanceUID != b.SeriesInstanceUID
    assert a.StudyDate and list(a.ImageType)[:2] == ["DERIVED", "SECONDARY"] and "SourceImageSequence" not in a


def test_uid_prefix_and_bad_arguments(tmp_path):
    hu, affine = _volume()
    ds = pydicom.dcmread(write_ct_dicom_series(tmp_path / "p", hu, affine, uid_prefix="1.2.3.4.")[0])
    assert all(str(u).startswith("1.2.3.4.") for u in (ds.SeriesInstanceUID, ds.SOPInstanceUID, ds.StudyInstanceUID))
    with pytest.raises(ValueError, match="series_description: at most 64 characters"):
        write_ct_dicom_series(tmp_path / "d", hu, affine, "x" * 65)
    with pytest.raises(ValueError, match="has no StudyInstanceUID"):
        write_ct_dicom_series(tmp_path / "s", hu, affine, study=Dataset())
    with pytest.raises(ValueError):
        write_ct_dicom_series(tmp_path / "u", hu, affine, uid_prefix="not a uid")
    assert not any((tmp_path / n).exists() for n in "dsu")


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dicom3tools' IOD checker (apt-get install dicom3tools)")
def test_the_slices_pass_dicom3tools_iod_check(tmp_path):
    """dciodvfy checks a file against the CT Image IOD (every module, Type 1/2/1C/2C, values per VR)."""
    hu, affine = _volume()
    pa = _radiograph()
    for folder, study in (("linked", pa), ("standalone", None)):
        files = write_ct_dicom_series(tmp_path / folder, hu, affine, study=study, sources=[pa] if study else ())
        out = subprocess.run(["dciodvfy", str(files[0])], capture_output=True, text=True, timeout=60)
        lines = (out.stdout + out.stderr).splitlines()
        assert "CTImage" in lines and not [line for line in lines if line.startswith("Error")], lines
