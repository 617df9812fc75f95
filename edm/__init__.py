"""EDM's DDPM++ denoiser (SongUNet inside EDMPrecond) and its VP adapter: the backbone of Chen et al.'s LM."""
from edm.adapter import EDMBackbone
from edm.config import SongUNetConfig
from edm.loader import EDM_HINT, load_edm_backbone, load_edm_denoiser
from edm.precond import EDMPrecond
from edm.unet import SongUNet

__all__ = ["EDMBackbone", "EDMPrecond", "EDM_HINT", "SongUNet", "SongUNetConfig", "load_edm_backbone",
           "load_edm_denoiser"]
