"""What an attack costs: network evaluations (rows through the score network and the classifier) and seconds,
per image and attack, and the projection of a run's cost to the papers' setting in network evaluations."""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator

from torch import nn

# the papers' attack setting (DiffPure / COUP): 100 reverse steps (dt 1e-3), EOT 20, 512 images
PAPER_STEPS, PAPER_EOT, PAPER_IMAGES = 100, 20, 512


@dataclass
class Cost:
    """Running totals: score-network rows, classifier rows, wall seconds."""

    score_rows: int = 0
    classifier_rows: int = 0
    seconds: float = 0.0
    _hooks: list[Any] = field(default_factory=list, repr=False)

    def per_image(self, n: int) -> dict[str, float]:
        """The totals divided by the n images of the batch."""
        return {"score_evals": self.score_rows / n, "classifier_evals": self.classifier_rows / n,
                "seconds": self.seconds / n}


def _counter(cost: Cost, attribute: str):
    """A forward hook adding the batch size of each call to cost.<attribute>."""
    def hook(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        setattr(cost, attribute, getattr(cost, attribute) + int(inputs[0].shape[0]))
    return hook


@contextmanager
def measured(model: nn.Module) -> Iterator[Cost]:
    """Count rows through model.purifier.backbone and model.classifier (forward calls, including the recomputation
    of checkpointed steps in backward) and the wall time of the block."""
    cost = Cost()
    purifier = getattr(model, "purifier", None)
    targets = [(getattr(purifier, "backbone", None), "score_rows"),
               (getattr(model, "classifier", None), "classifier_rows")]
    cost._hooks = [m.register_forward_hook(_counter(cost, name)) for m, name in targets if isinstance(m, nn.Module)]
    start = time.perf_counter()
    try:
        yield cost
    finally:
        cost.seconds = time.perf_counter() - start
        for handle in cost._hooks:
            handle.remove()


def paper_projection(score_evals_per_image: float, n_steps: int, eot_samples: int) -> float:
    """Score-network evaluations of the same attack in the papers' setting (100 steps, EOT 20, 512 images):
    per-image evaluations scale with steps and EOT samples, the total with the number of images."""
    if n_steps < 1 or eot_samples < 1:
        raise ValueError(f"n_steps and eot_samples must be >= 1, got {n_steps}, {eot_samples}")
    return score_evals_per_image * (PAPER_STEPS / n_steps) * (PAPER_EOT / eot_samples) * PAPER_IMAGES


def eot_of(config: Any) -> int:
    """An attack config's EOT samples; for a cascade, the largest over its stages (20 when a stage leaves it unset)."""
    if hasattr(config, "eot_samples"):
        return int(config.eot_samples)
    return max((int(entry.get("eot_samples", PAPER_EOT)) for entry in getattr(config, "attacks", ())), default=1)


def paper_projections(costs: dict[str, dict[str, float]], experiment: Any, keys: list[str]) -> dict[str, float]:
    """{attack key: projected score-network evaluations in the papers' setting} for runs with a diffusion purifier."""
    purifier = experiment.purifier
    if not hasattr(purifier, "dt") or not hasattr(purifier, "t_star"):
        return {}
    n_steps = max(1, round((purifier.t_star - purifier.t_end) / purifier.dt))
    return {key: paper_projection(costs[key]["score_evals"], n_steps, eot_of(spec.config))
            for key, spec in zip(keys, experiment.attacks) if key in costs}


def cost_summary(records: list[Any], keys: list[str]) -> dict[str, dict[str, float]]:
    """{attack key: mean score / classifier evaluations and seconds per image} over records (evaluation.results
    ImageRecord: `attacks` and `seconds`) that hold a cost."""
    out = {}
    for key in keys:
        costs = [{**r.attacks[key]["cost"], "seconds": r.seconds.get(key, float("nan"))}
                 for r in records if "cost" in r.attacks[key]]
        if costs:
            out[key] = {name: sum(c[name] for c in costs) / len(costs) for name in costs[0]}
    return out
