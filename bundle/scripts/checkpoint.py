"""Checkpoints: weights-only loading, atomic writes, and the preset (architecture) a checkpoint was trained with.

Every checkpoint of this bundle is a plain dictionary of tensors and containers, read with
``torch.load(..., weights_only=True)``: a file that needs anything else to unpickle (a class, a function, a
``__reduce__`` payload) is refused before any of it runs. Writes go through :func:`scripts.utils.atomic_write`
(temporary file in the same folder, fsync, rename), so a crash leaves the old checkpoint or the new one, never half
of one; and a checkpoint whose tensors hold NaN or Inf is never written.

A checkpoint records its ``preset`` — :func:`preset_record`, the fields that fix the network's architecture — and
the ``config`` it came from; :func:`check_preset` refuses weights trained with another preset, naming both.
"""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .utils import atomic_write

__all__ = [
    "PRESET_FIELDS",
    "check_preset",
    "first_nonfinite",
    "load_checkpoint",
    "load_network_weights",
    "plain",
    "preset_record",
    "save_checkpoint",
]

#: What identifies a network's architecture, in the order :func:`check_preset` compares them (the name last, so
#: that a mismatch names the field that makes the weights unusable).
PRESET_FIELDS = ("stages", "encoder", "fov_mm", "use_depth_lifting", "name")


def plain(value: Any) -> Any:
    """``value`` as JSON types (dicts, lists, str, numbers, bool, None); anything else becomes its ``str``.

    Checkpoint records must unpickle under ``weights_only=True`` and compare equal after a round trip, so tuples
    become lists and objects (e.g. a geometry) their text.
    """
    return json.loads(json.dumps(value, default=str))


def preset_record(
    name: str,
    stages: Sequence[Mapping],
    encoder: Mapping | None,
    fov_mm: float,
    use_depth_lifting: bool,
) -> dict:
    """The architecture identity a checkpoint records: ``{"name", "stages", "encoder", "fov_mm", "use_depth_lifting"}``.

    Args:
        name: the preset's name (``preset`` in the configs: ``tiny``, ``quick_2stage``, ...).
        stages: the stage settings (``stages`` in the configs).
        encoder: the X-ray encoder settings (``encoder``).
        fov_mm: the field of view of the stage grids (mm).
        use_depth_lifting: whether the stages have a depth-lifting module.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"preset must be a non-empty name, got {name!r}.")
    return plain(
        {
            "name": name,
            "stages": list(stages),
            "encoder": dict(encoder or {}),
            "fov_mm": float(fov_mm),
            "use_depth_lifting": bool(use_depth_lifting),
        }
    )


def _tensors(value: Any, prefix: str) -> Iterator[tuple[str, torch.Tensor]]:
    """``(key path, tensor)`` for every tensor in nested dicts and lists."""
    if isinstance(value, torch.Tensor):
        yield prefix, value
    elif isinstance(value, Mapping):
        for k, v in value.items():
            yield from _tensors(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            yield from _tensors(v, f"{prefix}[{i}]")


def first_nonfinite(content: Any) -> str | None:
    """The key path of the first floating-point tensor in ``content`` holding NaN or Inf, or ``None``."""
    for key, tensor in _tensors(content, ""):
        if (tensor.is_floating_point() or tensor.is_complex()) and not bool(torch.isfinite(tensor).all()):
            return key
    return None


def save_checkpoint(
    path: str | os.PathLike, content: Mapping, preset: Mapping | None = None, config: Mapping | None = None
) -> None:
    """Write ``{**content, "preset": preset, "config": config}`` to ``path`` atomically (temp file, fsync, rename).

    Args:
        path: the checkpoint file; an existing one is replaced only once the new one is complete on disk.
        content: state dicts and plain values (tensors, containers, numbers, strings).
        preset: the :func:`preset_record` of the network.
        config: the settings that produced the checkpoint (made JSON-plain).

    Raises:
        ValueError: a tensor of ``content`` is not finite (the file is left as it was).
    """
    bad = first_nonfinite(content)
    if bad is not None:
        raise ValueError(f"refusing to write checkpoint {path}: {bad} is not finite (NaN or Inf); the file is kept.")
    payload = {
        **content,
        "preset": None if preset is None else plain(preset),
        "config": None if config is None else plain(config),
    }
    atomic_write(Path(path), lambda tmp: torch.save(payload, tmp), overwrite=True)


def _load_error(path: Path, err: Exception) -> ValueError:
    """The error to raise for a checkpoint ``torch.load(weights_only=True)`` could not read."""
    reason = str(err.__context__ or "").split(". ")[0].strip()
    if isinstance(err, pickle.UnpicklingError) and "GLOBAL" in reason:
        # The weights-only unpickler stops at the first class or function it does not allow, before calling it.
        return ValueError(
            f"checkpoint {path} was refused: it is not a plain weights file ({reason}); it is read with "
            "weights_only=True only, and nothing in it was executed. Load only checkpoints from a trusted source, "
            "saved as state dicts."
        )
    return ValueError(f"checkpoint {path} is corrupt or truncated ({type(err).__name__}: {err}).")


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Read a checkpoint with ``torch.load(path, map_location="cpu", weights_only=True)``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is corrupt or truncated, is not a dictionary, or was refused because unpickling it
            would need more than tensors and containers (code or custom objects; nothing of it is executed).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist.")
    with open(path, "rb") as file:  # opening errors (permissions) are what they say; what follows is the content
        try:
            content = torch.load(file, map_location="cpu", weights_only=True)
        except Exception as err:  # the zip reader, the unpickler and the tensor loader each fail their own way
            raise _load_error(path, err) from None
    if not isinstance(content, dict):
        raise ValueError(f"checkpoint {path} is not a dictionary of state dicts (got {type(content).__name__}).")
    return content


def _first_difference(found: Any, expected: Any, where: str) -> tuple[str, Any, Any] | None:
    """The first place where two plain records differ: ``(key path, found, expected)``, or ``None``."""
    if isinstance(found, dict) and isinstance(expected, dict):
        for key in list(expected) + [k for k in found if k not in expected]:
            if key not in found or key not in expected:
                return f"{where}.{key}", found.get(key, "<absent>"), expected.get(key, "<absent>")
            diff = _first_difference(found[key], expected[key], f"{where}.{key}")
            if diff:
                return diff
        return None
    if isinstance(found, list) and isinstance(expected, list) and len(found) == len(expected):
        for i, (a, b) in enumerate(zip(found, expected, strict=True)):
            diff = _first_difference(a, b, f"{where}[{i}]")
            if diff:
                return diff
        return None
    return None if found == expected else (where, found, expected)


def check_preset(found: Mapping | None, expected: Mapping, path: str | os.PathLike) -> None:
    """Refuse a checkpoint trained with another preset than ``expected`` (both :func:`preset_record` dicts).

    ``found = None`` (a checkpoint without a record, e.g. a bare state dict) passes; the weights' shapes are still
    checked when they are loaded.

    Raises:
        ValueError: naming the file, both presets and the first differing field, e.g. ``checkpoint X was trained with
            preset 'quick_2stage' but this config is preset 'tiny' (stages differ: stages[0].grid_size is 64 in the
            checkpoint, 32 in this config).``
    """
    if found is None:
        return
    found, expected = plain(found), plain(expected)
    for field in PRESET_FIELDS:
        diff = _first_difference(found.get(field), expected.get(field), field)
        if diff is not None:
            where, a, b = diff
            verb = "differ" if field == "stages" else "differs"
            detail = f"{field} {verb}: {where} is {a!r} in the checkpoint, {b!r} in this config"
            name, own = found.get("name"), expected.get("name")
            if name == own:
                raise ValueError(
                    f"checkpoint {path} was trained with preset {name!r} but with other settings than this config's "
                    f"preset {own!r} ({detail})."
                )
            raise ValueError(
                f"checkpoint {path} was trained with preset {name!r} but this config is preset {own!r} ({detail})."
            )


def load_network_weights(
    network: nn.Module,
    path: str | os.PathLike,
    expected_preset: Mapping | None,
    keys: Sequence[str] = ("ema", "network"),
) -> dict:
    """Load a checkpoint's weights into ``network`` strictly, after checking its preset.

    Args:
        network: the module to fill (a DDP / DataParallel wrapper is unwrapped).
        path: the checkpoint (read with :func:`load_checkpoint`).
        expected_preset: this config's :func:`preset_record`; ``None`` skips the preset check.
        keys: the state dict to take, the first one present (default the EMA weights, then the raw ones); a
            checkpoint that is itself a bare state dict is taken whole.

    Returns:
        the checkpoint dictionary.

    Raises:
        ValueError: another preset (:func:`check_preset`), or weights whose keys or shapes do not match, naming
            the file and the first mismatching keys.
    """
    checkpoint = load_checkpoint(path)
    if expected_preset is not None:
        check_preset(checkpoint.get("preset"), expected_preset, path)
    key = next((k for k in keys if k in checkpoint), None)
    state = checkpoint[key] if key is not None else checkpoint
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"checkpoint {path} has no state dict under {list(keys)} and is not one itself.")
    module = network.module if hasattr(network, "module") else network
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in own.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or shapes:
        parts = [
            f"{what} {items[:3]}"
            for what, items in (
                ("missing", missing),
                ("unexpected", unexpected),
                ("shape (checkpoint vs network)", shapes),
            )
            if items
        ]
        raise ValueError(f"checkpoint {path} does not fit this network: {'; '.join(parts)}.")
    module.load_state_dict(state, strict=True)
    return checkpoint
