"""What the trainer, the samplers and the checkpoint loaders use of a network: :class:`CascadeLike`."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

__all__ = ["CHECKPOINT_RECORDS", "CascadeLike", "check_stage", "is_cascade_like", "skip_checkpoint_records", "unwrap"]

#: The plain (non-tensor) entries a weights file of this bundle holds beside the network's state dict: what the
#: weights mean and how they were trained (:mod:`scripts.checkpoint.files`).
CHECKPOINT_RECORDS = ("model_config", "config")


@runtime_checkable
class CascadeLike(Protocol):
    """A network trainable and sampleable like :class:`~scripts.networks.XrayToCTCascade`.

    A shared X-ray encoder and an ordered list of stages, each on its own grid; ``forward(x_t, t, xray, stage=,
    previous=, view_mask=, encoding=)`` returns the stage's prediction ``(B, 1, X, Y, Z)``. The cascade and the
    regression baselines (:class:`~scripts.networks.LiftedRegressor`) both are.
    """

    encoder: nn.Module
    stages: nn.ModuleList
    stage_configs: list[dict]

    @property
    def num_stages(self) -> int: ...

    def grid_size(self, stage: int) -> tuple[int, int, int]: ...

    def encode(self, xray: torch.Tensor, view_mask: torch.Tensor | None = None) -> Any: ...


#: The members of :class:`CascadeLike`.
_MEMBERS = ("encoder", "stages", "stage_configs", "num_stages", "grid_size", "encode")


def is_cascade_like(network: object) -> bool:
    """Whether ``network`` has every member of :class:`CascadeLike`, looked up as an attribute access finds it.

    ``isinstance(network, CascadeLike)`` is not that test from Python 3.12 on: runtime protocols look members up
    statically (``inspect.getattr_static``), and an ``nn.Module``'s submodules (``encoder``, ``stages``) live in its
    ``_modules`` and are found by ``__getattr__`` only, so every cascade would be refused.
    """
    return all(hasattr(network, name) for name in _MEMBERS)


def unwrap(network: nn.Module) -> nn.Module:
    """The module inside a ``DistributedDataParallel`` / ``DataParallel`` wrapper (the network itself otherwise)."""
    wrappers = (nn.DataParallel, nn.parallel.DistributedDataParallel)
    return network.module if isinstance(network, wrappers) else network


def check_stage(num_stages: int, stage: int, joint: bool = False) -> int:
    """``stage`` as an int, or a ``ValueError`` naming the allowed range (``-1`` too when ``joint``: all stages)."""
    low = -1 if joint else 0
    if isinstance(stage, bool) or not isinstance(stage, int) or not low <= stage < num_stages:
        allowed = f"-1 (joint) or in [0, {num_stages - 1}]" if joint else f"in [0, {num_stages - 1}]"
        raise ValueError(f"stage must be {allowed}, got {stage!r}.")
    return stage


def skip_checkpoint_records(module: nn.Module, state_dict: dict, prefix: str, *args: Any) -> None:
    """``load_state_dict`` pre-hook: drop the :data:`CHECKPOINT_RECORDS` beside the weights.

    A weights file (``model.pt``) is the network's state dict plus those two small records, so that the file alone
    says what its weights mean; with this hook ``network.load_state_dict(torch.load(path, weights_only=True))``
    loads it strictly, as any MONAI bundle's ``model.pt``. The records are checked by
    :func:`scripts.checkpoint.load_network_weights`, which knows the run's settings; the network does not.
    """
    for key in CHECKPOINT_RECORDS:
        state_dict.pop(prefix + key, None)  # load_state_dict works on its own copy of the caller's dict
