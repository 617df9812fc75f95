"""The DDPM UNet of Ho et al. 2020 (SDEdit's CelebA-HQ model) and its VP-backbone adapter."""
from ddpm.adapter import CELEBAHQ_DDPM, DDPMConfig, load_ddpm_backbone, load_ddpm_unet
from ddpm.unet import DDPMUNet, DDPMUNetConfig, sinusoidal_embedding

__all__ = ["CELEBAHQ_DDPM", "DDPMConfig", "DDPMUNet", "DDPMUNetConfig", "load_ddpm_backbone", "load_ddpm_unet",
           "sinusoidal_embedding"]
