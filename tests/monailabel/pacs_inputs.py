"""Inputs of the MONAI Label check over a PACS (run.sh --orthanc), made with the bundle's own environment:

* ``FOLDER/orthanc.json``: an Orthanc configuration (tests/pacs_helpers.py: 127.0.0.1:PORT only, the DICOMweb plugin
  at ``/dicom-web/``, storage in ``FOLDER/storage``);
* ``FOLDER/pa.dcm``, ``FOLDER/lateral.dcm``: a PA and a lateral DX of one study (two series), rendered from a held-out
  phantom with the geometry of the bundle's weights (``BUNDLE/models/model.pt``), with a patient's identifiers;
* ``FOLDER/pacs_inputs.json``: the study, series and SOP instance UIDs and the patient, for the check.

Usage: python tests/monailabel/pacs_inputs.py BUNDLE FOLDER PORT
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def main(bundle: Path, folder: Path, port: int) -> dict:
    sys.path[:0] = [str(bundle), str(TESTS)]  # the bundle copy's `scripts`; tests/ for pacs_helpers
    import pydicom
    from pacs_helpers import PATIENT, dx_study, orthanc_config, orthanc_plugin
    from scripts.checkpoint import read_model_config
    from scripts.physics import ProjectionGeometry

    plugin = orthanc_plugin()
    if plugin is None:
        raise SystemExit("no Orthanc DICOMweb plugin: apt-get install orthanc orthanc-dicomweb")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "orthanc.json").write_text(json.dumps(orthanc_config(folder, port, plugin), indent=2))
    geometry = ProjectionGeometry(**read_model_config(bundle / "models" / "model.pt")["geometry"])
    report: dict = {"patient": {k: PATIENT[k] for k in ("PatientID", "PatientName", "IssuerOfPatientID")}}
    for view, data in zip(("pa", "lateral"), dx_study(geometry, size=64, spacing_mm=5.0, seed=1005), strict=True):
        (folder / f"{view}.dcm").write_bytes(data)
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
        report["study_instance_uid"] = str(ds.StudyInstanceUID)
        report[view] = {"series_instance_uid": str(ds.SeriesInstanceUID), "sop_instance_uid": str(ds.SOPInstanceUID)}
    (folder / "pacs_inputs.json").write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    print(json.dumps(main(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])), indent=2))
