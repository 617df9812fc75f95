"""SDEdit's CelebA-HQ DDPM as a VP backbone: its config, where the checkpoint is published, strict loading."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ddpm.unet import DDPMUNet, DDPMUNetConfig
from guided_diffusion.adapter import GuidedDiffusionBackbone
from utils.checkpoints import load_strict
from guided_diffusion.schedules import DiscreteSchedule, ScheduleConfig
from diffusion.sde import VPSDE

CELEBAHQ_CHECKPOINT_PATH = "pretrained/ddpm/celeba_hq.ckpt"
CELEBAHQ_CHECKPOINT_URL = "https://image-editing-test-12345.s3-us-west-2.amazonaws.com/checkpoints/celeba_hq.ckpt"
CELEBAHQ_HINT = (f"it is SDEdit's CelebA-HQ DDPM (ermongroup/SDEdit and NVlabs/DiffPure READMEs): download "
                 f"{CELEBAHQ_CHECKPOINT_URL} (about 455 MB) to {CELEBAHQ_CHECKPOINT_PATH} or set backbone.checkpoint")


@dataclass(frozen=True)
class DDPMConfig:
    """YAML `backbone.model` of name 'ddpm': the UNet options and its discrete schedule (linear 1e-4..0.02, 1000)."""

    unet: DDPMUNetConfig = DDPMUNetConfig()
    schedule: ScheduleConfig = ScheduleConfig(name="linear", num_steps=1000, rescale_timesteps=False)


CELEBAHQ_DDPM = DDPMConfig()


def load_ddpm_unet(config: DDPMUNetConfig, path: str | Path) -> DDPMUNet:
    """DDPMUNet(config) in eval mode with the plain state_dict at `path` (weights_only, strict)."""
    options = "ch, ch_mult, num_res_blocks, attn_resolutions and image_size"
    return load_strict(DDPMUNet(config), Path(path), CELEBAHQ_HINT, options)


def load_ddpm_backbone(config: DDPMConfig, path: str | Path, sde: VPSDE) -> GuidedDiffusionBackbone:
    """The DDPM at `path` seen as eps(x_t, t) / score in continuous VP time (the ADM adapter's time mapping)."""
    net = load_ddpm_unet(config.unet, path)
    return GuidedDiffusionBackbone(net, DiscreteSchedule.from_config(config.schedule), sde).eval()
