"""Attacks: analytic linear cases, eps-ball constraints, BPDA gradients, seeding, batching, AutoAttack wiring."""
from __future__ import annotations

from typing import Optional

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import attacks.autoattack as autoattack_module
from attacks import ATTACKS, AttackOutput, attack_config, build_attack
from attacks.checks import run_sanity_checks
from attacks.common import majority_vote, score_samples, seeded_call
from attacks.pgd import eot_point, straight_through
from utils.config import ConfigError
from utils.seeds import SeedStage, derive_seeds

EPS = 8.0 / 255.0


class NoisyIdentity(nn.Module):
    """Stand-in purifier: x + sigma * N(0, I); row b's noise comes from noise_seeds[b] only when given."""

    def __init__(self, sigma: float, seed: int = 0) -> None:
        super().__init__()
        self.sigma = sigma
        self.generator = torch.Generator().manual_seed(seed)

    def forward(self, x: torch.Tensor, noise_seeds: Optional[torch.Tensor] = None) -> torch.Tensor:
        if noise_seeds is None:
            noise = torch.randn(x.shape, generator=self.generator, dtype=x.dtype)
        else:
            noise = torch.stack([torch.randn(x.shape[1:], generator=torch.Generator().manual_seed(int(s)),
                                             dtype=x.dtype) for s in noise_seeds])
        return x + self.sigma * noise


class Square(nn.Module):
    """Deterministic differentiable stand-in purifier: x -> x^2 (maps [0, 1] to [0, 1])."""

    def forward(self, x: torch.Tensor, noise_seeds: Optional[torch.Tensor] = None) -> torch.Tensor:
        return x * x


class Defended(nn.Module):
    """classifier(purifier(x, noise_seeds)), like runners.defended.DefendedClassifier."""

    def __init__(self, purifier: nn.Module, classifier: nn.Module) -> None:
        super().__init__()
        self.purifier, self.classifier = purifier, classifier

    def forward(self, x: torch.Tensor, noise_seeds: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.classifier(self.purifier(x, noise_seeds))


class CallLog(nn.Module):
    """Wraps a model and records the batch size of every call."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.sizes = model, []

    def forward(self, x: torch.Tensor, noise_seeds: Optional[torch.Tensor] = None) -> torch.Tensor:
        self.sizes.append(x.shape[0])
        return self.model(x, noise_seeds)


def linear_problem(n: int = 32, dtype: torch.dtype = torch.float32, seed: int = 0, classes: int = 10):
    """A frozen linear classifier on (n, 3, 8, 8) images in [0.25, 0.75], labels = its clean predictions."""
    gen = torch.Generator().manual_seed(seed)
    classifier = nn.Sequential(nn.Flatten(), nn.Linear(192, classes)).to(dtype)
    with torch.no_grad():
        classifier[1].weight.copy_(torch.randn(classes, 192, generator=gen, dtype=dtype) * 0.05)
        classifier[1].bias.copy_(-0.5 * classifier[1].weight.sum(dim=1))  # logits = W (x - 1/2): centred
    classifier.requires_grad_(False)
    x = 0.25 + 0.5 * torch.rand(n, 3, 8, 8, generator=gen, dtype=dtype)
    y = classifier(x).argmax(dim=-1)
    indices = torch.arange(100, 100 + n, dtype=torch.int64)
    return classifier, x, y, indices


def linear_robust(classifier: nn.Sequential, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    """Exact Linf robustness of a linear classifier away from the box: margin_j > eps * ||w_y - w_j||_1 for all j."""
    weight = classifier[1].weight
    logits = classifier(x)
    margins = logits.gather(1, y[:, None]) - logits  # (B, 10)
    dual_norms = (weight[y][:, None, :] - weight[None, :, :]).abs().sum(-1)  # (B, 10)
    ok = (margins > eps * dual_norms) | (torch.arange(weight.shape[0])[None, :] == y[:, None])
    return ok.all(dim=1)


def test_pgd_matches_exact_robust_accuracy_of_binary_linear_classifier():
    # two classes: the CE gradient's sign is sign(w_other - w_y), so PGD reaches the optimal Linf corner
    classifier, x, y, indices = linear_problem(n=48, classes=2)
    logits, weight = classifier(x), classifier[1].weight
    distance = (logits.amax(1) - logits.amin(1)) / (weight[0] - weight[1]).abs().sum()  # minimal Linf attack
    ranked = distance.sort().values
    eps = float(ranked[23] + ranked[24]) / 2  # half the images are provably robust, none on the boundary
    exact = linear_robust(classifier, x, y, eps)
    assert exact.sum() == 24 and eps < 0.25
    out = build_attack("pgd_eot", {"eps": eps, "iterations": 20, "eot_samples": 1, "step_size": eps / 4,
                                   "eval_samples": 2}).run(classifier, x, y, indices, seed=1)
    assert torch.equal(out.correct["single"], exact)


def test_pgd_eot_drives_undefended_accuracy_to_zero_and_reports_three_scores():
    classifier, x, y, indices = linear_problem()
    assert not linear_robust(classifier, x, y, EPS).any()  # at 8/255 no image is robust
    out = build_attack("pgd_eot", {"iterations": 10, "eot_samples": 2}).run(classifier, x, y, indices, seed=0)
    assert isinstance(out, AttackOutput)
    assert set(out.correct) == {"single", "vote", "worst"} == set(out.predictions)
    assert out.accuracy() == {"single": 0.0, "vote": 0.0, "worst": 0.0}
    assert out.flags["check_randomized"] is None and out.flags["check_zero_gradients"] is None


@pytest.mark.parametrize("norm,eps", [("Linf", EPS), ("L2", 0.5)])
def test_adversarial_examples_stay_in_eps_ball_and_unit_box(norm, eps):
    classifier, _, y, indices = linear_problem(n=8)
    x = torch.rand(8, 3, 8, 8, generator=torch.Generator().manual_seed(3))  # touches 0 and 1 closely
    model = Defended(NoisyIdentity(0.1), classifier)
    out = build_attack("pgd_eot", {"norm": norm, "eps": eps, "iterations": 5, "eot_samples": 3, "step_size": eps / 2,
                                   "eval_samples": 3}).run(model, x, y, indices, seed=0)
    delta = (out.x_adv - x).flatten(1)
    size = delta.abs().amax(dim=1) if norm == "Linf" else delta.norm(dim=1)
    assert (size <= eps + 1e-6).all() and (size > 0.5 * eps).all()
    assert out.x_adv.min() >= 0.0 and out.x_adv.max() <= 1.0


def test_stochastic_scores_are_consistent():
    classifier, x, y, indices = linear_problem(n=32)
    model = Defended(NoisyIdentity(0.3), classifier)
    out = build_attack("pgd_eot", {"iterations": 3, "eot_samples": 4, "eps": 1.0 / 255.0}).run(
        model, x, y, indices, seed=0)
    assert (out.correct["worst"] <= out.correct["single"]).all()
    assert (out.correct["worst"] <= out.correct["vote"]).all()
    assert out.flags["check_randomized"] is not None  # AutoAttack's check sees the randomness


def test_pgd_is_deterministic_and_batch_independent_with_noise_seeds():
    classifier, x, y, indices = linear_problem(n=4, dtype=torch.float64)
    model = Defended(NoisyIdentity(0.2), classifier)
    attack = build_attack("pgd_eot", {"iterations": 4, "eot_samples": 3, "eval_samples": 3, "sanity_checks": False})
    full = attack.run(model, x, y, indices, seed=7)
    again = attack.run(model, x, y, indices, seed=7)
    half = attack.run(model, x[2:], y[2:], indices[2:], seed=7)
    other = attack.run(model, x, y, indices, seed=8)
    assert torch.equal(full.x_adv, again.x_adv)
    torch.testing.assert_close(half.x_adv, full.x_adv[2:], rtol=0, atol=1e-12)
    for name in full.correct:
        assert torch.equal(half.correct[name], full.correct[name][2:])
    assert not torch.equal(full.x_adv, other.x_adv)


def test_eot_samples_are_one_batched_call_per_iteration_and_the_scoring_draws_one_more():
    classifier, x, y, indices = linear_problem(n=3)
    model = CallLog(Defended(NoisyIdentity(0.1), classifier))
    build_attack("pgd_eot", {"iterations": 4, "eot_samples": 5, "eval_samples": 2, "sanity_checks": False}).run(
        model, x, y, indices, seed=0)
    assert model.sizes == [15] * 4 + [6]


def test_pgd_eot_traces_the_eot_mean_loss_and_all_samples_correct_at_each_iterate():
    """Iterates rebuilt by hand (random start, sign steps on the EOT CE gradient under the attack's seeds): the
    'loss' trace is each image's mean CE over the K draws, 'correct' whether all K were right, per iterate 0 .. T-1."""
    classifier, x, y, indices = linear_problem(n=8, dtype=torch.float64)
    model, k, seed = Defended(NoisyIdentity(0.3), classifier), 3, 4
    attack = build_attack("pgd_eot", {"iterations": 3, "eot_samples": k, "eval_samples": 1, "sanity_checks": False})
    out = attack.run(model, x, y, indices, seed=seed)
    x_t, split = attack.random_start(x, indices, seed), 0
    for t in range(3):
        x_in = x_t.repeat(k, 1, 1, 1).requires_grad_(True)
        seeds = torch.cat([derive_seeds(seed, indices, SeedStage.ATTACK_STEP, t, j) for j in range(k)])
        rows = F.cross_entropy(model(x_in, noise_seeds=seeds), y.repeat(k), reduction="none")
        (grad,) = torch.autograd.grad(rows.sum(), x_in)
        torch.testing.assert_close(out.history["loss"][:, t], rows.detach().view(k, -1).mean(dim=0))
        right = (model(x_in.detach(), noise_seeds=seeds).argmax(dim=-1) == y.repeat(k)).view(k, -1)
        assert torch.equal(out.history["correct"][:, t], right.all(dim=0))
        split += int(((right.sum(dim=0) > 0) & (right.sum(dim=0) < k)).sum())
        step = grad.view(k, *x.shape).sum(dim=0).sign() * attack.config.alpha
        x_t = (x + (x_t + step - x).clamp(-EPS, EPS)).clamp(0.0, 1.0)
    torch.testing.assert_close(out.x_adv, x_t)  # the rebuilt iterates are the attack's
    assert split > 0  # on some image and iterate the draws disagree: 'all K correct' is not 'one draw correct'


def test_bpda_gradient_is_the_classifier_gradient_at_the_purified_point():
    classifier, x, y, _ = linear_problem(n=5, dtype=torch.float64)
    model = Defended(Square(), classifier)
    seeds = torch.arange(15)
    bpda = eot_point(straight_through(model), x, y, 3, seeds).grad
    purified = (x * x).requires_grad_(True)
    (reference,) = torch.autograd.grad(F.cross_entropy(classifier(purified), y, reduction="sum"), purified)
    torch.testing.assert_close(bpda, reference, rtol=1e-12, atol=1e-14)
    exact = eot_point(seeded_call(model), x, y, 3, seeds).grad
    torch.testing.assert_close(exact, 2 * x * reference, rtol=1e-12, atol=1e-14)  # chain rule through x^2


def test_bpda_needs_purifier_and_classifier():
    classifier, x, y, indices = linear_problem(n=2)
    with pytest.raises(TypeError, match="purifier"):
        build_attack("bpda_eot", {"iterations": 1, "eot_samples": 1}).run(classifier, x, y, indices, seed=0)


def test_bpda_eot_attacks_a_noisy_defense():
    classifier, x, y, indices = linear_problem(n=16)
    attack = build_attack("bpda_eot", {"eot_samples": 2, "eval_samples": 2})
    assert attack.config.iterations == 20
    out = attack.run(Defended(NoisyIdentity(0.01), classifier), x, y, indices, seed=0)
    assert out.accuracy()["single"] == 0.0


def test_zero_gradient_check_flags_a_constant_model():
    class Constant(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.tensor([[2.0, 1.0, 0.0]]).expand(x.shape[0], 3) + 0.0 * x.flatten(1).sum(1, keepdim=True)

    x, y = torch.full((2, 1, 4, 4), 0.5), torch.zeros(2, dtype=torch.int64)
    out = build_attack("pgd_eot", {"iterations": 1, "eot_samples": 1, "eval_samples": 1}).run(
        Constant(), x, y, torch.arange(2), seed=0)
    assert out.flags["check_zero_gradients"] is not None


def test_sanity_checks_flag_probabilities_and_randomness():
    classifier, x, y, _ = linear_problem(n=4)
    flags = run_sanity_checks(nn.Sequential(classifier, nn.Softmax(dim=-1)), x, y)
    assert flags["check_range_output"] is not None and flags["check_randomized"] is None
    assert run_sanity_checks(Defended(NoisyIdentity(0.5), classifier), x, y)["check_randomized"] is not None


def test_autoattack_is_built_with_seed_and_without_attack_list(monkeypatch):
    calls = []

    class Recorder:
        def __init__(self, model, **kwargs):
            calls.append(kwargs)
            self.model = model

        def run_standard_evaluation(self, x, y, *, batch_size):
            return x.clone(), self.model(x).argmax(-1)

    monkeypatch.setattr(autoattack_module, "autoattack_class", lambda: Recorder)
    classifier, x, y, indices = linear_problem(n=4)
    build_attack("autoattack", {"version": "rand", "norm": "L2"}).run(classifier, x, y, indices, seed=123)
    assert calls == [{"norm": "L2", "eps": 0.5, "version": "rand", "seed": 123, "device": x.device}]


def test_real_autoattack_breaks_linear_model_and_records_checks():
    classifier, x, y, indices = linear_problem(n=8)
    rng_state = torch.get_rng_state()
    out = build_attack("autoattack", {"eval_samples": 2}).run(classifier, x, y, indices, seed=0)
    assert torch.equal(torch.get_rng_state(), rng_state)  # AutoAttack's reseeding is contained
    assert out.accuracy()["autoattack"] == 0.0 and out.accuracy()["single"] == 0.0
    assert (out.x_adv - x).abs().max() <= EPS + 1e-6
    assert "check_randomized" in out.flags and out.flags["check_randomized"] is None
    noisy = build_attack("autoattack", {"eval_samples": 1, "eps": 0.5 / 255}).run(
        Defended(NoisyIdentity(0.5), classifier), x, y, indices, seed=0)
    assert noisy.flags["check_randomized"] is not None  # the standard version warns about randomness


def test_derive_seeds_is_a_per_image_function():
    indices = torch.tensor([5, 17, 5])
    seeds = derive_seeds(3, indices, 1, 2, 0)
    assert seeds.dtype == torch.int64 and (seeds >= 0).all() and seeds[0] == seeds[2] != seeds[1]
    assert torch.equal(derive_seeds(3, indices[1:2], 1, 2, 0), seeds[1:2])
    for changed in (derive_seeds(4, indices, 1, 2, 0), derive_seeds(3, indices, 1, 3, 0),
                    derive_seeds(3, indices, 1, 2, 1), derive_seeds(3, indices, 2, 2, 0)):
        assert (changed != seeds).all()


def test_majority_vote_and_worst_case_scoring():
    assert torch.equal(majority_vote(torch.tensor([[1, 2], [1, 0], [3, 0], [3, 2]]), 4), torch.tensor([1, 0]))

    class Scripted(nn.Module):
        """The row with the noise seed of sample k of image b (a lookup) predicts scripted[k, b]."""

        def __init__(self, scripted: torch.Tensor, seed_to_sample: dict[int, tuple[int, int]]) -> None:
            super().__init__()
            self.scripted, self.seed_to_sample = scripted, seed_to_sample

        def forward(self, x: torch.Tensor, noise_seeds: Optional[torch.Tensor] = None) -> torch.Tensor:
            rows = [self.seed_to_sample[int(seed)] for seed in noise_seeds]
            return F.one_hot(torch.stack([self.scripted[k, b] for k, b in rows]), 3).float()

    indices, y = torch.tensor([0, 1]), torch.tensor([0, 1])
    seed_to_sample = {int(derive_seeds(9, indices, 2, 0, k)[b]): (k, b) for k in range(3) for b in range(2)}
    scripted = torch.tensor([[0, 1], [2, 0], [0, 0]])  # image 0: right, wrong, right; image 1: right, wrong, wrong
    predictions, correct = score_samples(Scripted(scripted, seed_to_sample), torch.zeros(2, 1, 2, 2), y, indices, 9, 3)
    assert correct["single"].tolist() == [True, True]
    assert correct["vote"].tolist() == [True, False] and predictions["vote"].tolist() == [0, 0]
    assert correct["worst"].tolist() == [False, False] and predictions["worst"].tolist() == [2, 0]


def test_registry_and_config_validation():
    assert {"autoattack", "bpda_eot", "pgd_eot"} <= set(ATTACKS.names())
    assert attack_config("pgd_eot").iterations == 200 and attack_config("pgd_eot").eot_samples == 20
    assert attack_config("pgd_eot").alpha == pytest.approx(0.007)
    with pytest.raises(ConfigError, match="unknown key"):
        attack_config("pgd_eot", {"attacks_to_run": ["apgd-ce"]})
    with pytest.raises(ConfigError, match="eot_samples"):
        attack_config("bpda_eot", {"eot_samples": 0})
    with pytest.raises(KeyError, match="valid names"):
        build_attack("fgsm")
    with pytest.raises(ValueError, match="indices"):
        classifier, x, y, _ = linear_problem(n=2)
        build_attack("pgd_eot").run(classifier, x, y, torch.arange(3), seed=0)
