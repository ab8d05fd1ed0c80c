"""The training workflow through MONAI's ConfigWorkflow, with tiny overrides (16³ grids, 1-2 epochs)."""

from __future__ import annotations

import json
import os

import pytest
import torch
from monai.bundle import ConfigWorkflow

CONFIGS = os.path.join(os.path.dirname(__file__), "..", "bundle", "configs")
TINY = {
    "synthetic_count": 4,
    "synthetic_size": 32,
    "synthetic_spacing_mm": 10.0,
    "image_size": 16,
    "stage_sizes": [8, 16],
    "stages": [
        {"grid_size": 8, "patch_size": 2, "width": 32, "depth": 1, "heads": 2},
        {"grid_size": 16, "patch_size": 2, "width": 32, "depth": 1, "heads": 2},
    ],
    "encoder": {"stem_channels": [8, 16], "patch_size": 2, "dim": 32, "heads": 2, "depth": 1, "global_dim": 32},
    "geometry#detector_shape": [32, 32],
    "geometry#pixel_spacing_mm": [17.6, 17.6],
    "max_epochs": 1,
    "val_interval": 1,
    "num_inference_steps": 2,
    "ssim_window": 3,
    "batch_size": 2,
}


def _run(tmp_path, presets=(), **overrides):
    files = [os.path.join(CONFIGS, "train.yaml")] + [os.path.join(CONFIGS, p) for p in presets]
    settings = dict(
        TINY,
        dataset_dir=str(tmp_path / "data"),
        ckpt_dir=str(tmp_path / "models"),
        output_dir=str(tmp_path / "runs"),
        **overrides,
    )
    workflow = ConfigWorkflow(config_file=files, workflow_type=None, run_id="training", **settings)
    workflow.initialize()
    workflow.run()
    trainer = workflow.parser.get_parsed_content("train#trainer")
    evaluator = workflow.parser.get_parsed_content("validate#evaluator")
    workflow.finalize()
    return trainer, evaluator


def test_stage_zero_then_stage_one(tmp_path):
    trainer, evaluator = _run(tmp_path)
    assert (tmp_path / "data" / "datalist.json").exists()  # prepared on the fly
    assert trainer.state.epoch == 1 and trainer.state.iteration == 1  # 2 training cases, batch 2
    assert set(evaluator.state.metrics) == {"val_psnr", "val_ssim", "val_mae_hu", "val_drr_error"}
    assert 0.0 < evaluator.state.metrics["val_mae_hu"] < 3000.0
    stage0 = tmp_path / "models" / "stage_0"
    assert sorted(p.name for p in stage0.iterdir()) == ["config.json", "model.pt", "model_best.pt"]
    config = json.loads((stage0 / "config.json").read_text())
    assert config["stage"] == 0 and config["prediction_type"] == "v_prediction" and config["stages"] == TINY["stages"]
    checkpoint = torch.load(stage0 / "model.pt", weights_only=True)
    assert set(checkpoint) == {"network", "ema", "optimizer", "preset", "config"}
    assert checkpoint["preset"]["name"] == "tiny" and checkpoint["preset"]["stages"] == TINY["stages"]
    assert checkpoint["config"] == config  # the run's config.json
    best = torch.load(stage0 / "model_best.pt", weights_only=True)
    assert set(best) == {"network", "preset", "config"} and best["preset"] == checkpoint["preset"]
    assert not [p for p in stage0.iterdir() if p.name.startswith(".")]  # no temporary file left behind
    # Stage 1 starts from stage 0's EMA weights and keeps them (and the encoder) fixed.
    _run(tmp_path, stage=1)
    stage1 = torch.load(tmp_path / "models" / "stage_1" / "model.pt", weights_only=True)["network"]
    for key, value in checkpoint["ema"].items():
        if key.startswith(("encoder.", "stages.0.")):
            assert torch.equal(stage1[key], value), key
    # Joint fine-tuning starts from the trained cascade (stage 1's EMA weights, every stage) ...
    from monai.bundle import ConfigParser
    from scripts.engines import load_earlier_stages

    parser = ConfigParser()
    parser.read_config(os.path.join(CONFIGS, "train.yaml"))
    for key, value in TINY.items():
        parser[key] = value
    fresh = parser.get_parsed_content("network_def")
    load_earlier_stages(fresh, tmp_path / "models", -1)
    ema1 = torch.load(tmp_path / "models" / "stage_1" / "model.pt", weights_only=True)["ema"]
    assert all(torch.equal(v, ema1[k]) for k, v in fresh.state_dict().items())
    # ... and runs.
    _run(tmp_path, stage=-1)
    joint = torch.load(tmp_path / "models" / "joint" / "model.pt", weights_only=True)["network"]
    assert set(joint) == set(stage1)
    events = list((tmp_path / "runs").glob("events.out.tfevents.*"))
    assert events  # TensorBoard scalars and preview images


@pytest.mark.parametrize("prediction_type", ["epsilon", "rectified_flow"])
@pytest.mark.parametrize("use_physics_loss", [True, False])
def test_other_objectives_train_and_validate(tmp_path, prediction_type, use_physics_loss):
    trainer, evaluator = _run(
        tmp_path, prediction_type=prediction_type, use_physics_loss=use_physics_loss, physics_timestep_gate=1.0
    )
    config = json.loads((tmp_path / "models" / "stage_0" / "config.json").read_text())
    assert config["prediction_type"] == prediction_type and config["use_physics_loss"] is use_physics_loss
    loss_drr = float(trainer.state.output[0]["loss_drr"])
    assert (loss_drr > 0) if use_physics_loss else (loss_drr == 0)
    assert 0.0 < evaluator.state.metrics["val_mae_hu"] < 3000.0


@pytest.mark.parametrize("preset", ["stages/quick_2stage.yaml", "stages/progressive_3stage.yaml"])
def test_presets_stack_on_train_yaml(tmp_path, preset):
    # The preset's encoder applies; its stage list and sizes are shrunk back to the tiny ones by the overrides.
    settings = {k: v for k, v in TINY.items() if k != "encoder"}
    files = [os.path.join(CONFIGS, "train.yaml"), os.path.join(CONFIGS, preset)]
    workflow = ConfigWorkflow(
        config_file=files,
        workflow_type=None,
        run_id="training",
        **settings,
        dataset_dir=str(tmp_path / "data"),
        ckpt_dir=str(tmp_path / "models"),
        output_dir=str(tmp_path / "runs"),
    )
    workflow.initialize()
    workflow.run()
    trainer = workflow.parser.get_parsed_content("train#trainer")
    assert trainer.cascade.num_stages == 2 and trainer.cascade.encoder.dim == 256  # the preset's encoder
    assert (tmp_path / "models" / "stage_0" / "model.pt").is_file()


def test_checkpoint_of_another_network_is_refused(tmp_path):
    from monai.bundle import ConfigParser
    from scripts.engines import load_earlier_stages

    _run(tmp_path)
    parser = ConfigParser()
    parser.read_config(os.path.join(CONFIGS, "train.yaml"))
    for key, value in TINY.items():
        parser[key] = value
    parser["encoder"] = dict(TINY["encoder"], depth=2)  # one more encoder block than the checkpoint has
    with pytest.raises(ValueError, match="does not match this network's earlier stages"):
        load_earlier_stages(parser.get_parsed_content("network_def"), tmp_path / "models", 1)


def test_missing_earlier_stage_is_named(tmp_path):
    with pytest.raises(RuntimeError) as info:
        _run(tmp_path, stage=1)
    assert "ckpt_dir: training stage 1 needs the trained stage 0" in str(info.value.__cause__)


def test_negative_physics_weight_is_named(tmp_path):
    with pytest.raises(RuntimeError) as info:
        _run(tmp_path, physics_loss_weight=-0.5)
    assert "physics_loss_weight must be a non-negative number" in repr(info.value.__cause__) + str(info.value)


def test_unknown_stage_is_named(tmp_path):
    with pytest.raises(RuntimeError) as info:
        _run(tmp_path, stage=7)
    assert "stage must be -1 (joint) or in [0, 1], got 7" in str(info.value.__cause__)


def test_readme_training_command_runs_from_the_repository_root(tmp_path):
    import subprocess
    import sys

    root = os.path.join(CONFIGS, "..", "..")
    cmd = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", "bundle/configs/train.yaml"]
    settings = dict(
        TINY, dataset_dir=str(tmp_path / "data"), ckpt_dir=str(tmp_path / "models"), output_dir=str(tmp_path / "runs")
    )
    for key, value in settings.items():
        cmd += [f"--{key}", json.dumps(value)]
    proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "models" / "stage_0" / "model.pt").is_file()
    assert "val_psnr" in proc.stdout + proc.stderr


def test_mlflow_tracking_records_losses_and_metrics(tmp_path):
    mlflow = pytest.importorskip("mlflow")  # optional extra: pip install -e ".[mlflow]"
    from monai.bundle import run

    settings = dict(
        TINY,
        dataset_dir=str(tmp_path / "data"),
        ckpt_dir=str(tmp_path / "models"),
        output_dir=str(tmp_path / "runs"),
        progress_bar=False,
    )
    run("training", config_file=os.path.join(CONFIGS, "train.yaml"), tracking="mlflow", **settings)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'runs' / 'mlruns.db'}")
    runs = mlflow.search_runs(search_all_experiments=True)
    assert {"metrics.train_loss", "metrics.val_psnr", "metrics.val_ssim"} <= set(runs.columns)


def test_datalist_without_validation_cases_is_named(tmp_path):
    from scripts.engines import ensure_dataset

    (tmp_path / "datalist.json").write_text(json.dumps({"training": [{"image": "a.nii.gz"}], "validation": []}))
    with pytest.raises(ValueError, match="has no 'validation' cases; training needs both"):
        ensure_dataset(tmp_path)
    (tmp_path / "datalist.json").write_text("{not json")
    with pytest.raises(ValueError, match="is not a readable datalist"):
        ensure_dataset(tmp_path)
