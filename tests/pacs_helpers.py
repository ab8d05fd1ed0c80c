"""Test helpers of the PACS round trip: a radiograph study made from a phantom's DRRs, and a small DICOMweb server.

:func:`dx_study` renders a synthetic chest phantom in the PA and lateral views and stores the line integrals as two DX
instances of one study (MONOCHROME2, attenuation bright; ViewPosition PA / LL, PatientOrientation L\\F / P\\F,
ImagerPixelSpacing and magnification of the rendering geometry), with the identifiers a real DX carries.

:class:`FakeDicomWeb` serves QIDO-RS, WADO-RS and STOW-RS on 127.0.0.1 from memory (``http.server`` in a thread).
It parses STOW-RS bodies with the standard library's MIME parser, independently of the client's own multipart code,
and records every request.
"""

from __future__ import annotations

import email.parser
import email.policy
import io
import json
import os
import sys
import threading
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pydicom
import torch
from conftest import cli_config_files
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from scripts.data import SYNTHETIC_SERIES_DESCRIPTION, synthetic_chest_ct
from scripts.physics import DRRRenderer, ProjectionGeometry, hu_to_mu

DX_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
#: The identifiers of the phantom's "patient", as a DX carries them.
PATIENT = {
    "PatientName": "Phantom^Ada",
    "PatientID": "XR2CT-0001",
    "IssuerOfPatientID": "TEST-SITE",
    "PatientBirthDate": "19700101",
    "PatientSex": "F",
    "AccessionNumber": "ACC-0001",
    "StudyID": "77",
    "StudyDate": "20250102",
    "StudyTime": "093000",
    "ReferringPhysicianName": "Referrer^Rita",
    "InstitutionName": "Test Hospital",
    "StationName": "DXROOM1",
}


def dx_study(geometry: ProjectionGeometry, size: int = 32, spacing_mm: float = 10.0, seed: int = 1001) -> list[bytes]:
    """PS3.10 bytes of a PA and a lateral DX of one study, rendered from phantom ``seed`` through ``geometry``."""
    hu, _ = synthetic_chest_ct(size, spacing_mm, seed=seed)
    mu = hu_to_mu(torch.from_numpy(np.asarray(hu, np.float32))[None, None], 0.0206)
    p = DRRRenderer(geometry)(mu, [spacing_mm] * 3)[0].numpy()  # (V, H, W) line integrals, display orientation
    study, views = generate_uid(), [str(v) for v in geometry.views]
    files = []
    for v, (view, position, orientation) in enumerate([("pa", "PA", ["L", "F"]), ("lateral", "LL", ["P", "F"])]):
        assert views[v] == view
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = DX_STORAGE, generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = DX_STORAGE, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, generate_uid()
        for key, value in PATIENT.items():
            setattr(ds, key, value)
        ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "DX", v + 1, 1
        ds.SeriesDescription, ds.BodyPartExamined = f"CHEST {position}", "CHEST"
        ds.ImageType, ds.PresentationIntentType = ["ORIGINAL", "PRIMARY"], "FOR PRESENTATION"
        ds.ViewPosition, ds.PatientOrientation = position, orientation
        ds.ImagerPixelSpacing = [float(geometry.pixel_spacing_mm[0]), float(geometry.pixel_spacing_mm[1])]
        ds.EstimatedRadiographicMagnificationFactor = float(geometry.magnification)
        pixels = np.rint(1000.0 + 6000.0 * p[v]).clip(0, 65535).astype(np.uint16)
        ds.Rows, ds.Columns = pixels.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.PixelData = pixels.tobytes()
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        files.append(buffer.getvalue())
    return files


#: Where Debian's orthanc-dicomweb puts the plugin (XRAY2CT_ORTHANC_PLUGIN overrides).
ORTHANC_PLUGINS = ("/usr/share/orthanc/plugins/libOrthancDicomWeb.so", "/usr/lib/orthanc/plugins/libOrthancDicomWeb.so")


def orthanc_plugin() -> str | None:
    """The DICOMweb plugin of an installed Orthanc, or None."""
    given = os.environ.get("XRAY2CT_ORTHANC_PLUGIN")
    return given if given else next((p for p in ORTHANC_PLUGINS if os.path.isfile(p)), None)


def orthanc_config(folder: str | os.PathLike, port: int, plugin: str) -> dict:
    """An Orthanc configuration for tests: HTTP on 127.0.0.1:``port`` only (remote access off, no DICOM port, no
    authentication), storage in ``folder``, the DICOMweb plugin at ``/dicom-web/``."""
    return {
        "Name": "xray2ct-test",
        "StorageDirectory": str(Path(folder) / "storage"),
        "IndexDirectory": str(Path(folder) / "storage"),
        "HttpPort": int(port),
        "RemoteAccessAllowed": False,  # requests from other hosts are refused
        "AuthenticationEnabled": False,
        "DicomServerEnabled": False,
        "Plugins": [plugin],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
    }


def dicomweb_command() -> list[str]:
    """The DICOMweb round trip's command line, without its arguments (the docs' command)."""
    return [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        cli_config_files("inference.yaml", "dicomweb.yaml"),
    ]


def check_synthetic_ct_header(h: Dataset) -> None:
    """What every instance of a stored synthetic series must say: a derived CT marked synthetic, filed under the
    input's patient, with no other identifier of the study copied in."""
    assert h.Modality == "CT" and list(h.ImageType) == ["DERIVED", "SECONDARY", "AXIAL"]
    assert h.SeriesDescription == SYNTHETIC_SERIES_DESCRIPTION
    assert (str(h.PatientName), h.PatientID, h.IssuerOfPatientID) == (
        PATIENT["PatientName"],
        PATIENT["PatientID"],
        PATIENT["IssuerOfPatientID"],
    )
    for keyword in ("AccessionNumber", "StudyID", "StudyDate", "PatientBirthDate", "PatientSex"):
        assert not h[keyword].value, keyword
    assert "InstitutionName" not in h and "StationName" not in h


def header(data: bytes) -> Dataset:
    return pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)


class FakeDicomWeb:
    """An in-memory DICOMweb server on 127.0.0.1 (``with FakeDicomWeb() as server: server.url``).

    Args:
        includefield: answer QIDO-RS ``includefield`` (False: only the default attributes, as some servers do).
        refuse: which instances a STOW-RS store refuses (failure reason 0xC000), by their header.
        xml: answer STOW-RS in PS3.19 XML instead of DICOM JSON.
    """

    def __init__(
        self, includefield: bool = True, refuse: Callable[[Dataset], bool] | None = None, xml: bool = False
    ) -> None:
        self.instances: dict[str, bytes] = {}
        self.requests: list[dict] = []
        self.includefield, self.refuse, self.xml = includefield, refuse or (lambda h: False), xml
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                server._record(self)
                server._get(self)

            def do_POST(self):
                server._record(self)
                server._post(self)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}/dicom-web"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def __enter__(self) -> FakeDicomWeb:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def add(self, *files: bytes) -> None:
        for data in files:
            self.instances[str(header(data).SOPInstanceUID)] = data

    def headers_of(self, study: str) -> list[Dataset]:
        return [h for h in map(header, self.instances.values()) if h.StudyInstanceUID == study]

    # ---- the server side ------------------------------------------------------------------------------------------
    def _record(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        handler.body = handler.rfile.read(length) if length else b""
        self.requests.append({"method": handler.command, "path": handler.path, "headers": dict(handler.headers)})

    @staticmethod
    def _send(handler, status: int, body: bytes, kind: str) -> None:
        handler.send_response(status)
        handler.send_header("Content-Type", kind)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    def _json(self, handler, items) -> None:
        self._send(handler, 200, json.dumps(items).encode(), "application/dicom+json")

    def _get(self, handler) -> None:
        url = urlsplit(handler.path)
        parts = url.path.removeprefix("/dicom-web/").split("/")
        query = parse_qs(url.query)
        if (len(parts) == 3 and parts[0] == "studies" and parts[2] == "series") or parts == ["series"]:
            # A study's series, or the series matching ?SeriesInstanceUID= across studies (QIDO-RS at the series level).
            wanted = query.get("SeriesInstanceUID")
            series = {}
            found = self.headers_of(parts[1]) if len(parts) == 3 else map(header, self.instances.values())
            for h in found:
                if wanted and h.SeriesInstanceUID not in wanted:
                    continue
                series[h.SeriesInstanceUID] = {
                    "0020000D": {"vr": "UI", "Value": [h.StudyInstanceUID]},
                    "0020000E": {"vr": "UI", "Value": [h.SeriesInstanceUID]},
                    "00080060": {"vr": "CS", "Value": [h.Modality]},
                }
            return self._json(handler, list(series.values()))
        if len(parts) == 5 and parts[2] == "series" and parts[4] == "instances":
            fields = ["SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"]
            fields += query.get("includefield", []) if self.includefield else []
            items = []
            for h in self.headers_of(parts[1]):
                if h.SeriesInstanceUID == parts[3]:
                    subset = Dataset()
                    for keyword in fields:
                        if keyword in h:
                            subset.add(h[keyword])
                    items.append(subset.to_json_dict())
            return self._json(handler, items)
        if len(parts) == 6 and parts[4] == "instances" and parts[5] in self.instances:
            boundary = uuid.uuid4().hex  # unquoted, with a preamble and per-part headers, as Orthanc answers
            head = b"\r\nContent-Type: application/dicom\r\nMIME-Version: 1.0\r\n\r\n"
            marker = b"--" + boundary.encode()
            body = b"preamble\r\n" + marker + head + self.instances[parts[5]] + b"\r\n" + marker + b"--\r\nepilogue"
            return self._send(handler, 200, body, f'multipart/related; type="application/dicom"; boundary={boundary}')
        self._send(handler, 404, b'{"Message": "Unknown resource"}', "application/json")

    def _post(self, handler) -> None:
        parts = handler.path.removeprefix("/dicom-web/").split("/")
        if len(parts) != 2 or parts[0] != "studies":
            return self._send(handler, 404, b"", "text/plain")
        mime = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            f"Content-Type: {handler.headers['Content-Type']}\r\n\r\n".encode() + handler.body
        )
        stored, failed = [], []
        for part in mime.iter_parts():
            assert part.get_content_type() == "application/dicom"
            data = part.get_payload(decode=True)
            h = header(data)
            sop = str(h.SOPInstanceUID)
            if self.refuse(h) or h.StudyInstanceUID != parts[1]:
                failed.append(sop)
            else:
                self.instances[sop] = data
                stored.append(sop)
        status = 200 if not failed else 202 if stored else 409
        if self.xml:
            reason = _xml_attribute("00081197", "US", '<Value number="1">49152</Value>')
            body = (
                '<?xml version="1.0" encoding="UTF-8"?><NativeDicomModel>'
                + _xml_attribute("00081199", "SQ", _xml_items(stored))
                + _xml_attribute("00081198", "SQ", _xml_items(failed, reason))
                + "</NativeDicomModel>"
            )
            return self._send(handler, status, body.encode(), "application/dicom+xml")
        answer = {
            "00081199": {"vr": "SQ", "Value": [{"00081155": {"vr": "UI", "Value": [u]}} for u in stored]},
            "00081198": {
                "vr": "SQ",
                "Value": [
                    {"00081155": {"vr": "UI", "Value": [u]}, "00081197": {"vr": "US", "Value": [0xC000]}}
                    for u in failed
                ],
            },
        }
        self._send(handler, status, json.dumps(answer).encode(), "application/dicom+json")


def _xml_attribute(tag: str, vr: str, inner: str) -> str:
    """A PS3.19 ``DicomAttribute`` element."""
    return f'<DicomAttribute tag="{tag}" vr="{vr}">{inner}</DicomAttribute>'


def _xml_items(uids, extra: str = "") -> str:
    """``Item`` elements of a STOW-RS answer's sequence, one per referenced SOP instance UID."""
    value = '<Value number="1">{}</Value>'
    return "".join(
        f'<Item number="{i + 1}">{_xml_attribute("00081155", "UI", value.format(u))}{extra}</Item>'
        for i, u in enumerate(uids)
    )
