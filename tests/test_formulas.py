"""Each formula pinned where it is used, against an independent hand computation in float64.

One-step purifications (t_star, dt chosen so the grid has a single Euler step) let the whole chain
x -> 2x - 1 -> [forward noise] -> one reverse Euler-Maruyama step -> [clamp] -> (x + 1) / 2 be written out
by hand with the Gaussian backbone's closed-form score and a linear classifier's closed-form
grad log softmax (COUP eq. 7; DiffPure's x_k = sqrt(abar_k) x_0 + sqrt(1 - abar_k) eps; Song et al. eq. 6).
"""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from runners.guidance import GuidedScore
from runners.purifiers import DiffusionPurifier, PurifierConfig
from runners.solvers import TimeGrid, solve_exact
from runners.torchsde_backend import solve_torchsde
from score_sde.adapter import ScoreSDEBackbone
from diffusion.sde import VPSDE
from tests.toys import gaussian_backbone

MU, SIGMA0 = 0.1, 0.2  # the Gaussian backbone's data distribution N(MU, SIGMA0^2) in [-1, 1] space
BETA_MIN, BETA_MAX = 0.1, 20.0
SHAPE = (1, 2, 3)
NUM_CLASSES = 3


class LinearClassifier(nn.Module):
    """logits = flatten(u) W + b for u (B, C, H, W) in [0, 1]: grad_u log softmax_y = W[:, y] - W p (closed form)."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        features = math.prod(SHAPE)
        self.weight = nn.Parameter(3.0 * torch.randn(features, NUM_CLASSES, generator=gen, dtype=torch.float64))
        self.bias = nn.Parameter(torch.randn(NUM_CLASSES, generator=gen, dtype=torch.float64))

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return u.flatten(1) @ self.weight + self.bias


def beta(tau: float) -> float:
    """Linear VP beta(tau) = beta_min + tau (beta_max - beta_min) (Song et al. eq. 11)."""
    return BETA_MIN + tau * (BETA_MAX - BETA_MIN)


def alpha(tau: float) -> float:
    """VP marginal mean coefficient exp(-1/4 tau^2 (beta_max - beta_min) - 1/2 tau beta_min)."""
    return math.exp(-0.25 * tau**2 * (BETA_MAX - BETA_MIN) - 0.5 * tau * BETA_MIN)


def gaussian_score(x: torch.Tensor, tau: float) -> torch.Tensor:
    """Score of alpha MU + sqrt(alpha^2 SIGMA0^2 + 1 - alpha^2) N(0, 1): -(x - alpha MU) / var."""
    a = alpha(tau)
    return -(x - a * MU) / (a**2 * SIGMA0**2 + 1.0 - a**2)


def hand_alpha_bar(k: int) -> float:
    """DDPM abar_k = prod_{i<k} (1 - beta_i), betas linspace(1e-4, 0.02, 1000), in plain Python floats."""
    betas = [BETA_MIN / 1000 + i * (BETA_MAX - BETA_MIN) / 1000 / 999 for i in range(1000)]
    return math.prod(1.0 - b for b in betas[:k])


def hand_log_prob_grad(classifier: LinearClassifier, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """grad_x log softmax(W^T u + b)_y at u = (x + 1) / 2: 1/2 (W[:, y] - W p), written out (no autograd)."""
    with torch.no_grad():
        w = classifier.weight
        p = torch.softmax(classifier((x + 1.0) / 2.0), dim=1)
        return 0.5 * (w[:, labels].T - p @ w.T).view_as(x)


def noise_rows(seed: int, n_rows: int) -> torch.Tensor:
    """The (n_rows, C, H, W) standard-normal rows one image's generator yields: row 0 forward noise, then steps."""
    return torch.randn((n_rows, *SHAPE), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def one_step_purifier(name: str, t_star: float, **overrides) -> DiffusionPurifier:
    """A purifier whose grid is the single step t_star -> 1e-5 (dt = t_star), float64 linear guidance classifier."""
    config = PurifierConfig(name=name, t_star=t_star, dt=t_star, **overrides)
    return DiffusionPurifier(gaussian_backbone(MU, SIGMA0), config, LinearClassifier())


def hand_reverse_step(x: torch.Tensor, tau: float, h: float, score: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """x - h [-1/2 beta x - beta score] + sqrt(beta h) z: Euler-Maruyama of the reverse VP-SDE."""
    b = beta(tau)
    return x + h * (0.5 * b * x + b * score) + math.sqrt(b * h) * z


def images(n: int, seed: int = 0) -> torch.Tensor:
    """(n, *SHAPE) float64 images in [0, 1] that include exact 0s and 1s."""
    x = torch.rand((n, *SHAPE), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    x.view(n, -1)[:, 0], x.view(n, -1)[:, 1] = 0.0, 1.0
    return x


def test_hand_alpha_bar_is_the_tabulated_value():
    assert hand_alpha_bar(100) == pytest.approx(0.8970, abs=1e-4)
    assert abs(hand_alpha_bar(100) - alpha(0.1) ** 2) > 5e-4  # the continuous alpha^2 is a different number


def test_diffpure_output_is_discrete_forward_noise_then_one_reverse_step(device):
    t_star, seeds = 0.1, [21, 22]
    purifier = one_step_purifier("diffpure", t_star).to(device)
    x = images(2)
    out = purifier(x.to(device), torch.tensor(seeds)).cpu()
    abar, (tau, h) = hand_alpha_bar(100), (t_star, t_star - 1e-5)
    for b, seed in enumerate(seeds):
        eps, z = noise_rows(seed, 2)
        x_start = math.sqrt(abar) * (2.0 * x[b] - 1.0) + math.sqrt(1.0 - abar) * eps
        x_end = hand_reverse_step(x_start, tau, h, gaussian_score(x_start, tau), z)
        assert torch.allclose(out[b], (x_end + 1.0) / 2.0, rtol=0, atol=1e-12)  # no clamp for DiffPure
    assert float(out.min()) < 0.0 or float(out.max()) > 1.0


@pytest.mark.parametrize("label_mode", ["argmax", "input", "given"])
def test_coup_output_is_one_guided_step_then_clamp(label_mode, device):
    t_star, scale, seeds = 0.3, 1.5, [5, 6, 7]
    purifier = one_step_purifier("coup", t_star, guidance_scale=scale, label_mode=label_mode).to(device)
    classifier = purifier.guidance_classifier
    x = images(3).to(device)
    given = torch.tensor([2, 0, 1], device=device)
    out = purifier(x, torch.tensor(seeds), labels=given if label_mode == "given" else None)
    tau, h = t_star, t_star - 1e-5
    x0 = 2.0 * x - 1.0
    labels = {"argmax": classifier((x0 + 1) / 2).argmax(1), "input": classifier(x).argmax(1), "given": given}
    guidance = hand_log_prob_grad(classifier, x0, labels[label_mode])
    for b, seed in enumerate(seeds):
        z = noise_rows(seed, 2)[1].to(device)
        score = gaussian_score(x0[b], tau) + scale * guidance[b]
        expected = (hand_reverse_step(x0[b], tau, h, score, z).clamp(-1.0, 1.0) + 1.0) / 2.0
        assert torch.allclose(out[b], expected, rtol=0, atol=1e-12)
    assert bool((out == 0.0).any()) and bool((out == 1.0).any())  # the clamp is reached on both sides


@pytest.mark.parametrize("label_mode", ["argmax", "input", "given"])
def test_guided_score_equals_lambda_times_grad_log_softmax(label_mode, device):
    """s + lambda * 1/2 (W[:, y] - W p) at x_t, with y the label each mode picks (fixed labels != argmax at x_t)."""
    classifier, backbone, scale = LinearClassifier().to(device), gaussian_backbone(MU, SIGMA0), 0.7
    x = (2.0 * images(4, seed=3) - 1.0).to(device)
    t = torch.full((4,), 0.2, dtype=torch.float64, device=device)
    at_x = classifier((x + 1) / 2).argmax(1)
    fixed = (at_x + 1) % NUM_CLASSES
    guided = GuidedScore(backbone, classifier, scale, label_mode=label_mode, grad_mode="full")
    out = guided(x, t, None if label_mode == "argmax" else fixed)
    expected_labels = at_x if label_mode == "argmax" else fixed
    expected = gaussian_score(x, 0.2) + scale * hand_log_prob_grad(classifier, x, expected_labels)
    assert torch.allclose(out, expected, rtol=0, atol=1e-12)
    assert torch.allclose(backbone(x, t), gaussian_score(x, 0.2), rtol=0, atol=1e-12)


def test_label_rules_fix_the_label_at_the_input_or_pick_it_per_step(device):
    classifier = LinearClassifier().to(device)
    x = images(4, seed=3).to(device)
    guided = {mode: GuidedScore(gaussian_backbone(), classifier, 1.0, label_mode=mode)
              for mode in ("argmax", "input", "given")}
    assert guided["argmax"].path_labels(x, None) is None
    assert torch.equal(guided["input"].path_labels(x, None), classifier(x).argmax(1))
    given = torch.tensor([1, 1, 0, 2], device=device)
    assert torch.equal(guided["given"].path_labels(x, given), given)


@pytest.mark.parametrize("solver", [solve_exact, solve_torchsde])
def test_one_reverse_step_is_the_vp_closed_form(solver, device):
    backbone, tau, dt = gaussian_backbone(MU, SIGMA0), 0.4, 0.15
    grid = TimeGrid.reverse(tau, dt, t_end=tau - dt)
    x = torch.linspace(-1.0, 1.0, 6, dtype=torch.float64, device=device).view(1, *SHAPE)
    z = torch.linspace(-2.0, 2.0, 6, dtype=torch.float64, device=device).view(1, 1, *SHAPE)
    with torch.no_grad():
        out = solver(backbone.sde, backbone, x, grid, z)
    expected = hand_reverse_step(x, tau, dt, gaussian_score(x, tau), z[0])
    assert torch.allclose(out, expected, rtol=0, atol=1e-12)


def linear_step_product(grid: TimeGrid) -> float:
    """d x_n / d x_0 of Euler-Maruyama on the Gaussian score: prod_k (1 + h_k beta_k (1/2 - 1 / var_k))."""
    factor = 1.0
    for k in range(grid.n_steps):
        tau, h = grid.step(k)
        a = alpha(tau)
        factor *= 1.0 + h * beta(tau) * (0.5 - 1.0 / (a**2 * SIGMA0**2 + 1.0 - a**2))
    return factor


def continuous_gain(t_star: float, t_end: float = 1e-5, n: int = 20000) -> float:
    """exp(int_{t_end}^{t_star} beta (1/2 - 1 / var) dtau): d x(t_end) / d x(t_star) of the linear reverse SDE (Simpson)."""
    def rate(tau: float) -> float:
        a = alpha(tau)
        return beta(tau) * (0.5 - 1.0 / (a**2 * SIGMA0**2 + 1.0 - a**2))

    h = (t_star - t_end) / n
    taus = [t_end + i * h for i in range(n + 1)]
    return math.exp(sum(h * (rate(lo) + 4.0 * rate(lo + h / 2) + rate(hi)) / 6.0 for lo, hi in zip(taus, taus[1:])))


def diffpure_input_gradient(backend: str, dt: float,
                            device: torch.device) -> tuple[torch.Tensor, torch.Tensor, DiffusionPurifier]:
    """(grad_x sum(w * purifier(x)), w, purifier): DiffPure on Gaussian data, t* 0.1, float64, on `device`."""
    config = PurifierConfig(name="diffpure", t_star=0.1, dt=dt, backend=backend)
    purifier = DiffusionPurifier(gaussian_backbone(MU, SIGMA0), config).to(device)
    x = (0.4 + 0.2 * images(2)).to(device).requires_grad_(True)
    w = torch.linspace(-1.0, 2.0, x.numel(), dtype=torch.float64, device=device).view_as(x)
    (grad,) = torch.autograd.grad((purifier(x, torch.tensor([1, 2])) * w).sum(), x)
    return grad, w, purifier


def relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    """||value - reference|| / ||reference||: compares scale as well as direction."""
    return float((value - reference).norm() / reference.norm())


def test_exact_gradient_is_the_product_of_the_euler_step_factors(device):
    """On Gaussian data the discrete solver is affine in x: d out / d x = sqrt(abar) prod_k (...) (2 * 1/2)."""
    grad, w, purifier = diffpure_input_gradient("exact", 0.01, device)
    expected = math.sqrt(hand_alpha_bar(100)) * linear_step_product(purifier.grid) * w
    assert relative_error(grad, expected) < 1e-12


def test_adjoint_gradient_converges_to_the_linear_sde_closed_form(device):
    """torchsde's Euler adjoint approximates the continuous gain exp(int ...) to O(dt), in scale and direction."""
    errors = []
    for dt in (1e-3, 5e-4):
        grad, w, _ = diffpure_input_gradient("torchsde", dt, device)
        errors.append(relative_error(grad, math.sqrt(hand_alpha_bar(100)) * continuous_gain(0.1) * w))
    assert errors[0] < 5e-3 and errors[1] < 0.6 * errors[0]


def test_score_sde_backbone_calls_the_net_at_999_t(device):
    seen = []

    class Net(nn.Module):
        def forward(self, x: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
            seen.append(timesteps)
            return torch.ones_like(x)

    backbone = ScoreSDEBackbone(Net(), VPSDE(BETA_MIN, BETA_MAX, 1000))
    x = torch.zeros(2, *SHAPE, dtype=torch.float64, device=device)
    score = backbone(x, torch.tensor([0.1, 0.5], dtype=torch.float64, device=device))
    assert torch.allclose(seen[0], torch.tensor([99.9, 499.5], dtype=torch.float64, device=device))
    sigma = torch.tensor([math.sqrt(1 - alpha(0.1) ** 2), math.sqrt(1 - alpha(0.5) ** 2)], dtype=torch.float64,
                         device=device)
    assert torch.allclose(score, -1.0 / sigma.view(2, 1, 1, 1).expand_as(x), rtol=1e-12)
