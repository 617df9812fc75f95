"""The backbone adapter base: every diffusion network exposes epsilon(x, t) and score(x, t) in continuous VP time."""
from __future__ import annotations

import torch
from torch import nn

from diffusion.sde import VPSDE, _per_sample


class VPBackbone(nn.Module):
    """Base adapter: x (B, C, H, W) in [-1, 1], t scalar or (B,) in (0, 1]; score = -eps / sigma(t)."""

    def __init__(self, sde: VPSDE) -> None:
        super().__init__()
        self.sde = sde

    @property
    def network(self) -> nn.Module:
        """The module one call of which is one score-network evaluation (cost accounting): the adapter itself for a
        closed-form score; adapters of a network return the wrapped network, which every path calls."""
        return self

    def epsilon(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Predicted noise eps(x_t, t), shape of x."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Score s(x_t, t) = -eps(x_t, t) / sigma(t), shape of x."""
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
        return -self.epsilon(x, t) / _per_sample(self.sde.marginal_std(t), x)
