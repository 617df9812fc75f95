"""Backbone adapters: every diffusion network exposes epsilon(x, t) and score(x, t) in continuous VP time."""
from __future__ import annotations

import torch
from torch import nn

from score_sde.sde import VPSDE, _per_sample


class VPBackbone(nn.Module):
    """Base adapter: x (B, C, H, W) in [-1, 1], t scalar or (B,) in (0, 1]; score = -eps / sigma(t)."""

    def __init__(self, sde: VPSDE) -> None:
        super().__init__()
        self.sde = sde

    def epsilon(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Predicted noise eps(x_t, t), shape of x."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Score s(x_t, t) = -eps(x_t, t) / sigma(t), shape of x."""
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
        return -self.epsilon(x, t) / _per_sample(self.sde.marginal_std(t), x)


class ScoreSDEBackbone(VPBackbone):
    """Score-SDE continuous VP network called as net(x, 999 t), as the official code does."""

    def __init__(self, net: nn.Module, sde: VPSDE) -> None:
        super().__init__(sde)
        self.net = net
        self.time_scale = float(sde.num_scales - 1)

    def epsilon(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """eps(x_t, t) = net(x_t, 999 t); t broadcast to (B,)."""
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device).expand(x.shape[0])
        return self.net(x, self.time_scale * t)
