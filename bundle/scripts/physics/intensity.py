"""Conversions between CT numbers, attenuation, detector intensity and the networks' image scale.

Equations (all element-wise):

* HU -> attenuation:       μ = μ_water · (1 + HU / 1000), clamped at 0          [1/mm]
* attenuation -> HU:       HU = 1000 · (μ / μ_water − 1)
* Beer–Lambert:            I = I₀ · exp(−p),  p = ∫ μ dl the DRR line integral   [same unit as I₀]
* inverse Beer–Lambert:    p = −ln(I / I₀)
* network image scale:     x = 2 · p / p_max − 1   (fixed p_max; never a per-image maximum, so that an image keeps
                           the physical scale that the DRR consistency loss compares against)
* CT scale:                c = 2 · (HU − lo) / (hi − lo) − 1 over the fixed HU window [lo, hi] (the networks'
                           volumes; ``ScaleIntensityRanged`` in the configs), HU = (c + 1) · (hi − lo) / 2 + lo

μ_water depends on the effective beam energy; 0.0206 /mm is water at about 60 keV (NIST XCOM: 0.2059 cm²/g),
typical of a chest radiograph at 110–125 kVp. The value lives in the bundle configs, not here.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "hu_to_mu",
    "mu_to_hu",
    "beer_lambert",
    "line_integral_from_intensity",
    "line_integral_to_network",
    "network_to_line_integral",
    "ct_scale_to_hu",
    "hu_to_ct_scale",
]


def _positive(value: float, name: str) -> float:
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive, finite number, got {value!r}.")
    return value


def hu_to_mu(hu: torch.Tensor, mu_water: float) -> torch.Tensor:
    """Linear attenuation (1/mm) from CT numbers (HU); below −1000 HU (air) it is clamped to 0."""
    mu_water = _positive(mu_water, "mu_water")
    return torch.clamp(mu_water * (1.0 + hu / 1000.0), min=0.0)


def mu_to_hu(mu: torch.Tensor, mu_water: float) -> torch.Tensor:
    """CT numbers (HU) from linear attenuation (1/mm); the inverse of :func:`hu_to_mu` above −1000 HU."""
    mu_water = _positive(mu_water, "mu_water")
    return 1000.0 * (mu / mu_water - 1.0)


def beer_lambert(line_integral: torch.Tensor, i0: float = 1.0) -> torch.Tensor:
    """Transmitted intensity ``I₀·exp(−p)`` of a monochromatic beam after the line integral ``p``."""
    return _positive(i0, "i0") * torch.exp(-line_integral)


def line_integral_from_intensity(intensity: torch.Tensor, i0: float = 1.0, eps: float = 1e-6) -> torch.Tensor:
    """Line integral ``−ln(I/I₀)`` from a transmitted intensity; ``I/I₀`` is floored at ``eps`` (detector floor)."""
    i0 = _positive(i0, "i0")
    return -torch.log(torch.clamp(intensity / i0, min=_positive(eps, "eps")))


def line_integral_to_network(line_integral: torch.Tensor, max_line_integral: float) -> torch.Tensor:
    """Network input scale ``2·p/p_max − 1``: 0 -> −1, ``p_max`` -> +1; values are not clipped."""
    return 2.0 * line_integral / _positive(max_line_integral, "max_line_integral") - 1.0


def network_to_line_integral(image: torch.Tensor, max_line_integral: float) -> torch.Tensor:
    """Inverse of :func:`line_integral_to_network`: ``p = (x + 1)·p_max/2``."""
    return (image + 1.0) * (0.5 * _positive(max_line_integral, "max_line_integral"))


def _window(hu_window) -> tuple[float, float]:
    low, high = float(hu_window[0]), float(hu_window[1])
    if not high > low:
        raise ValueError(f"hu_window must be (low, high) in HU with high > low, got {hu_window!r}.")
    return low, high


def ct_scale_to_hu(x: torch.Tensor, hu_window) -> torch.Tensor:
    """CT numbers (HU) from the networks' CT scale over the fixed ``hu_window``: −1 -> low, +1 -> high."""
    low, high = _window(hu_window)
    return (x + 1.0) * (0.5 * (high - low)) + low


def hu_to_ct_scale(hu: torch.Tensor, hu_window) -> torch.Tensor:
    """The networks' CT scale from CT numbers (HU); the inverse of :func:`ct_scale_to_hu` (not clipped)."""
    low, high = _window(hu_window)
    return (hu - low) * (2.0 / (high - low)) - 1.0
