"""The DRR physics-consistency loss: re-project the estimated CT and compare it with the input X-rays."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from ..physics import RadiographComposer, ct_scale_to_hu

__all__ = ["DRRConsistencyLoss"]


class DRRConsistencyLoss(nn.Module):
    """``λ · mean over samples with t ≤ gate of MSE(DRR(HU(x̂0)), xray)`` over the present views.

    ``x̂0`` is on the networks' CT scale ([−1, 1] from the fixed ``hu_window``); it is mapped back to HU and
    rendered by the same :class:`RadiographComposer` that produced the training views, so both sides are on the
    fixed X-ray network scale. At high noise levels ``x̂0`` is a blur and its projection says little, so samples
    with ``t / T > timestep_gate`` are left out (the gate is a fraction of the training schedule).

    Args:
        composer: HU -> network-scale views (the data pipeline's).
        hu_window: ``(low, high)`` HU mapped to −1 and +1.
        weight: λ ≥ 0.
        timestep_gate: fraction of the schedule in (0, 1] below which the loss applies.
    """

    def __init__(
        self,
        composer: RadiographComposer,
        hu_window: Sequence[float] = (-1000.0, 2000.0),
        weight: float = 0.3,
        timestep_gate: float = 0.5,
    ) -> None:
        super().__init__()
        if not (isinstance(weight, (int, float)) and math.isfinite(weight) and weight >= 0):
            raise ValueError(f"physics_loss_weight must be a non-negative number, got {weight!r}.")
        if not (isinstance(timestep_gate, (int, float)) and 0 < timestep_gate <= 1):
            raise ValueError(f"physics_timestep_gate must be in (0, 1], got {timestep_gate!r}.")
        self.composer, self.hu_window = composer, tuple(map(float, hu_window))
        self.weight, self.timestep_gate = float(weight), float(timestep_gate)

    def forward(
        self,
        x0_hat: torch.Tensor,
        xray: torch.Tensor,
        t: torch.Tensor,
        num_train_timesteps: int,
        spacing_mm: Sequence[float],
        view_mask: torch.Tensor | None = None,
        sample_weight: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Args: ``x0_hat (B, 1, X, Y, Z)`` CT scale, ``xray (B, V, H, W)`` network scale, ``t (B,)``,
        ``spacing_mm`` of the stage grid, ``view_mask (B, V)``, ``sample_weight (B,)`` 0/1 (0: the sample is left
        out, e.g. trained without its X-rays). Returns a scalar (0 when no sample qualifies)."""
        hu = ct_scale_to_hu(x0_hat.float(), self.hu_window)  # (B, 1, X, Y, Z)
        gate = (t.float() / num_train_timesteps <= self.timestep_gate).float()  # (B,)
        if sample_weight is not None:
            gate = gate * sample_weight.to(gate)
        if self.weight == 0 or not bool(gate.any()):
            return x0_hat.sum() * 0.0  # keeps the graph (and DDP) intact
        drr = self.composer(hu, spacing_mm)  # (B, V, H, W)
        mask = torch.ones(xray.shape[:2], device=xray.device) if view_mask is None else view_mask.float()
        per_view = (drr - xray.float()).pow(2).mean(dim=(2, 3)) * mask  # (B, V)
        per_sample = per_view.sum(1) / mask.sum(1).clamp(min=1.0)  # (B,)
        return self.weight * (per_sample * gate).sum() / gate.sum()
