"""Inference workflow: cases -> X-ray views -> cascade samples -> CT files in HU, uncertainty, preview, report.

``configs/inference.yaml`` declares the pieces and MONAI Label's ``BundleInferTask`` uses three of them as they are:
``preprocessing`` (one case -> ``image``: the network's ``(V, H, W)`` views, :class:`~scripts.data.XrayInputsd`),
``inferer`` (:class:`~scripts.engines.sampler.CTInferer`) and ``postprocessing`` (:class:`~scripts.data.CTOutputd`:
HU, affine). The
:class:`CTInferenceWorkflow` runs them over a datalist for the bundle runner, one case at a time, so that one bad
case is reported and the others still complete.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from ..checkpoint import load_network_weights
from ..data import INPUT_KEYS, voxel_spacing, write_ct_dicom_series, write_nifti
from ..physics import RadiographComposer
from ..utils import atomic_write, claim, flag, user_error
from .evaluation import drr_consistency
from .preview import save_preview

__all__ = ["CTInferenceWorkflow", "NoCaseSucceeded"]

logger = logging.getLogger(__name__)


def _reason(err: BaseException) -> str:
    """The message that names the problem: MONAI's ``Compose`` wraps a transform's error in "applying transform ..."."""
    while isinstance(err, RuntimeError) and str(err).startswith("applying transform") and err.__cause__ is not None:
        err = err.__cause__
    return f"{type(err).__name__}: {err}"


def _reading_notes(data: Mapping) -> dict:
    """What the readers applied and assumed: per radiograph view, and for a CT input its field-of-view coverage
    (mm per RAS axis with CT data) and warnings (partial coverage, gantry tilt, a body cut by the scan's edge)."""
    notes = dict(data.get("image_notes") or {})
    ct = data.get("ct")
    meta = getattr(ct, "meta", None) or {}
    if "fov_coverage_mm" in meta:
        warnings = str(meta.get("ct_warnings") or "")
        notes["ct"] = {
            "fov_coverage_mm": [round(float(v), 1) for v in meta["fov_coverage_mm"]],
            "warnings": [w for w in warnings.split("\n") if w],
        }
    return notes


class NoCaseSucceeded(ValueError):
    """Every case of the datalist failed on its input (the reasons are in ``inference_report.json``)."""


def _input_files(case: Mapping, names_from_files: bool) -> dict:
    """``{"input_files": {key: file name}}`` when outputs are named after inputs (names may identify people)."""
    if not names_from_files:
        return {}
    return {"input_files": {k: Path(case[k]).name for k in INPUT_KEYS if isinstance(case.get(k), str)}}


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


def _sampling(inferer, rendered: bool) -> dict | None:
    """The sampler's settings (``CascadeSampler.settings``) and whether this case was DRR-guided, or ``None`` for an
    inferer that does not state them."""
    settings = getattr(getattr(inferer, "sampler", None), "settings", None)
    if not callable(settings):
        return None
    record = settings()
    guides = getattr(inferer, "guides", None)
    record["drr_guidance_applied"] = bool(record["drr_guidance"] is not None and (guides is None or guides(rendered)))
    return record


class CTInferenceWorkflow:
    """Generate a CT for every case of a datalist and write the results; failures are reported, not fatal.

    Per case ``<name>`` in ``output_dir/<name>/``: ``<name>_ct.nii.gz`` (HU, int16, RAS affine in mm),
    ``<name>_std.nii.gz`` (per-voxel standard deviation in HU over ``num_samples``; float32; only when more than one
    sample is drawn), ``<name>_dicom/`` (optional CT series, anonymous, fresh UIDs, marked synthetic:
    :meth:`write_series`), ``<name>_preview.png`` (three orthogonal slices; each input view beside the DRR of the
    generated CT) and ``<name>.json`` (DRR consistency error per view, shapes, spacing, timing).
    ``output_dir/inference_report.json`` lists every case as done or failed with the reason. Existing outputs are
    never replaced unless ``overwrite``.

    Args:
        cases: the datalist cases (see :func:`scripts.data.load_cases`).
        network: the generator; its weights come from ``ckpt_path``.
        ckpt_path: checkpoint (``weights_only``); ``model_config``: this run's model config, checked against the
            checkpoint's (a contradicting setting is refused by name).
        preprocessing, inferer, postprocessing: the MONAI pieces (see the module docstring).
        composer: the renderer of the DRR consistency check; hu_window: the CT scale's HU window.
        output_dir: where the results go; device: where the network runs.
        write_dicom: also write a DICOM series; save_preview: write the PNG.
        names_from_files: name outputs after input file stems instead of ``case_<index>`` when no ``name`` is given.
        evaluation: an optional per-case hook ``evaluation(name, data, ct_hu, device, ...)`` (``CTEvaluation``; it
            also gets the DRR errors, the std and the sampler's seconds) whose ``finish(report)`` is called at the end.
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
        model_config: Mapping | None = None,
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
        self.output_dir, self.ckpt_path, self.model_config = Path(output_dir), ckpt_path, model_config
        self.device = torch.device(device)
        self.write_dicom, self.save_preview = flag(write_dicom, "write_dicom"), flag(save_preview, "save_preview")
        self.overwrite, self.evaluation = flag(overwrite, "overwrite"), evaluation
        self.names_from_files = flag(names_from_files, "names_from_files")

    def load_weights(self) -> None:
        """Load ``ckpt_path`` into the network (``weights_only``, model config checked)."""
        if self.ckpt_path is None:
            raise ValueError(
                "ckpt_path: no checkpoint given; set ckpt_path to a trained model (bundle/models/model.pt)."
            )
        load_network_weights(self.network, self.ckpt_path, self.model_config)
        self.network.to(self.device).eval()

    def write_series(self, folder: Path, hu: torch.Tensor, affine: np.ndarray) -> list[Path]:
        """The CT as a DICOM series of its own study (anonymous patient, fresh UIDs, marked synthetic)."""
        return write_ct_dicom_series(folder, hu, affine, overwrite=self.overwrite)

    def _targets(self, name: str) -> dict[str, Path]:
        folder = self.output_dir / name
        return {
            "ct": folder / f"{name}_ct.nii.gz",
            "std": folder / f"{name}_std.nii.gz",
            "preview": folder / f"{name}_preview.png",
            "json": folder / f"{name}.json",
            "dicom": folder / f"{name}_dicom",
        }

    def _infer(self, views: torch.Tensor, mask: torch.Tensor, rendered: bool) -> torch.Tensor:
        """The inferer on one case; ``rendered`` reaches inferers that take it (:class:`CTInferer`)."""
        if "rendered" in inspect.signature(self.inferer.__call__).parameters:
            return self.inferer(views, self.network, view_mask=mask, rendered=rendered)
        return self.inferer(views, self.network, view_mask=mask)

    def _run_case(self, index: int, case: Mapping) -> dict:
        name = _case_name(case, index, self.names_from_files)
        targets = self._targets(name)
        folder = targets["ct"].parent
        try:  # the case's folder is claimed before any work: a second run (or a repeated name) cannot take it too
            folder.mkdir(parents=True, exist_ok=self.overwrite)
        except FileExistsError:
            raise FileExistsError(
                f"{folder} exists (another case or run wrote there); refusing to overwrite it (pass --overwrite true)."
            ) from None
        start = time.perf_counter()
        data = self.preprocessing(dict(case))
        views, mask = torch.as_tensor(data["image"]).float(), torch.as_tensor(data["image_mask"]).bool()
        generation = time.perf_counter()
        rendered = "ct" in data  # views rendered from a CT input: exact DRRs (what drr_guidance "auto" guides)
        out = self._infer(views[None].to(self.device), mask[None].to(self.device), rendered)
        data["pred"] = out[0].cpu()
        generation = time.perf_counter() - generation  # the sampler alone (.cpu() waits for the device): the
        # evaluation compares it with each baseline's forward pass; `seconds` below is the whole case
        data = self.postprocessing(data)
        seconds = time.perf_counter() - start
        hu, std = data["pred"], data["pred_std"]
        affine = np.asarray(hu.affine, dtype=np.float64)
        write_nifti(targets["ct"], np.round(hu[0].numpy()).astype(np.int16), affine, self.overwrite)
        samples = int(getattr(self.inferer, "num_samples", 1))
        if samples > 1:
            write_nifti(targets["std"], std[0].numpy().astype(np.float32), affine, self.overwrite)
        if self.write_dicom:
            self.write_series(targets["dicom"], hu[0], affine)
        filled = torch.nan_to_num(views, nan=-1.0)  # absent views as an unexposed detector
        drrs, errors = drr_consistency(self.composer, hu, filled, mask)
        if self.save_preview:
            save_preview(targets["preview"], hu[0], filled, drrs, mask, self.overwrite)
        summary = {
            "name": name,
            "datalist_index": index,
            **_input_files(case, self.names_from_files),
            "input": "ct" if "ct" in data else "radiographs",
            # What the readers applied and assumed (DICOM LUTs, masks, orientation, missing spacing, ...).
            "reading": _reading_notes(data),
            "views": [str(v) for v, m in zip(self.composer.renderer.geometry.views, mask.tolist(), strict=True) if m],
            "shape": list(hu.shape[1:]),
            "spacing_mm": list(voxel_spacing(hu)),
            "num_samples": samples,
            # How it was generated (steps, guidance, the regression prior's file name): a CT is read with its recipe.
            "sampling": _sampling(self.inferer, rendered),
            "drr_error_per_view": errors,
            "drr_error": float(np.mean(list(errors.values()))),
            "mean_std_hu": float(std.mean()),
            "seconds": round(seconds, 3),
            "files": {k: str(v.relative_to(self.output_dir)) for k, v in targets.items() if v.exists()},
        }
        if self.evaluation is not None:
            summary["metrics"] = self.evaluation(
                name,
                data,
                hu,
                self.device,
                model_drr_errors=errors,
                std=std if samples > 1 else None,
                model_seconds=generation,
            )
        text = json.dumps(summary, indent=2)
        atomic_write(targets["json"], lambda p: Path(p).write_text(text), self.overwrite)
        return summary

    def run(self) -> dict:
        """Run every case; returns (and writes) ``inference_report.json``.

        The report is claimed first (created exclusively), so that of two runs started into one ``output_dir`` the
        second stops before any work. One bad case does not stop the others: it is reported with its reason and the
        run ends with a one-line summary (exit code 0). When every case failed it raises
        :class:`NoCaseSucceeded` (a user error: its one line is the run's last).
        """
        report_path = self.output_dir / "inference_report.json"
        claim(report_path, json.dumps({"status": "running", "pid": os.getpid()}), overwrite=self.overwrite)
        self.load_weights()
        report: dict = {"done": [], "failed": []}
        for index, case in enumerate(self.cases):
            try:
                summary = self._run_case(index, case)
            except Exception as err:  # one bad case must not stop the others; it is reported with its reason
                if user_error(err) is None:
                    logger.exception("case %d failed on a bug (not on its input):", index)
                label = case.get("name") if isinstance(case.get("name"), str) else f"case {index}"
                reason = _reason(err)
                logger.error("%s failed: %s", label, reason)
                failed = {"datalist_index": index, "name": label, **_input_files(case, self.names_from_files)}
                report["failed"].append({**failed, "error": reason})
                continue
            logger.info("%s: DRR error %.4f in %.1f s", summary["name"], summary["drr_error"], summary["seconds"])
            report["done"].append(summary)
        if self.evaluation is not None:
            report["metrics_file"] = self.evaluation.finish(report, self.output_dir, self.overwrite)
        text = json.dumps(report, indent=2)
        atomic_write(report_path, lambda p: Path(p).write_text(text), overwrite=True)
        done, failed = len(report["done"]), len(report["failed"])
        if not done:
            first = report["failed"][0] if failed else None
            raise NoCaseSucceeded(
                f"every case failed ({failed}); first, datalist entry {first['datalist_index']}: {first['error']} "
                f"(all reasons in {report_path})."
                if first
                else "no cases to run."
            )
        print(  # the run's last line: what was made, what was not, and where to look
            f"done: {done} of {done + failed} cases in {self.output_dir}"
            + (f"; {failed} failed, see {report_path}" if failed else "")
        )
        return report
