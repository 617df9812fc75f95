"""Backbone registry: YAML `backbone:` -> a VPBackbone (score / epsilon in continuous VP time)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from ddpm import DDPMConfig, load_ddpm_backbone
from edm import SongUNetConfig, load_edm_backbone
from guided_diffusion import GuidedDiffusionConfig, load_backbone
from diffusion.sde import VPSDE
from score_sde import NCSNppConfig, ScoreSDEBackbone, load_score_model
from score_sde.analytic import GaussianBackbone
from utils.config import from_dict, require
from utils.paths import candidates, resolve_path
from utils.registry import Registry


@dataclass(frozen=True)
class BackboneConfig:
    """YAML `backbone:`: a registered name, its checkpoint (relative to the config file) and model options."""

    name: str
    checkpoint: Optional[str] = None
    model: Optional[dict[str, Any]] = None
    beta_min: float = 0.1
    beta_max: float = 20.0
    num_scales: int = 1000
    source: Optional[str] = None  # where to get the checkpoint (the missing-file message); None: the loader's own

    def __post_init__(self) -> None:
        require(0.0 < self.beta_min < self.beta_max, "backbone: need 0 < beta_min < beta_max")

    def sde(self) -> VPSDE:
        """The VP-SDE the purifier integrates."""
        return VPSDE(self.beta_min, self.beta_max, self.num_scales)


@dataclass(frozen=True)
class GaussianModelConfig:
    """Data N(mu, sigma0^2 I) in [-1, 1] space (closed-form score; toy experiments and tests)."""

    mu: float = 0.0
    sigma0: float = 0.5


@dataclass(frozen=True)
class BackboneSpec:
    """How a backbone kind parses its `model:` options and builds the adapter from a checkpoint."""

    model_type: type
    build: Callable[[Any, Optional[Path], VPSDE], Any]
    needs_checkpoint: bool = True


BACKBONES: Registry[BackboneSpec] = Registry("backbone")
BACKBONES.register("score_sde")(BackboneSpec(
    NCSNppConfig, lambda model, path, sde: ScoreSDEBackbone(load_score_model(model, path), sde)))
BACKBONES.register("guided_diffusion")(BackboneSpec(GuidedDiffusionConfig, load_backbone))
BACKBONES.register("ddpm")(BackboneSpec(DDPMConfig, load_ddpm_backbone))
BACKBONES.register("edm")(BackboneSpec(SongUNetConfig, load_edm_backbone))
BACKBONES.register("gaussian")(BackboneSpec(
    GaussianModelConfig, lambda model, path, sde: GaussianBackbone(sde, model.mu, model.sigma0),
    needs_checkpoint=False))


def parse_backbone_model(config: BackboneConfig) -> Any:
    """The typed model options of config (validated; raises ConfigError)."""
    return from_dict(BACKBONES.get(config.name).model_type, config.model or {}, "backbone.model")


def build_backbone(config: BackboneConfig, base_dir: Path):
    """Load the backbone; its checkpoint is found by the config path rule (utils.paths: config folder, then repo)."""
    spec = BACKBONES.get(config.name)
    require(config.checkpoint is not None or not spec.needs_checkpoint,
            f"backbone '{config.name}' needs backbone.checkpoint (a path relative to the config file)")
    path = resolve_path(config.checkpoint, base_dir) if config.checkpoint else None
    try:
        return spec.build(parse_backbone_model(config), path, config.sde()).eval()
    except FileNotFoundError as err:
        if path is None or path.is_file():
            raise
        places = " and ".join(map(str, candidates(config.checkpoint, base_dir)))
        source = f"; {config.source}" if config.source is not None else ""
        raise FileNotFoundError(f"{err} (looked for {config.checkpoint} in {places}){source}") from None
