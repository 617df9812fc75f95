"""Discrete noise schedules of the OpenAI diffusion models and conversions to their timesteps."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from utils.config import require
from utils.registry import Registry

BETA_SCHEDULES: Registry[torch.Tensor] = Registry("beta schedule")


@BETA_SCHEDULES.register("linear")
def linear_betas(num_steps: int) -> torch.Tensor:
    """DDPM's betas (N,) float64: linspace(1e-4 * 1000 / N, 0.02 * 1000 / N, N) (Ho et al. 2020)."""
    scale = 1000.0 / num_steps
    return torch.linspace(scale * 1e-4, scale * 0.02, num_steps, dtype=torch.float64)


@BETA_SCHEDULES.register("cosine")
def cosine_betas(num_steps: int, offset: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Betas (N,) float64 of abar(u) = cos^2((u + s) / (1 + s) pi / 2): min(1 - abar((i+1)/N) / abar(i/N), 0.999)."""
    u = torch.arange(num_steps + 1, dtype=torch.float64) / num_steps
    alpha_bar = torch.cos((u + offset) / (1.0 + offset) * math.pi / 2.0) ** 2
    return torch.clamp(1.0 - alpha_bar[1:] / alpha_bar[:-1], max=max_beta)


@dataclass(frozen=True)
class ScheduleConfig:
    """A discrete schedule: beta schedule name, number of steps, and whether the net sees t * 1000 / N."""

    name: Literal["linear", "cosine"] = "linear"
    num_steps: int = 1000
    rescale_timesteps: bool = False

    def __post_init__(self) -> None:
        require(self.num_steps >= 1, f"num_steps must be >= 1, got {self.num_steps}")


class DiscreteSchedule:
    """betas, alphas_cumprod (N,) float64 over 0-based steps k; the network is called with k * timestep_scale."""

    def __init__(self, betas: torch.Tensor, rescale_timesteps: bool) -> None:
        if betas.dim() != 1 or not bool(((betas > 0) & (betas < 1)).all()):
            raise ValueError("betas must be a 1-D tensor with values in (0, 1)")
        self.betas = betas.to(torch.float64)
        self.alphas_cumprod = torch.cumprod(1.0 - self.betas, dim=0)
        self.num_steps = int(betas.shape[0])
        self.timestep_scale = 1000.0 / self.num_steps if rescale_timesteps else 1.0

    @classmethod
    def from_config(cls, config: ScheduleConfig) -> DiscreteSchedule:
        """Build the schedule named in `config`."""
        return cls(BETA_SCHEDULES.build(config.name, config.num_steps), config.rescale_timesteps)

    def model_timesteps(self, steps: torch.Tensor) -> torch.Tensor:
        """Network timestep input for (possibly fractional) 0-based steps: k * 1000 / N if rescaled, else k."""
        return steps * self.timestep_scale


ADM_IMAGENET256_SCHEDULE = ScheduleConfig(name="linear", num_steps=1000, rescale_timesteps=False)
IMPROVED_CIFAR10_SCHEDULE = ScheduleConfig(name="cosine", num_steps=4000, rescale_timesteps=True)


def sigma_to_timestep(schedule: DiscreteSchedule, sigma: float) -> int:
    """DiffSmooth's step for noise std sigma on [0, 1] images: first 0-based k with sqrt((1-abar_k)/abar_k) >= 2 sigma.

    The data is mapped to [-1, 1], doubling the noise std, and x_k / sqrt(abar_k) = x_0 + sqrt((1-abar_k)/abar_k) eps.
    Reproduces DiffSmooth's table: sigma 0.12 / 0.25 / 0.5 / 1.0 -> steps 70 / 145 / 259 / 396 (linear, N = 1000)
    and 573 / 1158 / 1984 / 2809 (cosine, N = 4000).
    """
    if not sigma > 0.0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    ratio = torch.sqrt((1.0 - schedule.alphas_cumprod) / schedule.alphas_cumprod)
    reached = torch.nonzero(ratio >= 2.0 * sigma)
    if reached.numel() == 0:
        raise ValueError(f"sigma {sigma} exceeds the schedule's largest noise level {float(ratio[-1]) / 2:.4g}")
    return int(reached[0])


def alpha_bar_to_timestep(alphas_cumprod: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """Fractional 0-based step s in [-1, N - 1] with abar(s) = alpha_bar, log abar interpolated linearly between steps.

    abar(-1) = 1 (no noise) anchors the left end; values below abar_{N-1} clamp to N - 1. Float64, shape of alpha_bar.
    Between steps k - 1 and k, log abar changes by log(1 - beta_k), so this is the natural continuous extension.
    """
    neg_log = -torch.log(alphas_cumprod.to(device=alpha_bar.device, dtype=torch.float64))
    neg_log = torch.cat([neg_log.new_zeros(1), neg_log])
    target = torch.minimum((-torch.log(alpha_bar.to(torch.float64))).clamp(min=0.0), neg_log[-1])
    upper = torch.searchsorted(neg_log, target.reshape(-1)).clamp(1, neg_log.shape[0] - 1).reshape(target.shape)
    low, high = neg_log[upper - 1], neg_log[upper]
    return (upper - 2).to(torch.float64) + (target - low) / (high - low)
