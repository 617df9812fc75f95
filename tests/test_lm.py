"""Likelihood maximization (lm) and COUP-LM (coup_lm): closed forms, exact gradients, guidance, seeds, backbones."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from guided_diffusion import GuidedDiffusionBackbone, UNetConfig, load_unet
from guided_diffusion.schedules import IMPROVED_CIFAR10_SCHEDULE, DiscreteSchedule
from runners.defended import PURIFIERS, parse_purifier_config
from runners.lm import LikelihoodMaximizationPurifier, LMConfig, adam_update, diffusion_loss
from diffusion.sde import VPSDE
from score_sde import ScoreSDEBackbone, load_score_model
from tests.test_ncsnpp import tiny_config as tiny_ncsnpp_config
from tests.toys import TinyClassifier, gaussian_backbone
from utils.config import ConfigError, from_dict

DATA = Path(__file__).parent / "data"
SHAPE = (1, 2, 2)
MU = 0.1  # data mean of the Gaussian backbone in [-1, 1]


def _images(n: int, seed: int = 0, dtype=torch.float64, shape=SHAPE,
            device: torch.device | str = "cpu") -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (0.2 + 0.6 * torch.rand((n, *shape), generator=gen)).to(device, dtype)


def _lm(name: str = "lm", sigma0: float = 0.2, dtype=torch.float64, device: torch.device | str = "cpu",
        **fields) -> LikelihoodMaximizationPurifier:
    classifier = TinyClassifier(4, seed=1).to(dtype)
    purifier = LikelihoodMaximizationPurifier(gaussian_backbone(MU, sigma0), LMConfig(name=name, **fields), classifier)
    return purifier.to(device)


def tiny_ncsnpp() -> ScoreSDEBackbone:
    """The reference tiny NCSN++ (3 x 32 x 32) as a VP backbone (float32: its time embedding is float32)."""
    net = load_score_model(tiny_ncsnpp_config(), DATA / "ncsnpp_tiny" / "checkpoint.pth")
    return ScoreSDEBackbone(net, VPSDE()).eval()


def tiny_improved_diffusion() -> GuidedDiffusionBackbone:
    """The reference tiny improved-diffusion UNet (learned sigma) with the CIFAR-10 schedule, float32."""
    data = json.loads((DATA / "improved_diffusion_tiny" / "config.json").read_text())["config"]
    net = load_unet(from_dict(UNetConfig, data), DATA / "improved_diffusion_tiny" / "model.pt")
    schedule = DiscreteSchedule.from_config(IMPROVED_CIFAR10_SCHEDULE)
    return GuidedDiffusionBackbone(net, schedule, VPSDE()).eval()


def test_sigma_to_time_inverts_the_vp_noise_to_signal_ratio(device):
    sde = VPSDE()
    sigma = torch.tensor([0.05, 0.4, 0.6, 3.0], dtype=torch.float64, device=device)
    t = sde.edm_sigma_to_time(sigma)
    ratio = sde.marginal_std(t) / sde.marginal_mean_coeff(t)
    assert torch.allclose(ratio, sigma, rtol=1e-9, atol=0)


def test_point_mass_objective_is_the_squared_distance_and_gradient_descent_contracts_exactly(device):
    # data = delta(mu): eps_theta(x_t) = (x_t - alpha mu) / sigma_t, so sigma^2 ||eps_theta - eps||^2 = ||x - mu||^2
    # for every (sigma, eps), and one gradient step of size eta gives mu + (1 - 2 eta) (x - mu)
    x01 = _images(3, device=device)
    x = 2 * x01 - 1
    sigma = torch.tensor([[0.4, 0.5, 0.6]], dtype=torch.float64, device=device)
    eps = torch.randn((1, 3, *SHAPE), generator=torch.Generator().manual_seed(3), dtype=torch.float64).to(device)
    loss = diffusion_loss(gaussian_backbone(MU, 0.0), x, sigma, eps)
    assert torch.allclose(loss, (x - MU).flatten(1).pow(2).sum(1), rtol=1e-10, atol=0)
    out = _lm(sigma0=0.0, device=device, optimizer="sgd", lr=0.1, steps=3)(x01, torch.tensor([1, 2, 3]))
    assert torch.allclose(2 * out - 1, MU + 0.8**3 * (x - MU), rtol=0, atol=1e-12)


def test_differentiable_adam_matches_torch_optim_adam(device):
    target = torch.randn(3, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64).to(device)
    x_ref = torch.zeros(3, 5, dtype=torch.float64, device=device, requires_grad=True)
    optimizer = torch.optim.Adam([x_ref], lr=0.1)
    x, state = torch.zeros(3, 5, dtype=torch.float64, device=device), ()
    for k in range(1, 6):
        optimizer.zero_grad()
        ((x_ref - target) ** 4).sum().backward()
        optimizer.step()
        delta, state = adam_update(4 * (x - target) ** 3, state, k, 0.1)
        x = x + delta
        assert torch.allclose(x, x_ref.detach(), rtol=0, atol=1e-7)


def test_adam_lm_moves_every_pixel_towards_the_data_mean_by_the_learning_rate(device):
    # Adam's first step is -lr * sign(grad) (up to its eps), and grad = 2 (x - mu) for point-mass data
    x01 = _images(2, device=device)
    out = _lm(sigma0=0.0, device=device, lr=0.01, steps=1)(x01, torch.tensor([4, 5]))
    expected = 2 * x01 - 1 - 0.01 * torch.sign(2 * x01 - 1 - MU)
    assert torch.allclose(2 * out - 1, expected, rtol=0, atol=1e-9)


def test_gaussian_lm_gradient_matches_the_closed_form_in_expectation(device):
    # data N(mu, s0^2): eps_theta = c (x_t - alpha mu), c = sigma_t / (alpha^2 s0^2 + sigma_t^2), so
    # E_eps grad_x [sigma^2 ||eps_theta - eps||^2] = 2 sigma^2 c^2 alpha^2 (x - mu): a pull towards the mean
    s0, level, n = 0.3, 0.5, 20000
    purifier = _lm(sigma0=s0, device=device, n_noise=n, sigma_min=level, sigma_max=level)
    x01 = _images(2, device=device)
    sigma, eps = purifier.draw_noise(x01, torch.tensor([8, 9]))
    grad = purifier.objective_gradient(2 * x01 - 1, sigma[0], eps[0], None)
    sde = purifier.backbone.sde
    t = sde.edm_sigma_to_time(torch.tensor(level, dtype=torch.float64, device=device))
    alpha, std = sde.marginal_mean_coeff(t), sde.marginal_std(t)
    c = std / (alpha**2 * s0**2 + std**2)
    expected = 2 * level**2 * c**2 * alpha**2 * (2 * x01 - 1 - MU)
    noise_sd = 2 * level**2 * c * alpha * (1 - c * std) / n**0.5  # std of the Monte-Carlo noise term
    assert (grad - expected).abs().max() < 5 * noise_sd
    assert (grad * (2 * x01 - 1 - MU) > 0).all()


def test_lm_objective_gradient_matches_finite_differences_on_tiny_ncsnpp(device):
    # float32 network (its time embedding is float32) and J ~ 1e3: central differences along random unit
    # directions with a large step h = 0.1 (float32 round-off dominates below h ~ 0.05, curvature is negligible);
    # J's round-off (~1e-4 per evaluation) still leaves ~1e-3 of absolute noise in the difference quotient, more
    # than 2e-3 of the smaller directional derivatives (~0.3), hence the absolute floor
    backbone = tiny_ncsnpp().to(device)
    gen = torch.Generator().manual_seed(0)
    x = (2 * torch.rand((2, 3, 32, 32), generator=gen) - 1).to(device)
    sigma = torch.tensor([[0.45, 0.55]], device=device)
    eps = torch.randn((1, 2, 3, 32, 32), generator=gen).to(device)
    x_in = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(diffusion_loss(backbone, x_in, sigma, eps).sum(), x_in)

    def central(direction: torch.Tensor, h: float) -> float:
        diff = diffusion_loss(backbone, x + h * direction, sigma, eps) - diffusion_loss(
            backbone, x - h * direction, sigma, eps)
        return float(diff.double().sum()) / (2 * h)

    with torch.no_grad():
        for _ in range(3):
            direction = torch.randn(x.shape, generator=gen).to(device)
            direction /= direction.norm()
            numeric = central(direction, 0.1)
            assert numeric == pytest.approx(float((grad * direction).sum()), rel=2e-3, abs=2e-3)


@pytest.mark.parametrize("name", ["lm", "coup_lm"])
def test_purifier_input_gradient_through_every_step_matches_finite_differences(name, device):
    purifier = _lm(name, device=device, optimizer="sgd", lr=0.05, steps=3, guidance_scale=None)
    x01, seeds = _images(2, device=device), torch.tensor([11, 12])
    x_in = x01.clone().requires_grad_(True)
    weights = torch.linspace(-1, 1, x01.numel(), dtype=torch.float64).view_as(x01).to(device)
    (grad,) = torch.autograd.grad((purifier(x_in, seeds) * weights).sum(), x_in)
    h = 1e-6
    numeric = torch.zeros_like(x01)
    with torch.no_grad():
        for index in range(x01.numel()):
            bump = torch.zeros(x01.numel(), dtype=torch.float64, device=device)
            bump[index] = h
            bump = bump.view_as(x01)
            plus = (purifier(x01 + bump, seeds) * weights).sum()
            minus = (purifier(x01 - bump, seeds) * weights).sum()
            numeric.view(-1)[index] = (plus - minus) / (2 * h)
    assert torch.allclose(grad, numeric, rtol=1e-5, atol=1e-8)


def test_bpda_mode_passes_the_gradient_straight_through(device):
    purifier = _lm(device=device, grad_mode="bpda")
    x_in = _images(2, device=device).requires_grad_(True)
    out = purifier(x_in, torch.tensor([1, 2]))
    (grad,) = torch.autograd.grad(out.sum(), x_in)
    assert torch.equal(grad, torch.ones_like(grad))
    assert torch.equal(out.detach(), _lm(device=device)(x_in.detach(), torch.tensor([1, 2])))


def test_lambda_zero_gives_exactly_lm_and_nonzero_lambda_changes_it(device):
    x, seeds = _images(3, device=device), torch.tensor([5, 6, 7])
    lm = _lm("lm", device=device)(x, seeds)
    assert torch.equal(_lm("coup_lm", device=device, guidance_scale=0.0)(x, seeds), lm)
    assert not torch.equal(_lm("coup_lm", device=device, guidance_scale=1.0)(x, seeds), lm)


def test_guidance_raises_the_confidence_in_the_guided_label(device):
    x, seeds = _images(6, device=device), torch.arange(6)
    classifier = TinyClassifier(4, seed=1).double().to(device)
    target = classifier(x).argmin(dim=1)  # the least likely class, so the guidance has work to do
    lm = _lm("lm", device=device)(x, seeds)
    guided = _lm("coup_lm", device=device, guidance_scale=1.0, label_mode="given")(x, seeds, labels=target)

    def confidence(images: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(classifier(images), dim=1).gather(1, target.view(-1, 1)).squeeze(1)

    assert (confidence(guided) > confidence(lm)).all()


def test_deterministic_given_seeds_and_independent_of_batch_size(device):
    for name in ("lm", "coup_lm"):
        purifier = _lm(name, device=device, n_noise=2)
        x, seeds = _images(4, device=device), torch.tensor([21, 22, 23, 24])
        batch = purifier(x, seeds)
        assert torch.equal(purifier(x, seeds), batch)
        for b in range(4):
            assert torch.allclose(purifier(x[b:b + 1], seeds[b:b + 1]), batch[b:b + 1], rtol=0, atol=1e-12)
        assert not torch.equal(purifier(x, seeds + 100), batch)


def test_ball_projection_keeps_the_output_within_the_radius(device):
    x = _images(3, device=device)
    for norm, measure in (("Linf", lambda d: d.flatten(1).abs().amax(1)), ("L2", lambda d: d.flatten(1).norm(dim=1))):
        purifier = _lm(sigma0=0.0, device=device, optimizer="sgd", lr=0.4, radius=0.02, ball_norm=norm)
        out = purifier(x, torch.tensor([1, 2, 3]))
        assert (measure(out - x) <= 0.02 + 1e-12).all() and (measure(out - x) > 0.019).all()


@pytest.mark.parametrize("make", [tiny_ncsnpp, tiny_improved_diffusion], ids=["ncsnpp", "improved_diffusion"])
def test_runs_on_the_framework_backbones_with_finite_gradients(make, device):
    classifier = TinyClassifier(3 * 32 * 32, num_classes=10).to(device)
    purifier = LikelihoodMaximizationPurifier(make(), LMConfig(name="coup_lm", steps=2), classifier).to(device)
    x_in = _images(2, dtype=torch.float32, shape=(3, 32, 32), device=device).requires_grad_(True)
    out = purifier(x_in, torch.tensor([1, 2]))
    assert out.shape == x_in.shape and out.min() >= 0 and out.max() <= 1
    assert not torch.equal(out, x_in)
    (grad,) = torch.autograd.grad(classifier(out).logsumexp(1).sum(), x_in)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_config_is_validated_and_registered():
    assert {"lm", "coup_lm"} <= set(PURIFIERS.names())
    assert parse_purifier_config({"name": "coup_lm"}).guidance_scale == 1.0
    assert parse_purifier_config({"name": "lm"}).guidance_scale == 0.0
    with pytest.raises(ConfigError, match="has no guidance"):
        parse_purifier_config({"name": "lm", "guidance_scale": 1.0})
    with pytest.raises(ConfigError, match="adam, sgd"):
        parse_purifier_config({"name": "lm", "optimizer": "rmsprop"})
    with pytest.raises(ConfigError, match="sigma_min"):
        parse_purifier_config({"name": "lm", "sigma_min": 0.7})
    with pytest.raises(RuntimeError, match="torch.no_grad"), torch.inference_mode():
        _lm()(_images(1))
