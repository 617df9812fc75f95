"""OpenAI's ADM (guided-diffusion) and improved-diffusion UNets, their schedules, and VP-time adapters."""
from guided_diffusion.adapter import (ADM_IMAGENET256_UNCOND, IMPROVED_CIFAR10_UNCOND, KNOWN_CHECKPOINTS,
                                      GuidedDiffusionBackbone, GuidedDiffusionConfig,
                                      PretrainedCheckpoint, load_backbone, load_unet)
from guided_diffusion.schedules import (ADM_IMAGENET256_SCHEDULE, BETA_SCHEDULES, IMPROVED_CIFAR10_SCHEDULE,
                                        DiscreteSchedule, ScheduleConfig, alpha_bar_to_timestep, cosine_betas,
                                        linear_betas, sigma_to_timestep)
from guided_diffusion.unet import UNetConfig, UNetModel, timestep_embedding
from utils.checkpoints import CheckpointError

__all__ = [
    "ADM_IMAGENET256_SCHEDULE", "ADM_IMAGENET256_UNCOND", "BETA_SCHEDULES", "CheckpointError", "DiscreteSchedule",
    "GuidedDiffusionBackbone", "GuidedDiffusionConfig", "IMPROVED_CIFAR10_SCHEDULE", "IMPROVED_CIFAR10_UNCOND",
    "KNOWN_CHECKPOINTS", "PretrainedCheckpoint", "ScheduleConfig", "UNetConfig", "UNetModel",
    "alpha_bar_to_timestep", "cosine_betas", "linear_betas", "load_backbone", "load_unet", "sigma_to_timestep",
    "timestep_embedding",
]
