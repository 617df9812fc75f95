"""APGD-CE alone: AutoAttack wiring (custom list of one attack, budgets, seed) and a real run on a linear model."""
from __future__ import annotations

import pytest

import attacks.apgd as apgd_module
from attacks import build_attack
from tests.test_attacks import EPS, linear_problem
from utils.config import ConfigError


def test_apgd_ce_runs_only_apgd_ce_with_the_configured_budget(monkeypatch):
    built = []

    class Recorder:
        def __init__(self, model, **kwargs):
            built.append(kwargs)
            self.model, self.apgd = model, type("APGD", (), {})()

        def run_standard_evaluation(self, x, y, *, batch_size):
            return x.clone(), self.model(x).argmax(-1)

    monkeypatch.setattr(apgd_module, "autoattack_class", lambda: Recorder)
    classifier, x, y, indices = linear_problem(n=4)
    attack = build_attack("apgd_ce", {"n_iter": 7, "eot_iter": 3, "n_restarts": 2})
    assert attack.adversary(classifier, 5, x.device).apgd.__dict__ == {"n_restarts": 2, "n_iter": 7, "eot_iter": 3}
    assert built == [{"norm": "Linf", "eps": EPS, "version": "custom", "attacks": ["apgd-ce"], "seed": 5,
                      "device": x.device}]
    with pytest.raises(ConfigError, match="n_restarts"):
        build_attack("apgd_ce", {"n_restarts": 0})


def test_real_apgd_ce_breaks_a_linear_model_inside_the_ball():
    classifier, x, y, indices = linear_problem(n=8)
    out = build_attack("apgd_ce", {"eval_samples": 1, "n_iter": 20}).run(classifier, x, y, indices, seed=0)
    assert out.accuracy()["autoattack"] == 0.0 and out.accuracy()["single"] == 0.0
    assert (out.x_adv - x).abs().max() <= EPS + 1e-6
    assert "check_randomized" in out.flags
