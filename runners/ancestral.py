"""DiffPure's DDPM purifier (CelebA-HQ): forward noise to step n = round(N t*), then n ancestral reverse steps.

Unlike DiffPure's sampler (no gradient), this one is differentiable end to end with the exact gradient of the
discrete chain, step-checkpointed so memory stays flat in n; the noise of step k for image b is drawn from a
generator seeded with derive_seeds(0, row_seed_b, k), so it is redrawn identically on the backward pass.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from guided_diffusion.adapter import GuidedDiffusionBackbone
from runners.defended import PurifierSpec
from runners.gradient_path import unrolled
from runners.noise import NoiseSource, per_row_normal
from runners.purifiers import Purifier
from runners.solvers import iterate_steps
from utils.config import require
from utils.images import check_images, to_diffusion_space, to_image_space
from utils.seeds import derive_seeds

# k -> standard normal (B, C, H, W): k = 0 is the forward noise, k = 1..n the noise of the k-th reverse step
NoiseFn = Callable[[int], torch.Tensor]
LOGVAR_FLOOR = 1e-20


@dataclass(frozen=True)
class AncestralConfig:
    """YAML `purifier: {name: diffpure_ddpm}`; t_star 0.5 is DiffPure's `--t 500` of its CelebA-HQ scripts."""

    name: str = "diffpure_ddpm"
    t_star: float = 0.5
    clamp_output: bool = False  # DiffPure hands (x + 1) / 2 to the classifier unclamped
    checkpoint: bool = True
    fixed_noise: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        require(0.0 < self.t_star <= 1.0, f"purifier.t_star must lie in (0, 1], got {self.t_star}")


class AncestralSchedule:
    """float64 tables (N,) of a discrete chain: betas, alphas_cumprod, and the fixed-small log variance.

    logvar_i = log max(beta_i (1 - abar_{i-1}) / (1 - abar_i), 1e-20), abar_{-1} = 1 (Ho et al. 2020, sigma^2 = beta~).
    """

    def __init__(self, alphas_cumprod: torch.Tensor) -> None:
        self.alphas_cumprod = alphas_cumprod.detach().to("cpu", torch.float64)
        previous = torch.cat([self.alphas_cumprod.new_ones(1), self.alphas_cumprod[:-1]])
        self.betas = 1.0 - self.alphas_cumprod / previous
        variance = self.betas * (1.0 - previous) / (1.0 - self.alphas_cumprod)
        self.logvar = torch.log(variance.clamp(min=LOGVAR_FLOOR))

    @property
    def num_steps(self) -> int:
        """N, the length of the chain."""
        return int(self.alphas_cumprod.shape[0])

    def steps_for(self, t_star: float) -> int:
        """n = round(N t*), the number of forward and reverse steps (at least 1)."""
        return max(1, round(self.num_steps * t_star))


class AncestralPurifier(Purifier):
    """x (B, C, H, W) in [0, 1] -> (x_0 + 1) / 2 after forward noising to step n and n ancestral steps (DDPM).

    x_n = sqrt(abar_{n-1}) (2x - 1) + sqrt(1 - abar_{n-1}) e;  for i = n-1, ..., 0:
    x <- (x - beta_i / sqrt(1 - abar_i) eps(x, i)) / sqrt(1 - beta_i) + [i > 0] exp(logvar_i / 2) z_i.
    """

    def __init__(self, backbone: GuidedDiffusionBackbone, config: AncestralConfig) -> None:
        super().__init__()
        require(isinstance(backbone, GuidedDiffusionBackbone),
                f"purifier '{config.name}' needs a discrete-step backbone (ddpm or guided_diffusion), "
                f"got {type(backbone).__name__}")
        self.config = config
        self.backbone = backbone.requires_grad_(False)
        self.schedule = AncestralSchedule(backbone.alphas_cumprod)
        self.n_steps = self.schedule.steps_for(config.t_star)
        self.noise = NoiseSource(config.seed, config.fixed_noise)

    def forward(self, x: torch.Tensor, noise_seeds: Optional[torch.Tensor] = None,
                labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Purify x (B, C, H, W) in [0, 1]; noise_seeds (B,) fixes each row's noise (labels are unused)."""
        check_images(x)
        seeds = self.noise.row_seeds(x.shape[0], noise_seeds)
        return self.purify(x, seeded_noise(seeds, tuple(x.shape[1:]), x.device, x.dtype))

    def purify(self, x: torch.Tensor, noise: NoiseFn) -> torch.Tensor:
        """The purification of x (B, C, H, W) in [0, 1] with the given noise; output in image space (unclamped)."""
        x_start = self.forward_noise(to_diffusion_space(x), noise(0))
        x_out = iterate_steps(lambda x_t, k: self.reverse_step(x_t, self.n_steps - 1 - k, noise(k + 1)),
                              x_start, self.n_steps, self.config.checkpoint)
        return to_image_space(x_out.clamp(-1.0, 1.0) if self.config.clamp_output else x_out)

    def forward_noise(self, x0: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        """x_n = sqrt(abar_{n-1}) x0 + sqrt(1 - abar_{n-1}) e for x0, e (B, C, H, W) (DiffPure's index n - 1)."""
        alpha_bar = float(self.schedule.alphas_cumprod[self.n_steps - 1])
        return math.sqrt(alpha_bar) * x0 + math.sqrt(1.0 - alpha_bar) * e

    def reverse_step(self, x: torch.Tensor, i: int, z: torch.Tensor) -> torch.Tensor:
        """One ancestral step from step i to i - 1; x, z (B, C, H, W); the noise term vanishes at i = 0."""
        beta, alpha_bar = float(self.schedule.betas[i]), float(self.schedule.alphas_cumprod[i])
        steps = torch.full((x.shape[0],), i, dtype=torch.int64, device=x.device)
        eps = self.backbone.step_epsilon(x, steps)
        mean = (x - beta / math.sqrt(1.0 - alpha_bar) * eps) / math.sqrt(1.0 - beta)
        if i == 0:
            return mean
        return mean + math.exp(0.5 * float(self.schedule.logvar[i])) * z


def seeded_noise(row_seeds: torch.Tensor, shape: tuple[int, ...], device: torch.device,
                 dtype: torch.dtype) -> NoiseFn:
    """k -> standard normal (B, *shape), row b drawn from a generator seeded with derive_seeds(0, row_seeds[b], k)."""
    return lambda k: per_row_normal(derive_seeds(0, row_seeds, k), shape, device, dtype)


ANCESTRAL_PURIFIER = PurifierSpec(AncestralConfig,
                                  lambda config, context: AncestralPurifier(context.backbone(), config),
                                  gradient=unrolled("the DDPM ancestral chain from t* {t_star}"))
