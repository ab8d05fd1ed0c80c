"""Inference and evaluation: sampler determinism, uncertainty, output frames, HU round trip, metrics, bad inputs."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import ROOT, TINY_CONFIG, cli_config_files, config_files, config_parser
from monai.bundle import ConfigParser, ConfigWorkflow, run
from monai.data import MetaTensor
from monai.transforms import Compose, ScaleIntensityRange
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from scripts.checkpoint import read_model_config, save_checkpoint
from scripts.data import CTOutputd, prepare_dataset
from scripts.engines import CTInferer, orthogonal_slices, views_and_mask, volume_metrics, x2ct_metrics
from scripts.engines.evaluation import ANATOMY_GROUPS, CSV_COLUMNS
from scripts.physics import ct_scale_to_hu

#: The small baselines of the evaluation test.
BASELINE_STAGES = {
    "unet_3d": (
        "baseline_unet3d.yaml",
        [{"grid_size": 32, "decoder": "unet", "lift_channels": 4, "unet_features": [4, 4, 8, 8, 8, 4]}],
    ),
    "lifted_prior": ("baseline_lifted_prior.yaml", [{"grid_size": 16, "decoder": "linear", "lift_channels": 4}]),
}
#: What an inference run may set besides its inputs and outputs: sampling choices only. Everything that gives the
#: weights their meaning (stages, encoder, geometry, HU window, ...) comes from the checkpoint.
SAMPLING = {"num_inference_steps": 2, "progress_bar": False}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Four small phantoms (seeds 1000+): one training case, three test cases."""
    root = tmp_path_factory.mktemp("inputs")
    prepare_dataset(
        root, synthetic_count=4, synthetic_size=32, synthetic_spacing_mm=10.0, split=(0.25, 0, 0.75), seed=1000
    )
    return root


def _save_untrained(path, *files, **overrides):
    """Untrained weights of common.yaml (+ ``files``) shrunk by TINY_CONFIG, in the shipped format."""
    parser = config_parser(*files, **{**TINY_CONFIG, **overrides})
    torch.manual_seed(0)
    network = parser.get_parsed_content("network_def")
    save_checkpoint(path, {"model": network.state_dict()}, model_config=parser.get_parsed_content("model_config"))
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """Untrained small cascade weights (8³ -> 16³ over 320 mm, 32² detector) with their model config."""
    return _save_untrained(tmp_path_factory.mktemp("ckpt") / "model.pt")


def _inference_parser(ckpt, *files, **overrides) -> ConfigParser:
    return config_parser("inference.yaml", *files, ckpt_path=str(ckpt), **{**SAMPLING, **overrides})


def _run(tmp_path, dataset, ckpt, files=("inference.yaml",), **overrides):
    settings = {
        **SAMPLING,
        "dataset_dir": str(dataset),
        "output_dir": str(tmp_path / "out"),
        "ckpt_path": str(ckpt),
        **overrides,
    }
    workflow = ConfigWorkflow(config_file=config_files(*files), workflow_type=None, run_id="run", **settings)
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    return json.loads((Path(settings["output_dir"]) / "inference_report.json").read_text())


def _network_and_views(ckpt):
    parser = _inference_parser(ckpt)
    torch.manual_seed(0)
    network = parser.get_parsed_content("network_def").eval()
    views = torch.rand(1, 2, 32, 32) * 2 - 1
    return parser, network, views


def test_sampler_is_deterministic_under_a_seed(checkpoint):
    parser, network, views = _network_and_views(checkpoint)
    sampler = parser.get_parsed_content("sampler")
    first = CTInferer(sampler, num_samples=1, seed=3)(views, network)
    again = CTInferer(sampler, num_samples=1, seed=3)(views, network)
    other = CTInferer(sampler, num_samples=1, seed=4)(views, network)
    assert first.shape == (1, 2, 16, 16, 16)
    assert torch.equal(first, again)
    assert not torch.allclose(first, other)


def test_uncertainty_is_zero_for_one_sample_and_positive_for_several(checkpoint):
    parser, network, views = _network_and_views(checkpoint)
    sampler = parser.get_parsed_content("sampler")
    one = CTInferer(sampler, num_samples=1)(views, network)
    three = CTInferer(sampler, num_samples=3)(views, network)
    assert torch.count_nonzero(one[:, 1]) == 0
    assert bool((three[:, 1] >= 0).all()) and float(three[:, 1].mean()) > 0.01
    # The mean and std are those of the three draws themselves.
    generator = torch.Generator().manual_seed(0)
    draws = torch.stack([sampler(views, network, generator=generator) for _ in range(3)])
    torch.testing.assert_close(three[:, :1], draws.mean(0), atol=1e-5, rtol=0)
    torch.testing.assert_close(three[:, 1:], draws.std(0, unbiased=False), atol=1e-4, rtol=0)


def test_missing_views_are_nan_marked_and_masked():
    views = torch.zeros(1, 2, 4, 4)
    views[0, 1] = float("nan")
    filled, mask = views_and_mask(views)
    assert mask.tolist() == [[True, False]]
    assert float(filled[0, 1].max()) == -1.0  # an unexposed detector, as in training
    with pytest.raises(ValueError, match="at least one view with finite pixels"):
        views_and_mask(torch.full((1, 2, 4, 4), float("nan")))


def test_hu_round_trip_through_the_ct_scale():
    hu = torch.linspace(-1000.0, 2000.0, 301)
    scaled = ScaleIntensityRange(a_min=-1000.0, a_max=2000.0, b_min=-1.0, b_max=1.0, clip=True)(hu)
    torch.testing.assert_close(ct_scale_to_hu(torch.as_tensor(scaled), (-1000.0, 2000.0)), hu, atol=1e-3, rtol=0)


def test_output_affine_is_the_input_frame_on_another_grid():
    affine = torch.tensor([[2.0, 0, 0, -30.0], [0, 2.0, 0, 12.0], [0, 0, 2.0, -7.0], [0, 0, 0, 1]], dtype=torch.float64)
    ct = MetaTensor(torch.zeros(1, 8, 8, 8), affine=affine)
    pred = torch.zeros(2, 4, 4, 4)
    pred[1] = 0.1  # std on the CT scale
    out = CTOutputd("pred", (-1000.0, 2000.0), fov_mm=16.0)({"pred": pred, "ct": ct})
    new = np.asarray(out["pred"].affine)
    # Output voxel 0 covers reference voxels 0 and 1: its centre is theirs averaged; spacing doubles.
    np.testing.assert_allclose(
        new[:3, 3],
        (affine[:3, 3].numpy() + (affine @ torch.tensor([1.0, 1, 1, 1], dtype=torch.float64))[:3].numpy()) / 2,
    )
    np.testing.assert_allclose(np.diag(new)[:3], [4.0, 4.0, 4.0])
    assert float(out["pred"].mean()) == pytest.approx(500.0)  # CT scale 0 is the middle of the window
    assert float(out["pred_std"].mean()) == pytest.approx(150.0)  # 0.1 of half the 3000 HU window
    centred = CTOutputd("pred", (-1000.0, 2000.0), fov_mm=16.0)({"pred": pred})
    np.testing.assert_allclose(np.asarray(centred["pred"].affine)[:3, 3], [-6.0, -6.0, -6.0])  # centre at the origin


def test_metrics_match_hand_computations():
    target = torch.linspace(-900.0, 1400.0, 16**3).reshape(16, 16, 16)  # inside both windows after +30 HU
    pred = target + 30.0
    scores = volume_metrics(pred, target, (-1000.0, 2000.0), ssim_window=3)
    assert scores["psnr"] == pytest.approx(20 * math.log10(3000 / 30), abs=1e-6)
    assert scores["mae_hu"] == pytest.approx(30.0, abs=1e-6)
    assert volume_metrics(target, target, (-1000.0, 2000.0), ssim_window=3)["ssim"] == pytest.approx(1.0, abs=1e-6)
    protocol = x2ct_metrics(pred, target, size=16)
    assert protocol["x2ct_psnr"] == pytest.approx(20 * math.log10(2500 / 30), abs=1e-6)
    assert x2ct_metrics(target, target, size=16)["x2ct_ssim"] == pytest.approx(1.0, abs=1e-6)
    # Both volumes are clipped to the window first: an error beyond it does not count.
    beyond = target.clone()
    beyond[target > 1000] = 1900.0
    assert volume_metrics(beyond, target, (-1000.0, 1000.0), ssim_window=3)["mae_hu"] == 0.0


def test_preview_slices_follow_radiological_display():
    vol = np.zeros((4, 6, 8))  # RAS: +x the patient's right, +y anterior, +z superior
    vol[3, 5, 4] = 1.0  # right, anterior, on the central axial slice
    vol[3, 3, 7] = 2.0  # right, superior, on the central coronal slice
    vol[2, 5, 7] = 3.0  # anterior, superior, on the central sagittal slice
    slices = orthogonal_slices(vol)
    assert slices["axial"].shape == (6, 4) and slices["axial"][0, 0] == 1.0  # anterior on top, right on the left
    assert slices["coronal"].shape == (8, 4) and slices["coronal"][0, 0] == 2.0  # superior on top, right on the left
    assert slices["sagittal"].shape == (8, 6) and slices["sagittal"][0, 0] == 3.0  # superior on top, anterior left


def test_inference_workflow_writes_ct_uncertainty_dicom_preview_and_report(tmp_path, dataset, checkpoint):
    report = _run(tmp_path, dataset, checkpoint, num_samples=2, write_dicom=True)
    assert [c["name"] for c in report["done"]] == ["case_0000", "case_0001", "case_0002"] and report["failed"] == []
    cases = json.loads((dataset / "datalist.json").read_text())["test"]
    preprocess = Compose(_inference_parser(checkpoint).get_parsed_content("ct_preprocessing"))
    for i, case in enumerate(cases):
        folder = tmp_path / "out" / f"case_{i:04d}"
        ct = nib.load(folder / f"case_{i:04d}_ct.nii.gz")
        expected = preprocess({"image": str(dataset / case["image"])})["image"]
        np.testing.assert_allclose(ct.affine, np.asarray(expected.affine), atol=1e-4)  # the input's physical frame
        assert ct.shape == (16, 16, 16) and ct.get_data_dtype() == np.int16
        assert -1000 <= ct.get_fdata().min() and ct.get_fdata().max() <= 2000
        std = nib.load(folder / f"case_{i:04d}_std.nii.gz").get_fdata()
        assert std.min() >= 0 and std.max() > 0
        assert len(list((folder / f"case_{i:04d}_dicom").glob("*.dcm"))) == 16
        preview = Image.open(folder / f"case_{i:04d}_preview.png")
        assert preview.size[0] == 4 * 192  # 3 slices, or 2 views x (input | DRR)
        summary = json.loads((folder / f"case_{i:04d}.json").read_text())
        assert summary["input"] == "ct" and summary["views"] == ["pa", "lateral"] and summary["num_samples"] == 2
        assert summary["spacing_mm"] == [20.0, 20.0, 20.0] and 0 < summary["drr_error"] < 2
        assert summary["datalist_index"] == i and "input_files" not in summary  # file names only when asked
        assert summary["sampling"] == {  # the recipe of this CT: the test config's sampling settings
            "num_inference_steps": 2,
            "stages": None,
            "guidance_scale": 1.0,
            "drr_guidance": {"strength": 1.0, "iterations": 2, "t_max": 1.0, "stages": None},
            "regression_prior": None,  # a checkpoint other than the shipped models/model.pt gets none by default
            "drr_guidance_applied": True,  # "auto": the views were rendered from this CT input
        }
        # The CT input's reading: how much of the 320 mm cube it fills (these 320 mm phantoms, re-centred on the
        # body, leave up to 20 mm of air) and what the report warns about (tested exactly in test_ct_ingestion).
        reading = summary["reading"]["ct"]
        assert all(280.0 <= v <= 320.0 for v in reading["fov_coverage_mm"])
        assert all(w.startswith(("the body reaches the edge", "the CT covers")) for w in reading["warnings"])
    before = (tmp_path / "out" / "case_0000" / "case_0000_ct.nii.gz").read_bytes()
    report_before = (tmp_path / "out" / "inference_report.json").read_text()
    with pytest.raises(RuntimeError) as err:
        _run(tmp_path, dataset, checkpoint)  # the output folder is another run's: refused before any work
    assert str(err.value.__cause__) == (
        f"{tmp_path / 'out' / 'inference_report.json'} exists: another run wrote here or is writing now; refusing to "
        "overwrite it (pass --overwrite true to replace it, or choose another --output_dir)."
    )
    assert (tmp_path / "out" / "case_0000" / "case_0000_ct.nii.gz").read_bytes() == before
    assert (tmp_path / "out" / "inference_report.json").read_text() == report_before
    # With the input files' names asked for, the report says which file each output came from.
    report = _run(tmp_path, dataset, checkpoint, output_dir=str(tmp_path / "named"), names_from_files=True)
    assert [c["input_files"] for c in report["done"]] == [{"image": Path(c["image"]).name} for c in cases]
    assert [c["datalist_index"] for c in report["done"]] == [0, 1, 2]


def _truncated_dx(path):
    """A DX radiograph cut off in its pixel data (an interrupted copy)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # digital X-ray image storage
    meta.MediaStorageSOPInstanceUID, meta.TransferSyntaxUID = generate_uid(), ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta, ds.Modality = meta, "DX"
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    pixels = (np.random.default_rng(0).random((64, 64)) * 4000).astype(np.uint16)
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = 64, 64, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = pixels.tobytes()
    ds.save_as(path, enforce_file_format=True)
    path.write_bytes(path.read_bytes()[:-3000])


def test_bad_inputs_are_reported_and_the_other_cases_complete(tmp_path, dataset, checkpoint):
    good = json.loads((dataset / "datalist.json").read_text())["test"][0]
    nan = np.full((40, 40), np.nan, dtype=np.float32)
    nib.save(nib.Nifti1Image(nan, np.eye(4)), tmp_path / "nan.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8, 2), np.float32), np.eye(4)), tmp_path / "volume.nii.gz")
    _truncated_dx(tmp_path / "broken.dcm")
    Image.fromarray((np.random.default_rng(0).random((50, 40)) * 255).astype(np.uint8)).save(tmp_path / "pa.png")
    ct_nan = np.zeros((8, 8, 8), np.float32)
    ct_nan[2, 3, 4] = np.nan
    nib.save(nib.Nifti1Image(ct_nan, np.diag([10.0, 10.0, 10.0, 1.0])), tmp_path / "ct_nan.nii.gz")
    nib.save(
        nib.Nifti1Image(np.zeros((8, 8, 8), np.float32), np.diag([80.0, 80.0, 80.0, 1.0])), tmp_path / "ct_far.nii.gz"
    )
    ct_slice = get_testdata_file("CT_small.dcm")
    cases = {
        "test": [
            {"name": "missing", "pa": str(tmp_path / "nope.png")},
            {"name": "corrupt", "lateral": str(tmp_path / "broken.dcm")},
            {"name": "nan", "pa": str(tmp_path / "nan.nii.gz")},
            {"name": "wrong_rank", "pa": str(tmp_path / "volume.nii.gz")},
            {"name": "nothing"},
            {"name": "ct_slice_as_view", "pa": ct_slice},
            {"name": "ct_nan", "image": str(tmp_path / "ct_nan.nii.gz")},
            {"name": "absurd_spacing", "image": str(tmp_path / "ct_far.nii.gz")},
            {"name": "good", "image": str(dataset / good["image"])},
            {"name": "one_view", "pa": str(tmp_path / "pa.png")},
        ]
    }
    (tmp_path / "datalist.json").write_text(json.dumps(cases))
    report = _run(tmp_path, tmp_path, checkpoint)
    assert [c["name"] for c in report["done"]] == ["good", "one_view"]
    assert [c["datalist_index"] for c in report["done"]] == [8, 9]
    assert [c["datalist_index"] for c in report["failed"]] == list(range(8))
    errors = {f["name"]: f["error"] for f in report["failed"]}
    assert errors["missing"] == f"ValueError: {tmp_path / 'nope.png'}: no such radiograph file."
    assert errors["corrupt"].startswith(f"ValueError: {tmp_path / 'broken.dcm'}: pixel data could not be decoded")
    assert errors["nan"] == f"ValueError: {tmp_path / 'nan.nii.gz'}: contains NaN or Inf pixels."
    assert errors["wrong_rank"].startswith(f"ValueError: {tmp_path / 'volume.nii.gz'}: expected a single 2D radiograph")
    assert errors["nothing"].startswith("ValueError: case has no input")
    assert errors["ct_slice_as_view"].startswith(f"ValueError: {ct_slice}: DICOM modality 'CT' is not a radiograph")
    assert (
        errors["ct_nan"]
        == f"ValueError: {tmp_path / 'ct_nan.nii.gz'}: 1 voxels are NaN or Inf; expected finite CT numbers (HU)."
    )
    assert errors["absurd_spacing"].startswith(
        f"ValueError: {tmp_path / 'ct_far.nii.gz'}: voxel spacing (80.0, 80.0, 80.0) mm"
    )
    one_view = json.loads((tmp_path / "out" / "one_view" / "one_view.json").read_text())
    assert one_view["input"] == "radiographs" and one_view["views"] == ["pa"]
    assert list(one_view["reading"]) == ["pa"] and one_view["reading"]["pa"]["notes"]  # what the reader did
    assert list(one_view["drr_error_per_view"]) == ["pa"]
    affine = nib.load(tmp_path / "out" / "one_view" / "one_view_ct.nii.gz").affine  # the renderer's frame
    np.testing.assert_allclose(affine[:3, 3], [-150.0, -150.0, -150.0])  # 16 voxels of 20 mm centred on 0


@pytest.mark.parametrize(
    "override, message",
    [
        (
            {"prediction_type": "epsilon"},
            "prediction_type: the checkpoint {path} was trained with 'v_prediction', this run gives 'epsilon'",
        ),
        (
            {"geometry#source_to_detector_mm": 1100.0},
            "geometry#source_to_detector_mm: the checkpoint {path} was trained with 949.0, this run gives 1100.0",
        ),
        (
            {"hu_window": [-1024.0, 3071.0]},
            "hu_window#0: the checkpoint {path} was trained with -1000.0, this run gives -1024.0",
        ),
        (
            {"noise_schedule": "linear_beta"},
            "noise_schedule: the checkpoint {path} was trained with 'scaled_linear_beta', this run gives 'linear_beta'",
        ),
        (
            {"physics#mu_water_per_mm": 0.019},
            "physics#mu_water_per_mm: the checkpoint {path} was trained with 0.0206, this run gives 0.019",
        ),
    ],
)
def test_a_setting_that_contradicts_the_shipped_model_is_refused_by_name(tmp_path, override, message):
    """The shipped checkpoint's records are read back; a contradicting override stops the run before any case."""
    path = ROOT / "bundle" / "models" / "model.pt"
    with pytest.raises(RuntimeError) as err:  # MONAI's config expression wraps the ValueError
        _run(tmp_path, tmp_path, path, **override)  # no datalist is needed: the check runs first in initialize
    assert isinstance(err.value.__cause__, ValueError)
    text = str(err.value.__cause__)
    assert text.startswith(message.format(path=path)) and "\n" not in text
    assert not (tmp_path / "out").exists() and not (tmp_path / "datalist.json").exists()


def test_sampling_settings_stay_free_and_a_checkpoint_of_another_preset_runs_as_it_is(tmp_path, dataset):
    """A checkpoint with other stages, encoder and geometry runs without naming its preset: inference builds from it."""
    stages = [{"grid_size": 16, "patch_size": 4, "width": 32, "depth": 1, "heads": 2}]
    path = _save_untrained(
        tmp_path / "other.pt",
        preset="custom",
        stages=stages,
        **{"geometry#detector_shape": [24, 24], "geometry#pixel_spacing_mm": [23.5, 23.5]},
    )
    report = _run(tmp_path, dataset, path, sampler_type="ddpm", num_inference_steps=3, num_samples=2)
    assert len(report["done"]) == 3 and report["failed"] == []
    assert report["done"][0]["shape"] == [16, 16, 16] and report["done"][0]["num_samples"] == 2
    with pytest.raises(RuntimeError) as err:
        _run(tmp_path, dataset, path, stages=[dict(stages[0], patch_size=2)])
    assert str(err.value.__cause__).startswith(
        f"stages#0#patch_size: the checkpoint {path} was trained with 4, this run gives 2"
    )


def test_default_inference_of_the_shipped_model_is_unchanged(tmp_path):
    """Golden output: the shipped model on held-out phantom 1001 (2 DDIM steps per stage, seed 0, the default 4
    samples). Recorded with
    0.2.0 before the configs were stacked and the settings read from the checkpoint (bit-identical through that
    change), re-recorded when the anatomical phantoms replaced the ellipsoid ones (the input changed, the model
    and the sampler did not), and when the shipped model was retrained on them (0.5.0; the sampler unchanged, guided
    sampling off by default), when the default became the mean of 4 samples, and in 0.6.0 when the default became
    the shipped U-Net's CT as the first estimate (stage 1 from it at t/T = 0.1) with DRR guidance of CT inputs.

    Tolerances: the CT is written as int16 HU, and float32 network arithmetic differs between CPUs by a few ulp per
    operation, which can flip a voxel's rounding by 1 HU; a slice mean therefore moves by at most 1 HU. A changed
    setting moves it by tens to hundreds of HU.
    """
    golden = json.loads((ROOT / "tests" / "data" / "golden_inference_tiny_2steps.json").read_text())
    run(
        config_file=config_files("inference.yaml"),
        dataset_dir=str(tmp_path / "data"),
        output_dir=str(tmp_path / "out"),
        demo_count=2,
        demo_split=[0.5, 0.0, 0.5],
        num_inference_steps=2,
        save_preview=False,
        progress_bar=False,
    )
    ct = nib.load(tmp_path / "out" / "case_0000" / "case_0000_ct.nii.gz")
    np.testing.assert_allclose(
        np.asarray(ct.dataobj).astype(np.float64).mean(axis=(0, 1)), golden["axial_mean_hu"], atol=1.0, rtol=0
    )
    np.testing.assert_allclose(ct.affine, golden["affine"], atol=1e-9, rtol=0)
    summary = json.loads((tmp_path / "out" / "case_0000" / "case_0000.json").read_text())
    for view, error in golden["drr_error_per_view"].items():
        assert summary["drr_error_per_view"][view] == pytest.approx(error, abs=1e-3)


def test_evaluation_scores_model_baselines_and_best_constant(tmp_path, dataset, checkpoint):
    files = ("inference.yaml", "evaluate.yaml")
    baselines = tmp_path / "baselines"
    for name, (preset, stages) in BASELINE_STAGES.items():
        saved = _save_untrained(baselines / f"{name}.pt", "train.yaml", f"stages/{preset}", stages=stages)
        assert read_model_config(saved)["network"] == "LiftedRegressor"
    _run(
        tmp_path,
        dataset,
        checkpoint,
        files,
        baselines_dir=str(baselines),
        protocol_size=32,
        ssim_window=3,
        num_samples=2,
    )
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["cases"] == 3 and list(metrics["mean"]) == ["model", "best_constant", "lifted_prior", "unet_3d"]
    scalars = {"psnr", "ssim", "mae_hu", "drr_error", "x2ct_psnr", "x2ct_ssim", "seconds"}
    for method, scores in metrics["mean"].items():
        # The phantoms come with label maps: every method is also scored per anatomical group and label.
        assert set(scores) == scalars | {"tissue", "anatomy", "anatomy_labels"} | (
            {"uncertainty"} if method == "model" else set()
        )
        assert set(scores["tissue"]) == {"lung", "fat", "soft_tissue", "bone"}
        assert list(scores["anatomy"]) == list(ANATOMY_GROUPS) and scores["seconds"] >= 0
    model = metrics["per_case"]["case_0000"]["model"]
    assert len(model["uncertainty"]["calibration"]) == 10 and -1.0 <= model["uncertainty"]["std_error_r"] <= 1.0
    # The constant's bias per tissue is its value minus the tissue's mean: negative in bone, positive in the lungs.
    constant = metrics["per_case"]["case_0000"]["best_constant"]["tissue"]
    assert constant["bone"]["bias_hu"] < 0 < constant["lung"]["bias_hu"]
    # The same numbers as a CSV (a row per case and method), the summary plot and a figure per case.
    rows = list(csv.DictReader((tmp_path / "out" / "metrics.csv").open()))
    assert len(rows) == 3 * 4 and tuple(rows[0]) == CSV_COLUMNS
    row = next(r for r in rows if r["case"] == "case_0000" and r["method"] == "best_constant")
    assert float(row["psnr"]) == pytest.approx(metrics["per_case"]["case_0000"]["best_constant"]["psnr"], rel=1e-5)
    assert Image.open(tmp_path / "out" / "metrics_summary.png").size == (560, 520)  # PSNR and SSIM panels
    assert Image.open(tmp_path / "out" / "case_0000" / "case_0000_evaluation.png").size == (480, 522)
    # The best constant is the target's mean: its PSNR is set by the target's standard deviation in the window.
    case = json.loads((dataset / "datalist.json").read_text())["test"][0]
    parser = _inference_parser(checkpoint)
    target = Compose(parser.get_parsed_content("ct_preprocessing"))({"image": str(dataset / case["image"])})["image"]
    std = float(target.clamp(-1000, 2000).double().std(unbiased=False))
    assert metrics["per_case"]["case_0000"]["best_constant"]["psnr"] == pytest.approx(
        20 * math.log10(3000 / std), abs=0.05
    )
    assert "x2ct_psnr" in metrics["definitions"]


def test_a_baseline_trained_on_other_views_is_refused(tmp_path, dataset, checkpoint):
    """A baseline must read the views as the model does: another geometry is refused, naming the setting."""
    baselines = tmp_path / "baselines"
    for name, (preset, stages) in BASELINE_STAGES.items():
        other = {"geometry#source_to_isocenter_mm": 600.0} if name == "lifted_prior" else {}
        _save_untrained(baselines / f"{name}.pt", "train.yaml", f"stages/{preset}", stages=stages, **other)
    files = ("inference.yaml", "evaluate.yaml")
    with pytest.raises(RuntimeError) as err:  # it fails every case, so the run fails
        _run(tmp_path, dataset, checkpoint, files, baselines_dir=str(baselines), protocol_size=32, ssim_window=3)
    assert "every case failed (3)" in str(err.value.__cause__)
    report = json.loads((tmp_path / "out" / "inference_report.json").read_text())
    assert report["failed"][0]["error"] == (
        f"ValueError: geometry#source_to_isocenter_mm: the checkpoint {baselines / 'lifted_prior.pt'} was trained "
        "with 600.0, this run gives 541.0; it is part of what the weights mean and comes from the checkpoint, so "
        "leave it unset (sampling settings stay free)."
    )


def _cli(args: list[str], **popen) -> subprocess.Popen:
    """The bundle runner as a user starts it, from the repository root."""
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", cli_config_files("inference.yaml"), *args]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)


def _last_line(text: str) -> str:
    return text.strip().splitlines()[-1]


def test_a_users_mistake_ends_the_run_with_one_line_and_a_bug_keeps_its_traceback(tmp_path, dataset, checkpoint):
    io = ["--dataset_dir", str(dataset), "--ckpt_path", str(checkpoint), "--num_inference_steps", "1"]
    io += ["--progress_bar", "False", "--save_preview", "False"]
    wrong = _cli([*io, "--output_dir", str(tmp_path / "a"), "--hu_window", "[-1024,3071]"])
    out = wrong.communicate(timeout=300)[0]
    assert wrong.returncode == 1 and "Traceback" not in out
    assert _last_line(out) == (
        f"error: hu_window#0: the checkpoint {checkpoint} was trained with -1000.0, this run gives -1024.0; it is "
        "part of what the weights mean and comes from the checkpoint, so leave it unset (sampling settings stay free)."
    )
    debug = _cli([*io, "--output_dir", str(tmp_path / "b"), "--hu_window", "[-1024,3071]", "--debug", "True"])
    out = debug.communicate(timeout=300)[0]
    assert debug.returncode == 1 and "Traceback" in out and "RuntimeError: Failed to evaluate ConfigExpression" in out
    assert "ValueError: hu_window#0: the checkpoint" in out  # the cause, with its traceback
    # Some cases fail: exit 0, the summary last. Every case fails: exit 1, one line naming the first failure.
    cases = json.loads((dataset / "datalist.json").read_text())["test"]
    (tmp_path / "mixed").mkdir()
    mixed = {"test": [{"image": str(dataset / cases[0]["image"])}, {"pa": str(tmp_path / "nope.png")}]}
    (tmp_path / "mixed" / "datalist.json").write_text(json.dumps(mixed))
    run = _cli([*io[2:], "--dataset_dir", str(tmp_path / "mixed"), "--output_dir", str(tmp_path / "c")])
    out = run.communicate(timeout=300)[0]
    report = tmp_path / "c" / "inference_report.json"
    assert run.returncode == 0 and _last_line(out) == f"done: 1 of 2 cases in {tmp_path / 'c'}; 1 failed, see {report}"
    (tmp_path / "mixed" / "datalist.json").write_text(json.dumps({"test": mixed["test"][1:]}))
    run = _cli([*io[2:], "--dataset_dir", str(tmp_path / "mixed"), "--output_dir", str(tmp_path / "d")])
    out = run.communicate(timeout=300)[0]
    report = tmp_path / "d" / "inference_report.json"
    assert run.returncode == 1 and _last_line(out) == (
        f"error: every case failed (1); first, datalist entry 0: ValueError: {tmp_path / 'nope.png'}: no such "
        f"radiograph file. (all reasons in {report})."
    )


def test_two_runs_started_at_once_into_one_folder_do_not_replace_each_others_files(tmp_path, dataset, checkpoint):
    args = ["--dataset_dir", str(dataset), "--ckpt_path", str(checkpoint), "--output_dir", str(tmp_path / "out")]
    args += ["--num_inference_steps", "1", "--progress_bar", "False"]
    runs = [_cli(args), _cli(args)]
    outs = [r.communicate(timeout=300)[0] for r in runs]
    codes = sorted(r.returncode for r in runs)
    assert codes == [0, 1], outs
    loser = outs[[r.returncode for r in runs].index(1)]
    assert _last_line(loser) == (
        f"error: {tmp_path / 'out' / 'inference_report.json'} exists: another run wrote here or is writing now; "
        "refusing to overwrite it (pass --overwrite true to replace it, or choose another --output_dir)."
    )
    report = json.loads((tmp_path / "out" / "inference_report.json").read_text())
    assert len(report["done"]) == 3 and report["failed"] == []  # the winner's report, whole
