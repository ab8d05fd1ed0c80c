"""Checks of ``configs/train.yaml``'s plain settings, run first in ``initialize``: a bad value fails before anything is
built or cached, with a ``ValueError`` naming its key.

Only what no component checks itself: the cascade checks ``stages`` (grids divisible by patches, widths by heads),
the geometry its ``views`` and distances, the DRR loss ``physics_loss_weight`` and ``physics_timestep_gate``, the
trainer ``stage``, ``cond_noise_max``, ``clip_grad_norm`` and ``max_nonfinite_steps``, the rendering its
augmentations, the training state ``checkpoint_interval`` and ``resume``.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

__all__ = ["CUSTOM_PRESET", "check_training_settings", "known_presets"]

#: The preset name for an architecture of one's own that is not in ``configs/stages/``.
CUSTOM_PRESET = "custom"


def known_presets(configs_dir: str | os.PathLike) -> list[str]:
    """The ``preset:`` names of ``train.yaml`` and of ``stages/*.yaml`` in ``configs_dir``, and ``custom``."""
    configs_dir = Path(configs_dir)
    names = {CUSTOM_PRESET}
    for path in [configs_dir / "train.yaml", *sorted((configs_dir / "stages").glob("*.yaml"))]:
        if path.is_file():
            name = (yaml.safe_load(path.read_text()) or {}).get("preset")
            if isinstance(name, str):
                names.add(name)
    return sorted(names)


def _integer(key: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        what = "a positive integer" if low == 1 else f"an integer >= {low}"
        raise ValueError(f"{key} must be {what}, got {value!r}.")


def _number(key: str, value: Any, low: float, high: float = math.inf, *, open_low: bool = False) -> None:
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if open_low else value >= low) and value <= high
    if not ok:
        bracket = "(" if open_low else "["
        if math.isfinite(high):
            rule = f"a number in {bracket}{low}, {high}]"
        else:
            rule = "a positive number" if open_low and low == 0 else f"a number {'>' if open_low else '>='} {low}"
        raise ValueError(f"{key} must be {rule}, got {value!r}.")


def _edge(grid: Any) -> int | None:
    """The first edge of a stage grid (``image_<edge>`` is its data key), or None when it is not a grid."""
    value = grid[0] if isinstance(grid, (list, tuple)) and grid else grid
    return int(value) if isinstance(value, numbers.Integral) and not isinstance(value, bool) else None


def check_training_settings(settings: Mapping[str, Any], configs_dir: str | os.PathLike) -> None:
    """Check the training settings that no component checks (see the module docstring).

    Args:
        settings: ``preset``, ``stage``, ``stages``, ``stage_sizes``, ``image_size``, ``hu_window``,
            ``num_train_timesteps``, ``num_inference_steps``, ``previous_sample_steps``, ``ssim_window``,
            ``learning_rate``, ``weight_decay``, ``ema_momentum``, ``batch_size``, ``max_epochs``, ``val_interval``,
            ``cache_rate``, ``num_workers``, as in ``train.yaml`` (absent keys are not checked).
        configs_dir: the bundle's ``configs`` folder (for the known preset names).

    Raises:
        ValueError: naming the first bad key, the rule and the value.
    """
    s = dict(settings)
    if "preset" in s:
        names = known_presets(configs_dir)
        if s["preset"] not in names:
            raise ValueError(
                f"preset: unknown preset {s['preset']!r}; known: {names} (the preset: of train.yaml and of "
                f"configs/stages/*.yaml; an architecture of your own is preset {CUSTOM_PRESET!r})."
            )
    for key in (
        "image_size",
        "num_train_timesteps",
        "previous_sample_steps",
        "batch_size",
        "max_epochs",
        "val_interval",
    ):
        if key in s:
            _integer(key, s[key], 1)
    if "num_workers" in s:
        _integer("num_workers", s["num_workers"], 0)
    if "num_inference_steps" in s:
        steps = s["num_inference_steps"]
        values = list(steps) if isinstance(steps, (list, tuple)) else [steps]
        if not values or any(isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1 for v in values):
            raise ValueError(f"num_inference_steps must be a positive integer (or one per stage), got {steps!r}.")
        if isinstance(s.get("num_train_timesteps"), numbers.Integral) and max(values) > s["num_train_timesteps"]:
            raise ValueError(
                f"num_inference_steps ({steps!r}) cannot exceed num_train_timesteps ({s['num_train_timesteps']})."
            )
    if "learning_rate" in s:
        _number("learning_rate", s["learning_rate"], 0.0, open_low=True)
    if "weight_decay" in s:
        _number("weight_decay", s["weight_decay"], 0.0)
    if "ema_momentum" in s:
        _number("ema_momentum", s["ema_momentum"], 0.0, 1.0, open_low=True)
    if "cache_rate" in s:
        _number("cache_rate", s["cache_rate"], 0.0, 1.0)
    if "hu_window" in s:
        window = s["hu_window"]
        ok = isinstance(window, (list, tuple)) and len(window) == 2
        ok = ok and all(isinstance(v, numbers.Real) and math.isfinite(v) for v in window) and window[1] > window[0]
        if not ok:
            raise ValueError(f"hu_window must be (low, high) in HU with high > low, got {window!r}.")
    edges = [_edge(stage.get("grid_size")) if isinstance(stage, Mapping) else None for stage in s.get("stages") or []]
    known = [e for e in edges if e is not None]  # the network checks the stage entries themselves
    if "stage_sizes" in s and known:
        sizes = s["stage_sizes"]
        if not isinstance(sizes, (list, tuple)) or not all(isinstance(v, numbers.Integral) for v in sizes):
            raise ValueError(f"stage_sizes must list the stage grid sizes, got {sizes!r}.")
        stage = s.get("stage", -1)
        # The trained stage and the one it is conditioned on (every stage when training jointly) need their data.
        needed = range(len(edges)) if stage == -1 else [i for i in (stage - 1, stage) if 0 <= i < len(edges)]
        missing = [(i, edges[i]) for i in needed if edges[i] is not None and edges[i] not in sizes]
        if missing:
            i, edge = missing[0]
            raise ValueError(
                f"stage_sizes {list(sizes)} must contain the grid size of every stage this run uses: "
                f"stages[{i}].grid_size is {edge} (the training batches carry image_<size> for each size)."
            )
        if "image_size" in s and s["image_size"] < max(sizes):
            raise ValueError(
                f"image_size ({s['image_size']}) must be at least the largest of stage_sizes ({max(sizes)}): "
                "the stage volumes are resized from it."
            )
    if "ssim_window" in s:
        window, smallest = s["ssim_window"], min(known) if known else None
        ok = isinstance(window, numbers.Integral) and not isinstance(window, bool) and window >= 1
        if not ok or (smallest is not None and window > smallest):
            bound = f" no larger than the smallest stage grid ({smallest})" if smallest is not None else ""
            raise ValueError(f"ssim_window must be a positive number of voxels{bound}, got {window!r}.")
