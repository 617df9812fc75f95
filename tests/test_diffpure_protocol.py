"""DiffPure's attack protocol: per-iteration decisions, re-checks on fresh purifications, early stop."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from attacks import build_attack
from attacks.diffpure_protocol import DiffPureProtocolConfig
from tests.test_attacks import Defended, NoisyIdentity, linear_problem


class Identity(nn.Module):
    def forward(self, x: torch.Tensor, noise_seeds=None) -> torch.Tensor:
        return x


class Counted(nn.Module):
    """A classifier that records the batch size of every call."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.sizes = model, []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.sizes.append(x.shape[0])
        return self.model(x)


class GradSensitive(nn.Module):
    """Predicts class 1 while gradients are tracked (the attack's forward), class 0 without (re-checks)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        favoured = 1 if torch.is_grad_enabled() else 0
        logits = torch.zeros(x.shape[0], 3, dtype=x.dtype) + 0.0 * x.flatten(1).sum(1, keepdim=True)
        logits[:, favoured] += 1.0
        return logits


def test_defaults_are_diffpures_celebahq_settings():
    config = DiffPureProtocolConfig()
    assert (config.norm, config.radius, config.alpha, config.iterations) == \
        ("Linf", pytest.approx(16 / 255), pytest.approx(2 / 255), 50)
    assert (config.eot_samples, config.defense_samples, config.random_start) == (15, 20, False)


@pytest.mark.parametrize("name", ["bpda_eot_diffpure", "pgd_eot_diffpure"])
def test_breaks_a_linear_classifier_and_keeps_the_breaking_iterate(name):
    classifier, x, y, indices = linear_problem(n=8)
    attack = build_attack(name, {"eot_samples": 2, "defense_samples": 2, "eval_samples": 2})
    out = attack.run(Defended(NoisyIdentity(0.01), classifier), x, y, indices, seed=0)
    assert not bool(out.correct["diffpure"].any())
    assert bool((out.predictions["diffpure"] != y).all())
    assert float((out.x_adv - x).abs().max()) <= 16 / 255 + 1e-6


def test_an_image_broken_at_the_start_stops_the_attack_at_once():
    classifier, x, y, indices = linear_problem(n=3)
    logged = Counted(classifier)
    attack = build_attack("bpda_eot_diffpure", {"eot_samples": 4, "defense_samples": 5, "eval_samples": 1,
                                                "sanity_checks": False})
    out = attack.run(Defended(Identity(), logged), x, (y + 1) % 10, indices, seed=0)
    assert logged.sizes == [4 * 3, 5 * 3, 3]  # one gradient, one re-check, the final scoring
    assert torch.equal(out.x_adv, x) and not bool(out.correct["diffpure"].any())


def test_recheck_on_fresh_purifications_keeps_an_image_defended():
    x, y = torch.full((2, 1, 4, 4), 0.5), torch.zeros(2, dtype=torch.int64)
    logged = Counted(GradSensitive())
    attack = build_attack("bpda_eot_diffpure", {"iterations": 3, "eot_samples": 2, "defense_samples": 3,
                                                "eval_samples": 1, "sanity_checks": False})
    out = attack.run(Defended(Identity(), logged), x, y, torch.arange(2), seed=0)
    assert bool(out.correct["diffpure"].all())
    assert logged.sizes[:-1] == [2 * 2, 3 * 2] * 4  # every iteration looks broken and is re-checked
