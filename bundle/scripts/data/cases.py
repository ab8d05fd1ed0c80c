"""Inference cases: a datalist entry -> the network's X-ray views; the network's output -> CT in HU with an affine.

* :func:`load_cases` — the cases of a datalist, input paths resolved against its folder.
* :class:`XrayInputsd` — one case (radiograph files per view, or a CT to render them from) -> ``(V, H, W)`` views.
* :class:`CTOutputd` — the sampler's mean and standard deviation on the CT scale -> HU MetaTensors (RAS, mm).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Hashable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import MapTransform

from ..physics import RadiographComposer, centred_affine, ct_scale_to_hu
from .radiograph import LoadRadiographsd, is_radiograph_file

__all__ = ["INPUT_KEYS", "LABEL_KEY", "CTOutputd", "XrayInputsd", "load_cases"]

#: The input keys of a case: a CT (``image``) or radiographs per view.
INPUT_KEYS = ("image", "pa", "lateral")
#: A case's optional label map of its CT (``prepare`` writes one per phantom), read by the evaluation.
LABEL_KEY = "label"


def load_cases(datalist: str | os.PathLike, key: str = "test") -> list[dict]:
    """The ``key`` list of a datalist, with relative input paths (``image``, ``pa``, ``lateral``) and label map
    (``label``) resolved against the datalist's folder.

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
        for k in (*INPUT_KEYS, LABEL_KEY):
            if isinstance(case.get(k), str) and not Path(case[k]).is_absolute():
                case[k] = str(path.parent / case[k])
        resolved.append(case)
    return resolved


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
        if loaded.get("xray_notes"):  # what the reader applied and assumed, per view (for the case's report)
            d[f"{self.output_key}_notes"] = loaded["xray_notes"]
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
            d[key] = MetaTensor(ct_scale_to_hu(pred[:1], self.hu_window), affine=affine)
            # A standard deviation scales with the map's slope and ignores its offset.
            slope = ct_scale_to_hu(torch.ones(()), self.hu_window) - ct_scale_to_hu(torch.zeros(()), self.hu_window)
            d[f"{key}_std"] = MetaTensor(pred[1:] * slope, affine=affine)
        return d
