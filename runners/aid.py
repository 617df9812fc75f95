"""AID-Purifier (Hwang et al. 2021): a light discriminator D on taps of the frozen classifier, and purification
by signed-gradient ascent of log D(x) ("clean") inside an eps ball around the input.

D (facts from the paper's release, rewritten here): each enabled tap is globally average-pooled, then a 1x1
conv to 1024 channels + BatchNorm + ReLU and `bcd` more such 1024 -> 1024 blocks; the enabled taps are
concatenated along channels; `acd` blocks (1x1 conv + BN + ReLU) each halve the width; pool; linear to 1;
sigmoid (1 = clean). One difference: the release always builds all four tap encoders and multiplies the
disabled taps by 0 (so its concatenation is 4 x 1024 wide); here only the enabled taps are built, which
removes constant inputs and their weights (a 2-tap D after concatenation is 2048 -> 1024 -> 512 -> 256).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from classifiers.registry import resolve_path
from classifiers.taps import features, paper_tap_names, tap_channels, tap_modules
from runners.defended import PurifierContext, PurifierSpec
from runners.gradient_path import STRAIGHT_THROUGH, unrolled
from runners.purifiers import Purifier
from utils.checkpoints import CheckpointError, describe_mismatch, read_checkpoint, tensor_dict
from utils.config import require
from utils.images import check_images, refuse_inference_mode

WIDTH = 1024  # the release's DIM: encoder width per tap
AIDGradMode = Literal["exact", "create_graph", "bpda"]
TRAIN_COMMAND = "python -m training.train_aid --config configs/train/aid_fmnist.yml"


@dataclass(frozen=True, kw_only=True)
class AIDConfig:
    """YAML `purifier: {name: aid, ...}`; checkpoint resolves against the config file's folder."""

    name: str = "aid"
    checkpoint: str  # D's weights (AIDHead state_dict) written by training/train_aid.py
    taps: tuple[int, ...] = (1, 3)  # paper numbering 1..4 = conv1, block1, block2, block3 (CIFAR: 1 and 3)
    bcd: int = 1  # 1024 -> 1024 blocks per tap before the concatenation
    acd: int = 3  # width-halving blocks after the concatenation
    width: int = WIDTH
    def_step: int = 10
    eps: float = 8.0 / 255.0
    alpha: Optional[float] = None  # None: eps / 4, what the release hard-codes (its -def_alpha flag is ignored)
    grad_mode: AIDGradMode = "exact"  # attack gradient: exact (a.e.), create_graph (same value, verifies it), bpda

    def __post_init__(self) -> None:
        paper_tap_names(self.taps)
        require(self.bcd >= 0 and self.acd >= 0, f"purifier.bcd and acd must be >= 0, got {self.bcd}, {self.acd}")
        require(self.width >= 1, f"purifier.width must be >= 1, got {self.width}")
        require(self.def_step >= 0, f"purifier.def_step must be >= 0, got {self.def_step}")
        require(self.eps > 0, f"purifier.eps must be > 0, got {self.eps}")
        require(self.alpha is None or self.alpha > 0, f"purifier.alpha must be > 0, got {self.alpha}")

    @property
    def step_size(self) -> float:
        """The purification step alpha (eps / 4 unless set)."""
        return self.eps / 4.0 if self.alpha is None else self.alpha


def conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    """1x1 conv (with bias) + BatchNorm + ReLU on (B, C, 1, 1) pooled features."""
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, kernel_size=1), nn.BatchNorm2d(out_channels), nn.ReLU())


class AIDHead(nn.Module):
    """D's trainable part: {tap name: features (B, C, H, W)} -> logit of 'clean' (B,)."""

    def __init__(self, tap_widths: dict[str, int], bcd: int = 1, acd: int = 3, width: int = WIDTH) -> None:
        super().__init__()
        concat = width * len(tap_widths)
        if concat % 2**acd:
            raise ValueError(f"{len(tap_widths)} taps x width {width} cannot be halved {acd} times")
        self.encoders = nn.ModuleDict({
            name: nn.Sequential(conv_bn_relu(channels, width), *(conv_bn_relu(width, width) for _ in range(bcd)))
            for name, channels in tap_widths.items()})
        widths = [concat // 2**i for i in range(acd + 1)]
        self.after_concat = nn.Sequential(*(conv_bn_relu(widths[i], widths[i + 1]) for i in range(acd)))
        self.fc = nn.Linear(widths[-1], 1)

    def forward(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits (B,): pool each tap, encode, concatenate in tap order, halve acd times, pool, linear."""
        encoded = [encoder(feats[name].mean(dim=(2, 3), keepdim=True)) for name, encoder in self.encoders.items()]
        hidden = self.after_concat(torch.cat(encoded, dim=1))
        return self.fc(hidden.mean(dim=(2, 3))).squeeze(1)


@torch.no_grad()
def init_head_(head: AIDHead, generator: torch.Generator) -> AIDHead:
    """In place, as the release: conv weights N(0, 2 / fan_in), BN (1, 0), fc weights U(+-1/sqrt(fan_in)), fc bias 0.

    Conv biases are zeroed (the release keeps PyTorch's default; BatchNorm cancels them anyway).
    """
    for module in head.modules():
        if isinstance(module, nn.Conv2d):
            module.weight.normal_(0.0, math.sqrt(2.0 / module.in_channels), generator=generator)
            module.bias.zero_()
        elif isinstance(module, nn.BatchNorm2d):
            module.reset_parameters()
        elif isinstance(module, nn.Linear):
            module.weight.uniform_(-1.0 / math.sqrt(module.in_features), 1.0 / math.sqrt(module.in_features),
                                   generator=generator)
            module.bias.zero_()
    return head


class AIDDiscriminator(nn.Module):
    """D(x) = sigmoid(head(taps of classifier(x))): the 'clean' probability (B,) of images (B, C, H, W) in [0, 1].

    The classifier stays frozen in eval mode (train() only switches the head); the layers after the
    deepest tap are not run.
    """

    def __init__(self, classifier: nn.Module, head: AIDHead) -> None:
        super().__init__()
        self.classifier, self.head = classifier, head
        self.tapped = tap_modules(classifier, list(head.encoders))

    def train(self, mode: bool = True) -> AIDDiscriminator:
        """Switch the head's BatchNorm mode; the classifier always stays in eval mode."""
        super().train(mode)
        self.classifier.eval()
        return self

    def taps(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """{tap name: classifier features (B, C, H, W)} of x (B, C, H, W) in [0, 1]."""
        return features(self.classifier, x, self.tapped)

    def logit(self, x: torch.Tensor) -> torch.Tensor:
        """log D(x) - log(1 - D(x)), shape (B,)."""
        return self.head(self.taps(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """D(x) in (0, 1), shape (B,); 1 = clean."""
        return torch.sigmoid(self.logit(x))


def build_discriminator(classifier: nn.Module, taps: Sequence[int], bcd: int = 1, acd: int = 3,
                        width: int = WIDTH, seed: int = 0) -> AIDDiscriminator:
    """A freshly initialised D (head seeded by a torch.Generator) on the paper-numbered taps of classifier."""
    head = AIDHead(tap_channels(classifier, paper_tap_names(taps)), bcd, acd, width)
    init_head_(head, torch.Generator().manual_seed(seed))
    return AIDDiscriminator(classifier, head)


def load_head(head: AIDHead, path: Path) -> AIDHead:
    """Load D's weights (an AIDHead state_dict) from path into head, with one-line errors."""
    state = tensor_dict(read_checkpoint(path, f"train it with: {TRAIN_COMMAND}"), path, "AID discriminator")
    mismatch = describe_mismatch(head.state_dict(), state)
    if mismatch:
        raise CheckpointError(f"{path} does not fit this discriminator ({mismatch}); set purifier.taps / bcd / "
                              "acd / width to the values it was trained with")
    head.load_state_dict(state)
    return head


class AIDPurifier(Purifier):
    """def_step steps of x <- clip01(x0 + clip_eps(x + alpha sign(grad_x log D(x)) - x0)); deterministic.

    sign(grad log D) = sign(grad D) = sign(grad logit D), so this is the release's step (which ascends the
    sigmoid output) wherever its gradient does not underflow. Attack gradients (grad_mode):
    - 'exact': sign() has zero derivative almost everywhere, so the exact Jacobian of the purifier is the
      diagonal 0/1 mask of the clips, J_{k+1} = a_k (1 - b_k + b_k J_k) with J_0 = 1, d_k = x_k + alpha s_k - x0,
      b_k = [|d_k| < eps], a_k = [0 < x0 + clip_eps(d_k) < 1] (a value on a bound counts as clipped, as in
      autograd's clamp); D contributes nothing. The sign is therefore computed without a graph through D,
      and autograd differentiates only the clips.
    - 'create_graph': keeps D's gradient in the outer graph (create_graph=True); the same value at a higher
      cost, to verify the claim above.
    - 'bpda': the backward is the identity (x + (P(x) - x).detach()).
    """

    def __init__(self, discriminator: AIDDiscriminator, def_step: int = 10, eps: float = 8.0 / 255.0,
                 alpha: Optional[float] = None, grad_mode: AIDGradMode = "exact") -> None:
        super().__init__()
        if grad_mode not in PURIFY_MODES:
            raise ValueError(f"grad_mode must be one of {sorted(PURIFY_MODES)}, got {grad_mode!r}")
        self.discriminator = discriminator
        self.def_step, self.eps, self.grad_mode = int(def_step), float(eps), grad_mode
        self.alpha = self.eps / 4.0 if alpha is None else float(alpha)

    def ascent_sign(self, x: torch.Tensor, keep_graph: bool) -> torch.Tensor:
        """sign(grad_x sum_b log D(x_b)) (B, C, H, W); rows are independent (D in eval mode)."""
        with torch.enable_grad():
            x_in = x if keep_graph else x.detach().requires_grad_(True)
            objective = F.logsigmoid(self.discriminator.logit(x_in)).sum()
            (grad,) = torch.autograd.grad(objective, x_in, create_graph=keep_graph)
        return grad.sign()

    def purify(self, x0: torch.Tensor, keep_graph: bool) -> torch.Tensor:
        """The def_step projected sign-ascent steps from x0 (B, C, H, W) in [0, 1]."""
        x = x0
        for _ in range(self.def_step):
            step = x + self.alpha * self.ascent_sign(x, keep_graph) - x0
            x = (x0 + step.clamp(-self.eps, self.eps)).clamp(0.0, 1.0)
        return x

    def forward(self, x: torch.Tensor, noise_seeds: Optional[torch.Tensor] = None,
                labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Purified x (B, C, H, W) in [0, 1] within eps (Linf) of x; noise_seeds and labels are unused."""
        check_images(x)
        refuse_inference_mode("AID purification differentiates its discriminator")
        return PURIFY_MODES[self.grad_mode](self, x)


def _exact(purifier: AIDPurifier, x: torch.Tensor) -> torch.Tensor:
    """Purify; the outer graph sees the clips only (the exact a.e. derivative)."""
    return purifier.purify(x, keep_graph=False)


def _create_graph(purifier: AIDPurifier, x: torch.Tensor) -> torch.Tensor:
    """Purify with D's gradient kept in the outer graph when there is one."""
    return purifier.purify(x, keep_graph=torch.is_grad_enabled() and x.requires_grad)


def _bpda(purifier: AIDPurifier, x: torch.Tensor) -> torch.Tensor:
    """Purify; the outer backward is the identity."""
    return x + (purifier.purify(x.detach(), keep_graph=False) - x).detach()


PURIFY_MODES: dict[str, Callable[[AIDPurifier, torch.Tensor], torch.Tensor]] = {
    "exact": _exact, "create_graph": _create_graph, "bpda": _bpda}


def build_aid(config: AIDConfig, context: PurifierContext) -> AIDPurifier:
    """AID-Purifier on context.classifier's taps, D loaded from config.checkpoint and frozen."""
    discriminator = build_discriminator(context.classifier, config.taps, config.bcd, config.acd, config.width)
    load_head(discriminator.head, resolve_path(config.checkpoint, context.base_dir))
    discriminator.eval().requires_grad_(False)
    return AIDPurifier(discriminator, config.def_step, config.eps, config.step_size, config.grad_mode)


AID_PURIFIER = PurifierSpec(AIDConfig, build_aid, needs_backbone=False, gradient=unrolled(
    "the {def_step} purification steps; sign() has zero derivative almost everywhere, so only the clips count",
    bpda=STRAIGHT_THROUGH))
