"""The one path from a CT in HU to the images the networks see, shared by the data transform and the DRR loss."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .intensity import _positive, hu_to_mu, line_integral_to_network
from .renderer import DRRRenderer

__all__ = ["RadiographComposer"]


class RadiographComposer(nn.Module):
    """HU volume -> attenuation -> DRR line integrals -> fixed network scale.

    ``x = 2·p/p_max − 1`` with ``p = ∫ μ dl`` and ``μ = μ_water·(1 + HU/1000)`` (clamped at 0). Training pairs
    rendered by the data pipeline and the re-projections compared by the physics loss go through this same module,
    so the two can never disagree on units or normalisation.

    Args:
        renderer: the DRR renderer (holds the geometry).
        mu_water: attenuation of water in 1/mm at the effective beam energy.
        max_line_integral: the fixed scale ``p_max`` that maps to +1.
    """

    def __init__(self, renderer: DRRRenderer, mu_water: float, max_line_integral: float) -> None:
        super().__init__()
        self.renderer = renderer
        self.mu_water = _positive(mu_water, "mu_water")
        self.max_line_integral = _positive(max_line_integral, "max_line_integral")

    def line_integrals(self, hu: torch.Tensor, spacing_mm: Sequence[float]) -> torch.Tensor:
        """``(B, 1, X, Y, Z)`` HU -> ``(B, V, H, W)`` line integrals (dimensionless)."""
        return self.renderer(hu_to_mu(hu, self.mu_water), spacing_mm)

    def forward(self, hu: torch.Tensor, spacing_mm: Sequence[float]) -> torch.Tensor:
        """``(B, 1, X, Y, Z)`` HU -> ``(B, V, H, W)`` images on the network scale."""
        return line_integral_to_network(self.line_integrals(hu, spacing_mm), self.max_line_integral)
