"""A preview PNG of one generated CT: three orthogonal slices, and each input view beside the DRR of the CT.

Display conventions (radiological): axial seen from the feet, patient's right on the image's left, anterior at the
top; coronal seen from the front, superior at the top, patient's right on the left; sagittal seen from the patient's
right, superior at the top, anterior on the left. Views are shown as the detector records them (the renderer's
display convention). Slices use a chest window (−1000..1000 HU); views the fixed network scale.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from ..utils import atomic_write

__all__ = ["grey_tile", "orthogonal_slices", "save_preview"]

WINDOW_HU = (-1000.0, 1000.0)


def orthogonal_slices(hu: torch.Tensor | np.ndarray) -> dict[str, np.ndarray]:
    """Central axial, coronal and sagittal slices ``(rows, columns)`` of a RAS ``(X, Y, Z)`` volume, as displayed."""
    vol = np.asarray(hu, dtype=np.float32)
    x, y, z = (n // 2 for n in vol.shape)
    return {
        "axial": vol[::-1, ::-1, z].T,  # rows: anterior -> posterior; columns: patient's right -> left
        "coronal": vol[::-1, y, ::-1].T,  # rows: superior -> inferior; columns: patient's right -> left
        "sagittal": vol[x, ::-1, ::-1].T,  # rows: superior -> inferior; columns: anterior -> posterior
    }


def grey_tile(image: np.ndarray, low: float, high: float, size: int) -> Image.Image:
    """``image`` windowed to ``[low, high]`` as 8-bit grey, resized to a ``size`` × ``size`` tile."""
    scaled = np.clip((np.asarray(image, dtype=np.float32) - low) / (high - low), 0.0, 1.0)
    return Image.fromarray((scaled * 255).astype(np.uint8)).resize((size, size), Image.Resampling.BILINEAR)


def save_preview(
    path: str | os.PathLike,
    hu: torch.Tensor,
    views: torch.Tensor,
    drrs: torch.Tensor,
    view_mask: torch.Tensor,
    overwrite: bool = False,
    tile: int = 192,
) -> None:
    """Write the preview (atomic). ``hu (X, Y, Z)``; ``views``, ``drrs`` ``(V, H, W)`` on the X-ray network scale."""
    slices = orthogonal_slices(hu)
    present = [v for v in range(views.shape[0]) if bool(view_mask[v])]
    columns = max(3, 2 * len(present))
    label = 14
    canvas = Image.new("L", (columns * tile, 2 * (tile + label)), 0)
    draw = ImageDraw.Draw(canvas)
    for i, (name, image) in enumerate(slices.items()):
        canvas.paste(grey_tile(image, *WINDOW_HU, tile), (i * tile, label))
        draw.text((i * tile + 3, 1), name, fill=255)
    for j, v in enumerate(present):
        for k, (kind, image) in enumerate((("input", views[v]), ("DRR of CT", drrs[v]))):
            left = (2 * j + k) * tile
            canvas.paste(grey_tile(image.numpy(), -1.0, 1.0, tile), (left, 2 * label + tile))
            draw.text((left + 3, tile + label + 1), f"view {v} {kind}", fill=255)
    atomic_write(Path(path), lambda p: canvas.save(p, format="PNG"), overwrite)
