"""What an attack costs: network evaluations (rows through the score network and the classifiers) and seconds, per
image and attack, with the score-network rows of gradient passes kept apart from forward-only ones (scoring,
checks), and the projection of a run's cost to the papers' setting in network evaluations."""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Optional

import torch
from torch import nn

from utils.devices import model_device, synchronize

# the papers' attack setting (DiffPure / COUP): 100 reverse steps (dt 1e-3), EOT 20, 512 images
PAPER_STEPS, PAPER_EOT, PAPER_IMAGES = 100, 20, 512
# purifier attributes holding a classifier it calls itself (guidance), besides the defended model's classifier
GUIDANCE_ATTRIBUTES = ("guidance_classifier", "guidance_surrogate", "classifier")


@dataclass
class Cost:
    """Running totals: score-network rows (all, and those of gradient passes), classifier rows, wall seconds."""

    score_rows: int = 0
    score_rows_gradient: int = 0
    classifier_rows: int = 0
    seconds: float = 0.0
    _entry_grad: list[bool] = field(default_factory=list, repr=False)

    def per_image(self, n: int) -> dict[str, float]:
        """The totals divided by the n images of the batch."""
        return {"score_evals": self.score_rows / n, "score_evals_gradient": self.score_rows_gradient / n,
                "classifier_evals": self.classifier_rows / n, "seconds": self.seconds / n}

    def in_gradient_pass(self) -> bool:
        """Inside a call of the defended model: whether it was entered with autograd on (a solver may switch it off
        inside, as torchsde's adjoint does); outside (backward recomputation, a purifier called alone): autograd."""
        return self._entry_grad[-1] if self._entry_grad else torch.is_grad_enabled()


def counted_networks(model: nn.Module) -> tuple[list[nn.Module], list[nn.Module]]:
    """(score networks, classifiers) of a defended model: its purifier's backbone network (VPBackbone.network),
    and every distinct classifier module, the guidance classifier and its smooth surrogate included."""
    purifier = getattr(model, "purifier", None)
    backbone = getattr(purifier, "backbone", None)
    scores = [getattr(backbone, "network", backbone)] if isinstance(backbone, nn.Module) else []
    candidates = [getattr(model, "classifier", None), *(getattr(purifier, name, None) for name in GUIDANCE_ATTRIBUTES)]
    classifiers = {id(m): m for m in candidates if isinstance(m, nn.Module)}
    return scores, list(classifiers.values())


@contextmanager
def measured(model: nn.Module) -> Iterator[Cost]:
    """Count rows through the score network and the classifiers of `model` (forward calls, including the
    recomputation of checkpointed steps in backward), telling gradient passes apart, and the wall time of the block."""
    cost = Cost()

    def score_rows(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        rows = int(inputs[0].shape[0])
        cost.score_rows += rows
        cost.score_rows_gradient += rows if cost.in_gradient_pass() else 0

    def classifier_rows(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        cost.classifier_rows += int(inputs[0].shape[0])

    def enter(module: nn.Module, inputs: tuple[Any, ...]) -> None:
        cost._entry_grad.append(torch.is_grad_enabled())

    def leave(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        cost._entry_grad.pop()

    scores, classifiers = counted_networks(model)
    hooks = [model.register_forward_pre_hook(enter), model.register_forward_hook(leave),
             *(m.register_forward_hook(score_rows) for m in scores),
             *(m.register_forward_hook(classifier_rows) for m in classifiers)]
    device = model_device(model)
    synchronize(device)
    start = time.perf_counter()
    try:
        yield cost
    finally:
        synchronize(device)
        cost.seconds = time.perf_counter() - start
        for handle in hooks:
            handle.remove()


def paper_projection(cost: Mapping[str, float], n_steps: int, eot_samples: int) -> Optional[float]:
    """Score-network evaluations of the same attack (its own iterations) in the papers' setting (100 steps, EOT 20,
    512 images): the rows of gradient passes per image scale with steps and EOT samples, forward-only rows (scoring,
    checks) with steps only, the total with the images; None for a cost recorded without that split."""
    if n_steps < 1 or eot_samples < 1:
        raise ValueError(f"n_steps and eot_samples must be >= 1, got {n_steps}, {eot_samples}")
    if "score_evals_gradient" not in cost:
        return None
    gradient = cost["score_evals_gradient"]
    forward = cost["score_evals"] - gradient
    return (gradient * PAPER_EOT / eot_samples + forward) * (PAPER_STEPS / n_steps) * PAPER_IMAGES


def cost_summary(records: list[Any], keys: list[str]) -> dict[str, dict[str, float]]:
    """{attack key: mean score / classifier evaluations and seconds per image} over records (evaluation.results
    ImageRecord: `attacks` and `seconds`) that hold a cost; a count only some records hold (older code) is left out."""
    out = {}
    for key in keys:
        costs = [{**r.attacks[key]["cost"], "seconds": r.seconds.get(key, float("nan"))}
                 for r in records if "cost" in r.attacks[key]]
        if costs:
            names = [name for name in costs[0] if all(name in c for c in costs)]
            out[key] = {name: sum(c[name] for c in costs) / len(costs) for name in names}
    return out
