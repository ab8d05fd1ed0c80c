"""The app over a PACS (``--studies http://host/dicom-web``): which radiographs a request for a series means, and the
generated CT stored back into that series' study as a new DICOM series (STOW-RS).

MONAI Label's ``DICOMWebDatastore`` lists one image per *series* (QIDO-RS with ``MONAI_LABEL_DICOMWEB_SEARCH_FILTER``),
while a chest radiograph pair is two series of one study (DX keeps one image per series: PA, lateral). So the image
id of a request is the series the user opened (in 3D Slicer: the PA series), and its study supplies the other view:

1. **QIDO-RS**: the series' study (``/series?SeriesInstanceUID=``), then the study's radiograph instances with what
   says their view (:func:`scripts.engines.pacs.query_radiographs`, the standalone round trip's query).
2. **The views.** The series' own image is the view its header states (``ViewPosition``, else
   ``PatientOrientation``); a series that states none is taken as the PA view, as the app reads a radiograph given as
   ``image``. The other view is chosen among the study's radiographs by :func:`scripts.engines.pacs.choose_views`: a
   repeat exposure is never guessed (two laterals are refused, naming them; ``pa_instance`` / ``lateral_instance``
   in the request's params choose by SOPInstanceUID), and a study without the other view gives a CT from one view,
   with a note.
3. **WADO-RS**: both instances, checked to be the ones asked for, into a temporary folder; the model reads them as its
   ``pa`` / ``lateral`` files with the bundle's DICOM radiograph reader (modality and VOI LUTs, shutters), not
   through MONAI Label's conversion of the series to NIfTI.
4. **STOW-RS**: the CT the server returns (its file, in HU) is written as a CT series of the study by
   :func:`scripts.data.write_ct_dicom_series` (the PA header links it to the study and patient; both inputs are its
   ``SourceImageSequence``; ``DERIVED\\SECONDARY``, the synthetic series description, new Series/SOP UIDs) and stored
   by :func:`scripts.engines.pacs.store_series`, which fails unless every instance comes back as stored.

No DICOM SEG is written: MONAI Label's SEG conversion references the image series of the request, a radiograph whose
geometry is not the CT's, so the tissue label map is returned to the client only.

Needs the bundle's ``scripts`` package on ``sys.path`` (the app imports this module with the bundle's folder on it;
the project's tests have it there) and no MONAI Label: the tests run it against a fake DICOMweb server.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from scripts.data import (
    SYNTHETIC_SERIES_DESCRIPTION,
    DicomWebClient,
    DicomWebError,
    check_uid,
    header_view,
    load_ct,
)
from scripts.data import write_ct_dicom_series as _write_series
from scripts.engines.pacs import choose_views, query_radiographs, retrieve_instance, store_series

__all__ = ["DicomWebClient", "DicomWebError", "StudyInputs", "fetch_inputs", "series_study", "store_ct"]


@dataclass
class StudyInputs:
    """The radiographs of one request: their files, headers (the study link first) and what the result reports."""

    study_uid: str
    files: dict[str, str]  # view -> retrieved PS3.10 file
    headers: list[Dataset]  # in view order; the first links the CT series to the study and patient
    record: dict = field(default_factory=dict)  # JSON-ready: the study, each view's series/SOP UIDs, notes


def series_study(client: DicomWebClient, series_uid: str) -> str:
    """The StudyInstanceUID of a series (QIDO-RS at the series level).

    Raises:
        ValueError: ``series_uid`` is no UID, or the server knows no such series.
    """
    series_uid = check_uid("image", series_uid)
    found = [s for s in client.search("/series", {"SeriesInstanceUID": series_uid}) if s.get("StudyInstanceUID")]
    if not found:
        raise ValueError(f"image: no series {series_uid} at {client.base_url} (QIDO-RS found none).")
    return check_uid("StudyInstanceUID", found[0].StudyInstanceUID)


def fetch_inputs(
    client: DicomWebClient,
    series_uid: str,
    views: Sequence[str],
    folder: str | os.PathLike,
    requested: Mapping[str, str | None] | None = None,
) -> StudyInputs:
    """The radiograph pair a request for ``series_uid`` means, retrieved into ``folder`` (see the module docstring).

    Args:
        client: the DICOMweb client of the datastore's server.
        series_uid: the request's image id (a radiograph series).
        views: the views the model takes, in its order (``pa``, ``lateral``).
        folder: where the retrieved files go (``<view>.dcm``); the caller removes it.
        requested: ``{view: SOPInstanceUID}`` chosen by the user (the request's ``pa_instance`` / ``lateral_instance``).

    Raises:
        ValueError: a series that is no radiograph series of its study, a view the model does not take, or a choice
            :func:`scripts.engines.pacs.choose_views` refuses (one line each, naming the input).
    """
    study_uid = series_study(client, series_uid)
    instances = query_radiographs(client, study_uid)
    own = [ds for ds in instances if str(ds.SeriesInstanceUID) == str(series_uid)]
    if not own:
        raise ValueError(f"image: series {series_uid} of study {study_uid} is not a radiograph series (DX, CR).")
    chosen_by_user = {v: u for v, u in (requested or {}).items() if u}
    if not chosen_by_user:
        if len(own) == 1:
            view = header_view(own[0]) or views[0]  # the series the user opened; unstated: the first (PA) view
            if view not in views:
                raise ValueError(f"image: series {series_uid} is a {view} radiograph; the model takes {list(views)}.")
            chosen_by_user = {view: str(own[0].SOPInstanceUID)}
        else:  # a series of several images (some CR systems): its own images decide the views they state
            picked, _ = choose_views(own, views)
            chosen_by_user = {v: str(ds.SOPInstanceUID) for v, ds in picked.items()}
    chosen, notes = choose_views(instances, views, chosen_by_user)
    folder = Path(folder)
    files, headers = {}, []
    for view, ds in chosen.items():
        path = folder / f"{view}.dcm"
        path.write_bytes(retrieve_instance(client, study_uid, ds))
        files[view] = str(path)
        headers.append(pydicom.dcmread(path, stop_before_pixels=True))
    record = {
        "url": client.base_url,
        "study_instance_uid": study_uid,
        "inputs": {
            v: {
                "series_instance_uid": str(ds.SeriesInstanceUID),
                "sop_instance_uid": str(ds.SOPInstanceUID),
                "view_position": str(ds.get("ViewPosition", "") or "") or None,
            }
            for v, ds in chosen.items()
        },
        "notes": notes,
    }
    return StudyInputs(study_uid, files, headers, record)


def store_ct(
    client: DicomWebClient,
    inputs: StudyInputs,
    ct_file: str | os.PathLike,
    folder: str | os.PathLike,
    series_description: str = SYNTHETIC_SERIES_DESCRIPTION,
    series_number: int = 900,
    uid_prefix: str | None = None,
    instances_per_request: int = 32,
) -> dict:
    """Write the CT file (NIfTI/NRRD in HU, any orientation) as a DICOM CT series of the inputs' study into
    ``folder`` and store it there with STOW-RS.

    Returns:
        the result JSON's record: ``study_instance_uid``, ``series_instance_uid``, ``instances``, ``requests``, ``url``.

    Raises:
        DicomWebError: the server did not store every instance (the series is named for deletion).
    """
    ct = load_ct(ct_file)  # (1, X, Y, Z) HU in RAS, as the series writer expects
    files = _write_series(
        folder,
        ct[0],
        ct.affine.numpy(),
        series_description,
        study=inputs.headers[0],
        sources=inputs.headers,
        series_number=series_number,
        uid_prefix=uid_prefix,
    )
    stored = store_series(client, inputs.study_uid, files, instances_per_request)
    return {"study_instance_uid": inputs.study_uid, **stored, "url": client.base_url}
