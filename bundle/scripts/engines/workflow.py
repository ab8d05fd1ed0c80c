"""Small pieces the training workflow's YAML calls: batches per stage, earlier-stage loading, run records."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

import torch

from ..checkpoint import check_preset, load_checkpoint
from ..data import prepare_dataset
from ..networks import XrayToCTCascade
from ..utils import atomic_write

__all__ = [
    "DRRPreviewHandler",
    "StageBatch",
    "drr_error_pairs",
    "ensure_dataset",
    "load_earlier_stages",
    "stage_checkpoint",
    "write_run_config",
]


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
    """Return ``dataset_dir/datalist.json``, running the prepare workflow first when it does not exist.

    Raises:
        ValueError: the datalist is unreadable or has no training or no validation cases.
    """
    datalist = Path(dataset_dir) / "datalist.json"
    if not datalist.exists():
        prepare_dataset(dataset_dir, **prepare_kwargs)
    try:
        content = json.loads(datalist.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"dataset_dir: {datalist} is not a readable datalist ({err}).") from None
    for key in ("training", "validation"):
        if not content.get(key):
            raise ValueError(
                f"dataset_dir: {datalist} has no {key!r} cases; training needs both (prepare at least 2 cases)."
            )
    return datalist


def load_earlier_stages(
    network: XrayToCTCascade, ckpt_dir: str | os.PathLike, stage: int, preset: Mapping | None = None
) -> None:
    """Load the encoder and stages ``< stage`` from stage ``stage − 1``'s checkpoint (EMA weights, ``weights_only``);
    for joint fine-tuning (``stage = -1``) everything from the last stage's checkpoint.

    Args:
        network: the cascade being trained.
        ckpt_dir: the folder of the per-stage checkpoints.
        stage: the stage about to be trained (``-1``: joint fine-tuning).
        preset: this config's :func:`scripts.checkpoint.preset_record`; a checkpoint trained with another preset is
            refused (``None``: shapes are still checked).

    Raises:
        ValueError: naming ``ckpt_dir`` and the missing file, the other preset, or the stage whose weights do not fit.
    """
    if stage == 0:
        return
    last = network.num_stages - 1
    source = last if stage == -1 else stage - 1  # joint fine-tuning starts from the fully trained cascade
    path = stage_checkpoint(ckpt_dir, source)
    if not path.is_file():
        what = "joint fine-tuning needs the trained cascade" if stage == -1 else f"training stage {stage} needs"
        raise ValueError(f"ckpt_dir: {what} the trained stage {source} at {path}; train it first (--stage {source}).")
    checkpoint = load_checkpoint(path)
    if preset is not None:
        check_preset(checkpoint.get("preset"), preset, path)
    state = checkpoint.get("ema", checkpoint.get("network", checkpoint))  # the EMA weights: validated and kept
    keep = ("encoder.",) + tuple(f"stages.{i}." for i in range(stage if stage > 0 else network.num_stages))
    subset = {k: v for k, v in state.items() if k.startswith(keep)}
    own = network.state_dict()
    bad = [k for k, v in subset.items() if k not in own or own[k].shape != v.shape]
    bad += [k for k in own if k.startswith(keep) and k not in subset]  # every expected weight must be there
    if bad or not subset:
        raise ValueError(
            f"ckpt_dir: {path} does not match this network's earlier stages (first mismatches: {bad[:3]})."
        )
    network.load_state_dict(subset, strict=False)


def write_run_config(path: str | os.PathLike, config: Mapping) -> None:
    """Record what produced a checkpoint next to it (JSON, atomic)."""
    atomic_write(Path(path), lambda p: Path(p).write_text(json.dumps(config, indent=2, default=str)), overwrite=True)


def drr_error_pairs(composer, hu_window, fov_mm: float):
    """``output_transform`` for a metric of DRR consistency: (DRR of each sampled CT, its input views).

    Both on the X-ray network scale; the sampled CT (CT scale) is mapped to HU and rendered at its grid's spacing.
    """
    low, high = float(hu_window[0]), float(hu_window[1])

    def transform(outputs):
        outputs = outputs if isinstance(outputs, list) else [outputs]
        drrs, views = [], []
        for out in outputs:
            pred = torch.as_tensor(out["pred"]).float()  # (1, X, Y, Z)
            hu = (pred + 1.0) * (0.5 * (high - low)) + low
            spacing = [fov_mm / n for n in pred.shape[1:]]
            with torch.no_grad():
                drrs.append(composer(hu[None].cpu(), spacing)[0])  # (V, H, W)
            views.append(torch.as_tensor(out["image"]).float().cpu())
        return drrs, views

    return transform


class DRRPreviewHandler:
    """After each validation, log the first case's input views beside the DRRs of its sample to TensorBoard.

    The same comparison the physics loss makes, as images (X-ray network scale mapped to [0, 1] for display).
    """

    def __init__(self, composer, hu_window, fov_mm: float, log_dir: str | os.PathLike) -> None:
        self.pairs = drr_error_pairs(composer, hu_window, fov_mm)
        self.log_dir = str(log_dir)
        self._writer = None

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine) -> None:
        from torch.utils.tensorboard import SummaryWriter

        output = engine.state.output
        if not output:
            return
        drrs, views = self.pairs(output[:1] if isinstance(output, list) else output)
        if self._writer is None:
            self._writer = SummaryWriter(log_dir=self.log_dir)
        image = torch.cat([views[0], drrs[0]], dim=-1)  # (V, H, 2W): input | DRR of the sample
        step = engine.state.epoch
        for v in range(image.shape[0]):
            self._writer.add_image(f"drr_vs_input_view{v}", ((image[v : v + 1] + 1.0) / 2.0).clamp(0, 1), step)
        self._writer.flush()
