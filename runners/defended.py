"""The defended model (purifier then classifier, a plain logits model), the purifier registry, and row chunking."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import nn

from runners.purifiers import (PRESETS, DiffusionPurifier, IdentityPurifier, Purifier, PurifierConfig,
                               resolve_purifier_config)
from diffusion.backbone import VPBackbone
from runners.gradient_path import GradientText, diffusion_gradient, no_purifier
from utils.config import from_dict
from utils.images import check_dtype, check_images
from utils.registry import Lazy, Registry


@dataclass(frozen=True)
class PurifierContext:
    """What a purifier may be built from: a lazy backbone, the classifiers, the config file's folder."""

    backbone: Callable[[], VPBackbone]
    classifier: nn.Module
    guidance_classifier: Optional[nn.Module] = None
    base_dir: Path = Path(".")


@dataclass(frozen=True)
class NoDefenseConfig:
    """YAML `purifier: {name: none}`."""

    name: str = "none"


@dataclass(frozen=True)
class PurifierSpec:
    """A purifier kind: the dataclass its YAML section is read into, its constructor, and (gradient) the sentence
    saying how the defended model's backward treats it, from its resolved config as a dict."""

    config_type: type
    build: Callable[[Any, PurifierContext], Purifier]
    resolve: Callable[[Any], Any] = lambda config: config
    needs_backbone: bool = True
    gradient: GradientText = field(kw_only=True)


def _diffusion(config: PurifierConfig, context: PurifierContext) -> Purifier:
    """COUP, DiffPure or reverse-only (the preset of config.name); guidance by the guidance classifier."""
    guidance = context.guidance_classifier if context.guidance_classifier is not None else context.classifier
    return DiffusionPurifier(context.backbone(), config, guidance)


DIFFUSION_PURIFIER = PurifierSpec(PurifierConfig, _diffusion, resolve_purifier_config, gradient=diffusion_gradient)
PURIFIERS: Registry[PurifierSpec] = Registry("purifier", {
    "none": PurifierSpec(NoDefenseConfig, lambda config, context: IdentityPurifier(), needs_backbone=False,
                         gradient=no_purifier),
    **{name: DIFFUSION_PURIFIER for name in PRESETS},
    "aid": Lazy("runners.aid", "AID_PURIFIER"),
    "diffpure_ddpm": Lazy("runners.ancestral", "ANCESTRAL_PURIFIER"),
    "lm": Lazy("runners.lm", "LM_PURIFIER"),
    "coup_lm": Lazy("runners.lm", "LM_PURIFIER"),
})


def parse_purifier_config(raw: dict[str, Any]) -> Any:
    """Read YAML `purifier:` into the config dataclass of the named kind, validated and presets resolved."""
    if not isinstance(raw, dict) or "name" not in raw:
        raise ValueError(f"purifier: needs a 'name' (one of {', '.join(PURIFIERS.names())})")
    spec = PURIFIERS.get(raw["name"])
    return spec.resolve(from_dict(spec.config_type, raw, "purifier"))


def gradient_statement(purifier: dict[str, Any]) -> str:
    """One sentence naming the gradient path through a resolved purifier config (runners.gradient_path)."""
    return PURIFIERS.get(purifier["name"]).gradient(purifier)


def needs_backbone(config: Any) -> bool:
    """Whether the purifier named in config loads a diffusion backbone."""
    return PURIFIERS.get(config.name).needs_backbone


def build_purifier(config: Any, context: PurifierContext) -> Purifier:
    """Build the purifier named in config; the backbone is only loaded if the method needs one."""
    return PURIFIERS.get(config.name).build(config, context)


# (x (B, C, H, W), noise seeds (B,) or None) -> outputs (B, ...): a model call over rows that are independent
RowsFn = Callable[[torch.Tensor, Optional[torch.Tensor]], torch.Tensor]


def in_chunks(forward: RowsFn, x: torch.Tensor, noise_seeds: Optional[torch.Tensor],
              max_rows: Optional[int]) -> torch.Tensor:
    """forward(x, noise_seeds) over consecutive chunks of at most max_rows rows of x (B, ...), concatenated (B, ...).

    One call when max_rows is None or B <= max_rows. Each row's purification noise comes from its own seed, so a
    chunked call gives the rows of one call (without seeds, each chunk draws fresh noise, as any call does).
    """
    if max_rows is None or x.shape[0] <= max_rows:
        return forward(x, noise_seeds)
    parts = [forward(x[start:start + max_rows], None if noise_seeds is None else noise_seeds[start:start + max_rows])
             for start in range(0, x.shape[0], max_rows)]
    return torch.cat(parts)


class DefendedClassifier(nn.Module):
    """logits = classifier(purifier(x)) for x (B, C, H, W) in [0, 1]; what every attack differentiates.

    max_batch (eval.max_batch): at most this many rows go through the purifier and classifier at once.
    """

    def __init__(self, purifier: Purifier, classifier: nn.Module, max_batch: Optional[int] = None) -> None:
        super().__init__()
        self.purifier, self.classifier = purifier, classifier
        self.max_batch = max_batch

    def forward(self, x: torch.Tensor, noise_seeds: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Logits (B, num_classes); noise_seeds (B,) (host tensor) fixes each row's purification noise."""
        check_images(x)
        check_dtype(x, self.classifier)
        return in_chunks(lambda rows, seeds: self.classifier(self.purifier(rows, seeds)), x, noise_seeds,
                         self.max_batch)
