"""NCSN++ / DDPM++ U-Net of Song et al. (2021), with the official module order and parameter names."""
from __future__ import annotations

import functools
import math
from typing import Callable, Iterator

import torch
from torch import nn

from score_sde import layers
from score_sde.config import NCSNppConfig

BlockFactory = Callable[..., nn.Module]


def noise_levels(config: NCSNppConfig) -> torch.Tensor:
    """The `sigmas` buffer: num_scales levels from sigma_max down to sigma_min, geometric; float32."""
    log_sigmas = torch.linspace(math.log(config.sigma_max), math.log(config.sigma_min), config.num_scales,
                                dtype=torch.float64)
    return log_sigmas.exp().float()


class NCSNpp(nn.Module):
    """Score network s(x, time_cond): x (B, C, H, W) in [-1, 1] if centered else [0, 1]; out shape of x.

    For the continuous VP model time_cond = 999 t (positional embedding) and the output is the
    noise prediction eps, so score = -out / sigma(t). With embedding 'fourier' time_cond is a
    noise level sigma > 0 (embedded as log sigma). Parameter names and order follow the official
    code, so its checkpoints load with strict=True.
    """

    def __init__(self, config: NCSNppConfig, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.config = config
        self.act = layers.ACTIVATIONS[config.nonlinearity]
        self.register_buffer("sigmas", noise_levels(config))
        self.attn_levels = tuple(res in config.attn_resolutions for res in config.resolutions)
        self.all_modules = nn.ModuleList(self._build(config, generator))

    def _build(self, config: NCSNppConfig, generator: torch.Generator | None) -> list[nn.Module]:
        """All sub-modules in the official order: embedding, encoder, middle, decoder, output head."""
        nf, num_levels = config.nf, len(config.ch_mult)
        modules: list[nn.Module] = []
        embed_dim = nf
        if config.embedding_type == "fourier":
            modules.append(layers.GaussianFourierProjection(nf, config.fourier_scale, generator))
            embed_dim = 2 * nf
        if config.conditional:
            modules += [layers.dense(embed_dim, 4 * nf, generator), layers.dense(4 * nf, 4 * nf, generator)]
        res_block, resample = _BLOCK_FACTORIES[config.resblock_type](config, self.act, generator)
        attn = functools.partial(layers.AttnBlock, skip_rescale=config.skip_rescale,
                                 init_scale=config.init_scale, generator=generator)

        modules.append(layers.conv2d(config.num_channels, nf, generator=generator))
        skip_channels, in_ch = [nf], nf
        for level in range(num_levels):
            for _ in range(config.num_res_blocks):
                out_ch = nf * config.ch_mult[level]
                modules.append(res_block(in_ch=in_ch, out_ch=out_ch))
                in_ch = out_ch
                if self.attn_levels[level]:
                    modules.append(attn(channels=in_ch))
                skip_channels.append(in_ch)
            if level != num_levels - 1:
                modules.append(resample(in_ch=in_ch, down=True))
                skip_channels.append(in_ch)

        modules += [res_block(in_ch=in_ch), attn(channels=in_ch), res_block(in_ch=in_ch)]

        for level in reversed(range(num_levels)):
            for _ in range(config.num_res_blocks + 1):
                out_ch = nf * config.ch_mult[level]
                modules.append(res_block(in_ch=in_ch + skip_channels.pop(), out_ch=out_ch))
                in_ch = out_ch
            if self.attn_levels[level]:
                modules.append(attn(channels=in_ch))
            if level != 0:
                modules.append(resample(in_ch=in_ch, up=True))

        head = layers.conv2d(in_ch, config.num_channels, init_scale=config.init_scale, generator=generator)
        modules += [layers.group_norm(in_ch), head]
        return modules

    def forward(self, x: torch.Tensor, time_cond: torch.Tensor) -> torch.Tensor:
        """x (B, C, H, W), time_cond (B,) -> (B, C, H, W); eval mode is deterministic (no dropout)."""
        self._check_inputs(x, time_cond)
        modules = iter(self.all_modules)
        temb = self._embed(time_cond, modules)
        if not self.config.centered:
            x = 2 * x - 1.0
        hs = self._encode(x, temb, modules)
        h = next(modules)(hs[-1], temb)
        h = next(modules)(h)
        h = next(modules)(h, temb)
        h = self._decode(h, hs, temb, modules)
        h = self.act(next(modules)(h))
        h = next(modules)(h)
        if self.config.scale_by_sigma:
            h = h / _USED_SIGMAS[self.config.embedding_type](self, time_cond).reshape(-1, 1, 1, 1)
        return h

    def _encode(self, x: torch.Tensor, temb: torch.Tensor | None,
                modules: Iterator[nn.Module]) -> list[torch.Tensor]:
        """Input conv and down path; returns every skip activation, the deepest last."""
        hs = [next(modules)(x)]
        num_levels = len(self.config.ch_mult)
        for level in range(num_levels):
            for _ in range(self.config.num_res_blocks):
                h = next(modules)(hs[-1], temb)
                if self.attn_levels[level]:
                    h = next(modules)(h)
                hs.append(h)
            if level != num_levels - 1:
                hs.append(next(modules)(hs[-1], temb))
        return hs

    def _decode(self, h: torch.Tensor, hs: list[torch.Tensor], temb: torch.Tensor | None,
                modules: Iterator[nn.Module]) -> torch.Tensor:
        """Up path: each block takes cat(h, skip); consumes all of `hs`; -> (B, nf * ch_mult[0], H, W)."""
        for level in reversed(range(len(self.config.ch_mult))):
            for _ in range(self.config.num_res_blocks + 1):
                h = next(modules)(torch.cat([h, hs.pop()], dim=1), temb)
            if self.attn_levels[level]:
                h = next(modules)(h)
            if level != 0:
                h = next(modules)(h, temb)
        return h

    def _embed(self, time_cond: torch.Tensor, modules: Iterator[nn.Module]) -> torch.Tensor | None:
        """Time embedding (B, 4 nf), or None when unconditional; consumes the embedding modules."""
        temb = _TIME_FEATURES[self.config.embedding_type](self, time_cond, modules)
        if not self.config.conditional:
            return None
        temb = next(modules)(temb)
        return next(modules)(self.act(temb))

    def _check_inputs(self, x: torch.Tensor, time_cond: torch.Tensor) -> None:
        """Raise a one-line ValueError on a wrong image or time shape."""
        config = self.config
        expected = (config.num_channels, config.image_size, config.image_size)
        if x.dim() != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"NCSN++ expects x of shape (B, {', '.join(map(str, expected))}), "
                             f"got {tuple(x.shape)}; resize the images or set image_size/num_channels")
        if time_cond.shape != (x.shape[0],):
            raise ValueError(f"time_cond must have shape ({x.shape[0]},) (one value per image), got "
                             f"{tuple(time_cond.shape)}; expand a scalar with t.expand(x.shape[0])")


def _biggan_factories(config: NCSNppConfig, act: layers.Activation,
                      generator: torch.Generator | None) -> tuple[BlockFactory, BlockFactory]:
    """BigGAN blocks; resampling between levels is a BigGAN block with up=True / down=True."""
    res_block = functools.partial(
        layers.ResnetBlockBigGAN, act, temb_dim=4 * config.nf, dropout=config.dropout, fir=config.fir,
        fir_kernel=config.fir_kernel, skip_rescale=config.skip_rescale, init_scale=config.init_scale,
        generator=generator)
    return res_block, res_block


def _ddpm_factories(config: NCSNppConfig, act: layers.Activation,
                    generator: torch.Generator | None) -> tuple[BlockFactory, BlockFactory]:
    """DDPM++ blocks; resampling between levels is an Upsample / Downsample module."""
    res_block = functools.partial(
        layers.ResnetBlockDDPM, act, temb_dim=4 * config.nf, dropout=config.dropout,
        skip_rescale=config.skip_rescale, init_scale=config.init_scale, generator=generator)
    return res_block, functools.partial(_ddpm_resample, config=config, generator=generator)


def _ddpm_resample(in_ch: int, config: NCSNppConfig, generator: torch.Generator | None,
                   up: bool = False, down: bool = False) -> nn.Module:
    """The Upsample / Downsample module used between levels when resblock_type is 'ddpm'."""
    cls = layers.Upsample if up else layers.Downsample
    return cls(in_ch, with_conv=config.resamp_with_conv, fir=config.fir, fir_kernel=config.fir_kernel,
               generator=generator)


def _fourier_features(net: NCSNpp, time_cond: torch.Tensor, modules: Iterator[nn.Module]) -> torch.Tensor:
    """Gaussian Fourier features of log sigma (B, 2 nf); consumes the projection module."""
    return next(modules)(torch.log(time_cond))


def _positional_features(net: NCSNpp, time_cond: torch.Tensor, modules: Iterator[nn.Module]) -> torch.Tensor:
    """Sinusoidal features of the (scaled) time (B, nf)."""
    return layers.timestep_embedding(time_cond, net.config.nf)


# resblock_type -> (residual block, resampling step) constructors
_BLOCK_FACTORIES = {"biggan": _biggan_factories, "ddpm": _ddpm_factories}
# embedding_type -> time features before the two dense layers
_TIME_FEATURES = {"fourier": _fourier_features, "positional": _positional_features}
# embedding_type -> noise level (B,) that scale_by_sigma divides by
_USED_SIGMAS: dict[str, Callable[[NCSNpp, torch.Tensor], torch.Tensor]] = {
    "fourier": lambda net, time_cond: time_cond,
    "positional": lambda net, time_cond: net.sigmas[time_cond.long()],
}
