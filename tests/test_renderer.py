"""DRRRenderer against analytic line integrals, the display convention, autograd and bad input."""

from __future__ import annotations

import pytest
import torch
from conftest import BODY, CHEST
from scripts.physics import DRRRenderer, ProjectionGeometry, ellipsoid_line_integrals, voxelize_ellipsoids

SHAPE, SPACING = (128, 128, 128), (2.5, 2.5, 2.5)  # the 320 mm field of view of the stage-2 grid


@pytest.fixture(scope="module")
def chest_mu() -> torch.Tensor:
    return voxelize_ellipsoids(CHEST, SHAPE, SPACING)[None, None]  # (1, 1, X, Y, Z)


@pytest.fixture(scope="module")
def body_mu() -> torch.Tensor:
    return voxelize_ellipsoids(BODY, SHAPE, SPACING)[None, None]


def _relative_errors(phantom, mu, geometry, method="joseph"):
    """Relative error of the DRR on rays with more than 60 mm of body (the first ellipsoid)."""
    drr = DRRRenderer(geometry, method=method)(mu, SPACING)[0].double()  # (V, H, W)
    rays = geometry.rays()
    truth, chords = ellipsoid_line_integrals(phantom, rays.origins, rays.directions, rays.lengths)
    body = chords[0] > 60.0
    assert body.sum() > 1000  # the criterion is evaluated on many rays of every view
    return ((drr - truth).abs() / truth.abs())[body]


@pytest.mark.parametrize("parallel", [False, True])
def test_chest_phantom_matches_closed_form_chords(chest_mu, parallel):
    pitch = 3.0 if parallel else 5.0  # parallel pitch is at the isocentre, cone pitch on the detector
    g = ProjectionGeometry(
        views=("pa", "lateral", 30.0), detector_shape=(64, 64), pixel_spacing_mm=pitch, parallel=parallel
    )
    rel = _relative_errors(CHEST, chest_mu, g)
    assert rel.mean().item() <= 0.01
    assert torch.quantile(rel, 0.99).item() <= 0.05


@pytest.mark.parametrize("parallel", [False, True])
def test_smooth_body_reaches_the_accuracy_goal(body_mu, parallel):
    g = ProjectionGeometry(
        views=("pa", "lateral"), detector_shape=(64, 64), pixel_spacing_mm=3.0 if parallel else 5.0, parallel=parallel
    )
    rel = _relative_errors(BODY, body_mu, g)
    assert rel.mean().item() <= 0.003
    assert torch.quantile(rel, 0.99).item() <= 0.02


def _box_chords(geometry: ProjectionGeometry, half_extent: torch.Tensor) -> torch.Tensor:
    """Chord lengths (mm) of every ray through the box ``|x_i| <= half_extent_i`` (slab method, written here)."""
    rays = geometry.rays()
    o, d, t_max = rays.origins, rays.directions, rays.lengths
    with torch.no_grad():
        t1 = (-half_extent - o) / d
        t2 = (half_extent - o) / d
        near = torch.minimum(t1, t2).amax(-1).clamp(min=0)
        far = torch.minimum(torch.maximum(t1, t2).amin(-1), t_max)
    return (far - near).clamp(min=0)


def test_siddon_is_exact_for_piecewise_constant_voxels():
    # A uniform box: Siddon sums exact path lengths, so the DRR is mu x chord to rounding.
    shape, spacing = (10, 12, 14), (7.0, 5.0, 4.0)
    g = ProjectionGeometry(views=("pa", "lateral", 23.0, 131.0), detector_shape=(17, 19), pixel_spacing_mm=(6.0, 7.0))
    mu = torch.full((1, 1, *shape), 0.02, dtype=torch.float64)
    drr = DRRRenderer(g, method="siddon")(mu, spacing)[0]
    half = 0.5 * torch.tensor(shape, dtype=torch.float64) * torch.tensor(spacing, dtype=torch.float64)
    expected = 0.02 * _box_chords(g, half)
    assert (expected > 0).sum() > 100 and (expected == 0).sum() > 10  # rays that hit and rays that miss
    torch.testing.assert_close(drr, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    "view, expected_side", [("pa", "left"), ("lateral", "left"), (180.0, "right"), (270.0, "right")]
)
def test_marker_lands_where_the_display_convention_says(view, expected_side):
    # A dense marker on the patient's right, anterior and superior: PA shows it on the image's left (patient's
    # right) and top; the lateral view shows it on the left (anterior) and top. Seen from a detector behind the
    # patient (180°, AP beam) the patient's right is on the right; from the right side (270°) anterior is right.
    shape, spacing = (32, 32, 32), (5.0, 5.0, 5.0)
    mu = torch.zeros(1, 1, *shape)
    i, j, k = 26, 24, 28  # a 2-voxel cube centred at x = +50 (right), y = +40 (anterior), z = +60 (superior) mm
    mu[0, 0, i - 1 : i + 1, j - 1 : j + 1, k - 1 : k + 1] = 1.0
    g = ProjectionGeometry(views=(view,), detector_shape=(64, 64), pixel_spacing_mm=4.0)
    image = DRRRenderer(g)(mu, spacing)[0, 0]
    row, col = divmod(int(image.argmax()), 64)
    assert row < 32 and (col < 32 if expected_side == "left" else col > 32)
    centre = torch.tensor([[(i - 16.0) * 5.0, (j - 16.0) * 5.0, (k - 16.0) * 5.0]])  # the marker's centre in mm
    pix, _ = g.project_points(centre)
    assert abs(row - pix[0, 0, 0].item()) <= 1.0 and abs(col - pix[0, 0, 1].item()) <= 1.0


def test_heart_on_the_patients_left_appears_on_the_pa_image_right(chest_mu):
    g = ProjectionGeometry(views=("pa",), detector_shape=(64, 64), pixel_spacing_mm=5.0)
    image = DRRRenderer(g)(chest_mu, SPACING)[0, 0]
    left_half, right_half = image[:, :32].sum(), image[:, 32:].sum()
    assert right_half > left_half * 1.02


@pytest.mark.parametrize("method", ["joseph", "siddon"])
@pytest.mark.parametrize("parallel", [False, True])
def test_gradcheck_float64(method, parallel):
    g = ProjectionGeometry(views=("pa", "lateral"), detector_shape=(3, 4), pixel_spacing_mm=8.0, parallel=parallel)
    renderer = DRRRenderer(g, method=method, ray_chunk_size=5)
    mu = torch.rand(2, 1, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda m: renderer(m, (6.0, 5.0, 4.0)), (mu,))


def test_chunked_streaming_and_batched_calls_agree():
    g = ProjectionGeometry(views=("pa", "lateral"), detector_shape=(9, 11), pixel_spacing_mm=12.0)
    mu = torch.rand(3, 1, 12, 10, 8)
    spacing = (10.0, 12.0, 15.0)
    reference = DRRRenderer(g)(mu, spacing)
    assert reference.shape == (3, 2, 9, 11)
    # Chunks and batches change the order of each ray's float32 sum (up to 4 interpolation weights per sample, one
    # sample per slice along the longest axis): the bound is that many terms times eps32, relative.
    eps = torch.finfo(torch.float32).eps
    rtol = 4 * max(mu.shape[2:]) * eps
    for renderer in (DRRRenderer(g, ray_chunk_size=7), DRRRenderer(g, ray_chunk_size=13, cache_matrices=False)):
        torch.testing.assert_close(renderer(mu, spacing), reference, rtol=rtol, atol=0)
        assert len(renderer._cache) == (1 if renderer.cache_matrices else 0)
    # Each volume of a batch renders as it does alone.
    single = DRRRenderer(g)(mu[1:2], spacing)
    torch.testing.assert_close(single[0], reference[1], rtol=rtol, atol=0)
    # Gradients through cached and streaming blocks are the same back-projection.
    grads = []
    for renderer in (DRRRenderer(g), DRRRenderer(g, ray_chunk_size=13, cache_matrices=False)):
        x = mu.clone().requires_grad_(True)
        (renderer(x, spacing) * torch.linspace(0, 1, 9 * 11).reshape(9, 11)).sum().backward()
        grads.append(x.grad)
    # A voxel's gradient sums the weights of every ray through it (at most 4 per ray): the same bound per ray count.
    torch.testing.assert_close(grads[0], grads[1], rtol=4 * g.num_views * 9 * 11 * eps, atol=0)


def test_bf16_autocast_renders_in_float32():
    # Were the projection run in bf16 (8-bit mantissa), sums of hundreds of voxels would be off by ~1e-2
    # relative; the tolerance below only holds for a float32 evaluation.
    g = ProjectionGeometry(views=("pa", "lateral"), detector_shape=(16, 16), pixel_spacing_mm=12.0)
    mu = (torch.rand(2, 1, 16, 16, 16) * 0.03).to(torch.bfloat16)
    renderer = DRRRenderer(g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = renderer(mu, (10.0, 10.0, 10.0))
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, renderer(mu.float(), (10.0, 10.0, 10.0)), rtol=1e-6, atol=1e-6)


def test_module_casts_keep_the_geometry_in_float64():
    g = ProjectionGeometry(views=("pa",), detector_shape=(4, 4), pixel_spacing_mm=3.0)
    renderer = DRRRenderer(g)
    mu = torch.rand(1, 1, 6, 6, 6)
    before = renderer(mu, (5.0, 5.0, 5.0))
    renderer.to(torch.bfloat16)
    # The geometry stays float64 and the traced matrices stay valid: nothing moved.
    assert renderer.ray_origins.dtype == torch.float64 and len(renderer._cache) == 1
    torch.testing.assert_close(renderer(mu, (5.0, 5.0, 5.0)), before)


def test_deepcopy_spacing_keys_and_cache_bound():
    import copy

    g = ProjectionGeometry(views=("pa",), detector_shape=(4, 4), pixel_spacing_mm=3.0)
    renderer = DRRRenderer(g, max_cached_grids=2)
    mu = torch.rand(1, 1, 6, 6, 6)
    out = renderer(mu, (0.7, 0.7, 0.7))
    # The same spacing as a float32 tensor reuses the traced matrix.
    torch.testing.assert_close(renderer(mu, torch.tensor([0.7, 0.7, 0.7])), out)
    assert len(renderer._cache) == 1
    # Copies (an EMA model, say) start without the sparse cache and render the same images.
    clone = copy.deepcopy(renderer)
    assert len(clone._cache) == 0
    torch.testing.assert_close(clone(mu, (0.7, 0.7, 0.7)), out)
    for size in (5, 7, 8):
        renderer(torch.rand(1, 1, size, size, size), (1.0, 1.0, 1.0))
    assert len(renderer._cache) == 2  # least recently used grids are dropped


def test_half_precision_meta_tensor_and_empty_batch():
    from monai.data import MetaTensor

    g = ProjectionGeometry(views=("pa", "lateral"), detector_shape=(4, 5), pixel_spacing_mm=3.0)
    renderer = DRRRenderer(g)
    # float16 sums of a large volume overflow; the NaN/Inf check must not mistake that for bad input.
    big = torch.full((1, 1, 64, 64, 64), 0.04, dtype=torch.float16)
    out = renderer(big, (5.0, 5.0, 5.0))
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert out[0, 0, 1, 2].item() == pytest.approx(0.04 * 320.0, rel=2e-3)  # through 64 x 5 mm
    meta = MetaTensor(torch.rand(1, 1, 6, 6, 6))
    assert type(renderer(meta, (5.0, 5.0, 5.0))) is torch.Tensor
    assert renderer(torch.zeros(0, 1, 6, 6, 6), (5.0, 5.0, 5.0)).shape == (0, 2, 4, 5)


def test_stage4_grid_renders_in_streaming_chunks():
    # 512 x 512 x 604 voxels (the optional stage 4), traced block by block without caching the system matrix.
    shape, spacing = (512, 512, 604), (0.625, 0.625, 0.5)
    g = ProjectionGeometry(views=("pa", "lateral"), detector_shape=(5, 5), pixel_spacing_mm=1.0)
    mu = torch.full((1, 1, *shape), 0.02)
    out = DRRRenderer(g, ray_chunk_size=16, cache_matrices=False)(mu, spacing)[0].double()
    half = 0.5 * torch.tensor(shape, dtype=torch.float64) * torch.tensor(spacing, dtype=torch.float64)
    # A ray sums up to max(shape) float32 samples; the order of those additions is the CPU's (vectorised kernels
    # differ between Intel and AMD), so the bound is the accumulation error n * eps32, not what one CPU printed.
    rel = max(shape) * torch.finfo(torch.float32).eps
    torch.testing.assert_close(out, 0.02 * _box_chords(g, half), rtol=rel, atol=0)
    assert out[0, 2, 2].item() == pytest.approx(0.02 * 320.0, rel=rel)  # central PA ray crosses 320 mm


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("method", ["joseph", "siddon"])
def test_cpu_and_cuda_agree(chest_mu, method):
    g = ProjectionGeometry(views=("pa", "lateral"), detector_shape=(64, 64), pixel_spacing_mm=5.0)
    renderer = DRRRenderer(g, method=method)
    cpu = renderer(chest_mu, SPACING)
    cuda = renderer.cuda()(chest_mu.cuda(), SPACING).cpu()
    # Every term of a ray's sum is non-negative (weights and mu), so either summation order is within K * eps32 of
    # the exact sum, K the terms per ray: at most 4 interpolation weights per step (Joseph) or one voxel per crossed
    # plane (Siddon), and fewer steps or planes than sum(shape). Two such results differ by at most twice that.
    terms = 4 * sum(chest_mu.shape[2:])
    torch.testing.assert_close(cuda, cpu, rtol=2 * terms * torch.finfo(torch.float32).eps, atol=0)


@pytest.mark.parametrize(
    "mu, spacing, message",
    [
        (
            torch.zeros(1, 4, 4, 4),
            (1.0, 1.0, 1.0),
            r"mu must be a \(B, 1, X, Y, Z\) attenuation volume in 1/mm, got \(1, 4, 4, 4\)",
        ),
        (torch.zeros(1, 2, 4, 4, 4), (1.0, 1.0, 1.0), r"mu must be a \(B, 1, X, Y, Z\)"),
        (torch.zeros(1, 1, 4, 4, 4, dtype=torch.int16), (1.0, 1.0, 1.0), "mu must be a floating-point tensor"),
        (torch.full((1, 1, 4, 4, 4), float("nan")), (1.0, 1.0, 1.0), "mu contains NaN or Inf"),
        (torch.zeros(1, 1, 4, 4, 4), (1.0, 0.0, 1.0), "spacing_mm must be three positive, finite voxel sizes"),
        (torch.zeros(1, 1, 4, 4, 4), (1.0, 1.0), "spacing_mm must be three positive, finite voxel sizes"),
        (torch.zeros(1, 1, 4, 4, 4), "abc", "spacing_mm must be three"),
    ],
)
def test_bad_input_names_the_argument(mu, spacing, message):
    renderer = DRRRenderer(ProjectionGeometry(views=("pa",), detector_shape=(4, 4)))
    with pytest.raises(ValueError, match=message):
        renderer(mu, spacing)


def test_bad_renderer_options_name_the_argument():
    g = ProjectionGeometry(views=("pa",), detector_shape=(4, 4))
    with pytest.raises(ValueError, match=r"method must be one of \['joseph', 'siddon'\], got 'nearest'"):
        DRRRenderer(g, method="nearest")
    with pytest.raises(ValueError, match="ray_chunk_size must be a positive number of rays"):
        DRRRenderer(g, ray_chunk_size=0)
    with pytest.raises(ValueError, match="geometry must be a ProjectionGeometry"):
        DRRRenderer({"views": ["pa"]})
