"""The one place where images move between [0, 1] (classifiers, attacks) and [-1, 1] (diffusion)."""
from __future__ import annotations

import contextvars
import math
from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

_IN_RANGE = contextvars.ContextVar("images_in_range", default=False)


def to_diffusion_space(x01: torch.Tensor) -> torch.Tensor:
    """Map images (B, C, H, W) in [0, 1] to the diffusion state in [-1, 1]: 2x - 1."""
    return 2.0 * x01 - 1.0


def to_image_space(x: torch.Tensor) -> torch.Tensor:
    """Map a diffusion state (B, C, H, W) in [-1, 1] to images in [0, 1]: (x + 1) / 2 (no clamp)."""
    return (x + 1.0) / 2.0


def check_images(x: torch.Tensor, channels: int | None = None) -> None:
    """Raise a one-line ValueError unless x is a finite float (B, C, H, W) batch in [0, 1] (values: one host sync)."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise ValueError(f"expected a float tensor of images, got {type(x).__name__} "
                         f"{getattr(x, 'dtype', '')}; convert with .float()")
    if x.dim() != 4:
        raise ValueError(f"expected images of shape (B, C, H, W), got shape {tuple(x.shape)}; "
                         "add a batch dimension with x.unsqueeze(0)")
    if x.shape[0] == 0 or x[0].numel() == 0:
        raise ValueError(f"expected a non-empty batch of images, got shape {tuple(x.shape)}")
    if channels is not None and x.shape[1] != channels:
        raise ValueError(f"expected {channels} channels, got {x.shape[1]} (shape {tuple(x.shape)})")
    if _IN_RANGE.get():
        return
    lo, hi = torch.stack(torch.aminmax(x.detach())).tolist()
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError("images contain NaN or inf; check the input pipeline")
    if lo < 0.0 or hi > 1.0:
        raise ValueError(f"images must lie in [0, 1], got range [{lo:.4g}, {hi:.4g}]; "
                         "undo any normalisation before the defense")


@contextmanager
def iterates_in_range() -> Iterator[None]:
    """Within the block check_images checks type and shape only, not the values (one host sync per call): for an
    attack's iterates, in [0, 1] by construction (projected and clipped each step); the attack checks its input and
    its result."""
    token = _IN_RANGE.set(True)
    try:
        yield
    finally:
        _IN_RANGE.reset(token)


def refuse_inference_mode(reason: str) -> None:
    """Raise a one-line RuntimeError under torch.inference_mode(); reason says what the forward differentiates."""
    if torch.is_inference_mode_enabled():
        raise RuntimeError(f"{reason}: use torch.no_grad(), not torch.inference_mode()")


def check_dtype(x: torch.Tensor, model: nn.Module) -> None:
    """Raise a one-line ValueError unless x has the floating dtype of model's weights (e.g. float64 x, float32 model)."""
    weights = (w for w in (*model.parameters(), *model.buffers()) if w.is_floating_point())
    dtype = next(weights, x).dtype
    if x.dtype != dtype:
        raise ValueError(f"images are {x.dtype} but the model's weights are {dtype}; "
                         f"convert the images with x.to({dtype}) (or the model with .to({x.dtype}))")
