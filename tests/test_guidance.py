"""Guided sampling: physics-consistent steps (DRR guidance), classifier-free guidance, and what training gives them."""

from __future__ import annotations

import functools
import re

import pytest
import torch
from conftest import CHEST, SMALL_STAGES, config_parser, small_cascade, small_geometry
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler, RFlowScheduler
from scripts.checkpoint import check_guidance_scale, save_checkpoint
from scripts.engines import CascadeSampler, CTInferer, DiffusionObjective, DRRConsistencyLoss, DRRGuidance
from scripts.physics import DRRRenderer, RadiographComposer, hu_to_ct_scale, voxelize_ellipsoids
from scripts.utils import guidance_mode

WINDOW = (-1000.0, 2000.0)


def _composer():
    return RadiographComposer(DRRRenderer(small_geometry()), mu_water=0.0206, max_line_integral=10.0)


def _objective():
    return DiffusionObjective(DDPMScheduler(1000, prediction_type="v_prediction"))


def _ddim():
    return functools.partial(DDIMScheduler, 1000, prediction_type="v_prediction", clip_sample=False)


def _chest_case(grid: int = 32):
    """A chest phantom on the CT scale ``(1, 1, g, g, g)`` over 320 mm and its views ``(1, 2, 32, 32)``."""
    mu = voxelize_ellipsoids(CHEST, (grid,) * 3, (320.0 / grid,) * 3)  # (g, g, g) 1/mm
    hu = (mu / 0.0206 - 1.0) * 1000.0
    x = hu_to_ct_scale(hu, WINDOW).clamp(-1, 1)[None, None].float()
    return x, _composer()(hu[None, None].float(), (320.0 / grid,) * 3)


@pytest.mark.parametrize(
    "scheduler",
    [
        DDPMScheduler(1000, prediction_type="v_prediction"),
        DDPMScheduler(1000, prediction_type="epsilon"),
        RFlowScheduler(1000),
    ],
    ids=["v", "epsilon", "flow"],
)
def test_prediction_from_x0_inverts_predict_x0(scheduler):
    objective = DiffusionObjective(scheduler)
    x_t, prediction = torch.randn(3, 1, 4, 4, 4), torch.randn(3, 1, 4, 4, 4)
    t = torch.tensor([5, 400, 990])
    x0 = objective.predict_x0(x_t, prediction, t)
    # Two float32 affine maps with coefficients up to 1/√(1−ᾱ_5) ≈ 12: a few ulp of the largest term.
    torch.testing.assert_close(objective.prediction_from_x0(x_t, x0, t), prediction, rtol=0, atol=2e-5)


def test_without_xrays_zeroes_only_the_dropped_cases():
    net = small_cascade(random_weights=True)
    _, views = _chest_case()
    encoding = net.encode(views.expand(2, -1, -1, -1).contiguous())
    null = encoding.without_xrays(torch.tensor([True, False]))
    assert torch.count_nonzero(null.tokens[0]) == 0 and torch.count_nonzero(null.global_embedding[0]) == 0
    assert torch.count_nonzero(null.feature_maps[0]) == 0
    assert torch.equal(null.tokens[1], encoding.tokens[1]) and torch.equal(null.token_mask, encoding.token_mask)
    with pytest.raises(ValueError, match=r"drop must be one flag per case, shape \(2,\), got \(3,\)\."):
        encoding.without_xrays(torch.tensor([True, False, True]))


def _manual_ddim(net, views, steps: int, seed: int) -> torch.Tensor:
    """The sampling loop written out: noise, then scheduler.step(network(x, t)) per stage, no guidance."""
    generator = torch.Generator().manual_seed(seed)
    encoding, sample = net.encode(views), None
    for stage in range(net.num_stages):
        scheduler = _ddim()()
        scheduler.set_timesteps(steps)
        x = torch.randn((1, 1, *net.grid_size(stage)), generator=generator)
        conditioning = net.stage_conditioning(stage, encoding, sample)
        for t in scheduler.timesteps:
            out = net(x, torch.full((1,), int(t)), stage=stage, encoding=encoding, conditioning=conditioning)
            x = scheduler.step(out.float(), int(t), x)[0]
        sample = x.clamp(-1, 1)
    return sample


@torch.no_grad()
def test_guidance_off_is_the_plain_sampler_bit_for_bit():
    net = small_cascade(SMALL_STAGES, random_weights=True)
    _, views = _chest_case()
    reference = _manual_ddim(net, views, steps=3, seed=7)
    plain = CascadeSampler(_ddim(), 3, seed=7)(views, net)
    # A guidance object that guides no stage and a scale of exactly 1 take the same arithmetic path.
    idle = DRRGuidance(_composer(), WINDOW, _objective(), stages=[])
    off = CascadeSampler(_ddim(), 3, seed=7, guidance=idle, guidance_scale=1.0)(views, net)
    assert torch.equal(plain, reference) and torch.equal(off, reference)


def test_sart_step_keeps_a_consistent_volume_and_reduces_the_residual():
    guidance = DRRGuidance(_composer(), WINDOW, _objective(), strength=1.0, iterations=1)
    x, views = _chest_case()
    spacing = (10.0,) * 3
    # The views of the volume itself: a zero residual, so exactly no update.
    assert torch.equal(guidance.correct_x0(x, guidance.views(x, spacing), spacing), x)
    start = torch.full_like(x, -0.5)
    before = (guidance.views(start, spacing) - views).abs().mean()
    after = (guidance.views(guidance.correct_x0(start, views, spacing), spacing) - views).abs().mean()
    assert after < 0.5 * before
    # One view only: its residual shrinks by far more than half in one step (SART removes it along each ray).
    lateral_only = torch.tensor([[False, True]])
    one = guidance.correct_x0(start, views, spacing, lateral_only)
    residual = (guidance.views(one, spacing) - views).abs().mean(dim=(2, 3))[0]
    assert residual[1] < 0.2 * (guidance.views(start, spacing) - views).abs().mean(dim=(2, 3))[0, 1]


@torch.no_grad()
def test_drr_guidance_lowers_the_drr_residual_of_samples():
    net = small_cascade(SMALL_STAGES, random_weights=True)
    x, views = _chest_case(16)
    composer = _composer()

    def drr_error(sample):
        hu = (sample + 1.0) * 1500.0 - 1000.0
        return (composer(hu, (20.0,) * 3) - views).abs().mean().item()

    plain = CascadeSampler(_ddim(), 4, seed=3)(views, net)
    guidance = DRRGuidance(composer, WINDOW, _objective(), strength=1.0, iterations=2, t_max=1.0)
    guided = CascadeSampler(_ddim(), 4, seed=3, guidance=guidance)(views, net)
    assert drr_error(guided) < 0.5 * drr_error(plain)


@torch.no_grad()
def test_classifier_free_guidance_is_the_affine_mix_of_both_predictions():
    """One DDIM step is affine in the network output, so the sample is affine in the guidance scale w."""
    net = small_cascade(SMALL_STAGES, random_weights=True)
    _, views = _chest_case()
    encoding = net.encode(views)

    def sample(w):
        sampler = CascadeSampler(_ddim(), 1, clip=False, guidance_scale=w)
        return sampler.sample_stage(net, encoding, 0, None, 1, torch.Generator().manual_seed(0))

    s0, s1, s2 = sample(0.0), sample(1.0), sample(2.0)
    assert (s1 - s0).abs().max() > 1e-3  # the X-rays change the prediction: the test is not vacuous
    # s2 = 2 s1 − s0 up to float32 rounding of values of order 1 over a few operations.
    torch.testing.assert_close(s2, 2 * s1 - s0, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match=r"guidance_scale must be in \[0, 20\] \(1: off\), got -1"):
        CascadeSampler(_ddim(), 1, guidance_scale=-1)


def test_guidance_settings_are_checked():
    composer, objective = _composer(), _objective()
    with pytest.raises(ValueError, match=r"drr_guidance#strength must be a number in \(0, 2\), got 2\.5"):
        DRRGuidance(composer, WINDOW, objective, strength=2.5)
    with pytest.raises(ValueError, match=r"drr_guidance#t_max must be a fraction in \(0, 1\], got 0"):
        DRRGuidance(composer, WINDOW, objective, t_max=0)
    with pytest.raises(ValueError, match="drr_guidance#iterations must be a positive integer, got 0"):
        DRRGuidance(composer, WINDOW, objective, iterations=0)
    guidance = DRRGuidance(composer, WINDOW, objective, t_max=0.5, stages=[1])
    assert guidance.applies(1, 500) and not guidance.applies(1, 501) and not guidance.applies(0, 10)


def test_guidance_scale_needs_a_checkpoint_trained_with_condition_dropout(tmp_path):
    plain, dropped = tmp_path / "plain.pt", tmp_path / "dropped.pt"
    save_checkpoint(plain, {"w": torch.zeros(1)}, config={"condition_dropout": 0.0})
    save_checkpoint(dropped, {"w": torch.zeros(1)}, config={"condition_dropout": 0.1})
    assert check_guidance_scale(tmp_path / "missing.pt", 1.0) == 1.0  # off: the file is not even read
    assert check_guidance_scale(dropped, 2.0) == 2.0
    with pytest.raises(ValueError) as err:
        check_guidance_scale(plain, 2.0)
    assert str(err.value) == (
        f"guidance_scale 2.0: the checkpoint {plain} was trained without condition dropout (condition_dropout 0.0), "
        "so it has no X-ray-free prediction to guide with; leave guidance_scale at 1, or use a checkpoint trained "
        "with condition_dropout > 0."
    )


def test_dropped_cases_are_left_out_of_the_drr_loss():
    composer = _composer()
    hu = torch.rand(2, 1, 16, 16, 16) * 1500.0 - 1000.0
    xray = composer(hu, (20.0,) * 3)
    x0 = hu_to_ct_scale(hu, WINDOW) * 0.5  # wrong for both cases
    loss = DRRConsistencyLoss(composer, WINDOW, weight=1.0, timestep_gate=1.0)
    t = torch.tensor([10, 10])
    only_second = loss(x0[1:], xray[1:], t[1:], 1000, (20.0,) * 3)
    weighted = loss(x0, xray, t, 1000, (20.0,) * 3, sample_weight=torch.tensor([0.0, 1.0]))
    torch.testing.assert_close(weighted, only_second, rtol=1e-6, atol=0)


def test_inference_config_builds_the_guided_sampler():
    parser = config_parser(
        "inference.yaml",
        **{
            "drr_guidance#enabled": True,
            "drr_guidance#strength": 0.8,
            "drr_guidance#stages": [1],
            "guidance_scale": 1.5,
        },
    )
    # The checkpoint's records are not needed to build the sampler: the schedule is common.yaml's.
    parser["prediction_type"], parser["noise_schedule"], parser["num_train_timesteps"] = (
        "v_prediction",
        "scaled_linear_beta",
        1000,
    )
    parser["hu_window"] = list(WINDOW)
    sampler = parser.get_parsed_content("sampler")
    assert isinstance(sampler.guidance, DRRGuidance) and sampler.guidance_scale == 1.5
    assert (sampler.guidance.strength, sampler.guidance.iterations, sampler.guidance.t_max) == (0.8, 2, 1.0)
    assert sampler.guidance.stages == {1}


@pytest.mark.parametrize(
    "value, mode",
    [("auto", "rendered"), ("AUTO", "rendered"), (True, "all"), ("true", "all"), ("yes", "all"), (False, "off")]
    + [("false", "off"), ("off", "off"), ("all", "all")],
)
def test_guidance_mode_reads_auto_and_yes_no(value, mode):
    assert guidance_mode(value) == mode


def test_guidance_mode_refuses_other_words_by_name():
    message = (
        "drr_guidance#enabled must be auto (guide views rendered from a CT, not radiographs), true or false, "
        "got 'sometimes'."
    )
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        guidance_mode("sometimes")


@torch.no_grad()
def test_auto_guides_rendered_views_only():
    net = small_cascade(SMALL_STAGES, random_weights=True)
    _, views = _chest_case()
    guidance = DRRGuidance(_composer(), WINDOW, _objective(), strength=1.0, iterations=1, t_max=1.0)
    plain = CTInferer(CascadeSampler(_ddim(), 3, seed=5), seed=2)(views, net)
    auto = CTInferer(CascadeSampler(_ddim(), 3, seed=5, guidance=guidance), seed=2, guide="auto")
    always = CTInferer(CascadeSampler(_ddim(), 3, seed=5, guidance=guidance), seed=2, guide=True)
    # A radiograph (rendered=False, also MONAI Label's two-argument call) is sampled exactly as without guidance.
    assert torch.equal(auto(views, net), plain) and torch.equal(auto(views, net, rendered=False), plain)
    guided = auto(views, net, rendered=True)
    assert torch.equal(guided, always(views, net)) and not torch.equal(guided, plain)
    assert (auto.guides(True), auto.guides(False), always.guides(False)) == (True, False, True)
