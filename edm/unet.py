"""The DDPM++ U-Net of EDM (Karras et al. 2022; Song et al.'s DDPM++ as EDM's `SongUNet`), written from the
architecture with EDM's parameter names, so its state dicts load strictly.

Standard encoder and decoder, positional noise embedding, resampling by a [1, 1] box filter, one-head attention at
`attn_resolutions`, residual blocks with skip scale sqrt(1/2), GroupNorm (groups min(32, C / 4), eps 1e-6).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from edm.config import SongUNetConfig

SKIP_SCALE = math.sqrt(0.5)
NORM_EPS = 1e-6
MAX_POSITIONS = 10000


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with min(32, channels / 4) groups and eps 1e-6 (weight, bias)."""
    return nn.GroupNorm(min(32, channels // 4), channels, eps=NORM_EPS)


class ResampleConv(nn.Module):
    """An optional 2x up- or down-sampling by the separable `resample_filter` (depthwise, a buffer) followed by a
    k x k convolution: EDM's Conv2d without fused resampling."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, up: bool = False, down: bool = False,
                 resample_filter: tuple[int, ...] = (1, 1)) -> None:
        super().__init__()
        self.in_channels, self.up, self.down = in_channels, up, down
        self.out_channels = out_channels
        self.weight = nn.Parameter(torch.zeros(out_channels, in_channels, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        f = torch.as_tensor(resample_filter, dtype=torch.float32)
        self.register_buffer("resample_filter", (torch.outer(f, f) / f.sum() ** 2)[None, None] if up or down else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, C_in, H, W) -> (B, C_out, H', W'), H' = 2H (up), H / 2 (down) or H."""
        if self.resample_filter is not None:
            f = self.resample_filter.to(x.dtype)
            pad = (f.shape[-1] - 1) // 2
            if self.up:
                x = F.conv_transpose2d(x, (4 * f).tile(self.in_channels, 1, 1, 1), groups=self.in_channels,
                                       stride=2, padding=pad)
            else:
                x = F.conv2d(x, f.tile(self.in_channels, 1, 1, 1), groups=self.in_channels, stride=2, padding=pad)
        return F.conv2d(x, self.weight.to(x.dtype), self.bias.to(x.dtype), padding=self.weight.shape[-1] // 2)


class UNetBlock(nn.Module):
    """Residual block conditioned on the embedding (added after norm1), optional resampling and attention."""

    def __init__(self, in_channels: int, out_channels: int, emb_channels: int, attention: bool = False,
                 up: bool = False, down: bool = False, resample_filter: tuple[int, ...] = (1, 1),
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.dropout = in_channels, out_channels, dropout
        self.norm0 = group_norm(in_channels)
        self.conv0 = ResampleConv(in_channels, out_channels, 3, up, down, resample_filter)
        self.affine = nn.Linear(emb_channels, out_channels)
        self.norm1 = group_norm(out_channels)
        self.conv1 = ResampleConv(out_channels, out_channels, 3)
        changes = in_channels != out_channels or up or down
        self.skip = ResampleConv(in_channels, out_channels, 1, up, down, resample_filter) if changes else None
        self.attention = attention
        if attention:
            self.norm2 = group_norm(out_channels)
            self.qkv = ResampleConv(out_channels, 3 * out_channels, 1)
            self.proj = ResampleConv(out_channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """x (B, C_in, H, W), emb (B, E) -> (B, C_out, H', W')."""
        h = self.conv0(F.silu(self.norm0(x)))
        h = F.silu(self.norm1(h + self.affine(emb)[:, :, None, None]))
        h = self.conv1(F.dropout(h, p=self.dropout, training=self.training))
        h = (h + (self.skip(x) if self.skip is not None else x)) * SKIP_SCALE
        return self.attend(h) if self.attention else h

    def attend(self, x: torch.Tensor) -> torch.Tensor:
        """One-head self-attention over the H W positions, residual, times the skip scale."""
        b, c, height, width = x.shape
        q, k, v = self.qkv(self.norm2(x)).reshape(b, c, 3, height * width).unbind(2)
        weights = torch.softmax(torch.einsum("ncq,nck->nqk", q, k / math.sqrt(c)), dim=2)
        a = torch.einsum("nqk,nck->ncq", weights, v).reshape(b, c, height, width)
        return (self.proj(a) + x) * SKIP_SCALE


def positional_embedding(noise_labels: torch.Tensor, channels: int) -> torch.Tensor:
    """(B,) -> (B, channels): [cos(n f_i), sin(n f_i)], f_i = (1 / 10000)^(i / (channels / 2 - 1))."""
    half = channels // 2
    freqs = (1.0 / MAX_POSITIONS) ** (torch.arange(half, dtype=torch.float32, device=noise_labels.device) / (half - 1))
    angles = torch.outer(noise_labels, freqs.to(noise_labels.dtype))
    return torch.cat([angles.cos(), angles.sin()], dim=1)


class SongUNet(nn.Module):
    """F(x, c_noise): x (B, C, R, R), noise labels (B,), optional augment labels (B, augment_dim) -> (B, C, R, R)."""

    def __init__(self, config: SongUNetConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        noise_channels, emb_channels = c.noise_channels, c.emb_channels
        self.map_augment = nn.Linear(c.augment_dim, noise_channels, bias=False) if c.augment_dim else None
        self.map_layer0 = nn.Linear(noise_channels, emb_channels)
        self.map_layer1 = nn.Linear(emb_channels, emb_channels)
        block = dict(emb_channels=emb_channels, resample_filter=tuple(c.resample_filter), dropout=c.dropout)
        self.enc, cout = nn.ModuleDict(), c.img_channels
        for level, mult in enumerate(c.channel_mult):
            res = c.img_resolution >> level
            if level == 0:
                self.enc[f"{res}x{res}_conv"] = ResampleConv(cout, c.model_channels, 3)
                cout = c.model_channels
            else:
                self.enc[f"{res}x{res}_down"] = UNetBlock(cout, cout, down=True, **block)
            for idx in range(c.num_blocks):
                self.enc[f"{res}x{res}_block{idx}"] = UNetBlock(cout, c.model_channels * mult,
                                                                attention=res in c.attn_resolutions, **block)
                cout = c.model_channels * mult
        skips = [m.out_channels for m in self.enc.values()]
        self.dec = nn.ModuleDict()
        for level, mult in reversed(list(enumerate(c.channel_mult))):
            res = c.img_resolution >> level
            if level == len(c.channel_mult) - 1:
                self.dec[f"{res}x{res}_in0"] = UNetBlock(cout, cout, attention=True, **block)
                self.dec[f"{res}x{res}_in1"] = UNetBlock(cout, cout, **block)
            else:
                self.dec[f"{res}x{res}_up"] = UNetBlock(cout, cout, up=True, **block)
            for idx in range(c.num_blocks + 1):
                attention = idx == c.num_blocks and res in c.attn_resolutions
                self.dec[f"{res}x{res}_block{idx}"] = UNetBlock(cout + skips.pop(), c.model_channels * mult,
                                                                attention=attention, **block)
                cout = c.model_channels * mult
        res = c.img_resolution
        self.dec[f"{res}x{res}_aux_norm"] = group_norm(cout)
        self.dec[f"{res}x{res}_aux_conv"] = ResampleConv(cout, c.img_channels, 3)

    def embed(self, noise_labels: torch.Tensor, augment_labels: Optional[torch.Tensor]) -> torch.Tensor:
        """(B, E): the positional embedding with its halves swapped ([sin, cos]), plus the augment map, two layers."""
        emb = positional_embedding(noise_labels, self.map_layer0.in_features)
        emb = emb.reshape(emb.shape[0], 2, -1).flip(1).reshape(emb.shape)
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels)
        return F.silu(self.map_layer1(F.silu(self.map_layer0(emb))))

    def forward(self, x: torch.Tensor, noise_labels: torch.Tensor,
                augment_labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x (B, C, R, R), noise labels (B,) -> (B, C, R, R)."""
        emb = self.embed(noise_labels, augment_labels)
        skips = []
        for module in self.enc.values():
            x = module(x, emb) if isinstance(module, UNetBlock) else module(x)
            skips.append(x)
        modules = list(self.dec.values())
        for module in modules[:-2]:
            if x.shape[1] != module.in_channels:
                x = torch.cat([x, skips.pop()], dim=1)
            x = module(x, emb)
        norm, conv = modules[-2:]
        return conv(F.silu(norm(x)))
