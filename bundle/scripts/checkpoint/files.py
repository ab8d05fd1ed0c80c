"""Checkpoint files: weights-only loading, atomic writes, no NaN or Inf.

Every checkpoint of this bundle is a plain dictionary of tensors and containers, read with
``torch.load(..., weights_only=True)``: a file that needs anything else to unpickle (a class, a function, a
``__reduce__`` payload) is refused before any of it runs. Writes go through :func:`scripts.utils.atomic_write`
(temporary file in the same folder, fsync, rename), so a crash leaves the old checkpoint or the new one, never half
of one; and a checkpoint whose tensors hold NaN or Inf is never written.

A checkpoint records its ``model_config`` (what the weights mean: :mod:`.model_config`) and the ``config`` of the
run that produced it (provenance: stage, epochs, seed, loss weights, the recipe).

Two kinds of files, by what they are for:

* **Weights** (``model.pt``, ``model_best.pt``): the network's state dict at the top level, as in every MONAI
  model-zoo bundle, plus the two small records (~1.5 KB) — no optimizer, no second copy of the network. The records
  stay inside the file rather than in a sidecar JSON because a weights file travels alone (copied to
  ``models/model.pt`` for inference or MONAI Label, or to ``models/baselines/`` next to another model) and must keep
  its meaning; a sidecar is lost or mismatched the first time one file is copied without the other. The bundle's
  networks drop the records in a ``load_state_dict`` pre-hook (:func:`scripts.networks.skip_checkpoint_records`),
  so ``network.load_state_dict(torch.load(path, weights_only=True))`` loads such a file strictly.
* **Training state** (``training_state.pt``, one per stage, replaced atomically): network, EMA, optimizer moments,
  LR schedule, data order, random streams and the records — everything ``--resume true`` needs
  (:class:`~scripts.checkpoint.TrainingStateHandler`).

Files of the 0.2.0 layout (``{"model": state_dict, "preset", "config"}``, e.g. the shipped ``models/model.pt``) and
of the first 0.3 layout (``{"network", "ema", "optimizer", "model_config", "config"}``) still load.
"""

from __future__ import annotations

import json
import os
import pickle
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from ..networks.interface import CHECKPOINT_RECORDS
from ..utils import atomic_write

__all__ = ["first_nonfinite", "load_checkpoint", "plain", "save_checkpoint", "write_json"]


def plain(value: Any) -> Any:
    """``value`` as JSON types (dicts, lists, str, numbers, bool, None); anything else becomes its ``str``.

    Checkpoint records must unpickle under ``weights_only=True`` and compare equal after a round trip, so tuples
    become lists and objects (e.g. a geometry) their text.
    """
    return json.loads(json.dumps(value, default=str))


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
    path: str | os.PathLike, content: Mapping, model_config: Mapping | None = None, config: Mapping | None = None
) -> None:
    """Write ``{**content, "model_config": ..., "config": ...}`` to ``path`` atomically (temp file, fsync, rename).

    Args:
        path: the checkpoint file; an existing one is replaced only once the new one is complete on disk.
        content: a state dict (a weights file: the records land beside its tensors, its ``_metadata`` kept), or
            state dicts and plain values by name (tensors, containers, numbers, strings).
        model_config: what the weights mean (:func:`scripts.checkpoint.model_config`); left out when ``None``.
        config: the settings of the run that produced the checkpoint (made JSON-plain); left out when ``None``.

    Raises:
        ValueError: a tensor of ``content`` is not finite (the file is left as it was), or ``content`` already has
            an entry named like a record.
    """
    bad = first_nonfinite(content)
    if bad is not None:
        raise ValueError(f"refusing to write checkpoint {path}: {bad} is not finite (NaN or Inf); the file is kept.")
    records = {k: plain(v) for k, v in zip(CHECKPOINT_RECORDS, (model_config, config), strict=True) if v is not None}
    clash = sorted(set(records) & set(content))
    if clash:
        raise ValueError(f"checkpoint {path}: content has entries {clash}, the names of its records.")
    payload = OrderedDict(content)
    if hasattr(content, "_metadata"):  # a state dict's per-module versions, read by load_state_dict
        payload._metadata = content._metadata  # type: ignore[attr-defined]
    payload.update(records)
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


def write_json(path: str | os.PathLike, content: Any) -> None:
    """Write ``content`` as indented JSON, atomically (e.g. the run config next to a stage's checkpoints)."""
    text = json.dumps(content, indent=2, default=str)
    atomic_write(Path(path), lambda p: Path(p).write_text(text), overwrite=True)
