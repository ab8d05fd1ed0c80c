"""Evaluation outputs a researcher reads besides ``metrics.json``: a CSV, a summary plot and per-case figures.

* ``metrics.csv`` — one row per case and method: the volume metrics, the DRR error, the biplanar protocol's, the
  generation time, the per-tissue and the per-anatomical-group MAE / bias (HU; ``anatomy_<group>_...``, empty
  without a label map), so the numbers open in a spreadsheet or pandas without parsing JSON.
* ``metrics_summary.png`` — per-case PSNR and SSIM, one colour per method, cases along x: who wins where, at a glance.
* ``<case>/<case>_evaluation.png`` — truth, generated and |error| in the three orthogonal planes through the centre
  (display conventions of :mod:`.preview`; CT in the chest window −1000..1000 HU, error 0..500 HU).
* ``uncertainty_calibration.png`` (``num_samples`` > 1) — does the uncertainty map predict the error: per case, the
  mean |error| of the mean CT against the mean per-voxel std in ten equally populated std bins, with the line a
  calibrated Gaussian prediction follows (mean |error| = √(2/π)·std).

Drawn with Pillow (a dependency already), so evaluation needs no plotting library.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ..utils import atomic_write
from .preview import WINDOW_HU, grey_tile, orthogonal_slices

__all__ = ["csv_columns", "save_calibration_plot", "save_case_figure", "save_summary_plot", "write_metrics_csv"]

_ERRORS = ("mae_hu", "bias_hu")
#: Method colours (RGB) of the summary plot, in the order methods are listed; more methods cycle.
_COLOURS = ((230, 85, 13), (120, 120, 120), (49, 130, 189), (116, 196, 118), (158, 154, 200))
ERROR_WINDOW_HU = (0.0, 500.0)


def csv_columns(scalars: Sequence[str], tissues: Sequence[str], groups: Sequence[str]) -> tuple[str, ...]:
    """The header of metrics.csv: case, method, the scalar metrics, ``<tissue>_mae_hu``/``_bias_hu`` per tissue, then
    ``anatomy_<group>_mae_hu``/``_bias_hu`` per anatomical group."""
    tissue = [f"{t}_{k}" for t in tissues for k in _ERRORS]
    return ("case", "method", *scalars, *tissue, *(f"anatomy_{g}_{k}" for g in groups for k in _ERRORS))


def write_metrics_csv(
    path: str | os.PathLike,
    per_case: Mapping[str, Mapping[str, Mapping]],
    scalars: Sequence[str],
    tissues: Sequence[str],
    groups: Sequence[str],
) -> None:
    """``per_case[case][method]`` scores -> ``path`` (atomic, columns :func:`csv_columns`); empty cells where a value
    is missing (a case without a label map has no anatomy)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(csv_columns(scalars, tissues, groups))
    for case, methods in per_case.items():
        for method, scores in methods.items():
            tissue, anatomy = scores.get("tissue", {}), scores.get("anatomy", {})
            row = [case, method, *(_cell(scores.get(k)) for k in scalars)]
            row += [_cell(tissue.get(t, {}).get(k)) for t in tissues for k in _ERRORS]
            row += [_cell(anatomy.get(g, {}).get(k)) for g in groups for k in _ERRORS]
            writer.writerow(row)
    text = buffer.getvalue()
    atomic_write(Path(path), lambda p: Path(p).write_text(text), overwrite=True)


def _cell(value) -> str:
    return "" if value is None or (isinstance(value, float) and not np.isfinite(value)) else f"{value:.6g}"


def save_summary_plot(
    path: str | os.PathLike,
    per_case: Mapping[str, Mapping[str, Mapping]],
    metrics: Sequence[str] = ("psnr", "ssim"),
    panel: tuple[int, int] = (560, 260),
) -> None:
    """Per-case values of ``metrics`` (one panel each, stacked), a marker per method and case (atomic PNG)."""
    cases = list(per_case)
    methods = list(dict.fromkeys(m for c in per_case.values() for m in c))
    width, height = panel
    left, right, top, bottom = 60, 150, 24, 30
    image = Image.new("RGB", (width, height * len(metrics)), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    for p, metric in enumerate(metrics):
        y0 = p * height
        values = [per_case[c][m][metric] for c in cases for m in methods if m in per_case[c]]
        lo, hi = float(min(values)), float(max(values))
        pad = 0.05 * (hi - lo or abs(hi) or 1.0)
        lo, hi = lo - pad, hi + pad
        box = (left, y0 + top, width - right, y0 + height - bottom)
        draw.rectangle(box, outline=(0, 0, 0))
        draw.text((4, y0 + 4), metric, fill=(0, 0, 0))
        for frac in (0.0, 0.5, 1.0):  # y ticks: bottom, middle, top
            y = box[3] - frac * (box[3] - box[1])
            draw.line((box[0] - 4, y, box[0], y), fill=(0, 0, 0))
            draw.text((4, y - 6), f"{lo + frac * (hi - lo):.3g}", fill=(0, 0, 0))

        step = (box[2] - box[0]) / max(len(cases), 1)
        for i, case in enumerate(cases):
            centre = box[0] + (i + 0.5) * step
            draw.text((centre - 24, box[3] + 4), case[-9:], fill=(0, 0, 0))
            for j, method in enumerate(methods):
                if method not in per_case[case]:
                    continue
                v = float(per_case[case][method][metric])
                y = box[3] - (v - lo) / (hi - lo) * (box[3] - box[1])
                x = centre + (j - (len(methods) - 1) / 2) * 6
                draw.ellipse((x - 3, y - 3, x + 3, y + 3), fill=_COLOURS[j % len(_COLOURS)])
        for j, method in enumerate(methods):  # legend
            ly = y0 + top + 14 * j
            draw.rectangle((width - right + 10, ly, width - right + 20, ly + 10), fill=_COLOURS[j % len(_COLOURS)])
            draw.text((width - right + 26, ly), method, fill=(0, 0, 0))
    atomic_write(Path(path), lambda f: image.save(f, format="PNG"), overwrite=True)


def save_calibration_plot(
    path: str | os.PathLike, curves: Mapping[str, Mapping], size: tuple[int, int] = (520, 420)
) -> None:
    """Mean |error| (HU, y) against mean std (HU, x) per std bin, a polyline per case, and the calibrated line
    ``y = √(2/π)·x`` (dashed); both axes from 0 to the largest value plotted (atomic PNG).

    Args:
        path: the PNG.
        curves: case name -> its ``uncertainty`` entry of ``metrics.json`` (``calibration``: bins with
            ``mean_std_hu`` and ``mean_abs_error_hu``; ``ideal_slope``).
    """
    width, height = size
    left, right, top, bottom = 60, 20, 30, 50
    points = {
        case: [(b["mean_std_hu"], b["mean_abs_error_hu"]) for b in entry["calibration"]]
        for case, entry in curves.items()
    }
    slope = float(next(iter(curves.values()))["ideal_slope"]) if curves else float(np.sqrt(2.0 / np.pi))
    top_value = max([max(x, y) for pts in points.values() for x, y in pts] + [1.0]) * 1.05
    image = Image.new("RGB", size, (255, 255, 255))
    draw = ImageDraw.Draw(image)
    box = (left, top, width - right, height - bottom)
    draw.rectangle(box, outline=(0, 0, 0))

    def xy(x: float, y: float) -> tuple[float, float]:
        return box[0] + x / top_value * (box[2] - box[0]), box[3] - y / top_value * (box[3] - box[1])

    for frac in (0.0, 0.5, 1.0):
        x, y = xy(frac * top_value, frac * top_value)
        draw.text((x - 12, box[3] + 6), f"{frac * top_value:.0f}", fill=(0, 0, 0))
        draw.text((4, y - 6), f"{frac * top_value:.0f}", fill=(0, 0, 0))
    draw.text((box[0] + 40, height - 20), "mean per-voxel std of the samples (HU)", fill=(0, 0, 0))
    draw.text((4, 8), "mean |error| of the mean CT (HU), per std bin; dashed: calibrated", fill=(0, 0, 0))
    for k in range(20):  # the calibrated line, dashed
        a, b = (
            xy(top_value * k / 20, slope * top_value * k / 20),
            xy(top_value * (k + 0.5) / 20, slope * top_value * (k + 0.5) / 20),
        )
        draw.line((*a, *b), fill=(0, 0, 0), width=1)
    for j, pts in enumerate(points.values()):
        colour = _COLOURS[j % len(_COLOURS)]
        line = [xy(x, y) for x, y in pts]
        if len(line) > 1:
            draw.line(line, fill=colour, width=2)
        for x, y in line:
            draw.ellipse((x - 2, y - 2, x + 2, y + 2), fill=colour)
    atomic_write(Path(path), lambda f: image.save(f, format="PNG"), overwrite=True)


def case_slices(target_hu, pred_hu) -> dict[str, dict[str, np.ndarray]]:
    """The figure's content: ``{"truth"|"generated"|"|error|": {plane: slice}}`` (small: kept per case until the
    figures are written)."""
    target, pred = np.asarray(target_hu, dtype=np.float32), np.asarray(pred_hu, dtype=np.float32)
    return {
        "truth": orthogonal_slices(target),
        "generated": orthogonal_slices(pred),
        "|error|": orthogonal_slices(np.abs(pred - target)),
    }


def save_case_figure(path: str | os.PathLike, slices: Mapping[str, Mapping[str, np.ndarray]], tile: int = 160) -> None:
    """Rows truth / generated / |error|, columns axial / coronal / sagittal (atomic PNG)."""
    label = 14
    rows = list(slices)
    planes = list(next(iter(slices.values())))
    image = Image.new("L", (len(planes) * tile, len(rows) * (tile + label)), 0)
    draw = ImageDraw.Draw(image)
    for r, row in enumerate(rows):
        window = ERROR_WINDOW_HU if row == "|error|" else WINDOW_HU
        for c, plane in enumerate(planes):
            top = r * (tile + label)
            image.paste(grey_tile(slices[row][plane], *window, tile), (c * tile, top + label))
            draw.text((c * tile + 3, top + 1), f"{row} {plane} ({window[0]:.0f}..{window[1]:.0f} HU)", fill=255)
    atomic_write(Path(path), lambda f: image.save(f, format="PNG"), overwrite=True)
