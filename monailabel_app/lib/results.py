"""What the app writes for a request: the file extension and dtype of each result, and the CT's values in that dtype.

MONAI Label's clients ask for label-map formats: 3D Slicer's module sends ``result_extension=".nrrd"`` and
``result_dtype="uint8"`` with every request, and MONAI Label's writer casts with ``numpy.astype``, which turns a
negative HU value into a meaningless unsigned one (−1000 HU in int16 wraps to 24 in uint8). So the CT model never
casts HU to a type that cannot hold them: a request for such a type gets the CT as int16 HU (what CT files hold), and
the result JSON says so. A dtype or extension that cannot be written at all is refused with a message naming the key
and the values allowed.

Torch and numpy only (no MONAI Label): the project's tests import this module without MONAI Label installed.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = [
    "CT_DTYPES",
    "VOLUME_EXTENSIONS",
    "RequestRefused",
    "ct_result_dtype",
    "hu_values",
    "label_result_dtype",
    "result_extension",
]


class RequestRefused(ValueError):
    """A request the app refuses before running anything; the message is for the client (HTTP 400)."""


#: File types that hold a 3D volume with its affine and that MONAI Label's writer (ITK) writes as one file.
VOLUME_EXTENSIONS = (".nii.gz", ".nii", ".nrrd", ".mha")
#: dtypes that hold HU as they are (signed, at least 16 bits); int16 is the default, as in CT files.
CT_DTYPES = {"int16": torch.int16, "int32": torch.int32, "float32": torch.float32, "float64": torch.float64}


def result_extension(requested: str | None, default: str = ".nii.gz") -> str:
    """The extension to write: ``requested`` (``None``/``""``: ``default``) if it holds a 3D volume, else refused."""
    if requested in (None, ""):
        return default
    extension = str(requested).strip().lower()
    extension = extension if extension.startswith(".") else f".{extension}"
    if extension not in VOLUME_EXTENSIONS:
        raise RequestRefused(
            f"result_extension {requested!r}: the result is a 3D volume, which this file type cannot hold; "
            f"use one of {', '.join(VOLUME_EXTENSIONS)}."
        )
    return extension


def _dtype(key: str, requested: object) -> np.dtype:
    try:
        return np.dtype(requested)  # type: ignore[arg-type]
    except TypeError:
        raise RequestRefused(f"{key} {requested!r} is not a numpy dtype name (e.g. int16, float32).") from None


def ct_result_dtype(requested: object) -> tuple[str, str | None]:
    """``(dtype, note)`` for the CT: a dtype of :data:`CT_DTYPES` as requested (``None``/``""``: int16); any other
    integer or float type (uint8, uint16, int8, int64, float16, ...) gets int16 HU and a note saying why; other
    kinds (bool, strings, ...) are refused."""
    if requested in (None, ""):
        return "int16", None
    dtype = _dtype("result_dtype", requested)
    if dtype.name in CT_DTYPES:
        return dtype.name, None
    if dtype.kind in "uif":
        note = (
            f"result_dtype {requested!r} is not a CT type: the CT is written in signed HU as one of "
            f"{', '.join(CT_DTYPES)} (an unsigned type would wrap negative HU), so it is int16."
        )
        return "int16", note
    raise RequestRefused(f"result_dtype {requested!r}: the CT is written in HU as one of {', '.join(CT_DTYPES)}.")


def label_result_dtype(requested: object) -> str:
    """The tissue label map's dtype: any integer or float type as requested (``None``/``""``: uint8); others refused."""
    if requested in (None, ""):
        return "uint8"
    dtype = _dtype("result_dtype", requested)
    if dtype.kind not in "uif":
        raise RequestRefused(f"result_dtype {requested!r}: the tissue label map is written as an integer type (uint8).")
    return dtype.name


def hu_values(hu: torch.Tensor, dtype: str) -> torch.Tensor:
    """``hu`` in ``dtype`` (a key of :data:`CT_DTYPES`): rounded to whole HU and clamped to the type's range for an
    integer type, never wrapped. A MetaTensor keeps its affine and metadata."""
    target = CT_DTYPES[dtype]
    if target.is_floating_point:
        return hu.to(target)
    limits = torch.iinfo(target)
    return hu.float().round().clamp(limits.min, limits.max).to(target)
