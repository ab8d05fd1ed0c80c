"""The PACS round trip over DICOMweb without a PACS: multipart bodies, the client against a small DICOMweb server on
127.0.0.1 (tests/pacs_helpers.py), the choice of views, and the whole command (configs/dicomweb.yaml) with a tiny
untrained model. The same command against a real Orthanc is tests/test_orthanc.py (opt-in)."""

from __future__ import annotations

import email.parser
import email.policy
import json
import socket
import subprocess

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from conftest import ROOT, TINY_CONFIG, config_files, config_parser
from monai.bundle import ConfigWorkflow
from pacs_helpers import DX_STORAGE, FakeDicomWeb, check_synthetic_ct_header, dicomweb_command, dx_study, header
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from scripts.checkpoint import save_checkpoint
from scripts.data import (
    DicomWebClient,
    DicomWebError,
    check_uid,
    load_ct,
)
from scripts.data.dicomweb import decode_multipart, encode_multipart
from scripts.engines import choose_views
from scripts.physics import ProjectionGeometry

#: The detector of TINY_CONFIG: 32² pixels of 17.6 mm.
GEOMETRY = ProjectionGeometry(views=("pa", "lateral"), detector_shape=(32, 32), pixel_spacing_mm=17.6)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """Untrained small cascade weights (8³ -> 16³ over 320 mm, 32² detector) with their model config."""
    parser = config_parser(**TINY_CONFIG)
    torch.manual_seed(0)
    network = parser.get_parsed_content("network_def")
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    save_checkpoint(path, {"model": network.state_dict()}, model_config=parser.get_parsed_content("model_config"))
    return path


@pytest.fixture(scope="module")
def study():
    return dx_study(GEOMETRY, size=32, spacing_mm=10.0)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- multipart ------------------------------------------------------------------------------------------------------


def test_multipart_bodies_round_trip_and_parse_as_servers_send_them():
    parts = [b"\x00DICM\r\n--not-a-boundary\r\n", b"second"]
    body, kind = encode_multipart(parts)
    assert kind.startswith('multipart/related; type="application/dicom"; boundary=')
    # The standard library's MIME parser reads our body the same way.
    mime = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {kind}\r\n\r\n".encode() + body
    )
    assert [p.get_payload(decode=True) for p in mime.iter_parts()] == parts
    assert [content for _, content in decode_multipart(body, kind)] == parts
    # Orthanc's style: unquoted boundary, part headers; a preamble, a part without headers, an epilogue.
    answer = b"ignored\r\n--b1\r\nContent-Type: application/dicom\r\nContent-Length: 3\r\n\r\nabc\r\n"
    answer += b"--b1\r\n\r\nxyz\r\n--b1--\r\n."
    decoded = decode_multipart(answer, "multipart/related; type=application/dicom; boundary=b1")
    assert decoded == [({"content-type": "application/dicom", "content-length": "3"}, b"abc"), ({}, b"xyz")]
    assert decode_multipart(answer, 'multipart/related; boundary="b1"') == decoded
    with pytest.raises(DicomWebError, match="no closing delimiter"):
        decode_multipart(answer[:-10], "multipart/related; boundary=b1")
    with pytest.raises(DicomWebError, match="expected a multipart answer"):
        decode_multipart(answer, "application/dicom+json")


def test_uids_and_urls_are_checked_before_any_request():
    assert check_uid("study_uid", " 1.2.840.10008.1 ") == "1.2.840.10008.1"
    for bad in ["1.2/../3", "1.2.x", "", None, "1." + "2" * 70]:
        with pytest.raises(ValueError, match="study_uid: .* is not a DICOM UID"):
            check_uid("study_uid", bad)
    with pytest.raises(ValueError, match="dicomweb_url: expected the http"):
        DicomWebClient("pacs:8042/dicom-web")
    with pytest.raises(ValueError, match="credentials in the URL"):
        DicomWebClient("http://user:secret@127.0.0.1/dicom-web")


# ---- the client -----------------------------------------------------------------------------------------------------


def test_client_queries_retrieves_and_stores(study, monkeypatch):
    pa, lateral = map(header, study)
    with FakeDicomWeb() as server:
        server.add(*study)
        client = DicomWebClient(server.url + "/")
        series = client.search_series(pa.StudyInstanceUID)
        assert sorted(s.SeriesInstanceUID for s in series) == sorted([pa.SeriesInstanceUID, lateral.SeriesInstanceUID])
        assert {s.Modality for s in series} == {"DX"}
        found = client.search_instances(pa.StudyInstanceUID, pa.SeriesInstanceUID, ["ViewPosition", "00200020"])
        assert [(i.SOPInstanceUID, i.ViewPosition) for i in found] == [(pa.SOPInstanceUID, "PA")]
        assert server.requests[-1]["path"].endswith("/instances?includefield=ViewPosition&includefield=00200020")
        data = client.retrieve_instance(pa.StudyInstanceUID, pa.SeriesInstanceUID, pa.SOPInstanceUID)
        assert data == study[0]
        assert (
            server.requests[-1]["headers"]["Accept"] == 'multipart/related; type="application/dicom"; transfer-syntax=*'
        )
        assert "Authorization" not in server.requests[-1]["headers"]
        # STOW-RS: what was stored comes back; the request is multipart/related of application/dicom.
        copy = pydicom.dcmread(pydicom.filebase.DicomBytesIO(study[1]))
        copy.SOPInstanceUID = copy.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        buffer = pydicom.filebase.DicomBytesIO()
        copy.save_as(buffer, enforce_file_format=True)
        monkeypatch.setenv("XRAY2CT_DICOMWEB_AUTH", "Bearer t0ken")
        result = client.store(pa.StudyInstanceUID, [buffer.getvalue()])
        assert result.stored == [copy.SOPInstanceUID] and result.failed == {}
        sent = server.requests[-1]
        assert sent["method"] == "POST" and sent["path"] == f"/dicom-web/studies/{pa.StudyInstanceUID}"
        assert sent["headers"]["Content-Type"].startswith('multipart/related; type="application/dicom"; boundary=')
        assert sent["headers"]["Accept"] == "application/dicom+json"
        assert sent["headers"]["Authorization"] == "Bearer t0ken"
        assert len(server.instances) == 3
        # An unknown study is an empty answer; an unknown instance names the URL and the server's status.
        assert client.search_series(generate_uid()) == []
        missing = generate_uid()
        with pytest.raises(DicomWebError) as err:
            client.retrieve_instance(pa.StudyInstanceUID, pa.SeriesInstanceUID, missing)
        assert str(err.value).startswith(f"WADO-RS GET {server.url}/studies/{pa.StudyInstanceUID}/series/")
        assert f"instances/{missing}: the server answered 404 Not Found" in str(err.value)
    port = _closed_port()
    with pytest.raises(
        DicomWebError, match=rf"QIDO-RS GET http://127.0.0.1:{port}/dicom-web/studies/1.2/series: could"
    ):
        DicomWebClient(f"http://127.0.0.1:{port}/dicom-web").search_series("1.2")


@pytest.mark.parametrize("xml", [False, True])
def test_store_failures_are_read_from_json_and_xml_answers(study, xml):
    pa, lateral = map(header, study)
    with FakeDicomWeb(refuse=lambda h: h.SOPInstanceUID == lateral.SOPInstanceUID, xml=xml) as server:
        client = DicomWebClient(server.url)
        result = client.store(pa.StudyInstanceUID, study)  # one stored, one failed: 202
        assert result.stored == [pa.SOPInstanceUID]
        assert result.failed == {lateral.SOPInstanceUID: "failure reason 0xc000"}
        other = client.store(generate_uid(), study[:1])  # another study's instance: refused, 409 with the failures
        assert other.stored == [] and list(other.failed) == [pa.SOPInstanceUID]


# ---- the choice of views --------------------------------------------------------------------------------------------


def _instance(**tags) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID, ds.SeriesInstanceUID = DX_STORAGE, generate_uid(), generate_uid()
    for key, value in tags.items():
        setattr(ds, key, value)
    return ds


def test_views_are_chosen_by_view_position_then_orientation_and_never_guessed():
    views = ("pa", "lateral")
    pa, lat = _instance(ViewPosition="PA"), _instance(PatientOrientation=["P", "F"])
    chosen, notes = choose_views([lat, pa], views)
    assert chosen == {"pa": pa, "lateral": lat} and notes == []
    # Other body parts and unknown views are skipped with a note; FOR PROCESSING gives way to FOR PRESENTATION.
    abdomen, unknown = _instance(ViewPosition="AP", BodyPartExamined="ABDOMEN"), _instance()
    raw = _instance(ViewPosition="PA", PresentationIntentType="FOR PROCESSING")
    shown = _instance(ViewPosition="PA", PresentationIntentType="FOR PRESENTATION")
    chosen, notes = choose_views([abdomen, unknown, raw, shown, lat], views)
    assert chosen == {"pa": shown, "lateral": lat}
    assert notes == [
        f"skipped {abdomen.SOPInstanceUID} (ViewPosition 'AP'): BodyPartExamined 'ABDOMEN' is not the chest",
        f"skipped {unknown.SOPInstanceUID} (no view stated): neither ViewPosition nor PatientOrientation says PA or "
        "lateral",
        f"skipped {raw.SOPInstanceUID} (ViewPosition 'PA'): FOR PROCESSING beside a FOR PRESENTATION image",
    ]
    # Two frontal films (a repeat, or PA and AP) are refused with a list; a SOPInstanceUID chooses.
    ap = _instance(ViewPosition="AP")
    with pytest.raises(ValueError) as err:
        choose_views([pa, ap, lat], views)
    assert str(err.value) == (
        f"the study holds 2 pa radiographs ({pa.SOPInstanceUID} (ViewPosition 'PA'), {ap.SOPInstanceUID} "
        "(ViewPosition 'AP')); choose one with --pa_instance <SOPInstanceUID>."
    )
    chosen, notes = choose_views([pa, ap, lat], views, {"pa": str(ap.SOPInstanceUID), "lateral": None})
    assert chosen == {"pa": ap, "lateral": lat}
    assert notes == [f"skipped {pa.SOPInstanceUID} (ViewPosition 'PA'): the pa view was chosen by pa_instance"]
    with pytest.raises(ValueError, match=r"lateral_instance: 1\.2\.3 is not one of the study's 3 radiograph"):
        choose_views([pa, ap, lat], views, {"lateral": "1.2.3"})
    # One view alone works, with a note; none is an error.
    assert choose_views([lat], views) == (
        {"lateral": lat},
        ["no pa radiograph: the CT is generated from the other view alone"],
    )
    with pytest.raises(ValueError, match="no PA/AP or lateral chest radiograph among the study's 1 radiograph"):
        choose_views([unknown], views)


# ---- the whole command ----------------------------------------------------------------------------------------------


def _round_trip(tmp_path, checkpoint, server, study_uid, **overrides):
    settings = {
        "ckpt_path": str(checkpoint),
        "dicomweb_url": server.url,
        "study_uid": study_uid,
        "output_dir": str(tmp_path / "out"),
        "num_inference_steps": 2,
        "progress_bar": False,
        **overrides,
    }
    workflow = ConfigWorkflow(
        config_file=config_files("inference.yaml", "dicomweb.yaml"), workflow_type=None, **settings
    )
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    return json.loads((tmp_path / "out" / "inference_report.json").read_text())


def test_round_trip_stores_one_synthetic_series_in_the_study(tmp_path, checkpoint, study):
    pa, lateral = map(header, study)
    with FakeDicomWeb() as server:
        server.add(*study)
        report = _round_trip(tmp_path, checkpoint, server, str(pa.StudyInstanceUID))
        stored = {
            uid: header(d)
            for uid, d in server.instances.items()
            if uid not in (pa.SOPInstanceUID, lateral.SOPInstanceUID)
        }
        requests = [(r["method"], r["path"].split("?")[0].split("/")[-1]) for r in server.requests]
    # QIDO-RS series, instances of both DX series, WADO-RS both, STOW-RS the 16 slices in 32-instance requests.
    assert [m for m, _ in requests] == ["GET"] * 5 + ["POST"]
    assert requests[0][1] == "series" and requests[-1][1] == pa.StudyInstanceUID
    record = report["dicomweb"]
    assert record["inputs"] == {
        "pa": {
            "series_instance_uid": pa.SeriesInstanceUID,
            "sop_instance_uid": pa.SOPInstanceUID,
            "view_position": "PA",
        },
        "lateral": {
            "series_instance_uid": lateral.SeriesInstanceUID,
            "sop_instance_uid": lateral.SOPInstanceUID,
            "view_position": "LL",
        },
    }
    assert record["notes"] == [] and set(record["seconds"]) == {"query", "retrieve", "inference", "store", "total"}
    assert report["failed"] == [] and report["done"][0]["views"] == ["pa", "lateral"]
    # One new series of 16 slices in the same study, new UIDs, the link and nothing else.
    assert len(stored) == 16 and {h.StudyInstanceUID for h in stored.values()} == {pa.StudyInstanceUID}
    (series,) = {h.SeriesInstanceUID for h in stored.values()}
    assert series not in (pa.SeriesInstanceUID, lateral.SeriesInstanceUID) and record["stored"] == {
        "series_instance_uid": series,
        "instances": 16,
        "requests": 1,
    }
    for h in stored.values():
        check_synthetic_ct_header(h)
        assert [r.ReferencedSOPInstanceUID for r in h.SourceImageSequence] == [
            pa.SOPInstanceUID,
            lateral.SOPInstanceUID,
        ]
    # Geometry and HU of the stored series are those of the NIfTI written by the same inference.
    folder = tmp_path / "stored"
    folder.mkdir()
    for uid, data in server.instances.items():
        if uid in stored:
            (folder / f"{uid}.dcm").write_bytes(data)
    nifti = nib.load(tmp_path / "out" / "study" / "study_ct.nii.gz")
    ct = load_ct(folder)
    np.testing.assert_allclose(ct.affine.numpy(), nifti.affine, atol=1e-4)
    np.testing.assert_array_equal(ct[0].numpy(), np.asarray(nifti.dataobj))
    # The retrieved radiographs did not stay on disk; the local series is the one stored.
    files = sorted((tmp_path / "out").rglob("*.dcm"))
    assert len(files) == 16 and all(header(f.read_bytes()).SeriesInstanceUID == series for f in files)


def test_a_server_without_includefield_and_a_dry_run(tmp_path, checkpoint, study):
    pa = header(study[0])
    with FakeDicomWeb(includefield=False) as server:
        server.add(*study)
        report = _round_trip(tmp_path, checkpoint, server, str(pa.StudyInstanceUID), store=False)
        methods = [r["method"] for r in server.requests]
    assert report["dicomweb"]["stored"] is None and report["dicomweb"]["inputs"]["pa"]["view_position"] == "PA"
    assert "POST" not in methods and methods.count("GET") == 5  # views judged on their headers, each retrieved once
    assert len(list((tmp_path / "out" / "study" / "study_dicom").glob("*.dcm"))) == 16


def test_an_incomplete_store_fails_naming_the_series(tmp_path, checkpoint, study):
    pa = header(study[0])
    with FakeDicomWeb(refuse=lambda h: h.Modality == "CT" and h.InstanceNumber in (3, 4)) as server:
        server.add(*study)
        with pytest.raises(RuntimeError) as err:
            _round_trip(tmp_path, checkpoint, server, str(pa.StudyInstanceUID), instances_per_request=5)
    message = str(err.value.__cause__)
    assert message.startswith(
        f"STOW-RS {server.url}/studies/{pa.StudyInstanceUID}: 2 of 16 instances were not stored ("
    )
    assert "failure reason 0xc000" in message and message.endswith("is incomplete and should be deleted there.")
    report = json.loads((tmp_path / "out" / "inference_report.json").read_text())
    assert report["done"] == [] and report["failed"][0]["error"].startswith("DicomWebError: STOW-RS")


def test_an_unreachable_pacs_ends_the_command_with_one_line_and_writes_nothing(tmp_path):
    port = _closed_port()
    uid = generate_uid()
    cmd = dicomweb_command()
    cmd += [
        "--dicomweb_url",
        f"http://127.0.0.1:{port}/dicom-web",
        "--study_uid",
        uid,
        "--output_dir",
        str(tmp_path / "o"),
    ]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(
        f"error: QIDO-RS GET http://127.0.0.1:{port}/dicom-web/studies/{uid}/series: could not reach"
    )
    assert not (tmp_path / "o").exists()
