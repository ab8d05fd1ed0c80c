"""The YAML preprocessing chain: CT -> RAS, isotropic, body-centred FOV, on-the-fly X-rays, [-1, 1], stage grids."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
import torch
from conftest import SMALL_STAGES, config_parser
from monai.bundle import ConfigParser
from monai.data import MetaTensor
from PIL import Image
from scripts.data import (
    CropOrPadToFieldOfViewd,
    RenderXrayd,
    prepare_dataset,
    radiograph_to_network,
    read_radiograph,
    synthetic_chest_ct,
    write_nifti,
)
from scripts.physics import DRRRenderer, ProjectionGeometry, RadiographComposer, centred_affine


def _parser(dataset_dir, **overrides) -> ConfigParser:
    return config_parser("train.yaml", dataset_dir=str(dataset_dir), **overrides)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("ds")
    prepare_dataset(root, synthetic_count=3, synthetic_size=40, synthetic_spacing_mm=9.0)
    return root


def test_preprocessing_yields_training_pairs(prepared):
    parser = _parser(
        prepared,
        stages=[dict(SMALL_STAGES[0], grid_size=16), dict(SMALL_STAGES[1], grid_size=32)],  # image_size 32
        **{"geometry#detector_shape": [32, 32], "geometry#pixel_spacing_mm": [17.6, 17.6]},
    )
    dataset = parser.get_parsed_content("train#dataset")
    item = dataset[0]
    image, xray = item["image"], item["xray"]
    assert image.shape == (1, 32, 32, 32) and item["image_16"].shape == (1, 16, 16, 16)
    assert xray.shape == (2, 32, 32) and xray.dtype == torch.float32
    # Physical frame kept: 320 mm / 32 voxels, RAS.
    np.testing.assert_allclose(np.diag(image.affine.numpy())[:3], [10.0] * 3, atol=1e-6)
    np.testing.assert_allclose(np.diag(item["image_16"].affine.numpy())[:3], [20.0] * 3, atol=1e-6)
    assert float(image.min()) == -1.0 and float(image.max()) <= 1.0  # air at -1 on the fixed HU window
    # Rays that miss the body are air (-1): in the lateral view, in front of the chest and behind the back (the PA's
    # 321 mm at the isocentre can be spanned by the shoulders); the body attenuates (above -1) with a physical,
    # unclipped scale.
    assert float(xray[1].min()) == pytest.approx(-1.0, abs=1e-4)
    assert -0.8 < float(xray.max()) < 0.6


def test_fov_crop_centres_the_body_and_pads_with_air():
    hu = torch.full((1, 40, 30, 20), -1000.0)
    hu[0, 25:35, 5:15, 5:15] = 40.0  # an off-centre body
    img = MetaTensor(hu, affine=torch.diag(torch.tensor([4.0, 4.0, 4.0, 1.0], dtype=torch.float64)))
    out = CropOrPadToFieldOfViewd(keys="image", fov_mm=100.0)({"image": img})["image"]
    assert out.shape == (1, 25, 25, 25)
    body = torch.nonzero(out[0] > -500).float()
    centre = (body.min(0).values + body.max(0).values) / 2
    torch.testing.assert_close(centre, torch.full((3,), 12.0), atol=1.0, rtol=0)
    assert float(out.min()) == -1000.0  # padding is air
    # The voxel keeps its world position: index (0,0,0) of the output is world (4 * start) mm.
    # Exactly: the body's bounding-box centre (input index 29.5, 9.5, 9.5) sits half a voxel from the output's
    # centre (12): output index 0 is input index floor(29.5 - 12 + 0.5) = 18 (x) and -2 (y, z), and every voxel
    # keeps its world position.
    np.testing.assert_allclose(out.affine.numpy()[:3, 3], [4.0 * 18, 4.0 * -2, 4.0 * -2])
    torch.testing.assert_close(out[0, 7:17, 7:17, 7:17].as_tensor(), img[0, 25:35, 5:15, 5:15].as_tensor())


def _composer(detector=24):
    g = ProjectionGeometry(views=("pa", "lateral"), detector_shape=(detector, detector), pixel_spacing_mm=25.0)
    return RadiographComposer(DRRRenderer(g), mu_water=0.0206, max_line_integral=10.0)


def _ct(seed=0):
    hu, _ = synthetic_chest_ct(32, 10.0, seed=seed)
    return MetaTensor(torch.from_numpy(hu)[None], affine=torch.from_numpy(centred_affine((32,) * 3, (10.0,) * 3)))


def test_render_transform_is_the_composer_and_augmentations_are_seeded():
    composer, ct = _composer(), _ct()
    clean = RenderXrayd(keys="image", composer=composer)({"image": ct})["xray"]
    torch.testing.assert_close(clean, composer(ct.as_tensor()[None], (10.0, 10.0, 10.0))[0])
    noisy_t = RenderXrayd(
        keys="image",
        composer=composer,
        photon_count=1e4,
        gaussian_noise_std=0.01,
        blur_sigma_px=0.8,
        pose_jitter_deg=3.0,
        pose_jitter_mm=5.0,
    )
    noisy_t.set_random_state(seed=1)
    a = noisy_t({"image": ct})["xray"]
    noisy_t.set_random_state(seed=1)
    b = noisy_t({"image": ct})["xray"]
    torch.testing.assert_close(a, b)  # reproducible under a seed
    diff = (a - clean).abs()
    assert 0.001 < float(diff.mean()) < 0.1  # perturbed, but the same radiograph
    assert torch.corrcoef(torch.stack([a.flatten(), clean.flatten()]))[0, 1] > 0.97
    assert float(ct.min()) == -1000.0  # the CT target itself is untouched


def test_pose_jitter_rotates_about_the_isocentre_and_pads_with_air():
    composer = _composer()
    affine = torch.from_numpy(centred_affine((32,) * 3, (10.0,) * 3))
    # A dense ball at the isocentre: any rotation about the isocentre leaves its DRR unchanged.
    ball = torch.full((1, 32, 32, 32), -1000.0)
    r = torch.linspace(-15.5, 15.5, 32)
    ball[0][(r[:, None, None] ** 2 + r[None, :, None] ** 2 + r[None, None, :] ** 2) <= 36] = 1000.0
    ct = MetaTensor(ball, affine=affine)
    rotate = RenderXrayd(keys="image", composer=composer, pose_jitter_deg=20.0)
    rotate.set_random_state(seed=0)
    clean = RenderXrayd(keys="image", composer=composer)({"image": ct})["xray"]
    rotated = rotate({"image": ct})["xray"]
    torch.testing.assert_close(rotated, clean, atol=0.08, rtol=0)  # only the ball's rim is resampled
    grid = torch.arange(24.0)
    for image in (rotated, clean):  # the ball's shadow stays centred on the detector
        weight = image + 1.0
        rows = (weight.sum(-1) * grid).sum(-1) / weight.sum((-1, -2))
        torch.testing.assert_close(rows, torch.full((2,), 11.5), atol=0.05, rtol=0)
    # Water filling the grid: a shift brings air in, so the total attenuation drops (water padding would not).
    water = MetaTensor(torch.zeros(1, 32, 32, 32), affine=affine)
    shift = RenderXrayd(keys="image", composer=composer, pose_jitter_mm=40.0)
    shift.set_random_state(seed=0)
    moved = (shift({"image": water})["xray"] + 1).sum()
    still = (RenderXrayd(keys="image", composer=composer)({"image": water})["xray"] + 1).sum()
    assert moved < 0.97 * still
    anisotropic = MetaTensor(torch.zeros(1, 8, 8, 8), affine=torch.diag(torch.tensor([2.0, 10.0, 10.0, 1.0])))
    with pytest.raises(ValueError, match="pose jitter needs isotropic voxels"):
        shift({"image": anisotropic})


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"photon_count": 0.0}, "photon_count must be a positive"),
        ({"blur_sigma_px": -1.0}, "blur_sigma_px must be a non-negative"),
        ({"prob": 2.0}, r"prob must be in \[0, 1\]"),
    ],
)
def test_render_transform_bad_config(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RenderXrayd(keys="image", composer=_composer(), **kwargs)


def _drr_pa(detector=24):
    composer = _composer(detector)
    return composer.line_integrals(_ct().as_tensor()[None], (10.0, 10.0, 10.0))[0, 0].numpy(), composer


def test_png_radiograph_maps_onto_the_network_scale(tmp_path):
    drr, composer = _drr_pa()
    png = (drr / drr.max() * 65535).astype(np.uint16)
    Image.fromarray(png).save(tmp_path / "pa.png")
    radiograph = read_radiograph(tmp_path / "pa.png")
    assert radiograph.pixel_pitch_mm is None and radiograph.pixels.shape == (24, 24)
    x = radiograph_to_network(radiograph, composer.renderer.geometry, 10.0, line_integral_range=(0.5, 4.0))
    assert x.shape == (24, 24)
    corr = np.corrcoef(x.numpy().ravel(), drr.ravel())[0, 1]
    assert corr > 0.999  # a linear, order-preserving mapping of the same image
    # The 1st/99th percentiles land exactly on the anchor line integrals (network scale 2p/10 - 1).
    np.testing.assert_allclose(np.percentile(x.numpy(), [1, 99]), [2 * 0.5 / 10 - 1, 2 * 4.0 / 10 - 1], atol=1e-5)
    flat = read_radiograph(tmp_path / "pa.png").__class__(np.full((8, 8), 3.0, np.float32))
    with pytest.raises(ValueError, match="radiograph has no contrast"):
        radiograph_to_network(flat, composer.renderer.geometry, 10.0)


def _dicom_dx(path, pixels, modality="DX", photometric="MONOCHROME2", pitch=(1.0, 1.0), magnification=None):
    ds = pydicom.Dataset()
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    ds.SOPClassUID, ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PhotometricInterpretation = modality, photometric
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 1, 16, 16, 15, 0
    ds.ImagerPixelSpacing = list(pitch)
    if magnification is not None:
        ds.EstimatedRadiographicMagnificationFactor = magnification
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def test_dicom_dx_uses_pitch_and_photometric_interpretation(tmp_path):
    drr, composer = _drr_pa()
    geometry = composer.renderer.geometry  # 25 mm detector pitch, magnification 949/541
    # The same radiograph stored at twice the resolution, MONOCHROME1 (attenuation dark), with the training
    # magnification in its header: pitch 12.5 mm on the imager is 12.5 / 1.754 mm at the patient.
    fine = np.kron(drr, np.ones((2, 2)))
    stored = (65535 * (1.0 - fine / fine.max())).astype(np.uint16)
    m = geometry.magnification
    path = _dicom_dx(tmp_path / "pa.dcm", stored, photometric="MONOCHROME1", pitch=(12.5, 12.5), magnification=m)
    radiograph = read_radiograph(path)
    assert radiograph.pixel_pitch_mm == (12.5, 12.5) and radiograph.pixels.shape == (48, 48)
    assert radiograph.magnification == pytest.approx(m)
    x = radiograph_to_network(radiograph, geometry, 10.0)
    assert x.shape == (24, 24)
    assert np.corrcoef(x.numpy().ravel(), drr.ravel())[0, 1] > 0.999  # inverted back, resampled to the detector


def test_radiograph_magnification_sets_the_anatomy_size(tmp_path):
    geometry = _composer().renderer.geometry  # 25 mm on the detector = 14.25 mm at the patient
    # A 40 x 40 image of 5 mm imager pitch with a 20-pixel bright square, taken at magnification 1.1:
    # the square is 20 * 5 / 1.1 = 90.9 mm at the patient, i.e. 90.9 / 14.25 = 6.4 detector pixels.
    image = np.zeros((40, 40), np.uint16)
    image[10:30, 10:30] = 60000
    path = _dicom_dx(tmp_path / "sq.dcm", image, pitch=(5.0, 5.0), magnification=1.1)
    x = radiograph_to_network(read_radiograph(path), geometry, 10.0, line_integral_range=(0.0, 5.0))
    width = float(((x[12] + 1.0) / 2.0 * 10.0 / 5.0).sum())  # bright row profile in units of the square's value
    assert width == pytest.approx(20 * 5.0 / 1.1 / (25.0 / geometry.magnification), abs=0.5)


def test_case_with_one_view_loads_with_a_mask(tmp_path):
    from scripts.data import LoadRadiographsd

    drr, composer = _drr_pa()
    Image.fromarray((drr / drr.max() * 65535).astype(np.uint16)).save(tmp_path / "pa.png")
    loader = LoadRadiographsd(keys=["pa", "lateral"], geometry=composer.renderer.geometry, max_line_integral=10.0)
    out = loader({"pa": str(tmp_path / "pa.png"), "lateral": None})
    # The PA anchors are the documented defaults for that view.
    np.testing.assert_allclose(np.percentile(out["xray"][0].numpy(), 99), 2 * 5.6 / 10 - 1, atol=1e-4)
    assert out["xray"].shape == (2, 24, 24) and out["xray_mask"].tolist() == [True, False]
    assert float(out["xray"][1].abs().sub(1.0).abs().max()) == 0.0  # the missing lateral is an empty detector
    with pytest.raises(ValueError, match="no radiograph given"):
        loader({"pa": None})
    with pytest.raises(ValueError, match=r"keys: \['ap'\] are not views of the geometry"):
        LoadRadiographsd(keys=["ap"], geometry=composer.renderer.geometry, max_line_integral=10.0)


def test_bad_radiographs_are_named(tmp_path):
    ct = _dicom_dx(tmp_path / "ct.dcm", np.zeros((8, 8)), modality="CT")
    with pytest.raises(ValueError, match="ct.dcm: DICOM modality 'CT' is not a radiograph"):
        read_radiograph(ct)
    red = np.stack([np.full((8, 8), 255, np.uint8)] + [np.zeros((8, 8), np.uint8)] * 2, -1)  # truly coloured
    Image.fromarray(red).save(tmp_path / "rgb.png")
    with pytest.raises(ValueError, match=r"rgb.png: colour image \(mode RGB, channels differ by up to 255\)"):
        read_radiograph(tmp_path / "rgb.png")
    (tmp_path / "junk.dcm").write_bytes(b"junk" * 20)
    with pytest.raises(ValueError, match="junk.dcm: not a readable DICOM file"):
        read_radiograph(tmp_path / "junk.dcm")
    with pytest.raises(ValueError, match="nothing.png: no such radiograph file"):
        read_radiograph(tmp_path / "nothing.png")
    write_nifti(tmp_path / "vol.nii.gz", np.zeros((4, 4, 4), np.float32), np.eye(4))
    with pytest.raises(ValueError, match="vol.nii.gz: expected a single 2D radiograph"):
        read_radiograph(tmp_path / "vol.nii.gz")
