"""The GPU path's fixes that tests/test_sync.py does not cover: attention kernels, timing, the forked RNG, host times."""
from __future__ import annotations

import contextlib

import torch
from torch import nn

import attacks.autoattack as autoattack_module
import evaluation.run_plan as run_plan
import runners.lm as lm_module
from attacks.registry import build_attack
from diffusion.sde import VPSDE
from runners.lm import LikelihoodMaximizationPurifier, LMConfig
from runners.solvers import TimeGrid
from runners.torchsde_backend import TabulatedBrownian, solve_torchsde
from tests.test_attacks import linear_problem
from tests.toys import TinyClassifier, gaussian_backbone


def test_lm_forces_the_math_attention_only_when_its_gradient_is_differentiated_again(monkeypatch, device):
    entered = []
    monkeypatch.setattr(lm_module, "sdpa_kernel", lambda backend: entered.append(backend) or contextlib.nullcontext())
    purifier = LikelihoodMaximizationPurifier(gaussian_backbone(0.1, 0.2), LMConfig(steps=1),
                                              TinyClassifier(4, seed=1).double()).to(device)
    x = torch.zeros((2, 1, 2, 2), dtype=torch.float64, device=device)
    sigma, eps = torch.full((1, 2), 0.5, dtype=torch.float64), torch.zeros((1, 2, 1, 2, 2), dtype=torch.float64)
    purifier.objective_gradient(x, sigma.to(device), eps.to(device), None)
    assert entered == []
    purifier.objective_gradient(x.requires_grad_(True), sigma.to(device), eps.to(device), None)
    assert len(entered) == 1


def test_the_time_estimate_waits_for_the_device_and_excludes_the_warm_up(monkeypatch):
    events = []
    monkeypatch.setattr(run_plan, "synchronize", lambda device: events.append("sync"))

    class Counting(nn.Module):
        def forward(self, x, noise_seeds=None):
            events.append(len(x))
            return x.flatten(1)[:, :3]

    x = torch.rand((4, 1, 2, 2))
    forward, gradient = run_plan.seconds_per_image(Counting(), x, torch.zeros(4, dtype=torch.int64), torch.arange(4))
    assert events == [1, "sync", 4, "sync", 4, "sync"]  # warm-up on one image, then each timed pass synchronised
    assert forward >= 0.0 and gradient >= 0.0


def test_autoattack_forks_the_rng_of_the_attacked_device_only(monkeypatch, device):
    forked, fork_rng = [], torch.random.fork_rng
    monkeypatch.setattr(torch.random, "fork_rng", lambda devices: forked.append(devices) or fork_rng(devices=devices))

    class Recorder:
        def __init__(self, model, **kwargs):
            self.model = model

        def run_standard_evaluation(self, x, y, *, batch_size):
            return x.clone(), self.model(x).argmax(-1)

    monkeypatch.setattr(autoattack_module, "autoattack_class", lambda: Recorder)
    classifier, x, y, indices = linear_problem(n=2)
    build_attack("autoattack", {"eval_samples": 1}).run(classifier.to(device), x.to(device), y.to(device), indices, 0)
    assert forked == [[] if device.type == "cpu" else [x.to(device).device]]


def test_the_torchsde_path_keeps_its_times_on_the_host(monkeypatch, device):
    seen = []
    monkeypatch.setattr(TabulatedBrownian, "__call__",
                        lambda self, ta, tb=None, **kw: seen.append((ta, tb)) or self._path(tb) - self._path(ta))
    grid = TimeGrid.reverse(0.03, 0.01, 0.0)
    x = torch.zeros((2, 1, 2, 2), device=device)
    z = torch.randn((3, 2, 1, 2, 2), generator=torch.Generator().manual_seed(0)).to(device)
    out = solve_torchsde(VPSDE(), gaussian_backbone(0.1, 0.2).to(device), x, grid, z)
    assert out.device.type == device.type and len(seen) == grid.n_steps
    assert all(t.device.type == "cpu" for pair in seen for t in pair)
