"""benchmarks/gpu_check.sh: its dry run (the whole script on the CPU at tiny sizes) writes the summary the GPU run will
write, with every section run; the summary's arithmetic (growth exponents, targets) on rows with known answers."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess

import pytest
import torch
from conftest import ROOT

from benchmarks import gpu_check

SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
#: The keys issue 18 asks gpu_summary.json for.
REQUIRED = {
    "device",
    "date",
    "torch",
    "inference_256_s",
    "inference_256_first_call_s",
    "train_stage3_step_s",
    "train_stage3_peak_gb",
    "train_stage3_mfu",
    "drr_speedup_vs_diffdrr",
    "drr_speedup_vs_nanodrr",
    "monai_unet_128_step_s",
    "quick_2stage_psnr",
}


def test_dry_run_runs_every_section_and_writes_the_summary(tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    run = subprocess.run(
        ["bash", str(SCRIPT), "--dry-run", "--out", str(out), "--work", str(work)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    summary = json.loads((out / "gpu_summary.json").read_text())
    assert REQUIRED <= set(summary) and summary["dry_run"] is True
    assert summary["sections"].keys() == {"cuda_tests", *gpu_check.SECTIONS}
    assert all(status.startswith("ok") for status in summary["sections"].values()), summary["sections"]
    # Every figure the GPU run reports was produced by the same code at the dry run's sizes.
    for key in ("inference_256_s", "inference_256_first_call_s", "train_stage3_step_s", "monai_unet_128_step_s"):
        assert summary[key] > 0, key
    assert summary["inference_grid"] == 32 and math.isfinite(summary["quick_2stage_psnr"])
    assert 0 < summary["train_stage3_peak_gb"] and 0 < summary["train_stage3_mfu"]
    peers = all(importlib.util.find_spec(name) for name in ("diffdrr", "nanodrr"))
    speedups = summary["drr_speedup_vs_diffdrr"], summary["drr_speedup_vs_nanodrr"]
    assert all(s > 0 for s in speedups) if peers else speedups == (None, None)
    # 3 stages x 2 batches of the cascade, 2 grids x 2 batches of the peer; eager at 2 and 1 steps, compiled alike.
    rows = summary["rows"]
    assert [(r["kind"], r["grid"][0], r["batch"]) for r in rows["train"]] == [
        ("cascade", 8, 1),
        ("cascade", 16, 1),
        ("cascade", 32, 1),
        ("cascade", 8, 2),
        ("cascade", 16, 2),
        ("cascade", 32, 2),
        ("cascade", 32, 1),  # with gradient checkpointing
        ("monai_unet", 8, 1),
        ("monai_unet", 16, 1),
        ("monai_unet", 8, 2),
        ("monai_unet", 16, 2),
    ]
    assert [(r["compiled"], r["steps_per_stage"]) for r in rows["inference"] + rows["compile"]] == [
        ("eager", 2),
        ("eager", 1),
        ("torch.compile(eager, mode=default)", 2),
        ("torch.compile(eager, mode=default)", 1),
    ]
    assert rows["workflow"][0]["resumed"] is True
    assert [t["met"] is not None for t in summary["targets"]] == [True] * 6 + [peers] * 2 + [True]
    assert [r["gradient_checkpointing"] for r in rows["train"][:7]] == [False] * 6 + [True]
    # The model FLOPs of the same sizes, and each inference row's utilisation from them.
    assert [c["steps_per_stage"] for c in summary["flops"]["cases"]] == [2, 1]
    assert all(r["case_TFLOP"] > 0 and r["mfu"] > 0 for r in rows["inference"] + rows["compile"])
    text = (out / "gpu_summary.md").read_text()
    assert text.startswith("# GPU check (") and "**CPU dry run at an eighth of the sizes" in text
    for heading in ("## Targets", "## Sections", "## DRR renderer", "## Training step", "## Three-stage", "## quick_2"):
        assert heading in text
    log = (out / "gpu_check.log").read_text().splitlines()
    assert sum(line.startswith("== ") for line in log) == 2 * (1 + len(gpu_check.SECTIONS))  # start and end of each


def test_unknown_option_is_refused_by_name():
    run = subprocess.run(["bash", str(SCRIPT), "--fast"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 2
    assert run.stderr.strip().splitlines()[-1] == (
        "gpu_check.sh: unknown option --fast (expected --dry-run, --unpack-only, --use-carried, --sections LIST, "
        "--out DIR, --work DIR)"
    )


def test_unknown_section_is_refused_by_name(tmp_path):
    run = subprocess.run(
        ["bash", str(SCRIPT), "--dry-run", "--sections", "train gpu", "--work", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2 and not (tmp_path / "train.status").exists()
    assert run.stderr.strip().splitlines()[-1] == (
        "gpu_check.sh: unknown section gpu (expected cuda_tests drr train inference compile workflow)"
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given without CUDA")
def test_a_gpu_section_without_cuda_says_to_use_the_dry_run(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("sys.argv", ["gpu_check.py", "--section", "train", "--work", str(tmp_path)])
    with pytest.raises(SystemExit) as info:
        gpu_check.main()
    assert info.value.code == 2
    assert (
        capsys.readouterr()
        .err.strip()
        .splitlines()[-1]
        .endswith(f"no CUDA device is available to this PyTorch ({torch.__version__}); on a CPU use --dry-run")
    )
    assert not (tmp_path / "train.json").exists()


def _row(stage: int, grid: int, batch: int, step_s: float) -> dict:
    return {"kind": "cascade", "stage": stage, "grid": [grid] * 3, "batch": batch, "step_s": step_s}


def test_growth_exponent_is_log_time_ratio_over_log_voxel_ratio():
    # 8x the voxels per stage: linear growth is 8x the time (exponent 1), 4x the time is 8^(2/3)
    rows = [_row(0, 64, 1, 0.5), _row(1, 128, 1, 4.0), _row(2, 256, 1, 16.0), _row(0, 64, 2, 1.0), _row(1, 128, 2, 1.0)]
    rows.append(dict(_row(2, 256, 1, 99.0), gradient_checkpointing=True))  # another trade, not a stage's growth
    growth = gpu_check.growth_exponents(rows)
    assert [(g["batch"], g["from"], g["to"]) for g in growth] == [(1, 64, 128), (1, 128, 256), (2, 64, 128)]
    assert [g["voxel_ratio"] for g in growth] == [8.0, 8.0, 8.0]
    assert growth[0]["exponent"] == pytest.approx(1.0, rel=1e-12)
    assert growth[1]["exponent"] == pytest.approx(2.0 / 3.0, rel=1e-12)
    assert growth[2]["exponent"] == 0.0


def test_targets_compare_each_figure_with_its_goal():
    summary = {
        "inference_grid": 256,
        "inference_256_s": 1.2,
        "inference_256_fewest_steps_s": 0.4,
        "train_stage3_peak_gb": 5.9,
        "train_stage3_mfu": 0.30,
        "train_stage3_checkpointed_peak_gb": 3.0,
        "train_stage3_checkpointed_mfu": None,
        "drr_speedup_vs_diffdrr": 5.0,
        "drr_speedup_vs_nanodrr": None,
        "stage_step_growth": [
            {"batch": 1, "exponent": 0.8},
            {"batch": 1, "exponent": 1.1},
            {"batch": 2, "exponent": 3.0},  # batch 2 is not the target's
        ],
    }
    targets = gpu_check.targets(summary)
    assert [t["met"] for t in targets] == [False, True, True, False, True, None, True, None, False]
    assert targets[-1]["measured"] == 1.1 and targets[0]["goal"] == "<= 1"
    assert targets[0]["target"] == "256³ inference from two X-rays, s per case"


def test_compiled_denoisers_are_one_static_graph_per_stage():
    """What the GPU check compiles: each of progressive_3stage's three denoisers (global attention; the dry run's
    sizes) is captured whole, once, with static shapes. The three share their code, and dynamo's automatic dynamic
    shapes would recompile stages 2 and 3 for symbolic sizes; a graph break would split the CUDA graphs."""
    graphs = []

    def recording_backend(gm, example_inputs):
        # the graph's inputs as dynamo traced them: tensors with symbolic sizes, or SymInt inputs, mean dynamic shapes
        values = [n.meta.get("example_value") for n in gm.graph.nodes if n.op == "placeholder"]
        graphs.append([tuple(v.shape) if isinstance(v, torch.Tensor) else v for v in values])
        return gm.forward

    torch._dynamo.reset()
    cfg = gpu_check.sizes(True)
    parser, network, views, post = gpu_check._cascade(cfg)
    gpu_check.compile_denoisers(network, "default", recording_backend)
    eager = gpu_check._time_inference(cfg, parser, network, views, post, 1, "recorded")
    assert eager["case_s"] > 0
    assert len(graphs) == network.num_stages  # one graph per stage: no breaks, no recompilation
    assert all(isinstance(shape, tuple) for shapes in graphs for shape in shapes)  # no SymInt inputs
    assert all(type(d) is int for shapes in graphs for shape in shapes for d in shape)  # no symbolic sizes
    voxels = [max(math.prod(shape) for shape in shapes) for shapes in graphs]
    assert voxels == sorted(voxels) and len(set(voxels)) == 3  # stage by stage, each on its own grid
    torch._dynamo.reset()
