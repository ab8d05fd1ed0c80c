"""What a radiologist checks: HU error per tissue of the target, and whether the sampling std predicts the error."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image
from scripts.engines.evaluation import TISSUES, tissue_metrics, uncertainty_calibration
from scripts.engines.report import case_slices, save_case_figure

WINDOW = (-1000.0, 2000.0)


def _target() -> torch.Tensor:
    """A (8, 8, 8) target: a slab of each tissue (2 x-planes each) — lung −850, fat −100, soft 40, bone 700 HU."""
    t = torch.empty(8, 8, 8, dtype=torch.float64)
    for i, value in enumerate((-850.0, -100.0, 40.0, 700.0)):
        t[2 * i : 2 * i + 2] = value
    return t


def test_tissue_errors_by_hand():
    target = _target()
    pred = target.clone()
    pred[0:2] += 30.0  # lung +30 everywhere
    pred[2:4, :4] -= 20.0  # fat: half of it −20 → MAE 10, bias −10
    pred[6:8, 0, 0] = 2500.0  # bone: two voxels above the window's top: clipped to 2000 → +1300 each
    body = torch.ones_like(target, dtype=torch.bool)
    out = tissue_metrics(pred, target, WINDOW, body)
    assert list(out) == list(TISSUES)
    assert out["lung"] == {"mae_hu": 30.0, "bias_hu": 30.0, "voxels": 128}
    assert out["fat"] == {"mae_hu": 10.0, "bias_hu": -10.0, "voxels": 128}
    assert out["soft_tissue"] == {"mae_hu": 0.0, "bias_hu": 0.0, "voxels": 128}
    assert out["bone"]["mae_hu"] == pytest.approx(2 * 1300.0 / 128, rel=1e-12)  # float64: exact up to rounding
    # Outside the body nothing counts; a tissue without voxels reads NaN.
    body[0:2] = False
    out = tissue_metrics(pred, target, WINDOW, body)
    assert out["lung"]["voxels"] == 0 and math.isnan(out["lung"]["mae_hu"]) and out["fat"]["voxels"] == 128


def test_a_calibrated_std_predicts_the_error():
    """Errors drawn from N(0, σ) with σ varying over the voxels: the std correlates with |error| and each bin's mean
    |error| is σ·√(2/π) within the sampling noise of ~5000 voxels per bin (relative s.e. ≈ 0.75/√5000 ≈ 1 %)."""
    rng = np.random.default_rng(0)
    shape = (40, 40, 32)
    sigma = torch.from_numpy(rng.uniform(5.0, 100.0, shape))
    target = torch.zeros(shape, dtype=torch.float64)
    pred = torch.from_numpy(rng.standard_normal(shape)) * sigma
    body = torch.ones(shape, dtype=torch.bool)
    out = uncertainty_calibration(pred, sigma, target, WINDOW, body)
    assert out["std_error_r"] > 0.4
    for point in out["calibration"]:
        assert point["mean_abs_error_hu"] == pytest.approx(point["mean_std_hu"] * math.sqrt(2 / math.pi), rel=0.05)
    # A std unrelated to the error does not predict it.
    shuffled = torch.from_numpy(rng.permutation(sigma.numpy().ravel()).reshape(shape))
    assert abs(uncertainty_calibration(pred, shuffled, target, WINDOW, body)["std_error_r"]) < 0.03


def test_case_figure_shows_truth_generated_and_error(tmp_path):
    """The figure's error row is |generated − truth| on 0..500 HU: a uniform +250 HU error reads mid-grey (127)."""
    truth = np.full((16, 16, 16), -1000.0, dtype=np.float32)
    truth[4:12, 4:12, 4:12] = 0.0
    slices = case_slices(truth, truth + 250.0)
    assert list(slices) == ["truth", "generated", "|error|"] and list(slices["truth"]) == [
        "axial",
        "coronal",
        "sagittal",
    ]
    import tempfile
    from pathlib import Path

    path = Path(tempfile.mkdtemp()) / "case.png"
    save_case_figure(path, slices, tile=32)
    image = np.asarray(Image.open(path))
    assert image.shape == (3 * (32 + 14), 3 * 32)
    assert image[2 * 46 + 14 + 16, 16] == 127  # error row, axial, centre: 250 / 500 · 255 → 127
    assert image[14 + 16, 16] == 127  # truth row: 0 HU in the chest window −1000..1000 → 127
