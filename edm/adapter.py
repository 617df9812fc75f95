"""An EDM denoiser D(x; sigma) seen as a VP backbone: the time and noise-level conversions, in one place."""
from __future__ import annotations

import torch
from torch import nn

from diffusion.backbone import VPBackbone
from diffusion.sde import VPSDE, _per_sample


class EDMBackbone(VPBackbone):
    """VP state x_t = alpha_t x_0 + s_t n as EDM's x_0 + sigma n: sigma = s_t / alpha_t, x = x_t / alpha_t, and
    eps(x_t, t) = (x_t - alpha_t D(x_t / alpha_t; sigma)) / s_t (Karras et al. 2022, eq. 4 and Table 1's VP column).

    `denoiser(x, sigma)` maps x (B, C, H, W) in EDM's [-1, 1] data space and sigma (B,) to D (B, C, H, W); LM
    (runners/lm.py) calls it through epsilon at t(sigma), where sigma^2 ||eps - n||^2 = ||D(x + sigma n; sigma) - x||^2.
    """

    def __init__(self, denoiser: nn.Module, sde: VPSDE) -> None:
        super().__init__(sde)
        self.denoiser = denoiser

    @property
    def network(self) -> nn.Module:
        """The wrapped denoiser: every score evaluation calls it once."""
        return self.denoiser

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        """EDM noise level of VP time t (shape of t): sigma_t / alpha_t."""
        return self.sde.edm_sigma(t)

    def time(self, sigma: torch.Tensor) -> torch.Tensor:
        """VP time of EDM noise level sigma (shape of sigma), the inverse of `sigma`."""
        return self.sde.edm_sigma_to_time(sigma)

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """D(x; sigma) (B, C, H, W) for x = x_0 + sigma n in EDM space; sigma scalar or (B,)."""
        return self.denoiser(x, torch.as_tensor(sigma, dtype=x.dtype, device=x.device).expand(x.shape[0]))

    def epsilon(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """eps(x_t, t) (B, C, H, W) = (x_t - alpha_t D(x_t / alpha_t; sigma(t))) / s_t; t scalar or (B,)."""
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device).expand(x.shape[0])
        alpha, std = _per_sample(self.sde.marginal_mean_coeff(t), x), _per_sample(self.sde.marginal_std(t), x)
        return (x - alpha * self.denoise(x / alpha, self.sigma(t))) / std
