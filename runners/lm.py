"""Likelihood maximization (LM) of Chen et al. ("Robust Classification via a Single Diffusion Model", arXiv 2305.15241)
and COUP-LM (Zhang et al. 2024, COUP Sec. 5.2.1): gradient steps on the input that lower the diffusion loss, the
latter with COUP's classifier-confidence guidance added to every step.

LM objective of one image x in [-1, 1] (Chen et al.'s diffusion loss, in EDM noise levels sigma = sigma_t / alpha_t):
    J(x) = E_{sigma ~ U[sigma_min, sigma_max], eps ~ N(0, I)} sigma^2 ||eps_theta(alpha_t x + sigma_t eps, t) - eps||^2
with t the VP time of sigma (alpha_t^2 = 1 / (1 + sigma^2)); w(t) = sigma^2 makes J the denoiser loss
|| D(x + sigma eps, sigma) - x ||^2 that the authors' release minimises, summed over pixels. One Monte-Carlo sample
per row and step by default. COUP-LM descends J(x) - lambda log p(yhat | x) (COUP eq. 7 in likelihood form).

Settings of the release (huanranchen/DiffusionClassifier, EDMEulerIntegralLM.likelihood_maximization_T1, the
defense its LM.py and CIFAR-100 scripts use): 5 Adam steps of learning rate 0.1 on x in [-1, 1], sigma ~ U[0.4, 0.6],
one noise sample per step, an L2 ball of radius 100 in [0, 1] units (never active, so radius null here), output
clamped to [0, 1]. The release differentiates the purifier as the identity (BPDA); here grad_mode 'full' gives
the attack the exact gradient through every step (second order), 'bpda' reproduces the release.
"""
from __future__ import annotations

import contextlib

import dataclasses
from dataclasses import dataclass
from typing import Callable, Literal, Optional

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from runners.defended import PurifierContext, PurifierSpec
from runners.gradient_path import STRAIGHT_THROUGH, unrolled
from runners.guidance import LABEL_RULES, LabelMode, log_prob_gradient
from runners.noise import NoiseSource, per_row_normal
from runners.purifiers import Purifier
from diffusion.backbone import VPBackbone
from diffusion.sde import _per_sample
from utils.config import require
from utils.images import check_images, refuse_inference_mode, to_diffusion_space, to_image_space
from utils.registry import Registry
from utils.seeds import derive_seeds

LMGradMode = Literal["full", "bpda"]
BallNorm = Literal["L2", "Linf"]
OptimizerState = tuple[torch.Tensor, ...]
# an update rule: (gradient (B, C, H, W), state, step index k >= 1, learning rate) -> (displacement, new state)
UpdateRule = Callable[[torch.Tensor, OptimizerState, int, float], tuple[torch.Tensor, OptimizerState]]
GUIDED = {"lm": False, "coup_lm": True}  # which names may carry guidance, and their default lambda (0 or 1)
NOISE_STAGE, LEVEL_STAGE = 0, 1  # seed tags of the two per-row streams: eps and the noise levels


@dataclass(frozen=True)
class LMConfig:
    """YAML `purifier: {name: lm | coup_lm, ...}`; defaults are the release's CIFAR settings."""

    name: str = "lm"
    steps: int = 5  # optimisation steps N
    lr: float = 0.1  # step size eta (on x in [-1, 1])
    optimizer: str = "adam"  # 'adam' (the release) | 'sgd' (plain gradient descent)
    sigma_min: float = 0.4  # EDM noise-level range of the diffusion loss
    sigma_max: float = 0.6
    n_noise: int = 1  # Monte-Carlo samples (sigma, eps) per row and step
    radius: Optional[float] = None  # ball around the input in [0, 1] units; None: no projection
    ball_norm: BallNorm = "L2"
    guidance_scale: Optional[float] = None  # lambda; None: 0 for lm, 1 for coup_lm
    label_mode: LabelMode = "argmax"  # yhat as in COUP: the classifier's prediction at each step
    grad_mode: LMGradMode = "full"
    fixed_noise: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        require(self.name in GUIDED, f"purifier.name must be one of {sorted(GUIDED)} for LMConfig, got {self.name!r}")
        require(self.steps >= 0, f"purifier.steps must be >= 0, got {self.steps}")
        require(self.lr > 0, f"purifier.lr must be > 0, got {self.lr}")
        require(self.optimizer in UPDATE_RULES.names(),
                f"purifier.optimizer must be one of {', '.join(UPDATE_RULES.names())}, got {self.optimizer!r}")
        require(0.0 < self.sigma_min <= self.sigma_max,
                f"purifier: need 0 < sigma_min <= sigma_max, got {self.sigma_min}, {self.sigma_max}")
        require(self.n_noise >= 1, f"purifier.n_noise must be >= 1, got {self.n_noise}")
        require(self.radius is None or self.radius > 0, f"purifier.radius must be > 0 or null, got {self.radius}")
        require(self.ball_norm in ("L2", "Linf"), f"purifier.ball_norm must be L2 or Linf, got {self.ball_norm!r}")
        require(self.grad_mode in ("full", "bpda"), f"purifier.grad_mode must be full or bpda, got {self.grad_mode!r}")
        require(self.label_mode in LABEL_RULES.names(),
                f"purifier.label_mode must be one of {', '.join(LABEL_RULES.names())}, got {self.label_mode!r}")

    @property
    def scale(self) -> float:
        """lambda (0 for lm unless set)."""
        return float(GUIDED[self.name]) if self.guidance_scale is None else float(self.guidance_scale)


def resolve_lm_config(config: LMConfig) -> LMConfig:
    """Fill lambda from the name's preset; a nonzero lambda on 'lm' is an error."""
    require(GUIDED[config.name] or config.scale == 0.0,
            "purifier 'lm' has no guidance; set guidance_scale 0 or use name 'coup_lm'")
    return dataclasses.replace(config, guidance_scale=config.scale)


def diffusion_loss(backbone: VPBackbone, x: torch.Tensor, sigma: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """J per row (B,): mean over the K samples of sigma^2 ||eps_theta(alpha_t x + sigma_t eps, t) - eps||^2.

    x (B, C, H, W) in [-1, 1]; sigma (K, B) EDM noise levels; eps (K, B, C, H, W) standard normal.
    """
    k, b = sigma.shape
    t = backbone.sde.edm_sigma_to_time(sigma.reshape(-1).to(x.dtype))
    x_rep = x.unsqueeze(0).expand(k, *x.shape).reshape(k * b, *x.shape[1:])
    noise = eps.reshape(k * b, *x.shape[1:])
    x_t = _per_sample(backbone.sde.marginal_mean_coeff(t), x_rep) * x_rep + _per_sample(
        backbone.sde.marginal_std(t), x_rep) * noise
    error = (backbone.epsilon(x_t, t) - noise).flatten(1).pow(2).sum(dim=1)
    return (sigma.reshape(-1).to(x.dtype) ** 2 * error).view(k, b).mean(dim=0)


def adam_update(grad: torch.Tensor, state: OptimizerState, k: int, lr: float) -> tuple[torch.Tensor, OptimizerState]:
    """Adam (Kingma & Ba, Alg. 1; beta1 0.9, beta2 0.999, eps 1e-8), differentiable: -lr m_hat / (sqrt(v_hat) + eps).

    sqrt(v_hat + 1e-16) keeps the backward finite where a gradient is exactly 0 (it moves the value by < 1e-8).
    """
    m, v = state if state else (torch.zeros_like(grad), torch.zeros_like(grad))
    m, v = 0.9 * m + 0.1 * grad, 0.999 * v + 0.001 * grad * grad
    m_hat, v_hat = m / (1.0 - 0.9**k), v / (1.0 - 0.999**k)
    return -lr * m_hat / ((v_hat + 1e-16).sqrt() + 1e-8), (m, v)


def sgd_update(grad: torch.Tensor, state: OptimizerState, k: int, lr: float) -> tuple[torch.Tensor, OptimizerState]:
    """Gradient descent: -lr * grad."""
    return -lr * grad, state


UPDATE_RULES: Registry[UpdateRule] = Registry("LM optimizer")
UPDATE_RULES.register("adam")(adam_update)
UPDATE_RULES.register("sgd")(sgd_update)


def project(x: torch.Tensor, x0: torch.Tensor, radius: float, norm: BallNorm) -> torch.Tensor:
    """x (B, C, H, W) projected onto the `norm` ball of `radius` (same units as x) around x0, per row."""
    delta = x - x0
    if norm == "Linf":
        return x0 + delta.clamp(-radius, radius)
    length = delta.flatten(1).norm(dim=1).clamp_min(1e-12)
    return x0 + delta * _per_sample((radius / length).clamp(max=1.0), delta)


class LikelihoodMaximizationPurifier(Purifier):
    """x_{k+1} = Proj_{B(x_0)}(x_k + Update_k(grad_x [J(x_k) - lambda log p(yhat | x_k)])), k < N, on x_0 = 2x - 1.

    The output (x_N + 1) / 2 is clamped to [0, 1]. The noise of row b comes from its own seed (noise_seeds[b]),
    so outputs do not depend on the batch.
    """

    def __init__(self, backbone: VPBackbone, config: LMConfig, classifier: Optional[nn.Module] = None) -> None:
        super().__init__()
        self.config = resolve_lm_config(config)
        require(self.config.scale == 0.0 or classifier is not None, "coup_lm needs a guidance classifier")
        self.backbone = backbone.requires_grad_(False)
        self.classifier = classifier.requires_grad_(False) if classifier is not None else None
        self.noise = NoiseSource(self.config.seed, self.config.fixed_noise)

    def draw_noise(self, x: torch.Tensor, noise_seeds: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Noise levels (N, K, B) uniform in [sigma_min, sigma_max] and eps (N, K, B, C, H, W), row b from its seed."""
        c = self.config
        seeds = self.noise.row_seeds(x.shape[0], noise_seeds)
        shape = (c.steps, c.n_noise)
        eps = per_row_normal(derive_seeds(0, seeds, NOISE_STAGE), (*shape, *x.shape[1:]), x.device, x.dtype)
        uniform = torch.special.ndtr(per_row_normal(derive_seeds(0, seeds, LEVEL_STAGE), shape, x.device, x.dtype))
        sigma = c.sigma_min + (c.sigma_max - c.sigma_min) * uniform
        return sigma.permute(1, 2, 0), eps.permute(1, 2, 0, *range(3, eps.dim()))

    def objective_gradient(self, x: torch.Tensor, sigma: torch.Tensor, eps: torch.Tensor,
                           labels: Optional[torch.Tensor]) -> torch.Tensor:
        """grad_x [J(x) - lambda log p(yhat | x)] (B, C, H, W) at x in [-1, 1]; graph kept for an outer backward."""
        keep_graph = torch.is_grad_enabled() and x.requires_grad
        # only an outer backward differentiates this gradient again, which needs the math attention's double
        # backward; without one (BPDA, scoring) the fused kernels stay allowed
        kernels = sdpa_kernel(SDPBackend.MATH) if keep_graph else contextlib.nullcontext()
        with torch.enable_grad(), kernels:
            x_in = x if keep_graph else x.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(diffusion_loss(self.backbone, x_in, sigma, eps).sum(), x_in,
                                          create_graph=keep_graph)
        if self.config.scale == 0.0:
            return grad
        guidance = log_prob_gradient(self.classifier, x, "full", labels, self.config.label_mode)
        return grad - self.config.scale * guidance

    def maximize(self, x01: torch.Tensor, noise_seeds: Optional[torch.Tensor],
                 labels: Optional[torch.Tensor]) -> torch.Tensor:
        """The N projected steps from x01 (B, C, H, W) in [0, 1]; returns the result in [0, 1]."""
        c = self.config
        sigma, eps = self.draw_noise(x01, noise_seeds)
        if c.scale != 0.0:
            labels = LABEL_RULES.get(c.label_mode).path(self.classifier, x01, labels)
        x0 = to_diffusion_space(x01)
        x, state = x0, ()
        for k in range(c.steps):
            delta, state = UPDATE_RULES.get(c.optimizer)(self.objective_gradient(x, sigma[k], eps[k], labels),
                                                         state, k + 1, c.lr)
            x = x + delta
            if c.radius is not None:
                x = project(x, x0, 2.0 * c.radius, c.ball_norm)
        return to_image_space(x).clamp(0.0, 1.0)

    def forward(self, x: torch.Tensor, noise_seeds: Optional[torch.Tensor] = None,
                labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Purified x (B, C, H, W) in [0, 1]; noise_seeds (B,) fix each row's noise; labels for label_mode 'given'."""
        check_images(x)
        refuse_inference_mode("likelihood maximization differentiates the diffusion model")
        if self.config.grad_mode == "bpda":
            return x + (self.maximize(x.detach(), noise_seeds, labels) - x).detach()
        return self.maximize(x, noise_seeds, labels)


def build_lm(config: LMConfig, context: PurifierContext) -> LikelihoodMaximizationPurifier:
    """LM / COUP-LM on the context's backbone; guidance by the guidance classifier, else the classifier."""
    guidance = context.guidance_classifier if context.guidance_classifier is not None else context.classifier
    return LikelihoodMaximizationPurifier(context.backbone(), config, guidance)


LM_PURIFIER = PurifierSpec(LMConfig, build_lm, resolve_lm_config, gradient=unrolled(
    "the {steps} likelihood-maximisation steps, second order", bpda=STRAIGHT_THROUGH))
