"""Checks of ``monailabel start_server --app monailabel_app --studies <Orthanc>/dicom-web`` over HTTP (run.sh --orthanc,
in the MONAI Label environment), with a PA + lateral DX pair of one study stored in Orthanc (pacs_inputs.py).

1. The datastore is MONAI Label's DICOMweb datastore and lists the study's two DX series as its images.
2. MONAI Label's Python client runs the CT model on the **PA series** (its image id); the result JSON names both
   series as the inputs used (the lateral found in the study) and the stored synthetic CT series.
3. QIDO-RS: the study now holds that new CT series beside the two DX series, under the same patient; WADO-RS: its
   instances have new Series/SOP UIDs, the study's UID and patient, ``DERIVED\\SECONDARY``, the synthetic series
   description, both inputs in ``SourceImageSequence``; rebuilt from ImagePositionPatient / ImageOrientationPatient /
   PixelSpacing / SliceThickness and RescaleSlope / RescaleIntercept, the series has the geometry (affine, mm) and
   the HU values of the NIfTI file the server returned (int16 HU both: equal to 0 HU, geometry to 1e-3 mm).
4. The tissue model on the **lateral series** (as 3D Slicer's segmentation path would run it): the tissue label map
   comes back (labels 0..4 on the CT grid), and another synthetic CT series joins the study (no DICOM SEG is written).
5. A request whose image id is no series is refused with HTTP 400 naming ``image``, and nothing is stored.

Usage: python orthanc_check.py MONAILABEL_URL DICOMWEB_ROOT PACS_INPUTS_JSON [--steps N] [--out report.json]
"""

from __future__ import annotations

import argparse
import email.parser
import email.policy
import io
import json
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import requests
from monailabel.client import MONAILabelClient
from monailabel.client.client import MONAILabelClientException

SYNTHETIC_DESCRIPTION = "SYNTHETIC CT from radiographs (xray2ct) - NOT FOR DIAGNOSIS"


def qido_series(dicomweb: str, study: str) -> dict[str, str]:
    """QIDO-RS: ``{SeriesInstanceUID: Modality}`` of a study."""
    accept = {"Accept": "application/dicom+json"}
    answer = requests.get(f"{dicomweb}/studies/{study}/series", headers=accept, timeout=60)
    answer.raise_for_status()
    return {s["0020000E"]["Value"][0]: s["00080060"]["Value"][0] for s in answer.json()}


def wado_series(dicomweb: str, study: str, series: str) -> list[pydicom.Dataset]:
    """WADO-RS: every instance of a series, read from the multipart answer with the standard library's MIME parser."""
    answer = requests.get(
        f"{dicomweb}/studies/{study}/series/{series}",
        headers={"Accept": 'multipart/related; type="application/dicom"'},
        timeout=120,
    )
    answer.raise_for_status()
    mime = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {answer.headers['Content-Type']}\r\n\r\n".encode() + answer.content
    )
    return [pydicom.dcmread(io.BytesIO(part.get_payload(decode=True))) for part in mime.iter_parts()]


def series_volume(instances: list[pydicom.Dataset]) -> tuple[np.ndarray, np.ndarray]:
    """``(HU (X, Y, Z), affine)`` of an axial series in RAS, from its own geometry attributes (not the writer's code):
    slices ordered along the slice normal, pixel (row j, column i) of slice k at IPP_k + i·Δc·row direction +
    j·Δr·column direction (LPS), then reordered to R, A, S axes."""
    iop = np.asarray(instances[0].ImageOrientationPatient, dtype=np.float64)
    row, col = iop[:3], iop[3:]
    normal = np.cross(row, col)
    ordered = sorted(instances, key=lambda ds: float(np.dot(normal, np.asarray(ds.ImagePositionPatient, float))))
    dr, dc = (float(v) for v in ordered[0].PixelSpacing)  # between rows, between columns
    thickness = float(ordered[0].SliceThickness)
    lps = np.stack([np.asarray(ds.ImagePositionPatient, float) for ds in ordered])
    steps = np.diff(lps, axis=0) @ normal
    assert np.allclose(steps, thickness, atol=1e-3), f"slice steps {steps[:4]} != SliceThickness {thickness}"
    hu = np.stack(
        [ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept) for ds in ordered]
    )  # (Z, rows, columns)
    affine_lps = np.eye(4)
    affine_lps[:3, 0], affine_lps[:3, 1], affine_lps[:3, 2] = row * dc, col * dr, normal * thickness
    affine_lps[:3, 3] = lps[0]
    volume = hu.transpose(2, 1, 0)  # (columns, rows, Z): voxel (i, j, k) = column i, row j, slice k
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine_lps  # LPS -> RAS world coordinates
    # The same voxels with their axes ordered and flipped to R, A, S (nibabel's orientation tools), as the NIfTI.
    transform = nib.orientations.ornt_transform(
        nib.orientations.io_orientation(affine), nib.orientations.axcodes2ornt(("R", "A", "S"))
    )
    ras_affine = affine @ nib.orientations.inv_ornt_aff(transform, volume.shape)
    return nib.orientations.apply_orientation(volume, transform), ras_affine


def check_stored(dicomweb: str, inputs: dict, series: str, returned: Path) -> dict:
    """3. The stored series against the file the server returned (see the module docstring)."""
    study = inputs["study_instance_uid"]
    instances = wado_series(dicomweb, study, series)
    sources = {inputs[v]["sop_instance_uid"] for v in ("pa", "lateral")}
    input_series = {inputs[v]["series_instance_uid"] for v in ("pa", "lateral")}
    assert series not in input_series
    assert len({ds.SOPInstanceUID for ds in instances}) == len(instances)
    for ds in instances:
        assert ds.StudyInstanceUID == study and ds.SeriesInstanceUID == series and ds.Modality == "CT"
        assert list(ds.ImageType)[:2] == ["DERIVED", "SECONDARY"] and ds.SeriesDescription == SYNTHETIC_DESCRIPTION
        assert (ds.PatientID, str(ds.PatientName)) == (inputs["patient"]["PatientID"], inputs["patient"]["PatientName"])
        assert not ds.AccessionNumber and not ds.PatientBirthDate and "InstitutionName" not in ds
        assert {r.ReferencedSOPInstanceUID for r in ds.SourceImageSequence} == sources
        assert ds.SOPInstanceUID not in sources
    hu, affine = series_volume(instances)
    nifti = nib.load(str(returned))
    expected = np.asarray(nifti.dataobj)
    assert nifti.get_data_dtype() == np.int16 and hu.shape == expected.shape, (hu.shape, expected.shape)
    hu_difference = float(np.abs(hu - expected).max())
    affine_difference = float(np.abs(affine - nifti.affine).max())
    assert hu_difference == 0.0, f"HU differ by up to {hu_difference}"  # int16 HU both, rescale 1 / 0
    assert affine_difference < 1e-3, f"affines differ by {affine_difference} mm\n{affine}\n{nifti.affine}"
    assert float(expected.std()) > 10.0, "a constant volume"
    return {
        "instances": len(instances),
        "shape": list(hu.shape),
        "spacing_mm": [round(float(s), 4) for s in np.sqrt((affine[:3, :3] ** 2).sum(0))],
        "hu_range": [float(hu.min()), float(hu.max())],
        "max_abs_hu_difference": hu_difference,
        "max_abs_affine_difference_mm": affine_difference,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url")
    parser.add_argument("dicomweb")
    parser.add_argument("inputs", type=Path)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    url, dicomweb = args.url.rstrip("/"), args.dicomweb.rstrip("/")
    inputs = json.loads(args.inputs.read_text())
    study, pa, lateral = inputs["study_instance_uid"], inputs["pa"], inputs["lateral"]
    work = (args.out.parent if args.out else Path.cwd()).resolve() / "orthanc_results"
    work.mkdir(parents=True, exist_ok=True)
    client = MONAILabelClient(url, tmpdir=str(work))
    report: dict = {}

    # 1. The datastore lists the study's DX series (the app's default filter, not MONAI Label's CT).
    stats = requests.get(f"{url}/datastore/?output=stats", timeout=60).json()
    assert stats.get("total") == 2, f"the datastore lists {stats} (expected the two DX series)"
    report["datastore"] = stats
    print(f"datastore: {stats.get('total')} images (the DX series of the study)", flush=True)

    # 2. The CT model on the PA series.
    start = time.perf_counter()
    ct_file, result = client.infer("xray2ct", pa["series_instance_uid"], {"num_inference_steps": args.steps})
    seconds = time.perf_counter() - start
    used = result["dicomweb"]["inputs"]
    assert {v: used[v]["series_instance_uid"] for v in used} == {
        "pa": pa["series_instance_uid"],
        "lateral": lateral["series_instance_uid"],
    }, used
    assert result.get("views_present") == [True, True], result.get("views_present")
    stored = result["synthetic_ct"]
    assert stored.get("id") and stored["study_instance_uid"] == study, stored
    returned = work / "ct_pa.nii.gz"
    Path(ct_file).replace(returned)
    print(f"CT model on the PA series: stored as series {stored['id']} ({stored['instances']} slices): {seconds:.1f} s")

    # 3. QIDO-RS and WADO-RS: the study's new series, its header, geometry and HU.
    series = qido_series(dicomweb, study)
    assert sorted(series.values()) == ["CT", "DX", "DX"] and series[stored["id"]] == "CT", series
    report["ct_from_pa_series"] = {
        "seconds": round(seconds, 2),
        "stored": stored,
        **check_stored(dicomweb, inputs, stored["id"], returned),
    }
    print(f"QIDO/WADO-RS: study {study} holds {sorted(series.values())}; the CT series equals the returned NIfTI")

    # 4. The tissue model on the lateral series: the label map returned, the CT stored as another series.
    start = time.perf_counter()
    options = {"num_inference_steps": args.steps}
    label_file, tissue = client.infer("xray2ct_tissue", lateral["series_instance_uid"], options)
    seconds = time.perf_counter() - start
    labels = np.asarray(nib.load(label_file).dataobj)
    assert labels.dtype == np.uint8 and set(np.unique(labels).tolist()) <= {0, 1, 2, 3, 4}, np.unique(labels)
    assert labels.shape == tuple(report["ct_from_pa_series"]["shape"])
    assert tissue["dicomweb"]["inputs"]["pa"]["series_instance_uid"] == pa["series_instance_uid"]
    second = tissue["synthetic_ct"]["id"]
    series = qido_series(dicomweb, study)
    assert sorted(series.values()) == ["CT", "CT", "DX", "DX"] and second in series, series
    assert "SEG" not in series.values()
    report["tissue_from_lateral_series"] = {"seconds": round(seconds, 2), "series": second, "shape": labels.shape}
    print(f"tissue model on the lateral series: label map {labels.shape}, CT stored as {second}: {seconds:.1f} s")

    # 5. An image id that is no series: refused, nothing stored.
    try:
        client.infer("xray2ct", "not-a-series", {"num_inference_steps": args.steps})
    except MONAILabelClientException as error:
        assert "Status: 400" in str(error.msg) and "image" in str(error.msg), error.msg
        report["refused"] = str(error.msg)
        print(f"refused: {error.msg}")
    else:
        raise AssertionError("an image id that is no series was not refused")
    assert len(qido_series(dicomweb, study)) == 4
    if args.out:
        args.out.write_text(json.dumps(report, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
