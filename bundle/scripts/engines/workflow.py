"""Small pieces the training workflow's YAML calls: batches per stage, DRR-consistency metric pairs and previews."""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch

from ..networks import XrayToCTCascade, unwrap
from ..physics import ct_scale_to_hu

__all__ = ["DRRPreviewHandler", "StageBatch", "drr_error_pairs"]


class StageBatch:
    """``prepare_batch`` for an evaluator of one stage: X-rays in, the stage's CT out, the previous stage's ground
    truth (on its own grid) as the sampler's conditioning, and the view mask when the batch has one."""

    def __init__(self, network: XrayToCTCascade, stage: int) -> None:
        net = unwrap(network)
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


def drr_error_pairs(composer, hu_window, fov_mm: float):
    """``output_transform`` for a metric of DRR consistency: (DRR of each sampled CT, its input views).

    Both on the X-ray network scale; the sampled CT (CT scale) is mapped to HU and rendered at its grid's spacing.
    """

    def transform(outputs):
        outputs = outputs if isinstance(outputs, list) else [outputs]
        drrs, views = [], []
        for out in outputs:
            pred = torch.as_tensor(out["pred"]).float()  # (1, X, Y, Z)
            hu = ct_scale_to_hu(pred, hu_window)
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
