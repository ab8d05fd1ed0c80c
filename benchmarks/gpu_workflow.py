"""The whole training workflow on one device, as a user runs it: ``quick_2stage`` (64³ -> 128³) trained on the
synthetic phantoms for a wall-clock budget, resumed once, then evaluated.

    python benchmarks/gpu_workflow.py --device cuda --out_dir /tmp/gpu_workflow --budget_s 180
    python benchmarks/gpu_workflow.py --dry_run --out_dir /tmp/gpu_workflow_dry    # CPU, tiny sizes, under a minute

Every step is a stock ``python -m monai.bundle run`` subprocess (``benchmarks.domain_gap.bundle_command``) whose
output goes to ``out_dir/logs/<step>.log``; every path it writes is under ``out_dir`` (never ``bundle/models``):

1. ``stage_0``: ``train.yaml`` + ``stages/quick_2stage.yaml``, stage 0, stopped by ``time_limit_s`` (20 % of the
   budget); ``max_epochs`` is far out of reach, so the time limit ends every training run.
2. ``stage_0_resumed``: the same command with ``--resume true`` for another 20 %: it continues from
   ``ckpt/stage_0/training_state.pt``. The iterations before and after come from that file, and the runner's
   "resumed from ... at iteration N" line must name the same N.
3. ``stage_1``: stage 1 for the remaining 60 %, on the stage-0 weights (``load_earlier_stages``).
4. ``evaluation``: ``inference.yaml`` + ``evaluate.yaml`` on ``ckpt/stage_1/model.pt``: the held-out phantoms it
   prepares (seeds 1000+), the shipped baselines (``models/baselines/*.pt``, trained on the tiny preset; they share
   its geometry, physics, field of view and HU window, which is all a baseline must share, so they are scored beside
   the model) and the best constant volume. No regression prior (``--regression_prior#ckpt_path false``; the shipped
   prior belongs to the shipped model only); DRR guidance at its default ``auto``; one sample per case.

On CUDA, training and sampling run under bf16 autocast (``amp``); ``device`` and ``amp`` are passed explicitly so
that the record says what ran. The cosine learning-rate schedule spans ``max_epochs``, so within a few minutes the
rate stays near its peak: this measures the workflow and a first quality number, not a converged model.

``dry_run``: the same commands with tiny sizes (16³ -> 32³ narrow stages, 4 phantoms of 32³ at 10 mm, one
sampling step, a 32³ protocol grid), evaluated on the training data set's held-out test phantom instead of freshly
prepared 128³ ones, so that the whole path runs on a CPU in under a minute; the time limits are then 1 s and most of
the wall time is the four processes starting (importing MONAI takes 5-9 s each on a shared 2-core machine).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "bundle"), str(ROOT)]

from benchmarks.domain_gap import _bundle, bundle_command  # noqa: E402

TRAIN_FILES = ["common.yaml", "train.yaml", "stages/quick_2stage.yaml"]
EVAL_FILES = ["common.yaml", "inference.yaml", "evaluate.yaml"]
#: Training runs: name, stage, share of the budget, resumed.
RUNS = (("stage_0", 0, 0.2, False), ("stage_0_resumed", 0, 0.2, True), ("stage_1", 1, 0.6, False))
#: Out of reach within any budget here: the time limit stops each run.
MAX_EPOCHS = 100_000
METRICS = ("psnr", "ssim", "mae_hu", "drr_error", "x2ct_psnr", "x2ct_ssim")
#: Tiny sizes of the dry run (the detector keeps its default, so the shipped baselines still run).
DRY_TRAIN = {
    "stages": [
        {"grid_size": 16, "patch_size": 4, "width": 32, "depth": 1, "heads": 2},
        {"grid_size": 32, "patch_size": 4, "width": 32, "depth": 1, "heads": 2},
    ],
    "encoder": {"stem_channels": [8, 16], "patch_size": 4, "dim": 32, "heads": 2, "depth": 1, "global_dim": 32},
    "synthetic_count": 4,  # 2 training, 1 validation, 1 test
    "synthetic_size": 32,
    "synthetic_spacing_mm": 10.0,
    "num_inference_steps": 1,
}
DRY_EVAL = {"num_inference_steps": 1, "protocol_size": 32}
_ENGINE_TIME = re.compile(r"CascadeDiffusionTrainer - INFO - Engine run finished\. Time taken: (\d+):(\d+):([\d.]+)")
_RESUMED = re.compile(r"resumed from \S+ at iteration (\d+)")
_TIME_LIMIT = "Reached the time limit"


def _env() -> dict:
    """The caller's environment with the bundle's ``scripts`` importable (no editable install needed)."""
    path = [str(ROOT / "bundle"), str(ROOT), os.environ.get("PYTHONPATH", "")]
    return dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in path if p))


def _relative(cmd: list[str], out_dir: Path) -> list[str]:
    """``cmd`` as recorded: paths under ``out_dir`` relative to it, the configs relative to the repository."""
    out = [a.replace(f"{out_dir}{os.sep}", "").replace(str(out_dir), ".") for a in cmd]
    return ["python" if a == sys.executable else a.replace(f"{ROOT}{os.sep}", "") for a in out]


def _iteration(state: Path) -> int:
    """The trainer's iteration recorded in a training state file."""
    from scripts.checkpoint import load_checkpoint

    return int(load_checkpoint(state)["trainer"]["iteration"])


def _engine_seconds(log: Path) -> float | None:
    """The trainer's own run time (s, from ignite's last line; set-up and process start excluded)."""
    found = _ENGINE_TIME.findall(log.read_text(errors="replace"))
    return None if not found else int(found[-1][0]) * 3600 + int(found[-1][1]) * 60 + float(found[-1][2])


def run_workflow(device: str, out_dir: Path, budget_s: float, dry_run: bool, progress=None) -> dict:
    """Train ``quick_2stage`` for ``budget_s`` seconds of training time on ``device``, resume it once, evaluate it.

    Args:
        device: ``"cuda"`` (bf16 autocast) or ``"cpu"``.
        out_dir: everything goes here: ``data/``, ``ckpt/``, ``runs/``, ``eval_data/`` (not in the dry run),
            ``evaluation/``, ``logs/``.
        budget_s: seconds of training over the three runs (20 / 20 / 60 %; each run's limit in whole seconds, at
            least 1); set-up, data preparation and the evaluation come on top.
        dry_run: tiny sizes (``DRY_TRAIN``, ``DRY_EVAL``), same commands.
        progress: called with a copy of the result so far after each step (a caller stopped at a time limit keeps
            what was done), or None.

    Returns:
        ``quick_2stage_{psnr,ssim,mae_hu,drr_error,x2ct_psnr,x2ct_ssim}`` (means over the evaluation's cases; PSNR in
        dB, MAE in HU), ``best_constant_psnr``, ``baseline_psnr`` (name -> dB), ``train_s_stage_{0,1}`` (the
        trainer's own time, s), ``iterations_stage_{0,1}``, ``resumed``, ``iterations_before_resume``,
        ``iterations_after_resume``, ``stopped_by`` (run -> "time limit" | "max_epochs"), ``amp``,
        ``eval_s_per_case`` (generation time per case, s), ``eval_cases``, ``sampling`` (what the evaluation ran),
        ``wall_s`` (step -> s, process start included), ``commands`` (argv lists), ``logs``, ``checkpoints`` (paths
        relative to ``out_dir``) and the settings (``device``, ``budget_s``, ``dry_run``, ``time_limits_s``).

    Raises:
        RuntimeError: a step failed (its command, log and last lines), the resumed run did not continue, or an
            evaluation case failed.
    """
    out_dir = Path(out_dir).resolve()
    amp = device.startswith("cuda")
    common = {"device": f"$torch.device('{device}')", "amp": str(amp), "progress_bar": "False"}
    result: dict = {"preset": "quick_2stage", "device": device, "budget_s": budget_s, "dry_run": dry_run, "amp": amp}
    result.update(commands=[], logs=[], wall_s={}, time_limits_s={}, stopped_by={})

    def step(name: str, files: list[str], overrides: dict) -> Path:
        log = out_dir / "logs" / f"{name}.log"
        result["commands"].append(_relative(bundle_command(files, overrides), out_dir))
        result["logs"].append(str(log.relative_to(out_dir)))
        result["wall_s"][name] = round(_bundle(files, overrides, log, _env()), 1)
        if progress is not None:
            progress(json.loads(json.dumps(result)))
        return log

    logs = {}
    for name, stage, share, resume in RUNS:
        limit = max(1, round(share * budget_s))  # ignite's TimeLimit takes whole seconds
        overrides = {
            **common,
            "stage": str(stage),
            "resume": str(resume),
            "time_limit_s": str(limit),
            "max_epochs": str(MAX_EPOCHS),
            "dataset_dir": str(out_dir / "data"),
            "ckpt_dir": str(out_dir / "ckpt"),
            "output_dir": str(out_dir / "runs" / name),
            **(DRY_TRAIN if dry_run else {}),
        }
        if resume:
            result["iterations_before_resume"] = _iteration(out_dir / "ckpt" / "stage_0" / "training_state.pt")
        logs[name] = step(name, TRAIN_FILES, overrides)
        result["time_limits_s"][name] = limit
        result["stopped_by"][name] = "time limit" if _TIME_LIMIT in logs[name].read_text() else "max_epochs"

    before = result["iterations_before_resume"]
    after = result["iterations_after_resume"] = _iteration(out_dir / "ckpt" / "stage_0" / "training_state.pt")
    logged = [int(n) for n in _RESUMED.findall(logs["stage_0_resumed"].read_text())]
    result["resumed"] = logged == [before] and after > before
    if not result["resumed"]:
        raise RuntimeError(
            f"stage 0 did not resume: iteration {before} before, {after} after, resume lines {logged} in "
            f"{logs['stage_0_resumed']}."
        )
    result["iterations_stage_0"] = after
    result["iterations_stage_1"] = _iteration(out_dir / "ckpt" / "stage_1" / "training_state.pt")
    for stage, names in ((0, ("stage_0", "stage_0_resumed")), (1, ("stage_1",))):
        seconds = [_engine_seconds(logs[n]) for n in names]
        result[f"train_s_stage_{stage}"] = None if None in seconds else round(sum(seconds), 1)
    result["checkpoints"] = {f"stage_{s}": f"ckpt/stage_{s}/model.pt" for s in (0, 1)}

    evaluation = out_dir / "evaluation"
    overrides = {
        **common,
        "ckpt_path": str(out_dir / "ckpt" / "stage_1" / "model.pt"),
        "dataset_dir": str(out_dir / ("data" if dry_run else "eval_data")),  # dry run: the training set's test case
        "output_dir": str(evaluation),
        "regression_prior#ckpt_path": "false",
        "num_samples": "1",
        "evaluation_figures": "False",
        "overwrite": "True",
        **(DRY_EVAL if dry_run else {}),
    }
    log = step("evaluation", EVAL_FILES, overrides)
    report = json.loads((evaluation / "inference_report.json").read_text())
    if report.get("failed") or not report.get("done"):
        raise RuntimeError(f"evaluation: {len(report.get('failed', []))} failed cases, see {log}.")
    metrics = json.loads((evaluation / "metrics.json").read_text())
    mean = metrics["mean"]
    result.update({f"quick_2stage_{k}": mean["model"][k] for k in METRICS})
    result["best_constant_psnr"] = mean.get("best_constant", {}).get("psnr")
    result["baseline_psnr"] = {m: v["psnr"] for m, v in mean.items() if m not in ("model", "best_constant")}
    result["eval_cases"] = metrics["cases"]
    result["eval_s_per_case"] = mean["model"]["seconds"]
    first = report["done"][0]
    result["sampling"] = {"num_samples": first["num_samples"], **first["sampling"]}
    return result


def _number(value, digits: int) -> str:
    return "-" if value is None or (isinstance(value, float) and not math.isfinite(value)) else f"{value:.{digits}f}"


def markdown(result: dict) -> list[str]:
    """A small table of :func:`run_workflow`'s result (one row per quantity)."""
    s = result["sampling"]
    baselines = ", ".join(f"{k} {_number(v, 2)}" for k, v in sorted(result["baseline_psnr"].items())) or "off"
    mode = "dry run (tiny sizes)" if result["dry_run"] else f"{result['budget_s']:.0f} s training budget"
    rows = [
        ("device, autocast", f"{result['device']}, {'bf16' if result['amp'] else 'off'}"),
        (
            "stage 0: iterations, train s",
            f"{result['iterations_stage_0']} (resumed at {result['iterations_before_resume']}), "
            f"{_number(result['train_s_stage_0'], 1)}",
        ),
        ("stage 1: iterations, train s", f"{result['iterations_stage_1']}, {_number(result['train_s_stage_1'], 1)}"),
        ("stopped by", ", ".join(f"{k}: {v}" for k, v in result["stopped_by"].items())),
        (
            "evaluation",
            f"{result['eval_cases']} cases, {s['num_samples']} sample, {s['num_inference_steps']} steps/stage, "
            f"DRR guidance {'on' if s['drr_guidance_applied'] else 'off'}, "
            f"prior {'on' if s['regression_prior'] else 'off'}, {_number(result['eval_s_per_case'], 2)} s/case",
        ),
        (
            "PSNR dB / SSIM / MAE HU / DRR error",
            f"{_number(result['quick_2stage_psnr'], 2)} / {_number(result['quick_2stage_ssim'], 3)} / "
            f"{_number(result['quick_2stage_mae_hu'], 1)} / {_number(result['quick_2stage_drr_error'], 4)}",
        ),
        ("best constant PSNR dB", _number(result["best_constant_psnr"], 2)),
        ("baselines PSNR dB (tiny preset)", baselines),
    ]
    lines = [f"| quick_2stage workflow, {mode} | |", "|---|---|"]
    return lines + [f"| {name} | {value} |" for name, value in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out_dir", type=Path, required=True)
    parser.add_argument("--budget_s", type=float, default=180.0)
    parser.add_argument("--dry_run", action="store_true", help="tiny sizes on the CPU")
    args = parser.parse_args()
    device = "cpu" if args.dry_run else args.device
    start = time.perf_counter()
    result = run_workflow(device, args.out_dir, args.budget_s, args.dry_run)
    result["total_wall_s"] = round(time.perf_counter() - start, 1)
    (args.out_dir / "gpu_workflow.json").write_text(json.dumps(result, indent=2))
    print("\n".join(markdown(result)))


if __name__ == "__main__":
    main()
