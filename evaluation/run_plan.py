"""The size of an evaluation run before it starts: images, attacks, iterations x EOT, network passes, and a time
estimate from timing one forward and one forward-backward pass of the defended model on (part of) the first batch."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from attacks.cascade import stage_configs
from attacks.common import seeded_call
from utils.devices import synchronize
from evaluation.experiment import AttackSpec
from utils.progress import format_duration

AUTOATTACK_ITERATIONS = 100  # AutoAttack's APGD iterations when n_iter is left to the library
SCORING_STAGE = "scoring"  # the progress stage of the clean and scoring forwards


@dataclass(frozen=True)
class AttackBudget:
    """Per image: `iterations` gradient steps of `eot` samples each (plus `start` EOT gradients before the first
    step), then `scoring` stochastic forwards; a cascade holds its `stages` instead (an upper bound: each stage runs
    only on the survivors of the previous ones). The few sanity-check forwards of each batch are not counted."""

    key: str
    iterations: int
    eot: int
    scoring: int
    stages: tuple["AttackBudget", ...] = ()
    start: int = 0

    @property
    def gradient_passes(self) -> int:
        """Forward-backward passes of the model per image (a cascade: every stage on every image)."""
        if self.stages:
            return sum(s.gradient_passes for s in self.stages)
        return (self.start + self.iterations) * self.eot

    def text(self) -> str:
        """'pgd_eot 8 x 2 EOT + 10 scoring forwards'; a cascade lists its stages, marked as an upper bound."""
        if self.stages:
            return (f"{self.key} of {len(self.stages)} stages, at most (later stages see only survivors): "
                    + ", ".join(s.text() for s in self.stages))
        return f"{self.key} {self.iterations} x {self.eot} EOT + {self.scoring} scoring forwards"


def config_budget(key: str, config: object) -> AttackBudget:
    """The budget of one attack config (PGD: iterations / eot_samples; APGD-type: one more gradient, at the start;
    AutoAttack: n_iter / eot_samples, its eot_iter resolved; scoring: eval_samples at the end and at each score_at
    iteration; a cascade: the sum of its stages)."""
    if getattr(config, "attacks", None):
        stages = tuple(config_budget(key, stage_config) for key, _, stage_config in stage_configs(config))
        return AttackBudget(key, sum(s.iterations for s in stages), 1, sum(s.scoring for s in stages), stages)
    iterations = getattr(config, "iterations", None) or getattr(config, "n_iter", None) or AUTOATTACK_ITERATIONS
    eot = getattr(config, "eot_samples", 1)
    scored_points = 1 + len(getattr(config, "score_at", ()))  # the final point and each score_at snapshot
    return AttackBudget(key, int(iterations), int(eot), int(getattr(config, "eval_samples", 1)) * scored_points,
                        start=getattr(config, "start_gradients", 0))


def common_eot(budget: AttackBudget) -> Optional[int]:
    """EOT samples per gradient step of an attack; of a cascade, the one its stages share (None if they differ)."""
    eots = {stage.eot for stage in budget.stages} if budget.stages else {budget.eot}
    return eots.pop() if len(eots) == 1 else None


def attack_budget(key: str, spec: AttackSpec) -> AttackBudget:
    """The budget of one configured attack of a run."""
    return config_budget(key, spec.config)


def reverse_steps(purifier_config: object) -> int:
    """Solver steps per purification, round((t_star - t_end) / dt), or 1 for a purifier without a time grid."""
    t_star, dt = getattr(purifier_config, "t_star", None), getattr(purifier_config, "dt", None)
    if t_star is None or dt is None:
        return 1
    return max(1, round((t_star - getattr(purifier_config, "t_end", 0.0)) / dt))


def attack_weights(budgets: list[AttackBudget], gradient_cost: float = 3.0) -> dict[str, float]:
    """Work per image in forward-pass units (a forward-backward pass counts `gradient_cost`): each attack's steps,
    and SCORING_STAGE, the clean and scoring forwards, which no callback reports (they count when a batch ends)."""
    return {**{b.key: gradient_cost * b.gradient_passes for b in budgets},
            SCORING_STAGE: 1.0 + sum(b.scoring for b in budgets)}


def evaluations_per_pass(purifier_config: object) -> tuple[int, int]:
    """Score-network evaluations of one purification: (forward only, forward-backward). The checkpointed exact
    solver evaluates each step again in the backward; torchsde evaluates once more per solve, and its adjoint
    integrates back through every step (measured: 11 and 21 for 10 steps)."""
    steps = reverse_steps(purifier_config)
    if getattr(purifier_config, "backend", None) == "torchsde":
        return steps + 1, 2 * steps + 1
    return steps, (2 if getattr(purifier_config, "checkpoint", False) else 1) * steps


def describe_size(n_images: int, n_todo: int, budgets: list[AttackBudget], per_pass: tuple[int, int]) -> str:
    """One line: images, attacks with iterations x EOT, and the network passes this run computes (`per_pass`: the
    score-network evaluations of one forward and of one forward-backward pass, from `evaluations_per_pass`)."""
    gradient = sum(b.gradient_passes for b in budgets)
    forward = 1 + sum(b.scoring for b in budgets)
    attacks = "; ".join(b.text() for b in budgets) or "none"
    per_forward, per_gradient = per_pass
    return (f"run size: {n_images} images ({n_todo} to compute), {len(budgets)} attack(s): {attacks}; per image "
            f"{gradient} forward-backward + {forward} forward passes of the defended model ({per_gradient} and "
            f"{per_forward} score-network evaluations each), so {n_todo * (per_gradient * gradient + per_forward * forward)}"
            f" score-network evaluations in all")


def seconds_per_image(model: nn.Module, x: torch.Tensor, y: torch.Tensor, seeds: torch.Tensor) -> tuple[float, float]:
    """Wall time per image of one forward (no grad) and one forward-backward pass of `model` on x (B, C, H, W),
    after a one-image warm-up (kernel selection, allocator), waiting for the GPU before each clock read."""
    forward = seeded_call(model)

    def gradient(rows: slice) -> None:
        with torch.enable_grad():
            x_in = x[rows].detach().requires_grad_(True)
            torch.autograd.grad(F.cross_entropy(forward(x_in, seeds[rows]), y[rows]), x_in)

    gradient(slice(0, 1))
    synchronize(x.device)
    start = time.perf_counter()
    with torch.no_grad():
        forward(x, seeds)
    synchronize(x.device)
    middle = time.perf_counter()
    gradient(slice(None))
    synchronize(x.device)
    end = time.perf_counter()
    return (middle - start) / x.shape[0], (end - middle) / x.shape[0]


def estimate_line(n_todo: int, budgets: list[AttackBudget], timing: tuple[float, float]) -> str:
    """'estimated time: about 6 min 10 s (from timing the first images: 0.052 s per image forward, ...)'."""
    forward, gradient = timing
    per_image = forward * (1 + sum(b.scoring for b in budgets)) + gradient * sum(b.gradient_passes for b in budgets)
    return (f"estimated time: about {format_duration(n_todo * per_image)} (from timing the first images: "
            f"{forward:.3g} s per image forward, {gradient:.3g} s per image forward-backward)")
