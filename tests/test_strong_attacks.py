"""APGD-EOT, DiffAttack, selective EOT, the deterministic mode and the cascade on cases with known answers."""
from __future__ import annotations

from typing import Optional

import pytest
import torch
from torch import nn

from attacks import build_attack
from attacks.aggregation import SelectiveSettings, fixed_noise, selective_gradient
from attacks.apgd import Point, apgd_checkpoints, halving, keep_most_wrong
from attacks.diffattack import deviation_tap, reference_states, step_weights
from attacks.losses import dlr_rows
from evaluation.run_plan import config_budget
from runners.defended import DefendedClassifier
from runners.purifiers import DiffusionPurifier, IdentityPurifier, PurifierConfig
from runners.solvers import reverse_em_step
from tests.test_attacks import CallLog, Defended, NoisyIdentity, linear_problem, linear_robust
from tests.toys import TinyClassifier, gaussian_backbone
from utils.images import to_diffusion_space


class SeedLog(nn.Module):
    """Wraps a model and records the noise seeds of every call."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.seeds = model, []

    def forward(self, x: torch.Tensor, noise_seeds: Optional[torch.Tensor] = None) -> torch.Tensor:
        self.seeds.append(noise_seeds)
        return self.model(x, noise_seeds)


def linear_robust_l2(classifier: nn.Sequential, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    """Exact L2 robustness of a linear classifier away from the box: margin_j > eps * ||w_y - w_j||_2 for all j."""
    weight, logits = classifier[1].weight, classifier(x)
    margins = logits.gather(1, y[:, None]) - logits
    norms = (weight[y][:, None, :] - weight[None, :, :]).norm(dim=-1)
    return ((margins > eps * norms) | (torch.arange(weight.shape[0])[None, :] == y[:, None])).all(dim=1)


@pytest.mark.parametrize("norm, eps, exact_fn", [("Linf", 0.004, linear_robust), ("L2", 0.05, linear_robust_l2)])
def test_apgd_dlr_reaches_exact_robust_accuracy_of_linear_classifier(norm, eps, exact_fn):
    classifier, x, y, indices = linear_problem(n=64, classes=10)
    exact = exact_fn(classifier, x, y, eps)
    assert 0 < int(exact.sum()) < 64  # some images provably robust, some not
    assert ((x - 2 * eps >= 0) & (x + 2 * eps <= 1)).all()  # the box never binds, so the bound is exact
    out = build_attack("apgd_eot", {"norm": norm, "eps": eps, "iterations": 50, "eot_samples": 1, "loss": "dlr",
                                    "eval_samples": 1}).run(classifier, x, y, indices, seed=1)
    assert torch.equal(out.correct["worst"], exact)
    delta = (out.x_adv - x).flatten(1)
    size = delta.abs().amax(1) if norm == "Linf" else delta.norm(dim=1)
    assert (size <= eps + 1e-6).all()
    assert out.history["loss"].shape == (64, 51) and out.history["correct"].dtype == torch.bool
    ce = build_attack("apgd_eot", {"norm": norm, "eps": eps, "iterations": 50, "eot_samples": 1, "loss": "ce",
                                   "eval_samples": 1}).run(classifier, x, y, indices, seed=1)
    assert bool((ce.correct["worst"] | ~exact).all())  # CE never breaks a provably robust image either


def test_dlr_loss_is_positive_exactly_when_misclassified_and_scale_invariant():
    logits = torch.tensor([[3.0, 1.0, 0.0, -1.0], [0.5, 2.0, 1.0, 0.0]])
    y = torch.tensor([0, 0])
    loss = dlr_rows(logits, y)
    assert torch.allclose(loss, torch.tensor([-(3.0 - 1.0) / (3.0 - 0.0), -(0.5 - 2.0) / (2.0 - 0.5)]))
    assert torch.allclose(dlr_rows(5 * logits + 2, y), loss)


def test_apgd_checkpoints_follow_the_paper():
    assert apgd_checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]


def test_selective_aggregation_follows_the_breakable_sample_and_tends_to_the_mean():
    """Three purifications far from the boundary (DLR -1, gradient a) and one near it (DLR -0.1, gradient v): a
    step of 0.5 along v breaks the latter (predicted DLR 0.4) and no step breaks the others, so a sharp E-step puts
    all weight on it; with lambda -> 0 every weight is equal and the aggregate is the EOT mean."""
    a, v = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    grads = torch.stack([a, a, a, v])[:, None, :]  # (K=4, B=1, 2)
    losses = torch.tensor([[-1.0], [-1.0], [-1.0], [-0.1]])
    for norm in ("L2", "Linf"):
        sharp = selective_gradient(grads, losses, SelectiveSettings(norm, radius=0.5, em_steps=3, sharpness=1e3))
        assert torch.allclose(sharp[0], v, atol=1e-6)
        flat = selective_gradient(grads, losses, SelectiveSettings(norm, radius=0.5, em_steps=3, sharpness=1e-6))
        assert torch.allclose(flat[0], grads.mean(0)[0], atol=1e-5)


def _toy_purifier(name: str) -> DiffusionPurifier:
    config = PurifierConfig(name=name, t_star=0.1, dt=0.02, checkpoint=True, grad_mode="full")
    return DiffusionPurifier(gaussian_backbone(), config, TinyClassifier(4).double()).double()


@pytest.mark.parametrize("name", ["reverse_only", "diffpure"])
def test_diffattack_loss_gradient_matches_finite_differences(name, device):
    torch.manual_seed(0)
    purifier = _toy_purifier(name)
    model = DefendedClassifier(purifier, TinyClassifier(4, seed=1).double()).to(device)
    attack = build_attack("diffattack", {"eot_samples": 2, "dev_weight": 50.0, "random_start": False})
    gen = torch.Generator().manual_seed(3)
    x = (0.3 + 0.4 * torch.rand(2, 1, 2, 2, generator=gen)).double().to(device)
    y = torch.tensor([0, 2], device=device)
    objective = attack.objective(model, x)
    seeds = torch.tensor([11, 12, 13, 14])
    x_adv = (x + 0.02 * torch.rand(x.shape, generator=gen, dtype=torch.float64).to(device)).repeat(2, 1, 1, 1)
    point = x_adv.clone().requires_grad_(True)
    loss, _ = objective(point, y.repeat(2), seeds)
    (grad,) = torch.autograd.grad(loss.sum(), point)
    direction = torch.randn(x_adv.shape, generator=gen, dtype=torch.float64).to(device)
    h = 1e-5
    fd = (objective(x_adv + h * direction, y.repeat(2), seeds)[0].sum()
          - objective(x_adv - h * direction, y.repeat(2), seeds)[0].sum()) / (2 * h)
    assert torch.allclose((grad * direction).sum(), fd, rtol=1e-6, atol=1e-9)
    # the deviation term is live: its gradient is not the CE gradient alone (dev_weight 0), and zero at the clean image
    ce_only = build_attack("diffattack", {"eot_samples": 2, "dev_weight": 0.0, "random_start": False})
    (grad_ce,) = torch.autograd.grad(ce_only.objective(model, x)(point, y.repeat(2), seeds)[0].sum(), point)
    assert (grad - grad_ce).norm() > 0.1 * grad_ce.norm()
    clean_dev = purifier.purify_tapped(x, seeds[:2], deviation_tap(reference_states(purifier, x, seeds[:2]),
                                                                   step_weights(purifier, "variance")))[1]
    assert torch.allclose(clean_dev, torch.zeros(2, dtype=torch.float64, device=device))


def test_tapped_solver_equals_the_unrolled_sum_and_its_gradient():
    purifier = _toy_purifier("reverse_only")
    x = torch.full((1, 1, 2, 2), 0.4, dtype=torch.float64, requires_grad=True)
    seeds = torch.tensor([5])
    reference = [s + 0.1 for s in reference_states(purifier, x.detach(), seeds)]
    weights = step_weights(purifier, "uniform")
    out, total = purifier.purify_tapped(x, seeds, deviation_tap(reference, weights))
    (grad,) = torch.autograd.grad(out.sum() + total.sum(), x)
    unrolled = purifier(x, seeds)
    score, z = purifier.prepare(x, seeds, None)
    manual, xk = 0.0, to_diffusion_space(x)  # reverse-only: no forward noise, the Euler steps use z[1:]
    for k in range(purifier.grid.n_steps):
        tau, h = purifier.grid.step(k)
        xk = reverse_em_step(purifier.backbone.sde, score, xk, tau, h, z[k + 1])
        manual = manual + float(weights[k]) * (xk - reference[k]).pow(2).mean()
    (expected,) = torch.autograd.grad(unrolled.sum() + manual, x)
    assert torch.allclose(total, manual.detach().view(1))
    assert torch.allclose(grad, expected)
    assert purifier.config.checkpoint  # the tapped path recomputes one step at a time, as solve_exact does


def test_deterministic_mode_is_deterministic_and_scores_with_the_attack_noise():
    classifier, x, y, indices = linear_problem(n=12, classes=10)
    model = Defended(NoisyIdentity(0.05), classifier)
    config = {"noise": "fixed", "eot_samples": 1, "iterations": 6, "eval_samples": 5, "eps": 0.01}
    first = build_attack("apgd_eot", config).run(model, x, y, indices, seed=4)
    again = build_attack("apgd_eot", config).run(model, x, y, indices, seed=4)
    half = build_attack("apgd_eot", config).run(model, x[:6], y[:6], indices[:6], seed=4)
    assert torch.equal(first.x_adv, again.x_adv) and torch.equal(first.x_adv[:6], half.x_adv)
    with torch.no_grad():
        fixed = model(first.x_adv, fixed_noise(4, indices, 0, 1)).argmax(-1)
    assert torch.equal(first.predictions["worst"], fixed) and torch.equal(first.correct["single"], fixed == y)
    with pytest.raises(ValueError, match="eot_samples to 1"):
        build_attack("apgd_eot", {"noise": "fixed", "eot_samples": 4})
    # in a cascade every fixed-noise stage attacks and scores the same one draw per image
    seen = SeedLog(model)
    stages = [dict(config, name="apgd_eot", loss=loss, sanity_checks=False) for loss in ("ce", "dlr")]
    out = build_attack("cascade", {"attacks": stages}).run(seen, x, y, indices, seed=4)
    assert any(len(e["stages_run"]) == 2 for e in out.extra)  # the second stage ran
    draws = set(fixed_noise(4, indices, 0, 1).tolist())
    assert all(set(s.tolist()) <= draws for s in seen.seeds)


def test_cascade_attacks_only_survivors_and_reports_the_worst_case():
    classifier, x, y, indices = linear_problem(n=32, classes=10)
    eps = 0.004
    logged = CallLog(Defended(NoisyIdentity(0.0), classifier))
    stages = [{"name": "pgd_eot", "eps": eps, "iterations": 2, "eot_samples": 1, "eval_samples": 1,
               "sanity_checks": False},
              {"name": "apgd_eot", "eps": eps, "iterations": 30, "eot_samples": 1, "loss": "dlr", "eval_samples": 1,
               "sanity_checks": False}]
    out = build_attack("cascade", {"attacks": stages}).run(logged, x, y, indices, seed=7)
    survivors = sum(1 for e in out.extra if len(e["stages_run"]) == 2)
    broken_first = [e["broken_by"] == "pgd_eot" for e in out.extra]
    assert 0 < survivors < 32 and sum(broken_first) == 32 - survivors
    assert set(logged.sizes[-31:]) == {survivors}  # APGD's 31 evaluations ran on the survivors only
    assert torch.equal(out.correct["worst"], linear_robust(classifier, x, y, eps))
    assert all(e["stages_run"] == ["pgd_eot"] for e, b in zip(out.extra, broken_first) if b)
    assert torch.isnan(out.history["apgd_eot_dlr.loss"][torch.tensor(broken_first)]).all()


def test_cascade_config_is_validated_on_load():
    with pytest.raises(KeyError, match="unknown attack 'nope'"):
        build_attack("cascade", {"attacks": [{"name": "nope"}]})
    with pytest.raises(ValueError, match="iterations"):
        build_attack("cascade", {"attacks": [{"name": "apgd_eot", "iterations": 0}]})


def test_new_attacks_report_every_iteration_and_the_cascade_maps_stages_onto_one_count():
    classifier, x, y, indices = linear_problem(n=4, classes=10)
    seen: list[tuple[int, int]] = []
    build_attack("apgd_eot", {"iterations": 3, "eot_samples": 1, "eval_samples": 1, "sanity_checks": False}).run(
        classifier, x, y, indices, seed=0, callback=lambda i, n: seen.append((i, n)))
    assert seen == [(1, 3), (2, 3), (3, 3)]
    seen.clear()
    stage = {"name": "apgd_eot", "iterations": 2, "eot_samples": 1, "eval_samples": 1, "eps": 1e-6,
             "sanity_checks": False}
    build_attack("cascade", {"attacks": [stage, stage]}).run(classifier, x, y, indices, seed=0,
                                                             callback=lambda i, n: seen.append((i, n)))
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]  # eps ~0: correctly classified images survive stage 1


@pytest.mark.parametrize("name,config,says", [
    ("apgd_eot", {"eot_samples": 3}, "aggregates (mean) each step's gradient over 3 noise draws"),
    ("selective_eot", {"eot_samples": 3}, "aggregates (selective)"),
    ("apgd_eot", {"noise": "fixed", "eot_samples": 1}, "fixes one noise draw per image"),
])
def test_apgd_type_attacks_mark_the_randomness_warning_as_expected(name, config, says):
    """AutoAttack's 'use version=rand' advice is wrong for an EOT attack: the record says what the attack does."""
    classifier, x, y, indices = linear_problem(n=4)
    out = build_attack(name, {"iterations": 2, "eval_samples": 2, **config}).run(
        Defended(NoisyIdentity(0.3), classifier), x, y, indices, seed=0)
    assert out.flags["check_randomized"].startswith("expected: the defense is randomized")
    assert says in out.flags["check_randomized"] and "version" not in out.flags["check_randomized"]


def test_apgd_halving_conditions_follow_the_paper():
    rises = torch.tensor([0.5, 0.9, 0.9, 0.9])  # fraction of the interval's steps that raised the loss
    best_rose = torch.tensor([True, True, False, False])
    halved_last = torch.tensor([False, False, False, True])
    # condition 1 (too few rises); no halving while improving; condition 2 (stalled, not halved last time); stalled
    # right after a halving waits one more interval
    assert halving(rises, 0.75, best_rose, halved_last).tolist() == [True, False, True, False]


def test_apgd_returns_the_iterate_with_the_most_wrong_samples():
    x = torch.zeros(3, 1, 1, 1)
    chosen = (x, torch.tensor([1, 2, 0]), torch.tensor([0.5, 0.1, -1.0]))
    point = Point(loss=torch.tensor([0.2, 9.0, -0.5]), wrong=torch.tensor([2, 1, 0]), grad=x)
    new_x, wrong, loss = keep_most_wrong(chosen, (x + 1, point))
    assert new_x.flatten().tolist() == [1.0, 0.0, 1.0]  # more wrong; fewer wrong despite the loss; tie, higher loss
    assert wrong.tolist() == [2, 2, 0] and torch.equal(loss, torch.tensor([0.2, 0.1, -0.5]))


@pytest.mark.parametrize("loss", ["dlr", "ce"])
def test_apgd_eot_breaks_every_surely_breakable_image_of_a_noisy_linear_defense(loss):
    """logits = W (x + delta + sigma xi): at the noise-free optimum delta* an image whose margin to some class is below
    -3 sigma ||w_y - w_j|| is wrong on almost every draw, and above +4 sigma on every class almost never; worst-of-10
    must break the former and keep the latter (an attack returning its first lucky iterate does not)."""
    classifier, x, y, indices = linear_problem(n=64, classes=10)
    eps, sigma = 0.01, 0.01
    weight = classifier[1].weight
    margins = classifier(x).gather(1, y[:, None]) - classifier(x)
    diff = weight[y][:, None, :] - weight[None, :, :]
    optimum, spread = margins - eps * diff.abs().sum(dim=-1), sigma * diff.norm(dim=-1)
    other = torch.arange(10)[None, :] != y[:, None]
    breakable, robust = ((optimum < -3 * spread) & other).any(dim=1), ((optimum > 4 * spread) | ~other).all(dim=1)
    assert int(breakable.sum()) > 32 and int(robust.sum()) > 0
    model = Defended(NoisyIdentity(sigma), classifier)
    out = build_attack("apgd_eot", {"norm": "Linf", "eps": eps, "iterations": 50, "eot_samples": 4, "loss": loss,
                                    "eval_samples": 10}).run(model, x, y, indices, seed=1)
    assert not (out.correct["worst"] & breakable).any() and (out.correct["worst"] | ~robust).all()


def test_diffattack_refuses_a_purifier_without_exact_states_and_is_ce_without_a_purifier():
    config = PurifierConfig(name="reverse_only", t_star=0.1, dt=0.02, backend="torchsde")
    adjoint = DefendedClassifier(DiffusionPurifier(gaussian_backbone(), config).double(), TinyClassifier(4).double())
    x = torch.full((1, 1, 2, 2), 0.5, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"got DiffusionPurifier \(backend torchsde\); set purifier.backend: exact"):
        build_attack("diffattack").objective(adjoint, x)
    bare = DefendedClassifier(IdentityPurifier(), TinyClassifier(4).double())
    seeds, y = torch.tensor([1]), torch.tensor([2])
    loss, _ = build_attack("diffattack").objective(bare, x)(x, y, seeds)
    assert torch.equal(loss, build_attack("apgd_eot").objective(bare, x)(x, y, seeds)[0])


class GradientRows(CallLog):
    """Counts the rows of the calls that are differentiated (the attack's forward-backward passes)."""

    def forward(self, x: torch.Tensor, noise_seeds: Optional[torch.Tensor] = None) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            self.sizes.append(x.shape[0])
        return self.model(x, noise_seeds)


@pytest.mark.parametrize("name", ["pgd_eot", "apgd_eot", "diffattack", "selective_eot"])
def test_run_plan_counts_the_forward_backward_passes_an_attack_makes(name):
    """The size a run logs before it starts (evaluation.run_plan) is what the attack does: APGD-type attacks take one
    EOT gradient more than their iterations, at the start point."""
    classifier, x, y, indices = linear_problem(n=4)
    config = {"eps": 0.004, "iterations": 5, "eot_samples": 3, "eval_samples": 2, "sanity_checks": False}
    attack = build_attack(name, config)
    logged = GradientRows(Defended(NoisyIdentity(0.01), classifier))
    attack.run(logged, x, y, indices, seed=3)
    assert sum(logged.sizes) == config_budget(name, attack.config).gradient_passes * x.shape[0]


@pytest.mark.parametrize("loss", ["ce", "dlr"])
def test_apgd_eot_follows_the_reference_apgd_on_a_deterministic_network(loss):
    """K = 1, no noise, both started at x: the best loss per image equals auto-attack's APGDAttack's (the same
    step-size schedule, halving, restarts from the best point and momentum, iterate by iterate)."""
    from pyautoattack.autopgd_base import APGDAttack
    gen = torch.Generator().manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 10))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(6 * (torch.rand(p.shape, generator=gen) - 0.5) / p.shape[-1] ** 0.5)
    net.requires_grad_(False)
    x = torch.rand(400, 1, 8, 8, generator=gen)
    y = net(x).argmax(dim=1)
    attack = build_attack("apgd_eot", {"loss": loss, "eps": 0.03, "iterations": 100, "eot_samples": 1,
                                       "random_start": False, "sanity_checks": False})
    _, history, _, _ = attack.perturb(Defended(NoisyIdentity(0.0), net), x, y, torch.arange(400), seed=3)
    reference = APGDAttack(net, n_iter=100, norm="Linf", n_restarts=1, eps=0.03, seed=0, loss=loss, rho=0.75,
                           device="cpu")
    reference.init_hyperparam(x)
    _, _, best_loss, _ = reference.attack_single_run(x, y, x_init=x.clone())
    ours = history["loss"].max(dim=1).values
    assert torch.allclose(ours, best_loss, rtol=1e-4, atol=1e-4)
