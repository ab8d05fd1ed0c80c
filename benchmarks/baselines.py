"""Honest baselines: the 3D U-Net regression before and after its fix, against the best constant volume.

    python benchmarks/baselines.py all       [--root /tmp/baselines] [--epochs 15] [--val_interval 3]
    python benchmarks/baselines.py train     --variant before|offset|offset_lr|coarse|coarse_long [--epochs N]
    python benchmarks/baselines.py evaluate  # every trained variant, EMA and raw weights, one evaluate.yaml run
    python benchmarks/baselines.py report    # benchmarks/results/baselines.{json,md}

* Data: ``train.yaml``'s synthetic default at the shipped baselines' size (``--synthetic_count 40``: prepare seeds
  0–39, 128³ × 2.5 mm; 32 training, 4 validation cases) under ``--root``; every output under ``--root`` too
  (never ``bundle/models``).
* Training: ``train.yaml`` + ``stages/baseline_unet3d.yaml`` (AdamW, cosine schedule, EMA 0.01, MSE + λ·DRR loss,
  batch 2), one thread per run (``OMP_NUM_THREADS=1``), validation (4 phantoms, the EMA weights) every
  ``--val_interval`` epochs: the training curve. The variants (``VARIANTS``) differ only in the keys they override;
  ``before`` runs the code of :data:`BEFORE_COMMIT` (PyTorch's default init of the output layer) with the stage entry
  and learning rate the shipped ``models/baselines/unet_3d.pt`` was trained with.
* Evaluation: ``evaluate.yaml``'s 7 held-out phantoms (seeds 1000–1007) with every variant as a baseline, the EMA
  weights (``model.pt``, what training ships) and the raw weights of the last step (``training_state.pt``) side by
  side; the best constant volume is the per-case target mean. The cascade is run with 2 sampling steps only to
  satisfy the workflow: its row is not reported here (README: 20 steps).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import tarfile
import tempfile
from datetime import datetime
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "bundle"), str(ROOT)]

from benchmarks.domain_gap import _bundle  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
#: The last commit before the fix: its ``LiftedRegressor`` starts from PyTorch's default init.
BEFORE_COMMIT = "ab22393"
#: The stage entry and learning rate of the shipped models/baselines/unet_3d.pt.
SHIPPED_STAGE = {"grid_size": 64, "decoder": "unet", "lift_channels": 16, "unet_features": [8, 16, 32, 64, 128, 8]}
VARIANTS = {
    "before": {
        "label": f"shipped recipe, code of {BEFORE_COMMIT} (default init, lr 3e-4)",
        "code": BEFORE_COMMIT,
        "overrides": {"stages": [SHIPPED_STAGE], "learning_rate": 3e-4},
    },
    "offset": {
        "label": "zero output layer + offset −0.71, lr 3e-4",
        "overrides": {"stages": [dict(SHIPPED_STAGE, output_offset=-0.71)], "learning_rate": 3e-4},
    },
    "offset_lr": {
        "label": "zero output layer + offset −0.71, lr 1e-3",
        "overrides": {"stages": [dict(SHIPPED_STAGE, output_offset=-0.71)], "learning_rate": 1e-3},
    },
    "coarse": {
        "label": "stages/baseline_unet3d.yaml as shipped now (offset, U-Net on 32³ + learned upsampling, lr 1e-3)",
        "overrides": {},
    },
    "coarse_long": {
        "label": "the same, 60 epochs",
        "overrides": {},
        "epochs": 60,
        "val_interval": 10,
    },
}
METRICS = ("psnr", "ssim", "mae_hu", "drr_error", "x2ct_psnr", "x2ct_ssim")
FORMATS = (".2f", ".3f", ".0f", ".3f", ".2f", ".3f")
LINE = re.compile(r"^(\S+ \S+) - .*?Epoch\[(\d+)\] Metrics -- (.*val_psnr.*)$")


def _code(root: Path, commit: str) -> Path:
    """``bundle/`` of ``commit`` extracted under ``root`` (``git archive``), for a run of the code before the fix."""
    folder = root / f"code_{commit}"
    if not (folder / "bundle" / "scripts").exists():
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile() as archive:
            subprocess.run(["git", "-C", str(ROOT), "archive", commit, "bundle"], stdout=archive, check=True)
            archive.seek(0)
            with tarfile.open(fileobj=archive) as tar:
                tar.extractall(folder, filter="data")
    return folder / "bundle"


def _env(code: Path | None = None) -> dict:
    """One thread; ``code``: the ``bundle/`` whose ``scripts`` package the run imports (default: this checkout's)."""
    return dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(code or ROOT / "bundle"))


def _curve(log: Path, iterations_per_epoch: int) -> list[dict]:
    """Validation lines of a training log: iteration, seconds since the first (untrained) validation, metrics."""
    rows, start = [], None
    for line in log.read_text().splitlines():
        match = LINE.match(line)
        if match:
            when = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f")
            start = start or when
            values = dict(re.findall(r"(val_\w+): (\S+)", match.group(3)))
            epoch = int(match.group(2))
            rows.append(
                {
                    "epoch": epoch,
                    "iteration": epoch * iterations_per_epoch,
                    "wall_s": round((when - start).total_seconds(), 1),
                    **{k[4:]: float(v) for k, v in values.items()},
                }
            )
    return rows


def _iterations_per_epoch(root: Path, batch_size: int = 2) -> int:
    datalist = json.loads((root / "data" / "datalist.json").read_text())
    return math.ceil(len(datalist["training"]) / batch_size)


def train(variant: str, root: Path, epochs: int, val_interval: int) -> dict:
    """One training run of ``variant``; the record (budget, wall time, validation curve)."""
    spec = VARIANTS[variant]
    epochs, val_interval = spec.get("epochs", epochs), spec.get("val_interval", val_interval)
    folder = root / variant
    overrides = {
        "dataset_dir": str(root / "data"),
        "synthetic_count": "40",
        "ckpt_dir": str(folder / "ckpt"),
        "output_dir": str(folder / "runs"),
        "max_epochs": str(epochs),
        "val_interval": str(val_interval),
        "progress_bar": "False",  # Python literals: fire reads "false" as a (truthy) string
        **{k: v if isinstance(v, str) else json.dumps(v) for k, v in spec["overrides"].items()},
    }
    code = _code(root, spec["code"]) if "code" in spec else None
    seconds = _bundle(
        ["common.yaml", "train.yaml", "stages/baseline_unet3d.yaml"], overrides, folder / "log", _env(code)
    )
    per_epoch = _iterations_per_epoch(root)
    record = {
        "variant": variant,
        "label": spec["label"],
        "code": spec.get("code", "this checkout"),
        "overrides": spec["overrides"],
        "epochs": epochs,
        "iterations": epochs * per_epoch,
        "wall_s": round(seconds, 1),
        "curve": _curve(folder / "log", per_epoch),
    }
    (folder / "train_record.json").write_text(json.dumps(record, indent=2))
    return record


def _raw_weights(folder: Path) -> Path:
    """The last step's raw (non-EMA) weights of a run as a weights file with its records, beside ``model.pt``."""
    import torch
    from scripts.checkpoint import save_checkpoint

    stage = folder / "ckpt" / "stage_0"
    state = torch.load(stage / "training_state.pt", weights_only=True)
    path = stage / "model_raw.pt"
    save_checkpoint(path, state["network"], model_config=state["model_config"], config=state["config"])
    return path


def training_mean(root: Path, size: int = 64) -> dict:
    """Mean of the training CTs on the CT scale at ``size``³ (what ``output_offset`` is set to), and its spread."""
    import monai
    from monai.bundle import ConfigParser
    from monai.transforms import Compose

    parser = ConfigParser()
    parser.read_config([str(ROOT / "bundle" / "configs" / f) for f in ("common.yaml", "train.yaml")])
    parser["bundle_root"], parser["dataset_dir"] = str(ROOT / "bundle"), str(root / "data")
    parser["stages"] = [{"grid_size": size}]  # only the resized copy is read
    steps = parser.get_parsed_content("ct_preprocessing") + parser.get_parsed_content("postprocessing")[:2]
    transform = Compose(steps)
    cases = monai.data.load_decathlon_datalist(str(root / "data" / "datalist.json"), True, "training")
    means = [float(transform(case)[f"image_{size}"].mean()) for case in cases]
    return {"mean": float(np.mean(means)), "std_over_cases": float(np.std(means)), "cases": len(means), "grid": size}


def evaluate(root: Path, variants: list[str]) -> dict:
    """One ``evaluate.yaml`` run with each trained variant's EMA and raw weights as baselines; the means."""
    baselines = {}
    for variant in variants:
        stage = root / variant / "ckpt" / "stage_0"
        if (stage / "model.pt").exists():
            baselines[variant] = str(stage / "model.pt")
            baselines[f"{variant}_raw"] = str(_raw_weights(root / variant))
    baselines["shipped"] = str(ROOT / "bundle" / "models" / "baselines" / "unet_3d.pt")  # for reference
    out = root / "evaluation"
    overrides = {
        "ckpt_path": str(ROOT / "bundle" / "models" / "model.pt"),
        "evaluation#baselines": json.dumps(baselines),
        "dataset_dir": str(root / "eval_phantoms"),
        "output_dir": str(out),
        "num_inference_steps": "2",
        "evaluation_figures": "False",
        "progress_bar": "False",
        "overwrite": "True",
    }
    seconds = _bundle(["common.yaml", "inference.yaml", "evaluate.yaml"], overrides, out / "log", _env())
    mean = json.loads((out / "metrics.json").read_text())["mean"]
    record = {"wall_s": round(seconds, 1), "baselines": baselines, "mean": mean}
    (root / "eval_record.json").write_text(json.dumps(record, indent=2))
    return record


def _row(cells: list) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _cells(m: dict) -> list[str]:
    """PSNR, SSIM, MAE, DRR error, biplanar PSNR and SSIM of one method, formatted."""
    return [format(m[k], f) for k, f in zip(METRICS, FORMATS, strict=True)]


def report(root: Path) -> None:
    """benchmarks/results/baselines.{json,md} from the records under ``root``."""
    from benchmarks.run import stamp_for

    evaluation = json.loads((root / "eval_record.json").read_text())
    mean = evaluation["mean"]
    runs = []
    for variant in VARIANTS:
        path = root / variant / "train_record.json"
        if path.exists():
            run = json.loads(path.read_text())
            run["ema"] = {k: mean[variant][k] for k in METRICS}
            run["raw"] = {k: mean[f"{variant}_raw"][k] for k in METRICS}
            runs.append(run)
    constant = {k: mean["best_constant"][k] for k in METRICS}
    content = {
        "stamp": stamp_for("cpu", "shared machine: 2 cores with other jobs; wall times are not speeds"),
        "threads": "OMP_NUM_THREADS=1 per training run",
        "data": "40 synthetic phantoms (prepare seed 0, 128³ × 2.5 mm): 32 training, 4 validation; evaluation: "
        "evaluate.yaml's 7 held-out phantoms (seeds 1000-1007)",
        "training_mean_ct_scale": json.loads((root / "training_mean.json").read_text()),
        "best_constant": constant,
        "runs": runs,
        "definitions": "evaluate.yaml / scripts/engines/evaluation.py; ema: the EMA weights (model.pt, what a "
        "training run ships); raw: the last step's weights (training_state.pt)",
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "baselines.json").write_text(json.dumps(content, indent=2))
    stamp = content["stamp"]
    lines = [
        f"# Baselines: the 3D U-Net regression against the best constant ({stamp['machine']}, torch "
        f"{stamp['torch']}, {stamp['date']})",
        "",
        f"{stamp['note']}; {content['threads']}. {content['data']}. Training: train.yaml + "
        "stages/baseline_unet3d.yaml, batch 2, MSE + 0.3·DRR loss, AdamW with a cosine schedule, EMA momentum 0.01; "
        "each variant overrides only the keys in `benchmarks/baselines.py`.",
        "",
        _row(
            [
                "variant",
                "iterations",
                "train s",
                "weights",
                "PSNR dB",
                "3D SSIM",
                "MAE HU",
                "DRR err",
                "PSNR, biplanar protocol dB",
                "SSIM, biplanar protocol",
            ]
        ),
        "|---" * 10 + "|",
    ]
    for run in runs:
        for weights in ("ema", "raw"):
            m = run[weights]
            lines.append(
                _row([run["label"] if weights == "ema" else "", run["iterations"], run["wall_s"], weights] + _cells(m))
            )
    if "shipped" in mean:
        m = mean["shipped"]
        lines.append(
            _row(["models/baselines/unet_3d.pt (shipped; its own training data)", 240, "–", "ema"] + _cells(m))
        )
    lines.append(_row(["**best constant volume**", "–", "–", "–"] + _cells(constant)))
    lines += [
        "",
        "Variants (`VARIANTS` in benchmarks/baselines.py; overrides on top of stages/baseline_unet3d.yaml):",
        "",
    ]
    for run in runs:
        how = f"; {run['how']}" if "how" in run else ""
        lines.append(f"* `{run['variant']}`: code {run['code']}, overrides `{json.dumps(run['overrides'])}`{how}.")
    lines += [
        "",
        "Metrics on evaluate.yaml's 7 held-out phantoms; the best constant is the per-case target mean (an oracle "
        "constant). ema: the EMA weights (model.pt, what training ships); raw: the last step's weights.",
    ]
    lines += ["", "Training curves (validation on 4 phantoms, EMA weights; PSNR on the CT scale, peak 2):", ""]
    lines += [
        _row(["variant", "iteration", "s since start", "val PSNR dB", "val SSIM", "val MAE HU"]),
        "|---" * 6 + "|",
    ]
    for run in runs:
        for point in run["curve"]:
            lines.append(
                _row(
                    [run["variant"], point["iteration"], point["wall_s"], f"{point['psnr']:.2f}"]
                    + [f"{point['ssim']:.3f}", f"{point['mae_hu']:.0f}"]
                )
            )
    training = content["training_mean_ct_scale"]
    lines += [
        "",
        f"Training-set mean on the CT scale at {training['grid']}³: {training['mean']:.4f} (std over the "
        f"{training['cases']} cases {training['std_over_cases']:.4f}); `output_offset` is set to −0.71.",
    ]
    (RESULTS / "baselines.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["train", "evaluate", "report", "all"])
    parser.add_argument("--variant", choices=VARIANTS)
    parser.add_argument("--root", type=Path, default=Path("/tmp/baselines"))
    parser.add_argument(
        "--epochs", type=int, default=15, help="the shipped unet_3d.pt's budget: 15 epochs (a variant may set its own)"
    )
    parser.add_argument("--val_interval", type=int, default=3)
    args = parser.parse_args()
    variants = [args.variant] if args.variant else list(VARIANTS)
    if args.command in ("train", "all"):
        for variant in variants:
            print(json.dumps(train(variant, args.root, args.epochs, args.val_interval), indent=2), flush=True)
    if args.command in ("evaluate", "all"):
        (args.root / "training_mean.json").write_text(json.dumps(training_mean(args.root), indent=2))
        print(json.dumps(evaluate(args.root, list(VARIANTS)), indent=2), flush=True)
    if args.command in ("report", "all"):
        report(args.root)


if __name__ == "__main__":
    main()
