"""Diffusion purifiers: COUP (guided reverse SDE), DiffPure (forward noise + reverse SDE), reverse-only."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Callable, Literal, Optional

import torch
from torch import nn

from runners.guidance import GradMode, GuidedScore, LabelMode
from runners.noise import NoiseSource, per_row_normal
from runners.solvers import (ScoreFn, StepCallback, StepTap, TimeGrid, solve_exact, solve_exact_tapped,
                             solve_torchsde)
from score_sde.adapter import VPBackbone
from score_sde.sde import DiscreteDDPMSchedule
from utils.config import require
from utils.images import check_images, to_diffusion_space, to_image_space
from utils.registry import Registry

Backend = Literal["exact", "torchsde"]


@dataclass(frozen=True)
class PurifierConfig:
    """YAML `purifier:`; fields left None take the named method's preset (see PRESETS)."""

    name: str = "coup"
    t_star: float = 0.1
    guidance_scale: Optional[float] = None
    forward_noise: Optional[bool] = None
    clamp_output: Optional[bool] = None
    dt: float = 1e-3
    t_end: float = 1e-5
    label_mode: LabelMode = "argmax"
    grad_mode: GradMode = "detached"
    backend: Backend = "exact"
    checkpoint: bool = True
    adjoint_over_networks: bool = False
    fixed_noise: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        require(0.0 < self.t_star <= 1.0, f"purifier.t_star must lie in (0, 1], got {self.t_star}")
        require(self.dt > 0.0, f"purifier.dt must be > 0, got {self.dt}")
        require(0.0 <= self.t_end < self.t_star, f"purifier.t_end must lie in [0, t_star), got {self.t_end}")
        require(self.guidance_scale is None or math.isfinite(self.guidance_scale),
                "purifier.guidance_scale must be finite")


@dataclass(frozen=True)
class Preset:
    """What defines a method: its defaults and whether guidance is allowed at all."""

    forward_noise: bool
    clamp_output: bool
    guidance_scale: float
    guided: bool


PRESETS: dict[str, Preset] = {
    "coup": Preset(forward_noise=False, clamp_output=True, guidance_scale=1.0, guided=True),
    "reverse_only": Preset(forward_noise=False, clamp_output=True, guidance_scale=0.0, guided=False),
    "diffpure": Preset(forward_noise=True, clamp_output=False, guidance_scale=0.0, guided=False),
}


def resolve_purifier_config(config: PurifierConfig) -> PurifierConfig:
    """Fill the preset fields of a diffusion method; a guided setting on an unguided method is an error."""
    if config.name not in PRESETS:
        return config
    preset = PRESETS[config.name]
    scale = preset.guidance_scale if config.guidance_scale is None else config.guidance_scale
    require(preset.guided or scale == 0.0,
            f"purifier '{config.name}' has no guidance; set guidance_scale 0 or use name 'coup'")
    return dataclasses.replace(
        config, guidance_scale=scale,
        forward_noise=preset.forward_noise if config.forward_noise is None else config.forward_noise,
        clamp_output=preset.clamp_output if config.clamp_output is None else config.clamp_output)


class Purifier(nn.Module):
    """Base: images (B, C, H, W) in [0, 1] -> purified images of the same shape."""

    def forward(self, x: torch.Tensor, noise_seeds: Optional[torch.Tensor] = None,
                labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        raise NotImplementedError


class IdentityPurifier(Purifier):
    """No defense: returns its input."""

    def forward(self, x: torch.Tensor, noise_seeds: Optional[torch.Tensor] = None,
                labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        check_images(x)
        return x


class DiffusionPurifier(Purifier):
    """Reverse VP-SDE from t_star to t_end, optionally after forward noising and with classifier guidance.

    COUP: x_0 = 2x - 1, dx = [-1/2 beta x - beta (s + lambda grad log p(yhat|x))] dtau + sqrt(beta) dW, clamp.
    DiffPure: x_start = sqrt(abar_k) (2x - 1) + sqrt(1 - abar_k) eps, k = round(1000 t_star), lambda = 0.
    """

    def __init__(self, backbone: VPBackbone, config: PurifierConfig,
                 guidance_classifier: Optional[nn.Module] = None) -> None:
        super().__init__()
        config = resolve_purifier_config(config)
        self.config = config
        self.backbone = backbone.requires_grad_(config.adjoint_over_networks)
        self.guidance_classifier = (guidance_classifier.requires_grad_(config.adjoint_over_networks)
                                    if guidance_classifier is not None else None)
        self.grid = TimeGrid.reverse(config.t_star, config.dt, config.t_end)
        self.guided = GuidedScore(backbone, self.guidance_classifier, config.guidance_scale,
                                  config.label_mode, config.grad_mode)
        schedule = DiscreteDDPMSchedule(backbone.sde.beta_min, backbone.sde.beta_max, backbone.sde.num_scales)
        self.alpha_bar = schedule.alpha_bar(schedule.step_of(config.t_star))
        self.noise = NoiseSource(config.seed, config.fixed_noise)

    def draw_noise(self, x: torch.Tensor, noise_seeds: Optional[torch.Tensor]) -> torch.Tensor:
        """Noise table (1 + n_steps, B, C, H, W): row 0 for forward noising, then one per Euler step."""
        seeds = self.noise.row_seeds(x.shape[0], noise_seeds)
        table = per_row_normal(seeds, (1 + self.grid.n_steps, *x.shape[1:]), x.device, x.dtype)
        return table.transpose(0, 1)

    def forward(self, x: torch.Tensor, noise_seeds: Optional[torch.Tensor] = None,
                labels: Optional[torch.Tensor] = None, callback: Optional[StepCallback] = None) -> torch.Tensor:
        """Purify x (B, C, H, W) in [0, 1]; noise_seeds (B,) fixes each row's path; labels for label_mode 'given'.

        callback(k, tau_k, x_{k+1}) sees each Euler step's state in [-1, 1] (backend 'exact' only; it is called
        on passes without gradient tracking, e.g. under torch.no_grad()). It does not change the output.
        """
        x_start, z, score_fn = self.start(x, noise_seeds, labels)
        x_out = BACKENDS.get(self.config.backend)(self, score_fn, x_start, z, callback)
        return self.finish(x_out)

    def start(self, x: torch.Tensor, noise_seeds: Optional[torch.Tensor],
              labels: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, ScoreFn]:
        """Checked x (B, C, H, W) in [0, 1] -> (x_start in [-1, 1], the Euler noise (n_steps, B, ...), the score)."""
        check_images(x)
        if self.config.guidance_scale != 0.0 and torch.is_inference_mode_enabled():
            raise RuntimeError("guided purification differentiates the classifier: use torch.no_grad(), "
                               "not torch.inference_mode()")
        z = self.draw_noise(x, noise_seeds)
        x_start = to_diffusion_space(x)
        if self.config.forward_noise:
            x_start = math.sqrt(self.alpha_bar) * x_start + math.sqrt(1.0 - self.alpha_bar) * z[0]
        labels = self.guided.path_labels(x, labels)
        return x_start, z[1:], lambda x_t, t: self.guided(x_t, t, labels)

    def finish(self, x_out: torch.Tensor) -> torch.Tensor:
        """The solver's x at t_end in [-1, 1] -> the purified image in [0, 1] (clamped first if configured)."""
        if self.config.clamp_output:
            x_out = x_out.clamp(-1.0, 1.0)
        return to_image_space(x_out)

    def purify_tapped(self, x: torch.Tensor, noise_seeds: Optional[torch.Tensor], tap: StepTap,
                      labels: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(purified x in [0, 1], sum_k tap(k, x_{k+1}) (B,)) on the exact solver; taps see states in [-1, 1]."""
        x_start, z, score_fn = self.start(x, noise_seeds, labels)
        x_out, total = solve_exact_tapped(self.backbone.sde, score_fn, x_start, self.grid, z, tap)
        return self.finish(x_out), total

    def solve_exact(self, score_fn: ScoreFn, x_start: torch.Tensor, z: torch.Tensor,
                    callback: Optional[StepCallback] = None) -> torch.Tensor:
        """The exact, step-checkpointed Euler-Maruyama backend, with an optional per-step callback."""
        return solve_exact(self.backbone.sde, score_fn, x_start, self.grid, z, checkpoint=self.config.checkpoint,
                           callback=callback)

    def solve_torchsde(self, score_fn: ScoreFn, x_start: torch.Tensor, z: torch.Tensor,
                       callback: Optional[StepCallback] = None) -> torch.Tensor:
        """torchsde sdeint / sdeint_adjoint (networks frozen unless adjoint_over_networks); no step callbacks."""
        if callback is not None:
            raise ValueError("a step callback needs the exact solver: set purifier.backend to 'exact'")
        networks = nn.ModuleList([m for m in (self.backbone, self.guidance_classifier) if m is not None])
        return solve_torchsde(self.backbone.sde, score_fn, x_start, self.grid, z,
                              networks=networks if self.config.adjoint_over_networks else None)


# a backend integrates the reverse SDE: (purifier, score_fn, x_start, z, callback) -> x at t_end, in [-1, 1]
SolverBackend = Callable[[DiffusionPurifier, ScoreFn, torch.Tensor, torch.Tensor, Optional[StepCallback]],
                         torch.Tensor]
BACKENDS: Registry[SolverBackend] = Registry("solver backend")
BACKENDS.register("exact")(DiffusionPurifier.solve_exact)
BACKENDS.register("torchsde")(DiffusionPurifier.solve_torchsde)
