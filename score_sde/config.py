"""The NCSN++ model config: the official Score-SDE `config.model` / `config.data` fields, validated."""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Literal

from utils.config import require

Activation = Literal["swish", "relu", "elu", "lrelu"]


@dataclass(frozen=True)
class NCSNppConfig:
    """NCSN++ / DDPM++ options; defaults are `vp/cifar10_ddpmpp_deep_continuous` (Song et al. 2021).

    Only the options this implementation supports are allowed in the Literal types; an official
    option that is not implemented (progressive 'output_skip', attention_type 'legacy', ...) fails
    on construction with the list of supported values.
    """

    name: Literal["ncsnpp"] = "ncsnpp"
    nf: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 2, 2)
    num_res_blocks: int = 8
    attn_resolutions: tuple[int, ...] = (16,)
    image_size: int = 32
    num_channels: int = 3
    centered: bool = True
    scale_by_sigma: bool = False
    normalization: Literal["GroupNorm"] = "GroupNorm"
    nonlinearity: Activation = "swish"
    resamp_with_conv: bool = True
    conditional: bool = True
    fir: bool = False
    fir_kernel: tuple[int, ...] = (1, 3, 3, 1)
    skip_rescale: bool = True
    resblock_type: Literal["biggan", "ddpm"] = "biggan"
    progressive: Literal["none"] = "none"
    progressive_input: Literal["none"] = "none"
    progressive_combine: Literal["sum", "cat"] = "sum"
    attention_type: Literal["ddpm"] = "ddpm"
    init_scale: float = 0.0
    embedding_type: Literal["positional", "fourier"] = "positional"
    fourier_scale: float = 16.0
    conv_size: int = 3
    dropout: float = 0.1
    sigma_min: float = 0.01
    sigma_max: float = 50.0
    num_scales: int = 1000
    beta_min: float = 0.1
    beta_max: float = 20.0

    def __post_init__(self) -> None:
        _check_literals(self)
        require(self.nf >= 4 and self.nf % 4 == 0, f"nf must be a positive multiple of 4, got {self.nf}")
        require(len(self.ch_mult) >= 1 and all(m >= 1 for m in self.ch_mult),
                f"ch_mult must be a non-empty list of positive integers, got {list(self.ch_mult)}")
        require(self.num_res_blocks >= 1, f"num_res_blocks must be >= 1, got {self.num_res_blocks}")
        down = 2 ** (len(self.ch_mult) - 1)
        require(self.image_size >= down and self.image_size % down == 0,
                f"image_size {self.image_size} must be divisible by 2^(len(ch_mult) - 1) = {down}")
        unknown = sorted(set(self.attn_resolutions) - set(self.resolutions))
        require(not unknown, f"attn_resolutions {unknown} are not among the network's resolutions "
                             f"{list(self.resolutions)}")
        require(self.num_channels >= 1, f"num_channels must be >= 1, got {self.num_channels}")
        require(len(self.fir_kernel) >= 2 and sum(self.fir_kernel) != 0,
                f"fir_kernel needs >= 2 taps with a non-zero sum, got {list(self.fir_kernel)}")
        require(self.conv_size == 3, f"conv_size {self.conv_size} is not supported (NCSN++ uses 3x3 convs)")
        require(0.0 <= self.dropout < 1.0, f"dropout must lie in [0, 1), got {self.dropout}")
        require(self.init_scale >= 0.0, f"init_scale must be >= 0, got {self.init_scale}")
        require(self.fourier_scale > 0.0, f"fourier_scale must be > 0, got {self.fourier_scale}")
        require(0.0 < self.sigma_min < self.sigma_max,
                f"need 0 < sigma_min < sigma_max, got {self.sigma_min}, {self.sigma_max}")
        require(self.num_scales >= 2, f"num_scales must be >= 2, got {self.num_scales}")
        require(0.0 < self.beta_min < self.beta_max,
                f"need 0 < beta_min < beta_max, got {self.beta_min}, {self.beta_max}")
        require(not (self.fir and self.resamp_with_conv and self.resblock_type == "ddpm"),
                "fir=true with resamp_with_conv=true and resblock_type='ddpm' (fused FIR conv) is not "
                "supported; use resblock_type 'biggan' or resamp_with_conv false")

    @property
    def resolutions(self) -> tuple[int, ...]:
        """Feature-map side length at each level: image_size / 2^level."""
        return tuple(self.image_size // 2**level for level in range(len(self.ch_mult)))


def _check_literals(config: NCSNppConfig) -> None:
    """Reject values of Literal-typed fields outside their supported set (also when built from Python)."""
    hints = typing.get_type_hints(type(config))
    for field in dataclasses.fields(config):
        hint = hints[field.name]
        if typing.get_origin(hint) is Literal:
            allowed = typing.get_args(hint)
            value = getattr(config, field.name)
            require(value in allowed, f"{field.name}={value!r} is not supported by this NCSN++ "
                                      f"implementation; supported: {list(allowed)}")
