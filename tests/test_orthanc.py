"""The PACS round trip against a real Orthanc with its DICOMweb plugin (opt-in: ``XRAY2CT_ORTHANC=1``).

    apt-get install -y orthanc orthanc-dicomweb          # Debian/Ubuntu packages
    XRAY2CT_ORTHANC=1 python -m pytest -q -s tests/test_orthanc.py

Orthanc runs on 127.0.0.1 (a free port, remote access off, no DICOM port) with a temporary configuration and storage.
A PA + lateral DX pair rendered from a held-out phantom is stored through Orthanc's own REST API (not through the code
under test), the command of configs/dicomweb.yaml runs against Orthanc's DICOMweb root with the shipped model, and the
result is read back with plain QIDO-RS / WADO-RS requests: one new CT series in the same study of the same patient,
the headers, and geometry and HU equal to the NIfTI of the same inference.
"""

from __future__ import annotations

import email.parser
import email.policy
import io
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request

import nibabel as nib
import numpy as np
import pydicom
import pytest
from conftest import ROOT
from pacs_helpers import (
    PATIENT,
    check_synthetic_ct_header,
    dicomweb_command,
    dx_study,
    orthanc_config,
    orthanc_plugin,
)
from scripts.checkpoint import read_model_config
from scripts.data import load_ct
from scripts.physics import ProjectionGeometry

pytestmark = pytest.mark.skipif(
    os.environ.get("XRAY2CT_ORTHANC") != "1" or shutil.which("Orthanc") is None or orthanc_plugin() is None,
    reason="opt-in: set XRAY2CT_ORTHANC=1 with Orthanc and its DICOMweb plugin installed (orthanc, orthanc-dicomweb)",
)


def _get(url: str, accept: str = "application/json") -> tuple[str, bytes]:
    with urllib.request.urlopen(urllib.request.Request(url, headers={"Accept": accept}), timeout=30) as answer:
        return answer.headers.get("Content-Type", ""), answer.read()


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    """``http://127.0.0.1:<port>`` of an Orthanc with the DICOMweb plugin, its storage in a temporary folder."""
    folder = tmp_path_factory.mktemp("orthanc")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = orthanc_config(folder, port, orthanc_plugin())
    (folder / "orthanc.json").write_text(json.dumps(config))
    log = open(folder / "orthanc.log", "w")  # closed in the finally below
    process = subprocess.Popen(["Orthanc", str(folder / "orthanc.json")], cwd=folder, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                _get(url + "/system")
                break
            except OSError:
                if process.poll() is not None:
                    pytest.fail(
                        f"Orthanc exited ({process.returncode}): {(folder / 'orthanc.log').read_text()[-2000:]}"
                    )
                time.sleep(0.1)
        else:
            pytest.fail("Orthanc did not answer within 30 s")
        _, plugins = _get(url + "/plugins")
        assert "dicom-web" in json.loads(plugins)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


def test_round_trip_through_orthanc(tmp_path, orthanc):
    geometry = ProjectionGeometry(**read_model_config(ROOT / "bundle" / "models" / "model.pt")["geometry"])
    files = dx_study(geometry, size=64, spacing_mm=5.0, seed=1001)
    for data in files:  # Orthanc's own REST API, so the check does not depend on our STOW-RS
        request = urllib.request.Request(orthanc + "/instances", data=data, method="POST")
        with urllib.request.urlopen(request, timeout=30) as answer:
            assert json.loads(answer.read())["Status"] == "Success"
    inputs = [pydicom.dcmread(io.BytesIO(d), stop_before_pixels=True) for d in files]
    study = str(inputs[0].StudyInstanceUID)
    dicomweb = orthanc + "/dicom-web"
    cmd = dicomweb_command()
    cmd += ["--dicomweb_url", dicomweb, "--study_uid", study, "--output_dir", str(tmp_path / "out")]
    cmd += ["--progress_bar", "false"]
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    seconds = time.perf_counter() - start
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "inference_report.json").read_text())
    print(f"\ncommand: {seconds:.1f} s wall clock; steps (s): {report['dicomweb']['seconds']}")
    series_uid = report["dicomweb"]["stored"]["series_instance_uid"]
    assert done.stdout.strip().splitlines()[-1].startswith(f"done: synthetic CT stored as series {series_uid} (64")

    # QIDO-RS: the study now has the two DX series and one new CT series; Orthanc filed it under the same patient.
    _, body = _get(f"{dicomweb}/studies/{study}/series", "application/dicom+json")
    series = {s["0020000E"]["Value"][0]: s["00080060"]["Value"][0] for s in json.loads(body)}
    assert sorted(series.values()) == ["CT", "DX", "DX"] and series[series_uid] == "CT"
    assert series_uid not in {str(i.SeriesInstanceUID) for i in inputs}
    assert len(json.loads(_get(orthanc + "/studies")[1])) == 1 and len(json.loads(_get(orthanc + "/patients")[1])) == 1
    # WADO-RS: the whole series, parsed with the standard library's MIME parser.
    kind, body = _get(f"{dicomweb}/studies/{study}/series/{series_uid}", 'multipart/related; type="application/dicom"')
    mime = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {kind}\r\n\r\n".encode() + body
    )
    slices = [part.get_payload(decode=True) for part in mime.iter_parts()]
    assert len(slices) == 64
    folder = tmp_path / "retrieved"
    folder.mkdir()
    for k, data in enumerate(slices):
        (folder / f"{k:03d}.dcm").write_bytes(data)
    headers = [pydicom.dcmread(folder / f"{k:03d}.dcm", stop_before_pixels=True) for k in range(64)]
    assert len({h.SOPInstanceUID for h in headers}) == 64
    for h in headers:
        assert h.StudyInstanceUID == study and h.SeriesInstanceUID == series_uid
        check_synthetic_ct_header(h)
        assert [float(v) for v in h.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
        assert [float(v) for v in h.PixelSpacing] == [5.0, 5.0] and float(h.SliceThickness) == 5.0
        assert (float(h.RescaleSlope), float(h.RescaleIntercept)) == (1.0, 0.0)
        assert {r.ReferencedSOPInstanceUID for r in h.SourceImageSequence} == {str(i.SOPInstanceUID) for i in inputs}
    # Geometry and HU as the NIfTI of the same inference.
    nifti = nib.load(tmp_path / "out" / "study" / "study_ct.nii.gz")
    ct = load_ct(folder)
    np.testing.assert_allclose(ct.affine.numpy(), nifti.affine, atol=1e-4)
    np.testing.assert_array_equal(ct[0].numpy(), np.asarray(nifti.dataobj))
    assert -1000 <= float(ct.min()) and float(ct.max()) <= 2000 and float(ct.std()) > 10  # a CT, not a constant


def test_orthanc_files_an_instance_with_another_patient_id_as_another_study(orthanc):
    """Why the synthetic series copies the patient ID: with another one, the same StudyInstanceUID becomes a second
    study of a second patient (Orthanc's study identifier hashes the patient ID with the study UID)."""
    geometry = ProjectionGeometry(views=("pa", "lateral"), detector_shape=(16, 16), pixel_spacing_mm=35.2)
    pa, lateral = dx_study(geometry, size=16, spacing_mm=20.0, seed=1002)
    anonymised = pydicom.dcmread(io.BytesIO(lateral))
    anonymised.PatientID = "ANON"
    buffer = io.BytesIO()
    anonymised.save_as(buffer)
    for data in (pa, buffer.getvalue()):
        with urllib.request.urlopen(urllib.request.Request(orthanc + "/instances", data=data, method="POST")) as a:
            assert json.loads(a.read())["Status"] == "Success"
    uid = str(anonymised.StudyInstanceUID)
    found = [json.loads(_get(f"{orthanc}/studies/{s}")[1]) for s in json.loads(_get(orthanc + "/studies")[1])]
    same = [s["PatientMainDicomTags"]["PatientID"] for s in found if s["MainDicomTags"]["StudyInstanceUID"] == uid]
    assert sorted(same) == ["ANON", PATIENT["PatientID"]]
