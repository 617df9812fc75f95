"""VP-time adapters for the OpenAI UNets, the released models' configs, and checkpoint loading."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from guided_diffusion.schedules import (ADM_IMAGENET256_SCHEDULE, IMPROVED_CIFAR10_SCHEDULE, DiscreteSchedule,
                                        ScheduleConfig, alpha_bar_to_timestep)
from guided_diffusion.unet import UNetConfig, UNetModel
from diffusion.backbone import VPBackbone
from diffusion.sde import VPSDE
from utils.checkpoints import load_strict

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PretrainedCheckpoint:
    """Where a released state_dict is expected under the repository, and where OpenAI published it."""

    expected_path: str
    url: str


KNOWN_CHECKPOINTS = {
    "256x256_diffusion_uncond.pt": PretrainedCheckpoint(
        "pretrained/guided_diffusion/256x256_diffusion_uncond.pt",
        "https://openaipublic.blob.core.windows.net/diffusion/jul-2021/256x256_diffusion_uncond.pt"),
    "cifar10_uncond_50M_500K.pt": PretrainedCheckpoint(
        "pretrained/improved_diffusion/cifar10_uncond_50M_500K.pt",
        "https://openaipublic.blob.core.windows.net/diffusion/march-2021/cifar10_uncond_50M_500K.pt"),
}


@dataclass(frozen=True)
class GuidedDiffusionConfig:
    """A UNet and the discrete schedule it was trained with."""

    unet: UNetConfig
    schedule: ScheduleConfig


ADM_IMAGENET256_UNCOND = GuidedDiffusionConfig(
    unet=UNetConfig(image_size=256, in_channels=3, model_channels=256, out_channels=6, num_res_blocks=2,
                    attention_resolutions=(8, 16, 32), channel_mult=(1, 1, 2, 2, 4, 4), num_heads=4,
                    num_head_channels=64, use_scale_shift_norm=True, resblock_updown=True),
    schedule=ADM_IMAGENET256_SCHEDULE)
IMPROVED_CIFAR10_UNCOND = GuidedDiffusionConfig(
    unet=UNetConfig(in_channels=3, model_channels=128, out_channels=6, num_res_blocks=3,
                    attention_resolutions=(2, 4), dropout=0.3, channel_mult=(1, 2, 2, 2), num_heads=4,
                    use_scale_shift_norm=True),
    schedule=IMPROVED_CIFAR10_SCHEDULE)


class GuidedDiffusionBackbone(VPBackbone):
    """An ADM / improved-diffusion UNet seen as eps(x_t, t) with t in continuous VP time; score = -eps / sigma(t).

    Timesteps: continuous t maps to the fractional 0-based step s whose discrete alpha_bar equals the VP-SDE's
    alpha(t)^2 = exp(2 log_mean_coeff(t)) (log alpha_bar interpolated linearly between steps), so the noise level
    the network sees is exactly the one the SDE produced; the net is called with s (ADM) or s * 1000 / N
    (improved-diffusion, rescale_timesteps). For the linear 1000-step schedule s is within 0.6 of 1000 t - 1 for
    t <= 0.5 (e.g. 99.39 at t = 0.1, 149.33 at t = 0.15) and 995.6 at t = 1, where the discrete product of
    (1 - beta_k) falls below the continuous exp(-integral beta). DiffPure instead passes the integer floor(1000 t),
    about one step noisier than the SDE's state and piecewise constant in t.
    Learned sigma: the net's first C output channels are epsilon, the rest (variance values) are dropped.
    """

    def __init__(self, net: UNetModel, schedule: DiscreteSchedule, sde: VPSDE) -> None:
        super().__init__(sde)
        channels, out_channels = net.config.in_channels, net.config.out_channels
        if out_channels not in (channels, 2 * channels):
            raise ValueError(f"the UNet must output epsilon ({channels} channels) or epsilon and variance values "
                             f"({2 * channels}), got out_channels={out_channels}")
        self.net = net
        self.timestep_scale = schedule.timestep_scale
        self.register_buffer("alphas_cumprod", schedule.alphas_cumprod.clone(), persistent=False)

    @property
    def network(self) -> nn.Module:
        """The wrapped network: every score evaluation calls it once."""
        return self.net

    def model_step(self, t: torch.Tensor) -> torch.Tensor:
        """Fractional 0-based discrete step s (float64, shape of t) with alpha_bar(s) = alpha(t)^2."""
        alpha_bar = torch.exp(2.0 * self.sde.log_mean_coeff(t.to(torch.float64)))
        return alpha_bar_to_timestep(self.alphas_cumprod, alpha_bar)

    def epsilon(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """eps(x_t, t) (B, C, H, W): the first C channels of net(x_t, s(t) * timestep_scale); t scalar or (B,).

        The range of t is checked on the CPU only: on a GPU the check would wait for the device at every step (the
        solvers' time grids are checked when built)."""
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device).expand(x.shape[0])
        if t.device.type == "cpu" and not bool(((t > 0) & (t <= 1)).all()):
            raise ValueError(f"VP time t must lie in (0, 1], got range [{float(t.min())}, {float(t.max())}]")
        return self.step_epsilon(x, self.model_step(t))

    def step_epsilon(self, x: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
        """eps (B, C, H, W) at 0-based discrete steps (B,) (integer or fractional): net(x, steps * timestep_scale)."""
        timesteps = (steps.to(torch.float64) * self.timestep_scale).to(x.dtype)
        return self.net(x, timesteps)[:, : x.shape[1]]


def _checkpoint_hint(path: Path) -> str:
    """Where to get the file named like `path`, or the list of known official files."""
    known = KNOWN_CHECKPOINTS.get(path.name)
    if known is None:
        names = ", ".join(f"{c.expected_path} ({c.url})" for c in KNOWN_CHECKPOINTS.values())
        return f"the official OpenAI checkpoints are: {names}"
    return f"download {known.url} to {known.expected_path}"


def load_unet(config: UNetConfig, path: str | Path) -> UNetModel:
    """Build UNetModel(config) in eval mode and load the plain state_dict at `path` with strict=True."""
    path = Path(path)
    return load_strict(UNetModel(config), path, _checkpoint_hint(path),
                       "model_channels, channel_mult, num_res_blocks, attention_resolutions and resblock_updown")


def load_backbone(config: GuidedDiffusionConfig, path: str | Path, sde: VPSDE) -> GuidedDiffusionBackbone:
    """The pretrained UNet at `path` wrapped as a VP backbone (eval mode)."""
    net = load_unet(config.unet, path)
    return GuidedDiffusionBackbone(net, DiscreteSchedule.from_config(config.schedule), sde).eval()
