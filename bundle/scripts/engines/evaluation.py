"""Evaluation: generated CT vs the CT that produced the input views, for the model, baselines and a constant.

Metric definitions (also in ``metrics.json`` under ``definitions``):

* On the generated grid, both volumes clipped to the fixed HU window ``[lo, hi]`` (default −1000..2000):
  ``psnr`` = 20·log10((hi − lo) / RMSE) in dB over the whole volume (3D); ``ssim`` = 3D SSIM (MONAI
  ``SSIMMetric``, Gaussian window ``ssim_window`` voxels, σ 1.5, data range hi − lo); ``mae_hu`` = mean |error| in HU.
* ``drr_error``: mean |DRR(generated CT) − input view| over the present views on the X-ray network scale
  (``2·p/p_max − 1``): the physics consistency the DRR loss trains for.
* The literature's biplanar protocol (X2CT-GAN, Ying et al. 2019): both volumes resampled to 128³ over the
  320 mm field of view (2.5 mm), CT values HU + 1024 clipped to [0, 2500]; ``x2ct_psnr`` = 3D PSNR with peak 2500;
  ``x2ct_ssim`` = mean over the three axes of the mean 2D SSIM of all slices (uniform 7×7 window, data range 2500).
  Implementation differences (window shape at borders, covariance normalisation) can move SSIM by ~0.01.
* ``best_constant``: the per-case constant volume with the smallest squared error (the target's mean in the
  window) — the floor any generator has to clear.
* ``tissue``: what a radiologist checks, per tissue of the *target* inside the patient's body (the couch-removal
  body mask, margin 0): ``lung`` (< −400 HU: lungs and airways), ``fat`` (−190…−30), ``soft_tissue`` (−29…150:
  muscle, organs, blood), ``bone`` (> 200). Per tissue ``mae_hu`` (mean |error|) and ``bias_hu`` (mean signed
  error, generated − target) on the HU window, and ``voxels``. Defined by the target's CT numbers, so the same on
  phantoms and real CTs; voxels between the classes (−400…−190, 150…200: partial volume) count in no tissue.
* ``uncertainty`` (model, ``num_samples`` > 1): inside the body, ``std_error_r`` — Pearson correlation of the per-voxel
  standard deviation over the samples with the absolute error of their mean — and ``calibration``: voxels in ten
  equally populated bins of std, each bin's mean std and mean |error| (HU). A calibrated Gaussian predictive
  distribution has mean |error| = std·√(2/π) ≈ 0.8·std (``ideal_slope``).
* ``anatomy`` (cases with a label map, ``label`` in the datalist: the phantoms' ``labels/*.nii.gz``): the error per
  anatomical group of the *target's* label map, brought onto the CT's grid by nearest neighbour: ``lung`` (the five
  lobes' parenchyma), ``airways`` (trachea, bronchi), ``lung_vessels``, ``heart`` (myocardium, four chambers),
  ``great_vessels`` (aorta, pulmonary artery, venae cavae, brachiocephalic, carotid and subclavian vessels),
  ``liver``, ``abdominal_organs`` (spleen, stomach, kidneys, small bowel), ``spine`` (vertebrae), ``ribs``,
  ``other_bone`` (sternum, clavicles, scapulae, humeri), ``muscle``, ``fat`` (subcutaneous, torso, epicardial),
  ``findings`` (nodules, mass, effusion, consolidation, atelectasis, pneumothorax, emphysema). Per group
  ``mae_hu``, ``bias_hu`` (generated − target, on the HU window) and ``voxels``, over the union of its labels'
  voxels (boundary voxels included: partial volume counts); ``anatomy_labels``: the same per label present, keyed
  by label name, with its ``id``. Means over cases: over the cases where the group (label) is present. Absent for a
  case without a label map.
* ``seconds``: time to generate the case's CT on the evaluation's device (the model: its sampler with all samples;
  a baseline: its forward pass; reading and rendering the inputs excluded).
"""

from __future__ import annotations

import fnmatch
import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from monai.metrics import PSNRMetric, SSIMMetric
from monai.transforms import LoadImage

from ..checkpoint import load_regressor, read_model_config
from ..data import FINDING_LABELS, LABEL_KEY, PHANTOM_LABELS, body_mask, label_on_grid, voxel_spacing
from ..physics import ct_scale_to_hu
from ..utils import atomic_write, flag
from .report import (
    case_slices,
    csv_columns,
    save_calibration_plot,
    save_case_figure,
    save_summary_plot,
    write_metrics_csv,
)
from .sampler import CTInferer, RegressionInferer

__all__ = [
    "ANATOMY_GROUPS",
    "CSV_COLUMNS",
    "CTEvaluation",
    "TISSUES",
    "anatomy_metrics",
    "drr_consistency",
    "tissue_metrics",
    "uncertainty_calibration",
    "volume_metrics",
    "x2ct_metrics",
]

METRICS = ("psnr", "ssim", "mae_hu", "drr_error", "x2ct_psnr", "x2ct_ssim", "seconds")

#: Tissue classes of the target CT (HU ranges, inclusive); see the module docstring.
TISSUES: dict[str, tuple[float, float]] = {
    "lung": (-math.inf, -400.0),
    "fat": (-190.0, -30.0),
    "soft_tissue": (-29.0, 150.0),
    "bone": (200.0, math.inf),
}

#: Anatomical groups of a label map: shell-style patterns (``fnmatch``) of label names, TotalSegmentator's as in
#: :data:`~scripts.data.PHANTOM_LABELS`; see the module docstring.
ANATOMY_GROUPS: dict[str, tuple[str, ...]] = {
    "lung": ("lung_*_lobe_*",),
    "airways": ("trachea", "lung_trachea_bronchia"),
    "lung_vessels": ("lung_vessels",),
    "heart": ("heart_*",),
    "great_vessels": (
        "aorta",
        "pulmonary_artery",
        "*_vena_cava",
        "brachiocephalic_*",
        "common_carotid_artery_*",
        "subclavian_artery_*",
    ),
    "liver": ("liver",),
    "abdominal_organs": ("spleen", "stomach", "kidney_*", "small_bowel"),
    "spine": ("vertebrae_*",),
    "ribs": ("rib_*",),
    "other_bone": ("sternum", "clavicula_*", "scapula_*", "humerus_*"),
    "muscle": ("skeletal_muscle", "autochthon_*"),
    "fat": ("subcutaneous_fat", "torso_fat", "epicardial_fat"),
    "findings": FINDING_LABELS,
}

#: Columns of metrics.csv, in order (:func:`~scripts.engines.report.csv_columns`).
CSV_COLUMNS = csv_columns(METRICS, TISSUES, ANATOMY_GROUPS)


def _as_volume(x) -> torch.Tensor:
    x = torch.as_tensor(x).double()
    x = x[0] if x.dim() == 4 else x
    if x.dim() != 3:
        raise ValueError(f"expected a 3D (X, Y, Z) volume, got shape {tuple(x.shape)}.")
    return x


def _psnr(pred: torch.Tensor, target: torch.Tensor, peak: float) -> float:
    """3D PSNR in dB over the whole volume: MONAI's ``PSNRMetric``, the metric validation reports (on the CT scale,
    peak 2) — one definition for both."""
    return float(PSNRMetric(max_val=peak)(pred[None, None], target[None, None]).squeeze())


def volume_metrics(pred_hu, target_hu, hu_window: Sequence[float], ssim_window: int = 7) -> dict[str, float]:
    """PSNR (dB), 3D SSIM and MAE (HU) of two ``(X, Y, Z)`` HU volumes inside the HU window (module docstring)."""
    low, high = float(hu_window[0]), float(hu_window[1])
    pred, target = _as_volume(pred_hu).clamp(low, high), _as_volume(target_hu).clamp(low, high)
    if pred.shape != target.shape:
        raise ValueError(f"pred and target shapes differ: {tuple(pred.shape)} vs {tuple(target.shape)}.")
    psnr = _psnr(pred, target, high - low)
    ssim = SSIMMetric(spatial_dims=3, data_range=high - low, win_size=ssim_window)(pred[None, None], target[None, None])
    return {"psnr": psnr, "ssim": float(ssim.mean()), "mae_hu": float((pred - target).abs().mean())}


def x2ct_metrics(pred_hu, target_hu, size: int = 128) -> dict[str, float]:
    """The biplanar protocol's PSNR and slice-wise SSIM (module docstring) of two HU volumes over the same FOV."""

    def prepare(x) -> torch.Tensor:
        x = _as_volume(x)[None, None]
        if tuple(x.shape[2:]) != (size,) * 3:
            x = F.interpolate(x, size=(size,) * 3, mode="trilinear", align_corners=False)
        return (x[0, 0] + 1024.0).clamp(0.0, 2500.0)

    pred, target = prepare(pred_hu), prepare(target_hu)
    psnr = _psnr(pred, target, 2500.0)
    metric = SSIMMetric(spatial_dims=2, data_range=2500.0, kernel_type="uniform", win_size=7)
    per_axis = []
    for axis in range(3):
        p = pred.movedim(axis, 0)[:, None]  # (N, 1, H, W): every slice along this axis
        t = target.movedim(axis, 0)[:, None]
        per_axis.append(float(metric(p, t).mean()))
    return {"x2ct_psnr": psnr, "x2ct_ssim": float(np.mean(per_axis))}


def _body(target: torch.Tensor, spacing: Sequence[float]) -> torch.Tensor:
    """The patient's body in the target (couch-removal mask without its margin); everything when none is found."""
    found = body_mask(target.numpy(), spacing, margin_mm=0.0)
    return torch.ones_like(target, dtype=torch.bool) if found is None else torch.from_numpy(found[0])


def tissue_metrics(pred_hu, target_hu, hu_window: Sequence[float], body: torch.Tensor) -> dict[str, dict[str, float]]:
    """Per tissue of the target inside ``body`` (module docstring): ``{tissue: {mae_hu, bias_hu, voxels}}``; a tissue
    without voxels reads NaN errors."""
    low, high = float(hu_window[0]), float(hu_window[1])
    target = _as_volume(target_hu)
    error = _as_volume(pred_hu).clamp(low, high) - target.clamp(low, high)
    out = {}
    for name, (lo, hi) in TISSUES.items():
        mask = body & (target >= lo) & (target <= hi)
        n = int(mask.sum())
        e = error[mask]
        out[name] = {
            "mae_hu": float(e.abs().mean()) if n else math.nan,
            "bias_hu": float(e.mean()) if n else math.nan,
            "voxels": n,
        }
    return out


def _errors(count: torch.Tensor, abs_sum: torch.Tensor, total: torch.Tensor, ids) -> dict[str, float]:
    """``mae_hu``, ``bias_hu`` and ``voxels`` of the label ids ``ids`` from per-id voxel counts and error sums."""
    n = int(count[ids].sum())
    return {
        "mae_hu": float(abs_sum[ids].sum()) / n if n else math.nan,
        "bias_hu": float(total[ids].sum()) / n if n else math.nan,
        "voxels": n,
    }


def anatomy_metrics(
    pred_hu,
    target_hu,
    hu_window: Sequence[float],
    labels,
    label_names: Mapping[str, int] = PHANTOM_LABELS,
    groups: Mapping[str, Sequence[str]] = ANATOMY_GROUPS,
) -> dict[str, dict]:
    """HU errors per anatomical group and per label of the target's label map (module docstring).

    Args:
        pred_hu, target_hu: ``(X, Y, Z)`` (or ``(1, X, Y, Z)``) HU volumes; errors on the HU window.
        labels: the target's label map on the same grid (integer ids, 0 background).
        label_names: name -> id of the label map; an id it lacks is named ``label_<id>``.
        groups: group -> ``fnmatch`` patterns of label names.

    Returns:
        ``{"anatomy": {group: {mae_hu, bias_hu, voxels}}, "anatomy_labels": {name: {id, mae_hu, bias_hu, voxels}}}``:
        every group (NaN errors without voxels), the labels present in id order.
    """
    low, high = float(hu_window[0]), float(hu_window[1])
    error = (_as_volume(pred_hu).clamp(low, high) - _as_volume(target_hu).clamp(low, high)).reshape(-1)
    ids = _as_volume(labels).round().long().reshape(-1)
    if ids.shape != error.shape:
        raise ValueError(f"labels: shape {tuple(_as_volume(labels).shape)} differs from the volumes'.")
    if int(ids.min()) < 0:
        raise ValueError(f"labels: ids must be non-negative integers, got {int(ids.min())}.")
    size = max([int(ids.max()), *label_names.values()]) + 1
    # Per-id sums in one pass; a group's errors are then sums over its ids (voxel-weighted, not a mean of labels).
    count = torch.bincount(ids, minlength=size)
    abs_sum = torch.bincount(ids, weights=error.abs(), minlength=size)
    total = torch.bincount(ids, weights=error, minlength=size)
    anatomy = {}
    for group, patterns in groups.items():
        members = [i for name, i in label_names.items() if any(fnmatch.fnmatchcase(name, p) for p in patterns)]
        anatomy[group] = _errors(count, abs_sum, total, members)
    names = {i: name for name, i in label_names.items()}
    per_label = {}
    for i in torch.nonzero(count[1:]).flatten().add(1).tolist():
        per_label[names.get(i, f"label_{i}")] = {"id": i, **_errors(count, abs_sum, total, [i])}
    return {"anatomy": anatomy, "anatomy_labels": per_label}


def uncertainty_calibration(pred_hu, std_hu, target_hu, hu_window: Sequence[float], body: torch.Tensor, bins: int = 10):
    """Does the per-voxel std predict the error? ``std_error_r`` and a ``calibration`` curve (module docstring)."""
    low, high = float(hu_window[0]), float(hu_window[1])
    error = (_as_volume(pred_hu).clamp(low, high) - _as_volume(target_hu).clamp(low, high)).abs()[body]
    std = _as_volume(std_hu)[body]
    centred_e, centred_s = error - error.mean(), std - std.mean()
    denom = float(centred_e.norm() * centred_s.norm())
    order = torch.argsort(std)
    curve = []
    for chunk in torch.tensor_split(order, bins):
        if len(chunk):
            curve.append({"mean_std_hu": float(std[chunk].mean()), "mean_abs_error_hu": float(error[chunk].mean())})
    return {
        "std_error_r": float((centred_e * centred_s).sum()) / denom if denom > 0 else math.nan,
        "mean_std_hu": float(std.mean()),
        "mean_abs_error_hu": float(error.mean()),
        "ideal_slope": math.sqrt(2.0 / math.pi),
        "calibration": curve,
    }


def drr_consistency(composer, hu, views: torch.Tensor, view_mask: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """DRRs ``(V, H, W)`` of an HU MetaTensor ``(1, X, Y, Z)`` (spacing from its affine) and the mean |DRR − view| per
    present view, keyed by view name (X-ray network scale)."""
    spacing = voxel_spacing(hu)
    with torch.no_grad():
        drrs = composer(torch.as_tensor(hu).float().reshape(1, 1, *hu.shape[-3:]).cpu(), spacing)[0]  # (V, H, W)
    names = [str(v) for v in composer.renderer.geometry.views]
    errors = {names[v]: float((drrs[v] - views[v]).abs().mean()) for v in range(len(names)) if bool(view_mask[v])}
    return drrs, errors


def _mean(values: Sequence[float]) -> float:
    """The mean of the finite values (a tissue or time absent from some cases), NaN when none is."""
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan


def _mean_errors(entries: Sequence[Mapping]) -> dict[str, float | int]:
    """Mean ``mae_hu`` and ``bias_hu`` over the cases where the tissue, group or label has voxels, and their count."""
    present = [e for e in entries if e["voxels"]]
    return {
        "mae_hu": _mean([e["mae_hu"] for e in present]),
        "bias_hu": _mean([e["bias_hu"] for e in present]),
        "cases": len(present),
    }


def _dumps(value, indent: str = "") -> str:
    """Strict JSON, indented, with every mapping or list of plain values on one line (a label's errors, a calibration
    point): the file reads a line per label instead of six."""
    inner = indent + "  "
    if isinstance(value, Mapping) and any(isinstance(v, (Mapping, list)) for v in value.values()):
        items = (f"{inner}{json.dumps(str(k))}: {_dumps(v, inner)}" for k, v in value.items())
        return "{\n" + ",\n".join(items) + "\n" + indent + "}"
    if isinstance(value, list) and any(isinstance(v, (Mapping, list)) for v in value):
        return "[\n" + ",\n".join(inner + _dumps(v, inner) for v in value) + "\n" + indent + "]"
    return json.dumps(value, allow_nan=False)


def _json_safe(value):
    """NaN (a tissue absent from a case) as ``null``: metrics.json stays strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


class CTEvaluation:
    """The per-case hook of :class:`~scripts.engines.inference.CTInferenceWorkflow` in ``configs/evaluate.yaml``.

    For every case with a CT input it scores the model's CT, each baseline's and the best constant volume against
    the preprocessed input CT, and ``finish`` writes ``metrics.json`` (per case and mean per method).

    A case with a label map of its CT (``label`` in the datalist, as ``prepare`` writes for phantoms) is also scored
    per anatomical group and label (``anatomy``, ``anatomy_labels``): the map is read and brought onto the
    preprocessed CT's grid by :func:`~scripts.data.label_on_grid`; a case without one (a real CT, radiographs) has
    neither entry.

    A baseline is a regression checkpoint (``configs/stages/baseline_*.yaml``); its network is built from the model
    config it carries, which must agree with the model's on what the views mean (geometry, physics, field of view,
    HU window): both see the same inputs.

    Args:
        composer: the DRR renderer of the consistency metric; hu_window: the metrics' HU window.
        baselines: name -> checkpoint path; each runs on the same views.
        model_config: the evaluated model's config (the baselines are checked against it; ``None``: not checked).
        ssim_window: 3D SSIM window (voxels); protocol_size: grid of the biplanar protocol metrics.
        figures: also write ``metrics.csv``, ``metrics_summary.png`` and a truth/generated/error figure per case
            (:mod:`.report`).
        label_names: name -> id of the label maps (default the phantoms' :data:`~scripts.data.PHANTOM_LABELS`).
        anatomy_groups: group -> ``fnmatch`` patterns of label names (default :data:`ANATOMY_GROUPS`).
    """

    def __init__(
        self,
        composer,
        hu_window: Sequence[float],
        baselines: Mapping[str, str | os.PathLike] | None = None,
        model_config: Mapping | None = None,
        ssim_window: int = 7,
        protocol_size: int = 128,
        figures: bool = True,
        label_names: Mapping[str, int] | None = None,
        anatomy_groups: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        self.composer, self.hu_window = composer, tuple(map(float, hu_window))
        self.baselines = {name: Path(path) for name, path in (baselines or {}).items()}
        self.model_config = model_config
        self._networks: dict[str, torch.nn.Module] = {}
        self.inferer = CTInferer(RegressionInferer())
        self.ssim_window, self.protocol_size = int(ssim_window), int(protocol_size)
        self.results: dict[str, dict[str, dict[str, float]]] = {}
        self.figures = flag(figures, "evaluation_figures")
        self._slices: dict[str, dict] = {}
        self.label_names = dict(PHANTOM_LABELS if label_names is None else label_names)
        groups = ANATOMY_GROUPS if anatomy_groups is None else anatomy_groups
        self.anatomy_groups = {str(g): tuple(p) for g, p in groups.items()}

    def _score(self, hu, target, views, mask, body, seconds, drr_errors: Mapping | None = None, labels=None) -> dict:
        scores = volume_metrics(hu, target, self.hu_window, self.ssim_window)
        scores.update(x2ct_metrics(hu, target, self.protocol_size))
        errors = drr_errors if drr_errors is not None else drr_consistency(self.composer, hu, views, mask)[1]
        scores["drr_error"] = float(np.mean(list(errors.values())))
        scores["seconds"] = math.nan if seconds is None else float(seconds)
        scores["tissue"] = tissue_metrics(hu, target, self.hu_window, body)
        if labels is not None:
            scores.update(anatomy_metrics(hu, target, self.hu_window, labels, self.label_names, self.anatomy_groups))
        return scores

    def _labels(self, data: Mapping, shape: Sequence[int]) -> torch.Tensor | None:
        """The case's label map on the evaluated grid ``shape`` (nearest neighbour), or ``None`` without one."""
        source = data.get(LABEL_KEY)
        if source is None:
            return None
        if isinstance(source, (str, os.PathLike)):
            try:
                source = LoadImage(image_only=True, ensure_channel_first=True)(source)
            except Exception as err:  # the reader's own message rarely names the file
                raise ValueError(f"{LABEL_KEY}: {source} is not a readable label map ({err}).") from None
        labels = label_on_grid(source, data["ct"]).as_tensor()  # (1, X, Y, Z) ids on the preprocessed CT's grid
        if tuple(labels.shape[1:]) != tuple(shape):  # like the target's resizing, but ids are picked, not averaged
            labels = F.interpolate(labels[None], size=tuple(shape), mode="nearest-exact")[0]
        return labels

    def _network(self, name: str, device) -> torch.nn.Module:
        """The baseline ``name``, built from its checkpoint's model config and loaded (once)."""
        if name not in self._networks:
            path = self.baselines[name]
            record = read_model_config(path)
            if record["prediction_type"] != "regression":
                raise ValueError(
                    f"baselines.{name}: {path} is not a regression baseline ({record['prediction_type']})."
                )
            self._networks[name] = load_regressor(path, record, self.model_config).to(device).eval()
        return self._networks[name]

    def _baseline(self, name: str, views: torch.Tensor, mask: torch.Tensor, device, like) -> tuple[torch.Tensor, float]:
        """The baseline's CT in HU on the model output's grid and affine, and the seconds its generation took."""
        network = self._network(name, device)
        start = time.perf_counter()
        out = self.inferer(views[None].to(device), network, view_mask=mask[None].to(device))[0, :1].cpu()
        seconds = time.perf_counter() - start  # .cpu() waits for the device
        if tuple(out.shape[1:]) != tuple(like.shape[1:]):
            out = F.interpolate(out[None], size=tuple(like.shape[1:]), mode="trilinear", align_corners=False)[0]
        return like.clone().copy_(ct_scale_to_hu(out, self.hu_window)), seconds

    def __call__(
        self,
        name: str,
        data: Mapping,
        hu,
        device,
        model_drr_errors: Mapping | None = None,
        std=None,
        model_seconds: float | None = None,
    ) -> dict[str, dict]:
        """Scores of every method for one case; ``model_drr_errors``: the model CT's per-view DRR errors when the
        caller has already rendered them (the inference workflow has, for its JSON); ``std``: the model's per-voxel
        standard deviation over its samples (HU, like ``hu``), scored for calibration; ``model_seconds``: the time
        the model took to generate ``hu`` (``None``: not known, ``seconds`` reads null)."""
        if "ct" not in data:
            raise ValueError("evaluation needs a CT input ('image') to compare with; this case has only radiographs.")
        target = torch.as_tensor(data["ct"]).float()
        if tuple(target.shape[1:]) != tuple(hu.shape[1:]):
            target = F.interpolate(target[None], size=tuple(hu.shape[1:]), mode="area")[0]
        views = torch.nan_to_num(torch.as_tensor(data["image"]).float(), nan=-1.0)
        mask = torch.as_tensor(data["image_mask"]).bool()
        low, high = self.hu_window
        start = time.perf_counter()
        constant = hu.clone().fill_(float(target.clamp(low, high).mean()))
        methods = {"model": (hu, model_seconds), "best_constant": (constant, time.perf_counter() - start)}
        for baseline in self.baselines:
            methods[baseline] = self._baseline(baseline, views, mask, device, hu)
        body = _body(target[0], voxel_spacing(hu))
        labels = self._labels(data, hu.shape[1:])
        scores = {
            method: self._score(
                volume, target, views, mask, body, seconds, model_drr_errors if method == "model" else None, labels
            )
            for method, (volume, seconds) in methods.items()
        }
        if std is not None:
            scores["model"]["uncertainty"] = uncertainty_calibration(hu, std, target, self.hu_window, body)
        self.results[name] = scores
        if self.figures:
            self._slices[name] = case_slices(target[0], hu[0])
        return scores

    def finish(self, report: Mapping, output_dir: str | os.PathLike, overwrite: bool = False) -> str:
        """Write ``output_dir/metrics.json`` (per case, mean per method, failures, definitions) and, with ``figures``,
        the CSV, the summary plot and the per-case figures; returns the JSON's path."""
        methods = sorted({m for case in self.results.values() for m in case}, key=lambda m: (m != "model", m))
        cases = self.results.values()
        mean = {m: {k: _mean([c[m][k] for c in cases if m in c]) for k in METRICS} for m in methods}
        for m in methods:  # tissue, anatomy and label errors: the mean over the cases that have them
            mean[m]["tissue"] = {t: _mean_errors([c[m]["tissue"][t] for c in cases if m in c]) for t in TISSUES}
            labelled = [c[m] for c in cases if m in c and "anatomy" in c[m]]
            if labelled:
                mean[m]["anatomy"] = {g: _mean_errors([c["anatomy"][g] for c in labelled]) for g in self.anatomy_groups}
                found = {}
                for c in labelled:
                    for label, entry in c["anatomy_labels"].items():
                        found.setdefault(label, []).append(entry)
                mean[m]["anatomy_labels"] = {
                    label: {"id": found[label][0]["id"], **_mean_errors(found[label])}
                    for label in sorted(found, key=lambda label: found[label][0]["id"])
                }
        rs = [c["model"]["uncertainty"]["std_error_r"] for c in self.results.values() if "uncertainty" in c["model"]]
        if rs:
            mean["model"]["uncertainty"] = {"std_error_r": float(np.nanmean(rs)), "cases": len(rs)}
        content = {
            "cases": len(self.results),
            "mean": mean,
            "per_case": self.results,
            "failed": list(report.get("failed", [])),
            "hu_window": list(self.hu_window),
            "definitions": __doc__.split("Metric definitions (also in ``metrics.json`` under ``definitions``):")[1]
            .strip()
            .replace("\n  ", " "),
        }
        path = Path(output_dir) / "metrics.json"
        text = _dumps(_json_safe(content))
        atomic_write(path, lambda p: Path(p).write_text(text), overwrite=True)
        if self.figures and self.results:
            write_metrics_csv(Path(output_dir) / "metrics.csv", self.results, METRICS, TISSUES, self.anatomy_groups)
            save_summary_plot(Path(output_dir) / "metrics_summary.png", self.results)
            curves = {n: c["model"]["uncertainty"] for n, c in self.results.items() if "uncertainty" in c["model"]}
            if curves:
                save_calibration_plot(Path(output_dir) / "uncertainty_calibration.png", curves)
            for name, slices in self._slices.items():
                save_case_figure(Path(output_dir) / name / f"{name}_evaluation.png", slices)
        return str(path)
