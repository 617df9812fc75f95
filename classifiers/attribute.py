"""CelebA-HQ attribute classifiers of gan-ensembling (Chai et al. 2021), as DiffPure uses them (Eyeglasses, Smiling).

The network is the StyleGAN (v1) discriminator used for linear separability (Karras et al. 2019), written from
its architecture: equalised-learning-rate layers (weights stored unscaled, output = op(x, W) * gain / sqrt(fan_in)
+ b), a 1x1 fromrgb, one block per resolution (conv0, conv1, 2x2 average pool), a 4x4 head with two dense layers
and one logit. Widths are read from the checkpoint's shapes, so the real file and smaller ones load alike.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from classifiers.cohen import load_strict
from classifiers.registry import ClassifierConfig, require_file, require_shape, resolve_path
from utils.checkpoints import CheckpointError, read_checkpoint

CELEBAHQ_RESOLUTION = 256
LEAKY_SLOPE = 0.2
GAN_ENSEMBLING_ZIP = ("http://latent-composition.csail.mit.edu/other_projects/gan_ensembling/zips/"
                      "pretrained_classifiers.zip")


def attribute_source(attribute: str) -> str:
    """Where the classifier file of `attribute` is published and where it goes."""
    return (f"it is gan-ensembling's CelebA-HQ '{attribute}' classifier (github.com/chail/gan-ensembling): download "
            f"{GAN_ENSEMBLING_ZIP} (7.0 GB) and copy its celebahq/{attribute}/net_best.pth to "
            f"pretrained/celebahq/{attribute}/net_best.pth, or set classifier.checkpoint")


def stylegan_widths(resolution: int, fmap_base: int = 8192, fmap_decay: float = 1.0,
                    fmap_max: int = 512) -> tuple[int, ...]:
    """Channels entering the blocks at r = R, R/2, ..., 4: min(fmap_base / 2^((log2 r - 1) decay), fmap_max)."""
    levels = range(int(math.log2(resolution)), 1, -1)
    return tuple(min(int(fmap_base / 2.0 ** ((level - 1) * fmap_decay)), fmap_max) for level in levels)


@dataclass(frozen=True)
class AttributeNetShape:
    """Input resolution, the channels entering each block (R, R/2, ..., 4) and the hidden dense width."""

    resolution: int
    widths: tuple[int, ...]
    hidden: int

    @classmethod
    def stylegan(cls, resolution: int = CELEBAHQ_RESOLUTION, fmap_base: int = 8192, fmap_max: int = 512):
        """The shape of D(resolution, fmap_base, fmap_max) (the released classifiers: 256, 8192, 512)."""
        widths = stylegan_widths(resolution, fmap_base, 1.0, fmap_max)
        return cls(resolution, widths, widths[-1])

    @classmethod
    def from_state_dict(cls, state: Mapping[str, torch.Tensor]) -> "AttributeNetShape":
        """Read resolution (largest 'RxR.conv0'), block widths and hidden width from a state_dict's shapes."""
        resolutions = sorted((int(k.split("x")[0]) for k in state if k.endswith(".conv0.conv.weight")), reverse=True)
        if not resolutions or "4x4.dense0.linear.weight" not in state:
            raise CheckpointError("not a StyleGAN attribute classifier state_dict (no 'RxR.conv0' / '4x4.dense0' "
                                  "keys)")
        widths = [state[f"{r}x{r}.conv0.conv.weight"].shape[1] for r in resolutions]
        widths.append(state["4x4.conv.conv.weight"].shape[1])
        return cls(resolutions[0], tuple(int(w) for w in widths), int(state["4x4.dense0.linear.weight"].shape[0]))


class WScale(nn.Module):
    """The bias of an equalised layer (key `wscale.b`) and its run-time weight scale gain / sqrt(fan_in)."""

    def __init__(self, channels: int, fan_in: int, gain: float) -> None:
        super().__init__()
        self.scale = gain / math.sqrt(fan_in)
        self.b = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x * scale + b (b broadcast over the channel axis 1)."""
        return x * self.scale + self.b.view(1, -1, *([1] * (x.dim() - 2)))


class EqualConv(nn.Module):
    """k x k conv (padding k // 2) with equalised learning rate: conv(x, W) * sqrt(2) / sqrt(in k^2) + b."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, gain: float = math.sqrt(2.0)) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel, padding=kernel // 2, bias=False)
        self.wscale = WScale(out_ch, in_ch * kernel * kernel, gain)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.wscale(self.conv(x))


class EqualLinear(nn.Module):
    """Linear layer with equalised learning rate: x W^T * gain / sqrt(in) + b."""

    def __init__(self, in_features: int, out_features: int, gain: float = math.sqrt(2.0)) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, out_features, bias=False)
        self.wscale = WScale(out_features, in_features, gain)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.wscale(self.linear(x))


class FromRGB(nn.Module):
    """1x1 equalised conv 3 -> width, leaky ReLU 0.2."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.conv = EqualConv(in_ch, out_ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(self.conv(x), LEAKY_SLOPE)


class DownBlock(nn.Module):
    """lrelu(conv0(x)), then conv1 with its bias, 2x2 average pool, lrelu: (B, c, r, r) -> (B, c', r/2, r/2)."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.conv0 = EqualConv(in_ch, in_ch, 3)
        self.conv1 = EqualConv(in_ch, out_ch, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.leaky_relu(self.conv0(x), LEAKY_SLOPE)
        return F.leaky_relu(F.avg_pool2d(self.conv1(h), 2), LEAKY_SLOPE)


class Head(nn.Module):
    """4x4: lrelu(conv), flatten (C, H, W), lrelu(dense0), dense1 (gain 1) -> one logit."""

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.conv = EqualConv(channels, channels, 3)
        self.dense0 = EqualLinear(channels * 16, hidden)
        self.dense1 = EqualLinear(hidden, 1, gain=1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.leaky_relu(self.conv(x), LEAKY_SLOPE).flatten(1)
        return self.dense1(F.leaky_relu(self.dense0(h), LEAKY_SLOPE))


class AttributeNet(nn.Module):
    """D(x): x (B, 3, R, R) in [-1, 1] -> raw logit (B, 1); trained so that l < 0 means 'attribute present'."""

    def __init__(self, shape: AttributeNetShape) -> None:
        super().__init__()
        self.shape = shape
        self.register_buffer("lod_in", torch.tensor(0.0, dtype=torch.float64))  # unused; stored in the files
        self.fromrgb_lod0 = FromRGB(3, shape.widths[0])
        resolutions = [shape.resolution // 2 ** i for i in range(len(shape.widths))]
        self.stage_names = [f"{r}x{r}" for r in resolutions]  # the released key prefixes, input to head
        for name, in_ch, out_ch in zip(self.stage_names[:-1], shape.widths[:-1], shape.widths[1:]):
            self.add_module(name, DownBlock(in_ch, out_ch))
        self.add_module(self.stage_names[-1], Head(shape.widths[-1], shape.hidden))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fromrgb_lod0(x)
        for name in self.stage_names:
            h = getattr(self, name)(h)
        return h


class AttributeClassifier(nn.Module):
    """x (B, 3, H, W) in [0, 1] -> logits (B, 2) = [l, -l], l = D((x - 0.5) / 0.5); class 1 = attribute present.

    Inputs larger than the net's resolution are box-averaged by an integer factor (1024 -> 256), as released.
    """

    def __init__(self, net: AttributeNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = self.net.shape.resolution
        if x.dim() != 4 or x.shape[-1] != x.shape[-2] or x.shape[-1] % size:
            raise ValueError(f"attribute classifier: expected square images of size {size} (or a multiple), "
                             f"got shape {tuple(x.shape)}; resize the images to {size}x{size}")
        factor = x.shape[-1] // size
        if factor > 1:
            x = F.avg_pool2d(x, factor)
        logit = self.net((x - 0.5) / 0.5)
        return torch.cat([logit, -logit], dim=1)


def load_attribute_classifier(path: Path, source: str) -> AttributeClassifier:
    """The classifier in gan-ensembling's file layout ({'state_dict', 'optimizer', 'epoch', 'valacc'})."""
    raw = read_checkpoint(require_file(path, source), source)
    state = raw.get("state_dict") if isinstance(raw, dict) else None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a dict with a 'state_dict' entry (gan-ensembling's net_best.pth "
                              f"layout); {source}")
    net = AttributeNet(AttributeNetShape.from_state_dict(state))
    return AttributeClassifier(load_strict(net, state, path))


def _celebahq_classifier(attribute: str):
    """The registry constructor of the CelebA-HQ `attribute` classifier (default file under pretrained/celebahq/)."""

    def build(config: ClassifierConfig, base_dir: Path) -> nn.Module:
        require_shape(config, in_channels=3, num_classes=2)
        path = resolve_path(config.checkpoint or f"pretrained/celebahq/{attribute}/net_best.pth", base_dir)
        return load_attribute_classifier(path, attribute_source(attribute))

    build.__doc__ = f"gan-ensembling's CelebA-HQ '{attribute}' classifier: [0, 1] 256x256 -> 2 logits."
    return build


celebahq_eyeglasses = _celebahq_classifier("Eyeglasses")
celebahq_smiling = _celebahq_classifier("Smiling")
