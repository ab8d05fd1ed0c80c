"""Radiographs as modalities and PACS send them: DICOM DX/CR/SC, grey-scale pipeline, masks, compression, pitch,
view and orientation, PNG/JPEG exports; real files (pydicom's bundled test files) and files derived from them."""

from __future__ import annotations

import io
import os
from dataclasses import replace

import numpy as np
import pydicom
import pytest
import torch
from conftest import CHEST
from PIL import Image, ImageDraw, ImageFont
from pydicom.data import get_testdata_files
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels import get_decoder, get_encoder
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)
from scripts.data import (
    LoadRadiographsd,
    dicom_radiograph,
    is_radiograph_file,
    map_radiograph,
    radiograph_to_network,
    read_radiograph,
)
from scripts.physics import ProjectionGeometry, ellipsoid_line_integrals

DX, CR, SC = "1.2.840.10008.5.1.4.1.1.1.1", "1.2.840.10008.5.1.4.1.1.1", "1.2.840.10008.5.1.4.1.1.7"
#: The mapping geometry of the tests: 24 x 24 detector of 25 mm, magnification 949/541 (14.25 mm at the patient).
GEOMETRY = ProjectionGeometry(views=("pa", "lateral"), detector_shape=(24, 24), pixel_spacing_mm=25.0)
NOT_A_RADIOGRAPH = (
    "is not a radiograph; expected one of ['DX', 'CR', 'DR', 'RG'] or a grey Secondary Capture (Modality OT/SC)."
)


def _needs(uid, coder=get_decoder):
    """Skip unless pydicom has a working plugin for ``uid`` (the decoder pins of setup.cfg, the test encoders)."""
    return pytest.mark.skipif(not coder(uid).is_available, reason=f"no pydicom plugin for {uid.name}")


def _bundled(name: str) -> str:
    """A pydicom test file that ships with pydicom (never downloaded)."""
    found = [f for f in get_testdata_files() if os.path.basename(f) == name]
    if not found:
        pytest.skip(f"{name} is not among pydicom's bundled test files")
    return found[0]


def _drr(view: int = 0, shape=(48, 48), pitch_mm=12.0) -> np.ndarray:
    """Exact line integrals of the conftest chest phantom in a PA (0) or lateral (1) view, ``(rows, cols)``."""
    g = ProjectionGeometry(views=("pa", "lateral"), detector_shape=shape, pixel_spacing_mm=pitch_mm)
    rays = g.rays()
    return ellipsoid_line_integrals(CHEST, rays.origins, rays.directions, rays.lengths)[0][view].float().numpy()


def _write(path, pixels, modality="DX", sop=DX, photometric="MONOCHROME2", bits=16, **tags) -> str:
    """An uncompressed single-frame grey DICOM radiograph with the given header ``tags``."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = sop, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta, ds.SOPClassUID, ds.SOPInstanceUID = meta, sop, meta.MediaStorageSOPInstanceUID
    if modality is not None:
        ds.Modality = modality
    ds.PhotometricInterpretation, ds.SamplesPerPixel = photometric, 1
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = (8 if bits <= 8 else 16), bits, bits - 1, 0
    for key, value in tags.items():
        setattr(ds, key, value)
    ds.PixelData = np.asarray(pixels).astype(np.uint8 if bits <= 8 else np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return str(path)


def _stored(p: np.ndarray, scale=6000.0) -> np.ndarray:
    """Line integrals as 16-bit MONOCHROME2 stored values (attenuation bright)."""
    return np.rint(1000 + scale * p).astype(np.uint16)


def _anchors(mapped) -> tuple[float, float]:
    """The image values at the low/high anchor percentiles, from the mapping's last note."""
    low, high = mapped.notes[-1].split(" = ")[1].split(" -> ")[0].split("/")
    return float(low), float(high)


def _lut(descriptor, data) -> Dataset:
    item = Dataset()
    item.add_new(0x00283002, "US", list(descriptor))  # LUTDescriptor (entries, first value, bits)
    item.add_new(0x00283006, "US", [int(v) for v in data])  # LUTData
    return item


# ---- which objects --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, modality",
    [("CT_small.dcm", "CT"), ("MR_small.dcm", "MR"), ("MR_small_RLE.dcm", "MR"), ("rtdose.dcm", "RTDOSE"),
     ("JPEG2000.dcm", "NM"), ("examples_palette.dcm", "US")],
)  # fmt: skip
def test_bundled_non_radiographs_are_refused_by_name(name, modality):
    path = _bundled(name)
    assert not is_radiograph_file(path)
    with pytest.raises(ValueError) as err:
        read_radiograph(path, view="pa")
    assert str(err.value) == f"{path}: DICOM modality {modality!r} {NOT_A_RADIOGRAPH}"


def test_bundled_colour_and_multiframe_images_are_refused():
    rle = _bundled("SC_rgb_rle.dcm")  # lossless RGB colour bars, Secondary Capture OT
    with pytest.raises(ValueError) as err:
        read_radiograph(rle)
    assert str(err.value) == (
        f"{rle}: colour image (PhotometricInterpretation RGB, channels differ by up to 255); expected a grayscale "
        "radiograph."
    )
    frames = _bundled("SC_rgb_rle_2frame.dcm")
    with pytest.raises(ValueError) as err:
        read_radiograph(frames)
    assert str(err.value) == f"{frames}: expected a single 2D radiograph, got 2 frames."


def test_bundled_grey_secondary_captures_are_read():
    path = _bundled("image_dfl.dcm")  # Secondary Capture, Modality OT, 8-bit grey, deflated transfer syntax
    assert is_radiograph_file(path)
    radiograph = read_radiograph(path, view="pa")
    np.testing.assert_array_equal(radiograph.pixels, pydicom.dcmread(path).pixel_array.astype(np.float32))
    assert radiograph.pixel_pitch_mm is None and radiograph.warnings == ()
    assert radiograph.notes[:2] == (
        "DICOM SC (Secondary Capture Image Storage), 512x512, 8-bit, MONOCHROME2, Deflated Explicit VR Little Endian",
        "Secondary Capture (conversion WSD): assumed a chest film as displayed",
    )
    mapped = map_radiograph(radiograph, GEOMETRY, 10.0)
    assert mapped.warnings[-1].startswith("no pixel pitch: the whole image (512x512) was resized to the 24x24 detector")


def test_real_computed_radiograph_goes_through_the_grey_scale_pipeline():
    path = _bundled("6278")  # Agfa CR, MONOCHROME1 12-bit, rescale 0.684/200, window 1600/2800, AP, ['L', 'F']
    ds = pydicom.dcmread(path)
    radiograph = read_radiograph(path, view="pa")
    # By hand: rescale, then the LINEAR window (PS3.3 C.11.2.1.2.1) onto the rescaled 12-bit range, then invert.
    v = ds.pixel_array * 0.684 + 200.0
    y_min, y_max = 200.0, 4095 * 0.684 + 200.0
    voi = np.clip(((v - 1599.5) / 2799.0 + 0.5), 0.0, 1.0) * (y_max - y_min) + y_min
    expected = voi.min() + voi.max() - voi
    np.testing.assert_allclose(radiograph.pixels, expected, rtol=1e-6)
    assert radiograph.notes == (
        "DICOM CR (Computed Radiography Image Storage), 16x16, 12-bit, MONOCHROME1, Explicit VR Little Endian",
        "rescale slope 0.684, intercept 200",
        "VOI window centre 1600, width 2800 (LINEAR)",
        "MONOCHROME1: inverted so that attenuation is bright",
        "pitch 0.1 x 0.1 mm (ImagerPixelSpacing)",
        "PatientOrientation ['L', 'F']: already in the training convention",
    )
    assert radiograph.warnings == (
        "AP view: the network was trained on PA views; the heart looks larger in an AP film",
    )
    fine = ProjectionGeometry(views=("pa",), detector_shape=(8, 8), pixel_spacing_mm=0.3)
    mapped = map_radiograph(radiograph, fine, 10.0)
    assert "magnification 1.15 assumed (AP chest)" in mapped.notes  # a bedside AP, not the PA's 1.1
    lateral = _bundled("6154")  # ViewPosition LL
    with pytest.raises(ValueError) as err:
        read_radiograph(lateral, view="pa")
    assert str(err.value) == f"{lateral}: ViewPosition 'LL' is a lateral view; the file was given as the 'pa' view."
    assert read_radiograph(lateral, view="lateral").warnings == (
        "PatientOrientation ['L', 'F'] does not fit a lateral view; orientation not changed",
    )


@pytest.mark.parametrize("bits, kwargs, message", [
    (16, {"BitsStored": 4, "HighBit": 3}, "BitsStored 4; expected an 8- to 16-bit grey radiograph."),
    (16, {"PhotometricInterpretation": "PALETTE COLOR"},
     "colour image (PhotometricInterpretation PALETTE COLOR); expected a grayscale radiograph."),
    (16, {"Modality": "MG", "SOPClassUID": "1.2.840.10008.5.1.4.1.1.1.2"}, f"DICOM modality 'MG' {NOT_A_RADIOGRAPH}"),
    (16, {"Modality": "CT", "SOPClassUID": SC}, f"DICOM modality 'CT' {NOT_A_RADIOGRAPH}"),  # a CT screenshot
])  # fmt: skip
def test_header_errors_name_the_file(tmp_path, bits, kwargs, message):
    path = _write(tmp_path / "bad.dcm", np.zeros((8, 8)), bits=bits, **kwargs)
    with pytest.raises(ValueError) as err:
        read_radiograph(path)
    assert str(err.value) == f"{path}: {message}"


# ---- grey-scale pipeline --------------------------------------------------------------------------------------------


def test_monochrome1_is_the_inverse_of_monochrome2_after_mapping(tmp_path):
    stored = _stored(_drr())
    m2 = _write(tmp_path / "m2.dcm", stored, ImagerPixelSpacing=[12.0, 12.0])
    m1 = _write(tmp_path / "m1.dcm", 65535 - stored, photometric="MONOCHROME1", ImagerPixelSpacing=[12.0, 12.0])
    a, b = (map_radiograph(read_radiograph(p, view="pa"), GEOMETRY, 10.0) for p in (m2, m1))
    torch.testing.assert_close(a.image, b.image, atol=1e-5, rtol=0)
    assert "MONOCHROME1: inverted so that attenuation is bright" in b.notes
    # MONOCHROME2 with PresentationLUTShape INVERSE is displayed inverted too.
    inv = _write(tmp_path / "inv.dcm", 65535 - stored, ImagerPixelSpacing=[12.0, 12.0], PresentationLUTShape="INVERSE")
    torch.testing.assert_close(radiograph_to_network(read_radiograph(inv), GEOMETRY, 10.0), a.image, atol=1e-5, rtol=0)


def test_window_and_voi_lut_sequence_are_applied_as_specified(tmp_path):
    raw = (np.arange(40 * 50).reshape(40, 50) * 2 % 4096).astype(np.uint16)
    window = _write(tmp_path / "w.dcm", raw, bits=12, WindowCenter=2000, WindowWidth=1001)
    # LINEAR (PS3.3 C.11.2.1.2.1): ((x - (c - 0.5)) / (w - 1) + 0.5) onto the 12-bit output range, clipped.
    expected = np.clip((raw - 1999.5) / 1000.0 + 0.5, 0.0, 1.0) * 4095.0
    radiograph = read_radiograph(window)
    np.testing.assert_allclose(radiograph.pixels, expected, rtol=0, atol=1e-3)
    assert "VOI window centre 2000, width 1001 (LINEAR)" in radiograph.notes
    exact = _write(tmp_path / "e.dcm", raw, bits=12, WindowCenter=2000, WindowWidth=1000, VOILUTFunction="LINEAR_EXACT")
    np.testing.assert_allclose(
        read_radiograph(exact).pixels, np.clip((raw - 2000.0) / 1000.0 + 0.5, 0, 1) * 4095.0, rtol=0, atol=1e-3
    )
    # A VOI LUT sequence wins over the window (pydicom's default); a square-root tone curve.
    lut = np.sqrt(np.arange(4096) / 4095.0) * 65535.0
    seq = _write(
        tmp_path / "s.dcm", raw, bits=12, WindowCenter=2000, WindowWidth=1001, VOILUTSequence=[_lut((4096, 0, 16), lut)]
    )
    radiograph = read_radiograph(seq)
    np.testing.assert_array_equal(radiograph.pixels, lut.astype(np.uint16)[raw].astype(np.float32))
    assert "VOI LUT sequence item 1 of 1 (4096 entries)" in radiograph.notes
    # A window outside all the pixel values would leave nothing: not applied, and said so.
    off = _write(tmp_path / "o.dcm", raw, bits=12, WindowCenter=60000, WindowWidth=10)
    radiograph = read_radiograph(off)
    np.testing.assert_array_equal(radiograph.pixels, raw.astype(np.float32))
    assert radiograph.warnings == (
        "VOI window centre 60000, width 10 (LINEAR) leaves the exposed field without contrast; not applied",
    )


def test_modality_lut_sequence_and_rescale(tmp_path):
    raw = (np.arange(32 * 32).reshape(32, 32) % 1024).astype(np.uint16)
    table = (np.arange(1024) ** 2 // 16).astype(np.uint16)  # a non-linear modality LUT, 16-bit output
    path = _write(tmp_path / "m.dcm", raw, bits=10, ModalityLUTSequence=[_lut((1024, 0, 16), table)])
    radiograph = read_radiograph(path)
    np.testing.assert_array_equal(radiograph.pixels, table[raw].astype(np.float32))
    assert "modality LUT sequence (1024 entries)" in radiograph.notes
    rescaled = _write(tmp_path / "r.dcm", raw, bits=10, RescaleSlope=2.5, RescaleIntercept=-100)
    np.testing.assert_allclose(read_radiograph(rescaled).pixels, raw * 2.5 - 100.0)


@pytest.mark.parametrize("bits", [8, 10, 12, 14, 15, 16])
def test_bit_depths_map_the_same(tmp_path, bits):
    p = _drr()
    stored = np.rint(p / p.max() * (2**bits - 1))
    path = _write(tmp_path / "b.dcm", stored, bits=bits, ImagerPixelSpacing=[12.0, 12.0])
    x = radiograph_to_network(read_radiograph(path), GEOMETRY, 10.0)
    reference = radiograph_to_network(
        read_radiograph(_write(tmp_path / "ref.dcm", _stored(p), ImagerPixelSpacing=[12.0, 12.0])), GEOMETRY, 10.0
    )
    torch.testing.assert_close(x, reference, atol=0.02 if bits == 8 else 2e-3, rtol=0)


def test_for_processing_linear_exposure_is_log_transformed(tmp_path):
    p = _drr()
    exposure = np.rint(60000 * np.exp(-p))  # raw detector signal: I0 exp(-p)
    tags = {
        "PresentationIntentType": "FOR PROCESSING",
        "PixelIntensityRelationship": "LIN",
        "ImagerPixelSpacing": [12.0, 12.0],
    }
    radiograph = read_radiograph(_write(tmp_path / "raw.dcm", exposure, **tags))
    np.testing.assert_allclose(radiograph.pixels + np.log(60000.0), p, atol=2e-3)  # -log(I) = p - log(I0)
    assert "FOR PROCESSING, linear in exposure: -log(exposure) used, no VOI" in radiograph.notes


# ---- what is not anatomy ------------------------------------------------------------------------------------------


def test_padding_is_left_out_of_the_anchors_and_filled_as_no_attenuation(tmp_path):
    stored = _stored(_drr(shape=(32, 32), pitch_mm=12.0))
    padded = np.full((64, 64), 0, np.uint16)  # 16 pixels of padding value 0 around it (a crop to the plate)
    padded[16:48, 16:48] = stored
    padded[16:48, 16:20][stored[:, :4] < 1] = 1  # no anatomy pixel takes the padding value
    # 12.5 mm at the training magnification is half a detector pixel at the patient: 2 x 2 pixels per detector pixel.
    tags = {"ImagerPixelSpacing": [12.5, 12.5], "EstimatedRadiographicMagnificationFactor": GEOMETRY.magnification}
    a = map_radiograph(read_radiograph(_write(tmp_path / "a.dcm", stored, **tags)), GEOMETRY, 10.0)
    b_read = read_radiograph(_write(tmp_path / "b.dcm", padded, PixelPaddingValue=0, **tags))
    assert "pixel padding 0..0: 75.0% of the pixels masked" in b_read.notes
    b = map_radiograph(b_read, GEOMETRY, 10.0)
    # The anatomy lands on the same detector pixels with the same anchors: the images are equal, padding is -1.
    torch.testing.assert_close(a.image, b.image, atol=1e-5, rtol=0)
    assert a.notes[-1] == b.notes[-1] and a.notes[-1].startswith("anchors: percentiles 1/99 = ")
    # A padding range (PixelPaddingRangeLimit) masks every value between the two.
    ranged = read_radiograph(_write(tmp_path / "c.dcm", padded, PixelPaddingValue=0, PixelPaddingRangeLimit=5))
    assert ranged.mask.sum() == (padded > 5).sum()


def test_shutters_mask_their_outside(tmp_path):
    p = _drr(shape=(40, 40), pitch_mm=9.6)
    stored = _stored(p)
    rows, cols = np.mgrid[1:41, 1:41]  # 1-based, as the shutter tags count
    field = (cols >= 6) & (cols <= 35) & (rows >= 4) & (rows <= 37)
    shuttered = np.where(field, stored, 65535)  # outside the shutter: unexposed plate, displayed white
    tags = {
        "ShutterShape": "RECTANGULAR",
        "ShutterLeftVerticalEdge": 6,
        "ShutterRightVerticalEdge": 35,
        "ShutterUpperHorizontalEdge": 4,
        "ShutterLowerHorizontalEdge": 37,
        "ImagerPixelSpacing": [9.6, 9.6],
    }
    radiograph = read_radiograph(_write(tmp_path / "rect.dcm", shuttered, **tags))
    np.testing.assert_array_equal(radiograph.mask, field)
    assert "shutter RECTANGULAR: 36.3% of the pixels masked" in radiograph.notes
    x = radiograph_to_network(radiograph, GEOMETRY, 10.0)
    # The same anatomy without the white frame, its outside zeroed (no attenuation) is the same image: the frame
    # does not set the 99th percentile anchor.
    y = radiograph_to_network(
        read_radiograph(_write(tmp_path / "ref.dcm", stored, ImagerPixelSpacing=[9.6, 9.6], **{
            "ShutterShape": "RECTANGULAR", "ShutterLeftVerticalEdge": 6, "ShutterRightVerticalEdge": 35,
            "ShutterUpperHorizontalEdge": 4, "ShutterLowerHorizontalEdge": 37})), GEOMETRY, 10.0)  # fmt: skip
    torch.testing.assert_close(x, y, atol=1e-5, rtol=0)
    circle = {
        "ShutterShape": ["RECTANGULAR", "CIRCULAR"],
        "CenterOfCircularShutter": [20, 21],
        "RadiusOfCircularShutter": 15,
    }
    radiograph = read_radiograph(_write(tmp_path / "circ.dcm", shuttered, **{**tags, **circle}))
    disc = (rows - 20) ** 2 + (cols - 21) ** 2 <= 15**2
    np.testing.assert_array_equal(radiograph.mask, field & disc)  # the exposed field is the intersection
    polygon = {"CollimatorShape": "POLYGONAL", "VerticesOfThePolygonalCollimator": [1, 1, 1, 40, 40, 1]}  # row, col
    radiograph = read_radiograph(_write(tmp_path / "poly.dcm", stored, **polygon))
    np.testing.assert_array_equal(radiograph.mask, rows + cols <= 41)  # the triangle above the anti-diagonal
    assert "collimator POLYGONAL: 48.8% of the pixels masked" in radiograph.notes
    broken = read_radiograph(_write(tmp_path / "broken.dcm", stored, ShutterShape="CIRCULAR"))
    assert broken.mask is None and broken.warnings == (
        "ShutterShape CIRCULAR: its geometry tags are missing or malformed; not applied",
    )


def test_constant_bright_borders_are_found_without_tags_and_dark_ones_are_kept(tmp_path):
    stored = _stored(_drr(shape=(40, 40), pitch_mm=9.6))
    framed = stored.copy()
    framed[:5], framed[:, -3:] = 65535, 65535  # burned-in electronic shutter, displayed white
    framed[10, -3] = 1000  # a label in the band does not stop it (95 % of a row suffices)
    radiograph = read_radiograph(_write(tmp_path / "f.dcm", framed))
    expected = np.ones((40, 40), bool)
    expected[:5], expected[:, -3:] = False, False
    np.testing.assert_array_equal(radiograph.mask, expected)
    assert "constant bright border masked (top 5, bottom 0, left 0, right 3 pixels)" in radiograph.notes
    dark = stored.copy()
    dark[:5] = 0  # black: cannot be told from saturated air, kept
    assert read_radiograph(_write(tmp_path / "d.dcm", dark)).mask is None


def test_burned_in_markers_do_not_set_the_anchors(tmp_path):
    p = _drr(shape=(64, 64), pitch_mm=9.0)
    stored = _stored(p)
    marked = stored.copy()
    text = Image.new("1", (64, 64))
    ImageDraw.Draw(text).rectangle((20, 36, 29, 46), fill=1)  # a 10 x 11 "R" marker plate: 2.7 % of the image
    marked[np.asarray(text)] = 65535  # saturated, far above the brightest anatomy
    tags = {"ImagerPixelSpacing": [9.0, 9.0]}
    radiograph = read_radiograph(_write(tmp_path / "m.dcm", marked, **tags))
    np.testing.assert_array_equal(radiograph.markers, np.asarray(text))
    assert "burned-in markers (2.69% of the field, saturated) left out of the anchors" in radiograph.notes
    clean = read_radiograph(_write(tmp_path / "a.dcm", stored, **tags))
    # The anchors are those of the clean image over the same pixels (the marker's pixels left out of both) ...
    anchors = [
        _anchors(map_radiograph(r, GEOMETRY, 10.0)) for r in (replace(clean, markers=np.asarray(text)), radiograph)
    ]
    assert anchors[0] == anchors[1]
    # ... where plain percentiles would have been set by the marker, which covers more than 1 % of the image.
    anchors.append(_anchors(map_radiograph(replace(radiograph, markers=None), GEOMETRY, 10.0)))
    assert anchors[2][1] > 60000 > 1.5 * anchors[0][1] and anchors[2][0] == anchors[0][0]


# ---- compression --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["MR_small_RLE.dcm", "MR_small_jpeg_ls_lossless.dcm", "MR_small_jp2klossless.dcm"])
def test_bundled_lossless_compressed_files_relabelled_as_dx_decode_exactly(tmp_path, name):
    source = pydicom.dcmread(_bundled(name))
    if not get_decoder(source.file_meta.TransferSyntaxUID).is_available:
        pytest.skip(f"no decoder for {source.file_meta.TransferSyntaxUID.name}")
    reference = pydicom.dcmread(_bundled("MR_small.dcm"))
    for ds, out in ((source, tmp_path / "c.dcm"), (reference, tmp_path / "u.dcm")):
        ds.Modality = "DX"
        ds.save_as(out)
    compressed = read_radiograph(tmp_path / "c.dcm")
    np.testing.assert_array_equal(compressed.pixels, read_radiograph(tmp_path / "u.dcm").pixels)
    assert compressed.notes[0].endswith(source.file_meta.TransferSyntaxUID.name)


def test_bundled_jpeg_extended_and_jpeg2000_relabelled_as_dx_are_read(tmp_path):
    for name in ("JPGExtended.dcm", "JPEG2000.dcm"):  # NM secondary captures, 12-bit JPEG and lossy JPEG 2000
        ds = pydicom.dcmread(_bundled(name))
        if not get_decoder(ds.file_meta.TransferSyntaxUID).is_available:
            continue
        ds.Modality = "DX"
        ds.save_as(tmp_path / name)
        radiograph = read_radiograph(tmp_path / name)
        assert radiograph.pixels.shape == (1024, 256)
        np.testing.assert_array_equal(radiograph.pixels, pydicom.dcmread(tmp_path / name).pixel_array)


@pytest.mark.parametrize(
    "syntax",
    [
        pytest.param(s, marks=[_needs(s, get_encoder), _needs(s)])
        for s in (RLELossless, JPEGLSLossless, JPEG2000Lossless)
    ],
)
def test_derived_files_compressed_losslessly_read_the_same(tmp_path, syntax):
    stored = np.clip(_stored(_drr()), 0, 4095)
    path = _write(tmp_path / "u.dcm", stored, photometric="MONOCHROME1", bits=12, ImagerPixelSpacing=[12.0, 12.0])
    ds = pydicom.dcmread(path)
    ds.compress(syntax)
    ds.save_as(tmp_path / "c.dcm")
    a, b = read_radiograph(path), read_radiograph(tmp_path / "c.dcm")
    np.testing.assert_array_equal(a.pixels, b.pixels)
    assert (
        b.notes[0]
        == f"DICOM DX (Digital X-Ray Image Storage - For Presentation), 48x48, 12-bit, MONOCHROME1, {syntax.name}"
    )


@_needs(JPEGBaseline8Bit)
def test_jpeg_baseline_grey_and_rgb_that_is_grey(tmp_path):
    grey = np.rint(_drr() / _drr().max() * 255).astype(np.uint8)
    for mode, photometric, samples in (("L", "MONOCHROME2", 1), ("RGB", "YBR_FULL_422", 3)):
        buffer = io.BytesIO()
        Image.fromarray(grey).convert(mode).save(buffer, format="JPEG", quality=95)
        path = tmp_path / f"{mode}.dcm"
        _write(path, grey, modality="OT", sop=SC, bits=8)
        ds = pydicom.dcmread(path)
        ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
        ds.PhotometricInterpretation, ds.SamplesPerPixel = photometric, samples
        if samples == 3:
            ds.PlanarConfiguration = 0
        ds.PixelData = encapsulate([buffer.getvalue()])
        ds["PixelData"].VR, ds["PixelData"].is_undefined_length = "OB", True
        ds.save_as(path)
        radiograph = read_radiograph(path)
        error = np.abs(radiograph.pixels - grey)
        assert error.mean() < 1.0 and error.max() <= 10  # JPEG at quality 95
    assert radiograph.notes[2].startswith("PhotometricInterpretation YBR_FULL_422 with equal channels (spread")


def test_a_missing_decoder_plugin_is_named(tmp_path, monkeypatch):
    ds = pydicom.dcmread(_bundled("MR_small_jp2klossless.dcm"))
    ds.Modality = "DX"
    ds.save_as(tmp_path / "j2k.dcm")

    class Missing:
        is_available = False

    monkeypatch.setattr(dicom_radiograph, "get_decoder", lambda uid: Missing())
    with pytest.raises(ValueError) as err:
        read_radiograph(tmp_path / "j2k.dcm")
    assert str(err.value) == (
        f"{tmp_path / 'j2k.dcm'}: pixel data in JPEG 2000 Image Compression (Lossless Only) cannot be decoded: no "
        "decoder plugin is installed; expected pylibjpeg and pylibjpeg-openjpeg (see setup.cfg)."
    )


# ---- pitch, magnification, view and orientation ------------------------------------------------------------------


@pytest.mark.parametrize("tags, pitch, magnification, warnings", [
    ({"ImagerPixelSpacing": [12.0, 12.0], "PixelSpacing": [11.0, 11.0]}, (12.0, 12.0), None, ()),
    ({"PixelSpacing": [11.0, 12.0]}, (11.0, 12.0), None, ()),
    ({"PixelSpacing": [11.0, 11.0], "PixelSpacingCalibrationType": "GEOMETRY"}, (11.0, 11.0), 1.0, ()),
    ({"PixelSpacing": "0.000\\0.000"}, None, None,
     ("PixelSpacing 0.000\\0.000 is not a usable pixel pitch (expected two positive numbers in mm)",)),
    ({"ImagerPixelSpacing": [0.0, 0.0], "PixelSpacing": [12.0, 12.0]}, (12.0, 12.0), None,
     ("ImagerPixelSpacing 0.0\\0.0 is not a usable pixel pitch (expected two positive numbers in mm)",)),
    ({"ImagerPixelSpacing": "-1\\nan"}, None, None,
     ("ImagerPixelSpacing -1\\nan is not a usable pixel pitch (expected two positive numbers in mm)",)),
    ({}, None, None, ()),
    ({"ImagerPixelSpacing": [12.0, 12.0], "EstimatedRadiographicMagnificationFactor": 1.08}, (12.0, 12.0), 1.08, ()),
    ({"ImagerPixelSpacing": [12.0, 12.0], "DistanceSourceToDetector": 1800, "DistanceSourceToPatient": 1600},
     (12.0, 12.0), 1.125, ()),
])  # fmt: skip
@pytest.mark.filterwarnings("ignore:Invalid value for VR DS")  # the malformed spacing, on purpose
def test_pixel_spacing_tags(tmp_path, tags, pitch, magnification, warnings):
    radiograph = read_radiograph(_write(tmp_path / "s.dcm", _stored(_drr()), **tags))
    assert radiograph.pixel_pitch_mm == pitch and radiograph.warnings == warnings
    assert radiograph.magnification == (pytest.approx(magnification) if magnification else None)
    mapped = map_radiograph(radiograph, GEOMETRY, 10.0)  # never a crash; a warning without a pitch
    assert (pitch is None) == any(w.startswith("no pixel pitch: the whole image") for w in mapped.warnings)


def test_patient_orientation_brings_the_image_to_the_training_convention(tmp_path):
    pa, lateral = _drr(0), _drr(1)
    pa[:, :10] += 1.0  # something asymmetric: the patient's right side is marked on the image's left
    ref = read_radiograph(_write(tmp_path / "ref.dcm", _stored(pa), PatientOrientation=["L", "F"]), view="pa")
    assert ref.notes[-1] == "PatientOrientation ['L', 'F']: already in the training convention"
    cases = [
        (["R", "F"], _stored(pa)[:, ::-1], "mirrored left-right"),
        (["L", "H"], _stored(pa)[::-1], "flipped upside down"),
        (["F", "L"], _stored(pa).T, "transposed"),
        (["H", "R"], _stored(pa)[::-1, ::-1].T, "transposed, mirrored left-right, flipped upside down"),
    ]
    for orientation, stored, done in cases:
        path = _write(
            tmp_path / "o.dcm", np.ascontiguousarray(stored), PatientOrientation=orientation, ViewPosition="PA"
        )
        radiograph = read_radiograph(path, view="pa")
        np.testing.assert_array_equal(radiograph.pixels, ref.pixels)
        assert radiograph.notes[-1] == f"PatientOrientation {orientation}: {done} in the training convention"
    # A transposed image swaps its pitch too.
    path = _write(
        tmp_path / "t.dcm",
        np.ascontiguousarray(_stored(pa).T),
        PatientOrientation=["F", "L"],
        ImagerPixelSpacing=[0.1, 0.2],
    )
    assert read_radiograph(path, view="pa").pixel_pitch_mm == (0.2, 0.1)
    # A right lateral stored with anterior on the image's right is mirrored to anterior-left.
    stored = _stored(lateral)
    ll = read_radiograph(
        _write(tmp_path / "ll.dcm", stored, ViewPosition="LL", PatientOrientation=["P", "F"]), view="lateral"
    )
    rl = read_radiograph(
        _write(tmp_path / "rl.dcm", stored[:, ::-1].copy(), ViewPosition="RL", PatientOrientation=["A", "F"]),
        view="lateral",
    )
    np.testing.assert_array_equal(rl.pixels, ll.pixels)
    assert rl.notes[-2:] == (
        "right lateral (beam left to right): the side nearer the detector differs from training",
        "PatientOrientation ['A', 'F']: mirrored left-right in the training convention",
    )
    nothing = read_radiograph(_write(tmp_path / "n.dcm", stored), view="lateral")
    assert (
        nothing.notes[-1] == "no PatientOrientation: assumed in the training convention (anterior on the image's left)"
    )
    wrong = read_radiograph(_write(tmp_path / "w.dcm", stored, PatientOrientation=["A", "F"]), view="pa")
    assert wrong.warnings == ("PatientOrientation ['A', 'F'] does not fit a pa view; orientation not changed",)


def test_ap_uses_the_bedside_magnification_and_a_mismatched_view_is_refused(tmp_path):
    stored = _stored(_drr())
    tags = {"ImagerPixelSpacing": [12.0, 12.0], "PatientOrientation": ["L", "F"]}
    ap = map_radiograph(
        read_radiograph(_write(tmp_path / "ap.dcm", stored, ViewPosition="AP", **tags), view="pa"), GEOMETRY, 10.0
    )
    pa = read_radiograph(_write(tmp_path / "pa.dcm", stored, ViewPosition="PA", **tags), view="pa")
    # No flip for an AP displayed by its PatientOrientation; only the assumed magnification differs.
    torch.testing.assert_close(ap.image, radiograph_to_network(pa, GEOMETRY, 10.0, assumed_magnification=1.15))
    assert not torch.allclose(ap.image, radiograph_to_network(pa, GEOMETRY, 10.0))
    assert ap.warnings == ("AP view: the network was trained on PA views; the heart looks larger in an AP film",)
    path = _write(tmp_path / "pa.dcm", stored, ViewPosition="PA")
    with pytest.raises(ValueError) as err:
        read_radiograph(path, view="lateral")
    assert str(err.value) == f"{path}: ViewPosition 'PA' is a PA/AP view; the file was given as the 'lateral' view."


# ---- PNG/JPEG exports ---------------------------------------------------------------------------------------------


def test_png_and_jpeg_exports(tmp_path):
    grey = np.rint(_drr() / _drr().max() * 255).astype(np.uint8)
    Image.fromarray(grey).save(tmp_path / "l.png")
    Image.fromarray(grey).convert("RGB").save(tmp_path / "rgb.png")
    Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path / "16.png")
    Image.fromarray(grey).convert("RGB").save(tmp_path / "rgb.jpg", quality=95)
    ref = read_radiograph(tmp_path / "l.png", view="pa")
    assert ref.notes == (
        "PNG 48x48, mode L",
        "no orientation in the file: assumed the training convention (patient's right on the image's left)",
    )
    rgb = read_radiograph(tmp_path / "rgb.png")
    np.testing.assert_array_equal(rgb.pixels, ref.pixels)
    assert rgb.notes[1] == "mode RGB with equal channels (spread 0) read as grey"
    np.testing.assert_array_equal(read_radiograph(tmp_path / "16.png").pixels, ref.pixels * 257)
    error = np.abs(read_radiograph(tmp_path / "rgb.jpg").pixels - ref.pixels)
    assert error.mean() < 1.0 and error.max() <= 10
    colour = np.stack([grey, grey, np.zeros_like(grey)], axis=-1)
    Image.fromarray(colour).save(tmp_path / "colour.png")
    with pytest.raises(ValueError) as err:
        read_radiograph(str(tmp_path / "colour.png"))
    assert str(err.value) == (
        f"{tmp_path / 'colour.png'}: colour image (mode RGB, channels differ by up to 255); expected a grayscale "
        "radiograph."
    )


# ---- the issue's computed radiograph --------------------------------------------------------------------------------


def _chest_cr(path, drr: np.ndarray) -> str:
    """A computed radiograph like the issue's: MONOCHROME1, 15-bit, 1955 x 1841, PixelSpacing 0.000\\0.000, a window
    in the header, a collimated (unexposed, white) border and a burned-in "R" marker, from a DRR upsampled 10x."""
    p = np.kron(drr, np.ones((10, 10), np.float32))[:1955, :1841]
    stored = 26000.0 - 3800.0 * p + np.random.default_rng(0).normal(0.0, 40.0, p.shape)  # log exposure, air dark
    stored[:60], stored[-60:], stored[:, :45], stored[:, -45:] = 0, 0, 0, 0  # unexposed plate: white in MONOCHROME1
    marker = Image.new("1", (1841, 1955))
    ImageDraw.Draw(marker).text((150, 120), "R", fill=1, font=ImageFont.load_default(size=160))
    stored[np.asarray(marker)] = 0  # burned-in lead marker label, saturated white
    tags = {
        "PixelSpacing": "0.000\\0.000",
        "WindowCenter": 16000,
        "WindowWidth": 30000,
        "ViewPosition": "PA",
        "PatientOrientation": ["L", "F"],
        "RescaleSlope": 1,
        "RescaleIntercept": 0,
        "BodyPartExamined": "CHEST",
    }
    return _write(
        path, np.clip(np.rint(stored), 0, 32767), modality="CR", sop=CR, photometric="MONOCHROME1", bits=15, **tags
    )


def test_the_issues_computed_radiograph_maps_with_a_warning(tmp_path):
    drr = _drr(shape=(196, 185), pitch_mm=3.0)
    path = _chest_cr(tmp_path / "chest_pa.dcm", drr)
    geometry = ProjectionGeometry(views=("pa", "lateral"), detector_shape=(64, 64), pixel_spacing_mm=9.0)
    loader = LoadRadiographsd(keys=["pa", "lateral"], geometry=geometry, max_line_integral=10.0)
    out = loader({"pa": path, "lateral": None})
    notes = out["xray_notes"]
    assert list(notes) == ["pa"] and set(notes["pa"]) == {"notes", "warnings"}
    assert notes["pa"]["warnings"] == [
        "PixelSpacing 0.000\\0.000 is not a usable pixel pitch (expected two positive numbers in mm)",
        "no pixel pitch: the whole image (1955x1841) was resized to the 64x64 detector, so the anatomy size is not "
        "calibrated (assumes the image spans the detector's field of view)",
    ]
    assert notes["pa"]["notes"][:3] == [
        "DICOM CR (Computed Radiography Image Storage), 1955x1841, 15-bit, MONOCHROME1, Explicit VR Little Endian",
        "constant bright border masked (top 60, bottom 60, left 45, right 45 pixels)",
        notes["pa"]["notes"][2],
    ]
    assert notes["pa"]["notes"][2].startswith("burned-in markers (") and notes["pa"]["notes"][3:6] == [
        "VOI window centre 16000, width 30000 (LINEAR)",
        "MONOCHROME1: inverted so that attenuation is bright",
        "PatientOrientation ['L', 'F']: already in the training convention",
    ]
    x = out["xray"][0]
    assert out["xray_mask"].tolist() == [True, False]
    # The border is "no attenuation"; inside, the image is the DRR up to the linear anchoring (corr ~ 1).
    p = torch.nn.functional.interpolate(
        torch.from_numpy(np.kron(drr, np.ones((10, 10)))[:1955, :1841]).float()[None, None], size=(64, 64), mode="area"
    )[0, 0]
    assert float(x[0].max()) == -1.0 and float(x[:, 0].max()) == -1.0
    inner = x[4:-4, 4:-4].flatten(), p[4:-4, 4:-4].flatten()
    keep = inner[0] > -1.0
    assert float(torch.corrcoef(torch.stack([inner[0][keep], inner[1][keep]]))[0, 1]) > 0.99
    # The file name is in every error, here the no-contrast one.
    flat = _write(tmp_path / "flat.dcm", np.full((32, 32), 1000), modality="CR", sop=CR, photometric="MONOCHROME1")
    with pytest.raises(ValueError) as err:
        loader({"pa": flat})
    assert str(err.value) == (
        f"{flat}: radiograph has no contrast between its percentiles 1 and 99 (1000); expected an exposed radiograph."
    )


def test_a_large_matrix_is_block_averaged_before_the_luts(tmp_path):
    p = np.kron(_drr(shape=(150, 150), pitch_mm=4.0), np.ones((20, 20), np.float32))  # 3000 x 3000
    stored = _stored(p, scale=4000.0)
    radiograph = read_radiograph(_write(tmp_path / "big.dcm", stored, ImagerPixelSpacing=[0.2, 0.2]))
    assert radiograph.pixels.shape == (1500, 1500) and radiograph.pixel_pitch_mm == (0.4, 0.4)
    assert "downsampled 2x by block mean (3000x3000 -> 1500x1500) before the LUTs" in radiograph.notes
    np.testing.assert_array_equal(radiograph.pixels, stored.reshape(1500, 2, 1500, 2).mean(axis=(1, 3)))
    assert radiograph.pixels.dtype == np.float32
