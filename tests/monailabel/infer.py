"""Inference through MONAI Label's ``BundleInferTask`` (the app's two models, ``monailabel_app/lib/infers.py``), as the
server runs them: ``task(request)`` -> a result file and JSON. Run by run.sh in the MONAI Label environment.

* The CT model on the phantom CT (PA + lateral rendered by the bundle) and on its PA radiograph (PNG): a 3D int16
  NIfTI in HU on the last stage grid, RAS, ``fov_mm / grid`` mm voxels; the result JSON names the views used; the two
  inputs give different CTs (the network sees its input); for the CT, the same volume as the bundle's own
  ``preprocessing`` -> ``inferer`` -> ``postprocessing`` with the same weights (within the 0.5 HU of rounding).
* The CT model asked for a label format (``.nrrd``, ``uint8``, as 3D Slicer's module asks): still int16 HU, the same
  values as the NIfTI, and the result JSON says why.
* The tissue model: a uint8 label map equal to the tissue labels of the CT it writes beside it (the CT the app
  stores in the datastore), which is the CT model's CT for the same request.
* Requests the app refuses before any work: an extension that holds no 3D volume, a dtype that is no number type,
  zero sampling steps.

Usage: python infer.py BUNDLE STUDIES [--steps N] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from volumes import TISSUE_NAMES, check_ct, check_tissue, load_app


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("studies", type=Path)
    parser.add_argument("--steps", type=int, default=2, help="num_inference_steps per stage (request option)")
    parser.add_argument("--out", type=Path, default=None, help="write the measurements here (JSON)")
    args = parser.parse_args()
    bundle = args.bundle.resolve()

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
    from lib.infers import TissueInferTask, XrayToCTInferTask
    from lib.results import RequestRefused

    task = XrayToCTInferTask(str(bundle), conf={})
    assert task.is_valid(), f"BundleInferTask refused {bundle} (see its warning above)"
    tissue = TissueInferTask(str(bundle), conf={})
    tissue._networks = task._networks
    report["task_init_s"] = round(time.perf_counter() - start, 2)
    assert task.type == "others" and task.labels == {}, (task.type, task.labels)
    assert tissue.type == "segmentation" and list(tissue.labels) == TISSUE_NAMES, (tissue.type, tissue.labels)
    assert list(tissue.labels.values()) == list(range(1, len(TISSUE_NAMES) + 1)), tissue.labels
    assert app.XrayToCTApp.__bases__[0].__name__ == "MONAILabelApp"
    stages = task.bundle_config.get_parsed_content("stages")
    grid = int(stages[-1]["grid_size"])
    spacing_mm = float(task.bundle_config.get_parsed_content("fov_mm")) / grid
    report["expected"] = {"shape": [grid] * 3, "spacing_mm": spacing_mm}

    def run(name: str, infer_task, image: str, **params):
        request = {"model": bundle.name, "image": image, "device": "cpu", "num_inference_steps": args.steps, **params}
        begin = time.perf_counter()
        file, result = infer_task(request)
        return file, result, round(time.perf_counter() - begin, 2)

    ct_image, pa_image = str(args.studies / "phantom_ct.nii.gz"), str(args.studies / "phantom_pa.png")
    results = {}
    for name, image, views in (("ct", ct_image, [True, True]), ("pa_png", pa_image, [True, False])):
        file, result, seconds = run(name, task, image)
        volume, affine, stats = check_ct(file, grid, spacing_mm)
        assert result.get("views_present") == views, f"{name}: views {result.get('views_present')}, expected {views}"
        assert result.get("shape") == [grid] * 3, f"{name}: result JSON shape {result.get('shape')}"
        assert result.get("result_dtype") == "int16" and "result_dtype_note" not in result, result
        stats.update(seconds=seconds, latencies=result.get("latencies", {}), views_present=views)
        stats["mean_std_hu"] = result.get("mean_std_hu")
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

    # Slicer's label format asked of the CT model: the same HU in int16, never wrapped into uint8.
    for dtype in ("uint8", "uint16"):
        file, result, seconds = run(f"ct_{dtype}", task, pa_image, result_extension=".nrrd", result_dtype=dtype)
        assert file.endswith(".nrrd"), file
        volume, affine, stats = check_ct(file, grid, spacing_mm)
        assert result["result_dtype"] == "int16" and dtype in result["result_dtype_note"], result
        assert np.array_equal(volume, results["pa_png"][0]), f"{dtype} request: not the same HU as the NIfTI"
        assert np.allclose(affine, results["pa_png"][1], atol=1e-4), f"{dtype} request: affine {affine}"
        report[f"ct_as_{dtype}_nrrd"] = {**stats, "seconds": seconds, "note": result["result_dtype_note"]}
        print(f"CT asked as .nrrd {dtype}: {stats['dtype']} HU [{stats['hu_min']:.0f}, {stats['hu_max']:.0f}]")

    # The tissue model: its label map is the tissue labels of the CT it stores, the CT model's CT.
    file, result, seconds = run("tissue", tissue, ct_image, result_extension=".nrrd", result_dtype="uint8")
    ct_file = result.get("synthetic_ct_file")
    assert ct_file, f"tissue model: no synthetic_ct_file in {sorted(result)}"
    ct, ct_affine, _ = check_ct(ct_file, grid, spacing_mm)
    assert np.array_equal(ct, results["ct"][0]), "the tissue model's CT differs from the CT model's for the same input"
    counts = check_tissue(file, ct, ct_affine)
    assert result["label_names"] == dict(zip(TISSUE_NAMES, range(1, 5), strict=True)), result["label_names"]
    assert [c["name"] for c in result["label_info"]] == TISSUE_NAMES and all(
        len(c["color"]) == 3 for c in result["label_info"]
    )
    report["tissue"] = {"voxels": counts, "volume_ml": result["volume_ml"], "seconds": seconds}
    print(f"tissue label map: {counts} voxels, {result['volume_ml']} mL: {seconds:.1f} s", flush=True)

    # Refused before any work, each with a message naming the key.
    for params, key in (
        ({"result_extension": ".png"}, "result_extension"),
        ({"result_dtype": "bool"}, "result_dtype"),
        ({"num_inference_steps": 0}, "num_inference_steps"),
    ):
        begin = time.perf_counter()
        try:
            run("refused", task, pa_image, **params)
        except RequestRefused as error:
            assert key in str(error), f"{params}: message {error!r} does not name {key}"
            assert time.perf_counter() - begin < 1.0, f"{params}: refused only after {time.perf_counter() - begin} s"
            report.setdefault("refused", {})[key] = str(error)
            print(f"refused {params}: {error}")
        else:
            raise AssertionError(f"{params} was not refused")

    # The same CT through the bundle's own pieces: MONAI Label must return what the bundle computes (whole HU).
    begin = time.perf_counter()
    reference, reference_affine = bundle_pipeline(bundle, ct_image, args.steps)
    volume, affine = results["ct"]
    difference = float(np.abs(volume - reference).max())
    assert np.allclose(affine, reference_affine, atol=1e-4), f"affine {affine} != bundle's {reference_affine}"
    assert difference <= 0.5 + 1e-3, f"MONAI Label's CT differs from the bundle pipeline's by up to {difference} HU"
    report["bundle_pipeline"] = {"max_abs_difference_hu": difference, "seconds": round(time.perf_counter() - begin, 2)}
    print(f"bundle pipeline vs MONAI Label (ct): max |difference| {difference:.3g} HU (int16 rounding)", flush=True)

    if args.out:
        args.out.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
