"""Small deterministic stand-ins shared by the tests: a float64-friendly classifier and Gaussian backbones."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from score_sde.analytic import GaussianBackbone
from diffusion.sde import VPSDE


class TinyClassifier(nn.Module):
    """Smooth MLP classifier on flattened [0, 1] images (B, C, H, W) -> logits (B, num_classes)."""

    def __init__(self, in_features: int, num_classes: int = 3, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.w1 = nn.Parameter(torch.randn(in_features, 16, generator=gen) / in_features**0.5)
        self.w2 = nn.Parameter(torch.randn(16, num_classes, generator=gen))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(x.flatten(1) @ self.w1.to(x.dtype) * 3.0)
        return h @ self.w2.to(x.dtype)


class ReLUClassifier(nn.Module):
    """Piecewise-linear MLP (nn.ReLU modules) on flattened [0, 1] images (B, C, H, W) -> logits (B, num_classes)."""

    def __init__(self, in_features: int, num_classes: int = 3, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(in_features, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(),
                                 nn.Linear(16, num_classes))
        with torch.no_grad():
            for layer in self.net:
                if isinstance(layer, nn.Linear):
                    layer.weight.copy_(torch.randn(layer.weight.shape, generator=gen) * 3.0 / layer.in_features**0.5)
                    layer.bias.copy_(0.3 * torch.randn(layer.bias.shape, generator=gen))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def gaussian_backbone(mu: float = 0.1, sigma0: float = 0.2) -> GaussianBackbone:
    """Closed-form VP score of N(mu, sigma0^2) data in [-1, 1] space."""
    return GaussianBackbone(VPSDE(0.1, 20.0, 1000), mu, sigma0)


def interrupt_on_call(monkeypatch, table: dict, key: str, call: int) -> Callable:
    """Replace table[key] by a wrapper that raises KeyboardInterrupt on its `call`-th call (Ctrl-C mid-run);
    returns the original, to put back for the resume."""
    original, calls = table[key], {"n": 0}

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == call:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setitem(table, key, interrupted)
    return original
