"""What a radiologist checks: HU error per tissue of the target and per anatomical label of its label map (which
follows the CT's preprocessing), and whether the sampling std predicts the error."""

from __future__ import annotations

import csv
import fnmatch
import json
import math

import numpy as np
import pytest
import torch
from conftest import TINY_CONFIG, config_parser, small_geometry
from monai.data import MetaTensor
from monai.transforms import Compose, LoadImage
from PIL import Image
from scripts.data import PHANTOM_LABELS, label_on_grid, write_nifti
from scripts.engines import CTEvaluation
from scripts.engines.evaluation import (
    ANATOMY_GROUPS,
    CSV_COLUMNS,
    TISSUES,
    anatomy_metrics,
    tissue_metrics,
    uncertainty_calibration,
)
from scripts.engines.report import case_slices, save_case_figure
from scripts.physics import DRRRenderer, RadiographComposer

WINDOW = (-1000.0, 2000.0)
L = PHANTOM_LABELS


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


def test_anatomy_errors_by_hand():
    """A (4, 4, 4) case, one x-plane per structure: both upper lobes, the myocardium beside the aorta, background."""
    target = torch.full((4, 4, 4), -850.0, dtype=torch.float64)
    target[2:] = 40.0
    labels = torch.zeros(4, 4, 4, dtype=torch.long)
    labels[0], labels[1] = L["lung_upper_lobe_left"], L["lung_upper_lobe_right"]  # 16 voxels each
    labels[2, :2], labels[2, 2:] = L["heart_myocardium"], L["aorta"]  # 8 voxels each
    labels[3, 0, 0] = 200  # an id the table lacks (x = 3 is background otherwise)
    pred = target.clone()
    pred[0] += 30.0
    pred[1] -= 10.0
    pred[2, 0] += 50.0  # 4 of the 8 myocardium voxels
    pred[2, 3, 0] = 2500.0  # one aorta voxel above the window: clipped to 2000, +1960
    pred[3] += 999.0  # background: counts nowhere, the unknown id 200 aside
    out = anatomy_metrics(pred, target, WINDOW, labels)
    assert list(out["anatomy"]) == list(ANATOMY_GROUPS)
    # lung: (16·30 + 16·10) / 32 = 20 HU MAE, (16·30 − 16·10) / 32 = +10 HU bias, over the union of the lobes.
    assert out["anatomy"]["lung"] == {"mae_hu": 20.0, "bias_hu": 10.0, "voxels": 32}
    assert out["anatomy"]["heart"] == {"mae_hu": 25.0, "bias_hu": 25.0, "voxels": 8}  # 4·50 / 8
    assert out["anatomy"]["great_vessels"] == {"mae_hu": 245.0, "bias_hu": 245.0, "voxels": 8}  # 1960 / 8
    assert out["anatomy"]["liver"]["voxels"] == 0 and math.isnan(out["anatomy"]["liver"]["mae_hu"])
    per_label = out["anatomy_labels"]
    assert list(per_label) == [  # the labels present, in id order
        "lung_upper_lobe_left",
        "lung_upper_lobe_right",
        "heart_myocardium",
        "aorta",
        "label_200",
    ]
    assert per_label["lung_upper_lobe_right"] == {"id": 10, "mae_hu": 10.0, "bias_hu": -10.0, "voxels": 16}
    assert per_label["label_200"] == {"id": 200, "mae_hu": 999.0, "bias_hu": 999.0, "voxels": 1}


def test_anatomy_groups_name_phantom_labels():
    """Every pattern names a phantom label (a typo would leave a group silently empty); the groups a radiologist
    reads hold what they say: five lobes, myocardium and four chambers, 24 ribs, 15 vertebrae (C7, T1-T12, L1-L2)."""

    def members(group):
        return {n for n in L if any(fnmatch.fnmatchcase(n, p) for p in ANATOMY_GROUPS[group])}

    for group, patterns in ANATOMY_GROUPS.items():
        for pattern in patterns:
            assert fnmatch.filter(L, pattern), f"{group}: {pattern} names no label"
    assert {L[n] for n in members("lung")} == {8, 9, 10, 11, 12}
    assert {L[n] for n in members("heart")} == {16, 17, 18, 19, 20}
    assert {L[n] for n in members("great_vessels")} == set(range(22, 31))
    assert len(members("ribs")) == 24 and len(members("spine")) == 15 and members("liver") == {"liver"}


def test_label_follows_the_ct_crop(tmp_path):
    """An off-centre body in an over-sized, flipped (LPS-like) CT at 10 mm: the CT chain reorients it, resamples to
    20 mm (TINY_CONFIG: 16³ over 320 mm), crops x and z around the body and pads y. The label map, brought onto the
    result's grid, must mark exactly the body and bone the preprocessed CT shows: same crop, same flips."""
    hu = np.full((48, 20, 56), -1000.0, dtype=np.float32)  # 480 × 200 × 560 mm
    labels = np.zeros(hu.shape, dtype=np.uint8)
    hu[4:20, 2:18, 30:50], labels[4:20, 2:18, 30:50] = 40.0, L["skeletal_muscle"]  # even bounds: exact at 20 mm
    hu[8:12, 6:10, 36:44], labels[8:12, 6:10, 36:44] = 700.0, L["vertebrae_T1"]
    affine = np.diag([-10.0, -10.0, 10.0, 1.0])
    affine[:3, 3] = (200.0, 90.0, -250.0)
    write_nifti(tmp_path / "ct.nii.gz", hu, affine)
    write_nifti(tmp_path / "label.nii.gz", labels, affine)
    chain = Compose(config_parser(**TINY_CONFIG).get_parsed_content("ct_preprocessing"))
    ct = chain({"image": str(tmp_path / "ct.nii.gz")})["image"]
    label = label_on_grid(LoadImage(image_only=True, ensure_channel_first=True)(tmp_path / "label.nii.gz"), ct)
    assert ct.shape == label.shape == (1, 16, 16, 16)
    np.testing.assert_allclose(label.affine, ct.affine, atol=1e-9, rtol=0)
    expected = torch.where(ct > 500, L["vertebrae_T1"], torch.where(ct > -500, L["skeletal_muscle"], 0))
    assert torch.equal(label.as_tensor(), expected.as_tensor().float())
    # Both blocks whole inside the field of view, halved per axis at 20 mm: 8·8·10 body voxels, 2·2·4 of them bone.
    assert int((label > 0).sum()) == 8 * 8 * 10 and int((label == L["vertebrae_T1"]).sum()) == 2 * 2 * 4


def _evaluation_case(with_label: bool) -> dict:
    """A 16³ case at 20 mm: air, a 40 HU body block with a 700 HU vertebra, its views and (optionally) label map."""
    ct = torch.full((1, 16, 16, 16), -1000.0)
    ct[:, 4:12, 4:12, 4:12] = 40.0
    ct[:, 6:8, 6:8, 6:10] = 700.0  # 16 voxels
    affine = torch.diag(torch.tensor([20.0, 20.0, 20.0, 1.0], dtype=torch.float64))
    case = {"ct": MetaTensor(ct, affine=affine), "image": torch.zeros(2, 16, 16), "image_mask": torch.ones(2).bool()}
    if with_label:
        label = torch.zeros_like(ct)
        label[:, 4:12, 4:12, 4:12] = L["skeletal_muscle"]
        label[:, 6:8, 6:8, 6:10] = L["vertebrae_T1"]
        case["label"] = MetaTensor(label, affine=affine)
    return case


def test_evaluation_with_and_without_a_label_map(tmp_path):
    """The model's CT is the target + 10 HU: every anatomical group reads MAE = bias = 10 HU. The best constant (the
    target's mean, (496·40 + 16·700 − 3584·1000) / 4096 = −867.3 HU) reads constant − target per label. A case
    without a label map (a real CT) is scored as before, without anatomy; metrics.json stays strict JSON."""
    composer = RadiographComposer(DRRRenderer(small_geometry(16)), mu_water=0.0206, max_line_integral=10.0)
    evaluation = CTEvaluation(composer, WINDOW, ssim_window=3, protocol_size=16)
    for name, with_label in (("labelled", True), ("real_ct", False)):
        case = _evaluation_case(with_label)
        evaluation(name, case, case["ct"].clone() + 10.0, "cpu", model_seconds=1.5)
    path = evaluation.finish({"failed": []}, tmp_path)
    text = open(path).read()
    metrics = json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in metrics.json"))
    assert '"vertebrae_T1": {"id": 50, "mae_hu": 10.0, "bias_hu": 10.0, "voxels": 16}' in text  # a line per label
    labelled, real = metrics["per_case"]["labelled"], metrics["per_case"]["real_ct"]
    assert labelled["model"]["anatomy"]["muscle"] == {"mae_hu": 10.0, "bias_hu": 10.0, "voxels": 512 - 16}
    assert labelled["model"]["anatomy"]["spine"] == {"mae_hu": 10.0, "bias_hu": 10.0, "voxels": 16}
    assert labelled["model"]["anatomy"]["lung"] == {"mae_hu": None, "bias_hu": None, "voxels": 0}
    assert list(labelled["model"]["anatomy_labels"]) == ["skeletal_muscle", "vertebrae_T1"]
    spine = labelled["best_constant"]["anatomy_labels"]["vertebrae_T1"]
    constant = (496 * 40.0 + 16 * 700.0 - 3584 * 1000.0) / 4096
    assert spine["id"] == L["vertebrae_T1"] and spine["bias_hu"] == pytest.approx(constant - 700.0, abs=1e-3)
    assert labelled["model"]["seconds"] == 1.5 and labelled["best_constant"]["seconds"] >= 0
    assert "anatomy" not in real["model"] and "anatomy_labels" not in real["model"]
    assert real["model"]["tissue"]["bone"]["mae_hu"] == pytest.approx(10.0)
    # Means over the cases that have a label map (one here); over both for everything else.
    mean = metrics["mean"]["model"]
    assert mean["anatomy"]["spine"] == {"mae_hu": 10.0, "bias_hu": 10.0, "cases": 1}
    assert mean["anatomy_labels"]["vertebrae_T1"] == {"id": 50, "mae_hu": 10.0, "bias_hu": 10.0, "cases": 1}
    assert mean["seconds"] == 1.5 and mean["tissue"]["bone"]["cases"] == 2
    rows = {(r["case"], r["method"]): r for r in csv.DictReader((tmp_path / "metrics.csv").open())}
    assert tuple(next(iter(rows.values()))) == CSV_COLUMNS
    assert float(rows["labelled", "model"]["anatomy_spine_mae_hu"]) == 10.0
    assert rows["real_ct", "model"]["anatomy_spine_mae_hu"] == "" and float(rows["real_ct", "model"]["seconds"]) == 1.5


def test_calibration_plot_puts_each_bin_where_its_numbers_say(tmp_path):
    from PIL import Image
    from scripts.engines.report import _COLOURS, save_calibration_plot

    bins = [{"mean_std_hu": 50.0 * k, "mean_abs_error_hu": 40.0 * k} for k in range(1, 5)]  # up to 200 HU
    path = tmp_path / "calibration.png"
    save_calibration_plot(path, {"case_0000": {"calibration": bins, "ideal_slope": math.sqrt(2 / math.pi)}})
    image = Image.open(path).convert("RGB")
    assert image.size == (520, 420)
    # Axes span 0..1.05 x 200 HU inside the box (60, 30)-(500, 370): the bin (100, 80) HU lands at pixel (269.5, 240.5).
    top = 200.0 * 1.05
    x, y = 60 + 100.0 / top * 440, 370 - 80.0 / top * 340
    assert image.getpixel((round(x), round(y))) == _COLOURS[0]
