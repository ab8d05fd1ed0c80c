"""HybridViT3D: the per-stage denoiser (3D patch tokens, adaLN-Zero DiT blocks with cross-attention to X-rays)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .blocks import ATTENTION_MODES, DiTBlock, FinalLayer, TimestepEmbedder

__all__ = ["HybridViT3D"]


def _triple(value: int | Sequence[int], name: str) -> tuple[int, int, int]:
    out = (int(value),) * 3 if isinstance(value, int) else tuple(int(v) for v in value)
    if len(out) != 3 or min(out) < 1:
        raise ValueError(f"{name} must be a positive int or three positive ints, got {value!r}.")
    return out


class HybridViT3D(nn.Module):
    """Predict ``v`` (or ε) for a noisy CT volume, conditioned on X-ray tokens, a global embedding and priors.

    ``(B, C_in, X, Y, Z)`` -> patch embedding (``patch_size``) + learned 3D position embedding (kept on at most
    32 tokens per axis and resized by trilinear interpolation to the token grid) -> ``depth`` DiT blocks
    (self-attention, cross-attention to the X-ray tokens, MLP; adaLN-Zero from timestep + global embedding) ->
    adaLN final layer -> unpatchify -> ``(B, C_out, X, Y, Z)``, plus a per-voxel skip: a 1×1×1 linear map of the
    input gated per channel by the conditioning (timestep + global embedding). The skip exists because a token
    carries ``p³`` voxels through ``width`` numbers: once ``p³ > width`` (patch 8 = 512 voxels) the patch path
    cannot pass per-voxel noise through, yet v and ε targets are ``c₁(t)·x_t + c₂(t)·x0``; the gated skip carries
    the ``x_t`` term at every voxel and the tokens predict the smooth part. At init every block is the identity and
    the output (gates zero) is 0. Global self-attention costs ``O(T²)`` in the token count ``T``: keep the token
    grid near 32³ or use ``attention="window"`` (shifted 3D windows of ``window_size`` tokens, alternating with
    unshifted ones; a token grid the window does not divide is padded with zero tokens).

    Args:
        in_channels: noisy volume + lifted prior (+ previous stage) channels.
        out_channels: predicted channels (1).
        grid_size: the stage grid ``(X, Y, Z)`` in voxels.
        patch_size: voxels per token edge (1 = voxel tokens, for small grids).
        width, depth, heads, mlp_ratio: transformer size.
        context_dim: width of the X-ray tokens; global_dim: of the global X-ray embedding.
        attention: ``"global"`` or ``"window"``; window_size: tokens per window edge.
        gradient_checkpointing: recompute blocks in the backward pass (memory for time) when training.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        grid_size: int | Sequence[int],
        patch_size: int | Sequence[int],
        width: int,
        depth: int,
        heads: int,
        context_dim: int,
        global_dim: int,
        mlp_ratio: float = 4.0,
        attention: str = "global",
        window_size: int | Sequence[int] = 8,
        gradient_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        # Every configuration error is raised here, before any layer is built.
        grid, patch = _triple(grid_size, "grid_size"), _triple(patch_size, "patch_size")
        if any(g % p for g, p in zip(grid, patch, strict=True)):
            raise ValueError(f"grid_size {grid} must be divisible by patch_size {patch}.")
        if width < 1 or depth < 1 or heads < 1 or width % heads:
            raise ValueError(f"heads ({heads}) must divide width ({width}); width, depth and heads must be positive.")
        if attention not in ATTENTION_MODES:
            raise ValueError(f"attention must be one of {list(ATTENTION_MODES)}, got {attention!r}.")
        tokens = tuple(g // p for g, p in zip(grid, patch, strict=True))
        window = _triple(window_size, "window_size") if attention == "window" else None
        self.grid_size, self.patch_size, self.token_grid = grid, patch, tokens
        self.in_channels, self.out_channels, self.width = in_channels, out_channels, width
        self.gradient_checkpointing = bool(gradient_checkpointing)

        self.patch_embed = nn.Conv3d(in_channels, width, kernel_size=patch, stride=patch)
        # Learned on at most 32 tokens per axis and resized to the token grid: large grids (stage 4: 64 x 64 x 151
        # tokens) would otherwise spend hundreds of millions of parameters on positions.
        self.pos_embed = nn.Parameter(torch.zeros(1, width, *(min(t, 32) for t in tokens)))
        self.t_embedder = TimestepEmbedder(width)
        self.global_proj = nn.Linear(global_dim, width)
        self.blocks = nn.ModuleList(
            DiTBlock(width, heads, context_dim, mlp_ratio, window, shift=window is not None and i % 2 == 1)
            for i in range(depth)
        )
        self.final_layer = FinalLayer(width, patch[0] * patch[1] * patch[2], out_channels)
        self.voxel_skip = nn.Conv3d(in_channels, out_channels, kernel_size=1)
        self.skip_gate = nn.Sequential(nn.SiLU(), nn.Linear(width, out_channels))
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """All initialisation in one place: Xavier linears, patch embedding like a linear, adaLN-Zero."""

        def _basic(module: nn.Module) -> None:
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

        self.apply(_basic)
        w = self.patch_embed.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.patch_embed.bias)
        nn.init.normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        # adaLN-Zero: every modulation regresses 0, so gates are 0 and each block starts as the identity ...
        for block in self.blocks:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        # ... and the output layer starts at 0.
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].weight)
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)
        # The per-voxel skip starts closed, like the adaLN-Zero gates.
        nn.init.zeros_(self.skip_gate[-1].weight)
        nn.init.zeros_(self.skip_gate[-1].bias)

    def _position_embedding(self, tokens: list[int]) -> torch.Tensor:
        pos = self.pos_embed
        if list(tokens) != list(pos.shape[2:]):
            pos = F.interpolate(pos, size=list(tokens), mode="trilinear", align_corners=False)
        return pos.flatten(2).transpose(1, 2)  # (1, T, D)

    def unpatchify(self, x: torch.Tensor, tokens: list[int]) -> torch.Tensor:
        """``(B, T, p³·C)`` -> ``(B, C, X, Y, Z)``."""
        b = x.shape[0]
        (gx, gy, gz), (px, py, pz) = tokens, self.patch_size
        x = x.view(b, gx, gy, gz, px, py, pz, self.out_channels)
        return x.permute(0, 7, 1, 4, 2, 5, 3, 6).reshape(b, self.out_channels, gx * px, gy * py, gz * pz)

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        context: torch.Tensor,
        global_embedding: torch.Tensor,
        context_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Args: ``x (B, C_in, X, Y, Z)``, ``t (B,)`` timesteps, ``context (B, S, C_ctx)`` X-ray tokens,
        ``global_embedding (B, C_g)``, ``context_mask (B, S)`` bool. Returns ``(B, C_out, X, Y, Z)``.

        TorchScript-compatible (``torch.jit.script``; see ``tests/test_ecosystem.py``): explicit per-axis arithmetic
        instead of ``zip`` over the shape, and no gradient checkpointing when scripted.
        """
        px, py, pz = self.patch_size
        divisible = x.dim() == 5 and x.shape[2] % px == 0 and x.shape[3] % py == 0 and x.shape[4] % pz == 0
        if not divisible or x.shape[1] != self.in_channels:
            raise ValueError(
                f"x must be (B, {self.in_channels}, X, Y, Z) with X, Y, Z divisible by {self.patch_size}, "
                f"got {list(x.shape)}."
            )
        tokens = [x.shape[2] // px, x.shape[3] // py, x.shape[4] // pz]  # token grid (gx, gy, gz)
        h = self.patch_embed(x).flatten(2).transpose(1, 2) + self._position_embedding(tokens)  # (B, T, D)
        c = self.t_embedder(t) + self.global_proj(global_embedding)  # (B, D)
        for block in self.blocks:
            if (
                not torch.jit.is_scripting()
                and self.gradient_checkpointing
                and self.training
                and torch.is_grad_enabled()
            ):
                h = checkpoint(block, h, c, context, context_mask, tokens, use_reentrant=False)
            else:
                h = block(h, c, context, context_mask, tokens)
        out = self.unpatchify(self.final_layer(h, c), tokens)  # (B, C_out, X, Y, Z)
        gate = self.skip_gate(c)[:, :, None, None, None]  # (B, C_out, 1, 1, 1)
        return out + gate * self.voxel_skip(x)  # (B, C_out, X, Y, Z)
