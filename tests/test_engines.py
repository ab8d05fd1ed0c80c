"""Training pieces: diffusion objectives, the DRR consistency loss, the cascade trainer's iteration and freezing."""

from __future__ import annotations

import pytest
import torch
from conftest import small_cascade, small_geometry
from monai.data import DataLoader
from monai.networks.schedulers import DDPMScheduler, RFlowScheduler
from scripts.engines import CascadeDiffusionTrainer, DiffusionObjective, DRRConsistencyLoss, freeze_for_stage
from scripts.physics import DRRRenderer, RadiographComposer

GEOMETRY = small_geometry()


def _objectives():
    return {
        "v_prediction": DiffusionObjective(DDPMScheduler(1000, prediction_type="v_prediction")),
        "epsilon": DiffusionObjective(DDPMScheduler(1000, prediction_type="epsilon")),
        "rectified_flow": DiffusionObjective(RFlowScheduler(1000)),
    }


@pytest.mark.parametrize("kind", ["v_prediction", "epsilon", "rectified_flow"])
def test_targets_invert_to_the_clean_volume(kind):
    objective = _objectives()[kind]
    x0, noise = torch.randn(3, 1, 4, 4, 4), torch.randn(3, 1, 4, 4, 4)
    t = torch.tensor([0, 400, 999])
    x_t = objective.corrupt(x0, noise, t)
    torch.testing.assert_close(objective.predict_x0(x_t, objective.target(x0, noise, t), t), x0, rtol=1e-4, atol=1e-4)


def test_v_target_is_the_schedulers_velocity():
    scheduler = DDPMScheduler(1000, prediction_type="v_prediction")
    objective = DiffusionObjective(scheduler)
    x0, noise, t = torch.randn(2, 1, 4, 4, 4), torch.randn(2, 1, 4, 4, 4), torch.tensor([10, 900])
    abar = scheduler.alphas_cumprod[t].view(-1, 1, 1, 1, 1)
    torch.testing.assert_close(objective.target(x0, noise, t), scheduler.get_velocity(x0, noise, t))
    torch.testing.assert_close(objective.target(x0, noise, t), abar.sqrt() * noise - (1 - abar).sqrt() * x0)


def test_objective_rejects_sample_prediction():
    with pytest.raises(ValueError, match="prediction_type must be 'v_prediction' or 'epsilon'"):
        DiffusionObjective(DDPMScheduler(1000, prediction_type="sample"))


def _composer():
    return RadiographComposer(DRRRenderer(GEOMETRY), mu_water=0.0206, max_line_integral=10.0)


def test_physics_loss_is_zero_for_the_ct_that_made_the_views_and_gated_by_timestep():
    composer = _composer()
    hu = torch.rand(2, 1, 16, 16, 16) * 1500.0 - 1000.0
    spacing = (20.0, 20.0, 20.0)
    xray = composer(hu, spacing)
    x0 = (hu + 1000.0) / 3000.0 * 2.0 - 1.0  # CT scale of the window (-1000, 2000)
    loss = DRRConsistencyLoss(composer, (-1000.0, 2000.0), weight=0.3, timestep_gate=0.5)
    t_low, t_high = torch.tensor([10, 20]), torch.tensor([900, 950])
    assert loss(x0, xray, t_low, 1000, spacing).item() == pytest.approx(0.0, abs=1e-9)
    wrong = loss(x0 * 0.5, xray, t_low, 1000, spacing)
    assert wrong.item() > 1e-4
    assert loss(x0 * 0.5, xray, t_high, 1000, spacing).item() == 0.0  # above the gate
    with pytest.raises(ValueError, match="physics_loss_weight must be a non-negative number"):
        DRRConsistencyLoss(composer, weight=-0.1)


def _cascade():
    torch.manual_seed(0)
    return small_cascade()  # 16³ -> 32³


def test_physics_loss_gradient_reaches_the_denoiser():
    net, objective = _cascade(), _objectives()["v_prediction"]
    composer = _composer()
    x0 = torch.rand(1, 1, 16, 16, 16) * 2 - 1
    xray = composer((x0 + 1) / 2 * 3000 - 1000, (20.0,) * 3)
    noise, t = torch.randn_like(x0), torch.tensor([50])
    x_t = objective.corrupt(x0, noise, t)
    prediction = net(x_t, t, xray, stage=0)
    loss = DRRConsistencyLoss(composer)(objective.predict_x0(x_t, prediction, t) * 0.9, xray, t, 1000, (20.0,) * 3)
    loss.backward()
    grad = net.stages[0]["denoiser"].final_layer.linear.weight.grad
    assert loss.item() > 0 and grad is not None and grad.abs().sum() > 0


def _batches(n=2):
    items = []
    for _ in range(n):
        items.append(
            {
                "image_16": torch.rand(1, 16, 16, 16) * 2 - 1,
                "image_32": torch.rand(1, 32, 32, 32) * 2 - 1,
                "xray": torch.rand(2, 32, 32) * 2 - 1,
            }
        )
    return DataLoader(items, batch_size=1)


def _trainer(net, stage, physics=True, epochs=1):
    composer = _composer()
    return CascadeDiffusionTrainer(
        device=torch.device("cpu"),
        max_epochs=epochs,
        train_data_loader=_batches(),
        network=net,
        optimizer=torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-3),
        loss_function=torch.nn.MSELoss(),
        objective=_objectives()["v_prediction"],
        stage=stage,
        physics_loss=DRRConsistencyLoss(composer, timestep_gate=1.0) if physics else None,
        decollate=False,
    )


def test_training_stage_one_leaves_stage_zero_and_the_encoder_bit_identical():
    net = _cascade()
    freeze_for_stage(net, 1)
    frozen = {k: v.clone() for k, v in net.state_dict().items() if not k.startswith("stages.1.")}
    trained = {k: v.clone() for k, v in net.state_dict().items() if k.startswith("stages.1.")}
    trainer = _trainer(net, stage=1)
    trainer.run()
    assert trainer.state.iteration == 2
    output = trainer.state.output
    assert output["stage"] == 1 and output["loss_drr"] > 0 and torch.isfinite(output["loss"])
    after = net.state_dict()
    assert all(torch.equal(after[k], v) for k, v in frozen.items())
    assert any(not torch.equal(after[k], v) for k, v in trained.items())


def test_trainer_rejects_bad_settings():
    net = _cascade()
    with pytest.raises(ValueError, match=r"stage must be -1 \(joint\) or in \[0, 1\], got 5"):
        _trainer(net, stage=5)
    with pytest.raises(ValueError, match=r"stage must be -1 \(joint\) or in \[0, 1\], got 2"):
        freeze_for_stage(net, 2)


def test_stage_one_can_be_conditioned_on_stage_zero_samples():
    from functools import partial

    from monai.networks.schedulers import DDIMScheduler
    from scripts.engines import CascadeSampler

    net = _cascade()
    freeze_for_stage(net, 1)
    sampler = CascadeSampler(partial(DDIMScheduler, 1000, prediction_type="v_prediction"), 2)
    trainer = _trainer(net, stage=1)
    trainer.cond_noise_max = 0.0  # no augmentation noise: the conditioning is exactly what the source gives
    batch = next(iter(_batches(1)))
    _, truth = trainer._stage_inputs(batch, 1, torch.device("cpu"))
    torch.testing.assert_close(truth, batch["image_16"])  # without a sampler: the ground truth
    trainer.previous_sampler = sampler
    x0, previous = trainer._stage_inputs(batch, 1, torch.device("cpu"))
    assert x0.shape == (1, 1, 32, 32, 32) and previous.shape == (1, 1, 16, 16, 16)
    # With the sampler: a sample of the untrained stage 0, not the ground truth.
    assert not torch.allclose(previous, batch["image_16"])
    trainer.run()
    assert torch.isfinite(trainer.state.output["loss"])


def test_the_physics_loss_compares_with_the_clean_views_when_the_inputs_are_radiograph_like():
    """Augmented inputs (``xray``) feed the network; the DRR loss's reference is ``xray_clean`` when a batch has it."""
    seen = []

    class Recorder(DRRConsistencyLoss):
        def forward(self, x0_hat, xray, *args, **kwargs):
            seen.append(xray.clone())
            return super().forward(x0_hat, xray, *args, **kwargs)

    net = _cascade()
    trainer = _trainer(net, stage=0)
    trainer.physics_loss = Recorder(_composer(), timestep_gate=1.0)
    batch = next(iter(_batches(1)))
    clean = torch.zeros_like(batch["xray"])
    trainer._iteration(trainer, batch)
    trainer._iteration(trainer, {**batch, "xray_clean": clean})
    assert torch.equal(seen[0], batch["xray"]) and torch.equal(seen[1], clean)
