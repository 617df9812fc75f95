"""APGD-EOT (Croce and Hein 2020) on CE or DLR, Linf or L2, with exact seeded EOT gradients.

pyautoattack's APGD draws its EOT samples by calling model(x) with the model's own hidden randomness and
cannot take our per-image noise seeds, so the algorithm is written here from the paper:
    z = P(x_k + eta_k s(grad)),  x_{k+1} = P(x_k + a (z - x_k) + (1 - a)(x_k - x_{k-1})),  a = 0.75,
with the step size eta halved at the checkpoints w_j (p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03,
0.06)) when fewer than rho of the steps since the last checkpoint raised the loss, or when the step was not halved
at the previous checkpoint and the best loss has not risen since (as the reference code: no such halving at w_1);
a halving restarts from the best (highest-loss) point. The gradient of each iteration averages K EOT samples
('mean') or weighs them as DiffHammer does ('selective', see attacks.aggregation); noise 'fixed' is the
deterministic white-box mode (one noise draw per image for the attack and the scoring).

The returned adversarial example is, per image, the iterate on which the most of its K EOT samples were wrong, ties
broken by the higher mean loss: the best estimate, from the attack's own draws, of the point most likely to be
misclassified by a fresh purification, which is what the worst-of-N scoring (fresh noise) asks. (The step-size
schedule's best point maximises the mean loss instead; for a deterministic model both pick a misclassified point.)
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Literal, Mapping, Optional

import torch
from torch import nn

from attacks.aggregation import AGGREGATIONS, NOISE_MODES, SelectiveSettings, score_fixed
from attacks.checks import check_zero_gradients, explain_expected_flags, run_sanity_checks
from attacks.common import AttackOutput, IterationCallback, score_samples, seeded_call
from attacks.eot import eot_gradient
from attacks.losses import LOSSES
from attacks.pgd import BALLS, PGDEOT
from attacks.registry import check_attack_inputs
from attacks.threat import ThreatConfig
from utils.config import from_dict, require

# (x_rep (K * B, C, H, W), y_rep (K * B,), noise seeds (K * B,)) -> (per-row loss (K * B,), logits (K * B, classes))
Objective = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class ApgdEotConfig(ThreatConfig):
    """APGD-EOT: `iterations` steps, each on `loss` over `eot_samples` forwards of one batched call."""

    iterations: int = 100
    eot_samples: int = 20
    loss: Literal["ce", "dlr"] = "ce"
    aggregation: Literal["mean", "selective"] = "mean"
    em_steps: int = 3  # E/M rounds of the selective aggregation
    em_sharpness: float = 5.0  # lambda of the selective aggregation's E-step (DiffHammer's default)
    noise: Literal["random", "fixed"] = "random"
    rho: float = 0.75
    momentum: float = 0.75
    random_start: bool = True
    score_at: tuple[int, ...] = ()  # also score the attack's point after these iterations (convergence curve)
    sanity_checks: bool = True
    start_gradients: ClassVar[int] = 1  # EOT gradients taken before the first step: APGD evaluates its start point

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.iterations >= 1, f"attack.iterations must be >= 1, got {self.iterations}")
        require(self.eot_samples >= 1, f"attack.eot_samples must be >= 1, got {self.eot_samples}")
        require(self.em_steps >= 1, f"attack.em_steps must be >= 1, got {self.em_steps}")
        require(self.em_sharpness > 0.0, f"attack.em_sharpness must be > 0, got {self.em_sharpness}")
        require(0.0 < self.rho <= 1.0 and 0.0 < self.momentum <= 1.0, "attack.rho and attack.momentum lie in (0, 1]")
        require(self.noise == "random" or self.eot_samples == 1,
                "attack.noise 'fixed' draws one noise per image: set eot_samples to 1")
        require(all(1 <= t <= self.iterations for t in self.score_at),
                f"attack.score_at entries must lie in [1, iterations={self.iterations}], got {list(self.score_at)}")

    @property
    def alpha(self) -> float:
        """The initial step size eta_0 = 2 eps (halved adaptively)."""
        return 2.0 * self.radius

    @property
    def step_text(self) -> str:
        """The step rule for summaries."""
        return f"step from {self.alpha:.4g} (2 eps), halved adaptively"


def apgd_checkpoints(iterations: int) -> list[int]:
    """The iterations w_j = ceil(p_j N) at which APGD may halve its step (APGD section 3.2), within (0, N]."""
    p = [0.0, 0.22]
    while p[-1] < 1.0:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    steps = [math.ceil(q * iterations - 1e-9) for q in p[1:]]  # the tolerance absorbs rounding in the p_j sums
    return sorted({w for w in steps if w <= iterations})


@dataclass
class Point:
    """The objective at x (B, ...): EOT-mean loss (B,), number of wrong EOT samples (B,) and the aggregated
    gradient (B, ...)."""

    loss: torch.Tensor
    wrong: torch.Tensor
    grad: torch.Tensor

    @property
    def correct(self) -> torch.Tensor:
        """(B,) bool: every EOT sample correct."""
        return self.wrong == 0


def _where(mask: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise select: a where mask (B,) else b."""
    return torch.where(mask.view(-1, *([1] * (a.dim() - 1))), a, b)


def halving(rise_fraction: torch.Tensor, rho: float, best_rose: torch.Tensor,
            halved_last: torch.Tensor) -> torch.Tensor:
    """(B,) bool: halve at a checkpoint when < rho of the interval's steps raised the loss (the paper's <; the
    reference code has <=), or when the best loss has not risen and the step was not halved at the last one."""
    return (rise_fraction < rho) | (~best_rose & ~halved_last)


def keep_most_wrong(chosen: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
                    candidate: tuple[torch.Tensor, Point]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per image, (x, wrong count, mean loss) of the chosen point or the candidate (x, its Point), whichever has more
    wrong EOT samples, ties to the higher mean loss."""
    x, wrong, loss = chosen
    x_new, point = candidate
    better = (point.wrong > wrong) | ((point.wrong == wrong) & (point.loss > loss))
    return _where(better, x_new, x), torch.where(better, point.wrong, wrong), torch.where(better, point.loss, loss)


class ApgdEot:
    """APGD with exact EOT gradients through the whole defended model, scored by K re-purifications."""

    name = "apgd_eot"
    identity_backward = False
    config_class: type = ApgdEotConfig

    def __init__(self, config: Mapping[str, Any] | ApgdEotConfig | None = None) -> None:
        self.config = from_dict(self.config_class, {} if config is None else config, f"attack ({self.name})")

    def check_model(self, model: nn.Module) -> None:
        """Nothing to check: this attack takes any logits model."""

    def objective(self, model: nn.Module, x: torch.Tensor) -> Objective:
        """The per-row loss the attack maximises (here the configured loss on the defended model's logits)."""
        forward, row_loss = seeded_call(model), LOSSES.get(self.config.loss)

        def evaluate(x_rep: torch.Tensor, y_rep: torch.Tensor, seeds: torch.Tensor):
            logits = forward(x_rep, seeds)
            return row_loss(logits, y_rep), logits

        return evaluate

    def point(self, objective: Objective, x: torch.Tensor, y: torch.Tensor, seeds: torch.Tensor) -> Point:
        """Loss, correctness and aggregated gradient at x (B, C, H, W) from K samples in one batched call."""
        k, b, y_rep = self.config.eot_samples, x.shape[0], y.repeat(self.config.eot_samples)
        grad_rows, loss_rows, logits = eot_gradient(lambda x_rep, noise: objective(x_rep, y_rep, noise), x, k, seeds,
                                                    per_draw=True)
        loss = loss_rows.view(k, b)
        wrong = (logits.argmax(dim=-1) != y.unsqueeze(0)).sum(dim=0)
        c = self.config
        settings = SelectiveSettings(c.norm, c.radius, c.em_steps, c.em_sharpness)
        grad = AGGREGATIONS.get(c.aggregation)(grad_rows, loss, settings)
        return Point(loss.mean(dim=0), wrong, grad)

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, indices: torch.Tensor,
                seed: int, callback: Optional[IterationCallback] = None) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[int, torch.Tensor], Optional[str]]:
        """(x_adv (B, ...) in the eps ball, history {'loss', 'correct'} (B, T + 1), {t: x at t}, zero-grad flag)."""
        config, ball, eps = self.config, BALLS[self.config.norm], self.config.radius
        objective = self.objective(model, x)
        seeds_at = NOISE_MODES.get(config.noise)
        project = lambda v: (x + ball.project(v - x, eps)).clamp(0.0, 1.0)  # noqa: E731
        x_k = PGDEOT({"norm": config.norm, "eps": eps}).random_start(x, indices, seed) if config.random_start \
            else x.clone()
        current = self.point(objective, x_k, y, seeds_at(seed, indices, 0, config.eot_samples))
        zero_flag = check_zero_gradients(current.grad) if config.sanity_checks else None
        best_x, best_loss, best_grad = x_k, current.loss.clone(), current.grad
        chosen_x, chosen_wrong, chosen_loss = x_k, current.wrong.clone(), current.loss.clone()
        eta = torch.full((x.shape[0],), 2.0 * eps, dtype=x.dtype, device=x.device)
        x_prev, increases, last_checkpoint = x_k, torch.zeros_like(eta), 0
        halved_last, best_last = torch.ones_like(eta, dtype=torch.bool), best_loss.clone()
        checkpoints, snapshots = set(apgd_checkpoints(config.iterations)), {}
        losses, corrects = [current.loss], [current.correct]
        for k in range(config.iterations):
            step = ball.step(current.grad, 1.0) * eta.view(-1, *([1] * (x.dim() - 1)))
            z = project(x_k + step)
            a = config.momentum
            x_next = z if k == 0 else project(x_k + a * (z - x_k) + (1 - a) * (x_k - x_prev))
            x_prev, x_k = x_k, x_next.detach()
            new = self.point(objective, x_k, y, seeds_at(seed, indices, k + 1, config.eot_samples))
            increases += (new.loss > current.loss).to(eta.dtype)
            improved = new.loss > best_loss
            best_x, best_grad = _where(improved, x_k, best_x), _where(improved, new.grad, best_grad)
            best_loss = torch.maximum(best_loss, new.loss)
            chosen_x, chosen_wrong, chosen_loss = keep_most_wrong((chosen_x, chosen_wrong, chosen_loss), (x_k, new))
            current = new
            losses.append(new.loss)
            corrects.append(new.correct)
            if k + 1 in checkpoints:
                halve = halving(increases / (k + 1 - last_checkpoint), config.rho, best_loss > best_last, halved_last)
                eta = torch.where(halve, eta / 2, eta)
                # restart from the best point with its gradient; as in the reference code, the next step's momentum
                # is best_x - x_prev and its loss is compared with this iterate's (condition 1 counts iterate rises)
                x_k = _where(halve, best_x, x_k)
                current = Point(current.loss, current.wrong, _where(halve, best_grad, current.grad))
                increases, last_checkpoint = torch.zeros_like(eta), k + 1
                halved_last, best_last = halve, best_loss.clone()
            if k + 1 in config.score_at:
                snapshots[k + 1] = chosen_x
            if callback is not None:
                callback(k + 1, config.iterations)
        history = {"loss": torch.stack(losses, dim=1), "correct": torch.stack(corrects, dim=1)}
        return chosen_x, history, snapshots, zero_flag

    def explain_flags(self, flags: dict[str, Optional[str]]) -> dict[str, Optional[str]]:
        """AutoAttack's randomized / dynamic warnings marked expected, with what this attack does about them."""
        c = self.config
        randomized = (f"{self.name} fixes one noise draw per image for the attack and the scoring (deterministic "
                      f"white-box mode)" if c.noise == "fixed" else
                      f"{self.name} aggregates ({c.aggregation}) each step's gradient over {c.eot_samples} noise "
                      f"draws (EOT) and scores {c.eval_samples} forwards")
        return explain_expected_flags(flags, randomized)

    def score(self, model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor, indices: torch.Tensor,
              seed: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Predictions and correctness of x_adv: K re-purifications, or the one fixed noise draw in mode 'fixed'."""
        if self.config.noise == "fixed":
            return score_fixed(model, x_adv, y, indices, seed)
        return score_samples(model, x_adv, y, indices, seed, self.config.eval_samples)

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, indices: torch.Tensor,
            seed: int, callback: Optional[IterationCallback] = None) -> AttackOutput:
        """Attack one batch x (B, C, H, W) in [0, 1] with labels y (B,) and dataset indices (B,); callback(i, n) per step."""
        check_attack_inputs(x, y, indices)
        flags = self.explain_flags(run_sanity_checks(model, x, y)) if self.config.sanity_checks else {}
        x_adv, history, snapshots, zero_flag = self.perturb(model, x, y, indices, seed, callback)
        predictions, correct = self.score(model, x_adv, y, indices, seed)
        for t, x_t in sorted(snapshots.items()):
            history[f"worst_correct_at_{t}"] = self.score(model, x_t, y, indices, seed)[1]["worst"][:, None]
        if self.config.sanity_checks:
            flags["check_zero_gradients"] = zero_flag
        return AttackOutput(x_adv, predictions, correct, flags, history)


@dataclass(frozen=True)
class SelectiveEotConfig(ApgdEotConfig):
    """DiffHammer's selective EOT: as ApgdEotConfig with aggregation 'selective' and the DLR loss by default (the
    E-step reads a predicted loss's sign as the prediction, which holds for a margin loss)."""

    loss: Literal["ce", "dlr"] = "dlr"
    aggregation: Literal["mean", "selective"] = "selective"


class SelectiveEot(ApgdEot):
    """APGD whose EOT gradient is the selective (EM) aggregation over samples, scored worst-case over N forwards."""

    name = "selective_eot"
    config_class = SelectiveEotConfig


__all__ = ["ApgdEot", "ApgdEotConfig", "Objective", "SelectiveEot", "SelectiveEotConfig", "apgd_checkpoints"]
