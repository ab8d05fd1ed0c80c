"""Small pieces the training workflow's YAML calls: batches per stage, earlier-stage loading, run records."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

import torch

from ..data import prepare_dataset
from ..networks import XrayToCTCascade
from ..utils import atomic_write

__all__ = ["StageBatch", "ensure_dataset", "load_earlier_stages", "stage_checkpoint", "write_run_config"]


def stage_checkpoint(ckpt_dir: str | os.PathLike, stage: int) -> Path:
    """Where stage ``stage``'s final weights live: ``ckpt_dir/stage_<stage>/model.pt``."""
    return Path(ckpt_dir) / f"stage_{stage}" / "model.pt"


class StageBatch:
    """``prepare_batch`` for an evaluator of one stage: X-rays in, the stage's CT out, the previous stage's ground
    truth (on its own grid) as the sampler's conditioning, and the view mask when the batch has one."""

    def __init__(self, network: XrayToCTCascade, stage: int) -> None:
        net = network.module if hasattr(network, "module") else network
        self.image_key = f"image_{net.grid_size(stage)[0]}"
        self.previous_key = f"image_{net.grid_size(stage - 1)[0]}" if stage > 0 else None

    def __call__(self, batch: Mapping, device=None, non_blocking: bool = False, **kwargs) -> tuple:
        def to(x):
            return None if x is None else torch.as_tensor(x).to(device=device, non_blocking=non_blocking)

        if self.image_key not in batch:
            raise ValueError(f"batch has no {self.image_key!r} (set stage_sizes to the stage grids).")
        extra = {"view_mask": to(batch.get("xray_mask"))}
        if self.previous_key is not None:
            extra["previous"] = to(batch[self.previous_key])
        return to(batch["xray"]), to(batch[self.image_key]), (), extra


def ensure_dataset(dataset_dir: str | os.PathLike, **prepare_kwargs) -> Path:
    """Return ``dataset_dir/datalist.json``, running the prepare workflow first when it does not exist."""
    datalist = Path(dataset_dir) / "datalist.json"
    if not datalist.exists():
        prepare_dataset(dataset_dir, **prepare_kwargs)
    return datalist


def load_earlier_stages(network: XrayToCTCascade, ckpt_dir: str | os.PathLike, stage: int) -> None:
    """Load the encoder and stages ``< stage`` from stage ``stage − 1``'s checkpoint (EMA weights, ``weights_only``).

    Raises:
        ValueError: naming ``ckpt_dir`` and the missing file, or the stage whose weights do not fit.
    """
    if stage <= 0:
        return
    path = stage_checkpoint(ckpt_dir, stage - 1)
    if not path.is_file():
        raise ValueError(
            f"ckpt_dir: training stage {stage} needs the trained stage {stage - 1} at {path}; train it first "
            f"(--stage {stage - 1})."
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("ema", state.get("network", state))  # the EMA weights are the ones validated and kept
    keep = ("encoder.",) + tuple(f"stages.{i}." for i in range(stage))
    subset = {k: v for k, v in state.items() if k.startswith(keep)}
    own = network.state_dict()
    bad = [k for k, v in subset.items() if k not in own or own[k].shape != v.shape]
    if bad or not subset:
        raise ValueError(
            f"ckpt_dir: {path} does not match this network's earlier stages (first mismatches: {bad[:3]})."
        )
    network.load_state_dict(subset, strict=False)


def write_run_config(path: str | os.PathLike, config: Mapping) -> None:
    """Record what produced a checkpoint next to it (JSON, atomic)."""
    atomic_write(Path(path), lambda p: Path(p).write_text(json.dumps(config, indent=2, default=str)), overwrite=True)
