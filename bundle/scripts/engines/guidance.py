"""Physics-consistent sampling: pull each step's clean-volume estimate towards the input radiographs.

At a sampling step the network's prediction implies a clean volume ``x̂0`` (CT scale). :class:`DRRGuidance` corrects
``x̂0`` with a few data-consistency steps against the input views and hands the scheduler the prediction that implies
the corrected volume (``DiffusionObjective.prediction_from_x0``), so DDIM, DDPM and the flow's Euler step all move
towards it with the noise that is consistent with ``x_t``; the next step's network call then removes what the
correction did not explain (the streaks a two-view back-projection leaves).

The data-consistency step is SART's (simultaneous algebraic reconstruction, Andersen and Kak 1984) on the network's
own forward model ``f(x) = composer(HU(x))`` — the DRR renderer of training, which is affine in ``x`` for CT-scale
values at or above the window's air (μ ≥ 0)::

    x̂0 ← x̂0 + λ · Jᵀ( m · (y − f(x̂0)) / (J·1) ) / (Jᵀ·m)

with ``J`` the Jacobian of ``f`` (the ray-length matrix times the HU → network-scale slopes), ``J·1`` the row sums
(a unit step of the whole volume on each pixel), ``Jᵀ·m`` the column sums over the present views' pixels (``m`` the
view mask), ``y`` the input views on the X-ray network scale and ``λ`` the relaxation (``strength``). Each residual
is spread along its ray in proportion to the ray's path through each voxel, then averaged over the views that see the
voxel, so one unit of ``λ`` removes the whole residual of a single view and the step needs no tuning per grid or
spacing. Pixels whose ray misses the volume (``J·1`` ≈ 0) and voxels that no present ray crosses are left out.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..physics import RadiographComposer, ct_scale_to_hu
from .objective import DiffusionObjective

__all__ = ["DRRGuidance"]


class DRRGuidance:
    """SART data-consistency on each sampling step's ``x̂0`` (equations in the module docstring).

    Args:
        composer: HU -> network-scale views (the renderer the views came from, as in training).
        hu_window: the CT scale's ``(low, high)`` HU window.
        objective: the checkpoint's diffusion objective (``x̂0`` from a prediction and back).
        strength: SART relaxation λ in (0, 2) (1: one view's whole residual per iteration).
        iterations: data-consistency iterations per guided step.
        t_max: guide the steps with ``t / T`` at or below this fraction of the schedule, in (0, 1]; early steps'
            ``x̂0`` is a blur whose projections say little (the training's DRR loss is gated the same way).
        stages: the cascade stages to guide (default: all).
    """

    def __init__(
        self,
        composer: RadiographComposer,
        hu_window: Sequence[float],
        objective: DiffusionObjective,
        strength: float = 0.5,
        iterations: int = 1,
        t_max: float = 0.5,
        stages: Sequence[int] | None = None,
    ) -> None:
        if not (isinstance(strength, (int, float)) and not isinstance(strength, bool) and 0 < strength < 2):
            raise ValueError(f"drr_guidance#strength must be a number in (0, 2), got {strength!r}.")
        if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
            raise ValueError(f"drr_guidance#iterations must be a positive integer, got {iterations!r}.")
        if not (isinstance(t_max, (int, float)) and not isinstance(t_max, bool) and 0 < t_max <= 1):
            raise ValueError(f"drr_guidance#t_max must be a fraction in (0, 1], got {t_max!r}.")
        if not isinstance(objective, DiffusionObjective):
            raise ValueError(
                f"drr_guidance needs a diffusion checkpoint's objective, got {type(objective).__name__} "
                "(the regression baselines are not sampled)."
            )
        self.composer, self.hu_window, self.objective = composer, tuple(map(float, hu_window)), objective
        self.strength, self.iterations, self.t_max = float(strength), int(iterations), float(t_max)
        self.stages = None if stages is None else {int(s) for s in stages}
        self._sums: dict = {}

    def guides_stage(self, stage: int) -> bool:
        """Whether any step of stage ``stage`` is guided."""
        return self.stages is None or stage in self.stages

    def applies(self, stage: int, t: int) -> bool:
        """Whether step ``t`` of stage ``stage`` is guided."""
        return self.guides_stage(stage) and t / self.objective.num_train_timesteps <= self.t_max + 1e-12

    def views(self, x: torch.Tensor, spacing_mm: Sequence[float]) -> torch.Tensor:
        """``f(x)``: ``(B, 1, X, Y, Z)`` CT scale -> ``(B, V, H, W)`` DRRs on the X-ray network scale."""
        return self.composer(ct_scale_to_hu(x.float(), self.hu_window), spacing_mm)

    def _back_project(self, weights: torch.Tensor, grid: Sequence[int], spacing_mm: Sequence[float]) -> torch.Tensor:
        """``Jᵀ·weights``: ``(B, V, H, W)`` -> ``(B, 1, X, Y, Z)``, the adjoint of the (affine) forward model.

        Taken by autograd at the CT scale's 0 (500 HU for the default window), where every voxel is in the linear
        part of ``f``; the adjoint of an affine map does not depend on the point.
        """
        with torch.enable_grad():
            z = torch.zeros((weights.shape[0], 1, *grid), dtype=torch.float32, device=weights.device)
            z.requires_grad_(True)
            (grad,) = torch.autograd.grad((self.views(z, spacing_mm) * weights).sum(), z)
        return grad

    def _row_col_sums(
        self, grid: Sequence[int], spacing_mm: Sequence[float], mask: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        """For this grid and view mask (cached): the pixel weights ``m`` ``(B, V, H, W)`` (present views, rays that
        cross the volume), ``J·1`` ``(1, V, H, W)`` and ``Jᵀ·m`` ``(B, 1, X, Y, Z)`` with 1 where they are 0 (safe
        divisors), and the voxels some present ray crosses ``(B, 1, X, Y, Z)``."""
        key = (tuple(grid), tuple(float(s) for s in spacing_mm), tuple(map(tuple, mask.tolist())), str(mask.device))
        if key not in self._sums:
            ones = torch.ones((1, 1, *grid), dtype=torch.float32, device=mask.device)
            row = self.views(ones, spacing_mm) - self.views(torch.zeros_like(ones), spacing_mm)  # (1, V, H, W)
            present = row.abs() > 1e-6 * row.abs().amax().clamp_min(1e-30)  # rays that cross the volume
            weights = mask.float()[:, :, None, None] * present.float()  # (B, V, H, W)
            col = self._back_project(weights, grid, spacing_mm)  # (B, 1, X, Y, Z)
            crossed = col > 0
            self._sums[key] = (
                weights,
                torch.where(present, row, torch.ones_like(row)),
                torch.where(crossed, col, torch.ones_like(col)),
                crossed,
            )
        return self._sums[key]

    def correct_x0(
        self, x0: torch.Tensor, views: torch.Tensor, spacing_mm: Sequence[float], view_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``iterations`` SART steps on ``x0 (B, 1, X, Y, Z)`` (CT scale) towards ``views (B, V, H, W)``.

        The estimate is clamped to the CT scale ``[−1, 1]`` before and after each step: below −1 the renderer's
        attenuation is 0 (no longer affine), and values outside the window are not CT numbers the networks produce.
        """
        grid = x0.shape[2:]
        mask = torch.ones(views.shape[:2], dtype=torch.bool, device=views.device) if view_mask is None else view_mask
        weights, safe_row, safe_col, crossed = self._row_col_sums(grid, spacing_mm, mask.to(views.device))
        x = x0.float().clamp(-1.0, 1.0)
        for _ in range(self.iterations):
            residual = (views.float() - self.views(x, spacing_mm)) * weights / safe_row  # (B, V, H, W)
            update = self._back_project(residual, grid, spacing_mm) / safe_col * crossed
            x = (x + self.strength * update).clamp(-1.0, 1.0)
        return x.to(x0.dtype)

    def __call__(
        self,
        x_t: torch.Tensor,
        prediction: torch.Tensor,
        t: int,
        views: torch.Tensor,
        spacing_mm: Sequence[float],
        view_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The prediction at ``x_t`` (step ``t``) whose ``x̂0`` is the data-consistent correction of the network's."""
        t_batch = torch.full((x_t.shape[0],), int(t), dtype=torch.long, device=x_t.device)
        x0 = self.objective.predict_x0(x_t, prediction, t_batch)
        corrected = self.correct_x0(x0, views, spacing_mm, view_mask)
        out = self.objective.prediction_from_x0(x_t, corrected, t_batch)
        if not bool(torch.isfinite(out).all()):  # e.g. ε at t with √(1−ᾱ) → 0: keep the network's own step
            return prediction
        return out

    def __repr__(self) -> str:
        return (
            f"DRRGuidance(strength={self.strength}, iterations={self.iterations}, t_max={self.t_max}, "
            f"stages={None if self.stages is None else sorted(self.stages)})"
        )
