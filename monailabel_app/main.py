"""The MONAI Label app of the xray2ct bundle: chest radiographs (PA, lateral) to a synthetic 3D CT.

    monailabel start_server --app monailabel_app --studies STUDIES [--conf models NAME=BUNDLE[,...]]

Without ``--conf models`` it serves this repository's bundle (``../bundle`` from this folder) as ``xray2ct``.
``--conf models`` is a comma-separated list of bundle folders, each ``PATH`` or ``NAME=PATH`` (the name defaults to
the folder's name); a relative path is taken from the working directory, else from this app's folder. Each bundle
``NAME`` gives two models (``lib/infers.py``):

* ``NAME`` (type ``others``): the generated CT as an image, signed HU (int16 unless a float or int32 is asked for),
  never written through a label type: a request for ``result_dtype`` uint8/uint16 (what label clients send) still
  gets int16 HU, and the result JSON says why. It is never saved as a label (``save_label`` is ignored).
* ``NAME_tissue`` (type ``segmentation``, the one 3D Slicer's module lists): the tissue label map of the generated
  CT (lung, fat, soft tissue, bone; names, colours and HU intervals in the result's ``label_info``). The CT itself is
  stored in the datastore as a new image ``<image>_synthetic_ct`` beside the input (``store_ct``, default true),
  with the label map as that image's ``original`` label, so that a client opens the CT as a volume with the tissue
  segmentation on it. Run on such a stored synthetic CT, it labels that CT instead of generating another.

Strategies: ``random`` picks an unlabelled input image (never a stored synthetic CT), ``synthetic_ct`` the synthetic
CT stored last (3D Slicer: "Next Sample" with it loads the CT volume and its tissue segmentation).

The input image is a CT file or DICOM series (its PA and lateral views are rendered with the training geometry:
evaluation, demos) or a radiograph (PNG/JPEG/TIFF, DICOM DX/CR, 2D NIfTI) read as the PA view; ``{"lateral": PATH}``
(or ``{"pa": PATH, "lateral": PATH}``) in the request's params adds server-side view files. Per request (defaults with
``--conf``): ``num_inference_steps``, ``num_samples``, ``seed``. A request that cannot be served (an extension that
holds no 3D volume, a dtype that is no number type, a non-positive step count) is refused with HTTP 400 and a message
naming the key, before any work.
"""

from __future__ import annotations

import json
import logging
import os
import random

from fastapi import HTTPException
from lib.infers import TissueInferTask, XrayToCTInferTask
from lib.results import RequestRefused
from lib.tissue import label_info, label_names
from monailabel.datastore.local import LocalDatastore
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.infer_v2 import InferTask
from monailabel.interfaces.tasks.strategy import Strategy

logger = logging.getLogger(__name__)

#: The suffix of a stored synthetic CT's image id, and the image-info key that names its source image.
SYNTHETIC_SUFFIX = "_synthetic_ct"
SOURCE_KEY = "synthetic_ct_of"
#: The bundle served when --conf models is not given: this repository's, next to the app folder.
DEFAULT_MODELS = "xray2ct=../bundle"


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


def _is_synthetic(datastore: Datastore, image_id: str) -> bool:
    return bool(datastore.get_image_info(image_id).get(SOURCE_KEY))


class SourceImageRandom(Strategy):
    """A random unlabelled image that is an input (a radiograph or CT), never a synthetic CT this app stored."""

    def __init__(self) -> None:
        super().__init__("Random unlabelled input image (radiograph or CT; never a stored synthetic CT)")

    def __call__(self, request, datastore: Datastore):
        images = [i for i in datastore.get_unlabeled_images() if not _is_synthetic(datastore, i)]
        return {"id": random.choice(images)} if images else None


class LatestSyntheticCT(Strategy):
    """The synthetic CT stored last (in 3D Slicer, "Next Sample" with it opens the CT and its tissue labels)."""

    def __init__(self) -> None:
        super().__init__("The synthetic CT generated last (opens as a volume, with its tissue label map)")

    def __call__(self, request, datastore: Datastore):
        stored = [(datastore.get_image_info(i).get("ts", 0), i) for i in datastore.list_images()]
        stored = [(ts, i) for ts, i in stored if _is_synthetic(datastore, i)]
        return {"id": max(stored)[1]} if stored else None


class XrayToCTApp(MONAILabelApp):
    """Serves every bundle of ``--conf models`` as a CT model and a tissue model (see the module docstring)."""

    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]) -> None:
        self.bundles = _bundle_paths(conf.get("models", DEFAULT_MODELS), app_dir)
        if not self.bundles:
            raise ValueError("no bundle given: start the server with --conf models <bundle folder>[,<another>].")
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="xray2ct",
            description="Chest radiographs (PA, lateral) to a synthetic 3D CT in HU, with its tissue label map",
            version=_bundle_version(next(iter(self.bundles.values()))),
        )

    def init_infers(self) -> dict[str, InferTask]:
        infers: dict[str, InferTask] = {}
        for name, path in self.bundles.items():
            if not os.path.isdir(path):
                raise ValueError(f"bundle folder {path} (model {name!r}) does not exist.")
            ct = XrayToCTInferTask(path, self.conf)
            if not ct.is_valid():
                raise ValueError(
                    f"bundle {path} (model {name!r}) is not servable: it needs configs/inference.yaml and "
                    "models/model.pt (see the MONAI Label warning above)."
                )
            tissue = TissueInferTask(path, self.conf)
            tissue._networks = ct._networks  # one network per device for both models (same weights)
            logger.info("+++ Adding inferers: %s (CT), %s_tissue (tissue label map) => %s", name, name, path)
            infers[name] = ct
            infers[f"{name}_tissue"] = tissue
        return infers

    def init_strategies(self) -> dict[str, Strategy]:
        return {"random": SourceImageRandom(), "synthetic_ct": LatestSyntheticCT()}

    def infer(self, request, datastore=None):
        datastore = datastore if datastore else self.datastore()
        task = self._infers.get(request.get("model"))
        request = dict(request)
        image_id = request.get("image")
        from_datastore = isinstance(image_id, str) and bool(image_id) and not os.path.exists(image_id)
        if isinstance(task, TissueInferTask):
            request["synthetic_ct_input"] = from_datastore and _is_synthetic(datastore, image_id)
        elif isinstance(task, XrayToCTInferTask):
            request["save_label"] = False  # the CT is an image, never a label of its input
        try:
            result = super().infer(request, datastore)
        except RequestRefused as error:  # raised by the task before any work (its checked_request)
            raise HTTPException(status_code=400, detail=f"model {request.get('model')!r}: {error}") from None
        params = result.get("params") or {}
        ct_file = params.pop("synthetic_ct_file", None)
        if ct_file:
            params["synthetic_ct"] = self._store_ct(
                datastore, image_id if from_datastore else None, ct_file, result.get("file"), request["model"]
            )
        return result

    def _store_ct(self, datastore: Datastore, image_id: str | None, ct_file: str, label_file: str | None, model: str):
        """Add the CT to the datastore as ``<image>_synthetic_ct`` (replacing an earlier one) with the tissue label
        map as its ``original`` label; returns what the result JSON reports about it."""
        try:
            if image_id is None:
                return {"id": None, "reason": "the input is not a datastore image (an upload or a path)"}
            if type(datastore) is not LocalDatastore:  # DICOMweb and others list what their server holds
                return {"id": None, "reason": f"stored in a local datastore only, this is a {type(datastore).__name__}"}
            ct_id = f"{image_id}{SYNTHETIC_SUFFIX}"
            info = {
                SOURCE_KEY: image_id,
                "model": model,
                "description": f"synthetic CT generated by {model} from {image_id}: not an acquired image",
            }
            datastore.add_image(ct_id, ct_file, info)
            if label_file and os.path.exists(label_file):
                label = {"model": model, "params": {"label_names": label_names(), "label_info": label_info()}}
                datastore.save_label(ct_id, label_file, "original", label)
            return {"id": ct_id, "source": image_id, "path": datastore.get_image_uri(ct_id)}
        except Exception as error:  # a datastore that cannot add images (read-only folder): the label map still goes
            logger.warning("synthetic CT of %s not stored in the datastore: %s", image_id, error)
            return {"id": None, "reason": f"not stored: {error}"}
        finally:
            if os.path.exists(ct_file):
                os.unlink(ct_file)
