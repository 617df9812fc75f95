"""Diffusion purifiers: COUP (guided reverse SDE), DiffPure (forward noise + reverse SDE), reverse-only."""
from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from typing import Callable, Literal, Optional

import torch
from torch import nn

from classifiers.surrogate import smooth_surrogate
from runners.guidance import GradMode, GuidedScore, LabelMode
from runners.noise import NoiseSource, per_row_normal
from runners.solvers import GraphSteps, StepCallback, StepTap, TimeGrid, solve_exact, solve_exact_tapped
from runners.torchsde_backend import solve_torchsde
from diffusion.backbone import VPBackbone
from diffusion.sde import DiscreteDDPMSchedule, ScoreFn
from utils.config import require
from utils.images import check_dtype, check_images, refuse_inference_mode, to_diffusion_space, to_image_space
from utils.registry import Registry

Backend = Literal["exact", "torchsde"]
DEFAULT_SURROGATE_BETA = 10.0  # softplus sharpness of the guidance classifier's surrogate (grad_mode 'surrogate')


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
    surrogate_beta: Optional[float] = None  # grad_mode 'surrogate': softplus(beta) for ReLU in the backward (10)
    backend: Backend = "exact"
    checkpoint: bool = True
    graph_steps: GraphSteps = 0  # exact backend's memory budget: steps whose graph is kept, the rest recomputed
    adjoint_over_networks: bool = False
    fixed_noise: bool = False
    seed: int = 0
    allow_anti_guidance: bool = False  # a negative guidance_scale pushes away from the label: an ablation only

    def __post_init__(self) -> None:
        require(0.0 < self.t_star <= 1.0, f"purifier.t_star must lie in (0, 1], got {self.t_star}")
        require(self.dt > 0.0, f"purifier.dt must be > 0, got {self.dt}")
        require(0.0 <= self.t_end < self.t_star, f"purifier.t_end must lie in [0, t_star), got {self.t_end}")
        require(self.dt <= self.t_star,
                f"purifier.dt {self.dt} is larger than t_star {self.t_star}: the solver could take only one step of "
                f"{self.t_star - self.t_end:.6g}; set dt <= t_star (t_star / dt steps are taken)")
        require(self.graph_steps == "all" or (isinstance(self.graph_steps, int) and self.graph_steps >= 0),
                f"purifier.graph_steps must be an integer >= 0 or 'all', got {self.graph_steps!r}")
        require(self.guidance_scale is None or math.isfinite(self.guidance_scale),
                "purifier.guidance_scale must be finite")
        require(self.surrogate_beta is None or (self.grad_mode == "surrogate" and 0.0 < self.surrogate_beta < math.inf),
                f"purifier.surrogate_beta {self.surrogate_beta} needs grad_mode 'surrogate' and a finite value > 0")
        require(self.guidance_scale is None or self.guidance_scale >= 0.0 or self.allow_anti_guidance,
                f"purifier.guidance_scale {self.guidance_scale} < 0 is anti-guidance (an ablation, never a defense); "
                "set purifier.allow_anti_guidance: true to run it anyway")


@dataclass(frozen=True)
class Preset:
    """What defines a method: its defaults and whether guidance is allowed at all."""

    forward_noise: bool
    clamp_output: bool
    guidance_scale: float
    guided: bool


# the purification methods, declared once: every other list of them derives from this one
PRESETS: dict[str, Preset] = {
    "reverse_only": Preset(forward_noise=False, clamp_output=True, guidance_scale=0.0, guided=False),
    "diffpure": Preset(forward_noise=True, clamp_output=False, guidance_scale=0.0, guided=False),
    "coup": Preset(forward_noise=False, clamp_output=True, guidance_scale=1.0, guided=True),
}
DIFFUSION_METHODS = tuple(PRESETS)


def resolve_purifier_config(config: PurifierConfig) -> PurifierConfig:
    """Fill the preset fields of a diffusion method; a guided setting on an unguided method is an error."""
    if config.grad_mode == "surrogate" and config.surrogate_beta is None:
        config = dataclasses.replace(config, surrogate_beta=DEFAULT_SURROGATE_BETA)
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


# a solver backend bound to its purifier: (score_fn, x_start in [-1, 1], z (n_steps, B, ...), callback) -> x at t_end
Solve = Callable[[ScoreFn, torch.Tensor, torch.Tensor, Optional[StepCallback]], torch.Tensor]


def purify(score_fn: ScoreFn, x: torch.Tensor, z: torch.Tensor, solve: Solve, alpha_bar: Optional[float],
           clamp: bool, callback: Optional[StepCallback] = None) -> torch.Tensor:
    """Purify images x (B, C, H, W) in [0, 1] with noise z (1 + n_steps, B, C, H, W): [0, 1] images out.

    x_0 = 2x - 1; DiffPure noises it to its starting time, x_0 = sqrt(abar) x_0 + sqrt(1 - abar) z_0 (alpha_bar
    None: no forward noise, as in COUP and reverse-only); `solve` integrates the reverse SDE from t* to t_end
    with z_1.., x_{k+1} = x_k - h_k [f(x_k, tau_k) - g(tau_k)^2 s(x_k, tau_k)] + g(tau_k) sqrt(h_k) z_k, where
    s is score_fn (COUP: s + lambda grad log p(y | x_t)); clamp to [-1, 1]; back to [0, 1] as (x + 1) / 2.
    """
    x_t = to_diffusion_space(x)
    if alpha_bar is not None:
        x_t = math.sqrt(alpha_bar) * x_t + math.sqrt(1.0 - alpha_bar) * z[0]
    x_t = solve(score_fn, x_t, z[1:], callback)
    return to_image_space(x_t.clamp(-1.0, 1.0) if clamp else x_t)


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
        self.guidance_surrogate = (smooth_surrogate(self.guidance_classifier, config.surrogate_beta)
                                   if config.surrogate_beta is not None and config.guidance_scale != 0.0
                                   and self.guidance_classifier is not None else None)
        self.guided = GuidedScore(backbone, self.guidance_classifier, config.guidance_scale,
                                  config.label_mode, config.grad_mode, self.guidance_surrogate)
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
        score_fn, z = self.prepare(x, noise_seeds, labels)
        return purify(score_fn, x, z, functools.partial(BACKENDS.get(self.config.backend), self),
                      self.noising_alpha_bar(), self.config.clamp_output, callback)

    def prepare(self, x: torch.Tensor, noise_seeds: Optional[torch.Tensor],
                labels: Optional[torch.Tensor]) -> tuple[ScoreFn, torch.Tensor]:
        """Checked x (B, C, H, W) in [0, 1] -> (the score along this path, the noise table (1 + n_steps, B, ...))."""
        check_images(x)
        check_dtype(x, self)
        if self.config.guidance_scale != 0.0:
            refuse_inference_mode("guided purification differentiates the classifier")
        labels = self.guided.path_labels(x, labels)
        return (lambda x_t, t: self.guided(x_t, t, labels)), self.draw_noise(x, noise_seeds)

    def noising_alpha_bar(self) -> Optional[float]:
        """DiffPure's forward-noising abar at t_star, or None when the method starts from the image itself."""
        return self.alpha_bar if self.config.forward_noise else None

    def purify_tapped(self, x: torch.Tensor, noise_seeds: Optional[torch.Tensor], tap: StepTap,
                      labels: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(purified x in [0, 1], sum_k tap(k, x_{k+1}) (B,)) on the exact solver; taps see states in [-1, 1]."""
        score_fn, z = self.prepare(x, noise_seeds, labels)
        totals: list[torch.Tensor] = []

        def solve_tapped(score: ScoreFn, x_start: torch.Tensor, z_steps: torch.Tensor,
                         callback: Optional[StepCallback]) -> torch.Tensor:
            x_out, total = solve_exact_tapped(self.backbone.sde, score, x_start, self.grid, z_steps, tap)
            totals.append(total)
            return x_out

        purified = purify(score_fn, x, z, solve_tapped, self.noising_alpha_bar(), self.config.clamp_output)
        return purified, totals[0]

    def solve_exact(self, score_fn: ScoreFn, x_start: torch.Tensor, z: torch.Tensor,
                    callback: Optional[StepCallback] = None) -> torch.Tensor:
        """The exact, step-checkpointed Euler-Maruyama backend, with an optional per-step callback."""
        return solve_exact(self.backbone.sde, score_fn, x_start, self.grid, z, checkpoint=self.config.checkpoint,
                           callback=callback, graph_steps=self.config.graph_steps)

    def solve_torchsde(self, score_fn: ScoreFn, x_start: torch.Tensor, z: torch.Tensor,
                       callback: Optional[StepCallback] = None) -> torch.Tensor:
        """torchsde sdeint / sdeint_adjoint (networks frozen unless adjoint_over_networks); no step callbacks."""
        if callback is not None:
            raise ValueError("a step callback needs the exact solver: set purifier.backend to 'exact'")
        networks = nn.ModuleList([m for m in (self.backbone, self.guidance_classifier, self.guidance_surrogate)
                                  if m is not None])
        return solve_torchsde(self.backbone.sde, score_fn, x_start, self.grid, z,
                              networks=networks if self.config.adjoint_over_networks else None)


# a backend integrates the reverse SDE: (purifier, score_fn, x_start, z, callback) -> x at t_end, in [-1, 1]
SolverBackend = Callable[[DiffusionPurifier, ScoreFn, torch.Tensor, torch.Tensor, Optional[StepCallback]],
                         torch.Tensor]
BACKENDS: Registry[SolverBackend] = Registry("solver backend")
BACKENDS.register("exact")(DiffusionPurifier.solve_exact)
BACKENDS.register("torchsde")(DiffusionPurifier.solve_torchsde)
