"""Synthetic chest phantoms: anatomy in RAS, determinism, variety, any grid."""

from __future__ import annotations

import numpy as np
import pytest
from scripts.data import PHANTOM_LABELS, synthetic_chest_ct

L = PHANTOM_LABELS


def _centroid_mm(labels: np.ndarray, label: int, spacing: float) -> np.ndarray:
    idx = np.argwhere(labels == label).astype(np.float64)
    return (idx.mean(0) - (np.array(labels.shape) - 1) / 2.0) * spacing


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_anatomy_sits_where_ras_says(seed):
    hu, labels = synthetic_chest_ct(64, 5.0, seed=seed)
    heart, spine = _centroid_mm(labels, L["heart"], 5.0), _centroid_mm(labels, L["spine"], 5.0)
    lung_l, lung_r = _centroid_mm(labels, L["lung_left"], 5.0), _centroid_mm(labels, L["lung_right"], 5.0)
    liver, sternum = _centroid_mm(labels, L["liver"], 5.0), _centroid_mm(labels, L["sternum"], 5.0)
    assert heart[0] < -5.0 and heart[1] > 5.0  # patient's left (lower x) and anterior
    assert spine[1] < -40.0 and abs(spine[0]) < 5.0  # posterior midline
    assert lung_l[0] < -30.0 < 30.0 < lung_r[0]  # left lung at lower x, right lung at higher x
    assert liver[0] > 0.0 and liver[2] < heart[2]  # right upper abdomen, below the heart
    assert sternum[1] > 60.0  # anterior
    for name in ("body", "lung_left", "lung_right", "heart", "spine", "ribs"):
        assert (labels == L[name]).sum() > 50, name


def test_ct_numbers_are_realistic():
    hu, labels = synthetic_chest_ct(64, 5.0, seed=0)
    assert hu.dtype == np.float32 and labels.dtype == np.uint8 and hu.shape == labels.shape == (64, 64, 64)
    assert np.all(hu[labels == L["background"]] == -1000.0)
    assert -900.0 < np.median(hu[labels == L["lung_left"]]) < -780.0
    assert 0.0 < np.median(hu[labels == L["heart"]]) < 100.0
    assert np.median(hu[labels == L["ribs"]]) > 400.0
    assert -50.0 < np.median(hu[labels == L["body"]]) < 80.0


def test_same_seed_same_volume_other_seed_other_patient():
    a, la = synthetic_chest_ct(48, 6.0, seed=7)
    b, lb = synthetic_chest_ct(48, 6.0, seed=7)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(la, lb)
    volumes = [(labels > 0).sum() for _, labels in (synthetic_chest_ct(48, 6.0, seed=s) for s in range(4))]
    assert len(set(volumes)) == 4  # body habitus differs between seeds
    c, _ = synthetic_chest_ct(48, 6.0, seed=8)
    assert np.abs(a - c).mean() > 20.0


def test_any_grid_samples_the_same_patient():
    coarse, lab_c = synthetic_chest_ct(32, 10.0, seed=3, noise_hu=0.0)
    fine, lab_f = synthetic_chest_ct((48, 40, 36), (20.0 / 3.0, 8.0, 80.0 / 9.0), seed=3, noise_hu=0.0)
    assert fine.shape == (48, 40, 36)
    # Same physical patient: heart centroids agree to within a coarse voxel.
    np.testing.assert_allclose(
        _centroid_mm(lab_c, L["heart"], 10.0)[:2],
        (np.argwhere(lab_f == L["heart"]).mean(0)[:2] - (np.array([48, 40]) - 1) / 2.0) * np.array([20 / 3, 8.0]),
        atol=10.0,
    )


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"size": 0}, "size must be a positive int or three positive ints"),
        ({"size": (32, 32)}, "size must be a positive int or three positive ints"),
        ({"spacing_mm": -1.0}, "spacing_mm must be a positive number or three positive numbers"),
        ({"noise_hu": float("nan")}, "noise_hu must be a non-negative number"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        synthetic_chest_ct(**kwargs)
