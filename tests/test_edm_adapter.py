"""The EDM denoiser as a VP backbone (edm/adapter.py): closed-form Gaussian check and the sigma / time round trip."""
from __future__ import annotations

import torch
from torch import nn

from diffusion.sde import VPSDE
from edm.adapter import EDMBackbone
from score_sde.analytic import GaussianBackbone

MU, SIGMA0 = 0.2, 0.3


class GaussianDenoiser(nn.Module):
    """The exact denoiser of data N(mu, sigma0^2 I): D(x; sigma) = (sigma0^2 x + sigma^2 mu) / (sigma0^2 + sigma^2)."""

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        s2 = sigma.view(-1, *([1] * (x.dim() - 1))) ** 2
        return (SIGMA0**2 * x + s2 * MU) / (SIGMA0**2 + s2)


def test_the_vp_score_through_the_adapter_is_the_analytic_vp_score(device):
    sde = VPSDE()
    backbone, exact = EDMBackbone(GaussianDenoiser(), sde).to(device), GaussianBackbone(sde, MU, SIGMA0)
    x = torch.randn((4, 3, 5, 5), generator=torch.Generator().manual_seed(0), dtype=torch.float64).to(device)
    t = torch.tensor([0.01, 0.1, 0.5, 1.0], dtype=torch.float64, device=device)
    assert torch.allclose(backbone(x, t), exact(x, t), rtol=1e-10, atol=0)
    assert torch.allclose(backbone.epsilon(x, t), exact.epsilon(x, t), rtol=1e-10, atol=1e-12)


def test_sigma_and_time_round_trip_exactly_in_float64(device):
    backbone = EDMBackbone(GaussianDenoiser(), VPSDE())
    t = torch.linspace(0.01, 1.0, 200, dtype=torch.float64, device=device)
    assert torch.allclose(backbone.time(backbone.sigma(t)), t, rtol=1e-12, atol=0)
    sigma = torch.logspace(-2, 2, 200, dtype=torch.float64, device=device)
    assert torch.allclose(backbone.sigma(backbone.time(sigma)), sigma, rtol=1e-12, atol=0)
