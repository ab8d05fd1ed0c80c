"""Anatomical chest phantoms: anatomy where RAS puts it, label ids, determinism, volumes, findings, scanner model."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scripts.data import PATHOLOGIES, PHANTOM_LABELS, chest_phantom, label_names, synthetic_chest_ct
from scripts.data.anatomy.canvas import Canvas
from scripts.data.anatomy.scanner import ScannerModel, _correlated_noise

L = PHANTOM_LABELS
LOBES = [n for n in L if n.startswith("lung_") and "_lobe_" in n]
HEART = [n for n in L if n.startswith("heart_")]


def _ids(names):
    return [L[n] for n in names]


def _centroid_mm(labels: np.ndarray, names, spacing: float) -> np.ndarray:
    idx = np.argwhere(np.isin(labels, _ids(names))).astype(np.float64)
    return (idx.mean(0) - (np.array(labels.shape) - 1) / 2.0) * spacing


@pytest.fixture(scope="module")
def phantoms():
    """Three 128³ × 2.5 mm phantoms without findings (the default data set's grid)."""
    return [chest_phantom(128, 2.5, seed=s, findings=[]) for s in range(3)]


def test_label_table_is_stable_and_named_as_totalsegmentator():
    assert len(set(L.values())) == len(L) and sorted(L.values()) == list(range(len(L))) and len(L) < 256
    # Ids are part of the data set's contract (label maps on disk): a change here breaks users' label maps.
    golden = {
        "background": 0,
        "lung_upper_lobe_left": 8,
        "lung_lower_lobe_right": 12,
        "trachea": 13,
        "heart_myocardium": 16,
        "aorta": 22,
        "liver": 32,
    }
    assert {n: L[n] for n in golden} == golden
    for name in (
        "rib_left_1",
        "rib_right_12",
        "vertebrae_T1",
        "vertebrae_T12",
        "clavicula_left",
        "scapula_right",
        "humerus_left",
        "costal_cartilages",
        "sternum",
        "lung_nodules",
        "pleural_effusion",
    ):
        assert name in L
    assert label_names()["0"] == "background" and label_names()[str(L["aorta"])] == "aorta"


def test_anatomy_sits_where_ras_says(phantoms):
    for ph in phantoms:
        lab = ph.labels
        heart, liver = _centroid_mm(lab, HEART, 2.5), _centroid_mm(lab, ["liver"], 2.5)
        spine = _centroid_mm(lab, [f"vertebrae_T{i}" for i in range(1, 13)], 2.5)
        sternum = _centroid_mm(lab, ["sternum"], 2.5)
        right = _centroid_mm(lab, ["lung_upper_lobe_right", "lung_middle_lobe_right", "lung_lower_lobe_right"], 2.5)
        left = _centroid_mm(lab, ["lung_upper_lobe_left", "lung_lower_lobe_left"], 2.5)
        assert heart[0] < -5.0 and heart[1] > spine[1] + 40.0  # patient's left (RAS: −x) and anterior
        assert liver[0] > 20.0 and liver[2] < heart[2]  # right upper abdomen, below the heart
        assert abs(spine[0]) < 15.0 and spine[1] < heart[1] - 40.0 and sternum[1] > heart[1]  # spine posterior
        assert right[0] > 40.0 and left[0] < -40.0
        assert _centroid_mm(lab, ["rib_right_6"], 2.5)[0] > 0 > _centroid_mm(lab, ["rib_left_6"], 2.5)[0]
        assert (
            _centroid_mm(lab, ["lung_middle_lobe_right"], 2.5)[1] > _centroid_mm(lab, ["lung_lower_lobe_right"], 2.5)[1]
        )  # anterior lobe
        # The right hemidiaphragm is higher: the lowest lung voxel over the middle of each dome.
        x = (np.arange(128) - 63.5) * 2.5
        domes = []
        for names, sign in ((["lung_lower_lobe_right"], 1.0), (["lung_lower_lobe_left"], -1.0)):
            lung = np.isin(lab, _ids(names))
            cols = (sign * x > 50.0) & (sign * x < 80.0)
            z_low = [np.flatnonzero(lung[i].any(0)).min() for i in np.flatnonzero(cols) if lung[i].any()]
            domes.append(np.median(z_low))
        assert domes[0] > domes[1]


def test_every_rib_vertebra_and_lobe_is_labelled(phantoms):
    for ph in phantoms:
        present = set(np.unique(ph.labels).tolist())
        need = [f"rib_{s}_{i}" for s in ("left", "right") for i in range(1, 12)]  # the 12th may lie below the grid
        need += [f"vertebrae_T{i}" for i in range(1, 13)] + LOBES + HEART
        need += [
            "trachea",
            "lung_trachea_bronchia",
            "lung_vessels",
            "aorta",
            "pulmonary_artery",
            "sternum",
            "clavicula_left",
            "clavicula_right",
            "scapula_left",
            "scapula_right",
            "costal_cartilages",
            "intervertebral_discs",
            "spinal_cord",
            "liver",
            "esophagus",
            "epicardial_fat",
            "subcutaneous_fat",
        ]
        missing = [n for n in need if L[n] not in present]
        assert not missing


def test_volumes_and_ct_numbers_are_adult(phantoms):
    """The adult norms of the docs' realism table (bundle/docs/README.md), which these seeds meet: lung field
    4000–6500 mL, heart (chambers + myocardium) 500–900 mL, and the tissues' CT numbers."""
    for ph in phantoms:
        v = ph.summary()["volumes_ml"]
        lungs = sum(v.get(n, 0.0) for n in LOBES + ["lung_vessels", "lung_trachea_bronchia"])
        assert 4000.0 < lungs < 6500.0
        assert 500.0 < sum(v.get(n, 0.0) for n in HEART) < 900.0
        lung = np.isin(ph.labels, _ids(LOBES))
        p10, p50, p90 = np.percentile(ph.hu[lung], [10, 50, 90])
        assert -910.0 < p50 < -780.0 and p90 - p10 > 100.0  # dependent gradient, vessels, texture
        assert 20.0 < np.median(ph.hu[ph.labels == L["liver"]]) < 75.0
        assert -130.0 < np.median(ph.hu[ph.labels == L["subcutaneous_fat"]]) < -60.0
        assert np.median(ph.hu[np.isin(ph.labels, _ids([f"vertebrae_T{i}" for i in range(1, 13)]))]) > 120.0
        assert np.all(ph.hu[ph.labels == 0] == -1000.0)


def test_same_seed_same_patient_other_seed_other_patient():
    a = chest_phantom(48, 6.0, seed=7)
    b = chest_phantom(48, 6.0, seed=7)
    np.testing.assert_array_equal(a.hu, b.hu)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert a.summary() == b.summary()
    c = chest_phantom(48, 6.0, seed=8)
    assert np.abs(a.hu - c.hu).mean() > 20.0


def test_any_grid_samples_the_same_patient():
    coarse = chest_phantom(32, 10.0, seed=3, findings=[], scanner=False)
    fine = chest_phantom((48, 40, 36), (20.0 / 3.0, 8.0, 80.0 / 9.0), seed=3, findings=[], scanner=False)
    assert fine.hu.shape == (48, 40, 36)
    idx = np.argwhere(np.isin(fine.labels, _ids(HEART))).mean(0)
    fine_mm = (idx - (np.array([48, 40, 36]) - 1) / 2.0) * np.array([20 / 3, 8.0, 80 / 9])
    np.testing.assert_allclose(_centroid_mm(coarse.labels, HEART, 10.0), fine_mm, atol=10.0)  # one coarse voxel


@pytest.mark.parametrize("finding", PATHOLOGIES)
def test_each_finding_is_painted_with_its_label(finding):
    ph = chest_phantom(64, 5.0, seed=4, findings=[finding])
    assert list(ph.findings) == [finding]
    if finding == "cardiomegaly":
        normal = chest_phantom(64, 5.0, seed=4, findings=[])
        heart = lambda p: np.isin(p.labels, _ids(HEART + ["epicardial_fat"])).sum()  # noqa: E731
        assert heart(ph) > 1.5 * heart(normal)  # ≥ 1.2× every radius
        return
    name = {"nodule": "lung_nodules", "mass": "lung_mass"}.get(finding, finding)
    assert (ph.labels == L[name]).sum() > 0


def test_no_findings_unless_drawn_or_asked():
    assert chest_phantom(32, 10.0, seed=1, pathology_share=0.0).findings == {}
    with pytest.raises(ValueError, match=r"findings must be among \['nodule', 'mass'"):
        chest_phantom(32, 10.0, findings=["fracture"])


def test_partial_volume_tube_integrates_to_its_volume():
    """A straight 10 mm tube through a 1 mm grid: Σ occupancy · voxel = (πr² + πh²/12)·length (the linear edge ramp
    over one voxel h adds πh²/12 exactly); the grid's sampling of the circle leaves < 0.2 %."""
    canvas = Canvas((48, 48, 40), (1.0, 1.0, 1.0))
    occ = canvas.tube_fraction(np.array([[0.3, -0.2, -30.0], [0.3, -0.2, 30.0]]), 10.0)
    per_slice = occ[:, :, 10:30].sum() / 20.0  # away from the rounded ends
    assert per_slice == pytest.approx(math.pi * 100.0 + math.pi / 12.0, rel=2e-3)
    assert occ.max() == 1.0 and occ.min() == 0.0


def test_scanner_noise_has_the_fbp_spectrum():
    """Correlated noise: its in-plane power peaks near the drawn frequency and vanishes at zero (a ramp), unlike
    white noise; its standard deviation is the requested one."""
    model = ScannerModel(kernel_fwhm_mm=1.0, slice_fwhm_mm=2.0, noise_hu=15.0, nps_peak_per_mm=0.3, streaks=False)
    noise = _correlated_noise(np.random.default_rng(0), (96, 96, 16), (1.0, 1.0, 2.0), model)
    assert noise.std() == pytest.approx(15.0, rel=1e-4)
    power = (np.abs(np.fft.fft2(noise, axes=(0, 1))) ** 2).mean(2)
    f = np.hypot(*np.meshgrid(np.fft.fftfreq(96), np.fft.fftfreq(96), indexing="ij"))
    rings = [power[(f >= lo) & (f < lo + 0.05)].mean() for lo in np.arange(0.0, 0.5, 0.05)]
    assert int(np.argmax(rings)) in (3, 4, 5) and rings[0] < 0.3 * max(rings)  # peak at 0.15–0.3 /mm, ramp at 0


def test_noise_off_gives_the_ideal_anatomy():
    hu, labels = synthetic_chest_ct(48, 6.0, seed=2, noise_hu=0)
    ideal = chest_phantom(48, 6.0, seed=2, scanner=False)
    np.testing.assert_array_equal(hu, ideal.hu)
    np.testing.assert_array_equal(labels, ideal.labels)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"size": 0}, "size must be a positive int or three positive ints"),
        ({"size": (32, 32)}, "size must be a positive int or three positive ints"),
        ({"spacing_mm": -1.0}, "spacing_mm must be a positive number or three positive numbers"),
        ({"noise_hu": float("nan")}, "noise_hu must be a non-negative number"),
        ({"pathology_share": 1.5}, r"pathology_share must be a probability in \[0, 1\]"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        chest_phantom(**kwargs)
