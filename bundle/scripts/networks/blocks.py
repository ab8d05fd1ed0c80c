"""Transformer building blocks: adaLN-Zero DiT blocks with self- and cross-attention, 3D windowed attention.

Shapes: tokens ``(B, T, D)``; a token grid ``(B, D, gx, gy, gz)``; conditioning vector ``(B, D)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ATTENTION_MODES", "Attention", "DiTBlock", "FinalLayer", "TimestepEmbedder", "TransformerBlock", "modulate"]

#: Self-attention modes of the denoiser: over all tokens, or inside (shifted) 3D windows.
ATTENTION_MODES = ("global", "window")


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN modulation ``x·(1 + scale) + shift`` of tokens ``(B, T, D)`` by per-sample ``(B, D)`` vectors."""
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class TimestepEmbedder(nn.Module):
    """Diffusion timestep -> vector: sinusoidal features (Vaswani et al.) followed by an MLP."""

    def __init__(self, dim: int, frequency_dim: int = 256, max_period: float = 10000.0) -> None:
        super().__init__()
        self.frequency_dim, self.max_period = frequency_dim, max_period
        self.mlp = nn.Sequential(nn.Linear(frequency_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.frequency_dim // 2
        freqs = torch.exp(-math.log(self.max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
        args = t.float()[:, None] * freqs[None]  # (B, half)
        # the features in the weights' dtype: float32 for a float32 network (unchanged), float64 for a float64 one
        # (the reference of the CPU/GPU agreement test); autocast still runs the MLP in bf16
        features = torch.cat([torch.cos(args), torch.sin(args)], dim=-1).to(self.mlp[0].weight.dtype)
        return self.mlp(features)  # (B, D)


class Attention(nn.Module):
    """Multi-head attention through PyTorch SDPA (flash / memory-efficient kernels where available).

    Self-attention when ``context`` is None, else cross-attention from ``x`` to ``context``; ``context_mask``
    ``(B, S)`` marks valid context tokens (a missing X-ray view is masked out); ``attn_mask`` ``(B, 1, T, S)``
    (True = attend) restricts pairs, e.g. to one region of a shifted window.
    """

    def __init__(self, dim: int, heads: int, context_dim: int | None = None) -> None:
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(context_dim or dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        b, n, d = x.shape
        context = x if context is None else context
        q = self.q(x).view(b, n, self.heads, -1).transpose(1, 2)  # (B, h, T, d/h)
        k, v = (
            self.kv(context).view(b, context.shape[1], 2, self.heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        )  # (B, h, S, d/h)
        mask = None if context_mask is None else context_mask[:, None, None, :]  # (B, 1, 1, S) True = attend
        if attn_mask is not None:
            mask = attn_mask if mask is None else mask & attn_mask
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, h, T, d/h)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))  # (B, T, D)


def _window_partition(x: torch.Tensor, grid: list[int], window: list[int]) -> torch.Tensor:
    """Tokens ``(B, gx·gy·gz, D)`` -> windows ``(B·nW, wx·wy·wz, D)``."""
    b, d = x.shape[0], x.shape[2]
    (gx, gy, gz), (wx, wy, wz) = grid, window
    x = x.view(b, gx // wx, wx, gy // wy, wy, gz // wz, wz, d)
    return x.permute(0, 1, 3, 5, 2, 4, 6, 7).reshape(-1, wx * wy * wz, d)


def _window_merge(x: torch.Tensor, batch: int, grid: list[int], window: list[int]) -> torch.Tensor:
    """Inverse of :func:`_window_partition`."""
    (gx, gy, gz), (wx, wy, wz) = grid, window
    x = x.view(batch, gx // wx, gy // wy, gz // wz, wx, wy, wz, -1)
    return x.permute(0, 1, 4, 2, 5, 3, 6, 7).reshape(batch, gx * gy * gz, -1)


def _window_regions(grid: list[int], window: list[int], offsets: list[int]) -> torch.Tensor:
    """Region label of every token of the rolled, padded grid, partitioned into windows: ``(nW, wx·wy·wz)``.

    Rolling by ``-offset`` brings the last ``offset`` tokens of an axis next to its first ones, and padding adds
    tokens that do not exist: tokens may only attend within their window to tokens of the same label (Swin's
    shifted-window mask, extended to padding). Per axis: 0 = rolled position < g − offset (originally ≥ offset),
    1 = wrapped around, 2 = padding.
    """
    labels = []
    for i in range(3):  # per axis (index loop: TorchScript has no zip over fixed-length lists)
        g, w, o = grid[i], window[i], offsets[i]
        pos = torch.arange(g + (w - g % w) % w)  # the padded axis
        labels.append(torch.where(pos >= g, 2, torch.where(pos >= g - o, 1, 0)))
    lx, ly, lz = torch.meshgrid(labels, indexing="ij")
    label = (lx * 9 + ly * 3 + lz).float()  # (Gx, Gy, Gz)
    return _window_partition(label.reshape(1, -1, 1), list(label.shape), window)[..., 0]  # (nW, w³)


class DiTBlock(nn.Module):
    """Self-attention -> cross-attention to X-ray tokens -> MLP, each a residual gated by adaLN-Zero.

    ``x ← x + g·f(modulate(norm(x), shift, scale))`` for each branch, with ``(shift, scale, g)`` regressed from the
    conditioning vector ``c`` (timestep + global X-ray embedding). The regression is zero at init, so the block is
    the identity (DiT, Peebles & Xie 2023). Self-attention is global or inside 3D windows; with ``shift`` the
    windows are displaced by half a window (Swin) so information crosses window borders from block to block.
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        context_dim: int,
        mlp_ratio: float = 4.0,
        window: Sequence[int] | None = None,
        shift: bool = False,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.cross = Attention(dim, heads, context_dim)
        self.norm3 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 9 * dim))
        self.window = None if window is None else [int(w) for w in window]
        self.shift = shift

    def _self_attention(self, x: torch.Tensor, grid: list[int]) -> torch.Tensor:
        if self.window is None:
            return self.attn(x)
        b, d = x.shape[0], x.shape[2]
        offsets = [w // 2 for w in self.window] if self.shift else [0, 0, 0]
        vol = x.view(b, grid[0], grid[1], grid[2], d)  # (B, gx, gy, gz, D)
        if any(offsets):
            vol = torch.roll(vol, shifts=[-o for o in offsets], dims=(1, 2, 3))
        # A token grid that the window does not divide (e.g. 151 tokens along z) is padded; pad tokens are masked,
        # and so are pairs that the roll made neighbours across opposite faces (Swin's shifted-window mask).
        pad = [(self.window[i] - grid[i] % self.window[i]) % self.window[i] for i in range(3)]
        if any(pad):
            vol = F.pad(vol, (0, 0, 0, pad[2], 0, pad[1], 0, pad[0]))
        padded = list(vol.shape[1:4])
        mask: torch.Tensor | None = None
        if any(offsets) or any(pad):
            regions = _window_regions(grid, self.window, offsets).to(x.device)  # (nW, w³)
            mask = (regions[:, :, None] == regions[:, None, :]).repeat(b, 1, 1)[:, None]  # (B·nW, 1, w³, w³)
        windows = _window_partition(vol.reshape(b, -1, d), padded, self.window)  # (B·nW, w³, D)
        out = _window_merge(self.attn(windows, attn_mask=mask), b, padded, self.window)
        out = out.view(b, padded[0], padded[1], padded[2], d)
        out = out[:, : grid[0], : grid[1], : grid[2]]
        if any(offsets):
            out = torch.roll(out, shifts=offsets, dims=(1, 2, 3))
        return out.reshape(b, -1, d)

    def forward(
        self,
        x: torch.Tensor,
        c: torch.Tensor,
        context: torch.Tensor,
        context_mask: torch.Tensor | None,
        grid: list[int],
    ) -> torch.Tensor:
        (shift_msa, scale_msa, gate_msa, shift_mca, scale_mca, gate_mca, shift_mlp, scale_mlp, gate_mlp) = (
            self.adaLN_modulation(c).chunk(9, dim=1)
        )  # 9 x (B, D)
        x = x + gate_msa.unsqueeze(1) * self._self_attention(modulate(self.norm1(x), shift_msa, scale_msa), grid)
        x = x + gate_mca.unsqueeze(1) * self.cross(modulate(self.norm2(x), shift_mca, scale_mca), context, context_mask)
        x = x + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm3(x), shift_mlp, scale_mlp))
        return x  # (B, T, D)


class TransformerBlock(nn.Module):
    """Pre-norm ViT block (the X-ray encoder's), with an optional key mask."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h, mask)
        return x + self.mlp(self.norm2(x))  # (B, T, D)


class FinalLayer(nn.Module):
    """adaLN-modulated norm and a linear map from tokens to patches of output channels (zero at init)."""

    def __init__(self, dim: int, patch_voxels: int, out_channels: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(dim, patch_voxels * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm(x), shift, scale))  # (B, T, p³·C_out)
