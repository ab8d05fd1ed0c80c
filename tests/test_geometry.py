"""ProjectionGeometry: view frames, rays, point projection and argument validation."""

from __future__ import annotations

import math

import pytest
import torch
from scripts.physics import ProjectionGeometry


def test_named_view_frames_follow_the_radiological_convention():
    g = ProjectionGeometry(views=("pa", "lateral"), source_to_isocenter_mm=541.0, source_to_detector_mm=949.0)
    f = g.frames()
    # PA: source posterior (-y), beam toward anterior; image left->right runs from patient's right to left (-x).
    torch.testing.assert_close(f["source"][0], torch.tensor([0.0, -541.0, 0.0], dtype=torch.float64))
    torch.testing.assert_close(f["beam"][0], torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64))
    torch.testing.assert_close(f["column"][0], torch.tensor([-1.0, 0.0, 0.0], dtype=torch.float64))
    torch.testing.assert_close(f["detector_center"][0], torch.tensor([0.0, 408.0, 0.0], dtype=torch.float64))
    # Lateral: source on the patient's right (+x), beam right -> left; image left->right runs anterior->posterior.
    torch.testing.assert_close(f["source"][1], torch.tensor([541.0, 0.0, 0.0], dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(f["beam"][1], torch.tensor([-1.0, 0.0, 0.0], dtype=torch.float64), atol=1e-15, rtol=0)
    torch.testing.assert_close(f["column"][1], torch.tensor([0.0, -1.0, 0.0], dtype=torch.float64), atol=1e-15, rtol=0)
    # Rows run from superior to inferior in every view.
    torch.testing.assert_close(f["row"], torch.tensor([[0.0, 0.0, -1.0]] * 2, dtype=torch.float64))


def test_gantry_angle_matches_named_view_and_rotates_about_z():
    named = ProjectionGeometry(views=("lateral",)).frames()
    angle = ProjectionGeometry(views=(90.0,)).frames()
    for key in named:
        torch.testing.assert_close(named[key], angle[key])
    f = ProjectionGeometry(views=(30.0,)).frames()
    expected = torch.tensor([[-math.sin(math.pi / 6), math.cos(math.pi / 6), 0.0]], dtype=torch.float64)
    torch.testing.assert_close(f["beam"], expected)


def test_cone_rays_end_on_pixel_centres():
    g = ProjectionGeometry(views=("pa",), detector_shape=(3, 5), pixel_spacing_mm=(2.0, 4.0))
    rays = g.rays()
    assert rays.origins.shape == (1, 3, 5, 3) and rays.lengths.shape == (1, 3, 5)
    ends = rays.origins + rays.directions * rays.lengths[..., None]
    # Top-left pixel: superior (+z) and on the patient's right (+x) for PA; detector plane at y = 408 mm.
    torch.testing.assert_close(ends[0, 0, 0], torch.tensor([8.0, 408.0, 2.0], dtype=torch.float64))
    torch.testing.assert_close(ends[0, 1, 2], torch.tensor([0.0, 408.0, 0.0], dtype=torch.float64))
    assert rays.lengths[0, 1, 2].item() == pytest.approx(949.0)
    torch.testing.assert_close(rays.directions.norm(dim=-1), torch.ones(1, 3, 5, dtype=torch.float64))


def test_parallel_rays_share_the_beam_direction_and_isocentre_pitch():
    g = ProjectionGeometry(views=("lateral",), detector_shape=(2, 2), pixel_spacing_mm=3.0, parallel=True)
    rays = g.rays()
    torch.testing.assert_close(
        rays.directions, torch.tensor([-1.0, 0.0, 0.0], dtype=torch.float64).expand(1, 2, 2, 3), atol=1e-15, rtol=0
    )
    # Pixel centres at +-1.5 mm around the isocentre in the (y, z) plane; rays start SID behind it.
    expected = torch.tensor([541.0, 1.5, 1.5], dtype=torch.float64)
    torch.testing.assert_close(rays.origins[0, 0, 0], expected, atol=1e-12, rtol=0)
    assert g.magnification == 1.0


@pytest.mark.parametrize("parallel", [False, True])
def test_project_points_inverts_rays(parallel):
    g = ProjectionGeometry(
        views=("pa", "lateral", 37.0), detector_shape=(6, 7), pixel_spacing_mm=(2.0, 3.0), parallel=parallel
    )
    rays = g.rays()
    # A point 500 mm along each ray must project back onto that ray's pixel.
    pts = rays.origins + 500.0 * rays.directions  # (V, H, W, 3)
    for v in range(3):
        pix, depth = g.project_points(pts[v])
        rows, cols = torch.meshgrid(torch.arange(6.0), torch.arange(7.0), indexing="ij")
        torch.testing.assert_close(pix[v], torch.stack([rows, cols], -1).double())
        assert depth.shape == (3, 6, 7)


def test_magnification_at_isocentre():
    g = ProjectionGeometry(views=("pa",), detector_shape=(101, 101), pixel_spacing_mm=1.0)
    pix, _ = g.project_points(torch.tensor([[-10.0, 0.0, 10.0]]))  # 10 mm left, 10 mm superior
    # Patient's left appears on the image's right for PA; magnification 949/541.
    assert pix[0, 0, 1].item() == pytest.approx(50.0 + 10.0 * 949.0 / 541.0)
    assert pix[0, 0, 0].item() == pytest.approx(50.0 - 10.0 * 949.0 / 541.0)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"views": ("pa", "oblique")}, "views: unknown view name 'oblique'"),
        ({"views": ()}, "views must name at least one view"),
        ({"views": (float("nan"),)}, "views: each view must be a name or a finite angle"),
        ({"source_to_isocenter_mm": 0.0}, "source_to_isocenter_mm must be a positive distance"),
        ({"source_to_detector_mm": 500.0}, "source_to_detector_mm must be larger than source_to_isocenter_mm"),
        ({"detector_shape": (0, 4)}, "detector_shape must be positive"),
        ({"detector_shape": (4, 4, 4)}, "detector_shape must be a number or a pair"),
        ({"pixel_spacing_mm": (1.0, -1.0)}, "pixel_spacing_mm must be positive"),
        ({"source_to_isocenter_mm": "abc"}, "source_to_isocenter_mm must be a number, got 'abc'"),
        ({"detector_shape": 128.7}, "detector_shape must be an integer, got 128.7"),
        ({"detector_shape": "ab"}, "detector_shape must be a number or a pair"),
        ({"views": (True,)}, "views: each view must be a name or a finite angle"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        ProjectionGeometry(**kwargs)
