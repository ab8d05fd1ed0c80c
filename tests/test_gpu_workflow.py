"""benchmarks/gpu_workflow.py in its dry run: the whole training workflow (two stages, a resume, the evaluation) as
four bundle-runner processes on the CPU at tiny sizes."""

from __future__ import annotations

import math
import sys

import pytest
from conftest import ROOT

from benchmarks import domain_gap
from benchmarks.gpu_workflow import markdown, run_workflow


def test_dry_run_trains_resumes_and_evaluates(tmp_path):
    result = run_workflow("cpu", tmp_path, budget_s=2.0, dry_run=True)
    assert result["time_limits_s"] == {"stage_0": 1, "stage_0_resumed": 1, "stage_1": 1}
    assert set(result["stopped_by"].values()) == {"time limit"}  # max_epochs is out of reach
    # The resumed run continued from the state the first one wrote, and trained on.
    assert result["resumed"] and result["iterations_after_resume"] > result["iterations_before_resume"] >= 1
    assert result["iterations_stage_0"] == result["iterations_after_resume"] and result["iterations_stage_1"] >= 1
    assert all((tmp_path / path).is_file() for path in result["checkpoints"].values())
    assert all((tmp_path / "ckpt" / f"stage_{s}" / "training_state.pt").is_file() for s in (0, 1))
    assert 0.0 < result["train_s_stage_0"] and 0.0 < result["train_s_stage_1"]
    assert result["amp"] is False
    # The evaluation: the model, the best constant and the shipped (tiny-preset) baselines on the same case.
    assert result["eval_cases"] == 1 and result["eval_s_per_case"] > 0.0
    assert math.isfinite(result["quick_2stage_psnr"]) and 0.0 < result["quick_2stage_psnr"] < 60.0
    assert 0.0 < result["quick_2stage_mae_hu"] < 3000.0 and result["quick_2stage_drr_error"] > 0.0
    assert math.isfinite(result["best_constant_psnr"])
    assert set(result["baseline_psnr"]) == {"unet_3d", "lifted_prior"}
    assert result["sampling"]["num_samples"] == 1 and result["sampling"]["num_inference_steps"] == 1
    assert result["sampling"]["regression_prior"] is None
    # What ran, recorded without machine-specific paths; each step's log is there.
    commands = result["commands"]
    assert [c[c.index("--stage") + 1] for c in commands[:3]] == ["0", "0", "1"]
    assert commands[1][commands[1].index("--resume") + 1] == "True"
    assert commands[3][commands[3].index("--ckpt_path") + 1] == "ckpt/stage_1/model.pt"
    assert not any(str(tmp_path) in a or str(ROOT) in a for c in commands for a in c)
    assert all((tmp_path / log).stat().st_size > 0 for log in result["logs"])
    table = markdown(result)
    assert table[1] == "|---|---|" and any("resumed at" in row for row in table)


def test_a_failed_step_names_its_command_log_and_last_lines(tmp_path, monkeypatch):
    failing = [sys.executable, "-c", "import sys; print('first'); print('bad setting: stage'); sys.exit(3)"]
    monkeypatch.setattr(domain_gap, "bundle_command", lambda files, overrides: failing)
    with pytest.raises(RuntimeError) as info:
        run_workflow("cpu", tmp_path, budget_s=2.0, dry_run=True)
    log = tmp_path / "logs" / "stage_0.log"
    assert str(info.value) == f"{' '.join(failing)} exited with 3; log {log}, last lines:\nfirst\nbad setting: stage"
