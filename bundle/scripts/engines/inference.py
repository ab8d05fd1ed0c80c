"""Inference workflow: cases -> X-ray views -> cascade samples -> CT files in HU, uncertainty, preview, report.

``configs/inference.yaml`` declares the pieces and MONAI Label's ``BundleInferTask`` uses three of them as they are:
``preprocessing`` (one case -> ``image``: the network's ``(V, H, W)`` views), ``inferer``
(:class:`~scripts.engines.sampler.CTInferer`) and ``postprocessing`` (:class:`CTOutputd`: HU, affine). The
:class:`CTInferenceWorkflow` runs them over a datalist for the bundle runner, one case at a time, so that one bad
case is reported and the others still complete.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import MapTransform

from ..checkpoint import load_network_weights
from ..data import (
    LoadRadiographsd,
    is_radiograph_file,
    prepare_dataset,
    voxel_spacing,
    write_ct_dicom_series,
    write_nifti,
)
from ..physics import RadiographComposer, centred_affine
from ..utils import atomic_write
from .evaluation import drr_consistency
from .preview import save_preview

__all__ = [
    "CTInferenceWorkflow",
    "CTOutputd",
    "XrayInputsd",
    "ct_scale_to_hu",
    "ensure_cases",
    "load_cases",
]

logger = logging.getLogger(__name__)

INPUT_KEYS = ("image", "pa", "lateral")


def ct_scale_to_hu(x: torch.Tensor, hu_window: Sequence[float]) -> torch.Tensor:
    """The networks' CT scale [−1, 1] back to HU over the fixed window (inverse of ``ScaleIntensityRanged``)."""
    low, high = float(hu_window[0]), float(hu_window[1])
    return (x + 1.0) * (0.5 * (high - low)) + low


def load_cases(datalist: str | os.PathLike, key: str = "test") -> list[dict]:
    """The ``key`` list of a datalist, with relative input paths (``image``, ``pa``, ``lateral``) resolved against the
    datalist's folder.

    Raises:
        ValueError: naming the datalist, when it is unreadable, lacks ``key`` or a case is not a mapping.
    """
    path = Path(datalist)
    try:
        content = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"datalist: {path} is not a readable JSON datalist ({err}).") from None
    cases = content.get(key) if isinstance(content, dict) else None
    if not isinstance(cases, list) or not cases:
        raise ValueError(f"datalist: {path} has no non-empty {key!r} list of cases.")
    resolved = []
    for i, case in enumerate(cases):
        if not isinstance(case, Mapping):
            raise ValueError(f"datalist: {path} {key}[{i}] must be a mapping of input files, got {case!r}.")
        case = dict(case)
        for k in INPUT_KEYS:
            if isinstance(case.get(k), str) and not Path(case[k]).is_absolute():
                case[k] = str(path.parent / case[k])
        resolved.append(case)
    return resolved


def ensure_cases(dataset_dir: str | os.PathLike, key: str = "test", **prepare_kwargs) -> Path:
    """``dataset_dir/datalist.json``, preparing synthetic phantoms there first when it does not exist (the
    out-of-the-box demo input); the ``key`` list must hold cases."""
    datalist = Path(dataset_dir) / "datalist.json"
    if not datalist.exists():
        prepare_dataset(dataset_dir, **prepare_kwargs)
    load_cases(datalist, key)  # fail early, naming the file
    return datalist


class XrayInputsd(MapTransform):
    """One case -> the network input: ``image`` = ``(V, H, W)`` views on the X-ray network scale.

    A case holds either radiograph files per view (``pa``, ``lateral``; DICOM DX/CR, PNG/JPEG/TIFF, 2D NIfTI; one view
    is enough) or a CT in ``image`` (NIfTI/NRRD/MHA/DICOM series) whose views are rendered with the training
    geometry (evaluation, demos; the preprocessed CT is kept under ``ct_key`` in HU with its affine). ``image`` may
    also be a radiograph file, read as the first view (PA) unless ``pa`` is given. A missing view is NaN in
    ``image`` (MONAI Label passes the inferer one tensor) and ``False`` in ``image_mask``.

    Args:
        ct_transforms: the CT preprocessing (``preprocessing`` of the training config, up to the field-of-view grid).
        radiographs: the radiograph reader (:class:`LoadRadiographsd` over the view keys).
        composer: HU -> network-scale views (the training ``composer``).
        fov_mm: the field of view of the CT grid (mm) that sets its voxel spacing.
        output_key: where the views go (MONAI Label's input key is ``image``).
        ct_key: where the preprocessed CT goes.
    """

    def __init__(
        self,
        ct_transforms: Callable,
        radiographs: LoadRadiographsd,
        composer: RadiographComposer,
        fov_mm: float,
        output_key: str = "image",
        ct_key: str = "ct",
    ) -> None:
        super().__init__(keys=list(INPUT_KEYS), allow_missing_keys=True)
        self.ct_transforms, self.radiographs, self.composer = ct_transforms, radiographs, composer
        self.fov_mm, self.output_key, self.ct_key = float(fov_mm), output_key, ct_key

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        views = {k: d[k] for k in self.radiographs.keys if d.get(k) is not None}
        image = d.get("image")
        first = self.radiographs.keys[0]
        if isinstance(image, (str, os.PathLike)) and first not in views and is_radiograph_file(image):
            views[first] = image  # a radiograph in `image` is the first view (PA), e.g. MONAI Label's input file
        if views:
            loaded = self.radiographs(views)
        elif image is not None:
            ct = self.ct_transforms({"image": image})["image"]  # (1, X, Y, Z) HU, MetaTensor
            spacing = [self.fov_mm / n for n in ct.shape[1:]]
            with torch.no_grad():
                views = self.composer(torch.as_tensor(ct)[None].float(), spacing)[0]  # (V, H, W)
            loaded = {"xray": views, "xray_mask": torch.ones(views.shape[0], dtype=torch.bool)}
            d[self.ct_key] = ct
        else:
            raise ValueError(
                f"case has no input: expected radiograph files under {list(self.radiographs.keys)} or a CT under "
                "'image'."
            )
        views, mask = torch.as_tensor(loaded["xray"]).float().clone(), torch.as_tensor(loaded["xray_mask"])
        views[~mask] = float("nan")  # absent views, explicit for a one-tensor interface
        d[self.output_key], d[f"{self.output_key}_mask"] = views, mask
        return d


class CTOutputd(MapTransform):
    """``pred`` ``(2, X, Y, Z)`` on the CT scale (mean, std from :class:`CTInferer`) -> ``pred`` and ``pred_std`` in HU
    as ``(1, X, Y, Z)`` MetaTensors with a RAS affine in mm.

    The affine is the input CT's frame when the case had one (``reference_key``; the generated grid covers the same
    field of view), otherwise the renderer's frame: the grid centred on the isocentre at ``fov_mm / X`` mm.

    Args:
        keys: the prediction key.
        hu_window: the fixed HU window of the CT scale.
        fov_mm: field of view of the generated grid (mm).
        reference_key: the preprocessed input CT, when there is one.
    """

    def __init__(self, keys: str, hu_window: Sequence[float], fov_mm: float, reference_key: str = "ct") -> None:
        super().__init__(keys)
        self.hu_window, self.fov_mm, self.reference_key = tuple(map(float, hu_window)), float(fov_mm), reference_key

    def _affine(self, d: Mapping, shape: Sequence[int]) -> np.ndarray:
        ref = d.get(self.reference_key)
        if isinstance(ref, MetaTensor):
            affine = np.asarray(ref.affine, dtype=np.float64)
            # Same field of view, another grid: voxel i of the output sits at reference index (i + ½)·r − ½.
            ratio = np.array([r / n for r, n in zip(ref.shape[1:], shape, strict=True)])
            scale = np.diag([*ratio, 1.0])
            scale[:3, 3] = (ratio - 1.0) / 2.0
            return affine @ scale
        return centred_affine(shape, [self.fov_mm / n for n in shape])

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        for key in self.key_iterator(d):
            pred = torch.as_tensor(d[key]).float()
            if pred.dim() != 4 or pred.shape[0] != 2:
                raise ValueError(f"{key} must be (2, X, Y, Z) mean and std on the CT scale, got {tuple(pred.shape)}.")
            affine = torch.as_tensor(self._affine(d, pred.shape[1:]))
            half_range = 0.5 * (self.hu_window[1] - self.hu_window[0])
            d[key] = MetaTensor(ct_scale_to_hu(pred[:1], self.hu_window), affine=affine)
            d[f"{key}_std"] = MetaTensor(pred[1:] * half_range, affine=affine)
        return d


def _reason(err: BaseException) -> str:
    """The message that names the problem: MONAI's ``Compose`` wraps a transform's error in "applying transform ..."."""
    while isinstance(err, RuntimeError) and str(err).startswith("applying transform") and err.__cause__ is not None:
        err = err.__cause__
    return f"{type(err).__name__}: {err}"


def _case_name(case: Mapping, index: int, names_from_files: bool) -> str:
    """``name`` from the datalist, else ``case_<index>``; file stems only when asked (they may identify people)."""
    if isinstance(case.get("name"), str) and case["name"].strip():
        name = case["name"].strip()
    elif names_from_files:
        source = next((case[k] for k in INPUT_KEYS if isinstance(case.get(k), str)), None)
        name = Path(source).name.split(".")[0] if source else f"case_{index:04d}"
    else:
        name = f"case_{index:04d}"
    if name in (".", "..") or any(c in name for c in "/\\\0"):
        raise ValueError(f"case {index}: name {name!r} is not a usable file name.")
    return name


class CTInferenceWorkflow:
    """Generate a CT for every case of a datalist and write the results; failures are reported, not fatal.

    Per case ``<name>`` in ``output_dir/<name>/``: ``<name>_ct.nii.gz`` (HU, int16, RAS affine in mm),
    ``<name>_std.nii.gz`` (per-voxel standard deviation in HU over ``num_samples``; float32; only when more than one
    sample is drawn), ``<name>_dicom/`` (optional CT series, anonymous, fresh UIDs), ``<name>_preview.png`` (three
    orthogonal slices; each input view beside the DRR of the generated CT) and ``<name>.json`` (DRR consistency
    error per view, shapes, spacing, timing). ``output_dir/inference_report.json`` lists every case as done or
    failed with the reason. Existing outputs are never replaced unless ``overwrite``.

    Args:
        cases: the datalist cases (see :func:`load_cases`).
        network: the generator; its weights come from ``ckpt_path``.
        ckpt_path: checkpoint (``weights_only``); ``preset``: the config's preset record, checked against it.
        preprocessing, inferer, postprocessing: the MONAI pieces (see the module docstring).
        composer: the renderer of the DRR consistency check; hu_window: the CT scale's HU window.
        output_dir: where the results go; device: where the network runs.
        write_dicom: also write a DICOM series; save_preview: write the PNG.
        names_from_files: name outputs after input file stems instead of ``case_<index>`` when no ``name`` is given.
        evaluation: an optional per-case hook ``evaluation(name, data, ct_hu, device)`` (``CTEvaluation``) whose
            ``finish(report)`` is called at the end.
    """

    def __init__(
        self,
        cases: Sequence[Mapping],
        network: torch.nn.Module,
        preprocessing: Callable,
        inferer: Callable,
        postprocessing: Callable,
        composer: RadiographComposer,
        hu_window: Sequence[float],
        output_dir: str | os.PathLike,
        ckpt_path: str | os.PathLike | None = None,
        preset: Mapping | None = None,
        device: str | torch.device = "cpu",
        write_dicom: bool = False,
        save_preview: bool = True,
        overwrite: bool = False,
        names_from_files: bool = False,
        evaluation: object | None = None,
    ) -> None:
        self.cases = list(cases)
        self.network, self.preprocessing, self.inferer, self.postprocessing = (
            network,
            preprocessing,
            inferer,
            postprocessing,
        )
        self.composer, self.hu_window = composer, tuple(map(float, hu_window))
        self.output_dir, self.ckpt_path, self.preset = Path(output_dir), ckpt_path, preset
        self.device = torch.device(device)
        self.write_dicom, self.save_preview, self.overwrite = bool(write_dicom), bool(save_preview), bool(overwrite)
        self.names_from_files, self.evaluation = bool(names_from_files), evaluation

    def load_weights(self) -> None:
        """Load ``ckpt_path`` into the network (``weights_only``, preset checked)."""
        if self.ckpt_path is None:
            raise ValueError(
                "ckpt_path: no checkpoint given; set ckpt_path to a trained model (bundle/models/model.pt)."
            )
        load_network_weights(self.network, self.ckpt_path, self.preset, keys=("model", "ema", "network"))
        self.network.to(self.device).eval()

    def _targets(self, name: str) -> dict[str, Path]:
        folder = self.output_dir / name
        return {
            "ct": folder / f"{name}_ct.nii.gz",
            "std": folder / f"{name}_std.nii.gz",
            "preview": folder / f"{name}_preview.png",
            "json": folder / f"{name}.json",
            "dicom": folder / f"{name}_dicom",
        }

    def _run_case(self, index: int, case: Mapping) -> dict:
        name = _case_name(case, index, self.names_from_files)
        targets = self._targets(name)
        wanted = [targets["ct"], targets["json"]] + ([targets["preview"]] if self.save_preview else [])
        existing = [str(p) for p in wanted if p.exists()]
        if existing and not self.overwrite:
            raise FileExistsError(f"outputs exist ({existing[0]}); refusing to overwrite (pass --overwrite true).")
        start = time.perf_counter()
        data = self.preprocessing(dict(case))
        views, mask = torch.as_tensor(data["image"]).float(), torch.as_tensor(data["image_mask"]).bool()
        out = self.inferer(views[None].to(self.device), self.network, view_mask=mask[None].to(self.device))
        data["pred"] = out[0].cpu()
        data = self.postprocessing(data)
        seconds = time.perf_counter() - start
        hu, std = data["pred"], data["pred_std"]
        affine = np.asarray(hu.affine, dtype=np.float64)
        targets["ct"].parent.mkdir(parents=True, exist_ok=True)
        write_nifti(targets["ct"], np.round(hu[0].numpy()).astype(np.int16), affine, self.overwrite)
        samples = int(getattr(self.inferer, "num_samples", 1))
        if samples > 1:
            write_nifti(targets["std"], std[0].numpy().astype(np.float32), affine, self.overwrite)
        if self.write_dicom:
            write_ct_dicom_series(targets["dicom"], hu[0], affine, "Generated CT (xray2ct)", self.overwrite)
        filled = torch.nan_to_num(views, nan=-1.0)  # absent views as an unexposed detector
        drrs, errors = drr_consistency(self.composer, hu, filled, mask)
        if self.save_preview:
            save_preview(targets["preview"], hu[0], filled, drrs, mask, self.overwrite)
        summary = {
            "name": name,
            "input": "ct" if "ct" in data else "radiographs",
            "views": [str(v) for v, m in zip(self.composer.renderer.geometry.views, mask.tolist(), strict=True) if m],
            "shape": list(hu.shape[1:]),
            "spacing_mm": list(voxel_spacing(hu)),
            "num_samples": samples,
            "drr_error_per_view": errors,
            "drr_error": float(np.mean(list(errors.values()))),
            "mean_std_hu": float(std.mean()),
            "seconds": round(seconds, 3),
            "files": {k: str(v.relative_to(self.output_dir)) for k, v in targets.items() if v.exists()},
        }
        if self.evaluation is not None:
            summary["metrics"] = self.evaluation(name, data, hu, self.device, model_drr_errors=errors)
        text = json.dumps(summary, indent=2)
        atomic_write(targets["json"], lambda p: Path(p).write_text(text), self.overwrite)
        return summary

    def run(self) -> dict:
        """Run every case; returns (and writes) ``inference_report.json``. Raises only when every case failed."""
        self.load_weights()
        report: dict = {"done": [], "failed": []}
        for index, case in enumerate(self.cases):
            try:
                summary = self._run_case(index, case)
            except Exception as err:  # one bad case must not stop the others; it is reported with its reason
                label = case.get("name") if isinstance(case.get("name"), str) else f"case {index}"
                reason = _reason(err)
                logger.error("%s failed: %s", label, reason)
                report["failed"].append({"case": index, "name": label, "error": reason})
                continue
            logger.info("%s: DRR error %.4f in %.1f s", summary["name"], summary["drr_error"], summary["seconds"])
            report["done"].append(summary)
        if self.evaluation is not None:
            report["metrics_file"] = self.evaluation.finish(report, self.output_dir, self.overwrite)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        text = json.dumps(report, indent=2)
        atomic_write(self.output_dir / "inference_report.json", lambda p: Path(p).write_text(text), overwrite=True)
        if not report["done"]:
            raise RuntimeError(
                f"every case failed ({len(report['failed'])}); first: {report['failed'][0]['error']}"
                if report["failed"]
                else "no cases to run."
            )
        return report
