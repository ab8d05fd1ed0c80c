"""Checks of a running ``monailabel start_server --app monailabel_app`` over HTTP, the way its clients use it. Run by
run.sh --server in the MONAI Label environment, against a datastore holding the phantom CT and its PA/lateral PNGs.

1. REST, as curl or a script would call it: the CT model by datastore id (the phantom CT) and by upload (the PA PNG),
   each an int16 NIfTI in HU; a PA + lateral pair as server-side paths (``output=json``: both views used); the CT
   asked for with a label format (``.nrrd``, ``uint8``): int16 HU, never wrapped; a 2D extension: HTTP 400 naming
   ``result_extension``.
2. 3D Slicer's MONAI Label module, replayed step by step from its source (``plugins/slicer/MONAILabel/MONAILabel.py``
   of MONAI Label 0.8.5, whose client is ``monailabel.client.MONAILabelClient``): the models its segmentation selector
   lists (types ``segmentation`` and ``detection``: the tissue model, not the CT model); the request its "Run" sends
   (the model's config options with lists reduced to their first item, then ``result_extension=".nrrd"`` and
   ``result_dtype="uint8"``, by image id); what it does with the answer (label names sorted by value, ``background``
   dropped, the i-th name for the value i + 1, the file read with SimpleITK): the tissue label map, equal to the
   tissue labels of the CT stored as ``<image>_synthetic_ct``; "Next Sample" with the ``synthetic_ct`` strategy (the
   sample's image downloaded from ``/datastore/image``, its ``original`` label with the label names from the
   datastore's record); and the automatic "Run" on that new sample, which labels the stored CT instead of generating
   a CT from it. The ``random`` strategy never offers a synthetic CT.
3. MONAI Label's Python client (``MONAILabelClient``): ``info``, ``infer`` of the CT model with ``result_dtype``
   ``uint16`` (int16 HU back, with the note saying why), ``infer`` of the tissue model, ``datastore``, and a refused
   request (``MONAILabelClientException`` naming HTTP 400 and the message).

Usage: python server.py URL BUNDLE STUDIES [--model NAME] [--steps N] [--out report.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import requests
from volumes import TISSUE_NAMES, check_ct, check_tissue

#: Segmentation and detection models are what the Slicer module's "Auto Segmentation" selector lists.
SLICER_SEGMENTATION_TYPES = ("segmentation", "detection")
#: What the Slicer module's logic adds to every inference request (MONAILabelLogic.infer).
SLICER_RESULT_FORMAT = {"result_extension": ".nrrd", "result_dtype": "uint8"}
SLICER_CLIENT_ID = "user-xyz"  # the module's default client id (its "MONAILabel/clientId" setting)


def grid_of(bundle: Path) -> tuple[int, float]:
    """The last stage grid and its voxel size (mm) of the served bundle, as the app reads them."""
    from monai.bundle import ConfigParser

    if str(bundle) not in sys.path:
        sys.path.insert(0, str(bundle))
    config = ConfigParser()
    config.read_config([str(bundle / "configs" / "common.yaml"), str(bundle / "configs" / "inference.yaml")])
    config["bundle_root"] = str(bundle)
    grid = int(config.get_parsed_content("stages")[-1]["grid_size"])
    return grid, float(config.get_parsed_content("fov_mm")) / grid


def download(url: str, path: Path) -> Path:
    response = requests.get(url, timeout=120)
    assert response.status_code == 200, f"GET {url}: HTTP {response.status_code}: {response.text[:300]}"
    path.write_bytes(response.content)
    return path


def check_rest(url: str, model: str, studies: Path, steps: int, grid: int, spacing: float, work: Path) -> dict:
    """1. Plain HTTP requests (see the module docstring)."""
    info = requests.get(f"{url}/info/", timeout=60)
    info.raise_for_status()
    models = info.json().get("models", {})
    assert model in models and f"{model}_tissue" in models, f"server at {url} serves {sorted(models)}"
    params = {"num_inference_steps": steps}
    report = {"models": {name: models[name]["type"] for name in sorted(models)}}
    cases = [
        ("server_ct_by_id", ".nii.gz", {"params": {"image": "phantom_ct", "output": "image"}}, params),
        (
            "server_pa_png_upload",
            ".nii.gz",
            {
                "params": {"output": "image"},
                "files": {"file": ("pa.png", (studies / "phantom_pa.png").read_bytes(), "image/png")},
            },
            params,
        ),
        (
            "server_ct_as_nrrd_uint8",
            ".nrrd",
            {"params": {"image": "phantom_pa", "output": "image"}},
            {**params, **SLICER_RESULT_FORMAT},
        ),
    ]
    for name, extension, kwargs, options in cases:
        start = time.perf_counter()
        response = requests.post(f"{url}/infer/{model}", data={"params": json.dumps(options)}, timeout=600, **kwargs)
        seconds = time.perf_counter() - start
        assert response.status_code == 200, f"{name}: HTTP {response.status_code}: {response.text[:500]}"
        path = work / f"{name}{extension}"
        path.write_bytes(response.content)
        _, _, stats = check_ct(path, grid, spacing)
        report[name] = {**stats, "seconds": round(seconds, 2)}
        print(
            f"{name}: {stats['shape']} {stats['dtype']} HU [{stats['hu_min']:.0f}, {stats['hu_max']:.0f}] "
            f"{stats['spacing_mm']} mm {stats['orientation']}: {seconds:.1f} s over HTTP",
            flush=True,
        )

    # A radiograph pair: the views as server-side paths in the request's params (one request uploads one file).
    pair = {
        "pa": str((studies / "phantom_pa.png").resolve()),
        "lateral": str((studies / "phantom_lateral.png").resolve()),
    }
    start = time.perf_counter()
    response = requests.post(
        f"{url}/infer/{model}",
        params={"image": "phantom_pa", "output": "json"},
        data={"params": json.dumps({**params, **pair})},
        timeout=600,
    )
    assert response.status_code == 200, f"server_pair_json: HTTP {response.status_code}: {response.text[:500]}"
    result = response.json()
    assert result.get("views_present") == [True, True], f"server_pair_json: views {result.get('views_present')}"
    assert result.get("shape") == [grid] * 3 and result.get("spacing_mm") == [spacing] * 3, result
    report["server_pair_json"] = {**result, "seconds": round(time.perf_counter() - start, 2)}
    print(f"server_pair_json: views {result['views_present']}, shape {result['shape']} (JSON only)", flush=True)

    start = time.perf_counter()
    response = requests.post(
        f"{url}/infer/{model}",
        params={"image": "phantom_pa", "output": "image"},
        data={"params": json.dumps({"result_extension": ".png"})},
        timeout=60,
    )
    assert response.status_code == 400, f"a .png CT: HTTP {response.status_code}, expected 400: {response.text[:300]}"
    detail = response.json().get("detail", "")
    assert "result_extension" in detail and ".nii.gz" in detail, detail
    report["server_refused_png"] = {"status": 400, "detail": detail, "seconds": round(time.perf_counter() - start, 2)}
    print(f"refused over HTTP (400): {detail}", flush=True)
    return report


def replay_slicer(url: str, studies: Path, steps: int, grid: int, spacing: float, work: Path) -> dict:
    """2. The Slicer module's requests and what it does with the answers (see the module docstring)."""
    import SimpleITK as sitk
    from monailabel.client import MONAILabelClient

    work.mkdir(parents=True, exist_ok=True)
    client = MONAILabelClient(url, tmpdir=str(work), client_id=SLICER_CLIENT_ID)
    report: dict = {}

    # Connecting: GET /info/; the segmentation selector lists these models, the app's labels become empty segments.
    info = client.info()
    listed = [name for name, m in info["models"].items() if m.get("type", "segmentation") in SLICER_SEGMENTATION_TYPES]
    assert listed == ["xray2ct_tissue"], f"Slicer's segmentation selector would list {listed}"
    assert info["labels"] == TISSUE_NAMES, f"Slicer would create the segments {info['labels']}"
    model = listed[0]

    # "Run" on the current sample (a radiograph in the datastore): the options panel's values, then the module's
    # result format; by image id, no label, no file, no session.
    params = {k: v[0] if isinstance(v, list) else v for k, v in info["models"][model].get("config", {}).items()}
    params["num_inference_steps"] = steps  # what the user would type into the options panel to be quick
    params.update(SLICER_RESULT_FORMAT)
    start = time.perf_counter()
    result_file, result = client.infer(model, "phantom_pa", params, None, None, None)
    seconds = time.perf_counter() - start
    labels = result.get("label_names") or info["models"][model].get("labels")
    labels = [k for k, _ in sorted(labels.items(), key=lambda item: item[1])] if isinstance(labels, dict) else labels
    labels = [name for name in labels if name != "background"]
    assert labels == TISSUE_NAMES, f"segments {labels}"
    image = sitk.ReadImage(result_file)
    assert image.GetPixelIDTypeAsString() == "8-bit unsigned integer", image.GetPixelIDTypeAsString()
    values = np.unique(sitk.GetArrayFromImage(image))
    assert set(values.tolist()) <= set(range(len(labels) + 1)), f"label values {values} beyond {len(labels)} segments"

    stored = result.get("synthetic_ct") or {}
    assert stored.get("id") == "phantom_pa_synthetic_ct", f"synthetic CT not stored: {stored}"
    ct_path = download(f"{url}/datastore/image?image={stored['id']}", work / "phantom_pa_synthetic_ct.nii.gz")
    ct, ct_affine, ct_stats = check_ct(ct_path, grid, spacing)
    counts = check_tissue(result_file, ct, ct_affine)
    report["run"] = {"seconds": round(seconds, 2), "segments": labels, "voxels": counts, "synthetic_ct": stored}
    print(f"Slicer Run ({model}): segments {labels}, voxels {counts}, CT stored as {stored['id']}: {seconds:.1f} s")

    # "Next Sample" with the synthetic_ct strategy: the CT as a volume, its original label as the segmentation.
    sample = client.next_sample("synthetic_ct", {})
    assert sample.get("id") == stored["id"], f"synthetic_ct strategy gave {sample}"
    volume = download(f"{url}/datastore/image?image={sample['id']}", work / "sample.nii.gz")
    sample_ct, sample_affine, _ = check_ct(volume, grid, spacing)
    assert np.array_equal(sample_ct, ct) and np.allclose(sample_affine, ct_affine)
    record = client.datastore()["objects"][sample["id"]]
    label_info = record["labels"]["original"]["info"]
    assert list(label_info.get("params", {}).get("label_names", {})) == TISSUE_NAMES, label_info
    mask = client.download_label(sample["id"], "original")
    check_tissue(mask, sample_ct, sample_affine)
    assert record["image"]["info"].get("synthetic_ct_of") == "phantom_pa", record["image"]["info"]

    # The module then runs the model whose labels match the app's on the new sample: the stored CT is labelled as it
    # is, no CT is generated from it.
    start = time.perf_counter()
    again_file, again = client.infer(model, sample["id"], dict(params), None, None, None)
    assert "no new CT" in again.get("source", ""), again
    check_tissue(again_file, sample_ct, sample_affine)
    assert not (again.get("synthetic_ct") or {}).get("id"), again.get("synthetic_ct")
    objects = client.datastore()["objects"]
    assert f"{sample['id']}_synthetic_ct" not in objects, sorted(objects)
    report["next_sample"] = {"id": sample["id"], "auto_run_seconds": round(time.perf_counter() - start, 2)}
    print(f"Slicer Next Sample (synthetic_ct): {sample['id']} with its tissue label; auto-run labels it as it is")

    picks = {client.next_sample("random", {})["id"] for _ in range(8)}
    assert picks <= {"phantom_ct", "phantom_pa", "phantom_lateral"}, f"random strategy offered {picks}"
    report["random_strategy"] = sorted(picks)
    return report


def check_python_client(url: str, steps: int, grid: int, spacing: float, work: Path) -> dict:
    """3. MONAI Label's Python client, as a script would use it (see the module docstring)."""
    from monailabel.client import MONAILabelClient
    from monailabel.client.client import MONAILabelClientException

    work.mkdir(parents=True, exist_ok=True)
    client = MONAILabelClient(url, tmpdir=str(work))
    models = client.info()["models"]
    assert models["xray2ct"]["type"] == "others" and models["xray2ct_tissue"]["type"] == "segmentation", models
    report: dict = {}

    start = time.perf_counter()
    options = {"num_inference_steps": steps, "result_extension": ".nrrd", "result_dtype": "uint16"}
    ct_file, result = client.infer("xray2ct", "phantom_ct", options)
    _, _, stats = check_ct(ct_file, grid, spacing)
    assert result["result_dtype"] == "int16" and "uint16" in result["result_dtype_note"], result
    report["ct_asked_uint16"] = {
        **stats,
        "note": result["result_dtype_note"],
        "seconds": round(time.perf_counter() - start, 2),
    }
    print(f"Python client, CT asked as uint16: {stats['dtype']} HU [{stats['hu_min']:.0f}, {stats['hu_max']:.0f}]")

    start = time.perf_counter()
    label_file, result = client.infer("xray2ct_tissue", "phantom_ct", {"num_inference_steps": steps})
    stored = result["synthetic_ct"]
    assert stored["id"] == "phantom_ct_synthetic_ct", stored
    ct_path = download(f"{url}/datastore/image?image={stored['id']}", work / "phantom_ct_synthetic_ct.nii.gz")
    ct, ct_affine, _ = check_ct(ct_path, grid, spacing)
    counts = check_tissue(label_file, ct, ct_affine)
    assert [c["name"] for c in result["label_info"]] == TISSUE_NAMES, result["label_info"]
    assert stored["id"] in client.datastore()["objects"]
    report["tissue"] = {
        "voxels": counts,
        "label_info": result["label_info"],
        "seconds": round(time.perf_counter() - start, 2),
    }
    print(f"Python client, tissue model: {counts} voxels, label_info {[c['name'] for c in result['label_info']]}")

    try:
        client.infer("xray2ct", "phantom_ct", {"result_dtype": "bool"})
    except MONAILabelClientException as error:
        assert "Status: 400" in str(error.msg) and "result_dtype" in str(error.msg), error.msg
        report["refused"] = str(error.msg)
        print(f"Python client, refused: {error.msg}")
    else:
        raise AssertionError("result_dtype bool was not refused")
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url")
    parser.add_argument("bundle", type=Path)
    parser.add_argument("studies", type=Path)
    parser.add_argument("--model", default="xray2ct", help="the CT model's name on the server")
    parser.add_argument("--steps", type=int, default=2, help="num_inference_steps per stage (request option)")
    parser.add_argument("--out", type=Path, default=None, help="write the measurements here (JSON)")
    args = parser.parse_args()
    url = args.url.rstrip("/")
    grid, spacing = grid_of(args.bundle.resolve())
    work = (args.out.parent if args.out else Path.cwd()).resolve() / "server_results"
    work.mkdir(parents=True, exist_ok=True)
    report = {"rest": check_rest(url, args.model, args.studies, args.steps, grid, spacing, work)}
    report["python_client"] = check_python_client(url, args.steps, grid, spacing, work / "client")
    report["slicer"] = replay_slicer(url, args.studies, args.steps, grid, spacing, work / "slicer")
    if args.out:
        args.out.write_text(json.dumps(report, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
