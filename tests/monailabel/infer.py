"""Inference through MONAI Label's ``BundleInferTask`` (the app's :class:`XrayToCTInferTask`), as the server runs it:
``task(request)`` with ``{"image": path, ...}`` -> a result file and JSON. Run by run.sh in the MONAI Label
environment.

For each input (the phantom CT, whose PA + lateral views the bundle renders; the phantom's PA radiograph as a PNG),
it asserts that the result is a 3D NIfTI on the last stage grid, in HU (finite, within [-1024, 3071]), float32 or
int16, with a RAS affine of ``fov_mm / grid`` mm voxels, that the result JSON names the views used, and that the
two inputs give different CTs (the network sees its input). For the CT
it also runs the bundle's own pieces (``preprocessing`` -> ``inferer`` -> ``postprocessing`` with the same weights,
as ``CTInferenceWorkflow`` does) and asserts that MONAI Label returns the same volume.

With ``--server URL`` it checks a running ``monailabel start_server`` instead, over HTTP: ``POST /infer/<model>``
with a datastore image id (the phantom CT) and with an uploaded file (the PA radiograph), each returning the NIfTI
(``output=image``) that gets the same assertions; then a PA + lateral pair given as server-side paths in the
request's params (``output=json``: both views used).

Usage: python infer.py BUNDLE STUDIES [--steps N] [--out results.json] [--server URL [--model NAME]]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

HERE = Path(__file__).resolve().parent
HU_RANGE = (-1024.0, 3071.0)


def load_app():
    """The app's main.py, imported as MONAI Label does (a module loaded from its file)."""
    spec = importlib.util.spec_from_file_location("xray2ct_monailabel_app", HERE / "app" / "main.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check_volume(path: str, grid: int, spacing_mm: float) -> tuple[np.ndarray, np.ndarray, dict]:
    """Load the result file and assert it is a 3D CT in HU on ``grid``³ voxels of ``spacing_mm`` (RAS)."""
    image = nib.load(path)
    data = np.asanyarray(image.dataobj)
    assert data.ndim == 3, f"{path}: expected a 3D volume, got shape {data.shape}"
    assert data.shape == (grid,) * 3, f"{path}: expected {(grid,) * 3}, got {data.shape}"
    assert data.dtype in (np.float32, np.int16), f"{path}: expected float32 or int16 HU, got {data.dtype}"
    assert np.isfinite(data).all(), f"{path}: non-finite values"
    low, high = float(data.min()), float(data.max())
    assert HU_RANGE[0] <= low and high <= HU_RANGE[1], f"{path}: values [{low}, {high}] are not HU in {HU_RANGE}"
    assert high - low > 1.0, f"{path}: a constant volume ({low})"
    affine = image.affine
    spacing = np.sqrt((affine[:3, :3] ** 2).sum(0))
    assert np.allclose(spacing, spacing_mm, atol=1e-3), f"{path}: voxel size {spacing} mm, expected {spacing_mm}"
    axcodes = "".join(nib.aff2axcodes(affine))
    assert axcodes == "RAS", f"{path}: orientation {axcodes}, expected RAS"
    stats = {
        "file": path,
        "shape": list(data.shape),
        "dtype": str(data.dtype),
        "hu_min": low,
        "hu_max": high,
        "hu_mean": float(data.mean()),
        "spacing_mm": [round(float(s), 4) for s in spacing],
        "orientation": axcodes,
        "centre_mm": [round(float(c), 3) for c in affine[:3, :3] @ ((np.array(data.shape) - 1) / 2) + affine[:3, 3]],
    }
    return data.astype(np.float32), affine, stats


def bundle_pipeline(bundle: Path, image: str, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """The bundle's own preprocessing -> inferer -> postprocessing on the same weights (what the bundle runner does
    per case), for comparison with MONAI Label's result."""
    from monai.bundle import ConfigParser

    if str(bundle) not in sys.path:
        sys.path.insert(0, str(bundle))
    parser = ConfigParser()
    parser.read_config([str(bundle / "configs" / "common.yaml"), str(bundle / "configs" / "inference.yaml")])
    parser["bundle_root"] = str(bundle)
    parser["num_inference_steps"] = steps
    network = parser.get_parsed_content("network_def")
    from scripts.checkpoint import load_network_weights

    load_network_weights(network, bundle / "models" / "model.pt", parser.get_parsed_content("model_config"), ("model",))
    network.eval()
    data = parser.get_parsed_content("preprocessing")({"image": image})
    views, mask = torch.as_tensor(data["image"]).float(), torch.as_tensor(data["image_mask"]).bool()
    data["pred"] = parser.get_parsed_content("inferer")(views[None], network, view_mask=mask[None])[0]
    pred = parser.get_parsed_content("postprocessing")(data)["pred"]
    return pred[0].numpy(), np.asarray(pred.affine, dtype=np.float64)


def check_server(url: str, model: str, studies: Path, steps: int, grid: int, spacing_mm: float, work: Path) -> dict:
    """``POST /infer/<model>`` by datastore id (the CT) and by file upload (the PA PNG); check the returned NIfTI."""
    import requests

    info = requests.get(f"{url}/info/", timeout=60)
    info.raise_for_status()
    models = info.json().get("models", {})
    assert model in models, f"server at {url} serves {sorted(models)}, not {model!r}"
    params = {"params": json.dumps({"num_inference_steps": steps})}
    report = {"models": sorted(models)}
    for name, kwargs in [
        ("server_ct_by_id", {"params": {"image": "phantom_ct", "output": "image"}, "data": params}),
        (
            "server_pa_png_upload",
            {
                "params": {"output": "image"},
                "data": params,
                "files": {"file": ("pa.png", (studies / "phantom_pa.png").read_bytes(), "image/png")},
            },
        ),
    ]:
        start = time.perf_counter()
        response = requests.post(f"{url}/infer/{model}", timeout=600, **kwargs)
        seconds = time.perf_counter() - start
        assert response.status_code == 200, f"{name}: HTTP {response.status_code}: {response.text[:500]}"
        path = work / f"{name}.nii.gz"
        path.write_bytes(response.content)
        _, _, stats = check_volume(str(path), grid, spacing_mm)
        stats["seconds"] = round(seconds, 2)
        report[name] = stats
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
        data={"params": json.dumps({"num_inference_steps": steps, **pair})},
        timeout=600,
    )
    assert response.status_code == 200, f"server_pair_json: HTTP {response.status_code}: {response.text[:500]}"
    result = response.json()
    assert result.get("views_present") == [True, True], f"server_pair_json: views {result.get('views_present')}"
    assert result.get("shape") == [grid] * 3 and result.get("spacing_mm") == [spacing_mm] * 3, result
    report["server_pair_json"] = {**result, "seconds": round(time.perf_counter() - start, 2)}
    print(f"server_pair_json: views {result['views_present']}, shape {result['shape']} (JSON only)", flush=True)
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("studies", type=Path)
    parser.add_argument("--steps", type=int, default=2, help="num_inference_steps per stage (request option)")
    parser.add_argument("--out", type=Path, default=None, help="write the measurements here (JSON)")
    parser.add_argument("--server", default=None, help="check a running MONAI Label server at this URL instead")
    parser.add_argument("--model", default=None, help="the bundle's model name on the server (default: its folder)")
    args = parser.parse_args()
    bundle = args.bundle.resolve()
    if args.server:
        from monai.bundle import ConfigParser

        if str(bundle) not in sys.path:
            sys.path.insert(0, str(bundle))
        config = ConfigParser()
        config.read_config([str(bundle / "configs" / "common.yaml"), str(bundle / "configs" / "inference.yaml")])
        config["bundle_root"] = str(bundle)
        grid = int(config.get_parsed_content("stages")[-1]["grid_size"])
        spacing_mm = float(config.get_parsed_content("fov_mm")) / grid
        work = (args.out.parent if args.out else Path.cwd()).resolve()
        report = check_server(
            args.server.rstrip("/"), args.model or bundle.name, args.studies, args.steps, grid, spacing_mm, work
        )
        if args.out:
            args.out.write_text(json.dumps(report, indent=2))
        return 0

    import monai
    import monailabel

    report: dict = {
        "versions": {
            "monailabel": monailabel.__version__,
            "monai": monai.__version__,
            "torch": torch.__version__,
            "numpy": np.__version__,
            "python": sys.version.split()[0],
        }
    }
    start = time.perf_counter()
    app = load_app()
    task = app.XrayToCTInferTask(str(bundle), conf={})
    assert task.is_valid(), f"BundleInferTask refused {bundle} (see its warning above)"
    report["task_init_s"] = round(time.perf_counter() - start, 2)
    stages = task.bundle_config.get_parsed_content("stages")
    grid = int(stages[-1]["grid_size"])
    spacing_mm = float(task.bundle_config.get_parsed_content("fov_mm")) / grid
    report["expected"] = {"shape": [grid] * 3, "spacing_mm": spacing_mm, "hu_range": list(HU_RANGE)}

    cases = [
        ("ct", str(args.studies / "phantom_ct.nii.gz"), [True, True]),
        ("pa_png", str(args.studies / "phantom_pa.png"), [True, False]),
    ]
    results = {}
    for name, image, views in cases:
        request = {"model": bundle.name, "image": image, "device": "cpu", "num_inference_steps": args.steps}
        start = time.perf_counter()
        label, result = task(request)
        seconds = time.perf_counter() - start
        volume, affine, stats = check_volume(label, grid, spacing_mm)
        assert result.get("views_present") == views, f"{name}: views {result.get('views_present')}, expected {views}"
        assert result.get("shape") == [grid] * 3, f"{name}: result JSON shape {result.get('shape')}"
        stats.update(
            seconds=round(seconds, 2),
            latencies=result.get("latencies", {}),
            views_present=result["views_present"],
            mean_std_hu=result.get("mean_std_hu"),
        )
        results[name] = (volume, affine)
        report[name] = stats
        print(
            f"{name}: {stats['shape']} {stats['dtype']} HU [{stats['hu_min']:.0f}, {stats['hu_max']:.0f}] "
            f"{stats['spacing_mm']} mm {stats['orientation']}, views {views}: {seconds:.1f} s",
            flush=True,
        )

    # Two views and the PA alone must not give the same CT (a network that ignores its input would).
    change = float(np.abs(results["ct"][0] - results["pa_png"][0]).mean())
    assert change > 1.0, f"the CT from two views and from the PA alone differ by {change} HU on average"
    report["ct_vs_pa_png_mean_abs_difference_hu"] = change

    # The same CT through the bundle's own pieces: MONAI Label must return exactly what the bundle computes.
    start = time.perf_counter()
    reference, reference_affine = bundle_pipeline(bundle, cases[0][1], args.steps)
    volume, affine = results["ct"]
    difference = float(np.abs(volume - reference).max())
    assert np.allclose(affine, reference_affine, atol=1e-4), f"affine {affine} != bundle's {reference_affine}"
    assert difference <= 0.5, f"MONAI Label's CT differs from the bundle pipeline's by up to {difference} HU"
    report["bundle_pipeline"] = {"max_abs_difference_hu": difference, "seconds": round(time.perf_counter() - start, 2)}
    print(f"bundle pipeline vs MONAI Label (ct): max |difference| {difference:.3g} HU", flush=True)

    if args.out:
        args.out.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
