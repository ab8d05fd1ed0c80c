"""The training workflow through MONAI's ConfigWorkflow (common.yaml + train.yaml), with tiny overrides (8³ -> 16³
grids, 1-2 epochs)."""

from __future__ import annotations

import json
import logging
import re

import pytest
import torch
from conftest import ROOT, SMALL_STAGES, TINY_CONFIG, cli_config_files, config_files, config_parser
from monai.bundle import ConfigWorkflow

TINY = {
    **TINY_CONFIG,
    "synthetic_count": 4,
    "synthetic_size": 32,
    "synthetic_spacing_mm": 10.0,
    "max_epochs": 1,
    "val_interval": 1,
    "ssim_window": 3,
    "batch_size": 2,
}


class _Messages(logging.Handler):
    """The messages of MONAI's StatsHandler logger (it does not propagate to the root), in order."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _run(tmp_path, presets=(), log: _Messages | None = None, **overrides):
    settings = dict(
        TINY,
        dataset_dir=str(tmp_path / "data"),
        ckpt_dir=str(tmp_path / "models"),
        output_dir=str(tmp_path / "runs"),
        **overrides,
    )
    workflow = ConfigWorkflow(
        config_file=config_files("train.yaml", *presets), workflow_type=None, run_id="training", **settings
    )
    workflow.initialize()
    stats = logging.getLogger("monai.handlers.StatsHandler")  # made by the handlers, at initialize
    if log is not None:
        stats.addHandler(log)
    try:
        workflow.run()
    finally:
        stats.removeHandler(log)  # a no-op for None
    trainer = workflow.parser.get_parsed_content("train#trainer")
    evaluator = workflow.parser.get_parsed_content("validate#evaluator")
    workflow.finalize()
    return trainer, evaluator


def _model_config(**overrides):
    """This run's model config as train.yaml resolves it (with the tiny overrides)."""
    return config_parser("train.yaml", **dict(TINY, **overrides)).get_parsed_content("model_config")


def test_stage_zero_then_stage_one(tmp_path):
    trainer, evaluator = _run(tmp_path)
    assert (tmp_path / "data" / "datalist.json").exists()  # prepared on the fly
    assert trainer.state.epoch == 1 and trainer.state.iteration == 1  # 2 training cases, batch 2
    assert set(evaluator.state.metrics) == {"val_psnr", "val_ssim", "val_mae_hu", "val_drr_error"}
    assert 0.0 < evaluator.state.metrics["val_mae_hu"] < 3000.0
    stage0 = tmp_path / "models" / "stage_0"
    assert sorted(p.name for p in stage0.iterdir()) == ["config.json", "model.pt", "model_best.pt", "training_state.pt"]
    record = json.loads((stage0 / "config.json").read_text())
    assert set(record) == {"model_config", "config"}
    model_config, config = record["model_config"], record["config"]
    assert model_config == _model_config()  # what the weights mean, as this run's settings give it
    assert model_config["network"] == "XrayToCTCascade" and model_config["preset"] == "tiny"
    assert model_config["stages"] == SMALL_STAGES and model_config["prediction_type"] == "v_prediction"
    assert model_config["geometry"]["detector_shape"] == [32, 32]
    assert config == {
        "stage": 0,
        "remove_couch": True,
        "use_physics_loss": True,
        "physics_loss_weight": 0.3,
        "physics_timestep_gate": 0.5,
        "cond_noise_max": 0.2,
        "condition_dropout": 0.1,
        "learning_rate": 0.0003,
        "batch_size": 2,
        "max_epochs": 1,
        "seed": 0,
    }
    # model.pt is the model-zoo weights file: the network's state dict (the EMA weights) and the two records beside
    # it, nothing else; the raw weights and the optimizer moments live in the training state.
    from scripts.checkpoint import build_network, load_network_weights, read_model_config, stage_checkpoint

    network = trainer.cascade
    checkpoint = torch.load(stage0 / "model.pt", weights_only=True)
    assert set(checkpoint) == set(network.state_dict()) | {"model_config", "config"}
    assert checkpoint["model_config"] == model_config and checkpoint["config"] == config  # the run's config.json
    weights = {k: v for k, v in checkpoint.items() if k not in ("model_config", "config")}
    assert all(isinstance(v, torch.Tensor) for v in weights.values())
    size = sum(v.numel() * v.element_size() for v in network.state_dict().values())
    # The network's size plus the zip format's per-tensor overhead (~9% at this test size, 0.3% for the default
    # preset); it used to hold the raw weights, the EMA weights and AdamW's moments (2.7x).
    assert size < (stage0 / "model.pt").stat().st_size < size * 1.5
    state = torch.load(stage0 / "training_state.pt", weights_only=True)
    assert all(torch.equal(v, state["ema"][k]) for k, v in weights.items())  # the EMA weights, as validated
    assert {"network", "ema", "optimizer", "lr_scheduler", "sampler", "trainer"} <= set(state)
    assert state["trainer"]["iteration"] == 1  # written at the end, too (checkpoint_interval 200)
    best = torch.load(stage0 / "model_best.pt", weights_only=True)
    assert set(best) == set(checkpoint) and best["model_config"] == model_config
    assert not [p for p in stage0.iterdir() if p.name.startswith(".")]  # no temporary file left behind
    # The record alone rebuilds the trained network: its weights load strictly into it, with torch alone too.
    assert stage_checkpoint(tmp_path / "models", 0) == stage0 / "model.pt"
    rebuilt = build_network(read_model_config(stage0 / "model.pt"))
    load_network_weights(rebuilt, stage0 / "model.pt", model_config)
    assert all(torch.equal(v, weights[k]) for k, v in rebuilt.state_dict().items())
    plain_torch = build_network(model_config).load_state_dict(checkpoint, strict=True)  # the records are skipped
    assert not plain_torch.missing_keys and not plain_torch.unexpected_keys
    # Stage 1 starts from stage 0's EMA weights and keeps them (and the encoder) fixed.
    _run(tmp_path, stage=1)
    stage1_dir = tmp_path / "models" / "stage_1"
    stage1 = torch.load(stage1_dir / "model.pt", weights_only=True)
    assert stage1["config"]["stage"] == 1 and stage1["model_config"] == model_config
    trained = torch.load(stage1_dir / "training_state.pt", weights_only=True)["network"]
    for key, value in weights.items():
        if key.startswith(("encoder.", "stages.0.")):
            assert torch.equal(trained[key], value), key
    # Joint fine-tuning starts from the trained cascade (stage 1's EMA weights, every stage) ...
    from scripts.checkpoint import load_earlier_stages

    parser = config_parser("train.yaml", **TINY)
    fresh = parser.get_parsed_content("network_def")
    load_earlier_stages(fresh, tmp_path / "models", -1, parser.get_parsed_content("model_config"))
    assert all(torch.equal(v, stage1[k]) for k, v in fresh.state_dict().items())
    # ... and runs.
    _run(tmp_path, stage=-1)
    joint = torch.load(tmp_path / "models" / "joint" / "model.pt", weights_only=True)
    assert set(joint) == set(stage1) and joint["config"]["stage"] == -1
    events = list((tmp_path / "runs").glob("events.out.tfevents.*"))
    assert events  # TensorBoard scalars and preview images
    # The last stage's weights run through inference.yaml as they are: network and settings from the file.
    inference = ConfigWorkflow(
        config_file=config_files("inference.yaml"),
        workflow_type=None,
        run_id="run",
        ckpt_path=str(stage1_dir / "model.pt"),
        dataset_dir=str(tmp_path / "data"),
        output_dir=str(tmp_path / "inference"),
        num_inference_steps=2,
        progress_bar=False,
    )
    inference.initialize()
    inference.run()
    inference.finalize()
    report = json.loads((tmp_path / "inference" / "inference_report.json").read_text())
    assert len(report["done"]) == 1 and report["failed"] == [] and report["done"][0]["shape"] == [16, 16, 16]


def test_log_has_epoch_lines_and_iteration_lines_only_when_asked(tmp_path):
    log = _Messages()
    _run(tmp_path, log=log)
    assert [m for m in log.messages if m.startswith("Epoch[1] Metrics -- train_epoch_loss: ")]
    assert [m for m in log.messages if m.startswith("Epoch[1] Metrics -- val_")]  # the validation's epoch line
    assert not [m for m in log.messages if "Iter:" in m]  # the progress bar shows the iterations, not the log
    # iteration_log_interval N: the loss every N iterations (one iteration per epoch here).
    log = _Messages()
    _run(tmp_path, log=log, iteration_log_interval=2, max_epochs=2, val_interval=2)
    iterations = [m for m in log.messages if "Iter:" in m]
    assert len(iterations) == 1 and iterations[0].startswith("Epoch: 2/2, Iter: 1/1 -- train_loss: ")
    assert len([m for m in log.messages if "Metrics -- train_epoch_loss: " in m]) == 2


def test_training_state_is_kept_once_per_stage_and_replaced_on_resume(tmp_path):
    stage0 = tmp_path / "models" / "stage_0"
    _run(tmp_path, checkpoint_interval=1)
    first = torch.load(stage0 / "training_state.pt", weights_only=True)
    assert first["trainer"]["iteration"] == 1
    # Resumed to a second epoch: the same single file, now at iteration 2; no second state, no temporary file.
    trainer, _ = _run(tmp_path, checkpoint_interval=1, resume=True, max_epochs=2)
    assert trainer.state.iteration == 2
    assert sorted(p.name for p in stage0.iterdir()) == ["config.json", "model.pt", "model_best.pt", "training_state.pt"]
    again = torch.load(stage0 / "training_state.pt", weights_only=True)
    assert again["trainer"]["iteration"] == 2 and again["trainer"]["max_epochs"] == 2
    steps = {float(v["step"]) for v in again["optimizer"]["state"].values()}
    assert steps == {2.0} and {float(v["step"]) for v in first["optimizer"]["state"].values()} == {1.0}  # trained on
    model = torch.load(stage0 / "model.pt", weights_only=True)
    assert all(torch.equal(model[k], v) for k, v in again["ema"].items())  # model.pt: the resumed run's EMA


def test_time_limit_stops_training_and_still_writes_the_final_checkpoint_and_state(tmp_path):
    settings = dict(
        TINY, dataset_dir=str(tmp_path / "data"), ckpt_dir=str(tmp_path / "models"), output_dir=str(tmp_path / "runs")
    )
    settings.update(max_epochs=100_000, val_interval=100_000, time_limit_s=1)  # only the limit can end it
    workflow = ConfigWorkflow(config_file=config_files("train.yaml"), workflow_type=None, run_id="training", **settings)
    workflow.initialize()
    log = _Messages()
    limit_logger = logging.getLogger("ignite.handlers.time_limit.TimeLimit")  # ignite's own, made at initialize
    limit_logger.addHandler(log)
    try:
        workflow.run()
    finally:
        limit_logger.removeHandler(log)
    trainer = workflow.parser.get_parsed_content("train#trainer")
    workflow.finalize()
    assert log.messages == ["Reached the time limit: 1 sec. Stop training"]
    assert trainer.should_terminate and 1 <= trainer.state.iteration < 100_000
    # terminate() still fires COMPLETED: the final EMA weights and the state at the last iteration are written.
    stage0 = tmp_path / "models" / "stage_0"
    model = torch.load(stage0 / "model.pt", weights_only=True)
    state = torch.load(stage0 / "training_state.pt", weights_only=True)
    assert state["trainer"]["iteration"] == trainer.state.iteration
    assert all(torch.equal(model[k], v) for k, v in state["ema"].items())


@pytest.mark.parametrize("value", [-1, 1.5, "abc", True, ""])
def test_a_bad_time_limit_is_refused_naming_the_setting(value):
    from ignite.engine import Engine, Events
    from scripts.utils import attach_time_limit

    engine = Engine(lambda engine, batch: None)
    with pytest.raises(ValueError) as info:
        attach_time_limit(engine, value)
    assert str(info.value) == (
        f"time_limit_s must be a whole number of seconds, 0 or more (0: no limit), got {value!r}."
    )
    attach_time_limit(engine, 0)  # off: nothing attached
    assert len(engine._event_handlers[Events.ITERATION_COMPLETED]) == 0
    attach_time_limit(engine, "2")  # the command line may hand a number over as text
    assert len(engine._event_handlers[Events.ITERATION_COMPLETED]) == 1


@pytest.mark.parametrize("prediction_type", ["epsilon", "rectified_flow"])
@pytest.mark.parametrize("use_physics_loss", [True, False])
def test_other_objectives_train_and_validate(tmp_path, prediction_type, use_physics_loss):
    trainer, evaluator = _run(
        tmp_path, prediction_type=prediction_type, use_physics_loss=use_physics_loss, physics_timestep_gate=1.0
    )
    record = json.loads((tmp_path / "models" / "stage_0" / "config.json").read_text())
    assert record["model_config"]["prediction_type"] == prediction_type
    # Rectified flow has no beta schedule: the record says none.
    expected_schedule = None if prediction_type == "rectified_flow" else "scaled_linear_beta"
    assert record["model_config"]["noise_schedule"] == expected_schedule
    assert record["config"]["use_physics_loss"] is use_physics_loss and record["config"]["physics_timestep_gate"] == 1.0
    loss_drr = float(trainer.state.output[0]["loss_drr"])
    assert (loss_drr > 0) if use_physics_loss else (loss_drr == 0)
    assert 0.0 < evaluator.state.metrics["val_mae_hu"] < 3000.0


@pytest.mark.parametrize("preset", ["quick_2stage", "progressive_3stage"])
def test_presets_stack_on_train_yaml(tmp_path, preset):
    # The preset's encoder applies; its stage list is shrunk back to the tiny one by the overrides.
    settings = {k: v for k, v in TINY.items() if k != "encoder"}
    workflow = ConfigWorkflow(
        config_file=config_files("train.yaml", f"stages/{preset}.yaml"),
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
    # The stage grids come from the stages (stage_sizes and image_size are derived, never set).
    assert workflow.parser.get_parsed_content("stage_sizes") == [8, 16]
    assert workflow.parser.get_parsed_content("image_size") == 16
    checkpoint = torch.load(tmp_path / "models" / "stage_0" / "model.pt", weights_only=True)
    assert checkpoint["model_config"]["preset"] == preset and checkpoint["model_config"]["encoder"]["dim"] == 256


def test_checkpoint_of_another_network_is_refused(tmp_path):
    from scripts.checkpoint import load_earlier_stages

    _run(tmp_path)
    path = tmp_path / "models" / "stage_0" / "model.pt"
    deeper = dict(TINY["encoder"], depth=2)  # one more encoder block than the checkpoint has
    parser = config_parser("train.yaml", **dict(TINY, encoder=deeper))
    network = parser.get_parsed_content("network_def")
    # The contradicting setting is named first, from the records ...
    with pytest.raises(ValueError) as info:
        load_earlier_stages(network, tmp_path / "models", 1, parser.get_parsed_content("model_config"))
    assert str(info.value) == (
        f"encoder#depth: the checkpoint {path} was trained with 1, this run gives 2; it is part of what the weights "
        "mean and comes from the checkpoint, so leave it unset (sampling settings stay free)."
    )
    # ... and without a record to compare, the weights themselves do not fit.
    with pytest.raises(ValueError) as info:
        load_earlier_stages(network, tmp_path / "models", 1)
    assert str(info.value).startswith(f"ckpt_dir: checkpoint {path} does not fit this network: missing ['encoder.")
    assert str(info.value).endswith(" (its earlier stages).")
    # Through the workflow, the same contradiction stops stage 1 before it trains.
    with pytest.raises(RuntimeError) as info:
        _run(tmp_path, stage=1, encoder=deeper)
    assert str(info.value.__cause__).startswith(f"encoder#depth: the checkpoint {path} was trained with 1, ")
    assert not (tmp_path / "models" / "stage_1" / "model.pt").exists()


def test_missing_earlier_stage_is_named(tmp_path):
    with pytest.raises(RuntimeError) as info:
        _run(tmp_path, stage=1)
    path = tmp_path / "models" / "stage_0" / "model.pt"
    assert str(info.value.__cause__) == (
        f"ckpt_dir: training stage 1 needs the trained stage 0 at {path}; train it first (--stage 0)."
    )


def test_negative_physics_weight_is_named(tmp_path):
    with pytest.raises(RuntimeError) as info:
        _run(tmp_path, physics_loss_weight=-0.5)
    assert str(info.value.__cause__) == "physics_loss_weight must be a non-negative number, got -0.5."


def test_unknown_stage_is_named(tmp_path):
    with pytest.raises(RuntimeError) as info:
        _run(tmp_path, stage=7)
    assert str(info.value.__cause__) == "stage must be -1 (joint) or in [0, 1], got 7."


def test_readme_training_command_runs_from_the_repository_root(tmp_path):
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", cli_config_files("train.yaml")]
    settings = dict(
        TINY, dataset_dir=str(tmp_path / "data"), ckpt_dir=str(tmp_path / "models"), output_dir=str(tmp_path / "runs")
    )
    for key, value in settings.items():
        cmd += [f"--{key}", json.dumps(value)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "models" / "stage_0" / "model.pt").is_file()
    out = proc.stdout + proc.stderr  # what the user sees: epoch lines, no line per iteration
    assert "val_psnr" in out and "Epoch[1] Metrics -- train_epoch_loss: " in out and "Iter:" not in out


def test_mlflow_tracking_records_losses_and_metrics(tmp_path):
    mlflow = pytest.importorskip("mlflow")  # optional extra: pip install -e ".[mlflow]"
    from monai.bundle import run

    settings = dict(
        TINY,
        dataset_dir=str(tmp_path / "data"),
        ckpt_dir=str(tmp_path / "models"),
        output_dir=str(tmp_path / "runs"),
    )
    run("training", config_file=config_files("train.yaml"), tracking="mlflow", **settings)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'runs' / 'mlruns.db'}")
    runs = mlflow.search_runs(search_all_experiments=True)
    assert {"metrics.train_loss", "metrics.val_psnr", "metrics.val_ssim"} <= set(runs.columns)


def test_datalist_without_validation_cases_is_named(tmp_path):
    from scripts.data import ensure_dataset

    datalist = tmp_path / "datalist.json"
    datalist.write_text(json.dumps({"training": [{"image": "a.nii.gz"}], "validation": [], "test": [{"image": "b"}]}))
    with pytest.raises(ValueError) as info:
        ensure_dataset(tmp_path)
    assert str(info.value) == (
        f"dataset_dir: {datalist} has no 'validation' cases; this workflow needs ['training', 'validation'] "
        "(prepare at least 2 cases for training)."
    )
    assert ensure_dataset(tmp_path, ["test"]) == datalist  # a workflow that needs only the test cases runs
    datalist.write_text("{not json")
    with pytest.raises(ValueError, match=re.escape(f"dataset_dir: {datalist} is not a readable datalist (")):
        ensure_dataset(tmp_path)
