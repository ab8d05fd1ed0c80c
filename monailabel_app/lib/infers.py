"""The bundle as two MONAI Label models: the synthetic CT as an image, and its tissue label map for Slicer.

Both are MONAI Label's own ``BundleInferTask`` over the bundle's ``configs/inference.yaml`` (stacked on
``configs/common.yaml``: ``network_def``, ``preprocessing``, ``inferer``, ``postprocessing``) and ``models/model.pt``
(the state dict under ``"model"``, loaded strictly):

* :class:`XrayToCTInferTask` (model type ``others``, no labels) returns the generated CT in signed HU (int16 by
  default; :func:`lib.results.ct_result_dtype` says what a requested label type such as uint8 gets). Clients list it
  as a model that makes a new image, not as a segmentation.
* :class:`TissueInferTask` (model type ``segmentation``; labels lung, fat, soft tissue, bone) runs the same
  generation and returns the tissue label map of the CT (:func:`lib.tissue.tissue_labels`), the file 3D Slicer's
  segmentation path reads; it also writes the CT itself (``synthetic_ct_file`` in the result), which the app stores
  in the datastore as a new image (see ``main.py``). Given a synthetic CT that the app stored (``synthetic_ct_input``
  in the request), it labels that CT as it is instead of generating a CT from it.

What differs from a segmentation bundle, and why:

* ``add_post_restore=False``. MONAI Label's ``Restored`` brings a prediction back onto the input image's grid: right
  for a segmentation of the input, wrong for a new 3D volume made from 2D radiographs (or from the views of a CT of
  another size). The channel is squeezed instead, keeping the prediction's own affine (RAS, mm) for the writer.
* ``result_extension`` defaults to ``.nii.gz`` (the writer would otherwise take the input's, e.g. ``.png``) and must
  be one that holds a 3D volume (:func:`lib.results.result_extension`).
* The bundle config's parsed objects are cleared before each step (see ``_reparse``): MONAI Label re-imports the
  bundle's ``scripts`` package at every step, and a plain ``BundleInferTask`` fails its first request on this bundle.

Per request (and as defaults with ``--conf``): ``num_inference_steps``, ``num_samples`` and ``seed`` override the
bundle's sampling settings. Requests are checked before any work, and a bad one is refused with
:class:`lib.results.RequestRefused` (HTTP 400 from the app).
"""

from __future__ import annotations

import copy
import logging
import os
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import EnsureChannelFirstd, LoadImaged, SqueezeDimd
from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.tasks.infer.bundle import BundleInferTask
from monailabel.transform.writer import Writer

from .results import RequestRefused, ct_result_dtype, hu_values, label_result_dtype, result_extension
from .tissue import axial_axis, label_info, label_names, tissue_labels

logger = logging.getLogger(__name__)

#: Sampling settings of the bundle's inference.yaml that a request (or --conf) may override, with their types.
SAMPLING_OPTIONS = {"num_inference_steps": int, "num_samples": int, "seed": int}
#: The key under which the tissue task keeps the CT (int16 HU) beside the label map.
CT_KEY = "synthetic_ct"


class Summaryd:
    """Put what the client cannot see in the image into the result JSON: shape, voxel size, HU range, the views used
    and the mean per-voxel standard deviation (HU) over the samples."""

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


class HUDtyped:
    """The CT under ``key`` in the request's ``result_dtype`` (:func:`lib.results.hu_values`: whole HU, never
    wrapped); ``note`` (why a requested dtype was not used) goes into the result JSON."""

    def __init__(self, key: str = "pred", result_key: str = "result") -> None:
        self.key, self.result_key = key, result_key

    def __call__(self, data: dict) -> dict:
        d = dict(data)
        d[self.key] = hu_values(d[self.key], d["result_dtype"])
        result = {**dict(d.get(self.result_key) or {}), "result_dtype": d["result_dtype"]}
        if d.get("result_dtype_note"):
            result["result_dtype_note"] = d["result_dtype_note"]
        d[self.result_key] = result
        return d


class TissueLabelsd:
    """Keep the CT (int16 HU) under ``ct_key`` and put its tissue label map (uint8, same affine) under ``key``;
    the result JSON gets the label names, colours and HU intervals and each class's volume in mL."""

    def __init__(self, key: str = "pred", ct_key: str = CT_KEY, result_key: str = "result") -> None:
        self.key, self.ct_key, self.result_key = key, ct_key, result_key

    def __call__(self, data: dict) -> dict:
        d = dict(data)
        ct = hu_values(d[self.key], "int16")  # what the datastore stores; the label map is derived from exactly it
        affine = np.asarray(ct.affine, dtype=np.float64)
        labels = tissue_labels(ct.numpy(), axis=axial_axis(affine))  # (X, Y, Z) uint8
        d[self.ct_key] = ct
        d[self.key] = MetaTensor(torch.from_numpy(labels), meta=dict(ct.meta))  # the CT's affine and metadata
        voxel_ml = abs(float(np.linalg.det(affine[:3, :3]))) / 1000.0
        volumes = {name: round(float((labels == value).sum()) * voxel_ml, 1) for name, value in label_names().items()}
        d[self.result_key] = {**dict(d.get(self.result_key) or {}), "label_info": label_info(), "volume_ml": volumes}
        return d


class XrayToCTInferTask(BundleInferTask):
    """The synthetic CT as an image in signed HU (model type ``others``; see the module docstring)."""

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

    def __call__(self, request, callbacks=None):
        return super().__call__(self.checked_request(request), callbacks)

    def checked_request(self, request: dict) -> dict:
        """The request with its output format resolved and its sampling options checked, before any work; a bad
        one raises :class:`lib.results.RequestRefused`."""
        request = dict(request)
        extension = request.get("result_extension") or self._config.get("result_extension")
        request["result_extension"] = result_extension(extension)
        request["result_dtype"], request["result_dtype_note"] = ct_result_dtype(request.get("result_dtype"))
        self._sampling_options(request)
        return request

    def _load_bundle_config(self, path, config):
        # This bundle's inference.yaml stacks on configs/common.yaml (the model-zoo way of sharing a block between
        # workflows); BundleInferTask reads one file, so the stack is given here. The network, geometry and diffusion
        # settings then come from models/model.pt's own record (inference.yaml reads them from the checkpoint).
        common = os.path.join(path, "configs", "common.yaml")
        return super()._load_bundle_config(path, [common, config] if os.path.exists(common) else config)

    def _sampling_options(self, data: dict | None) -> dict:
        options = {}
        for key, cast in SAMPLING_OPTIONS.items():
            value = (data or {}).get(key)
            if value is None or value == "" or key not in self.bundle_config.config:
                continue
            try:
                value = cast(value)
            except (TypeError, ValueError):
                raise RequestRefused(f"{key} must be an integer, got {value!r}.") from None
            if value < 0 or (key != "seed" and value < 1):
                raise RequestRefused(f"{key} must be a positive integer, got {value!r}.")
            options[key] = value
        return options

    def _apply_sampling_options(self, data: dict | None) -> None:
        for key, value in self._sampling_options(data).items():
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
        post.extend(self._output_transforms())
        return post

    def _output_transforms(self) -> list[Callable]:
        return [HUDtyped(self.key_pred, self.output_json_key)]


class TissueInferTask(XrayToCTInferTask):
    """The tissue label map of the synthetic CT (model type ``segmentation``), with the CT written beside it for the
    datastore (``store_ct``, default true); see the module docstring."""

    def __init__(self, path: str, conf: dict[str, str], **kwargs) -> None:
        kwargs.setdefault("type", InferType.SEGMENTATION)
        super().__init__(path, conf, **kwargs)
        if not self.is_valid():
            return
        self.labels = label_names()
        self.description = (
            "Tissue label map (lung, fat, soft tissue, bone) of a CT generated from chest radiographs; the CT itself "
            "is stored in the datastore as <image>_synthetic_ct"
        )
        self._config["store_ct"] = True

    def checked_request(self, request: dict) -> dict:
        request = dict(request)
        extension = request.get("result_extension") or self._config.get("result_extension")
        request["result_extension"] = result_extension(extension)
        request["result_dtype"] = label_result_dtype(request.get("result_dtype"))
        self._sampling_options(request)
        return request

    def __call__(self, request, callbacks=None):
        if request.get("synthetic_ct_input"):
            return self._label_ct(self.checked_request(request))
        return super().__call__(request, callbacks)  # checks the request (checked_request below)

    def _output_transforms(self) -> list[Callable]:
        return [TissueLabelsd(self.key_pred, CT_KEY, self.output_json_key)]

    def writer(self, data, extension=None, dtype=None):
        label_file, result = super().writer(data, extension, dtype)
        store = data.get("store_ct", True)
        if isinstance(store, str):
            store = store.strip().lower() not in ("false", "0", "no", "")
        if store and label_file is not None:
            # The CT as the CT model writes it (int16 HU, NIfTI), for the app to store as a new datastore image.
            ct = {**data, self.key_pred: data[CT_KEY], "result_extension": ".nii.gz", "result_dtype": "int16"}
            ct_file, _ = Writer(label=self.key_pred, json=self.output_json_key)(ct)
            result = {**result, "synthetic_ct_file": ct_file}
        return label_file, result

    def _label_ct(self, request: dict):
        """The label map of a CT that is already a synthetic CT of this app: labelled as it is, no generation."""
        start = time.time()
        data = copy.deepcopy({**self._config, **request})
        data = LoadImaged(keys=self.key_pred, image_only=True)({**data, self.key_pred: request["image"]})
        data = EnsureChannelFirstd(keys=self.key_pred)(data)
        data = SqueezeDimd(keys=self.key_pred, dim=0)(data)
        data[self.output_json_key] = {"source": "labelled the synthetic CT given; no new CT was generated"}
        data = Summaryd(self.key_pred, self.output_json_key)(data)
        data = TissueLabelsd(self.key_pred, CT_KEY, self.output_json_key)(data)
        data["store_ct"] = False
        label_file, result = self.writer(data)
        result["label_names"] = self.labels
        result["latencies"] = {"total": round(time.time() - start, 2)}
        return label_file, result
