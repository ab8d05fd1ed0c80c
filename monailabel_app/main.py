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

Over a PACS (``--studies http://host/dicom-web``, MONAI Label's DICOMweb datastore): the datastore lists DX series
(``--conf dicomweb_modality``, default DX, in place of MONAI Label's default ``MONAI_LABEL_DICOMWEB_SEARCH_FILTER``
``{"Modality": "CT"}``; any other filter is kept), an
image id is a series, and a request for it runs on that series and the other view of its study, retrieved over WADO-RS
(``lib/dicomweb.py``; ``pa_instance`` / ``lateral_instance`` in the params choose by SOPInstanceUID). Both models then
store the CT in that study as a new synthetic CT series over STOW-RS (``store_ct``, default true; the result's
``synthetic_ct`` names the series, ``dicomweb`` the inputs used). The tissue label map is returned only, never
uploaded as DICOM SEG (MONAI Label's SEG would reference the radiograph series, whose geometry is not the CT's).

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

import contextlib
import importlib
import json
import logging
import os
import random
import sys
import tempfile

from fastapi import HTTPException
from lib.infers import TissueInferTask, XrayToCTInferTask
from lib.results import RequestRefused
from lib.tissue import label_info, label_names
from monailabel.config import settings
from monailabel.datastore.dicom import DICOMWebDatastore
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
#: What a DICOMweb datastore lists in place of MONAI Label's default filter (CT series): radiograph series, the inputs.
RADIOGRAPH_SEARCH_FILTER = {"Modality": "DX"}
MONAI_LABEL_SEARCH_FILTER = {"Modality": "CT"}


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


def _import_from_bundle(path: str, module: str):
    """``module``, imported with the bundle folder first on ``sys.path`` (as BundleInferTask imports the bundle's
    ``scripts`` package), for app code that uses the bundle's own DICOM and DICOMweb helpers."""
    sys.path.insert(0, path)
    try:
        return importlib.import_module(module)
    finally:
        sys.path.remove(path)


def _flag(value: object, default: bool = True) -> bool:
    """A request's yes/no option as clients send it (a bool, or a string such as "false")."""
    if value is None or value == "":
        return default
    if isinstance(value, str):
        return value.strip().lower() not in ("false", "0", "no")
    return bool(value)


def _remove(path: str) -> None:
    if os.path.exists(path):
        os.unlink(path)


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
        self._inputs_of: dict[str, tuple[str, list[str]]] = {}  # model -> (bundle folder, the views it takes)
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
            checkpoint = _import_from_bundle(path, "scripts.checkpoint")
            views = checkpoint.read_model_config(os.path.join(path, "models", "model.pt"))["geometry"]["views"]
            self._inputs_of[name] = self._inputs_of[f"{name}_tissue"] = (path, [str(v) for v in views])
        return infers

    def init_remote_datastore(self) -> Datastore:
        # MONAI Label lists CT series by default; this app's inputs are radiographs, so its default filter is replaced
        # (by --conf dicomweb_modality, default DX); any other filter the user set is kept. (start_server exports every
        # setting to the environment, so whether the user set it cannot be told from there.)
        if settings.MONAI_LABEL_DICOMWEB_SEARCH_FILTER == MONAI_LABEL_SEARCH_FILTER:
            modality = self.conf.get("dicomweb_modality", RADIOGRAPH_SEARCH_FILTER["Modality"])
            settings.MONAI_LABEL_DICOMWEB_SEARCH_FILTER = {"Modality": str(modality).upper()}
        return super().init_remote_datastore()

    def _download_dcmqi_tools(self) -> None:
        # MONAI Label fetches dcmqi from GitHub when a DICOMweb datastore starts, for DICOM SEG uploads of final
        # labels. This app writes no SEG, so a server without internet access (a hospital network) still starts.
        try:
            super()._download_dcmqi_tools()
        except Exception as error:
            logger.warning("dcmqi not downloaded (%s): DICOM SEG uploads of final labels will not work", error)

    def init_strategies(self) -> dict[str, Strategy]:
        return {"random": SourceImageRandom(), "synthetic_ct": LatestSyntheticCT()}

    def infer(self, request, datastore=None):
        datastore = datastore if datastore else self.datastore()
        task = self._infers.get(request.get("model"))
        request = dict(request)
        image_id = request.get("image")
        from_datastore = isinstance(image_id, str) and bool(image_id) and not os.path.exists(image_id)
        pacs = from_datastore and isinstance(datastore, DICOMWebDatastore) and isinstance(task, XrayToCTInferTask)
        with contextlib.ExitStack() as stack:
            inputs = None
            try:  # RequestRefused: raised by the task's checked_request, before any work
                if pacs:  # the series' radiograph pair, retrieved for this request only (it identifies the patient)
                    task.checked_request(request)  # a bad request is refused before any PACS traffic
                    folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="xray2ct-dicomweb-"))
                    inputs = self._pacs_inputs(request, folder)
                    request.update(inputs.files)
                    request["image"] = next(iter(inputs.files.values()))  # a path: MONAI Label fetches nothing
                if isinstance(task, TissueInferTask):
                    request["synthetic_ct_input"] = from_datastore and not pacs and _is_synthetic(datastore, image_id)
                elif isinstance(task, XrayToCTInferTask):
                    request["save_label"] = False  # the CT is an image, never a label of its input
                result = super().infer(request, datastore)
            except RequestRefused as error:
                raise HTTPException(status_code=400, detail=f"model {request.get('model')!r}: {error}") from None
            params = result.get("params") or {}
            ct_file = params.pop("synthetic_ct_file", None)
            if inputs is not None:
                params["dicomweb"] = inputs.record
                if ct_file:  # the tissue model's CT beside its label map: removed once stored
                    stack.callback(_remove, ct_file)
                elif not isinstance(task, TissueInferTask) and _flag(
                    request.get("store_ct", self.conf.get("store_ct"))
                ):
                    ct_file = result.get("file")  # the CT model's result, which the client also receives
                params["synthetic_ct"] = self._store_in_pacs(inputs, ct_file, request["model"], stack)
            elif ct_file:
                params["synthetic_ct"] = self._store_ct(
                    datastore, image_id if from_datastore else None, ct_file, result.get("file"), request["model"]
                )
        return result

    def _pacs_inputs(self, request: dict, folder: str):
        """The radiographs of the series ``request["image"]`` names and of its study (lib/dicomweb.py), in ``folder``;
        a request that cannot be served that way is refused with HTTP 400 (502 when the PACS fails), before any
        inference."""
        path, views = self._inputs_of[request["model"]]
        dicomweb = _import_from_bundle(path, "lib.dicomweb")
        requested = {v: request.get(f"{v}_instance") for v in views}
        try:
            return dicomweb.fetch_inputs(
                dicomweb.DicomWebClient(self.studies), request["image"], views, folder, requested
            )
        except dicomweb.DicomWebError as error:  # the PACS is unreachable or failed a request: not the client's error
            raise HTTPException(status_code=502, detail=f"model {request.get('model')!r}: {error}") from None
        except ValueError as error:  # the request names no usable series, or a choice of views that is refused
            raise HTTPException(status_code=400, detail=f"model {request.get('model')!r}: {error}") from None

    def _store_in_pacs(self, inputs, ct_file: str | None, model: str, stack: contextlib.ExitStack) -> dict:
        """STOW-RS of the CT as a new synthetic series of the inputs' study; what the result JSON reports about it."""
        if not ct_file:
            return {"id": None, "reason": "store_ct is false"}
        path, _ = self._inputs_of[model]
        dicomweb = _import_from_bundle(path, "lib.dicomweb")
        folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="xray2ct-series-"))
        try:
            stored = dicomweb.store_ct(dicomweb.DicomWebClient(self.studies), inputs, ct_file, folder)
        except Exception as error:  # the CT is still returned to the client; the result says why it is not in the PACS
            logger.warning("synthetic CT not stored in study %s: %s", inputs.study_uid, error)
            return {"id": None, "reason": f"not stored: {error}"}
        logger.info("synthetic CT stored as series %s of study %s", stored["series_instance_uid"], inputs.study_uid)
        return {"id": stored["series_instance_uid"], **stored}

    def _store_ct(self, datastore: Datastore, image_id: str | None, ct_file: str, label_file: str | None, model: str):
        """Add the CT to the datastore as ``<image>_synthetic_ct`` (replacing an earlier one) with the tissue label
        map as its ``original`` label; returns what the result JSON reports about it."""
        try:
            if image_id is None:
                return {"id": None, "reason": "the input is not a datastore image (an upload or a path)"}
            if type(datastore) is not LocalDatastore:  # DSA, XNAT and others list what their server holds
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
