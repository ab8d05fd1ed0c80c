"""Cascade diffusion training: a ``SupervisedTrainer`` whose only override is ``_iteration``."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents
from monai.utils.enums import CommonKeys as Keys

from ..networks import XrayToCTCascade, check_stage, is_cascade_like, unwrap
from .losses import DRRConsistencyLoss
from .objective import DiffusionObjective
from .sampler import CascadeSampler

__all__ = ["CascadeDiffusionTrainer", "freeze_for_stage"]


def freeze_for_stage(network: XrayToCTCascade, stage: int) -> None:
    """Train ``stage`` only: freeze the other stages, and the shared encoder from stage 1 on.

    Stage 0 trains the encoder with it; later stages must not change it, or the frozen earlier stages would see
    different X-ray features than they were trained with. ``stage = -1`` unfreezes everything (joint fine-tuning).
    """
    check_stage(network.num_stages, stage, joint=True)
    for p in network.parameters():
        p.requires_grad_(stage == -1)
    if stage >= 0:
        for p in network.stages[stage].parameters():
            p.requires_grad_(True)
        for p in network.encoder.parameters():
            p.requires_grad_(stage == 0)


class CascadeDiffusionTrainer(SupervisedTrainer):
    """Train one stage of :class:`XrayToCTCascade` (or all, jointly) with a diffusion objective and the DRR loss.

    Each iteration takes a batch from the preprocessing of ``configs/train.yaml`` — ``image_<size>`` CT volumes on
    the CT scale, ``xray`` views on the X-ray scale (optionally ``xray_mask``) — and for the trained stage ``s``:

    * conditioning augmentation (cascaded diffusion, Ho et al. 2022): the previous-stage input is the ground truth
      on stage ``s−1``'s grid plus Gaussian noise of a random level in ``[0, cond_noise_max]``;
    * ``x_t`` = the objective's corruption of ``image_<grid_s>``; loss = MSE(prediction, target) +
      ``physics_loss(x̂0)`` (the DRR consistency term, timestep-gated);
    * condition dropout (classifier-free guidance, Ho and Salimans 2022): with probability ``condition_dropout``
      a sample's X-ray encoding is replaced by the null one (``XrayEncoding.without_xrays``; the previous-stage
      volume stays), and the DRR loss leaves that sample out (it was not shown the views it would be compared with);
    * bf16 autocast on CUDA when ``amp`` is set; gradient clipping at ``clip_grad_norm``;
    * numerical safety: a step whose loss or gradient norm is NaN or Inf is skipped (gradients dropped, no optimizer
      step, so the weights stay those of the last finite step), logged and counted in ``engine.state.skipped_steps``
      (``engine.state.nonfinite_steps`` counts the current streak); ``max_nonfinite_steps`` in a row stop training
      with a ``RuntimeError``. Under ``torch.distributed`` the ranks agree on skipping.

    All other behaviour (events, handlers, metrics, optimizer stepping order) is ``SupervisedTrainer``'s.

    Args:
        objective: the diffusion objective (scheduler wrapper).
        stage: the stage to train, or ``-1`` to train all stages jointly (one random stage per iteration).
        physics_loss: the DRR consistency loss, or ``None`` (``use_physics_loss: false``).
        cond_noise_max: largest conditioning-augmentation noise standard deviation (CT scale).
        clip_grad_norm: gradient-norm clipping threshold (``None``: off).
        previous_sampler: when given, stage ``s > 0`` is conditioned on a sample of stage ``s − 1`` drawn with it
            (plus the same augmentation noise) instead of the downsampled ground truth.
        max_nonfinite_steps: consecutive non-finite steps (skipped) after which training stops.
        condition_dropout: probability in [0, 1) that a sample is trained without its X-rays (0: off, and the
            iteration is exactly the one without the option: nothing is drawn).
        kwargs: everything else goes to ``SupervisedTrainer`` (``loss_function`` is the diffusion MSE).
    """

    def __init__(
        self,
        *args: Any,
        objective: DiffusionObjective,
        stage: int,
        physics_loss: DRRConsistencyLoss | None = None,
        cond_noise_max: float = 0.2,
        clip_grad_norm: float | None = 1.0,
        previous_sampler: CascadeSampler | None = None,
        max_nonfinite_steps: int = 5,
        condition_dropout: float = 0.0,
        **kwargs: Any,
    ) -> None:
        # Unused stages (joint training picks one per iteration) must get None, not zero, gradients: AdamW would
        # otherwise keep moving them by momentum and weight decay.
        kwargs.setdefault("optim_set_to_none", True)
        super().__init__(*args, **kwargs)
        network = unwrap(self.network)
        # The cascade, or a network with its training interface (the regression baselines, networks.LiftedRegressor).
        if not is_cascade_like(network):
            raise ValueError(f"network must be CascadeLike (e.g. an XrayToCTCascade), got {type(network).__name__}.")
        check_stage(network.num_stages, stage, joint=True)
        if not (math.isfinite(cond_noise_max) and cond_noise_max >= 0):
            raise ValueError(f"cond_noise_max must be a non-negative number, got {cond_noise_max!r}.")
        if clip_grad_norm is not None and not clip_grad_norm > 0:
            raise ValueError(f"clip_grad_norm must be positive or None, got {clip_grad_norm!r}.")
        if isinstance(max_nonfinite_steps, bool) or not isinstance(max_nonfinite_steps, int) or max_nonfinite_steps < 1:
            raise ValueError(f"max_nonfinite_steps must be a positive integer, got {max_nonfinite_steps!r}.")
        if isinstance(condition_dropout, bool) or not (
            isinstance(condition_dropout, (int, float)) and 0 <= condition_dropout < 1
        ):
            raise ValueError(f"condition_dropout must be a probability in [0, 1), got {condition_dropout!r}.")
        if condition_dropout > 0 and not isinstance(network, XrayToCTCascade):
            raise ValueError(
                f"condition_dropout is for the diffusion cascade, got {type(network).__name__} (set it to 0)."
            )
        self.condition_dropout = float(condition_dropout)
        self.objective, self.stage = objective, int(stage)
        self.physics_loss, self.cond_noise_max, self.clip_grad_norm = (
            physics_loss,
            float(cond_noise_max),
            clip_grad_norm,
        )
        self.cascade = network
        self.previous_sampler = previous_sampler
        self.max_nonfinite_steps = max_nonfinite_steps
        # Part of the engine's state_dict, so that a resumed run keeps counting where it stopped.
        self.state.nonfinite_steps = self.state.skipped_steps = 0
        self.state_dict_user_keys.extend(["nonfinite_steps", "skipped_steps"])

    def _stage_inputs(self, batch: dict, stage: int, device) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Clean target on the stage grid and the augmented previous-stage volume."""
        grids = [self.cascade.grid_size(i) for i in range(self.cascade.num_stages)]

        def volume(grid: Sequence[int]) -> torch.Tensor:
            key = f"image_{grid[0]}"
            if key not in batch:
                raise ValueError(f"batch has no {key!r} (set stage_sizes in the data config to the stage grids).")
            image = torch.as_tensor(batch[key]).to(device=device, dtype=torch.float32)
            return (
                image if tuple(image.shape[2:]) == tuple(grid) else F.interpolate(image, size=tuple(grid), mode="area")
            )

        x0 = volume(grids[stage])
        if stage == 0:
            return x0, None
        if self.previous_sampler is not None:
            # The option closest to inference: condition on the (frozen) previous stage's own sample, itself
            # conditioned on the ground truth one grid further down.
            xray = torch.as_tensor(batch["xray"]).to(device=device, dtype=torch.float32)
            mask = batch.get("xray_mask")
            mask = None if mask is None else torch.as_tensor(mask).to(device=device, dtype=torch.bool)
            with torch.no_grad():
                encoding = self.cascade.encode(xray, mask)
                conditioning = volume(grids[stage - 2]) if stage >= 2 else None
                previous = self.previous_sampler.sample_stage(
                    self.cascade, encoding, stage - 1, conditioning, xray.shape[0]
                )
        else:
            previous = volume(grids[stage - 1])
        sigma = torch.rand(previous.shape[0], 1, 1, 1, 1, device=device) * self.cond_noise_max
        return x0, previous + sigma * torch.randn_like(previous)

    def _iteration(self, engine: CascadeDiffusionTrainer, batchdata: dict[str, torch.Tensor]) -> dict:
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        device = engine.state.device
        stage = engine.stage if engine.stage >= 0 else int(torch.randint(0, engine.cascade.num_stages, (1,)))
        x0, previous = engine._stage_inputs(batchdata, stage, device)
        xray = torch.as_tensor(batchdata["xray"]).to(device=device, dtype=torch.float32)
        view_mask = batchdata.get("xray_mask")
        view_mask = None if view_mask is None else torch.as_tensor(view_mask).to(device=device, dtype=torch.bool)
        noise = torch.randn_like(x0)
        t = engine.objective.sample_timesteps(x0)
        x_t = engine.objective.corrupt(x0, noise, t)
        target = engine.objective.target(x0, noise, t)
        engine.state.output = {Keys.IMAGE: x_t, Keys.LABEL: target}
        engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        cuda = torch.device(device).type == "cuda"
        extra, keep = {}, None
        if engine.condition_dropout > 0:
            drop = torch.rand(x0.shape[0], device=device) < engine.condition_dropout  # (B,)
            extra, keep = {"null_condition": drop}, (~drop).float()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bool(engine.amp and cuda)):
            prediction = engine.network(x_t, t, xray, stage=stage, previous=previous, view_mask=view_mask, **extra)
        prediction = prediction.float()
        engine.state.output[Keys.PRED] = prediction
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        diffusion = engine.loss_function(prediction, target).mean()
        physics = torch.zeros((), device=prediction.device)
        if engine.physics_loss is not None:
            x0_hat = engine.objective.predict_x0(x_t, prediction, t)
            fov = engine.cascade.stage_configs[stage]["fov_mm"]  # per axis; a stage may set its own
            spacing = [f / g for f, g in zip(fov, engine.cascade.grid_size(stage), strict=True)]
            # With radiograph-like inputs (xray_augmentation#realism) the network sees processed views, but the DRR
            # of its CT must match the clean DRR those views came from: the physics compares like with like.
            clean = batchdata.get("xray_clean")
            reference = xray if clean is None else torch.as_tensor(clean).to(device=device, dtype=torch.float32)
            physics = engine.physics_loss(
                x0_hat, reference, t, engine.objective.num_train_timesteps, spacing, view_mask, sample_weight=keep
            )
        loss = diffusion + physics
        engine.state.output.update(
            {Keys.LOSS: loss, "loss_diffusion": diffusion.detach(), "loss_drr": physics.detach(), "stage": stage}
        )
        engine.fire_event(IterationEvents.LOSS_COMPLETED)
        # Backward even for a non-finite loss: under DDP every rank must join the gradient all-reduce.
        loss.backward()
        engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
        params = [p for p in engine.network.parameters() if p.grad is not None]
        if engine.clip_grad_norm is not None:
            grad_norm = torch.nn.utils.clip_grad_norm_(params, engine.clip_grad_norm)  # the norm before clipping
        else:
            grad_norm = torch.nn.utils.get_total_norm([p.grad for p in params])
        finite = engine._finite_step(loss.detach(), grad_norm.detach())
        if finite:
            engine.optimizer.step()
        engine.state.output.update({"grad_norm": grad_norm.detach(), "skipped": not finite})
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output

    def _finite_step(self, loss: torch.Tensor, grad_norm: torch.Tensor) -> bool:
        """True when loss and gradient norm are finite; otherwise drop the gradients, count, and stop at the limit."""
        finite = (torch.isfinite(loss) & torch.isfinite(grad_norm)).to(torch.int32)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(finite, op=torch.distributed.ReduceOp.MIN)  # skip on every rank or none
        if bool(finite):
            self.state.nonfinite_steps = 0
            return True
        self.optimizer.zero_grad(set_to_none=self.optim_set_to_none)
        self.state.nonfinite_steps += 1
        self.state.skipped_steps += 1
        what = f"loss {loss.item():.4g}, gradient norm {grad_norm.item():.4g}"
        if self.state.nonfinite_steps >= self.max_nonfinite_steps:
            raise RuntimeError(
                f"training stopped at iteration {self.state.iteration}: {self.state.nonfinite_steps} steps in a row "
                f"had a non-finite loss or gradient ({what}); the weights are those of the last finite step. Lower "
                "learning_rate, check the data for NaN/Inf, or raise max_nonfinite_steps."
            )
        self.logger.warning(
            f"iteration {self.state.iteration}: non-finite {what}; step skipped "
            f"({self.state.nonfinite_steps} in a row, {self.state.skipped_steps} in total)."
        )
        return False
