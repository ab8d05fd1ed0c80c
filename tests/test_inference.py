"""Inference and evaluation: sampler determinism, uncertainty, output frames, HU round trip, metrics, bad inputs."""

from __future__ import annotations

import json
import math
import os

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser, ConfigWorkflow
from monai.data import MetaTensor
from monai.transforms import Compose, ScaleIntensityRange
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from scripts.checkpoint import preset_record, save_checkpoint
from scripts.data import prepare_dataset
from scripts.engines import (
    CTInferer,
    CTOutputd,
    ct_scale_to_hu,
    orthogonal_slices,
    views_and_mask,
    volume_metrics,
    x2ct_metrics,
)

CONFIGS = os.path.join(os.path.dirname(__file__), "..", "bundle", "configs")
ENCODER = {"stem_channels": [8, 16], "patch_size": 2, "dim": 32, "heads": 2, "depth": 1, "global_dim": 32}
TINY = {
    "image_size": 16,
    "stages": [
        {"grid_size": 8, "patch_size": 2, "width": 32, "depth": 1, "heads": 2},
        {"grid_size": 16, "patch_size": 2, "width": 32, "depth": 1, "heads": 2},
    ],
    "encoder": ENCODER,
    "geometry#detector_shape": [32, 32],
    "geometry#pixel_spacing_mm": [17.6, 17.6],
    "num_inference_steps": 2,
    "progress_bar": False,
}
BASELINES = {
    "baseline_unet_3d#stages": [
        {"grid_size": 32, "decoder": "unet", "lift_channels": 4, "unet_features": [4, 4, 8, 8, 8, 4]}
    ],
    "baseline_lifted_prior#stages": [{"grid_size": 16, "decoder": "linear", "lift_channels": 4}],
    "protocol_size": 32,
    "ssim_window": 3,
}


def _parser(files=("inference.yaml",), **overrides) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([os.path.join(CONFIGS, f) for f in files])
    for key, value in {**TINY, **overrides}.items():
        parser[key] = value
    return parser


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Four small phantoms (seeds 1000+): one training case, three test cases."""
    root = tmp_path_factory.mktemp("inputs")
    prepare_dataset(
        root, synthetic_count=4, synthetic_size=32, synthetic_spacing_mm=10.0, split=(0.25, 0, 0.75), seed=1000
    )
    return root


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """Untrained tiny cascade weights in the shipped format (``model`` + ``preset``)."""
    parser = _parser()
    torch.manual_seed(0)
    network = parser.get_parsed_content("network_def")
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    save_checkpoint(path, {"model": network.state_dict()}, preset=parser.get_parsed_content("preset_record"))
    return path


def _run(tmp_path, dataset, ckpt, files=("inference.yaml",), **overrides):
    settings = {
        **TINY,
        "dataset_dir": str(dataset),
        "output_dir": str(tmp_path / "out"),
        "ckpt_path": str(ckpt),
        **overrides,
    }
    workflow = ConfigWorkflow(
        config_file=[os.path.join(CONFIGS, f) for f in files], workflow_type=None, run_id="run", **settings
    )
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    return json.loads((tmp_path / "out" / "inference_report.json").read_text())


def _network_and_views():
    parser = _parser()
    torch.manual_seed(0)
    network = parser.get_parsed_content("network_def").eval()
    views = torch.rand(1, 2, 32, 32) * 2 - 1
    return parser, network, views


def test_sampler_is_deterministic_under_a_seed():
    parser, network, views = _network_and_views()
    sampler = parser.get_parsed_content("sampler")
    first = CTInferer(sampler, num_samples=1, seed=3)(views, network)
    again = CTInferer(sampler, num_samples=1, seed=3)(views, network)
    other = CTInferer(sampler, num_samples=1, seed=4)(views, network)
    assert first.shape == (1, 2, 16, 16, 16)
    assert torch.equal(first, again)
    assert not torch.allclose(first, other)


def test_uncertainty_is_zero_for_one_sample_and_positive_for_several():
    parser, network, views = _network_and_views()
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
    preprocess = Compose(_parser().get_parsed_content("ct_preprocessing"))
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
    before = (tmp_path / "out" / "case_0000" / "case_0000_ct.nii.gz").read_bytes()
    with pytest.raises(RuntimeError) as err:
        _run(tmp_path, dataset, checkpoint)  # every case refuses: nothing already written is lost
    assert "every case failed (3)" in str(err.value.__cause__) and "refusing to overwrite" in str(err.value.__cause__)
    assert (tmp_path / "out" / "case_0000" / "case_0000_ct.nii.gz").read_bytes() == before


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
    assert list(one_view["drr_error_per_view"]) == ["pa"]
    affine = nib.load(tmp_path / "out" / "one_view" / "one_view_ct.nii.gz").affine  # the renderer's frame
    np.testing.assert_allclose(affine[:3, 3], [-150.0, -150.0, -150.0])  # 16 voxels of 20 mm centred on 0


def test_checkpoint_from_another_preset_is_refused_naming_both(tmp_path, dataset):
    parser = _parser()
    network = parser.get_parsed_content("network_def")
    other = preset_record("quick_2stage", parser["stages"], ENCODER, 320.0, True)
    path = tmp_path / "other.pt"
    save_checkpoint(path, {"model": network.state_dict()}, preset=other)
    with pytest.raises(RuntimeError) as err:
        _run(tmp_path, dataset, path)
    message = str(err.value.__cause__ or err.value)
    assert str(path) in message and "'quick_2stage'" in message and "'tiny'" in message


def test_evaluation_scores_model_baselines_and_best_constant(tmp_path, dataset, checkpoint):
    files = ("inference.yaml", "evaluate.yaml")
    parser = _parser(files, **BASELINES)
    baselines = tmp_path / "baselines"
    for name, key in (("unet_3d", "baseline_unet_3d"), ("lifted_prior", "baseline_lifted_prior")):
        network = parser.get_parsed_content(f"{key}#network_def")
        save_checkpoint(
            baselines / f"{name}.pt", {"model": network.state_dict()}, preset=parser.get_parsed_content(f"{key}#preset")
        )
    _run(tmp_path, dataset, checkpoint, files, baselines_dir=str(baselines), **BASELINES)
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["cases"] == 3 and list(metrics["mean"]) == ["model", "best_constant", "lifted_prior", "unet_3d"]
    for scores in metrics["mean"].values():
        assert set(scores) == {"psnr", "ssim", "mae_hu", "drr_error", "x2ct_psnr", "x2ct_ssim"}
    # The best constant is the target's mean: its PSNR is set by the target's standard deviation in the window.
    case = json.loads((dataset / "datalist.json").read_text())["test"][0]
    target = Compose(parser.get_parsed_content("ct_preprocessing"))({"image": str(dataset / case["image"])})["image"]
    std = float(target.clamp(-1000, 2000).double().std(unbiased=False))
    assert metrics["per_case"]["case_0000"]["best_constant"]["psnr"] == pytest.approx(
        20 * math.log10(3000 / std), abs=0.05
    )
    assert "x2ct_psnr" in metrics["definitions"]
