"""Cost accounting (attacks.accounting): network rows counted where they are computed, gradient passes told apart
from forward-only ones, the projection to the papers' setting, and the EOT each attack config implies."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from attacks.accounting import PAPER_IMAGES, counted_networks, measured, paper_projection
from attacks.registry import attack_config
from classifiers.surrogate import smooth_surrogate
from evaluation.evaluate import Batch, attack_runs, evaluate_batch, make_models
from evaluation.experiment import build_models, load_experiment
from evaluation.summary import cost_lines
from evaluation.run_plan import common_eot, config_budget, describe_size, evaluations_per_pass, reverse_steps
from runners.defended import DefendedClassifier
from runners.purifiers import DiffusionPurifier
from utils.data import load_images

TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny.yml"
PGD = {"name": "pgd_eot", "norm": "Linf", "iterations": 2, "eot_samples": 2, "eval_samples": 3,
       "sanity_checks": False}


def tiny_run(backend: str, attacks: list[dict]) -> tuple:
    """The tiny COUP experiment (2 reverse steps) on 2 images with the given attacks: (experiment, models, x, y, i)."""
    experiment = load_experiment(TINY, {"data.num_sub": 2, "purifier.backend": backend, "attacks": attacks})
    images = load_images(experiment.file.data, experiment.base_dir)
    defended, classifier = build_models(experiment)
    return experiment, make_models(defended, classifier, torch.device("cpu")), images.x, images.y, images.indices


def test_cost_counts_rows_through_backbone_and_classifier_once_each():
    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.purifier = nn.Module()
            self.purifier.backbone = nn.Identity()
            self.purifier.guidance_classifier = self.classifier = nn.Identity()

        def forward(self, x):
            return self.classifier(self.purifier.backbone(self.purifier.backbone(x)))

    model = Model()
    with measured(model) as cost:
        model(torch.zeros(3, 2))
        with torch.no_grad():
            model(torch.zeros(2, 2))
    assert (cost.score_rows, cost.score_rows_gradient, cost.classifier_rows) == (10, 6, 5) and cost.seconds >= 0
    model(torch.zeros(1, 2))
    assert cost.score_rows == 10  # hooks removed after the block


@pytest.mark.parametrize("backend", ["exact", "torchsde"])
def test_cost_of_pgd_eot_is_the_planned_gradient_passes_and_the_scoring_forwards(backend):
    """Forward-only rows are exactly the scoring forwards, also under torchsde's adjoint, whose forward solve runs
    with autograd off inside the defended model's call; the gradient rows and the run size are the run plan's."""
    experiment, models, x, y, indices = tiny_run(backend, [PGD])
    run = attack_runs(experiment)[0]
    per_forward, per_gradient = evaluations_per_pass(experiment.purifier)
    with measured(models.defended) as one, torch.no_grad():
        models.defended(x)
    with measured(models.defended) as cost:
        run.attack.run(models.defended, x, y, indices, seed=5)
    n, steps = x.shape[0], reverse_steps(experiment.purifier)
    assert one.score_rows_gradient == 0 and one.score_rows == per_forward * n
    assert per_forward == steps + (backend == "torchsde") and per_gradient == 2 * steps + (backend == "torchsde")
    assert cost.score_rows - cost.score_rows_gradient == PGD["eval_samples"] * one.score_rows
    planned = config_budget(run.key, run.spec.config).gradient_passes * n
    assert cost.score_rows_gradient == per_gradient * planned
    clean_forward = per_forward * n  # the run's size also counts each image's clean purification
    size = describe_size(n, n, [config_budget(run.key, run.spec.config)], (per_forward, per_gradient))
    assert size.endswith(f"so {cost.score_rows + clean_forward} score-network evaluations in all")


def test_guidance_classifier_surrogate_and_direct_epsilon_calls_are_counted():
    experiment, models, x, _, _ = tiny_run("exact", [PGD])
    purifier = models.defended.purifier
    guidance = smooth_surrogate(models.defended.classifier, 10.0)  # a distinct module used as the guidance classifier
    coup = DiffusionPurifier(purifier.backbone, purifier.config, guidance_classifier=guidance)
    defended = DefendedClassifier(coup, models.defended.classifier)
    scores, classifiers = counted_networks(defended)
    assert scores == [purifier.backbone.net] and len(classifiers) == 2
    steps = reverse_steps(experiment.purifier)
    with measured(defended) as cost:
        with torch.no_grad():
            defended(x)
        coup.backbone.epsilon(x, torch.tensor(0.5))  # how LM and DiffSmooth call the network
    n = x.shape[0]
    assert cost.score_rows == steps * n + n and cost.score_rows_gradient == n
    assert cost.classifier_rows == n + steps * n  # the classifier once, the guidance classifier at every step


def test_the_attack_on_the_bare_classifier_is_not_in_the_defended_attacks_cost():
    experiment, models, x, y, indices = tiny_run("exact", [PGD])
    runs = attack_runs(experiment)
    batch = Batch(0, 0, x.shape[0])
    costs = [evaluate_batch(models, runs, x, y, indices, batch, 121, both)[0][0].attacks["pgd_eot"]["cost"]
             for both in (False, True)]
    assert costs[0] == costs[1]


def test_projection_scales_gradient_rows_with_eot_and_forward_rows_with_steps_only():
    cost = {"score_evals": 490.0, "score_evals_gradient": 320.0}  # the demo's PGD 8 x 2: 16 x 20 + 17 x 10
    projected = paper_projection(cost, n_steps=10, eot_samples=2)
    assert math.isclose(projected, (320 * 10 + 170) * 10 * PAPER_IMAGES)
    assert paper_projection({"score_evals": 490.0}, n_steps=10, eot_samples=2) is None
    with pytest.raises(ValueError, match="must be >= 1"):
        paper_projection(cost, n_steps=0, eot_samples=2)


@pytest.mark.parametrize("name, params, eot", [
    ("autoattack", {"version": "rand"}, 20), ("autoattack", {"version": "standard"}, 1),
    ("autoattack", {"version": "rand", "eot_iter": 5}, 5), ("apgd_ce", {"eot_iter": 7}, 7),
    ("pgd_eot_diffpure", {}, 15), ("pgd_aid_joint", {}, 1), ("pgd_eot", {"eot_samples": 3}, 3)])
def test_every_attack_config_states_its_eot_samples(name, params, eot):
    assert config_budget(name, attack_config(name, params)).eot == eot


def test_a_cascade_has_an_eot_only_when_its_stages_share_one():
    def cascade(*eots):
        return config_budget("cascade", attack_config("cascade", {"attacks": [
            {"name": "pgd_eot", "eot_samples": eots[0]}, {"name": "apgd_eot", "eot_samples": eots[1]}]}))
    assert common_eot(cascade(4, 4)) == 4 and common_eot(cascade(4, 2)) is None


def test_summary_states_each_projection_or_why_there_is_none():
    costs = {"a": {"score_evals": 490.0, "classifier_evals": 33.0, "seconds": 6.3}}
    lines = cost_lines({"cost_per_image": {**costs, "b": costs["a"]},
                        "cost_paper_projection": {"a": 1.73e7, "b": None}})
    assert "- a in the papers' setting (100 steps, EOT 20, 512 images, its own iterations): 1.73e+07 " \
           "score-network evaluations" in lines
    assert any(line.startswith("- b: no projection to the papers' setting") for line in lines)
