"""Training checkpoints: atomic, finite-only, with their model config; the full training state for resuming.

* :class:`AtomicCheckpointSaver` — MONAI's ``CheckpointSaver`` (``model.pt``, ``model_best.pt``: the EMA weights and
  their records, nothing else) writing atomically.
* :class:`TrainingStateHandler` — every ``checkpoint_interval`` iterations and at the end, everything a run needs to
  continue bit-identically (``training_state.pt``, one file per stage); ``--resume true`` continues from it.
* :class:`ResumableRandomSampler` — the training order, resumable in the middle of an epoch.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Iterator, Mapping, Sized
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import numpy as np
import torch
from ignite.engine import Engine, Events
from ignite.handlers.checkpoint import BaseSaveHandler
from monai.handlers import CheckpointSaver
from monai.transforms import Compose, Randomizable
from monai.utils import str2bool

from ..networks import unwrap
from .files import load_checkpoint, save_checkpoint
from .model_config import check_model_config, read_model_config

__all__ = [
    "AtomicCheckpointSaver",
    "ResumableRandomSampler",
    "TrainingStateHandler",
    "is_main_process",
    "rng_state",
    "set_rng_state",
]


def is_main_process() -> bool:
    """True outside ``torch.distributed`` and on its rank 0: the process that writes files."""
    return idist.get_rank() == 0


class _AtomicDiskSaver(BaseSaveHandler):
    """Writes through :func:`scripts.checkpoint.save_checkpoint`: temporary file, fsync, rename; never NaN or Inf;
    the records beside what ignite hands over (one object's bare state dict, or several state dicts by name).

    ``filename`` fixes the name (MONAI's ``final_filename`` / ``key_metric_filename``). ignite removes the file a new
    checkpoint replaces *before* writing it; with a fixed name that removal is skipped, so the old file stays until
    the new one has replaced it.
    """

    def __init__(
        self,
        dirname: str | os.PathLike,
        filename: str | None = None,
        model_config: Mapping | None = None,
        config: Mapping | None = None,
    ) -> None:
        self.dirname, self.filename = Path(dirname), filename
        self.model_config, self.config = model_config, config

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        if not is_main_process():
            return
        save_checkpoint(self.dirname / (self.filename or filename), checkpoint, self.model_config, self.config)

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
    * each checkpoint carries ``model_config`` (:func:`scripts.checkpoint.model_config`) and ``config`` entries
      beside what ignite saves: a single-object ``save_dict`` (train.yaml's ``{model: ema}``) is written as that
      object's state dict with the two records at its top level — a model-zoo ``model.pt`` that still says what its
      weights mean (why in :mod:`scripts.checkpoint.files`); several objects as ``{name: state_dict, ...,
      "model_config", "config"}``;
    * only rank 0 writes under ``torch.distributed``;
    * :meth:`state_dict` returns the best-metric history (the pair of MONAI's :meth:`load_state_dict`), so that a
      resumed training does not overwrite a better ``model_best.pt``.

    Args:
        model_config: what the weights mean.
        config: the settings of the run that produced the checkpoint.
        args, kwargs: ``monai.handlers.CheckpointSaver`` arguments.
    """

    def __init__(
        self, *args: Any, model_config: Mapping | None = None, config: Mapping | None = None, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        fixed = {"_final_checkpoint": self._final_filename, "_key_metric_checkpoint": kwargs.get("key_metric_filename")}
        for attr in ("_final_checkpoint", "_key_metric_checkpoint", "_interval_checkpoint"):
            checkpoint = getattr(self, attr)
            if checkpoint is not None:
                checkpoint.save_handler = _AtomicDiskSaver(self.save_dir, fixed.get(attr), model_config, config)

    def state_dict(self) -> dict:
        """The best-metric history (empty without ``save_key_metric``)."""
        return {} if self._key_metric_checkpoint is None else self._key_metric_checkpoint.state_dict()

    def load_state_dict(self, state_dict: dict) -> None:
        if state_dict and self._key_metric_checkpoint is not None:
            super().load_state_dict(state_dict)


class ResumableRandomSampler(torch.utils.data.Sampler[int]):
    """A new random order of ``data_source`` every epoch, from the sampler's own seeded generator, that resumes in the
    middle of an epoch.

    ``state_dict()`` holds the generator and the current epoch's order; :class:`TrainingStateHandler` adds
    ``position`` (the samples the trainer has consumed this epoch), so that after ``load_state_dict`` the next
    epoch yields the rest of the interrupted order, and the epochs after it the same orders as an uninterrupted run.
    The order does not depend on the DataLoader's own generator nor on the global random stream.

    Args:
        data_source: the data set (only its length is used).
        seed: seed of the order.
    """

    def __init__(self, data_source: Sized, seed: int = 0) -> None:
        self.num_samples = len(data_source)
        self.generator = torch.Generator().manual_seed(int(seed))
        self.order: list[int] = []
        self._start: int | None = None  # set by load_state_dict: resume the stored order from here

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[int]:
        if self._start is None:
            self.order = torch.randperm(self.num_samples, generator=self.generator).tolist()
            start = 0
        else:
            start, self._start = self._start, None
        yield from self.order[start:]

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "order": torch.tensor(self.order, dtype=torch.int64)}

    def load_state_dict(self, state: Mapping) -> None:
        self.generator.set_state(state["generator"])
        self.order = [int(i) for i in state["order"]]
        position = int(state.get("position", 0))
        # At an epoch boundary the next epoch draws a fresh order, exactly as the uninterrupted run would.
        self._start = position if 0 < position < len(self.order) else None


def _numpy_state(state: tuple) -> dict:
    """A ``numpy.random.RandomState`` state as weights-only-loadable values."""
    name, keys, pos, has_gauss, cached = state
    return {
        "name": name,
        "keys": torch.from_numpy(keys.astype(np.int64)),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "cached": float(cached),
    }


def _numpy_tuple(state: Mapping) -> tuple:
    return (state["name"], state["keys"].numpy().astype(np.uint32), state["pos"], state["has_gauss"], state["cached"])


def _randomizable(transform: Any) -> list[Randomizable]:
    """The random transforms of a (nested) ``Compose``, in order."""
    leaves = transform.flatten().transforms if isinstance(transform, Compose) else [transform]
    return [t for t in leaves if isinstance(t, Randomizable) and not isinstance(t, Compose)]


def rng_state(transform: Any = None) -> dict:
    """Every random stream a training step draws from: torch (CPU, CUDA), numpy, python, and each random transform
    of ``transform`` (MONAI transforms own a ``numpy.random.RandomState``)."""
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": _numpy_state(np.random.get_state()),
        "python": random.getstate(),
        "transforms": [_numpy_state(t.R.get_state()) for t in _randomizable(transform)] if transform else [],
    }


def set_rng_state(state: Mapping, transform: Any = None) -> None:
    """Restore what :func:`rng_state` recorded (CUDA streams only on as many devices as were recorded)."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available() and torch.cuda.device_count() == len(state["cuda"]):
        torch.cuda.set_rng_state_all(state["cuda"])
    np.random.set_state(_numpy_tuple(state["numpy"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    transforms = _randomizable(transform) if transform else []
    if len(transforms) != len(state["transforms"]):
        raise ValueError(
            f"the training transform has {len(transforms)} random transforms, the training state "
            f"{len(state['transforms'])}."
        )
    for t, s in zip(transforms, state["transforms"], strict=True):
        t.R.set_state(_numpy_tuple(s))


class TrainingStateHandler:
    """Write the whole training state every ``interval`` iterations and when training completes, and resume from it.

    The file (``stage_dir/training_state.pt``; one per stage, each write replacing it atomically, so the disk holds one
    state, never one per epoch) holds the trainer's iteration, epoch length
    and counters, every object of ``objects`` (network, EMA model, optimizer, LR scheduler, sampler, best-metric
    saver), the random streams (:func:`rng_state`, including the training transform's and the DataLoader
    generator), and the model and run configs. It is written after the iteration's other handlers (EMA update, LR
    step) and never with NaN or Inf in it. With ``resume``, it is read at ``Events.STARTED`` (``weights_only=True``,
    model config checked) so that the run continues at the next iteration exactly as the uninterrupted run would
    have — the same batches, noise, weights and optimizer moments. Exact with ``num_workers: 0``; with DataLoader
    workers the augmentation draws of the epoch in which training resumes differ (workers reseed per epoch), later
    epochs match. Under DDP every rank's random streams are gathered and restored (only rank 0 writes, every rank
    reads); ``DistributedSampler`` keeps no position, so an epoch resumed mid-way restarts from its first batches.

    The write at the end makes the last state the final one, so that ``--resume true --max_epochs N`` continues a
    finished run. This file, not ``model.pt``, is where the raw (non-EMA) weights and the optimizer's moments live:
    with the EMA copy and AdamW's two moments per trainable weight it is 2 to 4 times the network (tiny preset:
    2.7x for stage 0, whose encoder and stage train; 3.3x for stage 1, the largest stage).

    Attach it first among the trainer's handlers, so that the other ``STARTED`` handlers (e.g. validation at
    start) see the restored state.

    Args:
        path: the state file.
        objects: name -> object with ``state_dict()`` / ``load_state_dict()``.
        interval: iterations between writes (and one at the end); 0 turns writing off.
        resume: continue from ``path`` (it must exist).
        transform: the training transform, whose random transforms' streams are saved.
        model_config: this run's model config (checked on resume) and ``config``: recorded in the file.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        objects: Mapping[str, Any],
        interval: int = 0,
        resume: bool = False,
        transform: Any = None,
        model_config: Mapping | None = None,
        config: Mapping | None = None,
    ) -> None:
        if isinstance(interval, bool) or not isinstance(interval, int) or interval < 0:
            raise ValueError(f"checkpoint_interval must be a non-negative integer (0: off), got {interval!r}.")
        # The command line gives `--resume true` as a string; str2bool also refuses anything but a yes/no word.
        resume = resume if isinstance(resume, bool) else str2bool(resume)
        reserved = {"trainer", "rng", "dataloader_generator", "model_config", "config"} & set(objects)
        if reserved:
            raise ValueError(f"objects: names {sorted(reserved)} are reserved for the training state.")
        stateless = [k for k, v in objects.items() if not (hasattr(v, "state_dict") and hasattr(v, "load_state_dict"))]
        for name in stateless:  # e.g. a DistributedSampler: its order is a function of the epoch
            logging.getLogger(__name__).warning(f"objects.{name} has no state_dict(); it is not part of the state.")
        objects = {k: v for k, v in objects.items() if k not in stateless}
        self.path, self.objects, self.interval, self.resume = Path(path), objects, interval, resume
        self.transform, self.model_config, self.config = transform, model_config, config
        self._epoch_generator: torch.Tensor | None = None
        self._saved_at: int | None = None  # the iteration of the last write

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self.started)
        engine.add_event_handler(Events.EPOCH_STARTED, self.epoch_started)

    def epoch_started(self, engine: Engine) -> None:
        """Keep the DataLoader generator as it is before this epoch's iterator draws its worker seed from it."""
        generator = getattr(engine.state.dataloader, "generator", None)
        self._epoch_generator = None if generator is None else generator.get_state()

    def started(self, engine: Engine) -> None:
        if is_main_process():
            for stale in self.path.parent.glob(f".{self.path.name}.*"):  # left by a process killed while writing
                stale.unlink(missing_ok=True)
        if self.resume:
            self.load(engine)
        elif self.path.exists() and self.interval:
            engine.logger.warning(f"{self.path} exists and will be replaced; pass --resume true to continue from it.")
        if self.interval and not engine.has_event_handler(self.save):
            # Registered now, after the handlers attached at initialisation (EMA), so it saves after them.
            engine.add_event_handler(Events.ITERATION_COMPLETED(every=self.interval), self.save)
            engine.add_event_handler(Events.COMPLETED, self.completed)

    def completed(self, engine: Engine) -> None:
        """The final state, unless the last iteration has just written it."""
        if self._saved_at != engine.state.iteration:
            self.save(engine)

    def save(self, engine: Engine) -> None:
        streams = rng_state(self.transform)
        generator = getattr(engine.state.dataloader, "generator", None)
        # Mid-epoch, the resumed run re-creates this epoch's iterator: give it the generator as it was at the start
        # of the epoch, so that it draws the same worker seed and later epochs stay aligned.
        mid_epoch = engine.state.iteration % engine.state.epoch_length != 0
        streams["dataloader_generator"] = (
            None if generator is None else self._epoch_generator if mid_epoch else generator.get_state()
        )
        ranks = [streams]  # every process's own streams (under DDP each rank draws its own noise)
        if idist.get_world_size() > 1:
            ranks = [None] * idist.get_world_size()
            torch.distributed.all_gather_object(ranks, streams)
        self._saved_at = engine.state.iteration
        if not is_main_process():
            return
        content = {"trainer": engine.state_dict()}
        for name, obj in self.objects.items():
            content[name] = unwrap(obj).state_dict()
            if isinstance(obj, ResumableRandomSampler):
                batch_size = getattr(engine.state.dataloader, "batch_size", None) or 1
                content[name]["position"] = (engine.state.iteration % engine.state.epoch_length) * batch_size
        content["rng"] = ranks
        save_checkpoint(self.path, content, self.model_config, self.config)

    def load(self, engine: Engine) -> None:
        """Restore the state written by :meth:`save` into the engine and the objects."""
        state = load_checkpoint(self.path)  # FileNotFoundError / ValueError naming the file
        if self.model_config is not None:
            check_model_config(read_model_config(state, self.path), self.model_config, self.path)
        missing = [k for k in ("trainer", "rng", *self.objects) if k not in state]
        if missing:
            raise ValueError(f"resume: {self.path} is not a training state of this workflow (no {missing}).")
        length = state["trainer"].get("epoch_length")
        if length != engine.state.epoch_length:
            raise ValueError(
                f"resume: {self.path} was written with {length} iterations per epoch, this run has "
                f"{engine.state.epoch_length}; the data set, batch_size or number of processes changed."
            )
        if len(state["rng"]) != idist.get_world_size():
            raise ValueError(
                f"resume: {self.path} was written by {len(state['rng'])} processes, this run has "
                f"{idist.get_world_size()}."
            )
        max_epochs = engine.state.max_epochs
        if state["trainer"]["iteration"] > max_epochs * length:
            raise ValueError(
                f"resume: {self.path} is at iteration {state['trainer']['iteration']}, beyond max_epochs "
                f"{max_epochs} ({max_epochs * length} iterations); raise max_epochs to train on."
            )
        engine.load_state_dict(state["trainer"])
        engine.state.max_epochs = max_epochs  # this run's setting: resuming may extend the training
        for name, obj in self.objects.items():
            unwrap(obj).load_state_dict(state[name])
        streams = state["rng"][idist.get_rank()]
        set_rng_state(streams, self.transform)
        generator = getattr(engine.state.dataloader, "generator", None)
        if generator is not None and streams["dataloader_generator"] is not None:
            generator.set_state(streams["dataloader_generator"])
        engine.logger.info(
            f"resumed from {self.path} at iteration {engine.state.iteration} (epoch {engine.state.epoch}, "
            f"{getattr(engine.state, 'skipped_steps', 0)} non-finite steps skipped so far)."
        )
