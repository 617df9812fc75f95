"""Loading Chen et al.'s EDM checkpoints (plain EDMPrecond state dicts, keys 'model.*') strictly, weights only."""
from __future__ import annotations

from pathlib import Path

from diffusion.sde import VPSDE
from edm.adapter import EDMBackbone
from edm.config import SongUNetConfig
from edm.precond import EDMPrecond
from utils.checkpoints import load_strict

EDM_HINT = ("it is Chen et al.'s EDM DDPM++ (edm_cifar_uncond_vp.pt for CIFAR-10, edm_cifar100_uncond_vp.pt for "
            "CIFAR-100): the huanranchen/DiffusionClassifier README links its Google Drive folder "
            "(resources/checkpoints/EDM/ there); put it under pretrained/edm/ or set backbone.checkpoint")
OPTIONS = "model_channels, channel_mult, num_blocks, attn_resolutions, augment_dim and img_resolution"


def load_edm_denoiser(config: SongUNetConfig, path: str | Path) -> EDMPrecond:
    """EDMPrecond(config) in eval mode with the state dict at `path` (weights_only, strict; one-line errors)."""
    return load_strict(EDMPrecond(config), Path(path), EDM_HINT, OPTIONS)


def load_edm_backbone(config: SongUNetConfig, path: str | Path, sde: VPSDE) -> EDMBackbone:
    """The EDM denoiser at `path` seen as a VP backbone (eps and score in continuous VP time)."""
    return EDMBackbone(load_edm_denoiser(config, path), sde).eval()
