"""The PACS round trip over DICOMweb: a study's chest radiographs -> the bundle's inference -> a new synthetic CT series
of the same study (``configs/dicomweb.yaml``; sites without MONAI Label).

:class:`DicomWebRoundTrip` runs, for one ``study_uid`` at one DICOMweb root:

1. **QIDO-RS**: the study's series, those of a radiograph modality (DX, CR, DR, RG), and their instances with
   ``ViewPosition``, ``PatientOrientation``, ``BodyPartExamined`` and ``PresentationIntentType`` included. An instance
   whose answer names no view (a server that ignores ``includefield``) is retrieved and judged by its own header.
2. **Choice of views** (:func:`choose_views`): ``ViewPosition`` PA/AP is the frontal view, LL/RL/LATERAL the lateral
   one; without it the ``PatientOrientation`` row direction decides (L/R frontal, A/P lateral). Images of another
   body part are skipped, ``FOR PROCESSING`` images give way to ``FOR PRESENTATION`` images of the same view, and two
   candidates left for one view are refused with a list (a repeat exposure is never guessed): choose one by its
   SOPInstanceUID (``pa_instance``, ``lateral_instance``). One view alone works, with a note.
3. **WADO-RS**: the chosen instances into a temporary folder, removed at the end (they carry the patient's identity).
4. **Inference**: the case runs through :class:`~.inference.CTInferenceWorkflow` (same pieces, same outputs in
   ``output_dir/<name>/``: NIfTI, preview, JSON), and the CT is written as a DICOM series that joins the study
   (:func:`scripts.data.write_ct_dicom_series` with the PA header as ``study`` and both inputs as ``sources``).
5. **STOW-RS** of that series to ``{root}/studies/{study_uid}``, ``instances_per_request`` per request; every SOP
   instance UID sent must come back as stored, else the run fails naming the failures (and the incomplete series).

``output_dir/inference_report.json`` records the case as the inference workflow does, plus ``dicomweb``: the inputs
chosen (series and SOP instance UIDs, ViewPosition), what was skipped and why, the stored series and the seconds per
step. The query and the choice run before anything is written, so a wrong URL or study writes nothing.

The query, the checked retrieval and the store are also functions (:func:`query_radiographs`,
:func:`retrieve_instance`, :func:`store_series`), which the MONAI Label app (``monailabel_app/lib/dicomweb.py``) uses
for the same round trip started from a series in its DICOMweb datastore.
"""

from __future__ import annotations

import io
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pydicom
import torch
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from ..data import (
    RADIOGRAPH_MODALITIES,
    SYNTHETIC_SERIES_DESCRIPTION,
    DicomWebClient,
    DicomWebError,
    check_uid,
    header_view,
    write_ct_dicom_series,
)
from ..utils import atomic_write, claim
from .inference import CTInferenceWorkflow, _reason

__all__ = [
    "QUERY_FIELDS",
    "DicomWebRoundTrip",
    "choose_views",
    "query_radiographs",
    "retrieve_instance",
    "store_series",
]

logger = logging.getLogger(__name__)

#: Attributes asked of QIDO-RS per instance, beyond its defaults, to choose the views without retrieving them.
QUERY_FIELDS = ("ViewPosition", "PatientOrientation", "BodyPartExamined", "PresentationIntentType")
#: ``BodyPartExamined`` values of a chest film (empty: not stated).
_CHEST = ("", "CHEST", "THORAX", "LUNG", "RIBS", "HEART")


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword, "")
    return "\\".join(map(str, value)) if isinstance(value, (list, MultiValue)) else str(value or "")


def _describe(ds: Dataset) -> str:
    """One instance in a message: its SOPInstanceUID and what says which view it is."""
    said = [f"{k} {_text(ds, k)!r}" for k in ("ViewPosition", "PatientOrientation") if _text(ds, k)]
    return f"{ds.get('SOPInstanceUID', '?')} ({', '.join(said) or 'no view stated'})"


def choose_views(
    instances: Sequence[Dataset], views: Sequence[str], requested: Mapping[str, str | None] | None = None
) -> tuple[dict[str, Dataset], list[str]]:
    """The instance to use for each of ``views`` (``pa``, ``lateral``) and notes on what was skipped and why.

    Args:
        instances: the study's radiograph instances (QIDO-RS answers or headers; see the module docstring).
        views: the views the model takes.
        requested: ``{view: SOPInstanceUID}`` chosen by the user (None: choose from the headers).

    Raises:
        ValueError: a requested UID that is not among ``instances``, two candidates for one view, or no usable view.
    """
    requested = {v: u for v, u in (requested or {}).items() if u}
    by_uid = {str(ds.get("SOPInstanceUID", "")): ds for ds in instances}
    chosen, notes = {}, []
    for view, uid in requested.items():
        uid = check_uid(f"{view}_instance", uid)
        if uid not in by_uid:
            raise ValueError(
                f"{view}_instance: {uid} is not one of the study's {len(instances)} radiograph instances "
                f"({', '.join(map(_describe, instances)) or 'none'})."
            )
        chosen[view] = by_uid[uid]
    taken = {str(ds.SOPInstanceUID) for ds in chosen.values()}
    candidates: dict[str, list[Dataset]] = {v: [] for v in views if v not in chosen}
    for ds in instances:
        uid = str(ds.get("SOPInstanceUID", ""))
        if uid in taken:
            continue
        part = _text(ds, "BodyPartExamined").upper().strip()
        view = header_view(ds)
        if part not in _CHEST:
            notes.append(f"skipped {_describe(ds)}: BodyPartExamined {part!r} is not the chest")
        elif view is None:
            notes.append(f"skipped {_describe(ds)}: neither ViewPosition nor PatientOrientation says PA or lateral")
        elif view in candidates:
            candidates[view].append(ds)
        elif view not in views:
            notes.append(f"skipped {_describe(ds)}: the model takes no {view} view")
        else:
            notes.append(f"skipped {_describe(ds)}: the {view} view was chosen by {view}_instance")
    for view, found in candidates.items():
        presentation = [ds for ds in found if _text(ds, "PresentationIntentType").upper() != "FOR PROCESSING"]
        if presentation and len(presentation) < len(found):
            notes += [
                f"skipped {_describe(ds)}: FOR PROCESSING beside a FOR PRESENTATION image"
                for ds in found
                if ds not in presentation
            ]
            found = presentation
        if len(found) > 1:
            raise ValueError(
                f"the study holds {len(found)} {view} radiographs ({', '.join(map(_describe, found))}); choose one "
                f"with --{view}_instance <SOPInstanceUID>."
            )
        if found:
            chosen[view] = found[0]
    if not chosen:
        raise ValueError(
            f"no PA/AP or lateral chest radiograph among the study's {len(instances)} radiograph instances"
            + (f" ({'; '.join(notes)})" if notes else "")
            + "; choose them with --pa_instance / --lateral_instance <SOPInstanceUID>."
        )
    notes += [f"no {v} radiograph: the CT is generated from the other view alone" for v in views if v not in chosen]
    return {v: chosen[v] for v in views if v in chosen}, notes


def query_radiographs(
    client: DicomWebClient, study_uid: str, retrieve: Callable[[Dataset], bytes] | None = None
) -> list[Dataset]:
    """QIDO-RS: the radiograph instances of a study (modalities :data:`~scripts.data.RADIOGRAPH_MODALITIES`), with
    :data:`QUERY_FIELDS`; each carries its ``SeriesInstanceUID``.

    Args:
        client: the DICOMweb client of the PACS.
        study_uid: the StudyInstanceUID.
        retrieve: how to get an instance's file when the query's answer leaves out what says its view (a server that
            ignores ``includefield``); None: :func:`retrieve_instance`.

    Raises:
        ValueError: no such study, or a study without radiograph series (naming the modalities it has).
    """
    study_uid = check_uid("study_uid", study_uid)
    series = client.search_series(study_uid)
    if not series:
        raise ValueError(f"study_uid: no study {study_uid} at {client.base_url} (QIDO-RS found no series).")
    kinds = (*RADIOGRAPH_MODALITIES, "")  # a series whose answer leaves out its modality is looked into
    radiographs = [s for s in series if _text(s, "Modality").upper() in kinds]
    if not radiographs:
        found = sorted({_text(s, "Modality") or "?" for s in series})
        raise ValueError(
            f"study {study_uid} has no radiograph series (modalities {list(RADIOGRAPH_MODALITIES)}); its "
            f"{len(series)} series are {found}."
        )
    retrieve = retrieve or (lambda ds: retrieve_instance(client, study_uid, ds))
    instances = []
    for s in radiographs:
        series_uid = check_uid("SeriesInstanceUID", s.get("SeriesInstanceUID"))
        for ds in client.search_instances(study_uid, series_uid, QUERY_FIELDS):
            ds.SeriesInstanceUID = series_uid
            instances.append(_with_view(ds, retrieve))
    return instances


def _with_view(ds: Dataset, retrieve: Callable[[Dataset], bytes]) -> Dataset:
    """``ds``, or the instance's own header when the query's answer leaves out what says its view."""
    if header_view(ds) is not None or any(k in ds for k in ("ViewPosition", "PatientOrientation")):
        return ds
    header = pydicom.dcmread(io.BytesIO(retrieve(ds)), stop_before_pixels=True)
    header.SeriesInstanceUID = ds.SeriesInstanceUID
    return header


def retrieve_instance(client: DicomWebClient, study_uid: str, ds: Dataset) -> bytes:
    """WADO-RS: the file of the instance ``ds`` names (its SOPInstanceUID and SeriesInstanceUID), checked to be that
    instance of ``study_uid``.

    Raises:
        DicomWebError: the answer is not a readable DICOM file, or is another instance.
    """
    sop = check_uid("SOPInstanceUID", ds.get("SOPInstanceUID"))
    data = client.retrieve_instance(study_uid, ds.SeriesInstanceUID, sop)
    try:
        header = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    except Exception as err:  # pydicom raises several types for damaged files
        raise DicomWebError(f"WADO-RS: instance {sop} is not a readable DICOM file ({err}).") from None
    if str(header.get("SOPInstanceUID", "")) != sop or str(header.get("StudyInstanceUID", "")) != study_uid:
        raise DicomWebError(f"WADO-RS: asked for instance {sop} of study {study_uid}, got another instance.")
    return data


def store_series(
    client: DicomWebClient, study_uid: str, files: Sequence[str | os.PathLike], instances_per_request: int = 32
) -> dict:
    """STOW-RS: a written series (PS3.10 files) into ``study_uid``, ``instances_per_request`` per request.

    Returns:
        ``{"series_instance_uid", "instances", "requests"}``.

    Raises:
        DicomWebError: an instance sent did not come back as stored (naming up to three, their failure reasons and
            the incomplete series to delete).
    """
    sent, stored, failed, requests = [], set(), {}, 0
    for start in range(0, len(files), instances_per_request):
        batch = [Path(f).read_bytes() for f in files[start : start + instances_per_request]]
        sent += [str(pydicom.dcmread(io.BytesIO(b), stop_before_pixels=True).SOPInstanceUID) for b in batch]
        result = client.store(study_uid, batch)
        requests += 1
        stored.update(result.stored)
        failed.update(result.failed)
    missing = [u for u in sent if u not in stored]
    series_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)
    if missing:
        reasons = "; ".join(f"{u}: {failed.get(u, 'not in the answer')}" for u in missing[:3])
        raise DicomWebError(
            f"STOW-RS {client.base_url}/studies/{study_uid}: {len(missing)} of {len(sent)} instances were not "
            f"stored ({reasons}{'; ...' if len(missing) > 3 else ''}); series {series_uid} in the archive is "
            "incomplete and should be deleted there."
        )
    return {"series_instance_uid": series_uid, "instances": len(sent), "requests": requests}


class DicomWebRoundTrip(CTInferenceWorkflow):
    """Query, retrieve, generate, store: one study over DICOMweb (see the module docstring).

    Args:
        client: the DICOMweb client of the PACS.
        study_uid: the StudyInstanceUID whose radiographs are used and which the new series joins.
        pa_instance, lateral_instance: SOPInstanceUIDs that choose the views (None: chosen from the headers).
        store: False: everything but STOW-RS (a dry run that leaves the series in ``output_dir`` to inspect).
        instances_per_request: instances per STOW-RS request (archives and proxies limit the request size).
        series_description, series_number, uid_prefix: of the new series (:func:`scripts.data.write_ct_dicom_series`).
        name: the case's name (``output_dir/<name>/``).
        cases: must be empty (the case comes from the study); every other argument is the inference workflow's.
    """

    def __init__(
        self,
        client: DicomWebClient,
        study_uid: str,
        pa_instance: str | None = None,
        lateral_instance: str | None = None,
        store: bool = True,
        instances_per_request: int = 32,
        series_description: str = SYNTHETIC_SERIES_DESCRIPTION,
        series_number: int = 900,
        uid_prefix: str | None = None,
        name: str = "study",
        cases: Sequence[Mapping] = (),
        **kwargs,
    ) -> None:
        if cases:
            raise ValueError("cases: the DICOMweb round trip takes its case from the study; give no datalist cases.")
        if not kwargs.get("write_dicom", True):
            raise ValueError("write_dicom: the DICOMweb round trip stores the DICOM series, so it always writes it.")
        if int(instances_per_request) < 1:
            raise ValueError(f"instances_per_request: expected a positive number, got {instances_per_request!r}.")
        super().__init__(cases=[], **{**kwargs, "write_dicom": True})
        self.client, self.study_uid = client, check_uid("study_uid", study_uid)
        self.requested = {"pa": pa_instance, "lateral": lateral_instance}
        self.store, self.instances_per_request = bool(store), int(instances_per_request)
        self.series_description, self.series_number, self.uid_prefix = series_description, series_number, uid_prefix
        self.name = name
        self._study: Dataset | None = None
        self._sources: list[Dataset] = []
        self._retrieved: dict[str, bytes] = {}  # SOP instance UID -> file, for the length of one run

    def write_series(self, folder: Path, hu: torch.Tensor, affine: np.ndarray) -> list[Path]:
        """The CT as a new series of the study: linked by the PA (or only) input's header, naming both inputs."""
        return write_ct_dicom_series(
            folder,
            hu,
            affine,
            self.series_description,
            self.overwrite,
            study=self._study,
            sources=self._sources,
            series_number=self.series_number,
            uid_prefix=self.uid_prefix,
        )

    # ---- the steps ------------------------------------------------------------------------------------------------
    def query(self) -> list[Dataset]:
        """QIDO-RS: the study's radiograph instances, with the attributes that say which view each is."""
        return query_radiographs(self.client, self.study_uid, self.retrieve)

    def retrieve(self, ds: Dataset) -> bytes:
        """WADO-RS: one instance's file, checked to be the instance asked for (each is retrieved once per run)."""
        sop = check_uid("SOPInstanceUID", ds.get("SOPInstanceUID"))
        if sop not in self._retrieved:
            self._retrieved[sop] = retrieve_instance(self.client, self.study_uid, ds)
        return self._retrieved[sop]

    def store_series(self, files: Sequence[Path]) -> dict:
        """STOW-RS: the written series into the study; every instance must come back as stored."""
        return store_series(self.client, self.study_uid, files, self.instances_per_request)

    def run(self) -> dict:
        """Query, choose, retrieve, generate, store; returns (and writes) ``inference_report.json``."""
        seconds: dict[str, float] = {}
        start = time.perf_counter()
        self._study, self._sources, self._retrieved = None, [], {}
        views = [str(v) for v in self.composer.renderer.geometry.views]
        chosen, notes = choose_views(self.query(), views, self.requested)
        seconds["query"] = round(time.perf_counter() - start, 3)
        record = {
            "url": self.client.base_url,
            "study_instance_uid": self.study_uid,
            "inputs": {
                v: {
                    "series_instance_uid": str(ds.SeriesInstanceUID),
                    "sop_instance_uid": str(ds.SOPInstanceUID),
                    "view_position": _text(ds, "ViewPosition") or None,
                }
                for v, ds in chosen.items()
            },
            "notes": notes,
            "stored": None,
            "seconds": seconds,
        }
        report_path = self.output_dir / "inference_report.json"
        claim(report_path, json.dumps({"status": "running", "pid": os.getpid()}), overwrite=self.overwrite)
        report: dict = {"done": [], "failed": [], "dicomweb": record}
        try:
            with tempfile.TemporaryDirectory(prefix="xray2ct-dicomweb-") as tmp:
                case: dict = {"name": self.name}
                t = time.perf_counter()
                for view, ds in chosen.items():
                    path = Path(tmp) / f"{view}.dcm"
                    path.write_bytes(self.retrieve(ds))
                    case[view] = str(path)
                    self._sources.append(pydicom.dcmread(path, stop_before_pixels=True))
                self._study, self._retrieved = self._sources[0], {}  # the inputs live on in the temporary folder only
                seconds["retrieve"] = round(time.perf_counter() - t, 3)
                t = time.perf_counter()
                self.load_weights()
                summary = self._run_case(0, case)
                seconds["inference"] = round(time.perf_counter() - t, 3)
            files = sorted((self.output_dir / self.name / f"{self.name}_dicom").glob("*.dcm"))
            if self.store:
                t = time.perf_counter()
                record["stored"] = self.store_series(files)
                seconds["store"] = round(time.perf_counter() - t, 3)
            report["done"].append(summary)
        except Exception as err:
            report["failed"].append({"name": self.name, "error": _reason(err)})
            raise
        finally:
            seconds["total"] = round(time.perf_counter() - start, 3)
            text = json.dumps(report, indent=2)
            atomic_write(report_path, lambda p: Path(p).write_text(text), overwrite=True)
        stored = record["stored"]
        print(  # the run's last line: what was made and where it went
            f"done: synthetic CT stored as series {stored['series_instance_uid']} ({stored['instances']} instances) of "
            f"study {self.study_uid} at {self.client.base_url}; files in {self.output_dir / self.name}"
            if stored
            else f"done: synthetic CT written to {self.output_dir / self.name} (not stored: store is false)"
        )
        return report
