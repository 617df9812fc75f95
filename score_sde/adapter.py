"""The Score-SDE backbone adapter: the NCSN++ network called in continuous VP time."""
from __future__ import annotations

import torch
from torch import nn

from diffusion.backbone import VPBackbone
from diffusion.sde import VPSDE


class ScoreSDEBackbone(VPBackbone):
    """Score-SDE continuous VP network called as net(x, 999 t), as the official code does."""

    def __init__(self, net: nn.Module, sde: VPSDE) -> None:
        super().__init__(sde)
        self.net = net
        self.time_scale = float(sde.num_scales - 1)

    @property
    def network(self) -> nn.Module:
        """The wrapped network: every score evaluation calls it once."""
        return self.net

    def epsilon(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """eps(x_t, t) = net(x_t, 999 t); t broadcast to (B,)."""
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device).expand(x.shape[0])
        return self.net(x, self.time_scale * t)
