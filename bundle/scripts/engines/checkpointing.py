"""Training checkpoints: MONAI's ``CheckpointSaver`` with atomic, finite-only writes that record preset and config."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from ignite.handlers.checkpoint import BaseSaveHandler
from monai.handlers import CheckpointSaver

from ..checkpoint import save_checkpoint

__all__ = ["AtomicCheckpointSaver", "is_main_process"]


def is_main_process() -> bool:
    """True outside ``torch.distributed`` and on its rank 0: the process that writes files."""
    return not (torch.distributed.is_available() and torch.distributed.is_initialized()) or (
        torch.distributed.get_rank() == 0
    )


class _Record:
    """A fixed value with the ``state_dict`` interface, so that ignite's ``Checkpoint`` saves it as one more entry."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def state_dict(self) -> Any:
        return self.value

    def load_state_dict(self, state: Any) -> None:  # a record is written, never restored
        pass


class _AtomicDiskSaver(BaseSaveHandler):
    """Writes through :func:`scripts.checkpoint.save_checkpoint`: temporary file, fsync, rename; never NaN or Inf.

    ``filename`` fixes the name (MONAI's ``final_filename`` / ``key_metric_filename``). ignite removes the file a new
    checkpoint replaces *before* writing it; with a fixed name that removal is skipped, so the old file stays until
    the new one has replaced it.
    """

    def __init__(self, dirname: str | os.PathLike, filename: str | None = None) -> None:
        self.dirname, self.filename = Path(dirname), filename

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        if not is_main_process():
            return
        content = dict(checkpoint)
        preset, config = content.pop("preset", None), content.pop("config", None)
        save_checkpoint(self.dirname / (self.filename or filename), content, preset, config)

    def remove(self, filename: str) -> None:
        if self.filename is None and is_main_process():
            (self.dirname / filename).unlink(missing_ok=True)


class AtomicCheckpointSaver(CheckpointSaver):
    """``monai.handlers.CheckpointSaver`` whose files are written atomically and record where they came from.

    Same arguments and behaviour as MONAI's handler, except that

    * every write goes to a temporary file in ``save_dir``, is fsynced and renamed over the target, so a crash (even
      SIGKILL) leaves the previous checkpoint or the new one (MONAI's own saver writes in place, after deleting the
      file it replaces);
    * a checkpoint whose tensors hold NaN or Inf is refused with a ``ValueError`` (the previous file is kept);
    * each checkpoint carries ``preset`` (:func:`scripts.checkpoint.preset_record`) and ``config`` entries next to
      the state dicts, so a single-object ``save_dict`` is written as ``{name: state_dict, "preset", "config"}``;
    * only rank 0 writes under ``torch.distributed``;
    * :meth:`state_dict` returns the best-metric history (the pair of MONAI's :meth:`load_state_dict`), so that a
      resumed training does not overwrite a better ``model_best.pt``.

    Args:
        preset: the network's preset record.
        config: the settings that produced the checkpoint.
        args, kwargs: ``monai.handlers.CheckpointSaver`` arguments.
    """

    def __init__(self, *args: Any, preset: Mapping | None = None, config: Mapping | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.save_dict = {**self.save_dict, "preset": _Record(preset), "config": _Record(config)}
        fixed = {"_final_checkpoint": self._final_filename, "_key_metric_checkpoint": kwargs.get("key_metric_filename")}
        for attr in ("_final_checkpoint", "_key_metric_checkpoint", "_interval_checkpoint"):
            checkpoint = getattr(self, attr)
            if checkpoint is not None:
                checkpoint.to_save = self.save_dict
                checkpoint.save_handler = _AtomicDiskSaver(self.save_dir, fixed.get(attr))

    def state_dict(self) -> dict:
        """The best-metric history (empty without ``save_key_metric``)."""
        return {} if self._key_metric_checkpoint is None else self._key_metric_checkpoint.state_dict()

    def load_state_dict(self, state_dict: dict) -> None:
        if state_dict and self._key_metric_checkpoint is not None:
            super().load_state_dict(state_dict)
