"""What a GPU needs to fit: the exact solver's memory budget (purifier.graph_steps) and eval.max_batch."""
from __future__ import annotations

import pytest
import torch

from attacks.common import seeded_call
from attacks.pgd import eot_point
from classifiers.wide_resnet import wide_resnet
from evaluation.results import config_hash
from runners.defended import DefendedClassifier
from runners.purifiers import DiffusionPurifier, PurifierConfig
from tests.test_lm import tiny_ncsnpp
from utils.config import ConfigError

STEPS = 4


def coup(device: torch.device, **fields) -> DiffusionPurifier:
    """COUP with the guidance differentiated, STEPS steps, on the tiny NCSN++ with a WRN-16-2."""
    classifier = wide_resnet(16, 2, in_channels=3, num_classes=10, seed=0).eval()
    config = PurifierConfig(name="coup", t_star=0.004, dt=0.001, grad_mode="full", **fields)
    return DiffusionPurifier(tiny_ncsnpp(), config, classifier).to(device)


def gradient_and_network_calls(purifier: DiffusionPurifier, x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(d sum(purified * w) / dx, score-network calls of the forward and backward together)."""
    calls = []
    handle = purifier.backbone.network.register_forward_hook(lambda module, inputs, output: calls.append(1))
    x_in = x.clone().requires_grad_(True)
    weights = torch.linspace(-1.0, 1.0, x.numel(), device=x.device).view_as(x)
    (grad,) = torch.autograd.grad((purifier(x_in, torch.tensor([3, 4])) * weights).sum(), x_in)
    handle.remove()
    return grad, len(calls)


def test_graph_steps_all_gives_the_step_checkpointed_gradient_with_fewer_network_passes(device):
    x = torch.rand((2, 3, 32, 32), generator=torch.Generator().manual_seed(0)).to(device)
    checkpointed, recomputed = gradient_and_network_calls(coup(device), x)
    assert recomputed == 2 * STEPS  # each step run again in the backward
    for budget, calls in ((1, 2 * STEPS - 1), (STEPS // 2, STEPS + STEPS // 2), ("all", STEPS), (99, STEPS)):
        grad, counted = gradient_and_network_calls(coup(device, graph_steps=budget), x)
        assert counted == calls
        assert torch.allclose(grad, checkpointed, rtol=1e-6, atol=1e-6 * checkpointed.abs().max().item())
    plain, _ = gradient_and_network_calls(coup(device, checkpoint=False), x)
    assert torch.allclose(plain, checkpointed, rtol=1e-6, atol=1e-6 * checkpointed.abs().max().item())


@pytest.mark.parametrize("budget", [-1, 1.5, "half"])
def test_a_graph_budget_that_is_not_a_step_count_is_refused(budget):
    with pytest.raises(ConfigError, match="graph_steps"):
        PurifierConfig(graph_steps=budget)


def test_max_batch_chunks_the_rows_and_changes_neither_logits_nor_gradients(device):
    purifier = coup(device)
    model = DefendedClassifier(purifier, purifier.guidance_classifier).eval()
    x = torch.rand((5, 3, 32, 32), generator=torch.Generator().manual_seed(1)).to(device)
    seeds = torch.arange(5)
    rows = []
    handle = purifier.backbone.network.register_forward_hook(lambda module, inputs, output: rows.append(len(inputs[0])))
    whole = model(x, seeds)
    model.max_batch = 2
    with torch.no_grad():
        chunked = model(x, seeds)
    handle.remove()
    assert rows[:STEPS] == [5] * STEPS and rows[STEPS:] == [2, 2, 2, 2, 2, 2, 2, 2, 1, 1, 1, 1]
    assert torch.allclose(chunked, whole.detach(), rtol=1e-5, atol=1e-6)
    y, draws = torch.tensor([0, 1, 2, 3, 4]).to(device), torch.arange(10)
    model.max_batch = None
    whole_point = eot_point(seeded_call(model), x, y, 2, draws)
    model.max_batch = 3
    chunked_point = eot_point(seeded_call(model), x, y, 2, draws)
    assert torch.allclose(chunked_point.grad, whole_point.grad, rtol=1e-4, atol=1e-4 * whole_point.grad.abs().max())
    assert torch.allclose(chunked_point.loss, whole_point.loss, rtol=1e-5)


def test_device_batching_and_memory_budget_do_not_change_the_run_identity():
    resolved = {"eval": {"seed": 1, "output_dir": "a", "device": "auto", "max_batch": None, "deterministic": False},
                "purifier": {"name": "coup", "graph_steps": 0}, "data": {"data_seed": 0}}
    moved = {"eval": {"seed": 1, "output_dir": "b", "device": "cuda:1", "max_batch": 64, "deterministic": True},
             "purifier": {"name": "coup", "graph_steps": "all"}, "data": {"data_seed": 0}}
    assert config_hash(resolved) == config_hash(moved)
    assert config_hash(resolved) != config_hash({**resolved, "eval": {**resolved["eval"], "seed": 2}})
