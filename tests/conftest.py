"""Shared fixtures: small analytic phantoms and geometries (tiny sizes so the suite runs on 2 CPU cores)."""

from __future__ import annotations

import pytest
import torch
from scripts.physics import Ellipsoid

#: A chest-like phantom of additive ellipsoids (1/mm): body, two lungs, heart (patient's left), spine.
CHEST = (
    Ellipsoid((0.0, 0.0, 0.0), (140.0, 100.0, 130.0), 0.0214),
    Ellipsoid((-55.0, 5.0, 10.0), (40.0, 60.0, 80.0), -0.0183),
    Ellipsoid((55.0, 5.0, 10.0), (40.0, 60.0, 80.0), -0.0183),
    Ellipsoid((-25.0, 30.0, -15.0), (40.0, 35.0, 40.0), 0.0147),
    Ellipsoid((0.0, -70.0, 0.0), (15.0, 15.0, 150.0), 0.0200),
)
#: One off-centre body ellipsoid.
BODY = (Ellipsoid((10.0, -20.0, 5.0), (140.0, 100.0, 130.0), 0.02),)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
