"""DiffSmooth (Zhang et al. 2023): one-shot diffusion denoising at the smoothing noise level, then local smoothing.

The certifier adds the smoothing noise N(0, sigma^2) to [0, 1] images; in the diffusion space [-1, 1] its std is
2 sigma. Dividing a VP state by its signal coefficient, x_t / alpha = x_0 + (sqrt(1 - alpha^2) / alpha) eps, so the
noisy image is a (scaled) diffusion state at the level where sqrt(1 - alpha^2) / alpha = 2 sigma. The denoiser
predicts eps there and returns the posterior-mean estimate x0_hat = (x_t - sqrt(1 - alpha^2) eps) / alpha
(DiffSmooth eq. 3, Carlini et al. 2023). Local smoothing then averages the base classifier over m noisy copies of
x0_hat (DiffSmooth eq. 5).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Callable, Literal, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from guided_diffusion import DiscreteSchedule, GuidedDiffusionBackbone, sigma_to_timestep
from diffusion.backbone import VPBackbone
from diffusion.sde import VPSDE, std_to_time
from utils.images import to_diffusion_space, to_image_space

Vote = Literal["soft", "hard"]
RELEASE_LOCAL_SEED = 42  # DiffSmooth's release draws its m local noises after torch.manual_seed(42)


@dataclass(frozen=True)
class NoiseLevel:
    """Where the one-shot denoiser runs: x_t = alpha x_0 + sqrt(1 - alpha^2) eps, reached at VP time t."""

    alpha: float
    t: float
    description: str

    @property
    def noise_std(self) -> float:
        """sqrt(1 - alpha^2), the std of the noise in x_t."""
        return math.sqrt(1.0 - self.alpha**2)


def smoothing_time(sde: VPSDE, noise_ratio: float) -> float:
    """VP time t* with sigma(t*) / alpha(t*) = noise_ratio, i.e. alpha(t*)^2 = 1 / (1 + noise_ratio^2)."""
    if not noise_ratio > 0.0:
        raise ValueError(f"the noise ratio (2 sigma) must be > 0, got {noise_ratio}")
    return std_to_time(sde, noise_ratio / math.sqrt(1.0 + noise_ratio**2))


def schedule_of(backbone: GuidedDiffusionBackbone) -> DiscreteSchedule:
    """The backbone's discrete schedule, rebuilt from its alphas_cumprod buffer (betas_k = 1 - abar_k / abar_{k-1})."""
    alpha_bar = backbone.alphas_cumprod.to(torch.float64)
    previous = torch.cat([alpha_bar.new_ones(1), alpha_bar[:-1]])
    return DiscreteSchedule(1.0 - alpha_bar / previous, rescale_timesteps=False)


@functools.singledispatch
def noise_level(backbone: VPBackbone, noise_ratio: float) -> NoiseLevel:
    """Continuous VP backbones: the exact level alpha^2 = 1 / (1 + noise_ratio^2), at t* = smoothing_time."""
    t_star = smoothing_time(backbone.sde, noise_ratio)
    alpha = 1.0 / math.sqrt(1.0 + noise_ratio**2)
    return NoiseLevel(alpha, t_star, f"VP time t*={t_star:.6f}")


@noise_level.register
def _discrete_noise_level(backbone: GuidedDiffusionBackbone, noise_ratio: float) -> NoiseLevel:
    """ADM / improved-diffusion: the first 0-based step k with sqrt((1 - abar_k) / abar_k) >= noise_ratio.

    The adapter is called at the VP time whose alpha(t)^2 equals abar_k, which it maps back to step k (up to the
    float32 rounding of the network's timestep input, below 1e-4 steps): the net sees exactly the released step.
    """
    schedule = schedule_of(backbone)
    step = sigma_to_timestep(schedule, noise_ratio / 2.0)
    alpha_bar = float(schedule.alphas_cumprod[step])
    t_step = std_to_time(backbone.sde, math.sqrt(1.0 - alpha_bar))
    return NoiseLevel(math.sqrt(alpha_bar), t_step, f"discrete step k={step} (abar={alpha_bar:.6f})")


def one_shot_denoise(backbone: VPBackbone, x_noisy: torch.Tensor, level: NoiseLevel,
                     clamp: bool = True) -> torch.Tensor:
    """x0_hat in [0, 1] (B, C, H, W) from noisy images x_noisy (B, C, H, W) (any range): one epsilon call at `level`.

    x_t = alpha (2 x - 1); x0_hat = (x_t - sqrt(1 - alpha^2) eps(x_t, t)) / alpha, clamped to [-1, 1] if `clamp`.
    """
    x_t = level.alpha * to_diffusion_space(x_noisy)
    t = torch.full((x_noisy.shape[0],), level.t, dtype=x_noisy.dtype, device=x_noisy.device)
    x0 = (x_t - level.noise_std * backbone.epsilon(x_t, t)) / level.alpha
    return to_image_space(x0.clamp(-1.0, 1.0) if clamp else x0)


def _soft_vote(logits: torch.Tensor) -> torch.Tensor:
    """log of the softmax averaged over the m copies: logits (m, B, K) -> (B, K)."""
    return torch.logsumexp(F.log_softmax(logits, dim=-1), dim=0) - math.log(logits.shape[0])


def _hard_vote(logits: torch.Tensor) -> torch.Tensor:
    """log of the vote fractions over the m copies (-inf for classes without votes): (m, B, K) -> (B, K)."""
    votes = F.one_hot(logits.argmax(dim=-1), logits.shape[-1]).to(logits.dtype)
    return votes.mean(dim=0).log()


VOTES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"soft": _soft_vote, "hard": _hard_vote}


def local_smoothing_noise(m: int, image_shape: Sequence[int], local_sigma: float, seed: int) -> torch.Tensor:
    """(m, C, H, W) noise local_sigma * N(0, I) from torch.Generator().manual_seed(seed), drawn once.

    With seed 42 this equals the release's torch.manual_seed(42); torch.randn(m, C, H, W) * local_sigma (CPU).
    """
    generator = torch.Generator().manual_seed(int(seed))
    return torch.randn((m, *image_shape), generator=generator) * local_sigma


class DiffSmooth(nn.Module):
    """The DiffSmooth base classifier: noisy x (B, C, H, W) -> log-probabilities (B, K) of the locally smoothed vote.

    forward(x) = log (1/m) sum_i p(classifier(denoise(x) + delta_i)) with soft votes (softmax probabilities, as
    released) or hard votes (one-hot argmax); the m local noises delta_i ~ N(0, local_sigma^2) are a buffer drawn
    once from `local_seed` and reused on every call, as in the release. Exponentiate the output for probabilities;
    its argmax is the class the certifier counts. Differentiable; callers choose inference_mode.
    """

    def __init__(self, backbone: VPBackbone, classifier: nn.Module, sigma: float, image_shape: Sequence[int],
                 m: int = 5, local_sigma: float = 0.25, vote: Vote = "soft", local_seed: int = RELEASE_LOCAL_SEED,
                 clamp: bool = True) -> None:
        super().__init__()
        if not sigma > 0.0 or m < 1 or local_sigma < 0.0:
            raise ValueError(f"need sigma > 0, m >= 1 and local_sigma >= 0; got sigma={sigma}, m={m}, "
                             f"local_sigma={local_sigma}")
        if vote not in VOTES:
            raise ValueError(f"vote must be one of {sorted(VOTES)}, got {vote!r}")
        self.backbone, self.classifier = backbone, classifier
        self.sigma, self.vote, self.clamp = float(sigma), vote, bool(clamp)
        self.level = noise_level(backbone, 2.0 * self.sigma)
        self.register_buffer("local_noise", local_smoothing_noise(m, image_shape, local_sigma, local_seed))

    def denoise(self, x: torch.Tensor) -> torch.Tensor:
        """One-shot denoised images (B, C, H, W) in [0, 1] from noisy images x (B, C, H, W)."""
        expected = tuple(self.local_noise.shape[1:])
        if x.dim() != 4 or tuple(x.shape[1:]) != expected or not x.is_floating_point():
            raise ValueError(f"expected float images of shape (B, {', '.join(map(str, expected))}), "
                             f"got {x.dtype} {tuple(x.shape)}")
        return one_shot_denoise(self.backbone, x, self.level, self.clamp)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Log-probabilities (B, K) of the local-smoothing vote on denoise(x); x (B, C, H, W) carries sigma-noise."""
        x0 = self.denoise(x)
        copies = x0.unsqueeze(0) + self.local_noise.to(x0.dtype).unsqueeze(1)
        logits = self.classifier(copies.flatten(0, 1))
        return VOTES[self.vote](logits.view(copies.shape[0], x.shape[0], -1))
