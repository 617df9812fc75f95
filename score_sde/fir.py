"""FIR up/down-sampling (upfirdn2d of StyleGAN2 / NCSN++) in plain PyTorch: CPU and GPU, no extension."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F


def fir_kernel_2d(taps: Sequence[float], *, like: torch.Tensor) -> torch.Tensor:
    """Separable 2-D kernel outer(taps, taps) / sum, on the device and dtype of `like`; (K, K)."""
    k = torch.as_tensor(taps, dtype=like.dtype, device=like.device)
    k = torch.outer(k, k)
    return k / k.sum()


def upfirdn2d(x: torch.Tensor, kernel: torch.Tensor, up: int = 1, down: int = 1,
              pad: tuple[int, int] = (0, 0)) -> torch.Tensor:
    """Zero-insert by `up`, pad (before, after) on H and W, convolve with `kernel`, keep every `down`-th.

    x (B, C, H, W); kernel (K, K), applied per channel as a true convolution (flipped);
    output side (H * up + pad[0] + pad[1] - K) // down + 1. Negative pads crop.
    """
    batch, channels, height, width = x.shape
    if up > 1:
        upsampled = x.new_zeros(batch, channels, height * up, width * up)
        upsampled[:, :, ::up, ::up] = x
        x = upsampled
    x = F.pad(x, (pad[0], pad[1], pad[0], pad[1]))
    weight = kernel.flip(0, 1)[None, None].expand(channels, 1, *kernel.shape)
    return F.conv2d(x, weight, stride=down, groups=channels)


def upsample_2d(x: torch.Tensor, taps: Sequence[float], factor: int = 2) -> torch.Tensor:
    """FIR upsampling (B, C, H, W) -> (B, C, factor H, factor W); a constant image stays constant inside."""
    kernel = fir_kernel_2d(taps, like=x) * factor**2
    p = kernel.shape[0] - factor
    return upfirdn2d(x, kernel, up=factor, pad=((p + 1) // 2 + factor - 1, p // 2))


def downsample_2d(x: torch.Tensor, taps: Sequence[float], factor: int = 2) -> torch.Tensor:
    """FIR downsampling (B, C, H, W) -> (B, C, H / factor, W / factor), kernel normalised to sum 1."""
    kernel = fir_kernel_2d(taps, like=x)
    p = kernel.shape[0] - factor
    return upfirdn2d(x, kernel, down=factor, pad=((p + 1) // 2, p // 2))


def naive_upsample_2d(x: torch.Tensor, factor: int = 2) -> torch.Tensor:
    """Nearest-neighbour upsampling (B, C, H, W) -> (B, C, factor H, factor W)."""
    return F.interpolate(x, scale_factor=factor, mode="nearest")


def naive_downsample_2d(x: torch.Tensor, factor: int = 2) -> torch.Tensor:
    """Mean over factor x factor blocks (B, C, H, W) -> (B, C, H / factor, W / factor)."""
    return F.avg_pool2d(x, factor)
