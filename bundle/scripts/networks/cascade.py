"""The cascade: one shared X-ray encoder and an ordered set of stages (depth lifting + denoiser), coarse to fine."""

from __future__ import annotations

import copy
import functools
import numbers
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..physics import ProjectionGeometry
from .blocks import ATTENTION_MODES
from .denoiser import HybridViT3D
from .encoder import XrayEncoder, XrayEncoding
from .interface import check_stage, skip_checkpoint_records
from .lifting import DepthLifting

__all__ = ["STAGE_KEYS", "CascadeStage", "XrayToCTCascade", "resample_previous"]

#: Keys a stage entry of the presets may set (``grid_size``, ``patch_size``, ``width``, ``depth``, ``heads`` are
#: required).
STAGE_KEYS = {
    "grid_size": None,
    "patch_size": None,
    "width": None,
    "depth": None,
    "heads": None,
    "fov_mm": None,
    "mlp_ratio": 4.0,
    "attention": "global",
    "window_size": 8,
    "lift_channels": 8,
}


def _triple(index: int, key: str, value, integer: bool) -> tuple:
    """Three positive numbers from a number or a length-3 list, or a ValueError naming the stage and key."""
    kind = numbers.Integral if integer else numbers.Real
    values = [value] * 3 if isinstance(value, numbers.Real) and not isinstance(value, bool) else value
    ok = isinstance(values, Sequence) and not isinstance(values, str) and len(values) == 3
    ok = ok and all(isinstance(v, kind) and not isinstance(v, bool) and v > 0 for v in values)
    if not ok:
        what = "positive integer" if integer else "positive number"
        raise ValueError(f"stages[{index}].{key} must be a {what} or three of them, got {value!r}.")
    return tuple(int(v) if integer else float(v) for v in values)


def _stage_config(index: int, entry: Mapping, fov_mm: float, lifting: bool) -> dict:
    """Fill defaults and check every setting, naming the stage and key, before anything is built."""
    if not isinstance(entry, Mapping):
        raise ValueError(f"stages[{index}] must be a mapping of stage settings, got {entry!r}.")
    unknown = sorted(set(entry) - set(STAGE_KEYS))
    if unknown:
        raise ValueError(f"stages[{index}]: unknown keys {unknown}; allowed: {sorted(STAGE_KEYS)}.")
    cfg = {k: entry.get(k, default) for k, default in STAGE_KEYS.items()}
    missing = [k for k, v in cfg.items() if v is None and k != "fov_mm"]
    if missing:
        raise ValueError(f"stages[{index}]: missing required keys {missing}.")
    cfg["grid_size"] = _triple(index, "grid_size", cfg["grid_size"], integer=True)
    cfg["patch_size"] = _triple(index, "patch_size", cfg["patch_size"], integer=True)
    cfg["fov_mm"] = _triple(index, "fov_mm", fov_mm if cfg["fov_mm"] is None else cfg["fov_mm"], integer=False)
    cfg["window_size"] = _triple(index, "window_size", cfg["window_size"], integer=True)
    if any(g % p for g, p in zip(cfg["grid_size"], cfg["patch_size"], strict=True)):
        raise ValueError(
            f"stages[{index}]: grid_size {cfg['grid_size']} must be divisible by patch_size {cfg['patch_size']}."
        )
    for key in ("width", "depth", "heads") + (("lift_channels",) if lifting else ()):
        if isinstance(cfg[key], bool) or not isinstance(cfg[key], numbers.Integral) or cfg[key] < 1:
            raise ValueError(f"stages[{index}].{key} must be a positive integer, got {cfg[key]!r}.")
    if cfg["width"] % cfg["heads"]:
        raise ValueError(f"stages[{index}]: heads ({cfg['heads']}) must divide width ({cfg['width']}).")
    if cfg["attention"] not in ATTENTION_MODES:
        raise ValueError(
            f"stages[{index}]: attention must be one of {list(ATTENTION_MODES)}, got {cfg['attention']!r}."
        )
    if not isinstance(cfg["mlp_ratio"], numbers.Real) or cfg["mlp_ratio"] <= 0:
        raise ValueError(f"stages[{index}].mlp_ratio must be a positive number, got {cfg['mlp_ratio']!r}.")
    return cfg


def resample_previous(
    previous: torch.Tensor, previous_fov_mm: Sequence[float], fov_mm: Sequence[float], size: Sequence[int]
) -> torch.Tensor:
    """Place the previous stage's volume on this stage's grid by physical position (both centred on the isocentre).

    Equal fields of view reduce to trilinear resizing; a larger field of view (stage 4: 377.5 mm along z against
    320 mm) extends the previous volume by its border values instead of stretching it.
    """
    if tuple(previous_fov_mm) == tuple(fov_mm):
        return F.interpolate(previous, size=tuple(size), mode="trilinear", align_corners=False)
    axes = [
        (torch.arange(n, dtype=torch.float32, device=previous.device) - (n - 1) / 2.0) * (f / n) / (pf / 2.0)
        for n, f, pf in zip(size, fov_mm, previous_fov_mm, strict=True)
    ]  # normalised coordinates of this grid's voxel centres in the previous volume (align_corners=False)
    gx, gy, gz = torch.meshgrid(*axes, indexing="ij")
    grid = torch.stack([gz, gy, gx], dim=-1)[None].expand(previous.shape[0], -1, -1, -1, -1)  # grid_sample: (z, y, x)
    return F.grid_sample(previous, grid.to(previous.dtype), mode="bilinear", padding_mode="border", align_corners=False)


def _keep_cascade_entries(module, state_dict, prefix, *args, cascade_prefix: str) -> None:
    """``load_state_dict`` pre-hook: a cascade state dict keeps its ``cascade_prefix`` entries, renamed."""
    if prefix or not any(key.startswith(cascade_prefix) for key in state_dict):
        return  # loaded inside another module, or already the module's own keys
    for key in list(state_dict):
        value = state_dict.pop(key)
        if key.startswith(cascade_prefix):
            state_dict[key[len(cascade_prefix) :]] = value


class XrayToCTCascade(nn.Module):
    """X-rays -> CT, coarse to fine. This module is ``network_def`` in ``configs/inference.yaml``.

    Stage ``s`` sees ``[x_t, lifted prior, upsampled stage s−1 volume]`` (the previous volume only for ``s > 0``)
    and predicts ``v`` (or ε) on its grid. All stages share one X-ray encoder, so one encoding serves the whole
    cascade at sampling time (:meth:`encode` once, then :meth:`forward` with ``encoding=``); likewise the lifted
    prior and the resampled previous volume serve every step of a stage (:meth:`stage_conditioning` once per stage,
    then :meth:`forward` with ``conditioning=``).

    Args:
        geometry: the projection geometry (the renderer's); its views and detector shape fix the encoder input.
        fov_mm: the field of view of every stage grid (mm), unless a stage sets its own ``fov_mm``.
        stages: ordered stage settings (see :data:`STAGE_KEYS`), e.g. from ``configs/stages/*.yaml``.
        encoder: XrayEncoder keyword arguments (views and image size come from the geometry).
        use_depth_lifting: build the geometry-consistent lifting (False: the stages see no lifted prior).
        gradient_checkpointing: recompute denoiser blocks in the backward pass.
    """

    def __init__(
        self,
        geometry: ProjectionGeometry,
        fov_mm: float,
        stages: Sequence[Mapping],
        encoder: Mapping | None = None,
        use_depth_lifting: bool = True,
        gradient_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(geometry, ProjectionGeometry):
            raise ValueError(f"geometry must be a ProjectionGeometry, got {type(geometry).__name__}.")
        if not isinstance(fov_mm, numbers.Real) or not fov_mm > 0:
            raise ValueError(f"fov_mm must be a positive length in mm, got {fov_mm!r}.")
        if not stages:
            raise ValueError("stages must list at least one stage.")
        configs = [_stage_config(i, entry, float(fov_mm), bool(use_depth_lifting)) for i, entry in enumerate(stages)]
        encoder_kwargs = dict(encoder or {})
        for key in ("num_views", "image_size"):
            if key in encoder_kwargs:
                raise ValueError(f"encoder.{key} comes from the geometry; remove it from the encoder settings.")
        self.encoder = XrayEncoder(num_views=geometry.num_views, image_size=geometry.detector_shape, **encoder_kwargs)
        self.use_depth_lifting = bool(use_depth_lifting)
        self.stage_configs = configs
        self.stages = nn.ModuleList()
        for i, cfg in enumerate(configs):
            prev = 1 if i > 0 else 0
            lift = cfg["lift_channels"] if self.use_depth_lifting else 0
            modules = nn.ModuleDict()
            if self.use_depth_lifting:
                modules["lifting"] = DepthLifting(
                    geometry,
                    cfg["grid_size"],
                    cfg["fov_mm"],
                    self.encoder.feature_channels,
                    lift,
                    prev,
                    feature_stride=self.encoder.feature_stride,
                )
            modules["denoiser"] = HybridViT3D(
                in_channels=1 + lift + prev,
                out_channels=1,
                grid_size=cfg["grid_size"],
                patch_size=cfg["patch_size"],
                width=cfg["width"],
                depth=cfg["depth"],
                heads=cfg["heads"],
                context_dim=self.encoder.dim,
                global_dim=self.encoder.global_dim,
                mlp_ratio=cfg["mlp_ratio"],
                attention=cfg["attention"],
                window_size=cfg["window_size"],
                gradient_checkpointing=gradient_checkpointing,
            )
            self.stages.append(modules)
        self.register_load_state_dict_pre_hook(skip_checkpoint_records)  # model.pt's records beside the weights

    @property
    def num_stages(self) -> int:
        return len(self.stages)

    def grid_size(self, stage: int) -> tuple[int, int, int]:
        return self.stages[stage]["denoiser"].grid_size

    def standalone_denoiser(self, stage: int) -> HybridViT3D:
        """A copy of stage ``stage``'s denoiser that loads its weights from a state dict of the whole cascade.

        For TorchScript export with ``python -m monai.bundle ckpt_export``, which loads the checkpoint (a training
        run's ``model.pt`` as it is; the shipped ``models/model.pt`` with ``--key_in_ckpt model``) strictly into the
        module it exports: the copy's ``load_state_dict`` keeps the ``stages.<stage>.denoiser.*`` entries of a
        cascade state dict (renamed) and drops the rest; its own state dicts load as usual. The denoiser scripts
        (``torch.jit.script``); the encoder and the depth lifting that produce its inputs stay in Python
        (``stage<s>_denoiser_data_format`` in ``configs/metadata.json``).
        """
        check_stage(self.num_stages, stage)
        denoiser = copy.deepcopy(self.stages[stage]["denoiser"])
        hook = functools.partial(_keep_cascade_entries, cascade_prefix=f"stages.{stage}.denoiser.")
        denoiser.register_load_state_dict_pre_hook(hook)
        return denoiser

    def stage_network(self, stage: int) -> CascadeStage:
        """Stage ``stage`` of this cascade as a module of tensor inputs only (:class:`CascadeStage`), for
        ``torch.jit.trace``; it shares this cascade's modules and weights."""
        return CascadeStage(self, stage)

    def encode(self, xray: torch.Tensor, view_mask: torch.Tensor | None = None) -> XrayEncoding:
        """``xray (B, V, H, W)`` network-scale views -> the shared encoding."""
        return self.encoder(xray, view_mask)

    def stage_conditioning(
        self, stage: int, encoding: XrayEncoding, previous: torch.Tensor | None = None
    ) -> list[torch.Tensor]:
        """Stage ``stage``'s input channels besides ``x_t``, in input order: ``[lifted prior, previous volume]``.

        They depend on the X-rays and the previous stage only, not on ``x_t`` or ``t``, so a sampler computes them
        once per stage and passes them to every step's :meth:`forward` (``conditioning=``); the result is the same
        as recomputing them in each step.

        Args:
            stage: stage index.
            encoding: the :meth:`encode` result.
            previous: ``(B, 1, X', Y', Z')`` the previous stage's volume (required for ``stage > 0``).

        Returns:
            ``(B, C_l, X, Y, Z)`` lifted prior (with depth lifting) and ``(B, 1, X, Y, Z)`` previous volume on this
            stage's grid (``stage > 0``); an empty list for a first stage without lifting.
        """
        check_stage(self.num_stages, stage)
        grid = self.stage_configs[stage]["grid_size"]
        if stage > 0:
            if previous is None:
                raise ValueError(f"previous: stage {stage} needs the previous stage's volume, got None.")
            previous = resample_previous(
                previous, self.stage_configs[stage - 1]["fov_mm"], self.stage_configs[stage]["fov_mm"], grid
            )  # (B, 1, X, Y, Z)
        channels = []
        if self.use_depth_lifting:
            channels.append(self.stages[stage]["lifting"](encoding, previous))  # (B, C_l, X, Y, Z)
        if stage > 0:
            channels.append(previous)
        return channels

    def forward(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        xray: torch.Tensor | None = None,
        stage: int = 0,
        previous: torch.Tensor | None = None,
        view_mask: torch.Tensor | None = None,
        encoding: XrayEncoding | None = None,
        conditioning: Sequence[torch.Tensor] | None = None,
        null_condition: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """One stage's prediction.

        Args:
            x_t: ``(B, 1, X, Y, Z)`` noisy volume on the stage grid.
            t: ``(B,)`` timesteps.
            xray: ``(B, V, H, W)`` views (or pass ``encoding``).
            stage: stage index.
            previous: ``(B, 1, X', Y', Z')`` the previous stage's volume (required for ``stage > 0``).
            view_mask: ``(B, V)`` present views.
            encoding: a precomputed :meth:`encode` result.
            conditioning: a precomputed :meth:`stage_conditioning` result for this stage and ``encoding`` (then
                ``previous`` is not used).
            null_condition: ``(B,)`` bool, True where the X-rays are dropped (:meth:`XrayEncoding.without_xrays`):
                the condition dropout of classifier-free guidance in training.

        Returns:
            ``(B, 1, X, Y, Z)`` the prediction (v or ε, as trained).
        """
        check_stage(self.num_stages, stage)
        grid = self.stage_configs[stage]["grid_size"]
        if x_t.dim() != 5 or x_t.shape[1] != 1 or tuple(x_t.shape[2:]) != grid:
            raise ValueError(
                f"x_t must be (B, 1, {grid[0]}, {grid[1]}, {grid[2]}) for stage {stage}, got {tuple(x_t.shape)}."
            )
        if t.dim() != 1 or t.shape[0] != x_t.shape[0]:
            raise ValueError(f"t must be one timestep per sample, shape ({x_t.shape[0]},), got {tuple(t.shape)}.")
        if encoding is None:
            if xray is None:
                raise ValueError("xray or encoding must be given.")
            encoding = self.encode(xray, view_mask)
        if null_condition is not None:
            if conditioning is not None:
                raise ValueError("null_condition and a precomputed conditioning cannot be combined.")
            encoding = encoding.without_xrays(null_condition)
        if conditioning is None:
            conditioning = self.stage_conditioning(stage, encoding, previous)
        return self.stages[stage]["denoiser"](
            torch.cat([x_t, *conditioning], dim=1), t, encoding.tokens, encoding.global_embedding, encoding.token_mask
        )


class CascadeStage(nn.Module):
    """One stage of a cascade with tensor inputs only: ``forward(x_t, t, xray, view_mask=None, previous=None)``.

    ``torch.jit.trace`` records tensors only, so the cascade's ``stage`` argument is fixed here; the trace holds that
    stage's whole step (X-ray encoder, depth lifting, denoiser) as one TorchScript graph, and the sampling loop calls
    it once per step. Trace it with its weights loaded (the trace keeps the lifting's geometry buffers, which
    checkpoints do not hold), e.g. with MONAI's ``convert_to_torchscript(stage, inputs=[x_t, t, xray, view_mask(,
    previous)], use_trace=True)``. ``torch.jit.script`` of the cascade fails: :class:`~scripts.networks.XrayEncoding`
    is a dataclass, the checks format messages with ``!r``, and ``forward`` indexes ``stages`` with a run-time
    ``stage``.

    The module registers the cascade's own ``encoder`` and ``stages`` under the same names, so a state dict of the
    cascade (e.g. ``models/model.pt``, key ``model``) loads into it strictly, and into the cascade at once.

    Args:
        cascade: the cascade whose modules are shared.
        stage: the stage index.
    """

    def __init__(self, cascade: XrayToCTCascade, stage: int) -> None:
        super().__init__()
        self.stage = check_stage(cascade.num_stages, stage)
        self.encoder, self.stages = cascade.encoder, cascade.stages  # the cascade's state-dict names
        self._cascade = (cascade,)  # in a tuple: not a second registration of the same modules

    def forward(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        xray: torch.Tensor,
        view_mask: torch.Tensor | None = None,
        previous: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``XrayToCTCascade.forward`` of this stage: ``(B, 1, X, Y, Z)`` prediction (shapes there)."""
        return self._cascade[0](x_t, t, xray, stage=self.stage, previous=previous, view_mask=view_mask)
