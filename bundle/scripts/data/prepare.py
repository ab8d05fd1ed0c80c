"""The prepare workflow: build ``DIR/datalist.json`` and its volumes from synthetic phantoms or a CT folder.

Output layout (paths in the datalist are relative to ``dataset_dir``, as MONAI's
``load_decathlon_datalist(..., base_dir=dataset_dir)`` expects)::

    DIR/datalist.json        {"training": [{"image": "volumes/....nii.gz"}, ...], "validation": [...], "test": [...]}
    DIR/volumes/*.nii.gz     CT in HU (int16, RAS affine in mm)
    DIR/labels/*.nii.gz      phantom label maps (synthetic data only; uint8, ids in DIR/labels.json)
    DIR/labels/*.json        per phantom: patient (sex, age, size), findings, scanner settings, volumes per label (mL)
    DIR/labels.json          {"labels": {"0": "background", ...}, "findings": [...]} (synthetic data only)
    DIR/prepare_report.json  what was written, what failed and why

Volumes from ``source_dir`` are validated, reoriented to RAS and written as NIfTI under anonymous names
(``case_0000``...); their original paths are not recorded unless ``record_sources`` is set. A DICOM folder must hold
one CT series (localizers and single images are skipped; gantry tilt is resampled, see ``io``): a folder with several
is reported as a failure listing them, to be exported one series per folder.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..physics import centred_affine
from ..utils import atomic_write
from .anatomy import PATHOLOGIES, chest_phantom, label_names, phantom_spacing
from .io import find_ct_sources, load_ct, write_nifti

__all__ = ["ensure_dataset", "prepare_dataset", "split_cases"]

logger = logging.getLogger(__name__)

#: DICOM UIDs in error messages (they link a case to its study): masked unless sources are recorded.
_UID = re.compile(r"\b[0-9]+(?:\.[0-9]+){3,}\b")


def _check_split(fractions: Sequence[float]) -> tuple[float, float, float]:
    try:
        values = tuple(float(f) for f in fractions)
    except (TypeError, ValueError):
        values = ()
    if len(values) != 3 or any(f < 0 or not math.isfinite(f) for f in values) or values[0] <= 0:
        raise ValueError(
            f"split must be three non-negative fractions (training, validation, test) with training > 0, "
            f"got {fractions!r}."
        )
    return values


def split_cases(n: int, fractions: Sequence[float], seed: int) -> tuple[list[int], list[int], list[int]]:
    """Reproducible (training, validation, test) indices: a seeded shuffle cut by ``fractions``.

    Sizes follow the fractions (normalised to their sum) by largest remainders. Training always gets at least one
    case; from three cases on, validation and test get at least one each when their fraction is positive; a zero
    fraction always gets none.
    """
    values = _check_split(fractions)
    total = sum(values)
    exact = [n * f / total for f in values]
    sizes = [math.floor(e) for e in exact]
    for i in sorted(range(3), key=lambda i: exact[i] - sizes[i], reverse=True)[: n - sum(sizes)]:
        sizes[i] += 1
    minimum = [1 if n >= 1 else 0] + [1 if (n >= 3 and f > 0) else 0 for f in values[1:]]
    for i in (1, 2, 0):  # top up validation/test from the largest split, then training from the others
        while sizes[i] < minimum[i]:
            donor = max((j for j in range(3) if j != i and sizes[j] > minimum[j]), key=lambda j: sizes[j], default=None)
            if donor is None:
                break
            sizes[donor] -= 1
            sizes[i] += 1
    order = np.random.default_rng(seed).permutation(n).tolist()
    n_train, n_val = sizes[0], sizes[1]
    return order[:n_train], order[n_train : n_train + n_val], order[n_train + n_val :]


def _write_json(path: Path, content: dict, overwrite: bool) -> None:
    """Indented JSON, atomically; an existing file is kept unless ``overwrite``."""
    text = json.dumps(content, indent=2)
    atomic_write(path, lambda p: Path(p).write_text(text), overwrite)


def _remove_previous(out: Path) -> None:
    """Delete the files a previous prepare run wrote (only those names), so an overwrite leaves no stale case."""
    for pattern in ("volumes/phantom_*.nii.gz", "labels/phantom_*.*", "labels.json", "volumes/case_*.nii.gz"):
        for path in out.glob(pattern):
            path.unlink()


def prepare_dataset(
    dataset_dir: str | os.PathLike,
    synthetic_count: int = 16,
    source_dir: str | os.PathLike | None = None,
    synthetic_size: int | Sequence[int] = 128,
    synthetic_spacing_mm: float | Sequence[float] = 2.5,
    split: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    overwrite: bool = False,
    record_sources: bool = False,
    pathology_share: float = 0.3,
) -> dict:
    """Write a data set and its datalist; returns the datalist.

    Args:
        dataset_dir: destination folder.
        synthetic_count: phantoms to generate when ``source_dir`` is not given.
        source_dir: folder of CTs (NIfTI/NRRD/MHA files, DICOM series folders) to take instead of phantoms.
        synthetic_size, synthetic_spacing_mm: phantom grid (voxels) and voxel size (mm).
        split: (training, validation, test) fractions.
        seed: seed of the split and of the phantoms (phantom ``i`` uses ``seed + i``).
        overwrite: replace an existing data set in ``dataset_dir``.
        record_sources: add each case's source path to the datalist (may expose identifying file names).
        pathology_share: share of phantoms with findings (nodules, effusion, ...; see ``scripts.data.anatomy``).

    Raises:
        FileExistsError: ``dataset_dir`` already holds a datalist and ``overwrite`` is false.
        ValueError: bad arguments or an empty ``source_dir`` (before anything is written), or no readable CT at
            all. Failed sources are listed in ``prepare_report.json`` by their position in the sorted discovery
            order (by path with ``record_sources``), so that file names, which may identify patients, are not
            written unless asked.
    """
    out = Path(dataset_dir)
    datalist_path = out / "datalist.json"
    if datalist_path.exists() and not overwrite:
        raise FileExistsError(
            f"{datalist_path} exists; refusing to overwrite a prepared data set (pass --overwrite true to rebuild)."
        )
    # Every argument is checked before anything is written.
    _check_split(split)
    if source_dir is None:
        if isinstance(synthetic_count, bool) or not isinstance(synthetic_count, int) or synthetic_count < 1:
            raise ValueError(f"synthetic_count must be a positive number of phantoms, got {synthetic_count!r}.")
        spacing = phantom_spacing(synthetic_spacing_mm)
        if not (isinstance(pathology_share, (int, float)) and 0.0 <= pathology_share <= 1.0):
            raise ValueError(f"pathology_share must be a probability in [0, 1], got {pathology_share!r}.")
        sources = []
    else:
        sources = find_ct_sources(source_dir)
    if overwrite:
        _remove_previous(out)
    cases: list[dict] = []
    failures: list[dict] = []
    if source_dir is None:
        for i in range(int(synthetic_count)):
            phantom = chest_phantom(synthetic_size, spacing, seed=seed + i, pathology_share=pathology_share)
            affine = centred_affine(phantom.hu.shape, spacing)
            name = f"phantom_{i:04d}.nii.gz"
            write_nifti(out / "volumes" / name, np.round(phantom.hu).astype(np.int16), affine, overwrite)
            write_nifti(out / "labels" / name, phantom.labels, affine, overwrite)
            _write_json(out / "labels" / f"phantom_{i:04d}.json", phantom.summary(), overwrite)
            cases.append({"image": f"volumes/{name}", "label": f"labels/{name}"})
        _write_json(out / "labels.json", {"labels": label_names(), "findings": sorted(PATHOLOGIES)}, overwrite)
    else:
        for i, src in enumerate(sources):
            name = f"case_{i:04d}.nii.gz"
            try:
                img = load_ct(src)
            except ValueError as err:
                # File names can identify patients: the report and the log name the source by its position in
                # the sorted discovery order unless record_sources is set.
                label = str(src) if record_sources else f"<source #{i} of {len(sources)} under source_dir>"
                message = str(err).replace(str(src), label)
                if not record_sources:
                    message = _UID.sub("<UID>", message)
                failures.append({"source": label, "error": message})
                logger.error("prepare: skipped %s", message)
                continue
            hu = np.round(img[0].numpy()).clip(-32768, 32767).astype(np.int16)
            write_nifti(out / "volumes" / name, hu, img.affine.numpy(), overwrite)
            case = {"image": f"volumes/{name}"}
            if record_sources:
                case["source"] = str(src)
            cases.append(case)
        if not cases:
            listed = "; ".join(f["error"] for f in failures)
            raise ValueError(
                f"source_dir {source_dir}: no readable CT volume. {listed} "
                "(rerun with --record_sources true to see the file names)"
            )
    train, val, test = split_cases(len(cases), split, seed)
    datalist = {
        "training": [cases[i] for i in train],
        "validation": [cases[i] for i in val],
        "test": [cases[i] for i in test],
    }
    report = {"cases": len(cases), "failures": failures, "source": "synthetic" if source_dir is None else "source_dir"}
    _write_json(out / "prepare_report.json", report, True)
    _write_json(datalist_path, datalist, overwrite)
    logger.info("prepare: %d cases in %s (%d failed)", len(cases), out, len(failures))
    return datalist


def ensure_dataset(
    dataset_dir: str | os.PathLike, required: Sequence[str] = ("training", "validation"), **prepare_kwargs
) -> Path:
    """``dataset_dir/datalist.json``, prepared first (synthetic phantoms by default, :func:`prepare_dataset` with
    ``prepare_kwargs``) when it does not exist; each list of ``required`` must hold cases.

    Raises:
        ValueError: naming the datalist, when it is unreadable or a required list is missing or empty.
    """
    datalist = Path(dataset_dir) / "datalist.json"
    if not datalist.exists():
        prepare_dataset(dataset_dir, **prepare_kwargs)
    try:
        content = json.loads(datalist.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"dataset_dir: {datalist} is not a readable datalist ({err}).") from None
    for key in required:
        if not isinstance(content, dict) or not content.get(key):
            raise ValueError(
                f"dataset_dir: {datalist} has no {key!r} cases; this workflow needs {list(required)} "
                "(prepare at least 2 cases for training)."
            )
    return datalist
