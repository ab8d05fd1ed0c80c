"""Reliability: weights-only checkpoints, atomic writes, presets, non-finite steps, resume after SIGKILL, config
errors."""

from __future__ import annotations

import json
import os
import pickle
import re
import signal
import subprocess
import sys
import time

import pytest
import torch
from ignite.engine import Events
from scripts.checkpoint import (
    check_preset,
    load_checkpoint,
    load_network_weights,
    preset_record,
    save_checkpoint,
)

TINY_STAGES = [{"grid_size": 8, "patch_size": 2, "width": 32, "depth": 1, "heads": 2}]
GEOMETRY_KW = {"views": ("pa", "lateral"), "detector_shape": 32, "pixel_spacing_mm": 17.6}
TINY_ENCODER = {"stem_channels": [8, 16], "patch_size": 2, "dim": 32, "heads": 2, "depth": 1, "global_dim": 32}


def _record(name="tiny", stages=TINY_STAGES, encoder=TINY_ENCODER):
    return preset_record(name, stages, encoder, 320.0, True)


class _Payload:
    """Unpickling this would call ``open(marker, "w")``: the file appears only if the payload ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


# ---- checkpoints --------------------------------------------------------------------------------------------------


def test_malicious_checkpoint_is_refused_and_its_payload_never_runs(tmp_path):
    marker = tmp_path / "payload_ran"
    path = tmp_path / "evil.pt"
    torch.save({"network": {"w": torch.ones(2)}, "extra": _Payload(marker)}, path)
    with pytest.raises(ValueError) as info:
        load_checkpoint(path)
    assert str(info.value) == (
        f"checkpoint {path} was refused: it is not a plain weights file (Unsupported global: GLOBAL io.open was not "
        "an allowed global by default); it is read with weights_only=True only, and nothing in it was executed. Load "
        "only checkpoints from a trusted source, saved as state dicts."
    )
    assert not marker.exists()
    # The same file through every loader of the bundle.
    net = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match="was refused: it is not a plain weights file"):
        load_network_weights(net, path, None)
    assert not marker.exists()
    # A bare pickle (not written by torch.save) carrying the payload is not a checkpoint either.
    bare = tmp_path / "bare.pt"
    with open(bare, "wb") as f:
        pickle.dump({"network": _Payload(marker)}, f, protocol=2)
    with pytest.raises(ValueError, match=re.escape(f"checkpoint {bare} was refused: it is not a plain weights file (")):
        load_checkpoint(bare)
    assert not marker.exists()
    # Sanity: the payload does run when unpickled without weights_only (what the loaders never do).
    torch.load(path, weights_only=False)  # deliberately unsafe
    assert marker.exists()


def test_missing_and_truncated_checkpoints_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(f"checkpoint {tmp_path / 'none.pt'} does not exist.")):
        load_checkpoint(tmp_path / "none.pt")
    path = tmp_path / "model.pt"
    save_checkpoint(path, {"network": {"w": torch.arange(1000.0)}})
    data = path.read_bytes()
    for size in (0, len(data) // 2, len(data) - 10):
        path.write_bytes(data[:size])
        with pytest.raises(ValueError, match=re.escape(f"checkpoint {path} is corrupt or truncated (")):
            load_checkpoint(path)
    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match=re.escape(f"checkpoint {path} is corrupt or truncated (")):
        load_checkpoint(path)
    torch.save([torch.ones(1)], path)
    with pytest.raises(ValueError, match=re.escape(f"checkpoint {path} is not a dictionary of state dicts (got list)")):
        load_checkpoint(path)


def test_save_checkpoint_records_preset_and_config_and_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "model.pt"
    save_checkpoint(path, {"network": {"w": torch.ones(3)}}, _record(), {"stage": 0, "hu_window": (-1000.0, 2000.0)})
    loaded = load_checkpoint(path)
    assert loaded["preset"] == _record() and loaded["preset"]["name"] == "tiny"
    assert loaded["config"] == {"stage": 0, "hu_window": [-1000.0, 2000.0]}
    assert torch.equal(loaded["network"]["w"], torch.ones(3))
    # A writer that dies half-way leaves the previous checkpoint intact and no temporary file behind.
    real_save = torch.save

    def dying_save(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        with open(f, "r+b") as handle:
            handle.truncate(10)
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"network": {"w": torch.zeros(3)}}, _record())
    monkeypatch.setattr(torch, "save", real_save)
    assert torch.equal(load_checkpoint(path)["network"]["w"], torch.ones(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]


def test_nonfinite_weights_never_reach_a_checkpoint(tmp_path):
    path = tmp_path / "model.pt"
    save_checkpoint(path, {"network": {"w": torch.ones(2)}})
    with pytest.raises(ValueError) as info:
        save_checkpoint(path, {"network": {"w": torch.ones(2), "b": torch.tensor([0.0, float("nan")])}})
    assert (
        str(info.value)
        == f"refusing to write checkpoint {path}: network.b is not finite (NaN or Inf); the file is kept."
    )
    assert torch.equal(load_checkpoint(path)["network"]["w"], torch.ones(2))


def test_checkpoint_of_another_preset_names_both(tmp_path):
    quick = _record("quick_2stage", stages=[dict(TINY_STAGES[0], grid_size=16)])
    with pytest.raises(ValueError) as info:
        check_preset(quick, _record(), "ckpt/model.pt")
    assert str(info.value) == (
        "checkpoint ckpt/model.pt was trained with preset 'quick_2stage' but this config is preset 'tiny' "
        "(stages differ: stages[0].grid_size is 16 in the checkpoint, 8 in this config)."
    )
    with pytest.raises(ValueError) as info:
        check_preset(_record(encoder=dict(TINY_ENCODER, depth=2)), _record(), "m.pt")
    assert str(info.value) == (
        "checkpoint m.pt was trained with preset 'tiny' but with other settings than this config's preset 'tiny' "
        "(encoder differs: encoder.depth is 2 in the checkpoint, 1 in this config)."
    )
    with pytest.raises(
        ValueError, match=r"\(name differs: name is 'custom' in the checkpoint, 'tiny' in this config\)"
    ):
        check_preset(_record("custom"), _record(), "m.pt")
    check_preset(_record(), _record(), "m.pt")  # the same preset passes, and so does a checkpoint without a record
    check_preset(None, _record(), "m.pt")


def test_load_network_weights_checks_preset_and_shapes(tmp_path):
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    path = tmp_path / "model.pt"
    ema = {k: torch.full_like(v, 0.5) for k, v in net.state_dict().items()}
    save_checkpoint(path, {"network": net.state_dict(), "ema": ema}, _record())
    fresh = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    checkpoint = load_network_weights(fresh, path, _record())
    assert checkpoint["preset"]["name"] == "tiny"
    assert all(torch.equal(v, torch.full_like(v, 0.5)) for v in fresh.state_dict().values())  # the EMA weights
    with pytest.raises(ValueError, match="was trained with preset 'tiny' but this config is preset 'quick_2stage'"):
        load_network_weights(fresh, path, _record("quick_2stage"))
    other = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Linear(5, 2))
    with pytest.raises(ValueError) as info:
        load_network_weights(other, path, None)
    assert str(info.value) == (
        f"checkpoint {path} does not fit this network: shape (checkpoint vs network) "
        "['0.weight (4, 3) vs (5, 3)', '0.bias (4,) vs (5,)', '1.weight (2, 4) vs (2, 5)']."
    )
    torch.save({"0.weight": torch.ones(4, 3)}, path)  # a bare, partial state dict
    with pytest.raises(ValueError) as info:
        load_network_weights(fresh, path, _record())
    assert str(info.value) == f"checkpoint {path} does not fit this network: missing ['0.bias', '1.weight', '1.bias']."


def test_training_checkpoint_saver_is_atomic_finite_only_and_records(tmp_path):
    from ignite.engine import Engine
    from scripts.engines.checkpointing import AtomicCheckpointSaver

    net = torch.nn.Linear(2, 2)
    saver = AtomicCheckpointSaver(
        save_dir=str(tmp_path),
        save_dict={"network": net},
        preset=_record(),
        config={"stage": 0},
        save_final=True,
        final_filename="model.pt",
    )
    engine = Engine(lambda e, b: None)
    saver.attach(engine)
    engine.run([0], max_epochs=1)
    saved = load_checkpoint(tmp_path / "model.pt")
    assert set(saved) == {"network", "preset", "config"} and saved["config"] == {"stage": 0}
    assert saved["preset"] == _record() and torch.equal(saved["network"]["weight"], net.weight)
    # A non-finite model is refused: training stops with the error and the last good file stays.
    with torch.no_grad():
        net.bias.fill_(float("inf"))
    with pytest.raises(ValueError) as info:
        engine.run([0], max_epochs=1)
    assert str(info.value) == (
        f"refusing to write checkpoint {tmp_path / 'model.pt'}: network.bias is not finite (NaN or Inf); "
        "the file is kept."
    )
    assert torch.equal(load_checkpoint(tmp_path / "model.pt")["network"]["bias"], saved["network"]["bias"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]


def test_every_torch_load_in_the_repository_is_weights_only():
    import ast
    from pathlib import Path

    root, offenders = Path(ROOT).resolve(), []
    for path in sorted(root.glob("**/*.py")):
        if any(part in {".git", "models", "demo", "build"} or part.endswith(".egg-info") for part in path.parts):
            continue
        source = path.read_text()
        for node in ast.walk(ast.parse(source)):
            func = getattr(node, "func", None)
            if isinstance(func, ast.Attribute) and func.attr == "load" and getattr(func.value, "id", None) == "torch":
                safe = any(k.arg == "weights_only" and getattr(k.value, "value", None) is True for k in node.keywords)
                if not safe and "# deliberately unsafe" not in source.splitlines()[node.lineno - 1]:
                    offenders.append(f"{path.relative_to(root)}:{node.lineno}")
    for path in sorted((root / "bundle" / "configs").glob("**/*.*")):  # config expressions
        text = path.read_text()
        for match in re.finditer(r"torch\.load\(", text):
            call = text[match.start() : text.find(")", match.start()) + 1]
            if "weights_only=True" not in call:
                offenders.append(f"{path.relative_to(root)}: {call}")
    assert offenders == []


# ---- non-finite steps ---------------------------------------------------------------------------------------------


def _nan_trainer(batches, max_nonfinite_steps=3, hook=None):
    from monai.data import DataLoader
    from monai.networks.schedulers import DDPMScheduler
    from scripts.engines import CascadeDiffusionTrainer, DiffusionObjective
    from scripts.networks import XrayToCTCascade
    from scripts.physics import ProjectionGeometry

    torch.manual_seed(0)
    net = XrayToCTCascade(ProjectionGeometry(**GEOMETRY_KW), 320.0, TINY_STAGES, encoder=TINY_ENCODER)
    items = [{"image_8": torch.rand(1, 8, 8, 8) * 2 - 1, "xray": torch.full((2, 32, 32), x)} for x in batches]
    trainer = CascadeDiffusionTrainer(
        device=torch.device("cpu"),
        max_epochs=1,
        train_data_loader=DataLoader(items, batch_size=1),
        network=net,
        optimizer=torch.optim.AdamW(net.parameters(), lr=1e-3),
        loss_function=torch.nn.MSELoss(),
        objective=DiffusionObjective(DDPMScheduler(1000, prediction_type="v_prediction")),
        stage=0,
        max_nonfinite_steps=max_nonfinite_steps,
        decollate=False,
    )
    weights = []  # the network after each iteration
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: weights.append(copy_state(net)))
    return trainer, net, weights


def copy_state(net):
    return {k: v.clone() for k, v in net.state_dict().items()}


def test_nonfinite_loss_skips_the_step_and_is_counted(caplog):
    nan = float("nan")
    trainer, net, weights = _nan_trainer([0.1, nan, 0.2, nan, 0.3])
    with caplog.at_level("WARNING"):
        trainer.run()
    assert trainer.state.iteration == 5 and trainer.state.skipped_steps == 2 and trainer.state.nonfinite_steps == 0
    # The skipped steps leave every weight as it was; the finite ones move it.
    for skipped in (1, 3):
        assert all(torch.equal(weights[skipped][k], v) for k, v in weights[skipped - 1].items())
    assert not all(torch.equal(weights[2][k], v) for k, v in weights[1].items())
    assert all(torch.isfinite(v).all() for v in net.state_dict().values())
    assert "iteration 2: non-finite loss nan, gradient norm nan; step skipped (1 in a row, 1 in total)." in caplog.text
    assert "iteration 4: non-finite loss nan, gradient norm nan; step skipped (1 in a row, 2 in total)." in caplog.text


def test_nonfinite_gradient_with_a_finite_loss_is_skipped():
    trainer, net, weights = _nan_trainer([0.1, 0.2])
    weight = net.stages[0]["denoiser"].final_layer.linear.weight
    handle = weight.register_hook(lambda g: g * float("inf") if trainer.state.iteration == 2 else g)
    trainer.run()
    handle.remove()
    assert trainer.state.skipped_steps == 1 and torch.isfinite(trainer.state.output["loss"])
    assert trainer.state.output["skipped"] and not torch.isfinite(trainer.state.output["grad_norm"])
    assert all(torch.equal(weights[1][k], v) for k, v in weights[0].items())


def test_nonfinite_steps_in_a_row_stop_training_with_a_clear_error():
    nan = float("nan")
    trainer, net, weights = _nan_trainer([0.1, nan, nan, nan, 0.2], max_nonfinite_steps=3)
    with pytest.raises(RuntimeError) as info:
        trainer.run()
    assert str(info.value) == (
        "training stopped at iteration 4: 3 steps in a row had a non-finite loss or gradient (loss nan, gradient "
        "norm nan); the weights are those of the last finite step. Lower learning_rate, check the data for NaN/Inf, "
        "or raise max_nonfinite_steps."
    )
    assert trainer.state.skipped_steps == 3
    assert all(torch.equal(net.state_dict()[k], v) for k, v in weights[0].items())  # the last finite step's weights
    with pytest.raises(ValueError, match=re.escape("max_nonfinite_steps must be a positive integer, got 0.")):
        _nan_trainer([0.1], max_nonfinite_steps=0)


# ---- resume after SIGKILL -----------------------------------------------------------------------------------------

ROOT = os.path.join(os.path.dirname(__file__), "..")
TINY_RUN = {
    "synthetic_count": 4,  # 2 training cases: with batch_size 1, two iterations per epoch (a kill can land mid-epoch)
    "synthetic_size": 32,
    "synthetic_spacing_mm": 10.0,
    "image_size": 16,
    "stage_sizes": [8, 16],
    "stages": [TINY_STAGES[0], dict(TINY_STAGES[0], grid_size=16)],
    "encoder": TINY_ENCODER,
    "geometry#detector_shape": [32, 32],
    "geometry#pixel_spacing_mm": [17.6, 17.6],
    "max_epochs": 4,
    "batch_size": 1,
    "val_interval": 1000,
    "num_inference_steps": 2,
    "ssim_window": 3,
    "checkpoint_interval": 1,
    "progress_bar": False,
}


def _training_command(tmp_path, models, **extra):
    cmd = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", "bundle/configs/train.yaml"]
    settings = dict(TINY_RUN, dataset_dir=str(tmp_path / "data"), output_dir=str(tmp_path / "runs"), **extra)
    for key, value in dict(settings, ckpt_dir=str(models)).items():
        cmd += [f"--{key}", json.dumps(value)]
    return cmd


def _assert_identical(a, b, where=""):
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert set(a) == set(b), (where, set(a) ^ set(b))
        for key in a:
            _assert_identical(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_identical(x, y, f"{where}[{i}]")
    else:
        assert a == b, (where, a, b)


def test_training_killed_with_sigkill_resumes_bit_identically(tmp_path):
    # The uninterrupted reference run (it also prepares the shared data set).
    full = subprocess.run(_training_command(tmp_path, tmp_path / "full"), cwd=ROOT, capture_output=True, text=True)
    assert full.returncode == 0, full.stderr[-3000:]
    # The same run, killed (SIGKILL: no handler runs) once its state file is past iteration 3 (mid-epoch 2) ...
    state = tmp_path / "killed" / "stage_0" / "training_state.pt"
    proc = subprocess.Popen(
        _training_command(tmp_path, tmp_path / "killed"), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if state.exists() and load_checkpoint(state)["trainer"]["iteration"] >= 3:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    killed_at = load_checkpoint(state)["trainer"]["iteration"]
    assert 3 <= killed_at < 8 and not (state.parent / "model.pt").exists()  # killed before the end
    # ... and resumed with --resume true.
    resumed = subprocess.run(
        _training_command(tmp_path, tmp_path / "killed", resume=True), cwd=ROOT, capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from {state} at iteration {killed_at}" in resumed.stdout + resumed.stderr
    # Same iteration, weights, EMA, optimizer moments, LR schedule, sampler, best-metric history and random streams.
    reference = load_checkpoint(tmp_path / "full" / "stage_0" / "training_state.pt")
    again = load_checkpoint(state)
    assert again["trainer"]["iteration"] == reference["trainer"]["iteration"] == 8
    _assert_identical(again, reference)
    for name in ("model.pt", "model_best.pt"):
        _assert_identical(load_checkpoint(state.parent / name), load_checkpoint(tmp_path / "full" / "stage_0" / name))
    assert not [p.name for p in state.parent.iterdir() if p.name.startswith(".")]  # no temporary file left


def _state_run(path, data, max_epochs=2, resume=False, preset="tiny"):
    from ignite.engine import Engine
    from scripts.engines.checkpointing import TrainingStateHandler

    net = torch.nn.Linear(2, 2)
    engine = Engine(lambda e, b: None)
    TrainingStateHandler(path, {"network": net}, interval=1, resume=resume, preset=_record(preset)).attach(engine)
    engine.run(data, max_epochs=max_epochs)
    return engine


def test_resume_errors_name_the_problem(tmp_path):
    from scripts.engines.checkpointing import TrainingStateHandler

    path = tmp_path / "training_state.pt"
    with pytest.raises(
        ValueError, match=re.escape("checkpoint_interval must be a non-negative integer (0: off), got -1")
    ):
        TrainingStateHandler(path, {}, interval=-1)
    with pytest.raises(ValueError, match=re.escape("resume must be true or false, got 'maybe'.")):
        TrainingStateHandler(path, {}, resume="maybe")
    assert TrainingStateHandler(path, {}, resume="true").resume is True  # as the command line passes it
    with pytest.raises(FileNotFoundError, match=re.escape(f"checkpoint {path} does not exist.")):
        _state_run(path, [0, 1], resume=True)
    _state_run(path, [0, 1])
    assert load_checkpoint(path)["trainer"]["iteration"] == 4
    with pytest.raises(
        ValueError, match=re.escape(f"checkpoint {path} was trained with preset 'tiny' but this config")
    ):
        _state_run(path, [0, 1], max_epochs=3, resume=True, preset="quick_2stage")
    with pytest.raises(ValueError) as info:
        _state_run(path, [0, 1, 2], max_epochs=3, resume=True)
    assert str(info.value) == (
        f"resume: {path} was written with 2 iterations per epoch, this run has 3; the data set, batch_size or "
        "number of processes changed."
    )
    with pytest.raises(ValueError) as info:
        _state_run(path, [0, 1], max_epochs=1, resume=True)
    assert str(info.value) == (
        f"resume: {path} is at iteration 4, beyond max_epochs 1 (2 iterations); raise max_epochs to train on."
    )
    assert _state_run(path, [0, 1], max_epochs=3, resume=True).state.iteration == 6  # resuming extends the training


def _ddp_state_worker(rank, path, init):
    from ignite.engine import Engine
    from scripts.engines.checkpointing import TrainingStateHandler

    torch.distributed.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    try:
        for resume in (False, True):
            torch.manual_seed(100 + rank)  # each rank its own noise
            engine = Engine(lambda e, b: torch.rand(1))
            TrainingStateHandler(path, {"network": torch.nn.Linear(2, 2)}, interval=2, resume=resume).attach(engine)
            engine.run([0, 1], max_epochs=2 if not resume else 3)
            if not resume:
                expected = torch.rand(3)  # what this rank draws after iteration 4
            else:
                assert engine.state.iteration == 6
                assert torch.equal(engine.state.output, expected[1:2]), rank  # iteration 5 drew expected[0]
            torch.distributed.barrier()  # rank 0 has written the file before anyone resumes from it
    finally:
        torch.distributed.destroy_process_group()


def test_ddp_ranks_keep_their_own_random_streams_across_resume(tmp_path):
    path = tmp_path / "training_state.pt"
    torch.multiprocessing.spawn(_ddp_state_worker, args=(path, f"file://{tmp_path / 'rendezvous'}"), nprocs=2)
    streams = load_checkpoint(path)["rng"]
    assert len(streams) == 2 and not torch.equal(streams[0]["torch"], streams[1]["torch"])


# ---- configuration errors -----------------------------------------------------------------------------------------

CONFIGS = os.path.join(ROOT, "bundle", "configs")
KNOWN = ["custom", "progressive_3stage", "quick_2stage", "stage4_512x512x604", "tiny"]  # and any preset added later


def _settings(**overrides):
    base = {
        "preset": "tiny",
        "stage": 0,
        "stages": [{"grid_size": 8}, {"grid_size": 16}],
        "stage_sizes": [8, 16],
        "image_size": 16,
        "hu_window": [-1000.0, 2000.0],
        "num_train_timesteps": 1000,
        "num_inference_steps": 20,
        "previous_sample_steps": 5,
        "ssim_window": 7,
        "learning_rate": 3e-4,
        "weight_decay": 0.01,
        "ema_momentum": 0.01,
        "batch_size": 2,
        "max_epochs": 10,
        "val_interval": 2,
        "cache_rate": 1.0,
        "num_workers": 0,
    }
    return dict(base, **overrides)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            {"preset": "quick2stage"},
            "preset: unknown preset 'quick2stage'; known: {known} (the preset: of train.yaml and of "
            "configs/stages/*.yaml; an architecture of your own is preset 'custom').",
        ),
        (
            {"stage": 1, "stage_sizes": [8, 32]},
            "stage_sizes [8, 32] must contain the grid size of every stage this run uses: stages[1].grid_size is 16 "
            "(the training batches carry image_<size> for each size).",
        ),
        (
            {"image_size": 8},
            "image_size (8) must be at least the largest of stage_sizes (16): the stage volumes are resized from it.",
        ),
        (
            {"ssim_window": 9},
            "ssim_window must be a positive number of voxels no larger than the smallest stage grid (8), got 9.",
        ),
        ({"num_inference_steps": 0}, "num_inference_steps must be a positive integer (or one per stage), got 0."),
        (
            {"num_inference_steps": [5, -1]},
            "num_inference_steps must be a positive integer (or one per stage), got [5, -1].",
        ),
        ({"num_inference_steps": 2000}, "num_inference_steps (2000) cannot exceed num_train_timesteps (1000)."),
        ({"num_train_timesteps": 0}, "num_train_timesteps must be a positive integer, got 0."),
        ({"previous_sample_steps": 0}, "previous_sample_steps must be a positive integer, got 0."),
        ({"learning_rate": -1e-4}, "learning_rate must be a positive number, got -0.0001."),
        ({"weight_decay": -0.01}, "weight_decay must be a number >= 0.0, got -0.01."),
        ({"ema_momentum": 1.5}, "ema_momentum must be a number in (0.0, 1.0], got 1.5."),
        ({"cache_rate": 2}, "cache_rate must be a number in [0.0, 1.0], got 2."),
        ({"batch_size": 0}, "batch_size must be a positive integer, got 0."),
        ({"max_epochs": -3}, "max_epochs must be a positive integer, got -3."),
        ({"val_interval": 0}, "val_interval must be a positive integer, got 0."),
        ({"num_workers": -1}, "num_workers must be an integer >= 0, got -1."),
        ({"hu_window": [2000, -1000]}, "hu_window must be (low, high) in HU with high > low, got [2000, -1000]."),
    ],
)
def test_bad_training_settings_are_named(overrides, message):
    from scripts.engines.settings import check_training_settings, known_presets

    known = known_presets(CONFIGS)
    assert set(KNOWN) <= set(known)
    check_training_settings(_settings(), CONFIGS)  # the defaults pass
    with pytest.raises(ValueError) as info:
        check_training_settings(_settings(**overrides), CONFIGS)
    assert str(info.value) == message.format(known=known)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"preset": "tinny"}, "preset: unknown preset 'tinny'; known: "),
        ({"geometry#views": ["pa", "oblique"]}, "views: unknown view name 'oblique'; expected one of "),
        (
            {"stages": [dict(TINY_STAGES[0], patch_size=3), dict(TINY_STAGES[0], grid_size=16)]},
            "stages[0]: grid_size (8, 8, 8) must be divisible by patch_size (3, 3, 3).",
        ),
        ({"num_inference_steps": -2}, "num_inference_steps must be a positive integer (or one per stage), got -2."),
        ({"learning_rate": -0.1}, "learning_rate must be a positive number, got -0.1."),
    ],
)
def test_training_workflow_names_the_bad_key_before_building_anything(tmp_path, overrides, message):
    from monai.bundle import ConfigWorkflow

    settings = {k: v for k, v in TINY_RUN.items() if k not in ("synthetic_count", "checkpoint_interval")}
    workflow = ConfigWorkflow(
        config_file=os.path.join(CONFIGS, "train.yaml"),
        workflow_type=None,
        run_id="training",
        **dict(settings, dataset_dir=str(tmp_path / "data"), ckpt_dir=str(tmp_path / "models"), **overrides),
    )
    with pytest.raises(RuntimeError) as info:
        workflow.initialize()
    cause = info.value.__cause__
    assert isinstance(cause, ValueError) and str(cause).startswith(message), repr(cause)
    assert not (tmp_path / "data").exists()  # failed before preparing or caching any data
