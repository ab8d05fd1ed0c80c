"""Networks: shapes per stage and preset, adaLN-Zero identity at init, gradients, lifting geometry, bad configs."""

from __future__ import annotations

import pytest
import torch
from conftest import SMALL_ENCODER, config_parser, small_cascade
from scripts.networks import (
    DiTBlock,
    HybridViT3D,
    ResolutionDepthPriors,
    XrayToCTCascade,
    backproject,
    voxel_centres,
)
from scripts.physics import ProjectionGeometry

PRESETS = {
    "tiny": [],
    "quick_2stage": ["stages/quick_2stage.yaml"],
    "progressive_3stage": ["stages/progressive_3stage.yaml"],
    "stage4": ["stages/progressive_3stage.yaml", "stages/stage4_512x512x604.yaml"],
}


def _parser(preset: str):
    """common.yaml with the preset stacked (what training builds; inference reads the same from the checkpoint)."""
    return config_parser(*PRESETS[preset])


def _small_cascade(stages=None, detector=32, **kwargs) -> XrayToCTCascade:
    return small_cascade(stages, detector, **kwargs)


@pytest.mark.parametrize("preset", list(PRESETS))
def test_network_def_builds_from_common_yaml_and_each_preset(preset):
    net = _parser(preset).get_parsed_content("network_def")
    grids = [net.grid_size(i) for i in range(net.num_stages)]
    expected = {
        "tiny": [(32,) * 3, (64,) * 3],
        "quick_2stage": [(64,) * 3, (128,) * 3],
        "progressive_3stage": [(64,) * 3, (128,) * 3, (256,) * 3],
        "stage4": [(64,) * 3, (128,) * 3, (256,) * 3, (512, 512, 604)],
    }[preset]
    assert grids == expected
    tokens = [net.stages[i]["denoiser"].token_grid for i in range(net.num_stages)]
    if preset != "tiny":  # the seed presets keep every global-attention stage at a 32³ token grid
        assert all(
            t == (32, 32, 32) for t, s in zip(tokens, net.stage_configs, strict=True) if s["attention"] == "global"
        )
    if preset == "progressive_3stage":
        widths = [(c["depth"], c["width"], c["heads"]) for c in net.stage_configs]
        assert widths == [(4, 256, 4), (6, 384, 6), (8, 512, 8)]


@pytest.mark.parametrize("preset", ["quick_2stage", "progressive_3stage"])
def test_preset_stages_run_at_a_quarter_of_their_grid(preset):
    # Same patch sizes and stage count as the preset, grids / 4 and narrow widths, so that a CPU can run them.
    parser = _parser(preset)
    stages = [dict(s, grid_size=s["grid_size"] // 4, width=32, heads=2, depth=1) for s in parser["stages"]]
    net = _small_cascade(stages)
    xray, t, previous = torch.randn(1, 2, 32, 32), torch.tensor([10]), None
    for i, s in enumerate(stages):
        x_t = torch.randn(1, 1, *(s["grid_size"],) * 3)
        out = net(x_t, t, xray, stage=i, previous=previous)
        assert out.shape == x_t.shape
        previous = x_t


def test_tiny_default_stages_run_at_full_size():
    net = _parser("tiny").get_parsed_content("network_def")
    xray = torch.randn(1, 2, 128, 128)
    encoding = net.encode(xray)
    assert encoding.tokens.shape == (1, 2 * 64, 128) and encoding.global_embedding.shape == (1, 128)
    assert encoding.feature_maps.shape == (1, 2, 32, 32, 32)
    out0 = net(torch.randn(1, 1, 32, 32, 32), torch.tensor([5]), encoding=encoding, stage=0)
    out1 = net(torch.randn(1, 1, 64, 64, 64), torch.tensor([5]), encoding=encoding, stage=1, previous=out0)
    assert out0.shape == (1, 1, 32, 32, 32) and out1.shape == (1, 1, 64, 64, 64)


def test_blocks_are_identity_and_the_denoiser_outputs_zero_at_init():
    net = _small_cascade()
    encoding = net.encode(torch.randn(2, 2, 32, 32))
    denoiser = net.stages[1]["denoiser"]
    h = torch.randn(2, 512, 32)
    c = torch.randn(2, 32)
    for block in denoiser.blocks:
        assert isinstance(block, DiTBlock)
        torch.testing.assert_close(block(h, c, encoding.tokens, encoding.token_mask, (8, 8, 8)), h, rtol=0, atol=0)
    out = net(
        torch.randn(2, 1, 32, 32, 32),
        torch.tensor([3, 700]),
        encoding=encoding,
        stage=1,
        previous=torch.randn(2, 1, 16, 16, 16),
    )
    assert torch.count_nonzero(out) == 0


def test_every_parameter_gets_a_gradient():
    torch.manual_seed(0)
    net = _small_cascade()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05)
    xray = torch.randn(2, 2, 32, 32)

    def step() -> list[str]:
        optimizer.zero_grad()
        encoding = net.encode(xray)
        out0 = net(torch.randn(2, 1, 16, 16, 16), torch.tensor([1, 500]), encoding=encoding, stage=0)
        out1 = net(
            torch.randn(2, 1, 32, 32, 32),
            torch.tensor([1, 500]),
            encoding=encoding,
            stage=1,
            previous=torch.randn(2, 1, 16, 16, 16),
        )
        ((out0 - 1.0).pow(2).mean() + (out1 - 1.0).pow(2).mean()).backward()
        optimizer.step()
        return [n for n, p in net.named_parameters() if p.grad is None or not bool(p.grad.abs().sum() > 0)]

    # Step 1: every parameter is in the graph (no unused parameters, as DDP requires), but adaLN-Zero makes the
    # output layer the only one with a non-zero gradient ...
    first = step()
    assert all(p.grad is not None for p in net.parameters())
    assert "stages.0.denoiser.blocks.0.attn.q.weight" in first and "encoder.pos_embed" in first
    assert not any("final_layer.linear" in n for n in first)
    # ... step 2 opens the gates, and from step 3 on every parameter, encoder and lifting included, learns.
    step()
    assert step() == []


def test_voxel_tokens_patch_size_one_at_16_cubed():
    net = HybridViT3D(
        in_channels=2,
        out_channels=1,
        grid_size=16,
        patch_size=1,
        width=32,
        depth=1,
        heads=2,
        context_dim=8,
        global_dim=8,
    )
    assert net.token_grid == (16, 16, 16)
    out = net(torch.randn(1, 2, 16, 16, 16), torch.tensor([1]), torch.randn(1, 5, 8), torch.randn(1, 8))
    assert out.shape == (1, 1, 16, 16, 16)


def test_windowed_attention_over_the_whole_grid_equals_global():
    torch.manual_seed(0)
    kwargs = dict(dim=16, heads=2, context_dim=8)
    glob, win = DiTBlock(**kwargs), DiTBlock(**kwargs, window=(4, 2, 3))
    win.load_state_dict(glob.state_dict())
    for block in (glob, win):  # open the gates
        torch.nn.init.normal_(block.adaLN_modulation[-1].weight, std=0.1)
    win.load_state_dict(glob.state_dict())
    h, c, ctx = torch.randn(2, 24, 16), torch.randn(2, 16), torch.randn(2, 3, 8)
    torch.testing.assert_close(win(h, c, ctx, None, (4, 2, 3)), glob(h, c, ctx, None, (4, 2, 3)))
    # Shifted windows that do not divide the grid (padding) keep the shape and stay finite.
    shifted = DiTBlock(**kwargs, window=(3, 3, 3), shift=True)
    out = shifted(torch.randn(2, 4 * 5 * 7, 16), c, ctx, None, (4, 5, 7))
    assert out.shape == (2, 140, 16) and torch.isfinite(out).all()


def test_one_view_ignores_the_missing_view():
    net = _small_cascade()
    for p in net.parameters():  # open the gates so that the X-rays matter
        if p.dim() > 1:
            torch.nn.init.normal_(p, std=0.05)
    xray = torch.randn(1, 2, 32, 32)
    other = xray.clone()
    other[:, 1] = torch.randn(32, 32)  # a different lateral view
    mask = torch.tensor([[True, False]])
    x_t, t = torch.randn(1, 1, 16, 16, 16), torch.tensor([50])
    a = net(x_t, t, xray, stage=0, view_mask=mask)
    b = net(x_t, t, other, stage=0, view_mask=mask)
    c = net(x_t, t, other, stage=0)
    assert torch.isfinite(a).all()
    torch.testing.assert_close(a, b)  # the masked lateral view has no influence
    assert not torch.allclose(a, c)  # but it does when present


def test_backprojection_of_two_spots_meets_at_the_3d_point():
    geometry = ProjectionGeometry(views=("pa", "lateral"), detector_shape=64, pixel_spacing_mm=8.8)
    grid, fov = (32, 32, 32), (320.0, 320.0, 320.0)
    point = voxel_centres(grid, fov)[22, 9, 25]  # right, posterior, superior of the isocentre
    pixels, _ = geometry.project_points(point[None])
    maps = torch.zeros(1, 2, 1, 64, 64)
    for v in range(2):
        r, c = pixels[v, 0].round().long().tolist()
        maps[0, v, 0, r - 1 : r + 2, c - 1 : c + 2] = 1.0  # a bright spot where the point projects
    lifted = backproject(maps, geometry, grid, fov)  # (1, 2, 1, X, Y, Z)
    pa, lateral = lifted[0, 0, 0], lifted[0, 1, 0]
    # Each view lights a line of voxels along its ray through the point, across the whole depth of the volume
    # (PA along y, lateral along x); the two lines cross only at the point.
    assert pa[22, 9, 25] > 0.5 and lateral[22, 9, 25] > 0.5
    assert len(torch.nonzero(pa > 0.5)[:, 1].unique()) == 32 and len(torch.nonzero(lateral > 0.5)[:, 0].unique()) == 32
    both = pa * lateral
    assert divmod(int(both.argmax()), 32 * 32)[0] == 22
    assert torch.nonzero(both == both.max()).float().mean(0).tolist() == pytest.approx([22.0, 9.0, 25.0], abs=0.6)


@pytest.mark.parametrize("depth", [64, 128, 256, 512, 604])
def test_depth_priors_for_any_depth(depth):
    priors = ResolutionDepthPriors()(depth)
    assert priors.shape == (3, depth)
    torch.testing.assert_close(priors.sum(0), torch.ones(depth))
    assert priors[0, 0] > 0.99 and priors[1, depth // 2] > 0.99 and priors[2, -1] > 0.99


@pytest.mark.parametrize(
    "change, message",
    [
        ({"grid_size": 30}, r"stages\[0\]: grid_size \(30, 30, 30\) must be divisible by patch_size \(4, 4, 4\)"),
        ({"heads": 3}, r"stages\[0\]: heads \(3\) must divide width \(32\)"),
        ({"attention": "linear"}, r"stages\[0\]: attention must be one of \['global', 'window'\], got 'linear'"),
        ({"widht": 32}, r"stages\[0\]: unknown keys \['widht'\]"),
        ({"fov_mm": "320"}, r"stages\[0\].fov_mm must be a positive number or three of them, got '320'"),
        ({"fov_mm": -5.0}, r"stages\[0\].fov_mm must be a positive number"),
        ({"grid_size": 0}, r"stages\[0\].grid_size must be a positive integer"),
        ({"grid_size": 16.0}, r"stages\[0\].grid_size must be a positive integer"),
        ({"grid_size": [32, 32]}, r"stages\[0\].grid_size must be a positive integer or three of them"),
        ({"lift_channels": 0}, r"stages\[0\].lift_channels must be a positive integer"),
        ({"depth": 0}, r"stages\[0\].depth must be a positive integer"),
    ],
)
def test_bad_stage_configuration_names_the_field(change, message):
    stage = {"grid_size": 32, "patch_size": 4, "width": 32, "depth": 1, "heads": 2}
    with pytest.raises(ValueError, match=message):
        _small_cascade([dict(stage, **change)])


def test_missing_stage_key_and_bad_encoder():
    with pytest.raises(ValueError, match=r"stages\[0\]: missing required keys \['heads'\]"):
        _small_cascade([{"grid_size": 32, "patch_size": 4, "width": 32, "depth": 1}])
    geometry = ProjectionGeometry(views=("pa",), detector_shape=30, pixel_spacing_mm=10.0)
    with pytest.raises(ValueError, match=r"image_size \(30, 30\) must be divisible"):
        XrayToCTCascade(
            geometry,
            320.0,
            [{"grid_size": 16, "patch_size": 2, "width": 32, "depth": 1, "heads": 2}],
            encoder=SMALL_ENCODER,
        )


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    plain = _small_cascade()
    for p in plain.parameters():
        if p.dim() > 1:
            torch.nn.init.normal_(p, std=0.05)
    ckpt = _small_cascade(gradient_checkpointing=True)
    ckpt.load_state_dict(plain.state_dict())
    x_t, t, xray = torch.randn(1, 1, 16, 16, 16), torch.tensor([20]), torch.randn(1, 2, 32, 32)
    grads = []
    for net in (plain, ckpt):
        net.train()
        net(x_t, t, xray, stage=0).square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in net.parameters() if p.grad is not None]))
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-5, atol=1e-6)


def _reference_window_attention(block: DiTBlock, x: torch.Tensor, grid, window, shift) -> torch.Tensor:
    """Masked global attention: tokens attend to tokens in the same (shifted) window and on the same side of every
    wrap-around, written from token coordinates instead of rolls, pads and partitions."""
    coords = torch.stack(torch.meshgrid(*[torch.arange(g) for g in grid], indexing="ij"), -1).reshape(-1, 3)
    offsets = torch.tensor([w // 2 if shift else 0 for w in window])
    g, w = torch.tensor(grid), torch.tensor(window)
    rolled = (coords - offsets) % g  # position after rolling by -offset
    window_id = rolled // w
    wrapped = coords < offsets  # these tokens were rolled around to the far end
    key = torch.cat([window_id, wrapped.long()], dim=1)
    mask = (key[:, None, :] == key[None, :, :]).all(-1)  # (T, T)
    return block.attn(x, attn_mask=mask[None, None].expand(x.shape[0], 1, -1, -1))


@pytest.mark.parametrize(
    "grid, window, shift",
    [
        ((4, 6, 4), (2, 3, 2), False),
        ((4, 6, 4), (2, 3, 2), True),
        ((5, 7, 3), (2, 3, 2), False),
        ((5, 7, 3), (4, 3, 2), True),
    ],
)
def test_windowed_attention_matches_masked_global_attention(grid, window, shift):
    torch.manual_seed(1)
    block = DiTBlock(dim=16, heads=2, context_dim=8, window=window, shift=shift)
    x = torch.randn(2, grid[0] * grid[1] * grid[2], 16)
    torch.testing.assert_close(
        block._self_attention(x, grid), _reference_window_attention(block, x, grid, window, shift), rtol=1e-5, atol=1e-6
    )


def test_shifted_windows_never_join_opposite_faces():
    block = DiTBlock(dim=8, heads=1, context_dim=4, window=(4, 4, 4), shift=True)
    x = torch.randn(1, 512, 8, requires_grad=True)
    out = block._self_attention(x, (8, 8, 8))
    out[0, -1].sum().backward()  # token (7, 7, 7)
    assert x.grad[0, 0].abs().sum() == 0  # token (0, 0, 0), cyclically adjacent after the roll, is not seen
    assert x.grad[0, -2].abs().sum() > 0  # its real neighbour is


def test_unpatchify_inverts_the_patch_embedding():
    net = HybridViT3D(
        in_channels=1,
        out_channels=1,
        grid_size=(4, 6, 8),
        patch_size=(2, 3, 4),
        width=24,
        depth=1,
        heads=1,
        context_dim=4,
        global_dim=4,
    )
    with torch.no_grad():  # one-hot patch embedding: token channel k = voxel k of the patch, in (px, py, pz) order
        net.patch_embed.weight.copy_(torch.eye(24).view(24, 1, 2, 3, 4))
        net.patch_embed.bias.zero_()
    x = torch.randn(2, 1, 4, 6, 8)
    tokens = net.patch_embed(x).flatten(2).transpose(1, 2)  # (B, T, 24)
    torch.testing.assert_close(net.unpatchify(tokens, net.token_grid), x)


def test_previous_stage_is_placed_by_physical_position():
    from scripts.networks.cascade import resample_previous

    prev = torch.zeros(1, 1, 16, 16, 16)
    prev[0, 0, :, :, 12] = 1.0  # a slab at z = (12 - 7.5) * 20 mm = 90 mm in a 320 mm field of view
    same = resample_previous(prev, (320.0,) * 3, (320.0,) * 3, (32, 32, 32))
    torch.testing.assert_close(same, torch.nn.functional.interpolate(prev, size=(32,) * 3, mode="trilinear"))
    # On a 320 x 320 x 400 mm field of view of 32 x 32 x 40 voxels (10 mm), z = 90 mm is voxel 19.5 + 9 = 28.5.
    taller = resample_previous(prev, (320.0,) * 3, (320.0, 320.0, 400.0), (32, 32, 40))
    profile = taller[0, 0, 16, 16]
    assert int(profile.argmax()) in (28, 29) and profile[27:31].sum() == pytest.approx(prev[0, 0, 8, 8].sum() * 2)


def test_feature_maps_are_sampled_at_their_pixel_centres():
    from scripts.networks.lifting import _sampling

    geometry = ProjectionGeometry(views=("pa",), detector_shape=32, pixel_spacing_mm=10.0)
    grid, t = _sampling(geometry, (3, 3, 3), (100.0,) * 3, feature_stride=4)
    # The isocentre projects onto detector coordinate 15.5, i.e. map coordinate 15.5 / 4 = 3.875 of an 8-pixel map.
    centre = grid[0, 13]  # voxel (1, 1, 1)
    torch.testing.assert_close(centre, torch.full((2,), (3.875 + 0.5) / 8 * 2 - 1))
    # Depth fractions run from the source-side face (0) to the detector-side face (1) of the field of view.
    assert t.min() > 0.0 and t.max() < 1.0 and t[0, 13].item() == pytest.approx(0.5)


def test_bad_forward_inputs_are_named():
    net = _small_cascade()
    xray = torch.randn(1, 2, 32, 32)
    with pytest.raises(ValueError, match=r"x_t must be \(B, 1, 16, 16, 16\) for stage 0, got \(1, 1, 8, 8, 8\)"):
        net(torch.randn(1, 1, 8, 8, 8), torch.tensor([1]), xray)
    with pytest.raises(ValueError, match=r"t must be one timestep per sample, shape \(1,\)"):
        net(torch.randn(1, 1, 16, 16, 16), torch.tensor(1), xray)
    with pytest.raises(ValueError, match="previous: stage 1 needs the previous stage's volume"):
        net(torch.randn(1, 1, 32, 32, 32), torch.tensor([1]), xray, stage=1)
