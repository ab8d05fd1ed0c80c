"""Shared X-ray encoder: a residual CNN stem per view, then a ViT over the patches of all present views."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .blocks import TransformerBlock

__all__ = ["XrayEncoder", "XrayEncoding"]


@dataclass
class XrayEncoding:
    """What the encoder gives the stages.

    Attributes:
        tokens: ``(B, V·N, C)`` patch tokens of all views, for cross-attention.
        token_mask: ``(B, V·N)`` True for tokens of present views.
        global_embedding: ``(B, C_g)`` pooled over the present views, for adaLN conditioning.
        feature_maps: ``(B, V, C_f, h, w)`` per-view 2D feature maps (detector layout), for depth lifting.
        view_mask: ``(B, V)`` True for present views.
    """

    tokens: torch.Tensor
    token_mask: torch.Tensor
    global_embedding: torch.Tensor
    feature_maps: torch.Tensor
    view_mask: torch.Tensor

    def without_xrays(self, drop: torch.Tensor | None = None) -> XrayEncoding:
        """The null conditioning of classifier-free guidance for the samples where ``drop (B,)`` is True (all when
        ``None``): tokens, global embedding and feature maps set to zero, the masks kept.

        Zero is a fixed point the trained encoder never produces (its tokens leave a LayerNorm), needs no weights
        (checkpoints keep their keys) and keeps attention well defined: every token still present, its key and value
        the projections' biases only. What a stage sees from the previous stage's volume is not touched.
        """
        b = self.tokens.shape[0]
        drop = torch.ones(b, dtype=torch.bool, device=self.tokens.device) if drop is None else drop
        if drop.shape != (b,):
            raise ValueError(f"drop must be one flag per case, shape ({b},), got {tuple(drop.shape)}.")
        keep = (~drop.to(device=self.tokens.device, dtype=torch.bool)).to(self.tokens.dtype)
        return XrayEncoding(
            self.tokens * keep[:, None, None],
            self.token_mask,
            self.global_embedding * keep[:, None],
            self.feature_maps * keep[:, None, None, None, None].to(self.feature_maps.dtype),
            self.view_mask,
        )


class _ResidualBlock(nn.Module):
    def __init__(self, channels_in: int, channels_out: int, stride: int) -> None:
        super().__init__()
        groups = min(8, channels_out)
        self.body = nn.Sequential(
            nn.Conv2d(channels_in, channels_out, 3, stride, 1, bias=False),
            nn.GroupNorm(groups, channels_out),
            nn.SiLU(),
            nn.Conv2d(channels_out, channels_out, 3, 1, 1, bias=False),
            nn.GroupNorm(groups, channels_out),
        )
        self.skip = (
            nn.Identity()
            if stride == 1 and channels_in == channels_out
            else nn.Conv2d(channels_in, channels_out, 1, stride, bias=False)
        )
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.skip(x))


class XrayEncoder(nn.Module):
    """Encode one or two radiographs into tokens, a global embedding and 2D feature maps.

    Each view goes through the same ResNet stem (``stem_channels``, each stage halving the resolution), then is
    cut into ``patch_size`` patches of the stem map; patch tokens get a learned 2D position embedding and a learned
    view embedding, and all present views' tokens go through one ViT. Missing views (``view_mask`` False) are
    masked out of attention and pooling, and their feature maps are zero.

    Args:
        num_views: ``V``, in the geometry's view order.
        image_size: detector ``(H, W)`` in pixels.
        stem_channels: channels of the stem stages (each halves H and W).
        patch_size: patch edge on the stem map, in stem pixels.
        dim: token width ``C``; heads, depth: of the ViT.
        global_dim: ``C_g`` of the pooled embedding.
    """

    def __init__(
        self,
        num_views: int = 2,
        image_size: tuple[int, int] | int = (128, 128),
        stem_channels: tuple[int, ...] = (32, 64),
        patch_size: int = 2,
        dim: int = 192,
        heads: int = 4,
        depth: int = 4,
        global_dim: int = 192,
    ) -> None:
        super().__init__()
        h, w = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        down = 2 ** len(stem_channels)
        if h % (down * patch_size) or w % (down * patch_size):
            raise ValueError(
                f"image_size {(h, w)} must be divisible by 2**len(stem_channels) x patch_size = {down * patch_size}."
            )
        if dim % heads:
            raise ValueError(f"heads ({heads}) must divide the encoder width dim ({dim}).")
        self.num_views, self.image_size, self.patch_size = num_views, (h, w), patch_size
        layers, c_in = [], 1
        for c in stem_channels:
            layers.append(_ResidualBlock(c_in, c, stride=2))
            c_in = c
        self.stem = nn.Sequential(*layers)
        self.feature_channels = c_in
        self.feature_stride = down  # map pixel j is centred on detector pixel down·j (stride-2, k3, p1 convs)
        self.map_size = (h // down, w // down)
        self.grid = (self.map_size[0] // patch_size, self.map_size[1] // patch_size)
        self.patch_embed = nn.Conv2d(c_in, dim, patch_size, patch_size)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid[0] * self.grid[1], dim))
        self.view_embed = nn.Parameter(torch.zeros(num_views, dim))
        self.blocks = nn.ModuleList(TransformerBlock(dim, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.global_proj = nn.Sequential(nn.Linear(dim, global_dim), nn.SiLU(), nn.Linear(global_dim, global_dim))
        self.dim, self.global_dim = dim, global_dim
        nn.init.normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.view_embed, std=0.02)

    def forward(self, xray: torch.Tensor, view_mask: torch.Tensor | None = None) -> XrayEncoding:
        """Args: ``xray (B, V, H, W)`` on the network scale; ``view_mask (B, V)`` bool (default: all present)."""
        b, v, h, w = xray.shape
        if v != self.num_views or (h, w) != self.image_size:
            raise ValueError(
                f"xray must be (B, {self.num_views}, {self.image_size[0]}, {self.image_size[1]}), got "
                f"{tuple(xray.shape)}."
            )
        if view_mask is None:
            view_mask = torch.ones(b, v, dtype=torch.bool, device=xray.device)
        view_mask = view_mask.to(device=xray.device, dtype=torch.bool)
        if not bool(view_mask.any(dim=1).all()):
            raise ValueError("view_mask: every case needs at least one present view.")
        present = view_mask.to(xray.dtype)[:, :, None, None, None]  # (B, V, 1, 1, 1)
        maps = self.stem(xray.reshape(b * v, 1, h, w))  # (B·V, C_f, h', w')
        maps = maps.view(b, v, *maps.shape[1:]) * present  # (B, V, C_f, h', w')
        tokens = self.patch_embed(maps.flatten(0, 1)).flatten(2).transpose(1, 2)  # (B·V, N, C)
        tokens = tokens.view(b, v, -1, self.dim) + self.pos_embed[:, None] + self.view_embed[None, :, None]
        n = tokens.shape[2]
        tokens = tokens.reshape(b, v * n, self.dim)  # (B, V·N, C)
        token_mask = view_mask[:, :, None].expand(b, v, n).reshape(b, v * n)  # (B, V·N)
        for block in self.blocks:
            tokens = block(tokens, token_mask)
        tokens = self.norm(tokens)
        weights = token_mask.to(tokens.dtype)[..., None]  # (B, V·N, 1)
        pooled = (tokens * weights).sum(1) / weights.sum(1)  # (B, C)
        return XrayEncoding(tokens, token_mask, self.global_proj(pooled), maps, view_mask)
