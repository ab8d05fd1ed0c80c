"""What the trainer, the samplers and the checkpoint loaders use of a network: :class:`CascadeLike`."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

__all__ = ["CascadeLike", "check_stage", "unwrap"]


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
