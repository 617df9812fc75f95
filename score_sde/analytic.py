"""Closed-form VP scores for Gaussian data: exact references for solver tests and toy experiments."""
from __future__ import annotations

import torch

from diffusion.backbone import VPBackbone
from diffusion.sde import VPSDE, _per_sample


class GaussianBackbone(VPBackbone):
    """Data x_0 ~ N(mu, sigma0^2 I): x_t ~ N(alpha mu, alpha^2 sigma0^2 + sigma(t)^2), so
    score(x, t) = -(x - alpha(t) mu) / (alpha(t)^2 sigma0^2 + sigma(t)^2)."""

    def __init__(self, sde: VPSDE, mu: float, sigma0: float) -> None:
        super().__init__(sde)
        self.mu, self.sigma0 = float(mu), float(sigma0)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Exact score (B, ...) at x (B, ...), t (B,) or scalar."""
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
        alpha = _per_sample(self.sde.marginal_mean_coeff(t), x)
        var = alpha**2 * self.sigma0**2 + _per_sample(self.sde.marginal_std(t), x) ** 2
        return -(x - alpha * self.mu) / var

    def epsilon(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """eps = -sigma(t) * score, shape of x."""
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
        return -_per_sample(self.sde.marginal_std(t), x) * self.forward(x, t)
