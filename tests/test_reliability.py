"""Reliability: weights-only checkpoints, atomic writes, model configs, non-finite steps, resume after SIGKILL,
config errors."""

from __future__ import annotations

import functools
import json
import pickle
import re
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import (
    ROOT,
    SMALL_ENCODER,
    SMALL_GEOMETRY,
    SMALL_STAGES,
    TINY_CONFIG,
    cli_config_files,
    config_files,
    small_cascade,
    small_geometry,
)
from ignite.engine import Events
from scripts.checkpoint import (
    MODEL_CONFIG_KEYS,
    AtomicCheckpointSaver,
    TrainingStateHandler,
    check_model_config,
    load_checkpoint,
    load_network_weights,
    model_config,
    read_model_config,
    save_checkpoint,
)

#: The model config of the small cascade (conftest's stages, encoder and 32² geometry; common.yaml's physics).
RECORD_SETTINGS = {
    "network": "XrayToCTCascade",
    "preset": "tiny",
    "stages": SMALL_STAGES,
    "encoder": SMALL_ENCODER,
    "use_depth_lifting": True,
    "fov_mm": 320.0,
    "geometry": SMALL_GEOMETRY,
    "physics": {"mu_water_per_mm": 0.0206, "max_line_integral": 10.0},
    "hu_window": (-1000.0, 2000.0),
    "prediction_type": "v_prediction",
    "noise_schedule": "scaled_linear_beta",
    "num_train_timesteps": 1000,
}
#: The tail of every check_model_config message.
LEAVE_IT_UNSET = (
    "; it is part of what the weights mean and comes from the checkpoint, so leave it unset (sampling settings stay "
    "free)."
)


def _record(**changes):
    return model_config(**dict(RECORD_SETTINGS, **changes))


def _contradiction(key, path, found, given):
    return f"{key}: the checkpoint {path} was trained with {found!r}, this run gives {given!r}{LEAVE_IT_UNSET}"


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


def test_save_checkpoint_records_model_config_and_config_and_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "model.pt"
    save_checkpoint(path, {"network": {"w": torch.ones(3)}}, _record(), {"stage": 0, "seed": (1, 2)})
    loaded = load_checkpoint(path)
    assert set(loaded) == {"network", "model_config", "config"}
    assert loaded["model_config"] == _record() and loaded["model_config"]["preset"] == "tiny"
    assert loaded["config"] == {"stage": 0, "seed": [1, 2]}  # JSON-plain: it round-trips under weights_only
    assert read_model_config(path) == _record()
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


def test_model_config_is_a_plain_record_of_what_the_weights_mean():
    record = _record()
    assert tuple(record) == MODEL_CONFIG_KEYS
    assert json.loads(json.dumps(record)) == record  # JSON-plain (tuples became lists)
    assert record["hu_window"] == [-1000.0, 2000.0] and record["geometry"]["views"] == ["pa", "lateral"]
    assert record["geometry"]["detector_shape"] == [32, 32] and record["geometry"]["pixel_spacing_mm"] == [17.6, 17.6]
    # The geometry as an object or as its config mapping gives the same record; so does a dotted _target_.
    assert _record(geometry=small_geometry(32), network="scripts.networks.XrayToCTCascade") == record
    # Objectives without a beta schedule record none.
    assert _record(prediction_type="rectified_flow")["noise_schedule"] is None
    assert _record(prediction_type="epsilon")["noise_schedule"] == "scaled_linear_beta"
    with pytest.raises(ValueError) as info:
        _record(network="scripts.networks.UNet")
    assert str(info.value) == "network: 'UNet' is not one of ['XrayToCTCascade', 'LiftedRegressor']."
    with pytest.raises(ValueError) as info:
        _record(hu_window=(2000.0, -1000.0))
    assert str(info.value) == "hu_window must be (low, high) in HU with high > low, got (2000.0, -1000.0)."


def test_checkpoint_of_other_settings_is_refused_naming_the_key():
    given = _record()
    cases = [
        (_record(preset="quick_2stage"), "preset", "quick_2stage", "tiny"),
        (_record(stages=[dict(SMALL_STAGES[0], grid_size=16), SMALL_STAGES[1]]), "stages#0#grid_size", 16, 8),
        (_record(stages=SMALL_STAGES[:1]), "stages", SMALL_STAGES[:1], SMALL_STAGES),  # another number of stages
        (_record(encoder=dict(SMALL_ENCODER, depth=2)), "encoder#depth", 2, 1),
        (
            _record(geometry=dict(SMALL_GEOMETRY, source_to_detector_mm=1000.0)),
            "geometry#source_to_detector_mm",
            1000.0,
            given["geometry"]["source_to_detector_mm"],
        ),
        (_record(num_train_timesteps=500), "num_train_timesteps", 500, 1000),
    ]
    for found, key, in_checkpoint, in_run in cases:
        with pytest.raises(ValueError) as info:
            check_model_config(found, given, "ckpt/model.pt")
        assert str(info.value) == _contradiction(key, "ckpt/model.pt", in_checkpoint, in_run)
        assert "\n" not in str(info.value)
    # The architecture is compared before the rest: with both differing, the preset is named.
    with pytest.raises(ValueError, match=r"^preset: "):
        check_model_config(_record(preset="other", hu_window=(-1024.0, 3071.0)), given, "m.pt")
    # The same settings pass (tuples and lists alike) and the checkpoint's record comes back.
    assert check_model_config(_record(), dict(given, hu_window=(-1000.0, 2000.0)), "m.pt") == given


def test_records_without_a_model_config_are_refused_or_converted(tmp_path):
    path = tmp_path / "bare.pt"
    save_checkpoint(path, {"network": {"w": torch.ones(1)}})
    with pytest.raises(ValueError) as info:
        read_model_config(path)
    assert str(info.value).startswith(
        f"checkpoint {path} records no model_config (and no 0.2.0 preset/config): nothing says what its weights mean."
    )
    torch.save({"model_config": {"network": "XrayToCTCascade", "preset": "tiny"}}, path)
    with pytest.raises(ValueError) as info:
        read_model_config(path)
    missing = [k for k in MODEL_CONFIG_KEYS if k not in ("network", "preset")]
    assert str(info.value) == f"checkpoint {path}: its model_config lacks {missing}."
    # A 0.2.0 record (preset + config, the geometry as its repr) converts to the same model config.
    legacy = {
        "preset": {
            "name": "tiny",
            "stages": SMALL_STAGES,
            "encoder": SMALL_ENCODER,
            "fov_mm": 320.0,
            "use_depth_lifting": True,
        },
        "config": {
            "geometry": repr(small_geometry(32)),
            "physics": RECORD_SETTINGS["physics"],
            "hu_window": [-1000.0, 2000.0],
            "prediction_type": "v_prediction",
            "num_train_timesteps": 1000,
        },
    }
    assert legacy["config"]["geometry"].startswith("ProjectionGeometry(views=")
    assert read_model_config(legacy) == _record()
    # Its geometry text is read as literals only: code in it is refused, never run.
    marker = tmp_path / "payload_ran"
    text = f"ProjectionGeometry(views=open({str(marker)!r}, 'w'))"
    with pytest.raises(ValueError, match=re.escape(f"its 0.2.0 geometry record {text!r} is unreadable")):
        read_model_config({**legacy, "config": {**legacy["config"], "geometry": text}})
    assert not marker.exists()


def test_load_network_weights_checks_model_config_and_shapes(tmp_path):
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    path = tmp_path / "model.pt"
    ema = {k: torch.full_like(v, 0.5) for k, v in net.state_dict().items()}
    save_checkpoint(path, {"network": net.state_dict(), "ema": ema}, _record())
    fresh = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    checkpoint = load_network_weights(fresh, path, _record())
    assert checkpoint["model_config"] == _record()
    assert all(torch.equal(v, torch.full_like(v, 0.5)) for v in fresh.state_dict().values())  # the EMA weights
    load_network_weights(fresh, path, _record(), keys=("network",))  # the raw training weights, when asked for
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in fresh.state_dict().items())
    with pytest.raises(ValueError) as info:
        load_network_weights(fresh, path, _record(preset="quick_2stage"))
    assert str(info.value) == _contradiction("preset", path, "tiny", "quick_2stage")
    other = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Linear(5, 2))
    with pytest.raises(ValueError) as info:
        load_network_weights(other, path, None)
    assert str(info.value) == (
        f"checkpoint {path} does not fit this network: shape (checkpoint vs network) "
        "['0.weight (4, 3) vs (5, 3)', '0.bias (4,) vs (5,)', '1.weight (2, 4) vs (2, 5)']."
    )
    torch.save({"0.weight": torch.ones(4, 3)}, path)  # a bare, partial state dict (no record)
    with pytest.raises(ValueError) as info:
        load_network_weights(fresh, path, None)
    assert str(info.value) == f"checkpoint {path} does not fit this network: missing ['0.bias', '1.weight', '1.bias']."
    with pytest.raises(ValueError, match=re.escape(f"checkpoint {path} records no model_config")):
        load_network_weights(fresh, path, _record())  # with a record to check, a file without one is refused


def test_training_checkpoint_saver_is_atomic_finite_only_and_records(tmp_path):
    from ignite.engine import Engine

    net = torch.nn.Linear(2, 2)
    saver = AtomicCheckpointSaver(
        save_dir=str(tmp_path),
        save_dict={"network": net},
        model_config=_record(),
        config={"stage": 0},
        save_final=True,
        final_filename="model.pt",
    )
    engine = Engine(lambda e, b: None)
    saver.attach(engine)
    engine.run([0], max_epochs=1)
    saved = load_checkpoint(tmp_path / "model.pt")  # one object: its state dict, the records beside it
    assert set(saved) == {"weight", "bias", "model_config", "config"} and saved["config"] == {"stage": 0}
    assert saved["model_config"] == _record() and torch.equal(saved["weight"], net.weight)
    # A non-finite model is refused: training stops with the error and the last good file stays.
    with torch.no_grad():
        net.bias.fill_(float("inf"))
    with pytest.raises(ValueError) as info:
        engine.run([0], max_epochs=1)
    assert str(info.value) == (
        f"refusing to write checkpoint {tmp_path / 'model.pt'}: bias is not finite (NaN or Inf); the file is kept."
    )
    assert torch.equal(load_checkpoint(tmp_path / "model.pt")["bias"], saved["bias"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]


def test_every_torch_load_in_the_repository_is_weights_only():
    import ast

    root, offenders = ROOT.resolve(), []
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


def _nan_trainer(batches, max_nonfinite_steps=3):
    from monai.data import DataLoader
    from monai.networks.schedulers import DDPMScheduler
    from scripts.engines import CascadeDiffusionTrainer, DiffusionObjective

    torch.manual_seed(0)
    net = small_cascade(SMALL_STAGES[:1])  # one 8³ stage, 32² views
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

TINY_RUN = {
    **TINY_CONFIG,
    "synthetic_count": 4,  # 2 training cases: with batch_size 1, two iterations per epoch (a kill can land mid-epoch)
    "synthetic_size": 32,
    "synthetic_spacing_mm": 10.0,
    "max_epochs": 4,
    "batch_size": 1,
    "val_interval": 1000,
    "ssim_window": 3,
    "checkpoint_interval": 1,
}


def _training_command(tmp_path, models, **extra):
    cmd = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", cli_config_files("train.yaml")]
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
    assert again["model_config"]["stages"] == SMALL_STAGES and again["config"]["stage"] == 0  # the records too
    _assert_identical(again, reference)
    for name in ("model.pt", "model_best.pt"):
        _assert_identical(load_checkpoint(state.parent / name), load_checkpoint(tmp_path / "full" / "stage_0" / name))
    assert not [p.name for p in state.parent.iterdir() if p.name.startswith(".")]  # no temporary file left


def _state_run(path, data, max_epochs=2, resume=False, preset="tiny"):
    from ignite.engine import Engine

    net = torch.nn.Linear(2, 2)
    engine = Engine(lambda e, b: None)
    handler = TrainingStateHandler(
        path, {"network": net}, interval=1, resume=resume, model_config=_record(preset=preset), config={"stage": 0}
    )
    handler.attach(engine)
    engine.run(data, max_epochs=max_epochs)
    return engine


def test_resume_errors_name_the_problem(tmp_path):
    path = tmp_path / "training_state.pt"
    with pytest.raises(ValueError) as info:
        TrainingStateHandler(path, {}, interval=-1)
    assert str(info.value) == "checkpoint_interval must be a non-negative integer (0: off), got -1."
    with pytest.raises(ValueError) as info:  # MONAI's str2bool, as the command line passes it
        TrainingStateHandler(path, {}, resume="maybe")
    assert str(info.value).startswith('Got "maybe", expected a value from: yes, true, ')
    assert TrainingStateHandler(path, {}, resume="true").resume is True
    assert TrainingStateHandler(path, {}, resume="false").resume is False
    with pytest.raises(ValueError, match=re.escape("names ['config', 'trainer'] are reserved")):
        TrainingStateHandler(path, {"trainer": torch.nn.Linear(1, 1), "config": torch.nn.Linear(1, 1)})
    with pytest.raises(FileNotFoundError, match=re.escape(f"checkpoint {path} does not exist.")):
        _state_run(path, [0, 1], resume=True)
    _state_run(path, [0, 1])
    state = load_checkpoint(path)
    assert state["trainer"]["iteration"] == 4
    assert state["model_config"] == _record() and state["config"] == {"stage": 0}
    with pytest.raises(ValueError) as info:
        _state_run(path, [0, 1], max_epochs=3, resume=True, preset="quick_2stage")
    assert str(info.value) == _contradiction("preset", path, "tiny", "quick_2stage")
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
# Each value is checked by what owns it (the network, the geometry, the model config, MONAI's and ignite's classes,
# torch's optimizer and DataLoader, the bundle's handlers); the workflow stops at initialize with that message.


@pytest.mark.parametrize(
    "overrides, message, before_data",
    [
        (
            {"geometry#views": ["pa", "oblique"]},
            "views: unknown view name 'oblique'; expected one of ['lateral', 'pa'] or a gantry angle in degrees.",
            True,
        ),
        (
            {"stages": [dict(SMALL_STAGES[0], patch_size=3), SMALL_STAGES[1]]},
            "stages[0]: grid_size (8, 8, 8) must be divisible by patch_size (3, 3, 3).",
            True,
        ),
        ({"stage": 7}, "stage must be -1 (joint) or in [0, 1], got 7.", True),
        (
            {"hu_window": [2000, -1000]},
            "hu_window must be (low, high) in HU with high > low, got [2000, -1000].",
            True,
        ),
        ({"ema_momentum": 1.5}, "Invalid momentum: 1.5", True),  # ignite's EMAHandler
        ({"learning_rate": -0.1}, "Invalid learning rate: -0.1", False),  # torch's AdamW
        ({"batch_size": 0}, "batch_size should be a positive integer value, but got batch_size=0", False),
        ({"physics_loss_weight": -0.5}, "physics_loss_weight must be a non-negative number, got -0.5.", False),
        ({"physics_timestep_gate": 0}, "physics_timestep_gate must be in (0, 1], got 0.", False),
        ({"checkpoint_interval": -1}, "checkpoint_interval must be a non-negative integer (0: off), got -1.", False),
    ],
)
def test_training_workflow_names_the_bad_setting_at_initialize(tmp_path, overrides, message, before_data):
    from monai.bundle import ConfigWorkflow

    workflow = ConfigWorkflow(
        config_file=config_files("train.yaml"),
        workflow_type=None,
        run_id="training",
        **dict(TINY_RUN, dataset_dir=str(tmp_path / "data"), ckpt_dir=str(tmp_path / "models"), **overrides),
    )
    with pytest.raises(RuntimeError) as info:
        workflow.initialize()
    cause = info.value.__cause__
    assert isinstance(cause, ValueError) and str(cause) == message, repr(cause)
    # The network, geometry and model config are built before the data: those fail before preparing any of it.
    assert (tmp_path / "data").exists() is not before_data
    assert not (tmp_path / "models" / "stage_0" / "config.json").exists()  # no run was recorded


def test_yes_no_settings_from_the_command_line():
    """``--overwrite false`` arrives as the string "false": it must read as False, never as a truthy string."""
    from monai.networks.schedulers import DDIMScheduler
    from scripts.engines import CascadeSampler
    from scripts.utils import flag

    assert flag("false", "overwrite") is False and flag("True", "overwrite") is True and flag(False, "x") is False
    assert CascadeSampler(functools.partial(DDIMScheduler, 1000), 1, progress="false").progress is False
    with pytest.raises(ValueError, match=r"^overwrite must be true or false, got 'maybe'\.$"):
        flag("maybe", "overwrite")
