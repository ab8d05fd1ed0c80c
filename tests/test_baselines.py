"""Regression baselines (``LiftedRegressor``): residual over a constant at init, the coarse decoder grid, refused
options, the shipped checkpoints."""

from __future__ import annotations

import re

import pytest
import torch
from conftest import ROOT, SMALL_ENCODER, SMALL_GEOMETRY, config_parser
from scripts.checkpoint import build_network, load_network_weights, read_model_config
from scripts.networks import LiftedRegressor
from scripts.physics import ProjectionGeometry

UNET = {"grid_size": 32, "decoder": "unet", "lift_channels": 4, "unet_features": [4, 4, 8, 8, 8, 4]}
LINEAR = {"grid_size": 16, "decoder": "linear", "lift_channels": 4}
GRID_MESSAGE = "stages[0].decoder_grid must be an integer from 32 (the U-Net halves it four times) to grid_size"


def _regressor(**stage) -> LiftedRegressor:
    return LiftedRegressor(ProjectionGeometry(**SMALL_GEOMETRY), 320.0, [stage], encoder=SMALL_ENCODER)


def _views(batch: int = 2) -> torch.Tensor:
    return torch.rand(batch, 2, 32, 32) * 2 - 1  # (B, V, H, W) network scale


@pytest.mark.parametrize(
    "stage, grid",
    [
        (dict(UNET, output_offset=-0.71), 32),
        (dict(UNET, grid_size=64, output_offset=-0.71, decoder_grid=32), 64),
        (dict(LINEAR, output_offset=0.25), 16),
    ],
    ids=["unet", "unet_coarse", "linear"],
)
def test_untrained_regressor_outputs_its_offset_exactly(stage, grid):
    net = _regressor(**stage)
    with torch.no_grad():
        out = net(None, None, _views())
    assert out.shape == (2, 1, grid, grid, grid)
    assert torch.equal(out, torch.full_like(out, stage["output_offset"]))


def test_first_step_reaches_the_output_layer_only_then_the_rest():
    """Zero output layer: its own gradient is the only non-zero one at step 1; after one step all layers learn."""
    net = _regressor(**UNET, output_offset=-0.7)
    target = torch.full((2, 1, 32, 32, 32), -0.5)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3)
    views = _views()
    grads = []
    for _ in range(2):
        optimizer.zero_grad()
        ((net(None, None, views) - target) ** 2).mean().backward()
        grads.append({n: float(p.grad.abs().sum()) for n, p in net.named_parameters() if p.grad is not None})
        optimizer.step()
    assert {n for n, g in grads[0].items() if g > 0} == {
        "stages.0.decoder.final_conv.weight",
        "stages.0.decoder.final_conv.bias",
    }
    assert len(grads[1]) == len(grads[0]) > 100 and all(g > 0 for g in grads[1].values())


def test_coarse_decoder_grid_lifts_and_decodes_on_it_then_upsamples():
    net = _regressor(**dict(UNET, grid_size=64, decoder_grid=32))
    stage = net.stages[0]
    assert stage["lifting"].grid_size == (32, 32, 32) and net.grid_size() == (64, 64, 64)
    encoding = net.encode(_views())
    features = stage["decoder"](stage["lifting"](encoding))
    assert features.shape == (2, 4, 32, 32, 32)  # the U-Net's last features, not one channel
    assert stage["upsample"][-1].weight.shape == (1, 4, 3, 3, 3)
    full = _regressor(**UNET)
    assert "upsample" not in full.stages[0] and full.stages[0]["lifting"].grid_size == (32, 32, 32)


@pytest.mark.parametrize(
    "change, message",
    [
        (
            {"output_ofset": -0.7},
            "stages[0]: unknown keys ['output_ofset'] for a regressor; allowed: ['grid_size', 'decoder', "
            "'lift_channels', 'unet_features', 'output_offset', 'decoder_grid'].",
        ),
        ({"output_offset": -1.5}, "stages[0].output_offset must be a number on the CT scale [-1, 1], got -1.5."),
        ({"output_offset": "-0.7"}, "stages[0].output_offset must be a number on the CT scale [-1, 1], got '-0.7'."),
        ({"output_offset": float("nan")}, "stages[0].output_offset must be a number on the CT scale [-1, 1], got nan."),
        ({"decoder_grid": 48}, f"{GRID_MESSAGE} (32), got 48."),
        ({"grid_size": 64, "decoder_grid": 16}, f"{GRID_MESSAGE} (64), got 16."),
        ({"grid_size": 64, "decoder_grid": 32.0}, f"{GRID_MESSAGE} (64), got 32.0."),
        (
            {"decoder": "linear", "grid_size": 64, "decoder_grid": 32},
            "stages[0].decoder_grid applies to decoder 'unet' only, got decoder 'linear'.",
        ),
    ],
)
def test_bad_regressor_option_is_refused_by_name(change, message):
    with pytest.raises(ValueError, match=re.escape(message) + "$"):
        _regressor(**dict(UNET, **change))


@pytest.mark.parametrize("name", ["unet_3d", "lifted_prior"])
def test_shipped_baselines_load_with_the_meaning_they_record(name):
    """Built from its own record and loaded strictly (names and shapes): the offset is the recorded one."""
    path = ROOT / "bundle" / "models" / "baselines" / f"{name}.pt"
    record = read_model_config(path)
    network = build_network(record)
    load_network_weights(network, path, None)
    assert network.output_offset == record["stages"][0].get("output_offset", 0.0)
    assert float(network._output_layer().weight.abs().sum()) > 0  # the trained weights, not the zero init


def test_a_checkpoint_from_before_the_offset_keeps_its_meaning(tmp_path):
    """0.4.0 records have no output_offset or decoder_grid: offset 0, full-grid decoder, the same weight names."""
    old = {"grid_size": 64, "decoder": "unet", "lift_channels": 16, "unet_features": [8, 16, 32, 64, 128, 8]}
    trained = _regressor(**old)
    assert trained.output_offset == 0.0 and "upsample" not in trained.stages[0]
    rebuilt = _regressor(**old)
    assert not rebuilt.load_state_dict(trained.state_dict()).missing_keys  # strict: the same names and shapes


@pytest.mark.parametrize("preset", ["baseline_unet3d.yaml", "baseline_lifted_prior.yaml"])
def test_baseline_presets_start_from_the_training_mean(preset):
    parser = config_parser("train.yaml", f"stages/{preset}")
    stage = parser["stages"][0]
    assert stage["output_offset"] == -0.71  # benchmarks/baselines.py: the 32 default training phantoms at 64³
    assert set(stage) <= {"grid_size", "decoder", "lift_channels", "unet_features", "output_offset", "decoder_grid"}


def test_the_trainers_interface_check_finds_module_members_on_every_python():
    """From Python 3.12 on, ``isinstance(net, CascadeLike)`` misses an nn.Module's submodules (runtime protocols look
    members up statically): the check the trainer uses finds them, for the cascade and the regression baselines."""
    from conftest import small_cascade
    from scripts.engines import CascadeDiffusionTrainer
    from scripts.networks import CascadeLike, is_cascade_like
    from scripts.networks.interface import _MEMBERS

    protocol = set(CascadeLike.__annotations__) | {k for k in vars(CascadeLike) if not k.startswith("_")}
    assert set(_MEMBERS) == protocol
    assert is_cascade_like(small_cascade()) and is_cascade_like(_regressor(**LINEAR))
    assert not is_cascade_like(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError) as info:
        CascadeDiffusionTrainer(
            device=torch.device("cpu"),
            max_epochs=1,
            train_data_loader=[],
            network=torch.nn.Linear(2, 2),
            optimizer=torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1),
            loss_function=torch.nn.MSELoss(),
            objective=None,
            stage=0,
        )
    assert str(info.value) == "network must be CascadeLike (e.g. an XrayToCTCascade), got Linear."
