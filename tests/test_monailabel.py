"""MONAI Label: the app in monailabel_app/ serving the bundle with MONAI Label's BundleInferTask.

The fast tests here check the app's pure-Python parts (the tissue label map derived from the CT, what a request's
result format gets) without MONAI Label installed. The end-to-end check (tests/monailabel/run.sh, opt-in) needs its
own environment with MONAI Label (numpy<2, pydicom<3, torch 2.14.1 + torchvision 0.29.1 next to
monai 1.6.1), which takes 4-5 minutes to install on 2 cores with a warm pip cache and ~8 GB of disk; it is reused
from ~/.cache/xray2ct-monailabel-venv afterwards (the check itself then takes about a minute). Set
XRAY2CT_MONAILABEL=1 to run it.
"""

from __future__ import annotations

import ast
import copy
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from monai.data import MetaTensor
from pacs_helpers import FakeDicomWeb, check_synthetic_ct_header, dx_study
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from scripts.data import DicomWebClient, load_ct, synthetic_chest_ct, write_nifti
from scripts.physics import ProjectionGeometry

from monailabel_app.lib.dicomweb import fetch_inputs, store_ct
from monailabel_app.lib.results import (
    CT_DTYPES,
    RequestRefused,
    ct_result_dtype,
    hu_values,
    label_result_dtype,
    result_extension,
)
from monailabel_app.lib.tissue import axial_axis, label_info, label_names, tissue_labels

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
APP = ROOT / "monailabel_app"
RUN = HERE / "monailabel" / "run.sh"
LUNG, FAT, SOFT, BONE = 1, 2, 3, 4
#: A small detector for the DICOMweb tests' radiographs (32² pixels of 17.6 mm).
DX_GEOMETRY = ProjectionGeometry(views=("pa", "lateral"), detector_shape=(32, 32), pixel_spacing_mm=17.6)


def test_run_script_is_an_executable_bash_script():
    """run.sh is what the docs tell people to run: executable, strict mode, valid bash."""
    assert os.access(RUN, os.X_OK), f"{RUN} is not executable"
    text = RUN.read_text()
    assert text.startswith("#!/usr/bin/env bash\n") and "set -euo pipefail" in text
    result = subprocess.run(["bash", "-n", str(RUN)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_app_is_a_top_level_monai_label_app():
    """monailabel_app/ is what `monailabel start_server --app monailabel_app` loads: a main.py whose class derives
    from MONAILabelApp directly (MONAI Label looks for exactly that), its code in lib/, and the folders start_server
    creates in it ignored by git; its default bundle is the repository's."""
    tree = ast.parse((APP / "main.py").read_text())
    bases = {node.name: [ast.unparse(b) for b in node.bases] for node in tree.body if isinstance(node, ast.ClassDef)}
    assert [name for name, b in bases.items() if "MONAILabelApp" in b] == ["XrayToCTApp"]
    assert {"__init__.py", "infers.py", "results.py", "tissue.py"} <= {p.name for p in (APP / "lib").glob("*.py")}
    assert 'DEFAULT_MODELS = "xray2ct=../bundle"' in (APP / "main.py").read_text()
    assert (APP / "../bundle/configs/inference.yaml").resolve().is_file()
    ignored = subprocess.run(
        ["git", "check-ignore", "monailabel_app/model/x", "monailabel_app/logs/x", "monailabel_app/bin/x"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert len(ignored.stdout.split()) == 3, ignored.stdout


def test_tissue_classes_are_what_slicer_maps():
    """Slicer's module sorts the result's label names by value, drops "background" and gives the i-th name the value
    i + 1: the classes are 1..4 in that order, each with a colour and an HU interval that starts where the last ends."""
    names = label_names()
    assert names == {"lung": 1, "fat": 2, "soft tissue": 3, "bone": 4}
    in_slicer_order = [k for k, _ in sorted(names.items(), key=lambda item: item[1]) if k != "background"]
    assert [names[k] for k in in_slicer_order] == list(range(1, len(in_slicer_order) + 1))
    info = label_info()
    assert [c["name"] for c in info] == in_slicer_order and [c["idx"] for c in info] == [1, 2, 3, 4]
    assert all(len(c["color"]) == 3 and all(0 <= v <= 255 for v in c["color"]) for c in info)
    assert [c["hu_range"] for c in info] == [[None, -200.0], [-200.0, -30.0], [-30.0, 150.0], [150.0, None]]
    assert len({tuple(c["color"]) for c in info}) == 4
    json.dumps(info)  # what the result JSON carries


def _analytic_chest(size: int = 48) -> np.ndarray:
    """(X, Y, Z) HU, RAS: air around an elliptic body (skin 40 HU, a fat ring -100, muscle 50 HU), two lungs
    (-850 HU), a spine (400 HU) and a trachea of air (-1000 HU) that runs out of the top of the volume."""
    x, y, _ = np.meshgrid(*(np.arange(size) - size / 2 + 0.5,) * 3, indexing="ij")
    r = np.sqrt((x / 20.0) ** 2 + (y / 15.0) ** 2)
    hu = np.full((size,) * 3, -1000.0, dtype=np.float32)
    hu[r < 1.0] = 40.0  # skin
    hu[r < 0.93] = -100.0  # subcutaneous fat
    hu[r < 0.8] = 50.0  # muscle and mediastinum
    for side in (-1, 1):
        hu[np.sqrt(((x - 8 * side) / 6.0) ** 2 + (y / 8.0) ** 2) < 1.0] = -850.0  # lungs
    hu[np.sqrt(x**2 + (y + 9) ** 2) < 3.0] = 400.0  # spine (posterior: -y)
    hu[np.sqrt(x**2 + (y - 4) ** 2) < 1.5] = -1000.0  # trachea, through every slice
    return hu


def test_tissue_labels_of_an_analytic_chest():
    """Outside air is background, air enclosed by the body on each axial slice is lung (the trachea too, though it
    leaves the volume), and each tissue falls in its HU interval, lower edges inclusive."""
    hu = _analytic_chest()
    labels = tissue_labels(hu)
    assert labels.dtype == np.uint8 and labels.shape == hu.shape
    assert (labels[hu == -1000.0] == 0).sum() > 0.4 * hu.size  # the air around the body
    assert (labels[0] == 0).all() and (labels[:, 0] == 0).all()
    assert (labels[hu == -850.0] == LUNG).all()
    assert (labels[24, 28, :] == LUNG).all()  # the trachea on every slice, up to the top of the volume
    assert (labels[hu == -100.0] == FAT).all() and (labels[hu == 50.0] == SOFT).all()
    assert (labels[hu == 40.0] == SOFT).all() and (labels[hu == 400.0] == BONE).all()
    edges = hu.copy()
    edges[24, 24, 10:14] = [-200.0, -30.0, 150.0, np.nan]  # inside the body: lower edges belong to the class above
    assert tissue_labels(edges)[24, 24, 10:14].tolist() == [FAT, SOFT, BONE, LUNG]  # NaN read as air


def test_tissue_labels_close_small_gaps_but_not_openings():
    """Noise that opens the chest wall by a voxel or two leaves the lung inside (the outline is closed over 2 voxels);
    an opening as wide as the lung lets its air reach the outside on that slice, where it counts as background."""
    hu = _analytic_chest()
    gap = hu.copy()
    gap[38:47, 23:25, 20] = -1000.0  # a 2-voxel slit from the right lung through the wall, slice z = 20
    assert (tissue_labels(gap)[hu == -850.0] == LUNG).all()
    assert (tissue_labels(gap, closing_radius=0)[:, :, 20][hu[:, :, 20] == -850.0] == 0).any()
    wide = hu.copy()
    wide[30:47, 16:33, 20] = -1000.0  # a 17-voxel opening on slice z = 20
    opened = tissue_labels(wide)
    assert (opened[:, :, 20][hu[:, :, 20] == -850.0] == 0).any() and (
        opened[:, :, 21][hu[:, :, 21] == -850.0] == LUNG
    ).all()


def test_tissue_labels_follow_the_axial_axis():
    """Slices are axial whatever the array order: the label map of a permuted volume is the permuted label map, and
    axial_axis reads the superior axis from an affine (RAS, LPS, axes permuted)."""
    hu = _analytic_chest()
    permuted = np.transpose(hu, (2, 0, 1))  # superior axis first
    affine = np.zeros((4, 4))
    affine[0, 1], affine[1, 2], affine[2, 0], affine[3, 3] = 5.0, 5.0, 5.0, 1.0
    assert axial_axis(affine) == 0 and axial_axis(np.diag([5.0, 5.0, 5.0, 1.0])) == 2
    assert axial_axis(np.diag([-5.0, -5.0, 5.0, 1.0])) == 2
    assert np.array_equal(tissue_labels(permuted, axis=axial_axis(affine)), np.transpose(tissue_labels(hu), (2, 0, 1)))
    with pytest.raises(ValueError, match="3D volume"):
        tissue_labels(hu[0])


def test_tissue_labels_of_the_anatomical_phantom():
    """On the bundle's chest phantom (its own labels as the truth, 48³ at 6 mm): the lungs and airways are lung, the
    subcutaneous fat fat, the liver and heart soft tissue, the vertebrae and sternum bone, the air around background."""
    from scripts.data import PHANTOM_LABELS, synthetic_chest_ct

    hu, truth = synthetic_chest_ct(size=48, spacing_mm=6.0, seed=3)
    labels = tissue_labels(hu)

    def share(names: list[str], value: int) -> float:
        mask = np.isin(truth, [PHANTOM_LABELS[n] for n in names])
        assert mask.sum() > 0, names
        return float((labels[mask] == value).mean())

    lobes = [n for n in PHANTOM_LABELS if n.startswith("lung_") and "lobe" in n]
    assert share(["background"], 0) == 1.0
    assert share(lobes, LUNG) > 0.98 and share(["trachea"], LUNG) > 0.9
    assert share(["subcutaneous_fat"], FAT) > 0.95
    assert share(["liver", "heart_myocardium", "heart_ventricle_left"], SOFT) > 0.95
    vertebrae = [n for n in PHANTOM_LABELS if n.startswith("vertebrae_T")]
    assert share(vertebrae, BONE) > 0.9 and share(["sternum"], BONE) > 0.9


@pytest.mark.parametrize(
    ("requested", "dtype", "noted"),
    [
        (None, "int16", False),
        ("", "int16", False),
        ("int16", "int16", False),
        ("int32", "int32", False),
        ("float32", "float32", False),
        ("float64", "float64", False),
        ("uint8", "int16", True),  # 3D Slicer's module sends this with every request
        ("uint16", "int16", True),
        ("int8", "int16", True),
        ("int64", "int16", True),
        ("float16", "int16", True),
    ],
)
def test_ct_result_dtype_never_a_label_type(requested, dtype, noted):
    """The CT is written in signed HU: label types get int16 with a note naming the requested type."""
    chosen, note = ct_result_dtype(requested)
    assert chosen == dtype and chosen in CT_DTYPES
    assert (note is not None) == noted
    if noted:
        assert repr(requested) in note and "int16" in note


@pytest.mark.parametrize("requested", ["bool", "U8", "complex64", "nonsense", 3.5])
def test_ct_result_dtype_refuses_what_is_no_number_type(requested):
    with pytest.raises(RequestRefused, match="result_dtype"):
        ct_result_dtype(requested)


def test_label_result_dtype():
    assert label_result_dtype(None) == "uint8" and label_result_dtype("uint8") == "uint8"
    assert label_result_dtype("uint16") == "uint16" and label_result_dtype("float32") == "float32"
    with pytest.raises(RequestRefused, match="result_dtype 'bool'"):
        label_result_dtype("bool")


@pytest.mark.parametrize(
    ("requested", "extension"),
    [
        (None, ".nii.gz"),
        ("", ".nii.gz"),
        (".nrrd", ".nrrd"),
        ("nrrd", ".nrrd"),
        (".NII.GZ", ".nii.gz"),
        (".mha", ".mha"),
    ],
)
def test_result_extension(requested, extension):
    assert result_extension(requested) == extension


@pytest.mark.parametrize("requested", [".png", ".jpg", ".dcm", ".mhd", ".seg.nrrd"])
def test_result_extension_refuses_what_holds_no_single_3d_volume(requested):
    """2D image types, DICOM (one slice per file) and header + raw pairs cannot be returned as one 3D file."""
    with pytest.raises(RequestRefused, match=r"result_extension .*use one of \.nii\.gz"):
        result_extension(requested)
    assert issubclass(RequestRefused, ValueError)


def test_hu_values_round_and_clamp_never_wrap():
    """Whole HU in int16 (rounded, clamped to the type's range), the affine kept; float types as they are. The cast
    MONAI Label's writer would make to uint8 instead wraps -1000 HU (int16) to 24."""
    affine = torch.diag(torch.tensor([5.0, 5.0, 5.0, 1.0]))
    hu = MetaTensor(torch.tensor([[[-1000.4, -0.4, 1999.6, 40000.0]]]), affine=affine)
    as_int16 = hu_values(hu, "int16")
    assert as_int16.dtype == torch.int16 and as_int16.flatten().tolist() == [-1000, 0, 2000, 32767]
    assert isinstance(as_int16, MetaTensor) and torch.equal(as_int16.affine, affine)
    assert hu_values(hu, "float32").flatten().tolist() == pytest.approx([-1000.4, -0.4, 1999.6, 40000.0])
    assert hu_values(hu, "int32").flatten().tolist()[-1] == 40000
    assert np.array([-1000], dtype=np.int16).astype(np.uint8)[0] == 24  # what never reaches a client


# ---- the DICOMweb datastore: a series -> its study's radiograph pair; the CT back as a series (fake server) ---------
def _dx_pair(**changes) -> list[bytes]:
    """A PA and a lateral DX of one study (32² detector), the PA's header changed by ``changes`` (None: deleted)."""
    files = dx_study(DX_GEOMETRY, size=16, spacing_mm=20.0, seed=1003)
    pa = pydicom.dcmread(io.BytesIO(files[0]))
    for keyword, value in changes.items():
        if value is None:
            delattr(pa, keyword)
        else:
            setattr(pa, keyword, value)
    buffer = io.BytesIO()
    pa.save_as(buffer, enforce_file_format=True)
    return [buffer.getvalue(), files[1]]


def test_a_request_for_either_series_of_a_pair_gets_both_views(tmp_path):
    """The image id is one series (what MONAI Label's DICOMweb datastore lists); its study gives the other view, by
    the headers: the same pair, PA first (the study link), whichever of the two series the request names."""
    files = _dx_pair()
    pa, lateral = (pydicom.dcmread(io.BytesIO(f), stop_before_pixels=True) for f in files)
    with FakeDicomWeb() as server:
        server.add(*files)
        client = DicomWebClient(server.url)
        for k, series in enumerate((pa.SeriesInstanceUID, lateral.SeriesInstanceUID)):
            folder = tmp_path / str(k)
            folder.mkdir()
            inputs = fetch_inputs(client, series, ["pa", "lateral"], folder)
            assert inputs.study_uid == pa.StudyInstanceUID
            assert Path(inputs.files["pa"]).read_bytes() == files[0]
            assert Path(inputs.files["lateral"]).read_bytes() == files[1]
            assert [h.SOPInstanceUID for h in inputs.headers] == [pa.SOPInstanceUID, lateral.SOPInstanceUID]
            assert inputs.record["inputs"]["lateral"] == {
                "series_instance_uid": lateral.SeriesInstanceUID,
                "sop_instance_uid": lateral.SOPInstanceUID,
                "view_position": "LL",
            }
            assert inputs.record["notes"] == []
        assert any(r["path"] == f"/dicom-web/series?SeriesInstanceUID={pa.SeriesInstanceUID}" for r in server.requests)


def test_a_series_that_states_no_view_is_the_pa_view_and_a_lone_view_is_used_alone(tmp_path):
    files = _dx_pair(ViewPosition=None, PatientOrientation=None)
    pa = pydicom.dcmread(io.BytesIO(files[0]), stop_before_pixels=True)
    with FakeDicomWeb() as server:
        server.add(*files)
        inputs = fetch_inputs(DicomWebClient(server.url), pa.SeriesInstanceUID, ["pa", "lateral"], tmp_path)
        assert Path(inputs.files["pa"]).read_bytes() == files[0] and "lateral" in inputs.files
    with FakeDicomWeb() as server:
        server.add(files[0])  # a study with the PA alone
        (tmp_path / "alone").mkdir()
        inputs = fetch_inputs(DicomWebClient(server.url), pa.SeriesInstanceUID, ["pa", "lateral"], tmp_path / "alone")
        assert list(inputs.files) == ["pa"]
        assert inputs.record["notes"] == ["no lateral radiograph: the CT is generated from the other view alone"]


def test_a_repeat_lateral_is_never_guessed_and_bad_ids_are_refused(tmp_path):
    files = _dx_pair()
    pa, lateral = (pydicom.dcmread(io.BytesIO(f)) for f in files)
    repeat = copy.deepcopy(lateral)
    repeat.SOPInstanceUID = repeat.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    buffer = io.BytesIO()
    repeat.save_as(buffer, enforce_file_format=True)
    with FakeDicomWeb() as server:
        server.add(*files, buffer.getvalue())
        client = DicomWebClient(server.url)
        with pytest.raises(ValueError, match=r"^the study holds 2 lateral radiographs .*--lateral_instance"):
            fetch_inputs(client, pa.SeriesInstanceUID, ["pa", "lateral"], tmp_path)
        chosen = {"lateral": repeat.SOPInstanceUID}
        inputs = fetch_inputs(client, pa.SeriesInstanceUID, ["pa", "lateral"], tmp_path, chosen)
        assert [h.SOPInstanceUID for h in inputs.headers] == [pa.SOPInstanceUID, repeat.SOPInstanceUID]
        with pytest.raises(ValueError, match=r"^image: no series 1\.2\.3 at http://127\.0\.0\.1:\d+/dicom-web"):
            fetch_inputs(client, "1.2.3", ["pa", "lateral"], tmp_path)
        with pytest.raises(ValueError, match=r"^image: 'phantom_pa' is not a DICOM UID"):
            fetch_inputs(client, "phantom_pa", ["pa", "lateral"], tmp_path)
    with FakeDicomWeb() as server:
        server.add(*files)
        with pytest.raises(ValueError, match=r"^image: series .* is a lateral radiograph; the model takes \['pa'\]"):
            fetch_inputs(DicomWebClient(server.url), lateral.SeriesInstanceUID, ["pa"], tmp_path)


def test_the_ct_goes_back_to_the_study_as_a_synthetic_series(tmp_path):
    """The CT file (here NIfTI in LAS, as a client might hold it) becomes a CT series of the radiographs' study,
    stored with STOW-RS: synthetic header, the PA's patient, both inputs as sources, HU and geometry as the file's."""
    files = _dx_pair()
    pa, lateral = (pydicom.dcmread(io.BytesIO(f), stop_before_pixels=True) for f in files)
    hu, _ = synthetic_chest_ct(16, 20.0, seed=1004)
    ras = np.round(hu).astype(np.int16)
    affine = np.diag([-20.0, 20.0, 20.0, 1.0])
    affine[:3, 3] = [150.0, -150.0, -150.0]
    write_nifti(tmp_path / "ct.nii.gz", ras[::-1].copy(), affine)  # LAS: x flipped
    with FakeDicomWeb() as server:
        server.add(*files)
        client = DicomWebClient(server.url)
        (tmp_path / "in").mkdir()
        inputs = fetch_inputs(client, pa.SeriesInstanceUID, ["pa", "lateral"], tmp_path / "in")
        stored = store_ct(client, inputs, tmp_path / "ct.nii.gz", tmp_path / "series", instances_per_request=5)
        assert stored["study_instance_uid"] == pa.StudyInstanceUID and stored["url"] == server.url
        assert (stored["instances"], stored["requests"]) == (16, 4)
        series = [
            h for h in server.headers_of(pa.StudyInstanceUID) if h.SeriesInstanceUID == stored["series_instance_uid"]
        ]
        assert len(series) == 16 and stored["series_instance_uid"] not in (
            pa.SeriesInstanceUID,
            lateral.SeriesInstanceUID,
        )
        folder = tmp_path / "retrieved"
        folder.mkdir()
        for h in series:
            check_synthetic_ct_header(h)
            assert {r.ReferencedSOPInstanceUID for r in h.SourceImageSequence} == {
                pa.SOPInstanceUID,
                lateral.SOPInstanceUID,
            }
            (folder / f"{h.SOPInstanceUID}.dcm").write_bytes(server.instances[h.SOPInstanceUID])
    ct = load_ct(folder)
    np.testing.assert_array_equal(ct[0].numpy(), ras)
    expected = np.diag([20.0, 20.0, 20.0, 1.0])
    expected[:3, 3] = [-150.0, -150.0, -150.0]  # the LAS file's first voxel is the RAS grid's last along x
    np.testing.assert_allclose(ct.affine.numpy(), expected, atol=1e-4)


def test_the_series_writer_runs_under_pydicom_2(tmp_path, monkeypatch):
    """MONAI Label's environment has pydicom 2, whose save_as knows no enforce_file_format: the writer asks it for a
    Part 10 file with write_like_original=False instead."""
    from scripts.data.dicom_output import save_dicom_file

    calls = []

    def pydicom2_save_as(self, filename, write_like_original=True):
        calls.append((Path(filename).name, write_like_original))

    monkeypatch.setattr(Dataset, "save_as", pydicom2_save_as)
    save_dicom_file(Dataset(), tmp_path / "x.dcm")
    assert calls == [("x.dcm", False)]


@pytest.mark.skipif(
    os.environ.get("XRAY2CT_MONAILABEL") != "1",
    reason="MONAI Label check is opt-in: it installs its own environment (minutes, ~8 GB); set XRAY2CT_MONAILABEL=1",
)
def test_bundle_infer_task_end_to_end(tmp_path):
    """The app through BundleInferTask for a phantom CT and for its PA radiograph: a 3D int16 CT in HU on the last
    stage grid (64³, 5 mm, RAS for the tiny preset), identical to the bundle's own pipeline, still int16 HU when asked
    for as uint8/uint16 NRRD; the tissue label map; then `monailabel start_server` over HTTP, as 3D Slicer's module
    and MONAI Label's Python client call it."""
    env = dict(os.environ, BUNDLE_PYTHON=sys.executable, MONAILABEL_WORKDIR=str(tmp_path))
    result = subprocess.run(["bash", str(RUN), "--server"], env=env, capture_output=True, text=True, timeout=3600)
    assert result.returncode == 0, f"run.sh failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    assert "[monailabel-check] PASSED" in result.stdout
    report = json.loads((tmp_path / "report.json").read_text())
    for case, views in (("ct", [True, True]), ("pa_png", [True, False])):
        assert report[case]["shape"] == report["expected"]["shape"]
        assert report[case]["spacing_mm"] == [report["expected"]["spacing_mm"]] * 3
        assert report[case]["orientation"] == "RAS" and report[case]["dtype"] == "int16"
        assert -1024.0 <= report[case]["hu_min"] < -500.0 < report[case]["hu_max"] <= 3071.0
        assert report[case]["views_present"] == views
    for dtype in ("uint8", "uint16"):
        assert report[f"ct_as_{dtype}_nrrd"]["dtype"] == "int16" and report[f"ct_as_{dtype}_nrrd"]["hu_min"] < -500.0
    assert set(report["tissue"]["voxels"]) == {"lung", "fat", "soft tissue", "bone"}
    assert set(report["refused"]) == {"result_extension", "result_dtype", "num_inference_steps"}
    assert report["bundle_pipeline"]["max_abs_difference_hu"] <= 0.5 + 1e-3
    assert report["ct_vs_pa_png_mean_abs_difference_hu"] > 1.0
    served = json.loads((tmp_path / "server_report.json").read_text())
    rest = served["rest"]
    assert rest["models"] == {"xray2ct": "others", "xray2ct_tissue": "segmentation"}
    assert rest["server_ct_by_id"]["shape"] == rest["server_pa_png_upload"]["shape"] == report["expected"]["shape"]
    assert rest["server_ct_as_nrrd_uint8"]["dtype"] == "int16" and rest["server_ct_as_nrrd_uint8"]["hu_min"] < -500.0
    assert rest["server_pair_json"]["views_present"] == [True, True]
    assert "result_extension" in rest["server_refused_png"]["detail"]
    slicer = served["slicer"]
    assert slicer["run"]["segments"] == ["lung", "fat", "soft tissue", "bone"]
    assert slicer["run"]["synthetic_ct"]["id"] == slicer["next_sample"]["id"] == "phantom_pa_synthetic_ct"
    assert set(slicer["random_strategy"]) <= {"phantom_ct", "phantom_pa", "phantom_lateral"}
    client = served["python_client"]
    assert client["ct_asked_uint16"]["dtype"] == "int16" and "uint16" in client["ct_asked_uint16"]["note"]
    assert "result_dtype" in client["refused"]


@pytest.mark.skipif(
    os.environ.get("XRAY2CT_MONAILABEL") != "1" or os.environ.get("XRAY2CT_ORTHANC") != "1",
    reason="opt-in: MONAI Label's environment and Orthanc with its DICOMweb plugin; set XRAY2CT_MONAILABEL=1 and "
    "XRAY2CT_ORTHANC=1",
)
def test_monai_label_over_orthanc(tmp_path):
    """`monailabel start_server --studies <Orthanc>/dicom-web`: inference for the PA series of a DX study stores the
    CT back into the study as a synthetic CT series, equal in HU and geometry to the CT the server returned."""
    env = dict(os.environ, BUNDLE_PYTHON=sys.executable, MONAILABEL_WORKDIR=str(tmp_path))
    result = subprocess.run(["bash", str(RUN), "--orthanc"], env=env, capture_output=True, text=True, timeout=3600)
    assert result.returncode == 0, f"run.sh failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    report = json.loads((tmp_path / "orthanc_report.json").read_text())
    assert report["datastore"]["total"] == 2  # the two DX series, not MONAI Label's default CT listing
    ct = report["ct_from_pa_series"]
    assert ct["instances"] == 64 and ct["shape"] == [64, 64, 64] and ct["spacing_mm"] == [5.0, 5.0, 5.0]
    assert ct["max_abs_hu_difference"] == 0.0 and ct["max_abs_affine_difference_mm"] < 1e-3
    assert ct["stored"]["id"] == ct["stored"]["series_instance_uid"]
    assert report["tissue_from_lateral_series"]["series"] != ct["stored"]["id"]
    assert "image" in report["refused"] and "Status: 400" in report["refused"]
