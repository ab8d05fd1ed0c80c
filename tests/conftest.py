"""Shared fixtures and sizes: small analytic phantoms, and the one small cascade every test module builds (tiny sizes
so the suite runs on 2 CPU cores).

``SMALL_*`` are plain values (usable in ``parametrize``); :func:`small_cascade` builds the network; ``TINY_CONFIG`` are
the config overrides that shrink ``common.yaml``'s cascade, geometry and sampling to the same small sizes.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser
from scripts.networks import XrayToCTCascade
from scripts.physics import Ellipsoid, ProjectionGeometry

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "bundle" / "configs"

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

#: The small X-ray encoder of the tests.
SMALL_ENCODER = {"stem_channels": [8, 16], "patch_size": 2, "dim": 32, "heads": 2, "depth": 1, "global_dim": 32}
#: Two stages, 8³ -> 16³ (the workflow tests: fast through the whole bundle runner).
SMALL_STAGES = [
    {"grid_size": 8, "patch_size": 2, "width": 32, "depth": 1, "heads": 2},
    {"grid_size": 16, "patch_size": 2, "width": 32, "depth": 1, "heads": 2},
]
#: Two deeper stages, 16³ -> 32³ with windowed attention in the second (the network and sampler tests).
WINDOWED_STAGES = [
    {"grid_size": 16, "patch_size": 2, "width": 32, "depth": 2, "heads": 2},
    {"grid_size": 32, "patch_size": 4, "width": 32, "depth": 2, "heads": 2, "attention": "window", "window_size": 4},
]
#: A 32² detector covering the same 563 mm as the default 128² one.
SMALL_GEOMETRY = {"views": ("pa", "lateral"), "detector_shape": 32, "pixel_spacing_mm": 563.2 / 32}
#: Config overrides that shrink common.yaml's cascade, detector and sampling to the sizes above.
TINY_CONFIG = {
    "stages": SMALL_STAGES,
    "encoder": SMALL_ENCODER,
    "geometry#detector_shape": [32, 32],
    "geometry#pixel_spacing_mm": [17.6, 17.6],
    "num_inference_steps": 2,
    "progress_bar": False,
}


def small_geometry(detector: int = 32) -> ProjectionGeometry:
    """PA + lateral over the default detector's 563 mm with ``detector``² pixels."""
    return ProjectionGeometry(views=("pa", "lateral"), detector_shape=detector, pixel_spacing_mm=563.2 / detector)


def small_cascade(
    stages: Sequence[Mapping] | None = None, detector: int = 32, random_weights: bool = False, **kwargs
) -> XrayToCTCascade:
    """A small cascade (:data:`WINDOWED_STAGES` by default). ``random_weights``: every weight drawn (seeded), so that
    the output depends on the conditioning — at init (adaLN-Zero) it does not, which makes equality tests vacuous."""
    net = XrayToCTCascade(small_geometry(detector), 320.0, stages or WINDOWED_STAGES, encoder=SMALL_ENCODER, **kwargs)
    if random_weights:
        generator = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for p in net.parameters():
                p.copy_(torch.randn(p.shape, generator=generator) * 0.05)
        net.eval()
    return net


def config_parser(*files: str | os.PathLike, **overrides) -> ConfigParser:
    """A parser of ``common.yaml`` stacked with ``files`` (names under bundle/configs), then ``overrides``."""
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / "common.yaml")] + [str(CONFIGS / f) for f in files])
    for key, value in overrides.items():
        parser[key] = value
    return parser


def config_files(*files: str) -> list[str]:
    """``common.yaml`` and ``files`` (names under bundle/configs) as the paths a workflow stacks."""
    return [str(CONFIGS / "common.yaml")] + [str(CONFIGS / f) for f in files]


def cli_config_files(*files: str) -> str:
    """The ``--config_file`` value of the bundle runner for common.yaml + ``files``, relative to the repository."""
    return "[" + ",".join(f"'bundle/configs/{f}'" for f in ("common.yaml", *files)) + "]"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
