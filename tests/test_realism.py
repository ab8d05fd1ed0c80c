"""Radiograph-like training views: spectrum and beam hardening, scatter, detector, processing, shutters, switches."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from conftest import config_parser, small_geometry
from monai.data import MetaTensor
from scripts.data import DEFAULT_LINE_INTEGRAL_RANGES, RadiographRealism, RenderXrayd, synthetic_chest_ct
from scripts.data.realism import apply_shutters, low_pass, scatter_field, shutter_mask, tone_curve, unsharp_mask
from scripts.physics import (
    CORTICAL_BONE,
    WATER,
    BeamHardening,
    DRRRenderer,
    RadiographComposer,
    energy_bins,
    kramers_spectrum,
    line_integral_to_network,
)
from scripts.physics.spectrum import linear_attenuation

#: The attenuation tables (and so every test that builds a spectrum) need xraydb; the rest do not.
needs_xraydb = pytest.mark.skipif(importlib.util.find_spec("xraydb") is None, reason="xraydb is not installed")

MU_WATER, P_MAX = 0.0206, 10.0
#: Every part off: the chain reduces to the normalisation.
ALL_OFF = dict(
    spectrum_prob=0.0, scatter_prob=0.0, detector_prob=0.0, unsharp_prob=0.0, tone_prob=0.0, shutter_prob=0.0
)


@pytest.fixture(scope="module")
def composer() -> RadiographComposer:
    return RadiographComposer(DRRRenderer(small_geometry(32)), MU_WATER, P_MAX)


@pytest.fixture(scope="module")
def ct() -> MetaTensor:
    """A 32³ synthetic chest at 10 mm (320 mm field of view), HU."""
    hu, _ = synthetic_chest_ct(32, 10.0, seed=0)
    return MetaTensor(torch.as_tensor(hu).float()[None], affine=torch.diag(torch.tensor([10.0, 10.0, 10.0, 1.0])))


def _render(composer, ct, realism=None, seed=0) -> dict:
    transform = RenderXrayd("image", composer, realism=realism)
    transform.set_random_state(seed)
    return transform({"image": ct})


@needs_xraydb
def test_attenuation_tables_are_xraydbs():
    # xraydb at 60 keV: water 0.2059 cm²/g (NIST XCOM 0.2059) -> the bundle's mu_water 0.0206 /mm.
    assert linear_attenuation(WATER, [60.0])[0] == pytest.approx(0.020587, rel=1e-3)
    # ICRU-44 cortical bone: 2.94x water at 60 keV, i.e. 1936 HU; 6.8x at 30 keV (photoelectric effect of Ca, P).
    beam = BeamHardening([30.0, 60.0])
    assert beam.bone_hu == pytest.approx(1936.1, abs=1.0)
    assert beam.mu_bone[0] / beam.mu_water[0] == pytest.approx(6.80, abs=0.02)


@needs_xraydb
@pytest.mark.parametrize("kvp, filtration", [(100.0, 2.5), (120.0, 2.5), (125.0, 4.0)])
def test_spectrum_weights_sum_to_one_and_stop_at_kvp(kvp, filtration):
    energies = energy_bins(150.0, 5.0)
    w = kramers_spectrum(energies, kvp, filtration)
    assert w.sum() == pytest.approx(1.0, abs=1e-12) and (w >= 0).all()
    assert (w[energies >= kvp] == 0).all() and (w[energies < kvp] > 0).all()
    # More filtration hardens the beam: the mean energy rises.
    harder = kramers_spectrum(energies, kvp, filtration + 2.0)
    assert (harder * energies).sum() > (w * energies).sum()


@needs_xraydb
def test_monochromatic_limit_is_the_plain_drr_bit_for_bit(composer, ct):
    beam = BeamHardening([60.0], ct_energy_kev=60.0)  # one bin at the CT's energy
    p = composer.line_integrals(ct[None], (10.0,) * 3)[0]  # (V, H, W)
    q = composer.renderer(MU_WATER * beam.bone_fraction(ct.as_tensor())[None], (10.0,) * 3)[0]
    assert float(q.max()) > 0  # the phantom has bone: b = 0 must cancel it exactly
    assert torch.equal(beam.line_integral(p, q, np.array([1.0])), p)


def _path(beam, water_mm, bone_mm, weights):
    p = torch.tensor([[[MU_WATER * (water_mm + beam.bone_ratio * bone_mm)]]], dtype=torch.float64)
    q = torch.tensor([[[MU_WATER * bone_mm]]], dtype=torch.float64)
    return float(p), float(beam.line_integral(p, q, weights))


@needs_xraydb
def test_beam_hardening_lowers_thick_bony_paths_and_spares_thin_water():
    energies = energy_bins(150.0, 5.0)
    beam, w = BeamHardening(energies), kramers_spectrum(energies, 120.0, 2.5)
    mono, poly = _path(beam, 1.0, 0.0, w)  # 1 mm of water
    assert poly == pytest.approx(mono, rel=5e-3)
    mono, poly = _path(beam, 180.0, 20.0, w)  # PA through the spine: 18 cm water + 2 cm cortical bone
    assert mono == pytest.approx(4.918, abs=1e-3) and 0.80 < poly / mono < 0.86  # xraydb: 4.09 (-17 %)
    mono, poly = _path(beam, 200.0, 0.0, w)  # 20 cm water: hardening without bone, milder
    assert 0.84 < poly / mono < 0.89


@needs_xraydb
def test_beam_hardening_is_batched_over_the_renderers_output():
    energies = energy_bins(125.0, 5.0)
    beam = BeamHardening(energies)
    p, q = torch.rand(3, 2, 8, 8, dtype=torch.float64) * 8, torch.rand(3, 2, 8, 8, dtype=torch.float64)  # (B, V, H, W)
    spectra = np.stack([kramers_spectrum(energies, kvp, 2.5) for kvp in (100, 105, 110, 115, 120, 125)])
    batched = beam.line_integral(p, q, spectra.reshape(3, 2, -1))  # one spectrum per image
    assert batched.shape == p.shape
    assert torch.allclose(batched[2, 1], beam.line_integral(p[2, 1][None], q[2, 1][None], spectra[5])[0])


def test_scatter_is_a_low_frequency_term_with_the_requested_ratio(composer, ct):
    p = composer.line_integrals(ct[None], (10.0,) * 3)[0, 0].double()  # PA (H, W)
    primary, body = torch.exp(-p), p > 0.5
    scatter = scatter_field(primary, p, body, 0.6, 4.0)
    assert float(scatter[body].mean() / primary[body].mean()) == pytest.approx(0.6, rel=1e-9)

    def high_frequency(x):  # RMS of the high-pass (x − G_1px ∗ x) relative to the RMS of x
        return float((x - low_pass(x, 1.0)).pow(2).mean().sqrt() / x.pow(2).mean().sqrt())

    assert high_frequency(scatter) < 0.02 and high_frequency(primary) > 0.15  # 0.014 vs 0.158 (the primary's edges)
    assert torch.equal(scatter_field(primary, p, body, 0.0, 4.0), torch.zeros_like(primary))


def test_tone_curve_is_monotone_and_keeps_the_range():
    x = torch.linspace(-0.3, 7.0, 2001)[None].double()  # (1, N), sorted
    generator = np.random.default_rng(0)
    for _ in range(20):
        params = (
            generator.uniform(0.6, 1.6),
            generator.uniform(0, 1),
            generator.uniform(4, 12),
            generator.uniform(0.35, 0.65),
        )
        y = tone_curve(x, *params)
        assert bool((y[0, 1:] >= y[0, :-1]).all())
        assert float(y.min()) == pytest.approx(-0.3) and float(y.max()) == pytest.approx(7.0)


def test_unsharp_masking_leaves_flat_images_and_boosts_edges():
    flat = torch.full((16, 16), 3.0)
    assert torch.allclose(unsharp_mask(flat, 2.0, 1.0), flat)
    step = torch.zeros(16, 16)
    step[:, 8:] = 1.0
    sharp = unsharp_mask(step, 2.0, 1.0)
    assert float(sharp.max()) > 1.05 and float(sharp.min()) < -0.05  # over- and undershoot at the edge


def test_shutters_mask_the_right_pixels():
    mask = shutter_mask((10, 12), (1, 2, 3, 0))  # top, bottom, left, right
    expected = torch.zeros(10, 12, dtype=torch.bool)
    expected[0], expected[8:], expected[:, :3] = True, True, True
    assert torch.equal(mask, expected)
    image = torch.rand(10, 12) + 1.0
    for saturated, value in ((True, image.max()), (False, image.min())):
        out = apply_shutters(image, (1, 2, 3, 0), saturated)
        assert bool((out[mask] == value).all()) and torch.equal(out[~mask], image[~mask])
    assert not bool(shutter_mask((10, 12), (0, 0, 0, 0)).any())


def test_off_switch_gives_the_current_views_bit_for_bit(composer, ct, tmp_path):
    reference = line_integral_to_network(composer.line_integrals(ct[None], (10.0,) * 3)[0], P_MAX).float()
    off = _render(composer, ct)
    assert torch.equal(off["xray"], reference) and "xray_clean" not in off
    parser = config_parser("train.yaml", dataset_dir=str(tmp_path))
    assert parser.get_parsed_content("render_train").realism is None  # YAML default: off
    parser["xray_augmentation#realism#enabled"] = "false"  # as the command line gives it
    assert parser.get_parsed_content("render_train").realism is None


@needs_xraydb
def test_on_keeps_the_clean_views_for_the_physics_loss(composer, ct, tmp_path):
    reference = line_integral_to_network(composer.line_integrals(ct[None], (10.0,) * 3)[0], P_MAX).float()
    parser = config_parser("train.yaml", dataset_dir=str(tmp_path))
    parser["xray_augmentation#realism#enabled"] = True
    assert isinstance(parser.get_parsed_content("render_train").realism, RadiographRealism)
    # On: the clean views stay, bit for bit, under xray_clean (the physics loss's reference).
    on = _render(composer, ct, RadiographRealism(composer, prob=1.0))
    assert torch.equal(on["xray_clean"], reference) and not torch.equal(on["xray"], reference)
    # Every part off with the fixed scale: the chain is the identity.
    identity = _render(composer, ct, RadiographRealism(composer, prob=1.0, normalization="fixed", **ALL_OFF))
    assert torch.equal(identity["xray"], reference)


@needs_xraydb
def test_anchored_views_take_the_readers_percentiles(composer, ct):
    views = _render(composer, ct, RadiographRealism(composer, prob=1.0, shutter_prob=0.0))["xray"]
    for i, name in enumerate(("pa", "lateral")):
        p = (views[i].numpy() + 1.0) * P_MAX / 2
        assert np.percentile(p, [1, 99]) == pytest.approx(DEFAULT_LINE_INTEGRAL_RANGES[name], abs=1e-3)


@needs_xraydb
def test_seeded_reproducibility(composer, ct):
    realism = RadiographRealism(composer, prob=1.0, shutter_prob=1.0)
    a, b = _render(composer, ct, realism, seed=3)["xray"], _render(composer, ct, realism, seed=3)["xray"]
    c = _render(composer, ct, realism, seed=4)["xray"]
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.dtype == torch.float32 and a.shape == (2, 32, 32) and bool(torch.isfinite(a).all())


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"normalization": "percentile"}, "normalization"),
        ({"prob": 1.5}, "prob"),
        ({"kvp": (125.0, 100.0)}, "kvp"),
        ({"scatter_to_primary": -0.1}, "scatter_to_primary"),
        ({"shutter_max_fraction": 0.6}, "shutter_max_fraction"),
        ({"line_integral_ranges": {"pa": (0.0, 5.0)}}, "line_integral_ranges"),
    ],
)
def test_bad_settings_name_the_argument(composer, kwargs, message):
    with pytest.raises(ValueError, match=message):
        RadiographRealism(composer, **kwargs)


@needs_xraydb
def test_bone_basis_reproduces_the_monochromatic_attenuation():
    beam = BeamHardening([60.0])
    hu = torch.tensor([-1000.0, -500.0, 0.0, 400.0, 1936.1])
    f_b = beam.bone_fraction(hu)
    rho_w = torch.where(hu > 0, 1.0 - f_b, torch.clamp(1.0 + hu / 1000.0, min=0.0))
    assert torch.allclose(rho_w + beam.bone_ratio * f_b, 1.0 + hu / 1000.0, atol=1e-6)
    assert float(f_b[-1]) == pytest.approx(1.0, abs=1e-4)
    assert CORTICAL_BONE.density_g_cm3 == 1.92 and sum(CORTICAL_BONE.mass_fractions.values()) == pytest.approx(1.0)
