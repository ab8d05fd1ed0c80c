"""Diffusion training objectives over MONAI core schedulers: v-prediction (default), ε-prediction, rectified flow.

The network never sees the noise schedule: the objective corrupts a clean volume ``x0`` into ``x_t``, names the
regression target, and inverts a prediction back to an estimate ``x̂0`` (for the DRR consistency loss). Equations
(ᾱ_t the cumulative product of the DDPM alphas; ``s = t / T`` for rectified flow):

* ``v_prediction``:  x_t = √ᾱ·x0 + √(1−ᾱ)·ε,  target v = √ᾱ·ε − √(1−ᾱ)·x0,  x̂0 = √ᾱ·x_t − √(1−ᾱ)·v̂
* ``epsilon``:       x_t as above,            target ε,                   x̂0 = (x_t − √(1−ᾱ)·ε̂) / √ᾱ
* ``rectified_flow`` (MONAI ``RFlowScheduler``): x_t = (1−s)·x0 + s·ε,  target v = x0 − ε,  x̂0 = x_t + s·v̂
"""

from __future__ import annotations

import torch
from monai.networks.schedulers import DDPMScheduler, RFlowScheduler

__all__ = ["PREDICTION_TYPES", "DiffusionObjective", "RegressionObjective"]

PREDICTION_TYPES = ("v_prediction", "epsilon", "rectified_flow")


class DiffusionObjective:
    """Corrupt, target and invert for one scheduler.

    Args:
        scheduler: a MONAI ``DDPMScheduler`` (its ``prediction_type`` must be ``v_prediction`` or ``epsilon``) or
            ``RFlowScheduler``.
    """

    def __init__(self, scheduler: DDPMScheduler | RFlowScheduler) -> None:
        if isinstance(scheduler, RFlowScheduler):
            self.prediction_type = "rectified_flow"
        elif isinstance(scheduler, DDPMScheduler):
            self.prediction_type = str(scheduler.prediction_type)
            if self.prediction_type not in PREDICTION_TYPES[:2]:
                raise ValueError(
                    f"scheduler.prediction_type must be 'v_prediction' or 'epsilon' for training, "
                    f"got {self.prediction_type!r}."
                )
        else:
            raise ValueError(
                f"scheduler must be a MONAI DDPMScheduler or RFlowScheduler, got {type(scheduler).__name__}."
            )
        self.scheduler = scheduler
        self.num_train_timesteps = int(scheduler.num_train_timesteps)

    def sample_timesteps(self, x0: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """One training timestep per sample, ``(B,)`` long, uniform over ``[0, T)``."""
        return torch.randint(0, self.num_train_timesteps, (x0.shape[0],), device=x0.device, generator=generator)

    def _alphas(self, t: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        abar = self.scheduler.alphas_cumprod.to(device=like.device, dtype=torch.float32)[t.long()]
        shape = (-1,) + (1,) * (like.dim() - 1)
        return abar.sqrt().view(shape).to(like.dtype), (1 - abar).sqrt().view(shape).to(like.dtype)

    def _fraction(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return (t.float() / self.num_train_timesteps).view((-1,) + (1,) * (like.dim() - 1)).to(like.dtype)

    def corrupt(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``x_t`` from clean ``x0`` and Gaussian ``noise`` (the scheduler's ``add_noise``)."""
        return self.scheduler.add_noise(original_samples=x0, noise=noise, timesteps=t)

    def target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """What the network regresses: v (the scheduler's ``get_velocity``), ε, or the flow velocity ``x0 − ε``."""
        if self.prediction_type == "v_prediction":
            return self.scheduler.get_velocity(sample=x0, noise=noise, timesteps=t)
        if self.prediction_type == "epsilon":
            return noise
        return x0 - noise

    def predict_x0(self, x_t: torch.Tensor, prediction: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The clean volume implied by a prediction at ``x_t`` (equations in the module docstring)."""
        if self.prediction_type == "rectified_flow":
            return x_t + self._fraction(t, x_t) * prediction
        sqrt_abar, sqrt_one_minus = self._alphas(t, x_t)
        if self.prediction_type == "v_prediction":
            return sqrt_abar * x_t - sqrt_one_minus * prediction
        return (x_t - sqrt_one_minus * prediction) / sqrt_abar

    def prediction_from_x0(self, x_t: torch.Tensor, x0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The prediction at ``x_t`` that implies the clean volume ``x0``: the inverse of :meth:`predict_x0`.

        Guided sampling corrects ``x̂0`` and hands the scheduler this prediction, so that the scheduler's own update
        (DDIM, DDPM, the flow's Euler step) moves towards the corrected volume; the noise it implies is the one
        consistent with ``x_t`` and ``x0``. ``v = (√ᾱ·x_t − x0) / √(1−ᾱ)``, ``ε = (x_t − √ᾱ·x0) / √(1−ᾱ)``,
        flow ``v = (x0 − x_t) / s`` with ``s`` at least ``1 / T`` (``t = 0`` leaves no step to take).
        """
        if self.prediction_type == "rectified_flow":
            return (x0 - x_t) / self._fraction(t, x_t).clamp_min(1.0 / self.num_train_timesteps)
        sqrt_abar, sqrt_one_minus = self._alphas(t, x_t)
        if self.prediction_type == "v_prediction":
            return (sqrt_abar * x_t - x0) / sqrt_one_minus
        return (x_t - sqrt_abar * x0) / sqrt_one_minus


class RegressionObjective:
    """The objective of the deterministic baselines (``networks.LiftedRegressor``) in the same trainer.

    No noise: every timestep is 0, the network input ``x_t`` is zeros (the regressor ignores it), the target and the
    estimate ``x̂0`` are the clean volume and the prediction themselves; the DRR consistency loss (gated by
    ``t / T``) therefore applies at every step.
    """

    prediction_type = "regression"
    num_train_timesteps = 1

    def sample_timesteps(self, x0: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """``(B,)`` zeros."""
        return torch.zeros(x0.shape[0], dtype=torch.long, device=x0.device)

    def corrupt(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Zeros shaped like ``x0``: the regression sees only the X-rays."""
        return torch.zeros_like(x0)

    def target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The clean volume."""
        return x0

    def predict_x0(self, x_t: torch.Tensor, prediction: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The prediction is the estimate."""
        return prediction
