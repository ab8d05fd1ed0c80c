"""Cascade sampling: stage by stage with a MONAI scheduler, each stage conditioned on the previous stage's sample.

The loop is scheduler-agnostic: ``set_timesteps`` then ``step(model_output, t, x)`` for DDIM, DDPM or rectified
flow (MONAI core), so the sampler has no branch on the scheduler type inside the loop.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence

import torch
from monai.inferers import Inferer

from ..networks import XrayToCTCascade

__all__ = ["CascadeSampler"]


class CascadeSampler(Inferer):
    """Sample CT volumes (CT scale, [−1, 1]) from X-rays; an ``Inferer``, so ``sampler(xray, network)`` works in
    MONAI evaluators (and in MONAI Label's ``BundleInferTask``).

    Args:
        scheduler_factory: returns a fresh MONAI scheduler (``DDIMScheduler``, ``DDPMScheduler``, ``RFlowScheduler``)
            with the training schedule; one per stage so that steps can differ.
        num_inference_steps: steps per stage (one number for all stages, or one per stage).
        stages: which stages to run (default all); the last one's sample is returned.
        clip: clamp each stage's final sample to [−1, 1].
        seed: seed of a private generator used when a call passes none, so that sampling (e.g. validation during
            training) is reproducible and never draws from, or shifts, the global random stream.
    """

    def __init__(
        self,
        scheduler_factory: Callable[[], object],
        num_inference_steps: int | Sequence[int] = 20,
        stages: Sequence[int] | None = None,
        clip: bool = True,
        seed: int | None = 0,
    ) -> None:
        super().__init__()
        self.scheduler_factory = scheduler_factory
        self.num_inference_steps = num_inference_steps
        self.stages = None if stages is None else [int(s) for s in stages]
        self.clip = clip
        self.seed = seed

    def _steps(self, stage: int) -> int:
        steps = self.num_inference_steps
        value = steps if isinstance(steps, int) else steps[stage]
        if int(value) < 1:
            raise ValueError(f"num_inference_steps must be positive, got {steps!r}.")
        return int(value)

    @torch.no_grad()
    def sample_stage(
        self,
        network: XrayToCTCascade,
        encoding,
        stage: int,
        previous: torch.Tensor | None,
        batch: int,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """One stage's sample ``(B, 1, X, Y, Z)`` from pure noise."""
        device = encoding.tokens.device
        grid = network.grid_size(stage)
        scheduler = self.scheduler_factory()
        scheduler.set_timesteps(self._steps(stage), device=device)
        x = torch.randn((batch, 1, *grid), generator=generator, device="cpu").to(device)
        timesteps = [int(t) for t in scheduler.timesteps]
        # Rectified flow's step sizes its Euler step from the next timestep; DDPM/DDIM derive it themselves.
        params = inspect.signature(scheduler.step).parameters
        if "next_timestep" in params:
            extra = [{"next_timestep": n} for n in timesteps[1:] + [None]]
        else:
            extra = [{} for _ in timesteps]
        if "generator" in params:  # stochastic samplers (DDPM) draw their noise from the same generator
            extra = [dict(e, generator=generator) for e in extra]
        for t, kwargs in zip(timesteps, extra, strict=True):
            t_batch = torch.full((batch,), t, device=device, dtype=torch.long)
            out = network(x, t_batch, stage=stage, previous=previous, encoding=encoding)
            x = scheduler.step(out.float(), t, x, **kwargs)[0]
        return x.clamp(-1.0, 1.0) if self.clip else x

    @torch.no_grad()
    def __call__(
        self,
        inputs: torch.Tensor,
        network: XrayToCTCascade,
        view_mask: torch.Tensor | None = None,
        previous: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """``inputs (B, V, H, W)`` X-rays -> ``(B, 1, X, Y, Z)`` sample of the last requested stage.

        ``previous`` replaces the first requested stage's conditioning (e.g. the ground truth on the previous grid
        when validating one stage of a progressive run).
        """
        net = network.module if hasattr(network, "module") else network
        stages = self.stages if self.stages is not None else list(range(net.num_stages))
        if generator is None and self.seed is not None:
            generator = torch.Generator().manual_seed(self.seed)
        encoding = net.encode(inputs, view_mask)
        sample = previous
        for stage in stages:
            sample = self.sample_stage(net, encoding, stage, sample, inputs.shape[0], generator)
        return sample
