"""DRR demo workflow: voxelise an ellipsoid chest phantom, render its radiographs, write them to disk.

This is the bundle's default job until the training workflow lands: it exercises the projection physics end to
end from YAML (``configs/drr_demo.yaml``) with nothing downloaded.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .data.io import write_nifti
from .physics import DRRRenderer, centred_affine, mu_to_hu, voxelize_ellipsoids
from .utils import atomic_write

__all__ = ["render_demo"]


def _preview(line_integral: np.ndarray, max_line_integral: float) -> np.ndarray:
    """8-bit display image: attenuating structures bright, on the fixed scale ``[0, p_max]`` (display only)."""
    return (np.clip(line_integral / max_line_integral, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def render_demo(
    renderer: DRRRenderer,
    ellipsoids: Sequence[Mapping],
    volume_shape: Sequence[int],
    spacing_mm: Sequence[float],
    mu_water: float,
    max_line_integral: float,
    output_dir: str | os.PathLike,
    overwrite: bool = False,
) -> dict:
    """Render the demo phantom and write its CT and radiographs.

    Writes to ``output_dir``: ``phantom_ct.nii.gz`` (HU, RAS affine in mm), ``drr_<view>.nii.gz`` (line
    integrals, array axes (column, row), pixel spacing in mm, shown by NIfTI viewers as the PNG),
    ``drr_<view>.png`` (display preview, top row = superior) and ``drr_summary.json`` (geometry and per-view
    statistics).

    Args:
        renderer: the DRR renderer holding the geometry.
        ellipsoids: phantom items ``{center_mm, semi_axes_mm, value}`` (value: added attenuation in 1/mm).
        volume_shape: ``(X, Y, Z)`` voxels; spacing_mm: ``(sx, sy, sz)`` mm.
        mu_water: water attenuation in 1/mm (for the HU volume).
        max_line_integral: the fixed network/display scale ``p_max``.
        output_dir: destination folder (created).
        overwrite: replace existing outputs instead of refusing.

    Returns:
        The summary that is also written as JSON.
    """
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    geometry = renderer.geometry
    names = [v if isinstance(v, str) else f"gantry{v:g}" for v in geometry.views]
    if len(set(names)) != len(names):
        raise ValueError(f"geometry views must be distinct to name the output files, got {list(geometry.views)}.")
    targets = [out / "phantom_ct.nii.gz", out / "drr_summary.json"]
    targets += [out / f"drr_{n}.{ext}" for n in names for ext in ("nii.gz", "png")]
    if not overwrite:
        existing = [str(p) for p in targets if p.exists()]
        if existing:
            raise FileExistsError(f"outputs exist: {existing}; pass --overwrite true to replace them.")

    mu = voxelize_ellipsoids(ellipsoids, volume_shape, spacing_mm)  # (X, Y, Z) 1/mm
    with torch.no_grad():
        drr = renderer(mu[None, None], spacing_mm)[0].cpu().numpy()  # (V, H, W)
    hu = mu_to_hu(mu, mu_water).numpy().astype(np.float32)
    write_nifti(targets[0], hu, centred_affine(volume_shape, spacing_mm), overwrite)

    ph, pw = geometry.pixel_spacing_mm
    views = {}
    for name, image in zip(names, drr, strict=True):
        # Axes (column, row); the negative axis directions make NIfTI viewers, which draw +x (R) on the screen's
        # left and +y (A) at the top, show the image as the PNG: row 0 at the top, column 0 on the left.
        write_nifti(
            out / f"drr_{name}.nii.gz", image.T[:, :, None].astype(np.float32), np.diag([-pw, -ph, 1.0, 1.0]), overwrite
        )
        png = Image.fromarray(_preview(image, max_line_integral))
        atomic_write(out / f"drr_{name}.png", lambda p, img=png: img.save(p, format="PNG"), overwrite)
        views[name] = {
            "min": float(image.min()),
            "max": float(image.max()),
            "mean": float(image.mean()),
        }
    summary = {
        "geometry": repr(geometry),
        "projector": renderer.method,
        "volume_shape": list(volume_shape),
        "spacing_mm": list(map(float, spacing_mm)),
        "line_integrals": views,
    }
    atomic_write(targets[1], lambda p: Path(p).write_text(json.dumps(summary, indent=2)), overwrite)
    return summary
