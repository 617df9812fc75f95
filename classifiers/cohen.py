"""Randomized-smoothing base classifiers in Cohen et al.'s checkpoint format, and torchvision's ImageNet ResNet-50.

Cohen's checkpoints are {'arch': str, 'state_dict': ...} of Sequential(NormalizeLayer, net): the net's keys carry
the prefix '1.' ('1.module.' for the DataParallel ImageNet ResNet-50) and the normaliser has no tensors (keys '0.*'
are ignored when present). Every model here takes [0, 1] images and normalises inside.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from classifiers.registry import ClassifierConfig, find_weights, require_file, require_shape
from classifiers.wide_resnet import Normalized
from utils.checkpoints import CheckpointError, describe_mismatch, read_checkpoint

log = logging.getLogger(__name__)

COHEN_CIFAR10_MEAN, COHEN_CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
VIT_MEAN, VIT_STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)  # DiffSmooth's BEiT normaliser

COHEN_CIFAR10_PATH = "pretrained/cohen/models/cifar10/resnet110/noise_0.25/checkpoint.pth.tar"
COHEN_IMAGENET_PATH = "pretrained/cohen/models/imagenet/resnet50/noise_0.25/checkpoint.pth.tar"
DIFFSMOOTH_BEIT_PATH = "pretrained/diffsmooth/beit_large_patch16_224/noise_sd0.25/checkpoint.pth.tar"
IMAGENET_RESNET50_PATH = "pretrained/imagenet/resnet50-0676ba61.pth"

COHEN_SOURCE = ("it is one of Cohen et al.'s randomized-smoothing release models (github.com/locuslab/smoothing, "
                "README 'Getting started': download models.tar and unpack its 'models' folder under "
                "pretrained/cohen/), or set classifier.checkpoint")
BEIT_SOURCE = ("it is DiffSmooth's Gaussian-augmented BEiT-L/16 (github.com/javyduck/DiffSmooth README, 'Smoothed "
               "Models'); download it there, or set classifier.checkpoint")
RESNET50_SOURCE = ("it is torchvision's ResNet50_Weights.IMAGENET1K_V1 (the weights DiffPure used); download "
                   "https://download.pytorch.org/models/resnet50-0676ba61.pth there, or set classifier.checkpoint")


class BasicBlock(nn.Module):
    """CIFAR ResNet block: conv3x3-BN-ReLU-conv3x3-BN plus identity (or 1x1 conv + BN when the shape changes)."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()
        self.downsample = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_planes, H, W) -> (B, planes, H / stride, W / stride)."""
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + shortcut)


class CifarResNet(nn.Module):
    """He et al.'s CIFAR ResNet (depth 6n + 2, BasicBlocks, 16/32/64 channels) with Cohen's module names."""

    def __init__(self, depth: int = 110, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n + 2 (20, 32, 56, 110, ...), got {depth}")
        blocks = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU()
        self.layer1 = self._stage(16, 16, blocks, stride=1)
        self.layer2 = self._stage(16, 32, blocks, stride=2)
        self.layer3 = self._stage(32, 64, blocks, stride=2)
        self.fc = nn.Linear(64, num_classes)

    @staticmethod
    def _stage(in_planes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
        """`blocks` BasicBlocks, the first one strided."""
        return nn.Sequential(BasicBlock(in_planes, planes, stride),
                             *(BasicBlock(planes, planes) for _ in range(blocks - 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised images (B, C, 32, 32) -> logits (B, num_classes); global average pool (8x8 at 32x32 input)."""
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return self.fc(out.mean(dim=(2, 3)))


def read_cohen_checkpoint(path: Path, source: str) -> tuple[str, dict[str, torch.Tensor]]:
    """(arch, net state_dict) of a Cohen-format file: keys '1.' / '1.module.' stripped, normaliser keys dropped."""
    raw = read_checkpoint(require_file(path, source), source)
    if not isinstance(raw, dict) or not isinstance(raw.get("arch"), str) or not isinstance(raw.get("state_dict"), dict):
        found = sorted(map(str, raw))[:5] if isinstance(raw, dict) else type(raw).__name__
        raise CheckpointError(f"{path} is not in Cohen's format {{'arch': str, 'state_dict': ...}} (found {found})")
    state = {}
    for key, value in raw["state_dict"].items():
        head, _, rest = key.partition(".")
        if head == "0":
            continue
        if head != "1" or not rest:
            raise CheckpointError(f"{path}: key '{key}' is not under '1.' (Sequential(NormalizeLayer, net))")
        state[rest.removeprefix("module.")] = value
    return raw["arch"], state


def require_arch(arch: str, expected: tuple[str, ...], path: Path, name: str) -> None:
    """Fail unless the checkpoint's arch is one classifier `name` builds."""
    if arch not in expected:
        raise CheckpointError(f"{path} holds arch '{arch}', but classifier '{name}' builds {list(expected)}; "
                              "pick the classifier name that matches the checkpoint")


def load_strict(net: nn.Module, state: Mapping[str, torch.Tensor], path: Path) -> nn.Module:
    """net with `state` loaded strictly; a mismatch names the differing keys."""
    expected = net.state_dict()
    counters = {k: v for k, v in expected.items() if k.endswith("num_batches_tracked") and k not in state}
    state = {**state, **counters}  # checkpoints from before PyTorch 0.4.1 lack BatchNorm's (unused) counters
    problems = describe_mismatch(expected, state)
    if problems:
        raise CheckpointError(f"{path} does not fit {type(net).__name__}: {problems}")
    net.load_state_dict(state, strict=True)
    log.info("loaded %s (%d tensors)", path, len(state))
    return net


def cohen_cifar10_resnet110(config: ClassifierConfig, base_dir: Path) -> nn.Module:
    """Cohen's CIFAR-10 ResNet-110 ('cifar_resnet110'), Gaussian-noise trained; CIFAR mean/std inside."""
    require_shape(config, in_channels=3, num_classes=10)
    path = find_weights(config.checkpoint or COHEN_CIFAR10_PATH, base_dir, COHEN_SOURCE)
    arch, state = read_cohen_checkpoint(path, COHEN_SOURCE)
    require_arch(arch, ("cifar_resnet110",), path, config.name)
    return Normalized(load_strict(CifarResNet(110, 10), state, path), COHEN_CIFAR10_MEAN, COHEN_CIFAR10_STD)


def torchvision_resnet50() -> nn.Module:
    """torchvision's ResNet-50 (1000 classes) with random weights; nothing is downloaded."""
    import torchvision

    with torch.random.fork_rng(devices=[]):
        return torchvision.models.resnet50(weights=None)


def cohen_imagenet_resnet50(config: ClassifierConfig, base_dir: Path) -> nn.Module:
    """Cohen's ImageNet ResNet-50 ('resnet50', DataParallel keys), Gaussian-noise trained; ImageNet mean/std inside."""
    require_shape(config, in_channels=3, num_classes=1000)
    path = find_weights(config.checkpoint or COHEN_IMAGENET_PATH, base_dir, COHEN_SOURCE)
    arch, state = read_cohen_checkpoint(path, COHEN_SOURCE)
    require_arch(arch, ("resnet50",), path, config.name)
    return Normalized(load_strict(torchvision_resnet50(), state, path), IMAGENET_MEAN, IMAGENET_STD)


def timm_beit(arch: str) -> nn.Module:
    """timm's BEiT `arch` (e.g. 'beit_large_patch16_224') with random weights: pretrained=False, no download."""
    import timm

    known = timm.list_models("beit*")
    if arch not in known:
        raise CheckpointError(f"arch '{arch}' is not a timm BEiT model; timm {timm.__version__} has {known}")
    with torch.random.fork_rng(devices=[]):
        return timm.create_model(arch, pretrained=False)


def beit_state(net: nn.Module, state: dict[str, Any]) -> dict[str, Any]:
    """Drop stored relative_position_index tables (older timm saved them; newer timm rebuilds them, non-persistent)."""
    expected = net.state_dict()
    return {k: v for k, v in state.items() if k in expected or not k.endswith("relative_position_index")}


def timm_beit_classifier(config: ClassifierConfig, base_dir: Path) -> nn.Module:
    """DiffSmooth's ImageNet BEiT in Cohen's format (arch = the timm name); (x - 0.5) / 0.5 inside, 224x224 input."""
    require_shape(config, in_channels=3, num_classes=1000)
    path = find_weights(config.checkpoint or DIFFSMOOTH_BEIT_PATH, base_dir, BEIT_SOURCE)
    arch, state = read_cohen_checkpoint(path, BEIT_SOURCE)
    net = timm_beit(arch)
    return Normalized(load_strict(net, beit_state(net, state), path), VIT_MEAN, VIT_STD)


def imagenet_resnet50(config: ClassifierConfig, base_dir: Path) -> nn.Module:
    """torchvision's standard ImageNet ResNet-50 from a local state_dict file; ImageNet mean/std inside."""
    require_shape(config, in_channels=3, num_classes=1000)
    path = find_weights(config.checkpoint or IMAGENET_RESNET50_PATH, base_dir, RESNET50_SOURCE)
    raw = read_checkpoint(require_file(path, RESNET50_SOURCE), RESNET50_SOURCE)
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: expected a torchvision state_dict, got {type(raw).__name__}")
    return Normalized(load_strict(torchvision_resnet50(), raw, path), IMAGENET_MEAN, IMAGENET_STD)
