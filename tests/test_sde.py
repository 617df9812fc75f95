"""VP-SDE: marginals against a Monte-Carlo simulation of the forward SDE, and the discrete DDPM schedule."""
from __future__ import annotations

import math

import pytest
import torch

from diffusion.sde import DiscreteDDPMSchedule, VPSDE, std_to_time


@pytest.mark.parametrize("t_end", [0.1, 0.5, 1.0])
def test_marginal_matches_monte_carlo_of_forward_sde(t_end, device):
    sde = VPSDE(0.1, 20.0)
    gen = torch.Generator().manual_seed(0)
    n, steps = 40000, 1000
    x0 = torch.full((n, 1), 0.7, dtype=torch.float64, device=device)
    x, h = x0.clone(), t_end / steps
    for k in range(steps):
        t = torch.tensor(k * h, dtype=torch.float64, device=device)
        dw = torch.randn(x.shape, generator=gen, dtype=torch.float64).to(device)
        x = x + sde.drift(x, t) * h + sde.diffusion(t) * math.sqrt(h) * dw
    mean, std = sde.marginal_prob(x0, torch.tensor(t_end, dtype=torch.float64, device=device))
    tol_mean = 4 * float(std) / math.sqrt(n) + 1e-3
    assert abs(x.mean().item() - mean[0, 0].item()) < tol_mean
    assert abs(x.std().item() - float(std)) < 4 * float(std) / math.sqrt(2 * n) + 2e-3


def test_marginal_closed_form_limits(device):
    sde = VPSDE(0.1, 20.0)
    t = torch.tensor([0.0, 1.0], dtype=torch.float64, device=device)
    assert sde.marginal_mean_coeff(t)[0] == 1.0 and sde.marginal_std(t)[0] == 0.0
    assert sde.marginal_mean_coeff(t)[1].item() == pytest.approx(math.exp(-0.25 * 19.9 - 0.05))
    assert sde.marginal_std(t)[1].item() ** 2 + sde.marginal_mean_coeff(t)[1].item() ** 2 == pytest.approx(1.0)


def test_discrete_schedule_alpha_bar_at_diffpure_steps():
    schedule = DiscreteDDPMSchedule(0.1, 20.0, 1000)
    assert schedule.betas[0].item() == pytest.approx(1e-4) and schedule.betas[-1].item() == pytest.approx(0.02)
    assert schedule.alpha_bar(schedule.step_of(0.1)) == pytest.approx(0.8970, abs=1e-4)
    assert schedule.alpha_bar(schedule.step_of(0.075)) == pytest.approx(0.9391, abs=1e-4)
    with pytest.raises(ValueError, match="step k"):
        schedule.alpha_bar(0)


def test_reverse_drift_and_std_inversion(device):
    sde = VPSDE(0.1, 20.0)
    x, score = torch.randn(2, 3).to(device), torch.randn(2, 3).to(device)
    t = torch.tensor([0.2, 0.6], device=device)
    beta = (0.1 + 19.9 * t).view(2, 1)
    assert torch.allclose(sde.reverse_drift(x, t, score), -0.5 * beta * x - beta * score)
    for t_val in (0.01, 0.3, 0.9):
        t_tensor = torch.tensor(t_val, dtype=torch.float64, device=device)
        assert std_to_time(sde, sde.marginal_std(t_tensor).item()) == pytest.approx(t_val, rel=1e-9)


def test_bad_sde_parameters():
    with pytest.raises(ValueError, match="beta_min"):
        VPSDE(20.0, 0.1)
