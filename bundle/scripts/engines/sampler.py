"""Cascade sampling: stage by stage with a MONAI scheduler, each stage conditioned on the previous stage's sample.

The loop is scheduler-agnostic: ``set_timesteps`` then ``step(model_output, t, x)`` for DDIM, DDPM or rectified
flow (MONAI core), so the sampler has no branch on the scheduler type inside the loop.
"""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from monai.inferers import Inferer
from tqdm import tqdm

from ..checkpoint import load_regressor, read_model_config
from ..networks import XrayToCTCascade, unwrap
from ..physics import ct_scale_to_hu
from ..utils import flag, guidance_mode

__all__ = [
    "CTInferer",
    "CascadeSampler",
    "RegressionInferer",
    "RegressionPrior",
    "XrayToCT",
    "load_regression_prior",
    "shipped_prior",
    "views_and_mask",
]

logger = logging.getLogger(__name__)


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
        amp: run the network under bf16 autocast on CUDA (the scheduler arithmetic stays float32).
        progress: show a tqdm bar over each stage's steps.
        cache_conditioning: compute each stage's lifted prior and resampled previous volume once, not at every step
            (they depend on neither ``x_t`` nor ``t``; the samples are identical either way).
        guidance: physics-consistent sampling (:class:`~scripts.engines.DRRGuidance`): each guided step's ``x̂0`` is
            pulled towards the input views through the DRR renderer; ``None``: off (the sampler is then exactly the
            unguided one).
        guidance_scale: classifier-free guidance ``w`` on the X-ray conditioning: each step's prediction is
            ``p_null + w·(p_xray − p_null)`` with ``p_null`` the prediction without the X-rays
            (:meth:`~scripts.networks.XrayEncoding.without_xrays`; the previous stage's volume is kept). 1: off (one
            network call per step); other values need a checkpoint trained with condition dropout and cost a second
            network call per step.
        prior: a deterministic first estimate (:class:`RegressionPrior`, e.g. the U-Net baseline's CT) that replaces
            the cascade's first ``prior_stages`` stages: the first sampled stage is conditioned on the prior resampled
            to the replaced stage's grid instead of that stage's sample. ``None``: off (the sampler is then exactly
            the one without a prior).
        prior_stages: how many leading stages the prior replaces (at least one stage is always sampled).
        prior_start: ``s`` in (0, 1]: the first sampled stage starts at the first timestep with ``t / T <= s`` from
            the prior resampled to its grid and noised to that ``t`` (the scheduler's ``add_noise``), instead of from
            pure noise at ``t = T``; 1: from pure noise. Smaller ``s`` keeps more of the prior and takes fewer steps.
    """

    def __init__(
        self,
        scheduler_factory: Callable[[], object],
        num_inference_steps: int | Sequence[int] = 20,
        stages: Sequence[int] | None = None,
        clip: bool = True,
        seed: int | None = 0,
        amp: bool = False,
        progress: bool = False,
        cache_conditioning: bool = True,
        guidance=None,
        guidance_scale: float = 1.0,
        prior=None,
        prior_stages: int = 1,
        prior_start: float = 1.0,
    ) -> None:
        super().__init__()
        if isinstance(prior_stages, bool) or not isinstance(prior_stages, int) or prior_stages < 0:
            raise ValueError(f"prior_stages must be a non-negative integer, got {prior_stages!r}.")
        if isinstance(prior_start, bool) or not isinstance(prior_start, (int, float)) or not 0 < prior_start <= 1:
            raise ValueError(f"prior_start must be a number in (0, 1] (1: from pure noise), got {prior_start!r}.")
        if prior is None and prior_start != 1.0:
            raise ValueError(f"prior_start {prior_start!r} needs a prior to start from; none is set.")
        self.prior, self.prior_stages, self.prior_start = prior, prior_stages, float(prior_start)
        if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, (int, float)):
            raise ValueError(f"guidance_scale must be a number (1: off), got {guidance_scale!r}.")
        if not (0 <= guidance_scale <= 20):
            raise ValueError(f"guidance_scale must be in [0, 20] (1: off), got {guidance_scale!r}.")
        self.scheduler_factory = scheduler_factory
        self.num_inference_steps = num_inference_steps
        self.stages = None if stages is None else [int(s) for s in stages]
        self.clip = clip
        self.seed = seed
        self.amp, self.progress = flag(amp, "amp"), flag(progress, "progress_bar")
        self.cache_conditioning = bool(cache_conditioning)
        self.guidance, self.guidance_scale = guidance, float(guidance_scale)

    def settings(self) -> dict:
        """How this sampler makes a CT (JSON-plain), for the per-case record of the inference workflow."""
        guidance = self.guidance
        return {
            "num_inference_steps": self.num_inference_steps,
            "stages": self.stages,
            "guidance_scale": self.guidance_scale,
            "drr_guidance": None
            if guidance is None
            else {
                "strength": guidance.strength,
                "iterations": guidance.iterations,
                "t_max": guidance.t_max,
                "stages": None if guidance.stages is None else sorted(guidance.stages),
            },
            "regression_prior": None
            if self.prior is None
            else {
                "checkpoint": getattr(self.prior, "name", type(self.prior).__name__),
                "stages": self.prior_stages,
                "start": self.prior_start,
            },
        }

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
        views: torch.Tensor | None = None,
        view_mask: torch.Tensor | None = None,
        start: torch.Tensor | None = None,
        guide: bool = True,
    ) -> torch.Tensor:
        """One stage's sample ``(B, 1, X, Y, Z)`` from pure noise; ``views (B, V, H, W)`` (network scale) and
        ``view_mask (B, V)`` are what the DRR guidance compares with (needed only with ``guidance``); ``start``: a
        CT-scale volume on this stage's grid to start from, noised to the first timestep with ``t / T <=
        prior_start`` (the steps before it are skipped); ``guide`` false: no DRR guidance for this call."""
        device = encoding.tokens.device
        guided = guide and self.guidance is not None and self.guidance.guides_stage(stage)
        if guided and views is None:
            raise ValueError("DRR guidance needs the input views: call the sampler with them.")
        cfg = self.guidance_scale != 1.0
        null = encoding.without_xrays() if cfg else None
        grid = network.grid_size(stage)
        scheduler = self.scheduler_factory()
        scheduler.set_timesteps(self._steps(stage), device=device)
        x = torch.randn((batch, 1, *grid), generator=generator, device="cpu").to(device)
        timesteps = [int(t) for t in scheduler.timesteps]
        if start is not None and self.prior_start < 1.0:
            total = scheduler.num_train_timesteps
            timesteps = [t for t in timesteps if t <= self.prior_start * total] or timesteps[-1:]
            x = scheduler.add_noise(start.float(), x, torch.full((batch,), timesteps[0], device=device))
        # Rectified flow's step sizes its Euler step from the next timestep; DDPM/DDIM derive it themselves.
        params = inspect.signature(scheduler.step).parameters
        if "next_timestep" in params:
            extra = [{"next_timestep": n} for n in timesteps[1:] + [None]]
        else:
            extra = [{} for _ in timesteps]
        if "generator" in params:  # stochastic samplers (DDPM) draw their noise from the same generator
            extra = [dict(e, generator=generator) for e in extra]
        autocast = bool(self.amp and torch.device(device).type == "cuda")
        conditioning = conditioning_null = None
        if self.cache_conditioning:  # per step, the lifting was half of the tiny preset's stage-1 time on CPU
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
                conditioning = network.stage_conditioning(stage, encoding, previous)
                if cfg:
                    conditioning_null = network.stage_conditioning(stage, null, previous)
        if guided:
            fov = network.stage_configs[stage]["fov_mm"]
            spacing = [f / g for f, g in zip(fov, grid, strict=True)]
        steps = tqdm(timesteps, desc=f"stage {stage}", leave=False, disable=not self.progress)
        for t, kwargs in zip(steps, extra, strict=True):
            t_batch = torch.full((batch,), t, device=device, dtype=torch.long)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
                out = network(x, t_batch, stage=stage, previous=previous, encoding=encoding, conditioning=conditioning)
                if cfg:
                    out_null = network(
                        x, t_batch, stage=stage, previous=previous, encoding=null, conditioning=conditioning_null
                    ).float()
            out = out.float()
            if cfg:
                out = out_null + self.guidance_scale * (out - out_null)
            if guided and self.guidance.applies(stage, t):
                out = self.guidance(x, out, t, views, spacing, view_mask)
            x = scheduler.step(out, t, x, **kwargs)[0]
        return x.clamp(-1.0, 1.0) if self.clip else x

    @torch.no_grad()
    def __call__(
        self,
        inputs: torch.Tensor,
        network: XrayToCTCascade,
        view_mask: torch.Tensor | None = None,
        previous: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        guide: bool = True,
    ) -> torch.Tensor:
        """``inputs (B, V, H, W)`` X-rays -> ``(B, 1, X, Y, Z)`` sample of the last requested stage.

        ``previous`` replaces the first requested stage's conditioning (e.g. the ground truth on the previous grid
        when validating one stage of a progressive run); ``guide`` false switches the DRR guidance off for this
        call (the inferer's ``drr_guidance`` mode decides per case).
        """
        net = unwrap(network)
        stages = self.stages if self.stages is not None else list(range(net.num_stages))
        if generator is None and self.seed is not None:
            generator = torch.Generator().manual_seed(self.seed)
        encoding = net.encode(inputs, view_mask)
        sample, start = previous, None
        if self.prior is not None and previous is None:
            replaced = min(self.prior_stages, len(stages) - 1)
            estimate = self.prior(inputs, view_mask)  # (B, 1, X', Y', Z') CT scale
            if replaced > 0:
                sample = _resample(estimate, net.grid_size(stages[replaced - 1]))
            stages = stages[replaced:]
            start = _resample(estimate, net.grid_size(stages[0])) if self.prior_start < 1.0 else None
        for i, stage in enumerate(stages):
            first = start if i == 0 else None
            sample = self.sample_stage(
                net, encoding, stage, sample, inputs.shape[0], generator, inputs, view_mask, start=first, guide=guide
            )
        return sample


def shipped_prior(
    ckpt_path: str | os.PathLike, shipped_cascade: str | os.PathLike, shipped_prior_path: str | os.PathLike
) -> str | None:
    """The regression prior ``ckpt_path`` gets by default (inference.yaml ``regression_prior#ckpt_path``):
    ``shipped_prior_path`` (the shipped U-Net) when ``ckpt_path`` is ``shipped_cascade`` (the shipped cascade; they
    were trained on the same data), none for any other checkpoint. A shipped cascade whose U-Net file is missing (a
    partial copy of the bundle) runs without the prior, with a warning naming the file, rather than failing."""
    if os.path.realpath(os.fspath(ckpt_path)) != os.path.realpath(os.fspath(shipped_cascade)):
        return None
    if not Path(shipped_prior_path).is_file():
        logger.warning(
            "regression_prior: %s is missing; the shipped cascade runs without its regression prior (about 4 dB "
            "lower PSNR on the held-out phantoms). Restore the file or pass --regression_prior#ckpt_path.",
            shipped_prior_path,
        )
        return None
    return str(shipped_prior_path)


#: What switches the regression prior off on the command line (MONAI's runner drops an override of ``None``).
PRIOR_OFF = ("", "none", "null", "false", "off", "no")


def load_regression_prior(path, model_config=None, device=None) -> RegressionPrior | None:
    """inference.yaml's ``regression_prior#ckpt_path`` as a prior: ``None``, ``false`` or ``none`` (any of
    :data:`PRIOR_OFF`, any case) is off; anything else is a regression checkpoint
    (:meth:`RegressionPrior.from_checkpoint`)."""
    if path is None or path is False or str(path).strip().lower() in PRIOR_OFF:
        return None
    if not Path(path).is_file():
        raise FileNotFoundError(
            f"regression_prior#ckpt_path: {path} does not exist (a regression checkpoint, or false for none)."
        )
    return RegressionPrior.from_checkpoint(path, model_config, device)


def _resample(volume: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
    """``volume (B, 1, X, Y, Z)`` on ``grid``: area averaging to a coarser grid, trilinear to a finer one (the
    volumes share the field of view, so voxel centres align as in the cascade's own resampling)."""
    grid = tuple(int(g) for g in grid)
    if tuple(volume.shape[2:]) == grid:
        return volume
    coarser = all(g <= s for g, s in zip(grid, volume.shape[2:], strict=True))
    if coarser:
        return torch.nn.functional.interpolate(volume, size=grid, mode="area")
    return torch.nn.functional.interpolate(volume, size=grid, mode="trilinear", align_corners=False)


class RegressionPrior:
    """A regression baseline's CT as the cascade's first estimate (:class:`CascadeSampler`'s ``prior``).

    Args:
        network: a deterministic regressor (``networks.LiftedRegressor``) taking the same views as the cascade.
        clip: clamp the estimate to the CT scale [−1, 1].
    """

    def __init__(self, network: torch.nn.Module, clip: bool = True, name: str | None = None) -> None:
        self.network, self._inferer = network.eval(), RegressionInferer(clip)
        self.name = name or type(network).__name__  # the checkpoint's file name in the per-case record
        # The last call's (inputs, view_mask, estimate): CTInferer draws every sample from the same views, and the
        # estimate is deterministic, so it is computed once per case, not once per sample. One tuple, replaced
        # whole, so that concurrent callers never pair one call's inputs with another's estimate.
        self._last: tuple | None = None

    @classmethod
    def from_checkpoint(cls, path, model_config=None, device=None) -> RegressionPrior:
        """The regressor of checkpoint ``path`` (a ``stages/baseline_*.yaml`` training), loaded with
        ``weights_only``; ``model_config``: the cascade's, whose geometry, physics, field of view and HU window the
        regressor must share (else refused naming the key and the file)."""
        record = read_model_config(path)
        if record["prediction_type"] != "regression":
            raise ValueError(
                f"regression_prior: {path} is not a regression checkpoint (prediction_type "
                f"{record['prediction_type']!r}); train one with configs/stages/baseline_unet3d.yaml."
            )
        network = load_regressor(path, record, model_config)
        return cls(network.to(device) if device is not None else network, name=os.path.basename(os.fspath(path)))

    def __call__(self, inputs: torch.Tensor, view_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``inputs (B, V, H, W)`` network-scale views -> ``(B, 1, X, Y, Z)`` CT-scale estimate
        (:class:`RegressionInferer`'s forward pass; repeated calls with the same tensors reuse it)."""
        last = self._last
        if last is not None and last[0] is inputs and last[1] is view_mask:
            return last[2]
        estimate = self._inferer(inputs, self.network, view_mask=view_mask)
        self._last = (inputs, view_mask, estimate)
        return estimate


class RegressionInferer(Inferer):
    """One forward pass of a deterministic regressor (``networks.LiftedRegressor``), clamped to the CT scale.

    Same call as :class:`CascadeSampler` (``generator`` and ``previous`` are accepted and unused), so the training
    workflow validates the baselines and :class:`CTInferer` runs them without a branch.
    """

    def __init__(self, clip: bool = True) -> None:
        super().__init__()
        self.clip = clip

    @torch.no_grad()
    def __call__(
        self,
        inputs: torch.Tensor,
        network: torch.nn.Module,
        view_mask: torch.Tensor | None = None,
        previous: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        guide: bool = True,
    ) -> torch.Tensor:
        """``inputs (B, V, H, W)`` -> ``(B, 1, X, Y, Z)`` on the CT scale (``guide``: unused, nothing to guide)."""
        out = network(None, None, inputs, view_mask=view_mask).float()
        return out.clamp(-1.0, 1.0) if self.clip else out


def views_and_mask(inputs: torch.Tensor, view_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Views with missing ones filled as an unexposed detector (−1, as in training) and the ``(B, V)`` mask.

    Without an explicit mask a view is missing when its pixels are not finite: MONAI Label hands the inferer one
    tensor, so the preprocessing marks an absent view with NaN (``XrayInputsd``). Real pixels were checked finite
    when read.
    """
    if inputs.dim() != 4:
        raise ValueError(f"inputs must be X-ray views (B, V, H, W), got shape {tuple(inputs.shape)}.")
    finite = torch.isfinite(inputs).flatten(2).all(-1)  # (B, V)
    mask = finite if view_mask is None else view_mask.to(device=inputs.device, dtype=torch.bool)
    if not bool(mask.any(dim=1).all()):
        raise ValueError("inputs: every case needs at least one view with finite pixels.")
    return torch.where(torch.isfinite(inputs), inputs, torch.full_like(inputs, -1.0)), mask


class CTInferer(Inferer):
    """X-rays -> CT with an uncertainty: ``num_samples`` draws of a sampler, their mean and per-voxel std.

    ``inferer(inputs, network)`` is what MONAI Label's ``BundleInferTask`` calls. The result is
    ``(B, 2, X, Y, Z)`` on the CT scale: channel 0 the mean, channel 1 the population standard deviation over the
    samples (exactly 0 for one sample); ``postprocessing`` maps both to HU.

    Args:
        sampler: :class:`CascadeSampler` (diffusion) or :class:`RegressionInferer` (deterministic baselines).
        num_samples: independent draws per case (each from its own noise).
        seed: seed of the draws (the same seed and inputs give the same CT).
        guide: which cases the sampler's DRR guidance applies to: ``"all"``, ``"off"``, or ``"rendered"`` (only
            calls with ``rendered=True``: views the pipeline rendered from a CT, i.e. exact DRRs; a radiograph is a
            processed film, on which the pull was measured to cost PSNR). ``auto``/``true``/``false`` are read as in
            ``drr_guidance#enabled`` (:func:`scripts.utils.guidance_mode`).
    """

    def __init__(self, sampler: Inferer, num_samples: int = 1, seed: int = 0, guide: str | bool = "all") -> None:
        super().__init__()
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}.")
        self.sampler, self.num_samples, self.seed = sampler, num_samples, int(seed)
        self.guide = guidance_mode(guide)

    def guides(self, rendered: bool) -> bool:
        """Whether a case's sampling is DRR-guided: ``rendered``: its views were rendered from a CT input."""
        return self.guide == "all" or (self.guide == "rendered" and bool(rendered))

    @torch.no_grad()
    def __call__(
        self,
        inputs: torch.Tensor,
        network: torch.nn.Module,
        view_mask: torch.Tensor | None = None,
        rendered: bool = False,
    ) -> torch.Tensor:
        """``rendered``: the views were rendered from a CT input (what ``guide="rendered"`` guides); MONAI Label's
        call (``inferer(inputs, network)``) gives radiographs, so false."""
        views, mask = views_and_mask(inputs.float(), view_mask)  # (B, V, H, W), (B, V)
        guide = self.guides(rendered)
        generator = torch.Generator().manual_seed(self.seed)
        total = total_sq = None
        for _ in range(self.num_samples):  # running sums: memory stays at two volumes for any num_samples
            sample = self.sampler(views, network, view_mask=mask, generator=generator, guide=guide).double()
            total = sample if total is None else total + sample
            total_sq = sample**2 if total_sq is None else total_sq + sample**2
        mean = total / self.num_samples
        var = (total_sq / self.num_samples - mean**2).clamp_min(0.0) if self.num_samples > 1 else torch.zeros_like(mean)
        return torch.cat([mean, var.sqrt()], dim=1).float()  # (B, 2, X, Y, Z)


class XrayToCT(torch.nn.Module):
    """The whole model as one module: ``views (B, V, H, W)`` on the X-ray network scale -> ``(B, 1, X, Y, Z)`` CT in
    HU on the last stage grid (the mean of ``inferer``'s samples, within ``hu_window``).

    What ``network_data_format`` in ``configs/metadata.json`` declares (``image`` in, ``pred`` out), so that MONAI's
    ``verify_net_in_out`` can check the declaration on a module that takes one tensor (``xray_to_ct`` in
    ``configs/inference.yaml``); ``network_def`` itself is one denoising step. The inference workflow runs the same
    ``inferer`` case by case and adds the affine, the uncertainty and the files.

    Args:
        network: the cascade (or a baseline); its weights are whatever it holds.
        inferer: :class:`CTInferer`, ``(B, V, H, W) -> (B, 2, X, Y, Z)`` mean and standard deviation on the CT scale.
        hu_window: the CT scale's HU window (``[-1, 1] -> hu_window``).
    """

    def __init__(self, network: torch.nn.Module, inferer: CTInferer, hu_window: Sequence[float]) -> None:
        super().__init__()
        self.network, self.inferer, self.hu_window = network, inferer, tuple(map(float, hu_window))

    def forward(self, views: torch.Tensor, view_mask: torch.Tensor | None = None) -> torch.Tensor:
        mean = self.inferer(views, self.network, view_mask=view_mask)[:, :1]  # (B, 1, X, Y, Z) CT scale
        return ct_scale_to_hu(mean, self.hu_window)  # (B, 1, X, Y, Z) HU
