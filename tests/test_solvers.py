"""Reverse-SDE solvers: the analytic Gaussian case, the time grid, backend agreement, flat memory."""
from __future__ import annotations

import math

import pytest
import torch

from runners.solvers import TimeGrid, solve_exact
from runners.torchsde_backend import solve_torchsde
from tests.toys import gaussian_backbone


def test_time_grid_matches_released_step_counts():
    assert TimeGrid.reverse(0.1, 1e-3).n_steps == 100
    assert TimeGrid.reverse(0.075, 1e-3).n_steps == 75
    grid = TimeGrid.reverse(0.1, 1e-3)
    assert grid.taus[0] == 0.1 and grid.taus[-1] == 1e-5
    assert grid.step(99)[1] == pytest.approx(1e-3 - 1e-5)


@pytest.mark.parametrize("t_star,dt", [(0.0, 1e-3), (1.5, 1e-3), (0.1, 0.0), (0.1, -1e-3)])
def test_time_grid_rejects_bad_settings(t_star, dt):
    with pytest.raises(ValueError, match="t_star|dt"):
        TimeGrid.reverse(t_star, dt)


@pytest.mark.parametrize("solver", [solve_exact, solve_torchsde])
def test_reverse_sde_recovers_gaussian_data(solver, device):
    """Samples of the forward marginal at t* purified with the exact score are N(mu, sigma0^2) again."""
    mu, sigma0, t_star = 0.3, 0.2, 0.5
    backbone = gaussian_backbone(mu, sigma0)
    sde = backbone.sde
    gen = torch.Generator().manual_seed(0)
    n = 20000
    x0 = mu + sigma0 * torch.randn(n, 1, 1, 1, generator=gen, dtype=torch.float64)
    alpha = float(sde.marginal_mean_coeff(torch.tensor(t_star)))
    std = float(sde.marginal_std(torch.tensor(t_star)))
    x_t = (alpha * x0 + std * torch.randn(x0.shape, generator=gen, dtype=torch.float64)).to(device)
    grid = TimeGrid.reverse(t_star, 2e-3)
    z = torch.randn((grid.n_steps, *x_t.shape), generator=gen, dtype=torch.float64).to(device)
    with torch.no_grad():
        out = solver(sde, backbone, x_t, grid, z)
    mean_err = 4 * sigma0 / math.sqrt(n)
    var_err = 4 * sigma0**2 * math.sqrt(2 / n)
    assert abs(out.mean().item() - mu) < mean_err + 2e-3
    assert abs(out.var().item() - sigma0**2) < var_err + 2e-3
    # not the identity map: the start had variance alpha^2 sigma0^2 + std^2
    assert x_t.var().item() > 3 * sigma0**2


def test_backends_agree_on_gaussian_score(device):
    backbone = gaussian_backbone()
    grid = TimeGrid.reverse(0.1, 1e-3)
    gen = torch.Generator().manual_seed(1)
    x = (torch.rand(3, 1, 4, 4, generator=gen) * 2 - 1).to(device)
    z = torch.randn((grid.n_steps, *x.shape), generator=gen).to(device)
    with torch.no_grad():
        a = solve_exact(backbone.sde, backbone, x, grid, z)
        b = solve_torchsde(backbone.sde, backbone, x, grid, z)
    assert torch.allclose(a, b, atol=1e-5, rtol=0)


def test_checkpointed_gradient_equals_plain_backprop(device):
    backbone = gaussian_backbone()
    grid = TimeGrid.reverse(0.05, 1e-2)
    gen = torch.Generator().manual_seed(2)
    x = (torch.rand(2, 1, 3, 3, generator=gen, dtype=torch.float64) * 2 - 1).to(device).requires_grad_(True)
    z = torch.randn((grid.n_steps, *x.shape), generator=gen, dtype=torch.float64).to(device)
    w = torch.randn(x.shape, generator=gen, dtype=torch.float64).to(device)
    (g_ckpt,) = torch.autograd.grad((solve_exact(backbone.sde, backbone, x, grid, z) * w).sum(), x)
    (g_plain,) = torch.autograd.grad((solve_exact(backbone.sde, backbone, x, grid, z, checkpoint=False) * w).sum(), x)
    assert torch.allclose(g_ckpt, g_plain, atol=1e-12)


def test_noise_table_shape_is_checked():
    backbone = gaussian_backbone()
    grid = TimeGrid.reverse(0.1, 1e-2)
    with pytest.raises(ValueError, match="noise table"):
        solve_exact(backbone.sde, backbone, torch.zeros(2, 1, 3, 3), grid, torch.zeros(3, 2, 1, 3, 3))
