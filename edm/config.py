"""Constructor arguments of EDM's EDMPrecond around the DDPM++ SongUNet (Karras et al. 2022), validated."""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Literal

from utils.config import require


@dataclass(frozen=True)
class SongUNetConfig:
    """EDMPrecond(model_type='SongUNet') options; defaults are Chen et al.'s `edm_cifar_uncond_vp.pt` (CIFAR-10 DDPM++).

    Only the DDPM++ variant is implemented (positional noise embedding, standard encoder and decoder); the
    Literal fields list what is supported. dropout 0.13 is EDM's CIFAR-10 training value (inactive in eval).
    """

    img_resolution: int = 32
    img_channels: int = 3
    label_dim: int = 0
    augment_dim: int = 9
    model_channels: int = 128
    channel_mult: tuple[int, ...] = (2, 2, 2)
    channel_mult_emb: int = 4
    num_blocks: int = 4
    attn_resolutions: tuple[int, ...] = (16,)
    dropout: float = 0.13
    model_type: Literal["SongUNet"] = "SongUNet"
    embedding_type: Literal["positional"] = "positional"
    encoder_type: Literal["standard"] = "standard"
    decoder_type: Literal["standard"] = "standard"
    channel_mult_noise: int = 1
    resample_filter: tuple[int, ...] = (1, 1)
    sigma_data: float = 0.5

    def __post_init__(self) -> None:
        _check_literals(self)
        require(self.label_dim == 0, f"label_dim: only unconditional networks are supported, got {self.label_dim}")
        require(self.img_channels >= 1 and self.augment_dim >= 0, "need img_channels >= 1 and augment_dim >= 0")
        require(len(self.channel_mult) >= 1 and all(m >= 1 for m in self.channel_mult),
                f"channel_mult must be a non-empty list of positive integers, got {list(self.channel_mult)}")
        require(min(self.num_blocks, self.channel_mult_emb, self.channel_mult_noise) >= 1,
                "need num_blocks, channel_mult_emb and channel_mult_noise >= 1")
        require(self.model_channels >= 4 and self.model_channels % 4 == 0,
                f"model_channels must be a positive multiple of 4 (GroupNorm groups of 4 channels), got "
                f"{self.model_channels}")
        down = 2 ** (len(self.channel_mult) - 1)
        require(self.img_resolution >= down and self.img_resolution % down == 0,
                f"img_resolution {self.img_resolution} must be divisible by 2^(len(channel_mult) - 1) = {down}")
        unknown = sorted(set(self.attn_resolutions) - set(self.resolutions))
        require(not unknown, f"attn_resolutions {unknown} are not among the network's resolutions "
                             f"{list(self.resolutions)}")
        require(len(self.resample_filter) % 2 == 0 and sum(self.resample_filter) != 0,
                f"resample_filter needs an even number of taps with a non-zero sum, got {list(self.resample_filter)}")
        require(0.0 <= self.dropout < 1.0, f"dropout must lie in [0, 1), got {self.dropout}")
        require(self.sigma_data > 0.0, f"sigma_data must be > 0, got {self.sigma_data}")

    @property
    def resolutions(self) -> tuple[int, ...]:
        """Feature-map side length at each level: img_resolution / 2^level."""
        return tuple(self.img_resolution >> level for level in range(len(self.channel_mult)))

    @property
    def noise_channels(self) -> int:
        """Width of the positional noise embedding: model_channels * channel_mult_noise."""
        return self.model_channels * self.channel_mult_noise

    @property
    def emb_channels(self) -> int:
        """Width of the mapping network's output: model_channels * channel_mult_emb."""
        return self.model_channels * self.channel_mult_emb


def _check_literals(config: SongUNetConfig) -> None:
    """Reject values of Literal-typed fields outside their supported set (also when built from Python)."""
    hints = typing.get_type_hints(type(config))
    for field in dataclasses.fields(config):
        allowed = typing.get_args(hints[field.name]) if typing.get_origin(hints[field.name]) is Literal else None
        value = getattr(config, field.name)
        require(allowed is None or value in allowed,
                f"{field.name}={value!r} is not supported by this SongUNet (DDPM++) implementation; "
                f"supported: {list(allowed or ())}")
