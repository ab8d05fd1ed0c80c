"""Reading and checking the files the MONAI Label app returns (NIfTI or NRRD), for infer.py and server.py.

The file's own dtype is read from its header (nibabel for NIfTI, pynrrd for NRRD), so that a check sees what a client
gets, not a conversion made while loading; the affine is returned in RAS.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

ROOT = Path(__file__).resolve().parents[2]
APP = ROOT / "monailabel_app"
#: What a CT in HU may hold: MONAI's HU window of CT files, never an unsigned value of a wrapped cast.
HU_RANGE = (-1024.0, 3071.0)
#: The tissue classes the app's tissue model must name, in label order (value i + 1 for the i-th).
TISSUE_NAMES = ["lung", "fat", "soft tissue", "bone"]


def load_app():
    """The app's main.py, imported as MONAI Label does (its folder first on sys.path, so that ``lib`` resolves)."""
    sys.path.insert(0, str(APP))
    spec = importlib.util.spec_from_file_location("main", APP / "main.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def read_volume(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """``(data, affine)`` of a NIfTI or NRRD file: the array in the file's dtype, the affine in RAS (mm)."""
    path = str(path)
    if path.endswith(".nrrd"):
        import nrrd

        data, header = nrrd.read(path)  # (X, Y, Z): MONAI Label's writer transposes for ITK, which reverses it back
        space = header.get("space", "")
        assert space in ("left-posterior-superior", "LPS", "right-anterior-superior", "RAS"), f"{path}: space {space}"
        affine = np.eye(4)
        affine[:3, :3] = np.asarray(header["space directions"], dtype=np.float64).T
        affine[:3, 3] = np.asarray(header["space origin"], dtype=np.float64)
        if space in ("left-posterior-superior", "LPS"):
            affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine
        return data, affine
    image = nib.load(path)
    return np.asanyarray(image.dataobj), image.affine


def check_ct(
    path: str | Path, grid: int, spacing_mm: float, dtype: str = "int16"
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Assert ``path`` is a 3D CT in HU (``dtype``, within :data:`HU_RANGE`, air below −500 HU: a wrapped or unsigned
    cast has none) on ``grid``³ voxels of ``spacing_mm`` in RAS; returns the volume (float32), affine and stats."""
    data, affine = read_volume(path)
    assert data.ndim == 3, f"{path}: expected a 3D volume, got shape {data.shape}"
    assert data.shape == (grid,) * 3, f"{path}: expected {(grid,) * 3}, got {data.shape}"
    assert data.dtype == np.dtype(dtype), f"{path}: expected {dtype} HU, got {data.dtype}"
    assert np.isfinite(data).all(), f"{path}: non-finite values"
    low, high = float(data.min()), float(data.max())
    assert HU_RANGE[0] <= low and high <= HU_RANGE[1], f"{path}: values [{low}, {high}] are not HU in {HU_RANGE}"
    assert low < -500.0, f"{path}: no air (minimum {low} HU): not signed HU"
    assert high - low > 1.0, f"{path}: a constant volume ({low})"
    spacing = np.sqrt((affine[:3, :3] ** 2).sum(0))
    assert np.allclose(spacing, spacing_mm, atol=1e-3), f"{path}: voxel size {spacing} mm, expected {spacing_mm}"
    axcodes = "".join(nib.aff2axcodes(affine))
    assert axcodes == "RAS", f"{path}: orientation {axcodes}, expected RAS"
    stats = {
        "file": str(path),
        "shape": list(data.shape),
        "dtype": str(data.dtype),
        "hu_min": low,
        "hu_max": high,
        "hu_mean": float(data.mean()),
        "spacing_mm": [round(float(s), 4) for s in spacing],
        "orientation": axcodes,
        "centre_mm": [round(float(c), 3) for c in affine[:3, :3] @ ((np.array(data.shape) - 1) / 2) + affine[:3, 3]],
    }
    return data.astype(np.float32), affine, stats


def check_tissue(path: str | Path, ct: np.ndarray, ct_affine: np.ndarray, dtype: str = "uint8") -> dict:
    """Assert ``path`` is the tissue label map of ``ct`` (same grid and affine, ``dtype``, values 0..4, equal to the
    app's ``tissue_labels`` of the CT voxel for voxel); returns each class's voxel count."""
    sys.path.insert(0, str(ROOT))
    from monailabel_app.lib.tissue import axial_axis, tissue_labels

    labels, affine = read_volume(path)
    assert labels.dtype == np.dtype(dtype), f"{path}: label map dtype {labels.dtype}, expected {dtype}"
    assert labels.shape == ct.shape, f"{path}: label map {labels.shape} on another grid than the CT {ct.shape}"
    assert np.allclose(affine, ct_affine, atol=1e-3), f"{path}: label map affine {affine} differs from the CT's"
    values = set(np.unique(labels).tolist())
    assert values <= set(range(len(TISSUE_NAMES) + 1)), f"{path}: label values {sorted(values)}"
    expected = tissue_labels(ct, axis=axial_axis(ct_affine))
    mismatch = int((labels != expected).sum())
    assert mismatch == 0, f"{path}: {mismatch} voxels differ from the tissue labels of the CT"
    counts = {name: int((labels == i + 1).sum()) for i, name in enumerate(TISSUE_NAMES)}
    assert sum(v > 0 for v in counts.values()) >= 3, f"{path}: fewer than 3 tissue classes present: {counts}"
    return counts
