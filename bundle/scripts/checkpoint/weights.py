"""Weights into networks: a whole checkpoint (inference, evaluation), earlier stages (progressive training), or a
network built from a checkpoint's own model config (the evaluation's baselines)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from monai.networks.utils import copy_model_state
from torch import nn

from ..networks import CHECKPOINT_RECORDS, LiftedRegressor, XrayToCTCascade, unwrap
from ..physics import ProjectionGeometry
from .files import load_checkpoint
from .model_config import check_model_config, read_model_config

__all__ = ["build_network", "load_earlier_stages", "load_network_weights", "load_regressor", "stage_checkpoint"]

#: What a regressor and the model it serves must agree on, so that the same views mean the same thing to both.
SHARED_WITH_REGRESSOR = ("geometry", "physics", "fov_mm", "hu_window")

#: The model weights of a checkpoint of an earlier layout, the first key present: the shipped 0.2.0 model, the EMA
#: weights (validated and kept), the raw training weights. A checkpoint with none of them is itself the state dict
#: (a training run's ``model.pt``: the EMA weights, with the records beside them).
WEIGHT_KEYS = ("model", "ema", "network")


def stage_checkpoint(ckpt_dir: str | os.PathLike, stage: int) -> Path:
    """Where stage ``stage``'s final weights live: ``ckpt_dir/stage_<stage>/model.pt``."""
    return Path(ckpt_dir) / f"stage_{stage}" / "model.pt"


def _state(checkpoint: Mapping, path, keys: Sequence[str]) -> Mapping:
    key = next((k for k in keys if k in checkpoint), None)
    state = checkpoint[key] if key is not None else {k: v for k, v in checkpoint.items() if k not in CHECKPOINT_RECORDS}
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"checkpoint {path} has no state dict under {list(keys)} and is not one itself.")
    return state


def _mismatch(path, own: Mapping, state: Mapping, prefixes: tuple[str, ...] = ("",)) -> str | None:
    """What keeps ``state`` from filling the ``own`` weights that start with ``prefixes``, or ``None``."""
    wanted = {k: v for k, v in own.items() if k.startswith(prefixes)}
    given = {k: v for k, v in state.items() if k.startswith(prefixes)}
    missing = [k for k in wanted if k not in given]
    unexpected = [k for k in given if k not in wanted]
    shapes = [
        f"{k} {tuple(given[k].shape)} vs {tuple(v.shape)}"
        for k, v in wanted.items()
        if k in given and given[k].shape != v.shape
    ]
    parts = [
        f"{what} {items[:3]}"
        for what, items in (("missing", missing), ("unexpected", unexpected), ("shape (checkpoint vs network)", shapes))
        if items
    ]
    return f"checkpoint {path} does not fit this network: {'; '.join(parts)}." if parts else None


def load_network_weights(
    network: nn.Module, path: str | os.PathLike, model_config: Mapping | None, keys: Sequence[str] = WEIGHT_KEYS
) -> dict:
    """Load a checkpoint's weights into ``network`` strictly, after checking its model config against this run's.

    Args:
        network: the module to fill (a DDP / DataParallel wrapper is unwrapped).
        path: the checkpoint (read ``weights_only``).
        model_config: this run's :func:`~scripts.checkpoint.model_config`; ``None`` skips the check (the weights'
            names and shapes are still checked).
        keys: the state dict to take, the first one present; a checkpoint that is a state dict (``model.pt``) is
            taken whole, its records left out.

    Returns:
        the checkpoint dictionary.

    Raises:
        ValueError: a contradicting setting (:func:`~scripts.checkpoint.check_model_config`), or weights whose names
            or shapes do not fit, naming the file and the first mismatches.
    """
    checkpoint = load_checkpoint(path)
    if model_config is not None:
        check_model_config(read_model_config(checkpoint, path), model_config, path)
    state = _state(checkpoint, path, keys)
    module = unwrap(network)
    problem = _mismatch(path, module.state_dict(), state)
    if problem:
        raise ValueError(problem)
    module.load_state_dict(state, strict=True)
    return checkpoint


def load_earlier_stages(
    network: XrayToCTCascade, ckpt_dir: str | os.PathLike, stage: int, model_config: Mapping | None = None
) -> None:
    """Load the encoder and stages ``< stage`` from stage ``stage − 1``'s checkpoint (EMA weights); for joint
    fine-tuning (``stage = -1``) everything from the last stage's checkpoint.

    Args:
        network: the network being trained.
        ckpt_dir: the folder of the per-stage checkpoints.
        stage: the stage about to be trained (``-1``: joint fine-tuning).
        model_config: this run's model config; a checkpoint trained with other settings is refused by name.

    Raises:
        ValueError: naming ``ckpt_dir`` and the missing file, the contradicting setting, or the weights that do not fit.
    """
    if stage == 0:
        return
    source = network.num_stages - 1 if stage == -1 else stage - 1  # joint fine-tuning starts from the whole cascade
    path = stage_checkpoint(ckpt_dir, source)
    if not path.is_file():
        what = "joint fine-tuning needs the trained cascade" if stage == -1 else f"training stage {stage} needs"
        raise ValueError(f"ckpt_dir: {what} the trained stage {source} at {path}; train it first (--stage {source}).")
    checkpoint = load_checkpoint(path)
    if model_config is not None:
        check_model_config(read_model_config(checkpoint, path), model_config, path)
    state = _state(checkpoint, path, ("ema", "network", "model"))
    keep = ("encoder.",) + tuple(f"stages.{i}." for i in range(stage if stage > 0 else network.num_stages))
    problem = _mismatch(path, network.state_dict(), state, keep)
    if problem:
        raise ValueError(f"ckpt_dir: {problem[:-1]} (its earlier stages).")
    copy_model_state(network, {k: v for k, v in state.items() if k.startswith(keep)}, inplace=True)


def build_network(model_config: Mapping, gradient_checkpointing: bool = False) -> nn.Module:
    """The untrained network a model config describes (the constructor arguments are the record's)."""
    classes = {"XrayToCTCascade": XrayToCTCascade, "LiftedRegressor": LiftedRegressor}
    return classes[model_config["network"]](
        geometry=ProjectionGeometry(**model_config["geometry"]),
        fov_mm=model_config["fov_mm"],
        stages=model_config["stages"],
        encoder=model_config["encoder"],
        use_depth_lifting=model_config["use_depth_lifting"],
        gradient_checkpointing=gradient_checkpointing,
    )


def load_regressor(path: str | os.PathLike, record: Mapping, model_config: Mapping | None = None) -> nn.Module:
    """The network of regression checkpoint ``path`` (``record``: its model config, already read), built and loaded
    with ``weights_only``; ``model_config``: the model it serves, whose geometry, physics, field of view and HU
    window it must share (else refused naming the key and the file; ``None``: not checked)."""
    if model_config is not None:
        shared = SHARED_WITH_REGRESSOR
        check_model_config({k: record[k] for k in shared}, {k: model_config[k] for k in shared}, path)
    network = build_network(record)
    load_network_weights(network, path, None)
    return network
