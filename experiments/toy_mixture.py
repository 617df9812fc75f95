"""The 1-D toy of COUP Sec. 5.3.2: a two-Gaussian mixture, its closed-form VP score, a noisy classifier, label flips.

Data (diffusion space, 1-D): p_0 = 1/2 N(-mu, s^2) (label 0) + 1/2 N(+mu, s^2) (label 1); the Bayes
decision boundary is x = 0. Under the VP-SDE each component's marginal at t is N(alpha(t) mu_k,
alpha(t)^2 s^2 + sigma(t)^2), so the mixture score is the posterior-weighted component score.

Noisy classifiers p_delta(y | x) are built from the class densities at the data level (t = 0) and
applied to x_t as COUP applies its clean classifier; delta = 0 is the Bayes classifier:
  'boundary': p_delta(y | x) = p(y | x - b), b ~ N(0, delta^2) drawn once per path (a classifier whose
              decision boundary is off by b; data units);
  'label':    p_delta(y | x) = (1 - delta) p(y | x) + delta / 2 (mixing with the uniform posterior;
              same decision boundary, flatter confidence; delta in [0, 1)).
A label flip is a path whose end point x_0 lies on the other side of the Bayes boundary from its start:
the start x_start = +d (d > 0) has true class 1, so flip = [x_0 < 0].
"""
from __future__ import annotations

import math
from dataclasses import dataclass
import torch
from torch import nn

from runners.guidance import GuidedScore, LabelMode
from runners.solvers import TimeGrid, solve_exact
from diffusion.backbone import VPBackbone
from diffusion.sde import VPSDE, _per_sample
from utils.images import to_diffusion_space, to_image_space
from utils.registry import Registry

LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


def normal_log_pdf(x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    """log N(x; mean, var), broadcast elementwise."""
    return -0.5 * (x - mean) ** 2 / var - 0.5 * torch.log(var) - LOG_SQRT_2PI


class MixtureBackbone(VPBackbone):
    """Closed-form VP score of p_0 = 1/2 N(-mu, s^2) + 1/2 N(mu, s^2) on x (N, 1) in diffusion space."""

    def __init__(self, sde: VPSDE, mu: float, s: float) -> None:
        super().__init__(sde)
        if not (mu > 0.0 and s > 0.0):
            raise ValueError(f"the mixture needs mu > 0 and s > 0, got mu={mu}, s={s}")
        self.mu, self.s = float(mu), float(s)

    def component_moments(self, x: torch.Tensor, t: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor]:
        """Means (N, ..., 2) and variance (N, ..., 1) of the two components' marginals at t."""
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
        alpha = _per_sample(self.sde.marginal_mean_coeff(t), x).unsqueeze(-1)
        sigma = _per_sample(self.sde.marginal_std(t), x).unsqueeze(-1)
        means = alpha * torch.tensor([-self.mu, self.mu], dtype=x.dtype, device=x.device)
        return means, alpha**2 * self.s**2 + sigma**2

    def log_density(self, x: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        """log p_t(x), shape of x."""
        means, var = self.component_moments(x, t)
        return torch.logsumexp(normal_log_pdf(x.unsqueeze(-1), means, var), dim=-1) - math.log(2.0)

    def forward(self, x: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        """Score d/dx log p_t(x) = sum_k w_k(x) (alpha mu_k - x) / v, w_k the component posteriors."""
        means, var = self.component_moments(x, t)
        weights = torch.softmax(normal_log_pdf(x.unsqueeze(-1), means, var), dim=-1)
        return (weights * (means - x.unsqueeze(-1)) / var).sum(dim=-1)

    def epsilon(self, x: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        """eps = -sigma(t) score, shape of x."""
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
        return -_per_sample(self.sde.marginal_std(t), x) * self.forward(x, t)

    def sample(self, n: int, t: float, generator: torch.Generator, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """n draws (n, 1) from p_t: x_0 from the mixture, then alpha x_0 + sigma eps."""
        signs = torch.randint(0, 2, (n, 1), generator=generator).to(dtype) * 2.0 - 1.0
        x0 = signs * self.mu + self.s * torch.randn((n, 1), generator=generator, dtype=dtype)
        t_ = torch.tensor(t, dtype=dtype)
        alpha, sigma = self.sde.marginal_mean_coeff(t_), self.sde.marginal_std(t_)
        return alpha * x0 + sigma * torch.randn((n, 1), generator=generator, dtype=dtype)

    def data_cdf(self, x: torch.Tensor) -> torch.Tensor:
        """CDF of p_0 at x (any shape)."""
        def phi(z: torch.Tensor) -> torch.Tensor:
            return 0.5 * (1.0 + torch.erf(z / math.sqrt(2.0)))

        return 0.5 * (phi((x + self.mu) / self.s) + phi((x - self.mu) / self.s))


class NoisyMixtureClassifier(nn.Module):
    """p_delta(y | x) from the class densities at t = 0: logits (N, 2) for inputs u (N, 1) = (x + 1) / 2.

    Inputs follow the codebase's classifier convention (image space u, x = 2u - 1), so GuidedScore's
    gradient is d/dx log p_delta(y | x). shift (N,) moves each row's boundary; uniform_weight mixes in 1/2.
    """

    def __init__(self, mu: float, s: float, shift: torch.Tensor, uniform_weight: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= uniform_weight < 1.0:
            raise ValueError(f"uniform_weight (label-noise delta) must lie in [0, 1), got {uniform_weight}")
        self.mu, self.s, self.uniform_weight = float(mu), float(s), float(uniform_weight)
        self.register_buffer("shift", shift.reshape(-1, 1))

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        """log p_delta(y | x) (N, 2), used as logits."""
        x = to_diffusion_space(u) - self.shift.to(u.dtype)
        means = torch.tensor([-self.mu, self.mu], dtype=u.dtype, device=u.device)
        log_post = torch.log_softmax(normal_log_pdf(x, means, torch.tensor(self.s**2, dtype=u.dtype)), dim=-1)
        if self.uniform_weight == 0.0:
            return log_post
        uniform = torch.full_like(log_post, math.log(self.uniform_weight / 2.0))
        return torch.logaddexp(math.log1p(-self.uniform_weight) + log_post, uniform)


NOISE_MODELS: Registry[NoisyMixtureClassifier] = Registry("classifier noise model")


@NOISE_MODELS.register("boundary")
def _boundary_noise(delta: float, mu: float, s: float, xi: torch.Tensor) -> NoisyMixtureClassifier:
    """Boundary off by b = delta * xi per path (xi (N,) standard normal): p(y | x - b)."""
    if delta < 0.0:
        raise ValueError(f"boundary noise delta is a std and must be >= 0, got {delta}")
    return NoisyMixtureClassifier(mu, s, delta * xi)


@NOISE_MODELS.register("label")
def _label_noise(delta: float, mu: float, s: float, xi: torch.Tensor) -> NoisyMixtureClassifier:
    """(1 - delta) p(y | x) + delta / 2 (xi unused)."""
    return NoisyMixtureClassifier(mu, s, torch.zeros_like(xi), uniform_weight=delta)


@dataclass(frozen=True)
class ToySetting:
    """The toy's fixed parameters: mixture, SDE, purification window and solver step."""

    mu: float = 0.5
    s: float = 0.2
    t_star: float = 0.1
    dt: float = 1e-3
    t_end: float = 1e-5
    beta_min: float = 0.1
    beta_max: float = 20.0
    label_mode: LabelMode = "argmax"

    def backbone(self) -> MixtureBackbone:
        """The closed-form mixture score under the VP-SDE of this setting."""
        return MixtureBackbone(VPSDE(self.beta_min, self.beta_max), self.mu, self.s)

    def grid(self) -> TimeGrid:
        """Euler-Maruyama grid from t_star to t_end with step dt."""
        return TimeGrid.reverse(self.t_star, self.dt, self.t_end)


def purify_toy(setting: ToySetting, classifier: nn.Module | None, guidance_scale: float, x_start: torch.Tensor,
               z: torch.Tensor) -> torch.Tensor:
    """End points x_0 (N, 1) of the guided reverse VP-SDE from x_start (N, 1) at t_star, noise z (n_steps, N, 1)."""
    backbone = setting.backbone()
    score = GuidedScore(backbone, classifier, guidance_scale, setting.label_mode)
    labels = score.path_labels(to_image_space(x_start), None)
    with torch.no_grad():
        return solve_exact(backbone.sde, lambda x, t: score(x, t, labels), x_start, setting.grid(), z,
                           checkpoint=False)


def flip_mask(setting: ToySetting, noise_kind: str, delta: float, guidance_scale: float, start: float,
              xi: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """(N,) bool: which paths started at +start (true class 1) end below the Bayes boundary 0."""
    if not start > 0.0:
        raise ValueError(f"the start distance must be > 0 (class-1 side), got {start}")
    classifier = NOISE_MODELS.get(noise_kind)(delta, setting.mu, setting.s, xi)
    x_start = torch.full((xi.shape[0], 1), float(start), dtype=z.dtype)
    return purify_toy(setting, classifier, guidance_scale, x_start, z).squeeze(1) < 0.0


def classifier_accuracy(setting: ToySetting, noise_kind: str, delta: float, xi: torch.Tensor,
                        generator: torch.Generator) -> float:
    """Data-level accuracy of p_delta: fraction of fresh (x_0, y) draws, one per classifier draw, with argmax = y."""
    classifier = NOISE_MODELS.get(noise_kind)(delta, setting.mu, setting.s, xi)
    n = xi.shape[0]
    labels = torch.randint(0, 2, (n,), generator=generator)
    x0 = (labels.to(xi.dtype) * 2.0 - 1.0) * setting.mu + setting.s * torch.randn(n, generator=generator,
                                                                                   dtype=xi.dtype)
    with torch.no_grad():
        predicted = classifier(to_image_space(x0).unsqueeze(1)).argmax(dim=1)
    return float((predicted == labels).double().mean())
