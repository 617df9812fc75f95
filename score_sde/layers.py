"""NCSN++ building blocks with the official Score-SDE parameter names (GroupNorm_0, Conv_0, NIN_0.W, ...)."""
from __future__ import annotations

import functools
import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from score_sde import fir

Activation = Callable[[torch.Tensor], torch.Tensor]
Resampler = Callable[[torch.Tensor], torch.Tensor]

ACTIVATIONS: dict[str, Activation] = {
    "swish": F.silu,
    "relu": F.relu,
    "elu": F.elu,
    "lrelu": functools.partial(F.leaky_relu, negative_slope=0.2),
}

_INV_SQRT2 = 1.0 / math.sqrt(2.0)


@torch.no_grad()
def default_init_(weight: torch.Tensor, scale: float = 1.0,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """In place U(-a, a), a = sqrt(3 scale / fan_avg) (DDPM's variance scaling; scale 0 means 1e-10)."""
    scale = 1e-10 if scale == 0 else scale
    receptive = math.prod(weight.shape[2:])
    fan_avg = 0.5 * (weight.shape[0] + weight.shape[1]) * receptive
    bound = math.sqrt(3.0 * scale / fan_avg)
    return weight.uniform_(-bound, bound, generator=generator)


def _uninitialised(cls: type[nn.Module], *args, **kwargs) -> nn.Module:
    """Build `cls` on the default device without PyTorch's own (soon overwritten) random init."""
    return cls(*args, device="meta", **kwargs).to_empty(device=torch.get_default_device())


def conv2d(in_ch: int, out_ch: int, kernel_size: int = 3, *, stride: int = 1, padding: int | None = None,
           init_scale: float = 1.0, generator: torch.Generator | None = None) -> nn.Conv2d:
    """Conv2d with default_init weights and zero bias; 'same' padding unless `padding` is given."""
    padding = kernel_size // 2 if padding is None else padding
    conv = _uninitialised(nn.Conv2d, in_ch, out_ch, kernel_size, stride=stride, padding=padding)
    default_init_(conv.weight, init_scale, generator)
    with torch.no_grad():
        conv.bias.zero_()
    return conv


def dense(in_features: int, out_features: int, generator: torch.Generator | None = None) -> nn.Linear:
    """Linear layer with default_init weights and zero bias."""
    linear = _uninitialised(nn.Linear, in_features, out_features)
    default_init_(linear.weight, 1.0, generator)
    with torch.no_grad():
        linear.bias.zero_()
    return linear


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with min(C // 4, 32) groups and eps 1e-6, as in NCSN++."""
    groups = min(channels // 4, 32)
    if groups < 1 or channels % groups:
        raise ValueError(f"GroupNorm over {channels} channels needs them divisible by min(C // 4, 32) = "
                         f"{groups}; choose nf and ch_mult so that every width (and skip sum) divides")
    return nn.GroupNorm(groups, channels, eps=1e-6)


def skip_sum(x: torch.Tensor, h: torch.Tensor, rescale: bool) -> torch.Tensor:
    """Residual x + h, divided by sqrt(2) when `rescale` (skip_rescale)."""
    out = x + h
    return out.mul_(_INV_SQRT2) if rescale else out


class NIN(nn.Module):
    """Per-pixel linear map (a 1x1 conv) with parameters W (in, out) and b (out), as the official NIN."""

    def __init__(self, in_dim: int, num_units: int, init_scale: float = 0.1,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.W = nn.Parameter(default_init_(torch.empty(in_dim, num_units), init_scale, generator))
        self.b = nn.Parameter(torch.zeros(num_units))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in, H, W) -> (B, out, H, W)."""
        return F.conv2d(x, self.W.t()[:, :, None, None], self.b)


class GaussianFourierProjection(nn.Module):
    """Random Fourier features [sin(2 pi W x), cos(2 pi W x)] of a log-noise level; W is fixed."""

    def __init__(self, embedding_size: int, scale: float, generator: torch.Generator | None = None) -> None:
        super().__init__()
        w = torch.randn(embedding_size, generator=generator) * scale
        self.W = nn.Parameter(w, requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B,) -> (B, 2 * embedding_size)."""
        x_proj = x[:, None] * self.W[None, :] * 2 * math.pi
        return torch.cat([torch.sin(x_proj), torch.cos(x_proj)], dim=-1)


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_positions: int = 10000) -> torch.Tensor:
    """Sinusoidal embedding (B,) -> (B, dim): [sin(t f_i), cos(t f_i)], f_i = max_positions^(-i/(dim/2-1))."""
    half = dim // 2
    step = math.log(max_positions) / (half - 1)
    freqs = torch.exp(torch.arange(half, dtype=torch.float32, device=timesteps.device) * -step)
    args = timesteps.float()[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


class AttnBlock(nn.Module):
    """DDPM self-attention over pixels: x + NIN_3(softmax(q k^T / sqrt(C)) v), q, k, v = NIN_0..2(norm x)."""

    def __init__(self, channels: int, skip_rescale: bool = False, init_scale: float = 0.0,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.GroupNorm_0 = group_norm(channels)
        self.NIN_0 = NIN(channels, channels, generator=generator)
        self.NIN_1 = NIN(channels, channels, generator=generator)
        self.NIN_2 = NIN(channels, channels, generator=generator)
        self.NIN_3 = NIN(channels, channels, init_scale=init_scale, generator=generator)
        self.skip_rescale = skip_rescale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        batch, channels, height, width = x.shape
        tokens = self.GroupNorm_0(x).flatten(2).transpose(1, 2)
        weight = torch.cat([self.NIN_0.W, self.NIN_1.W, self.NIN_2.W], dim=1)
        bias = torch.cat([self.NIN_0.b, self.NIN_1.b, self.NIN_2.b])
        q, k, v = F.linear(tokens, weight.t(), bias).chunk(3, dim=-1)
        h = F.scaled_dot_product_attention(q, k, v)
        h = F.linear(h, self.NIN_3.W.t(), self.NIN_3.b)
        return skip_sum(x, h.transpose(1, 2).reshape(batch, channels, height, width), self.skip_rescale)


def _resampler(up: bool, down: bool, use_fir: bool, fir_kernel: Sequence[int]) -> Resampler | None:
    """The x2 up/down-sampling of a BigGAN block: FIR or naive (nearest / box mean); None if neither."""
    if up and down:
        raise ValueError("a residual block cannot both upsample and downsample")
    if not (up or down):
        return None
    if use_fir:
        return functools.partial(fir.upsample_2d if up else fir.downsample_2d, taps=tuple(fir_kernel))
    return fir.naive_upsample_2d if up else fir.naive_downsample_2d


class ResidualCore(nn.Module):
    """The layers both residual blocks share, registered in the official order: GroupNorm_0, Conv_0, Dense_0,
    GroupNorm_1, Dropout_0, Conv_1 (subclasses add their shortcut after them)."""

    def __init__(self, act: Activation, in_ch: int, out_ch: int, temb_dim: int | None, dropout: float,
                 init_scale: float, skip_rescale: bool, generator: torch.Generator | None) -> None:
        super().__init__()
        self.act = act
        self.GroupNorm_0 = group_norm(in_ch)
        self.Conv_0 = conv2d(in_ch, out_ch, generator=generator)
        self.Dense_0 = dense(temb_dim, out_ch, generator) if temb_dim is not None else None
        self.GroupNorm_1 = group_norm(out_ch)
        self.Dropout_0 = nn.Dropout(dropout)
        self.Conv_1 = conv2d(out_ch, out_ch, init_scale=init_scale, generator=generator)
        self.skip_rescale = skip_rescale

    def add_time_then_conv(self, h: torch.Tensor, temb: torch.Tensor | None) -> torch.Tensor:
        """Second half of the block: h + Dense_0(act(temb)), then Conv_1(Dropout_0(act(GroupNorm_1(.))))."""
        if temb is not None:
            h = h + self.Dense_0(self.act(temb))[:, :, None, None]
        return self.Conv_1(self.Dropout_0(self.act(self.GroupNorm_1(h))))


class ResnetBlockBigGAN(ResidualCore):
    """BigGAN residual block of NCSN++ with optional x2 up/down-sampling of both branches."""

    def __init__(self, act: Activation, in_ch: int, out_ch: int | None = None, temb_dim: int | None = None,
                 up: bool = False, down: bool = False, dropout: float = 0.1, fir: bool = False,
                 fir_kernel: Sequence[int] = (1, 3, 3, 1), skip_rescale: bool = True, init_scale: float = 0.0,
                 generator: torch.Generator | None = None) -> None:
        out_ch = out_ch or in_ch
        super().__init__(act, in_ch, out_ch, temb_dim, dropout, init_scale, skip_rescale, generator)
        self.resample = _resampler(up, down, fir, fir_kernel)
        needs_shortcut = in_ch != out_ch or up or down
        self.Conv_2 = conv2d(in_ch, out_ch, 1, generator=generator) if needs_shortcut else None

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, in, H, W), temb (B, temb_dim) or None -> (B, out, H', W'), H' = 2H / H / H/2."""
        h = self.act(self.GroupNorm_0(x))
        if self.resample is not None:
            h, x = self.resample(h), self.resample(x)
        h = self.add_time_then_conv(self.Conv_0(h), temb)
        if self.Conv_2 is not None:
            x = self.Conv_2(x)
        return skip_sum(x, h, self.skip_rescale)


class ResnetBlockDDPM(ResidualCore):
    """DDPM++ residual block (no resampling); a NIN shortcut when the width changes."""

    def __init__(self, act: Activation, in_ch: int, out_ch: int | None = None, temb_dim: int | None = None,
                 dropout: float = 0.1, skip_rescale: bool = False, init_scale: float = 0.0,
                 generator: torch.Generator | None = None) -> None:
        out_ch = out_ch or in_ch
        super().__init__(act, in_ch, out_ch, temb_dim, dropout, init_scale, skip_rescale, generator)
        self.NIN_0 = NIN(in_ch, out_ch, generator=generator) if in_ch != out_ch else None

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, in, H, W), temb (B, temb_dim) or None -> (B, out, H, W)."""
        h = self.add_time_then_conv(self.Conv_0(self.act(self.GroupNorm_0(x))), temb)
        if self.NIN_0 is not None:
            x = self.NIN_0(x)
        return skip_sum(x, h, self.skip_rescale)


class Upsample(nn.Module):
    """x2 upsampling of the DDPM++ variant: nearest (+ 3x3 Conv_0), or FIR without conv."""

    def __init__(self, in_ch: int, with_conv: bool = False, fir: bool = False,
                 fir_kernel: Sequence[int] = (1, 3, 3, 1), generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.resample = _resampler(True, False, fir, fir_kernel)
        self.Conv_0 = conv2d(in_ch, in_ch, generator=generator) if with_conv and not fir else None

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, 2H, 2W); temb is ignored (same call as the residual blocks)."""
        h = self.resample(x)
        return self.Conv_0(h) if self.Conv_0 is not None else h


class Downsample(nn.Module):
    """x2 downsampling of the DDPM++ variant: stride-2 Conv_0 after (0, 1) padding, box mean, or FIR."""

    def __init__(self, in_ch: int, with_conv: bool = False, fir: bool = False,
                 fir_kernel: Sequence[int] = (1, 3, 3, 1), generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.resample = _resampler(False, True, fir, fir_kernel)
        use_conv = with_conv and not fir
        self.Conv_0 = conv2d(in_ch, in_ch, stride=2, padding=0, generator=generator) if use_conv else None

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H/2, W/2); temb is ignored (same call as the residual blocks)."""
        if self.Conv_0 is not None:
            return self.Conv_0(F.pad(x, (0, 1, 0, 1)))
        return self.resample(x)
