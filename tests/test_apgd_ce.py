"""APGD-CE alone: budgets reach pyautoattack, exact robust accuracy on a linear model, eps ball, seeding, checks."""
from __future__ import annotations

import pytest
import torch

from attacks import ATTACKS, build_attack
from attacks.apgd_ce import ApgdCeEval
from tests.test_attacks import EPS, linear_problem, linear_robust
from utils.config import ConfigError


def test_only_apgd_ce_runs_with_the_configured_budget():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    adversary = ApgdCeEval({"norm": "L2", "n_iter": 7, "eot_iter": 20}).adversary(model, 5, torch.device("cpu"))
    assert adversary.attacks_to_run == ["apgd-ce"] and adversary.version == "custom"
    assert (adversary.apgd.n_iter, adversary.apgd.n_restarts, adversary.apgd.eot_iter) == (7, 1, 20)
    assert (adversary.norm, adversary.epsilon, adversary.seed) == ("L2", 0.5, 5)
    assert "apgd_ce" in ATTACKS.names()
    with pytest.raises(ConfigError, match="n_iter must be >= 1"):
        build_attack("apgd_ce", {"n_iter": 0})


def test_apgd_ce_finds_the_exact_robust_accuracy_of_a_binary_linear_classifier():
    # two classes: the minimal Linf attack moves every pixel by eps against w_y - w_other, which APGD's sign steps reach
    classifier, x, y, indices = linear_problem(n=48, classes=2)
    logits, weight = classifier(x), classifier[1].weight
    ranked = ((logits.amax(1) - logits.amin(1)) / (weight[0] - weight[1]).abs().sum()).sort().values
    eps = float(ranked[23] + ranked[24]) / 2
    exact = linear_robust(classifier, x, y, eps)
    assert exact.sum() == 24
    rng_state = torch.get_rng_state()
    out = build_attack("apgd_ce", {"eps": eps, "n_iter": 20, "eval_samples": 1}).run(classifier, x, y, indices, 3)
    assert torch.equal(torch.get_rng_state(), rng_state)
    assert torch.equal(out.correct["single"], exact) and torch.equal(out.correct["autoattack"], exact)
    assert (out.x_adv - x).abs().max() <= eps + 1e-6 and out.x_adv.min() >= 0 and out.x_adv.max() <= 1
    assert out.flags["check_randomized"] is None and out.flags["check_zero_gradients"] is None
    again = build_attack("apgd_ce", {"eps": eps, "n_iter": 20, "eval_samples": 1}).run(classifier, x, y, indices, 3)
    assert torch.equal(again.x_adv, out.x_adv)


def test_apgd_ce_l2_stays_in_the_ball_and_breaks_an_undefended_model():
    classifier, x, y, indices = linear_problem(n=8)
    assert not linear_robust(classifier, x, y, EPS).any()
    out = build_attack("apgd_ce", {"norm": "L2", "eps": 2.0, "n_iter": 10, "eval_samples": 1}).run(
        classifier, x, y, indices, 0)
    assert ((out.x_adv - x).flatten(1).norm(dim=1) <= 2.0 + 1e-5).all()
    assert out.accuracy()["single"] == 0.0
