"""The variance-preserving SDE of Song et al. (2021), dx = -1/2 beta(t) x dt + sqrt(beta(t)) dW."""
from __future__ import annotations

import math
from typing import Callable

import torch

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _per_sample(t: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    """Broadcast a scalar or (B,) time against x of shape (B, ...)."""
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    return t.reshape(t.shape + (1,) * (x.dim() - t.dim())) if t.dim() else t


class VPSDE:
    """VP-SDE with linear beta(t) = beta_min + t (beta_max - beta_min), t in [0, 1] (Song et al. eq. 11)."""

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, num_scales: int = 1000) -> None:
        if not 0.0 < beta_min < beta_max:
            raise ValueError(f"need 0 < beta_min < beta_max, got {beta_min}, {beta_max}")
        if num_scales < 1:
            raise ValueError(f"num_scales must be >= 1, got {num_scales}")
        self.beta_min = float(beta_min)
        self.beta_max = float(beta_max)
        self.num_scales = int(num_scales)

    def beta(self, t: torch.Tensor) -> torch.Tensor:
        """beta(t), same shape as t."""
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def drift(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Forward drift f(x, t) = -1/2 beta(t) x; x (B, ...), t scalar or (B,)."""
        return -0.5 * _per_sample(self.beta(torch.as_tensor(t)), x) * x

    def diffusion(self, t: torch.Tensor) -> torch.Tensor:
        """Forward diffusion g(t) = sqrt(beta(t)), same shape as t."""
        return torch.sqrt(self.beta(t))

    def log_mean_coeff(self, t: torch.Tensor) -> torch.Tensor:
        """log alpha(t) = -1/4 t^2 (beta_max - beta_min) - 1/2 t beta_min."""
        return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def marginal_mean_coeff(self, t: torch.Tensor) -> torch.Tensor:
        """alpha(t) with E[x_t | x_0] = alpha(t) x_0."""
        return torch.exp(self.log_mean_coeff(t))

    def marginal_std(self, t: torch.Tensor) -> torch.Tensor:
        """sigma(t) = sqrt(1 - alpha(t)^2), the std of x_t given x_0.

        Computed as sqrt(1 - exp(2 log alpha)) like the official code, not with expm1: in float32 near
        t = 1e-5 the two differ by 0.6 %, and the released checkpoints' numbers use this form.
        """
        return torch.sqrt(1.0 - torch.exp(2.0 * self.log_mean_coeff(t)))

    def marginal_prob(self, x0: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean (B, ...) and std (B, 1, ...) of p_t(x_t | x_0)."""
        t = torch.as_tensor(t, dtype=x0.dtype, device=x0.device)
        return _per_sample(self.marginal_mean_coeff(t), x0) * x0, _per_sample(self.marginal_std(t), x0)

    def edm_sigma(self, t: torch.Tensor) -> torch.Tensor:
        """EDM's noise level sigma(t) = sigma_t / alpha_t: x_t / alpha_t = x_0 + sigma n (Karras et al. 2022, eq. 4)."""
        return self.marginal_std(t) / self.marginal_mean_coeff(t)

    def edm_sigma_to_time(self, sigma: torch.Tensor) -> torch.Tensor:
        """VP time t with sigma_t / alpha_t = sigma: solve 1/4 (b1 - b0) t^2 + 1/2 b0 t = 1/2 log(1 + sigma^2)."""
        a, b = 0.25 * (self.beta_max - self.beta_min), 0.5 * self.beta_min
        return (-b + torch.sqrt(b * b + 2.0 * a * torch.log1p(sigma**2))) / (2.0 * a)

    def reverse_drift(self, x: torch.Tensor, t: torch.Tensor, score: torch.Tensor) -> torch.Tensor:
        """Drift of the reverse-time SDE in diffusion time: f(x, t) - g(t)^2 score (Anderson 1982)."""
        beta = _per_sample(self.beta(torch.as_tensor(t, dtype=x.dtype, device=x.device)), x)
        return -0.5 * beta * x - beta * score


class DiscreteDDPMSchedule:
    """DDPM's discrete schedule: betas = linspace(beta_min / N, beta_max / N, N) (Ho et al. 2020)."""

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, num_steps: int = 1000) -> None:
        self.num_steps = int(num_steps)
        self.betas = torch.linspace(beta_min / num_steps, beta_max / num_steps, num_steps,
                                    dtype=torch.float64)
        self.alphas_cumprod = torch.cumprod(1.0 - self.betas, dim=0)

    def alpha_bar(self, k: int) -> float:
        """abar_k = prod_{i<k} (1 - beta_i): the signal fraction after k forward steps, k in [1, N]."""
        if not 1 <= k <= self.num_steps:
            raise ValueError(f"step k must be in [1, {self.num_steps}], got {k}")
        return float(self.alphas_cumprod[k - 1])

    def step_of(self, t: float) -> int:
        """The step k = round(N t) that continuous time t in (0, 1] maps to."""
        return max(1, int(round(self.num_steps * t)))


def std_to_time(sde: VPSDE, std: float) -> float:
    """Invert sigma(t) = std for t in (0, 1]: solve the quadratic in log alpha(t)."""
    if not 0.0 < std < 1.0:
        raise ValueError(f"std must lie in (0, 1), got {std}")
    log_alpha = 0.5 * math.log1p(-std**2)
    a, b = 0.25 * (sde.beta_max - sde.beta_min), 0.5 * sde.beta_min
    return (-b + math.sqrt(b * b - 4.0 * a * log_alpha)) / (2.0 * a)
