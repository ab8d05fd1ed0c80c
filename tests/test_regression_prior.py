"""A regression network's CT as the cascade's first estimate (``CascadeSampler(prior=...)``, inference.yaml's
``regression_prior``): which stages it replaces, where sampling starts, what checkpoints it accepts."""

from __future__ import annotations

import functools
import re

import pytest
import torch
from conftest import SMALL_ENCODER, SMALL_GEOMETRY, SMALL_STAGES, config_parser, small_cascade
from monai.networks.schedulers import DDIMScheduler
from scripts.checkpoint import model_config, save_checkpoint
from scripts.engines import CascadeSampler, CTInferer, RegressionPrior, load_regression_prior, shipped_prior
from scripts.networks import LiftedRegressor
from scripts.physics import ProjectionGeometry

WINDOW = [-1000.0, 2000.0]
PHYSICS = {"mu_water_per_mm": 0.0206, "max_line_integral": 10.0}
REGRESSOR_STAGE = {"grid_size": 16, "decoder": "linear", "lift_channels": 4}


def _ddim():
    return functools.partial(DDIMScheduler, 1000, prediction_type="v_prediction", clip_sample=False)


class _Recording(torch.nn.Module):
    """Wraps a cascade and records every denoising call: (stage, t, the x it was given, the previous volume)."""

    def __init__(self, net):
        super().__init__()
        self.net, self.calls = net, []

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.net, name)

    def forward(self, x, t, **kwargs):
        self.calls.append((kwargs["stage"], int(t[0]), x.clone(), kwargs.get("previous")))
        return self.net(x, t, **kwargs)


class _Fixed:
    """A prior that returns one fixed volume ``(1, 1, 16, 16, 16)`` whatever the views, and counts its calls."""

    def __init__(self):
        self.volume = torch.linspace(-1, 1, 16**3).reshape(1, 1, 16, 16, 16)
        self.calls = 0

    def __call__(self, inputs, view_mask=None):
        self.calls += 1
        return self.volume.expand(inputs.shape[0], -1, -1, -1, -1)


@torch.no_grad()
def test_prior_replaces_stage_0_and_conditions_stage_1_on_its_area_average():
    net = _Recording(small_cascade(SMALL_STAGES, random_weights=True))
    views = torch.rand(1, 2, 32, 32) * 2 - 1
    prior = _Fixed()
    out = CascadeSampler(_ddim(), 3, seed=7, prior=prior)(views, net)
    assert prior.calls == 1 and [c[0] for c in net.calls] == [1, 1, 1]  # stage 0 never runs
    # Stage 0's grid is 8³: each voxel is the mean of a 2³ block of the 16³ estimate.
    expected = prior.volume.reshape(1, 1, 8, 2, 8, 2, 8, 2).mean(dim=(3, 5, 7))
    # A sum of 8 float32 terms of magnitude ≤ 1 and a division: ≤ 8 ulp of 1 in the order of the additions.
    torch.testing.assert_close(net.calls[0][3], expected, rtol=0, atol=8 * 2.0**-23)
    # The same as sampling stage 1 alone with that volume as its previous stage (same seed, same noise).
    previous = net.calls[0][3]
    alone = CascadeSampler(_ddim(), 3, seed=7, stages=[1])(views, net, previous=previous)
    assert torch.equal(out, alone)


@torch.no_grad()
def test_prior_start_skips_the_noisier_steps_and_starts_from_the_noised_estimate():
    net = _Recording(small_cascade(SMALL_STAGES, random_weights=True))
    views = torch.rand(1, 2, 32, 32) * 2 - 1
    prior = _Fixed()
    CascadeSampler(_ddim(), 10, seed=3, prior=prior, prior_start=0.3)(views, net)
    # MONAI's 10 DDIM timesteps are 999, 888, ..., 111, 0; t / T <= 0.3 leaves 222, 111, 0.
    assert [(c[0], c[1]) for c in net.calls] == [(1, 222), (1, 111), (1, 0)]
    scheduler = _ddim()()
    noise = torch.randn((1, 1, 16, 16, 16), generator=torch.Generator().manual_seed(3))
    first = scheduler.add_noise(prior.volume, noise, torch.tensor([222]))  # √ᾱ·x + √(1−ᾱ)·ε at t = 222
    assert torch.equal(net.calls[0][2], first)


@torch.no_grad()
def test_a_single_stage_cascade_keeps_its_stage_and_only_starts_from_the_prior():
    net = _Recording(small_cascade(SMALL_STAGES[1:], random_weights=True))  # one 16³ stage
    views = torch.rand(1, 2, 32, 32) * 2 - 1
    prior = _Fixed()
    CascadeSampler(_ddim(), 4, seed=0, prior=prior, prior_start=0.5)(views, net)
    assert [(c[0], c[1]) for c in net.calls] == [(0, 333), (0, 0)]  # of 999, 666, 333, 0
    assert net.calls[0][3] is None  # nothing before the first stage


def test_prior_settings_are_checked():
    with pytest.raises(ValueError, match=r"^prior_start must be a number in \(0, 1\] \(1: from pure noise\), got 0\.$"):
        CascadeSampler(_ddim(), prior=_Fixed(), prior_start=0)
    with pytest.raises(ValueError, match=r"^prior_start 0\.5 needs a prior to start from; none is set\.$"):
        CascadeSampler(_ddim(), prior_start=0.5)
    with pytest.raises(ValueError, match=r"^prior_stages must be a non-negative integer, got -1\.$"):
        CascadeSampler(_ddim(), prior=_Fixed(), prior_stages=-1)


def _record(network: str, prediction_type: str, hu_window=WINDOW, stages=(REGRESSOR_STAGE,)) -> dict:
    return model_config(
        network=network,
        preset="test",
        stages=list(stages),
        encoder=SMALL_ENCODER,
        use_depth_lifting=True,
        fov_mm=320.0,
        geometry=SMALL_GEOMETRY,
        physics=PHYSICS,
        hu_window=hu_window,
        prediction_type=prediction_type,
        noise_schedule=None if prediction_type == "regression" else "scaled_linear_beta",
        num_train_timesteps=1000,
    )


def _regressor_checkpoint(path, hu_window=WINDOW) -> LiftedRegressor:
    net = LiftedRegressor(ProjectionGeometry(**SMALL_GEOMETRY), 320.0, [REGRESSOR_STAGE], encoder=SMALL_ENCODER)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0.0, 0.05)
    save_checkpoint(path, net.state_dict(), model_config=_record("LiftedRegressor", "regression", hu_window))
    return net.eval()


@torch.no_grad()
def test_from_checkpoint_gives_the_regressors_own_output(tmp_path):
    net = _regressor_checkpoint(tmp_path / "unet.pt")
    views = torch.rand(2, 2, 32, 32) * 2 - 1
    prior = RegressionPrior.from_checkpoint(tmp_path / "unet.pt", _record("XrayToCTCascade", "v_prediction"))
    assert torch.equal(prior(views), net(None, None, views).float().clamp(-1, 1))


def test_from_checkpoint_refuses_a_diffusion_model_and_other_physics(tmp_path):
    cascade = small_cascade(SMALL_STAGES)
    save_checkpoint(
        tmp_path / "cascade.pt",
        cascade.state_dict(),
        model_config=_record("XrayToCTCascade", "v_prediction", stages=SMALL_STAGES),
    )
    message = (
        f"regression_prior: {tmp_path / 'cascade.pt'} is not a regression checkpoint (prediction_type "
        "'v_prediction'); train one with configs/stages/baseline_unet3d.yaml."
    )
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        RegressionPrior.from_checkpoint(tmp_path / "cascade.pt")
    _regressor_checkpoint(tmp_path / "other.pt", hu_window=[-1024.0, 3071.0])
    with pytest.raises(ValueError, match="hu_window"):
        RegressionPrior.from_checkpoint(tmp_path / "other.pt", _record("XrayToCTCascade", "v_prediction"))


def test_inference_config_builds_the_sampler_with_the_prior(tmp_path):
    _regressor_checkpoint(tmp_path / "unet.pt")
    parser = config_parser(
        "inference.yaml",
        **{"regression_prior#ckpt_path": str(tmp_path / "unet.pt"), "regression_prior#start": 0.4},
    )
    # The cascade's records, as inference reads them from its checkpoint.
    record = _record("XrayToCTCascade", "v_prediction", stages=SMALL_STAGES)
    parser["model_config"] = record
    parser["prediction_type"], parser["noise_schedule"], parser["num_train_timesteps"] = (
        "v_prediction",
        "scaled_linear_beta",
        1000,
    )
    sampler = parser.get_parsed_content("sampler")
    assert isinstance(sampler.prior, RegressionPrior) and isinstance(sampler.prior.network, LiftedRegressor)
    assert (sampler.prior_stages, sampler.prior_start) == (1, 0.4)
    assert sampler.settings()["regression_prior"] == {"checkpoint": "unet.pt", "stages": 1, "start": 0.4}
    # Defaults: the shipped cascade comes with the shipped U-Net as its prior; any other checkpoint with none.
    shipped = config_parser("inference.yaml")
    shipped["prediction_type"], shipped["noise_schedule"] = "v_prediction", "scaled_linear_beta"
    sampler = shipped.get_parsed_content("sampler")
    assert sampler.settings()["regression_prior"] == {"checkpoint": "unet_3d.pt", "stages": 1, "start": 0.1}
    save_checkpoint(tmp_path / "mine.pt", small_cascade(SMALL_STAGES).state_dict(), model_config=record)
    other = config_parser("inference.yaml", ckpt_path=str(tmp_path / "mine.pt"))
    sampler = other.get_parsed_content("sampler")
    assert sampler.prior is None and sampler.prior_start == 1.0


def test_shipped_prior_pairs_only_the_shipped_cascade_and_warns_when_its_unet_is_missing(tmp_path, caplog):
    (tmp_path / "models" / "baselines").mkdir(parents=True)
    cascade, unet = tmp_path / "models" / "model.pt", tmp_path / "models" / "baselines" / "unet_3d.pt"
    cascade.write_bytes(b"")
    assert shipped_prior(cascade, cascade, unet) is None  # no U-Net file in this copy
    assert f"regression_prior: {unet} is missing" in caplog.text
    unet.write_bytes(b"")
    assert shipped_prior(cascade, cascade, unet) == str(unet)
    assert shipped_prior(tmp_path / "models" / ".." / "models" / "model.pt", cascade, unet) == str(unet)  # same file
    assert shipped_prior(tmp_path / "mine.pt", cascade, unet) is None  # the user's own cascade: no prior by default


@pytest.mark.parametrize("off", [None, False, "", "None", "null", "false", "OFF", "no"])
def test_the_command_line_switches_the_prior_off_with_false_or_none(off):
    # MONAI's runner drops an override of None, so `--regression_prior#ckpt_path false` is the switch.
    assert load_regression_prior(off) is None


def test_a_missing_prior_checkpoint_is_refused_naming_the_setting(tmp_path):
    message = (
        f"regression_prior#ckpt_path: {tmp_path / 'nope.pt'} does not exist (a regression checkpoint, or false for "
        "none)."
    )
    with pytest.raises(FileNotFoundError, match=f"^{re.escape(message)}$"):
        load_regression_prior(tmp_path / "nope.pt")


@torch.no_grad()
def test_the_prior_runs_once_per_case_not_once_per_sample(tmp_path):
    net = _regressor_checkpoint(tmp_path / "unet.pt")
    prior = RegressionPrior.from_checkpoint(tmp_path / "unet.pt")
    calls = []
    prior.network.register_forward_hook(lambda module, args, out: calls.append(1))
    views, other = torch.rand(1, 2, 32, 32) * 2 - 1, torch.rand(1, 2, 32, 32) * 2 - 1
    first, again = prior(views), prior(views)
    assert len(calls) == 1 and again is first  # the same tensors: the estimate is reused
    assert torch.equal(prior(other), net(None, None, other).float().clamp(-1, 1)) and len(calls) == 2
    # Four samples of one case through CTInferer: the U-Net runs once.
    cascade = small_cascade(SMALL_STAGES, random_weights=True)
    cascade_views = torch.rand(1, 2, 32, 32) * 2 - 1
    CTInferer(CascadeSampler(_ddim(), 2, prior=prior), num_samples=4)(cascade_views, cascade)
    assert len(calls) == 3
