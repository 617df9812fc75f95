"""The defended model (purifier then classifier, a plain logits model), the purifier registry, and EOT."""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import nn

from runners.noise import derive_seeds
from runners.purifiers import DiffusionPurifier, IdentityPurifier, Purifier, PurifierConfig
from score_sde.adapter import VPBackbone
from utils.registry import Registry

BackboneFactory = Callable[[], VPBackbone]

PURIFIERS: Registry[Purifier] = Registry("purifier")


@PURIFIERS.register("none")
def _no_defense(config: PurifierConfig, backbone: BackboneFactory,
                guidance_classifier: Optional[nn.Module]) -> Purifier:
    """The undefended classifier."""
    return IdentityPurifier()


def _diffusion(config: PurifierConfig, backbone: BackboneFactory,
               guidance_classifier: Optional[nn.Module]) -> Purifier:
    """COUP, DiffPure or reverse-only, according to the preset of config.name."""
    return DiffusionPurifier(backbone(), config, guidance_classifier)


for _name in ("coup", "diffpure", "reverse_only"):
    PURIFIERS.register(_name)(_diffusion)


def build_purifier(config: PurifierConfig, backbone: BackboneFactory,
                   guidance_classifier: Optional[nn.Module] = None) -> Purifier:
    """Build the purifier named in config; the backbone is only loaded if the method needs one."""
    return PURIFIERS.build(config.name, config, backbone, guidance_classifier)


class DefendedClassifier(nn.Module):
    """logits = classifier(purifier(x)) for x (B, C, H, W) in [0, 1]; what every attack differentiates."""

    def __init__(self, purifier: Purifier, classifier: nn.Module) -> None:
        super().__init__()
        self.purifier, self.classifier = purifier, classifier

    def forward(self, x: torch.Tensor, noise_seeds: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Logits (B, num_classes); noise_seeds (B,) fixes each row's purification noise."""
        return self.classifier(self.purifier(x, noise_seeds))


def eot_logits(model: nn.Module, x: torch.Tensor, n_samples: int,
               noise_seeds: Optional[torch.Tensor] = None) -> torch.Tensor:
    """K stochastic forwards of x (B, ...) as one batched call: logits (K, B, num_classes).

    noise_seeds (B,) gives sample k of row b the seed derive_seeds(noise_seeds[b], k).
    """
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    batch = x.repeat(n_samples, *([1] * (x.dim() - 1)))
    if noise_seeds is None:
        logits = model(batch)
    else:
        seeds = torch.cat([derive_seeds(0, noise_seeds, k) for k in range(n_samples)])
        logits = model(batch, noise_seeds=seeds)
    return logits.view(n_samples, x.shape[0], -1)
