"""The DDPM UNet of Ho et al. 2020 as released with SDEdit for CelebA-HQ 256 (epsilon prediction, integer steps).

Written from the architecture: wide residual blocks with a per-channel timestep bias, single-head self-attention
at the configured pixel resolutions and in the middle, strided-conv downsampling and nearest-neighbour
upsampling, and skip connections from every down-path output. Parameter names follow the released state_dict
(`temb.dense.*`, `down.{level}.block.{j}`, `mid.attn_1`, `up.{level}.upsample`, ...), so `celeba_hq.ckpt` loads
with strict=True.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from utils.config import require

GROUPS = 32
NORM_EPS = 1e-6


@dataclass(frozen=True)
class DDPMUNetConfig:
    """SDEdit's `config.model` options plus `config.data.image_size` (attn_resolutions are pixel resolutions)."""

    image_size: int = 256
    in_channels: int = 3
    out_ch: int = 3
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4, 4)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (16,)
    dropout: float = 0.0
    resamp_with_conv: bool = True

    def __post_init__(self) -> None:
        require(self.resamp_with_conv, "resamp_with_conv: only the released convolutional resampling is "
                "supported; set it to true")
        require(0.0 <= self.dropout < 1.0, f"dropout must lie in [0, 1), got {self.dropout}")
        require(self.ch % 2 == 0 and len(self.ch_mult) > 0 and self.num_res_blocks >= 1,
                "need an even ch, a non-empty ch_mult and num_res_blocks >= 1")
        require(self.image_size % 2 ** (len(self.ch_mult) - 1) == 0,
                f"image_size {self.image_size} must be divisible by 2^(len(ch_mult) - 1)")
        for mult in (1, *self.ch_mult):
            require(mult * self.ch % GROUPS == 0, f"channels {mult * self.ch} must be a multiple of {GROUPS}")

    @property
    def out_channels(self) -> int:
        """Output channels (epsilon only), the name the VP adapter reads."""
        return self.out_ch


def sinusoidal_embedding(timesteps: torch.Tensor, dim: int) -> torch.Tensor:
    """(B,) steps -> (B, dim): [sin(t w_k), cos(t w_k)], w_k = exp(-k ln(10000) / (dim/2 - 1)) (Vaswani et al.)."""
    half = dim // 2
    rate = math.log(10000.0) / (half - 1)
    freqs = torch.exp(torch.arange(half, dtype=torch.float32, device=timesteps.device) * -rate)
    angles = timesteps.float()[:, None] * freqs[None, :]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


def swish(x: torch.Tensor) -> torch.Tensor:
    """x * sigmoid(x)."""
    return x * torch.sigmoid(x)


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm(32 groups, eps 1e-6, affine)."""
    return nn.GroupNorm(GROUPS, channels, eps=NORM_EPS, affine=True)


class TimeEmbedding(nn.Module):
    """Sinusoidal embedding of width ch, then Linear(ch, 4ch), swish, Linear(4ch, 4ch)."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.ch = ch
        self.dense = nn.ModuleList([nn.Linear(ch, 4 * ch), nn.Linear(4 * ch, 4 * ch)])

    def forward(self, timesteps: torch.Tensor) -> torch.Tensor:
        """(B,) steps -> (B, 4ch); the sinusoids are computed in float32 (as released), then cast to the weights."""
        emb = sinusoidal_embedding(timesteps, self.ch).to(self.dense[0].weight.dtype)
        return self.dense[1](swish(self.dense[0](emb)))


class ResnetBlock(nn.Module):
    """h = conv2(drop(swish(norm2(conv1(swish(norm1(x))) + W swish(temb))))); out = shortcut(x) + h."""

    def __init__(self, in_ch: int, out_ch: int, temb_ch: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = group_norm(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.temb_proj = nn.Linear(temb_ch, out_ch)
        self.norm2 = group_norm(out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else None

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        """x (B, in_ch, H, W), temb (B, temb_ch) -> (B, out_ch, H, W)."""
        h = self.conv1(swish(self.norm1(x))) + self.temb_proj(swish(temb))[:, :, None, None]
        h = self.conv2(self.dropout(swish(self.norm2(h))))
        shortcut = x if self.nin_shortcut is None else self.nin_shortcut(x)
        return shortcut + h


class AttnBlock(nn.Module):
    """Single-head self-attention over pixels: x + proj_out(v softmax(q^T k / sqrt(C))^T), on GroupNorm(x)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = group_norm(channels)
        self.q, self.k, self.v = (nn.Conv2d(channels, channels, 1) for _ in range(3))
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        b, c, height, width = x.shape
        h = self.norm(x)
        q, k, v = (layer(h).reshape(b, c, height * width) for layer in (self.q, self.k, self.v))
        weights = torch.softmax(torch.bmm(q.transpose(1, 2), k) * c ** -0.5, dim=2)  # (B, query, key)
        out = torch.bmm(v, weights.transpose(1, 2)).reshape(b, c, height, width)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    """Zero-pad one row at the bottom and one column at the right, then a 3x3 stride-2 conv: H, W halve."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest-neighbour x2, then a 3x3 conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Level(nn.Module):
    """One resolution of the down or up path: residual blocks, optional attention after each, a resampler."""

    def __init__(self, blocks: list[ResnetBlock], attention: bool, resample: nn.Module | None) -> None:
        super().__init__()
        self.block = nn.ModuleList(blocks)
        self.attn = nn.ModuleList([AttnBlock(b.conv2.out_channels) for b in blocks]) if attention else None
        self.downsample: nn.Module | None = resample if isinstance(resample, Downsample) else None
        self.upsample: nn.Module | None = resample if isinstance(resample, Upsample) else None

    def run_block(self, j: int, h: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        """Block j, then its attention when this level has attention."""
        h = self.block[j](h, temb)
        return h if self.attn is None else self.attn[j](h)


class Middle(nn.Module):
    """block_1, attn_1, block_2 at the lowest resolution."""

    def __init__(self, channels: int, temb_ch: int, dropout: float) -> None:
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, temb_ch, dropout)
        self.attn_1 = AttnBlock(channels)
        self.block_2 = ResnetBlock(channels, channels, temb_ch, dropout)

    def forward(self, h: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(h, temb)), temb)


class DDPMUNet(nn.Module):
    """eps_theta(x_t, t): x_t (B, C, H, W) in [-1, 1]-scaled data space, t (B,) 0-based DDPM steps (Ho et al. 2020)."""

    def __init__(self, config: DDPMUNetConfig) -> None:
        super().__init__()
        self.config = config
        ch, temb_ch, levels = config.ch, 4 * config.ch, len(config.ch_mult)
        self.temb = TimeEmbedding(ch)
        self.conv_in = nn.Conv2d(config.in_channels, ch, 3, padding=1)
        skips, resolution, width = [ch], config.image_size, ch
        down = []
        for level, mult in enumerate(config.ch_mult):
            blocks = []
            for _ in range(config.num_res_blocks):
                blocks.append(ResnetBlock(width, ch * mult, temb_ch, config.dropout))
                width = ch * mult
                skips.append(width)
            last = level == levels - 1
            down.append(Level(blocks, resolution in config.attn_resolutions, None if last else Downsample(width)))
            if not last:
                skips.append(width)
                resolution //= 2
        self.down = nn.ModuleList(down)
        self.mid = Middle(width, temb_ch, config.dropout)
        up: list[Level] = []
        for level in reversed(range(levels)):
            blocks = []
            for _ in range(config.num_res_blocks + 1):
                blocks.append(ResnetBlock(width + skips.pop(), ch * config.ch_mult[level], temb_ch, config.dropout))
                width = ch * config.ch_mult[level]
            up.insert(0, Level(blocks, resolution in config.attn_resolutions, Upsample(width) if level else None))
            resolution = resolution * 2 if level else resolution
        self.up = nn.ModuleList(up)
        self.norm_out = group_norm(width)
        self.conv_out = nn.Conv2d(width, config.out_ch, 3, padding=1)

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """Predicted noise (B, out_ch, H, W) for x (B, in_channels, H, W) at steps (B,) (integer or fractional)."""
        temb = self.temb(timesteps)
        hs = [self.conv_in(x)]
        for level in self.down:
            for j in range(len(level.block)):
                hs.append(level.run_block(j, hs[-1], temb))
            if level.downsample is not None:
                hs.append(level.downsample(hs[-1]))
        h = self.mid(hs[-1], temb)
        for level in reversed(self.up):
            for j in range(len(level.block)):
                h = level.run_block(j, torch.cat([h, hs.pop()], dim=1), temb)
            if level.upsample is not None:
                h = level.upsample(h)
        return self.conv_out(swish(self.norm_out(h)))
