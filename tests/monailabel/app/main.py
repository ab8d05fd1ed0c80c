"""A minimal MONAI Label app that serves MONAI bundles given as local folders, the xray2ct bundle among them.

    monailabel start_server --app tests/monailabel/app --studies STUDIES --conf models bundle

``--conf models`` is a comma-separated list of bundle folders, each ``PATH`` or ``NAME=PATH`` (the model's name
defaults to the folder's name); a relative path is taken from the working directory, else from this app's folder.
Each bundle is served by MONAI Label's own ``BundleInferTask``, which reads ``configs/inference.yaml`` (stacked on
``configs/common.yaml`` when the bundle has one: ``network_def``, ``preprocessing``, ``inferer``, ``postprocessing``)
and ``models/model.pt`` (the state dict under ``"model"``). The input image (``image``) is a CT file or DICOM
series, whose PA and lateral views are rendered with the training geometry, or a single radiograph file
(PNG/JPEG/TIFF, DICOM DX/CR, 2D NIfTI) read as the PA view; the result is the generated CT in HU as NIfTI.

Two things differ from a segmentation bundle, and :class:`XrayToCTInferTask` handles both:

* ``add_post_restore=False``. MONAI Label's ``Restored`` brings a prediction back onto the input image's grid
  (resized to the input's ``spatial_shape``, given its ``original_affine``): right for a segmentation of the input,
  wrong for a new 3D volume made from 2D radiographs (or from the rendered views of a CT of another size). With
  this bundle it happens to do no harm today, because the views under ``image`` are a plain tensor without
  metadata, so it only squeezes the channel; it would resize the CT as soon as they carried a 2D image's metadata.
  In its place the channel is squeezed explicitly, keeping the prediction's own affine (RAS, mm), which MONAI
  Label's writer then uses.
* ``result_extension`` defaults to ``.nii.gz``: the writer otherwise takes the input's extension, and a 3D volume
  cannot be written as the PNG it came from.

It also clears the bundle config's parsed objects before each step (see ``_reparse``): MONAI Label re-imports the
bundle's ``scripts`` package at every step, and a plain ``BundleInferTask`` fails its first request on this bundle.

Per request (and as defaults with ``--conf``): ``num_inference_steps``, ``num_samples`` and ``seed`` override the
bundle's sampling settings, e.g. ``{"num_inference_steps": 2}`` for a quick smoke test.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence

import numpy as np
import torch
from monai.transforms import SqueezeDimd
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType
from monailabel.tasks.infer.bundle import BundleInferTask

logger = logging.getLogger(__name__)

#: Sampling settings of the bundle's inference.yaml that a request (or --conf) may override, with their types.
SAMPLING_OPTIONS = {"num_inference_steps": int, "num_samples": int, "seed": int}


class Summaryd:
    """Put what the client cannot see in the image into the result JSON: shape, voxel size, the views used and the
    mean per-voxel standard deviation (HU) over the samples."""

    def __init__(self, pred_key: str = "pred", result_key: str = "result") -> None:
        self.pred_key, self.result_key = pred_key, result_key

    def __call__(self, data: dict) -> dict:
        d = dict(data)
        pred = d[self.pred_key]
        affine = np.asarray(pred.affine, dtype=np.float64)
        summary = {
            "shape": [int(s) for s in pred.shape[-3:]],
            "spacing_mm": [round(float(s), 4) for s in np.sqrt((affine[:3, :3] ** 2).sum(0))],
            "hu_min": float(pred.min()),
            "hu_max": float(pred.max()),
        }
        mask = d.get("image_mask")
        if mask is not None:
            summary["views_present"] = [bool(m) for m in torch.as_tensor(mask).tolist()]
        std = d.get(f"{self.pred_key}_std")
        if std is not None:
            summary["mean_std_hu"] = float(torch.as_tensor(std).float().mean())
        d[self.result_key] = {**dict(d.get(self.result_key) or {}), **summary}
        return d


class XrayToCTInferTask(BundleInferTask):
    """``BundleInferTask`` for a bundle whose network makes a 3D volume from 2D inputs (see the module docstring).

    Weights are loaded strictly (``load_strict=True``): a checkpoint of another preset fails loudly instead of
    leaving layers at their initial values.
    """

    def __init__(self, path: str, conf: dict[str, str], **kwargs) -> None:
        kwargs.setdefault("type", InferType.OTHERS)
        super().__init__(path, conf, add_post_restore=False, load_strict=True, **kwargs)
        if not self.is_valid():
            return
        # BundleInferTask names labels after the output's channel_def (segmentation classes); a CT in HU has none,
        # and clients would list the channel's description as a label.
        self.labels = {}
        if "progress_bar" in self.bundle_config.config:
            self.bundle_config["progress_bar"] = False  # no tqdm bars in the server log
        self._config["result_extension"] = ".nii.gz"
        for key, cast in SAMPLING_OPTIONS.items():  # shown to clients as options; --conf sets the default
            value = conf.get(key, self.bundle_config.get(key))
            if isinstance(value, (int, str)) and not isinstance(value, bool):  # not a per-stage list
                self._config[key] = cast(value)

    def _load_bundle_config(self, path, config):
        # This bundle's inference.yaml stacks on configs/common.yaml (the model-zoo way of sharing a block between
        # workflows); BundleInferTask reads one file, so the stack is given here. The network, geometry and diffusion
        # settings then come from models/model.pt's own record (inference.yaml reads them from the checkpoint).
        common = os.path.join(path, "configs", "common.yaml")
        return super()._load_bundle_config(path, [common, config] if os.path.exists(common) else config)

    def _apply_sampling_options(self, data: dict | None) -> None:
        for key, cast in SAMPLING_OPTIONS.items():
            value = (data or {}).get(key)
            if value is None or value == "" or key not in self.bundle_config.config:
                continue
            value = cast(value)
            if value < 0 or (key != "seed" and value < 1):
                raise ValueError(f"{key} must be a positive integer, got {value!r}.")
            if self.bundle_config.get(key) != value:
                self.bundle_config[key] = value  # resets the parser's cache: the next parse sees the new value

    def _reparse(self) -> None:
        # Each of BundleInferTask's steps unloads the bundle's `scripts` modules (MONAI Label reloads app code) and
        # imports them again, while the config parser keeps the objects it resolved earlier (the network's
        # geometry, made in __init__). Clearing the parser's cache first makes every step build its objects from
        # the same, current module generation (else isinstance checks across the two fail: "geometry must be a
        # ProjectionGeometry, got ProjectionGeometry").
        self.bundle_config.ref_resolver.reset()

    def pre_transforms(self, data=None) -> Sequence[Callable]:
        self._reparse()
        return super().pre_transforms(data)

    def inferer(self, data=None):
        self._apply_sampling_options(data)
        self._reparse()
        return super().inferer(data)

    def post_transforms(self, data=None) -> Sequence[Callable]:
        self._reparse()
        post = list(super().post_transforms(data))
        post.append(SqueezeDimd(keys=self.key_pred, dim=0))  # (1, X, Y, Z) -> (X, Y, Z), affine kept
        post.append(Summaryd(self.key_pred, self.output_json_key))
        return post


def _bundle_paths(spec: str, app_dir: str) -> dict[str, str]:
    """``--conf models`` -> {model name: bundle folder}."""
    bundles = {}
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            continue
        name, sep, path = item.partition("=")
        if not sep:
            name, path = "", item
        path = os.path.expanduser(path)
        if not os.path.isabs(path) and not os.path.isdir(path):
            path = os.path.join(app_dir, path)
        path = os.path.realpath(path)
        bundles[name or os.path.basename(path)] = path
    return bundles


def _bundle_version(path: str) -> str:
    """The served bundle's version (configs/metadata.json), so that the app reports the one version of the bundle."""
    metadata = os.path.join(path, "configs", "metadata.json")
    if not os.path.isfile(metadata):
        return "unknown"
    with open(metadata) as file:
        return str(json.load(file).get("version", "unknown"))


class XrayToCTApp(MONAILabelApp):
    """Serves every bundle of ``--conf models`` with :class:`XrayToCTInferTask`."""

    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]) -> None:
        self.bundles = _bundle_paths(conf.get("models", ""), app_dir)
        if not self.bundles:
            raise ValueError("no bundle given: start the server with --conf models <bundle folder>[,<another>].")
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="xray2ct",
            description="Chest radiographs (PA, lateral) to a 3D CT in HU with MONAI bundles",
            version=_bundle_version(next(iter(self.bundles.values()))),
        )

    def init_infers(self) -> dict[str, InferTask]:
        infers: dict[str, InferTask] = {}
        for name, path in self.bundles.items():
            if not os.path.isdir(path):
                raise ValueError(f"bundle folder {path} (model {name!r}) does not exist.")
            task = XrayToCTInferTask(path, self.conf)
            if not task.is_valid():
                raise ValueError(
                    f"bundle {path} (model {name!r}) is not servable: it needs configs/inference.yaml and "
                    "models/model.pt (see the MONAI Label warning above)."
                )
            logger.info("+++ Adding inferer: %s => %s", name, path)
            infers[name] = task
        return infers
