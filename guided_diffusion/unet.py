"""The UNet of OpenAI's guided-diffusion (ADM, Dhariwal & Nichol 2021) and improved-diffusion (Nichol & Dhariwal 2021).

One implementation serves both releases: improved-diffusion's UNetModel is ADM's with
`resblock_updown=False`, `num_head_channels=-1` and the legacy attention order, and both name
their parameters identically, so the official state_dicts load with strict=True.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from utils.config import require

GROUPS = 32


@dataclass(frozen=True)
class UNetConfig:
    """Constructor arguments of guided-diffusion's UNetModel (attention_resolutions are downsample rates)."""

    in_channels: int
    model_channels: int
    out_channels: int
    num_res_blocks: int
    attention_resolutions: tuple[int, ...]
    dropout: float = 0.0
    channel_mult: tuple[int, ...] = (1, 2, 4, 8)
    conv_resample: bool = True
    num_classes: int | None = None
    use_checkpoint: bool = False
    use_fp16: bool = False
    num_heads: int = 1
    num_head_channels: int = -1
    num_heads_upsample: int = -1
    use_scale_shift_norm: bool = False
    resblock_updown: bool = False
    use_new_attention_order: bool = False
    image_size: int | None = None

    def __post_init__(self) -> None:
        require(self.num_classes is None, "num_classes: only unconditional UNets are supported; set it to null")
        require(not self.use_fp16, "use_fp16: this code runs the weights in float32; set it to false "
                "(cast the module with .half() yourself if you need half precision)")
        require(0.0 <= self.dropout < 1.0, f"dropout must lie in [0, 1), got {self.dropout}")
        require(len(self.channel_mult) > 0 and self.num_res_blocks >= 1, "need channel_mult and num_res_blocks >= 1")
        for mult in self.channel_mult:
            require(mult * self.model_channels % GROUPS == 0,
                    f"channels {mult * self.model_channels} must be a multiple of {GROUPS} (GroupNorm)")
            require(self.num_head_channels == -1 or mult * self.model_channels % self.num_head_channels == 0,
                    f"channels {mult * self.model_channels} must be a multiple of num_head_channels")
        require(self.num_head_channels != -1 or self.num_heads >= 1, "set num_heads >= 1 or num_head_channels")

    @property
    def time_embed_dim(self) -> int:
        """Width of the timestep embedding MLP: 4 * model_channels."""
        return 4 * self.model_channels

    @property
    def upsample_heads(self) -> int:
        """Heads of the decoder's attention blocks (num_heads_upsample, -1 meaning num_heads)."""
        return self.num_heads if self.num_heads_upsample == -1 else self.num_heads_upsample


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding (B, dim) of (B,) fractional timesteps: [cos(t f_i), sin(t f_i)], f_i = P^(-i / half)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half)
    args = timesteps[:, None].float() * freqs[None]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(embedding, (0, dim % 2))


class GroupNorm32(nn.GroupNorm):
    """GroupNorm with 32 groups that always computes in float32 and returns the input dtype."""

    def __init__(self, channels: int) -> None:
        super().__init__(GROUPS, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).type(x.dtype)


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    """3x3 convolution with padding 1."""
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1)


class Downsample(nn.Module):
    """Halve H and W: a stride-2 3x3 conv (`op`) or a 2x2 average pool."""

    def __init__(self, channels: int, use_conv: bool, out_channels: int | None = None) -> None:
        super().__init__()
        out_channels = out_channels or channels
        require(use_conv or out_channels == channels, "average-pool downsampling cannot change channels")
        self.op = conv3x3(channels, out_channels, stride=2) if use_conv else nn.AvgPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Double H and W by nearest-neighbour interpolation, optionally followed by a 3x3 conv (`conv`)."""

    def __init__(self, channels: int, use_conv: bool, out_channels: int | None = None) -> None:
        super().__init__()
        out_channels = out_channels or channels
        require(use_conv or out_channels == channels, "upsampling without conv cannot change channels")
        self.conv = conv3x3(channels, out_channels) if use_conv else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class TimestepBlock(nn.Module):
    """A block that takes the timestep embedding; optionally recomputed in backward (use_checkpoint)."""

    use_checkpoint: bool = False

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if self.use_checkpoint and torch.is_grad_enabled():
            return checkpoint(self.block_forward, x, emb, use_reentrant=False)
        return self.block_forward(x, emb)

    def block_forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """The block's computation, (B, C, H, W) -> (B, C', H', W')."""
        raise NotImplementedError


class TimestepSequential(nn.Sequential):
    """nn.Sequential that passes the timestep embedding to the TimestepBlocks it holds."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        for layer in self:
            x = layer(x, emb) if isinstance(layer, TimestepBlock) else layer(x)
        return x


class ResBlock(TimestepBlock):
    """Residual block conditioned on the timestep embedding; up/down resamples inside (BigGAN-style)."""

    def __init__(self, config: UNetConfig, channels: int, out_channels: int, up: bool = False,
                 down: bool = False) -> None:
        super().__init__()
        self.use_checkpoint = config.use_checkpoint
        self.use_scale_shift_norm = config.use_scale_shift_norm
        self.in_layers = nn.Sequential(GroupNorm32(channels), nn.SiLU(), conv3x3(channels, out_channels))
        self.resample = _resampler(channels, up, down)
        emb_out = 2 * out_channels if config.use_scale_shift_norm else out_channels
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(config.time_embed_dim, emb_out))
        self.out_layers = nn.Sequential(GroupNorm32(out_channels), nn.SiLU(), nn.Dropout(config.dropout),
                                        conv3x3(out_channels, out_channels))
        self.skip_connection = (nn.Identity() if out_channels == channels
                                else nn.Conv2d(channels, out_channels, 1))

    def block_forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """x (B, C, H, W), emb (B, E) -> (B, C_out, H', W')."""
        h = self.in_layers[:-1](x)
        h = self.in_layers[-1](self.resample(h))
        x = self.resample(x)
        emb_out = self.emb_layers(emb).type(h.dtype)[..., None, None]
        norm, rest = self.out_layers[0], self.out_layers[1:]
        if self.use_scale_shift_norm:
            scale, shift = emb_out.chunk(2, dim=1)
            h = rest(norm(h) * (1 + scale) + shift)
        else:
            h = rest(norm(h + emb_out))
        return self.skip_connection(x) + h


def _resampler(channels: int, up: bool, down: bool) -> nn.Module:
    """The parameter-free resampling of a ResBlock: nearest upsample, average-pool downsample or identity."""
    require(not (up and down), "a ResBlock cannot both upsample and downsample")
    if up:
        return Upsample(channels, use_conv=False)
    return Downsample(channels, use_conv=False) if down else nn.Identity()


def _heads_first(qkv: torch.Tensor, heads: int) -> tuple[torch.Tensor, ...]:
    """Legacy order: (B, heads * 3 * d, T) -> q, k, v each (B * heads, d, T)."""
    batch, width, length = qkv.shape
    return qkv.reshape(batch * heads, width // heads, length).chunk(3, dim=1)


def _qkv_first(qkv: torch.Tensor, heads: int) -> tuple[torch.Tensor, ...]:
    """New order: (B, 3 * heads * d, T) -> q, k, v each (B * heads, d, T)."""
    batch, width, length = qkv.shape
    return tuple(part.reshape(batch * heads, width // (3 * heads), length) for part in qkv.chunk(3, dim=1))


class AttentionBlock(TimestepBlock):
    """Multi-head self-attention over all positions, with a residual connection (ignores emb)."""

    def __init__(self, config: UNetConfig, channels: int, num_heads: int) -> None:
        super().__init__()
        self.use_checkpoint = config.use_checkpoint
        self.num_heads = num_heads if config.num_head_channels == -1 else channels // config.num_head_channels
        require(channels % self.num_heads == 0, f"channels {channels} must be a multiple of {self.num_heads} heads")
        self.split_heads = _qkv_first if config.use_new_attention_order else _heads_first
        self.norm = GroupNorm32(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = nn.Conv1d(channels, channels, 1)

    def block_forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """x (B, C, H, W) -> x + attention(x), same shape."""
        batch, channels, *spatial = x.shape
        x = x.reshape(batch, channels, -1)
        q, k, v = self.split_heads(self.qkv(self.norm(x)), self.num_heads)
        scale = q.shape[1] ** -0.25
        weight = torch.einsum("bct,bcs->bts", q * scale, k * scale)
        weight = torch.softmax(weight.float(), dim=-1).type(weight.dtype)
        h = torch.einsum("bts,bcs->bct", weight, v).reshape(batch, channels, -1)
        return (x + self.proj_out(h)).reshape(batch, channels, *spatial)


class UNetModel(nn.Module):
    """ADM / improved-diffusion UNet: x (B, C, H, W) in [-1, 1], timesteps (B,) -> (B, out_channels, H, W)."""

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = config
        width = config.model_channels
        self.time_embed = nn.Sequential(nn.Linear(width, config.time_embed_dim), nn.SiLU(),
                                        nn.Linear(config.time_embed_dim, config.time_embed_dim))
        self.input_blocks, skip_channels = _encoder(config)
        channels = skip_channels[-1]
        self.middle_block = TimestepSequential(ResBlock(config, channels, channels),
                                               AttentionBlock(config, channels, config.num_heads),
                                               ResBlock(config, channels, channels))
        self.output_blocks = _decoder(config, skip_channels)
        out_width = width * config.channel_mult[0]
        self.out = nn.Sequential(GroupNorm32(out_width), nn.SiLU(), conv3x3(out_width, config.out_channels))

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor | float) -> torch.Tensor:
        """Network output (B, out_channels, H, W) for x (B, in_channels, H, W) and scalar or (B,) timesteps."""
        self._check_input(x)
        timesteps = torch.as_tensor(timesteps, device=x.device).expand(x.shape[0])
        emb = self.time_embed(timestep_embedding(timesteps, self.config.model_channels))
        skips = []
        h = x
        for block in self.input_blocks:
            h = block(h, emb)
            skips.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h)

    def _check_input(self, x: torch.Tensor) -> None:
        """Raise a one-line ValueError unless x is (B, in_channels, H, W) with H, W divisible by the downsampling."""
        factor = 2 ** (len(self.config.channel_mult) - 1)
        if x.dim() != 4 or x.shape[1] != self.config.in_channels or x.shape[2] % factor or x.shape[3] % factor:
            raise ValueError(f"expected x of shape (B, {self.config.in_channels}, H, W) with H and W multiples of "
                             f"{factor}, got {tuple(x.shape)}")


def _encoder(config: UNetConfig) -> tuple[nn.ModuleList, list[int]]:
    """input_blocks (stem conv, then per level res/attention blocks and a downsampler) and their output channels."""
    channels = config.model_channels * config.channel_mult[0]
    blocks = [TimestepSequential(conv3x3(config.in_channels, channels))]
    skip_channels = [channels]
    rate = 1
    for level, mult in enumerate(config.channel_mult):
        for _ in range(config.num_res_blocks):
            layers = [ResBlock(config, channels, mult * config.model_channels)]
            channels = mult * config.model_channels
            if rate in config.attention_resolutions:
                layers.append(AttentionBlock(config, channels, config.num_heads))
            blocks.append(TimestepSequential(*layers))
            skip_channels.append(channels)
        if level != len(config.channel_mult) - 1:
            down = (ResBlock(config, channels, channels, down=True) if config.resblock_updown
                    else Downsample(channels, config.conv_resample))
            blocks.append(TimestepSequential(down))
            skip_channels.append(channels)
            rate *= 2
    return nn.ModuleList(blocks), skip_channels


def _decoder(config: UNetConfig, skip_channels: list[int]) -> nn.ModuleList:
    """output_blocks: per level (deepest first) num_res_blocks + 1 res/attention blocks, the last one upsampling."""
    skip_channels = list(skip_channels)
    channels = skip_channels[-1]
    rate = 2 ** (len(config.channel_mult) - 1)
    blocks = []
    for level, mult in reversed(list(enumerate(config.channel_mult))):
        for i in range(config.num_res_blocks + 1):
            layers = [ResBlock(config, channels + skip_channels.pop(), mult * config.model_channels)]
            channels = mult * config.model_channels
            if rate in config.attention_resolutions:
                layers.append(AttentionBlock(config, channels, config.upsample_heads))
            if level and i == config.num_res_blocks:
                layers.append(ResBlock(config, channels, channels, up=True) if config.resblock_updown
                              else Upsample(channels, config.conv_resample))
                rate //= 2
            blocks.append(TimestepSequential(*layers))
    return nn.ModuleList(blocks)
