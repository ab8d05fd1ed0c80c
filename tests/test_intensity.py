"""HU <-> attenuation, Beer–Lambert and the fixed network normalisation."""

from __future__ import annotations

import math

import pytest
import torch
from scripts.physics import (
    beer_lambert,
    hu_to_mu,
    line_integral_from_intensity,
    line_integral_to_network,
    mu_to_hu,
    network_to_line_integral,
)

MU_WATER = 0.0206


def test_hu_to_mu_reference_points():
    hu = torch.tensor([-3024.0, -1000.0, 0.0, 1000.0, 40.0])
    mu = hu_to_mu(hu, MU_WATER)
    # Scanner padding and air -> 0, water -> mu_water, +1000 HU -> twice water.
    torch.testing.assert_close(mu, torch.tensor([0.0, 0.0, 0.0206, 0.0412, 0.0206 * 1.04]))


def test_hu_round_trip_above_air():
    hu = torch.linspace(-1000.0, 3071.0, 97, dtype=torch.float64)
    torch.testing.assert_close(mu_to_hu(hu_to_mu(hu, MU_WATER), MU_WATER), hu)


def test_beer_lambert_and_its_inverse():
    p = torch.tensor([0.0, 1.0, 5.0], dtype=torch.float64)
    i = beer_lambert(p, i0=1000.0)
    torch.testing.assert_close(i, 1000.0 * torch.exp(-p))
    torch.testing.assert_close(line_integral_from_intensity(i, i0=1000.0), p)
    # The detector floor caps the line integral of a fully absorbed ray at -ln(eps).
    assert line_integral_from_intensity(torch.tensor([0.0]), eps=1e-6).item() == pytest.approx(-math.log(1e-6))


def test_network_scale_is_fixed_and_invertible():
    p = torch.tensor([0.0, 5.0, 10.0, 12.0])
    x = line_integral_to_network(p, max_line_integral=10.0)
    torch.testing.assert_close(x, torch.tensor([-1.0, 0.0, 1.0, 1.4]))  # not clipped, not per-image
    torch.testing.assert_close(network_to_line_integral(x, 10.0), p)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: hu_to_mu(torch.zeros(1), 0.0), "mu_water must be a positive, finite number"),
        (lambda: mu_to_hu(torch.zeros(1), -1.0), "mu_water must be a positive, finite number"),
        (lambda: beer_lambert(torch.zeros(1), i0=float("inf")), "i0 must be a positive, finite number"),
        (lambda: line_integral_to_network(torch.zeros(1), 0.0), "max_line_integral must be a positive"),
    ],
)
def test_bad_constants_name_the_argument(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_composer_chains_hu_to_network_scale_and_passes_gradients():
    from scripts.physics import DRRRenderer, ProjectionGeometry, RadiographComposer

    g = ProjectionGeometry(views=("pa", "lateral"), detector_shape=(5, 6), pixel_spacing_mm=20.0)
    renderer = DRRRenderer(g)
    composer = RadiographComposer(renderer, mu_water=MU_WATER, max_line_integral=10.0)
    hu = (torch.rand(2, 1, 8, 8, 8) * 2000.0 - 1000.0).requires_grad_(True)
    out = composer(hu, (10.0, 10.0, 10.0))
    expected = 2.0 * renderer(hu_to_mu(hu, MU_WATER), (10.0, 10.0, 10.0)) / 10.0 - 1.0
    torch.testing.assert_close(out, expected)
    # Empty space renders as -1, the bottom of the fixed scale.
    air = composer(torch.full((1, 1, 8, 8, 8), -1000.0), (10.0, 10.0, 10.0))
    torch.testing.assert_close(air, torch.full_like(air, -1.0))
    out.sum().backward()
    assert hu.grad is not None and hu.grad.abs().sum() > 0
