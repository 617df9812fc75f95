"""EDM's preconditioned denoiser D(x; sigma) = c_skip x + c_out F(c_in x, c_noise) (Karras et al. 2022, eq. 7)."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from edm.config import SongUNetConfig
from edm.unet import SongUNet


class EDMPrecond(nn.Module):
    """D(x; sigma): x (B, C, R, R) = x_0 + sigma n in [-1, 1] data space, sigma (B,) -> (B, C, R, R).

    c_skip = sd^2 / (sigma^2 + sd^2), c_out = sigma sd / sqrt(sigma^2 + sd^2), c_in = 1 / sqrt(sigma^2 + sd^2),
    c_noise = log(sigma) / 4, sd = sigma_data (Table 1); the network is `model` (state-dict keys 'model.*').
    """

    def __init__(self, config: SongUNetConfig) -> None:
        super().__init__()
        self.sigma_data = config.sigma_data
        self.model = SongUNet(config)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor,
                augment_labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        """D(x; sigma) (B, C, R, R); sigma (B,) or broadcastable; augment_labels (B, augment_dim) or None."""
        sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(-1, 1, 1, 1)
        sd2 = self.sigma_data**2
        c_skip = sd2 / (sigma**2 + sd2)
        c_out = sigma * self.sigma_data / (sigma**2 + sd2).sqrt()
        c_in = 1.0 / (sd2 + sigma**2).sqrt()
        out = self.model(c_in * x, (sigma.log() / 4).flatten().expand(x.shape[0]), augment_labels)
        return c_skip * x + c_out * out
