"""WideResNets built from RobustBench's architecture class (TRADES layout), adapted in channels and initialised from a seed."""
from __future__ import annotations

import importlib
import math
from typing import Sequence

import torch
from torch import nn

from utils.compat import import_robustbench

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2471, 0.2435, 0.2616)


def robustbench_wide_resnet_class() -> type[nn.Module]:
    """robustbench.model_zoo.architectures.wide_resnet.WideResNet (conv1, block1-3, bn1, fc; 32x32 input)."""
    import_robustbench()
    return importlib.import_module("robustbench.model_zoo.architectures.wide_resnet").WideResNet


def wide_resnet(depth: int, widen_factor: int, in_channels: int = 3, num_classes: int = 10,
                drop_rate: float = 0.0, seed: int | None = None) -> nn.Module:
    """WRN-depth-widen_factor for (B, in_channels, 32, 32) inputs -> logits (B, num_classes).

    The global torch RNG is left untouched; with `seed` the weights are initialised from a
    torch.Generator seeded with it (He-normal convs as in the WRN paper, unit BatchNorm, uniform fc).
    """
    if (depth - 4) % 6 != 0:
        raise ValueError(f"WideResNet depth must be 6n + 4 (10, 16, 28, 70, ...), got {depth}")
    with torch.random.fork_rng(devices=[]):
        model = robustbench_wide_resnet_class()(depth=depth, num_classes=num_classes,
                                                widen_factor=widen_factor, dropRate=drop_rate)
        if in_channels != model.conv1.in_channels:
            model.conv1 = nn.Conv2d(in_channels, model.conv1.out_channels, kernel_size=3, stride=1,
                                    padding=1, bias=False)
    if seed is not None:
        init_wide_resnet_(model, torch.Generator().manual_seed(seed))
    return model


@torch.no_grad()
def init_wide_resnet_(model: nn.Module, generator: torch.Generator) -> None:
    """In place: conv weights ~ N(0, 2 / (k * k * out_channels)), BatchNorm (1, 0), fc ~ U(+-1/sqrt(fan_in)), zero biases."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels
            module.weight.normal_(0.0, math.sqrt(2.0 / fan_out), generator=generator)
        elif isinstance(module, nn.BatchNorm2d):
            module.weight.fill_(1.0)
            module.bias.zero_()
        elif isinstance(module, nn.Linear):
            bound = 1.0 / math.sqrt(module.in_features)
            module.weight.uniform_(-bound, bound, generator=generator)
            if module.bias is not None:
                module.bias.zero_()


class Normalized(nn.Module):
    """logits = net((x - mean) / std) for x (B, C, H, W) in [0, 1]; mean/std are non-persistent buffers."""

    def __init__(self, net: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, num_classes) of the normalised images."""
        return self.net((x - self.mean) / self.std)
