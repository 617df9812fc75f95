"""PGD with EOT on the defended model: exact gradients ('pgd_eot') or BPDA straight-through gradients ('bpda_eot')."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import nn

from attacks.checks import check_zero_gradients, explain_expected_flags, run_sanity_checks
from attacks.common import (AttackOutput, IterationCallback, LogitsFn,
                            repeat_seeds, score_samples, seeded_call)
from attacks.eot import eot_gradient
from attacks.registry import check_attack_inputs
from attacks.threat import ThreatConfig
from runners.defended import in_chunks
from utils.config import from_dict, require
from utils.seeds import SeedStage, derive_seeds, per_row


class EotPoint(NamedTuple):
    """At one iterate: the gradient a PGD step ascends (B, C, H, W), the EOT-mean CE loss (B,) and whether every
    EOT sample classified the image correctly (B,) bool."""

    grad: torch.Tensor
    loss: torch.Tensor
    correct: torch.Tensor


class Perturbed(NamedTuple):
    """PGD's result: x_adv (B, C, H, W), the first step's zero-gradient flag, and the per-image traces
    {'loss', 'correct'} (B, T) at the T iterates whose gradient was taken (0 .. T - 1; the last is scored apart)."""

    x_adv: torch.Tensor
    zero_gradient_flag: Optional[str]
    history: dict[str, torch.Tensor]


# (x_adv (B, C, H, W), y (B,), noise seeds (K * B,)) -> the gradient a PGD step ascends, with loss and correctness
AscentGradient = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], EotPoint]
# the step size 0.007 at Linf eps 8/255 as a fraction of eps, used for any norm and eps by default
STEP_FRACTION = 0.007 / (8.0 / 255.0)


@dataclass(frozen=True)
class PGDEOTConfig(ThreatConfig):
    """PGD-EOT: `iterations` steps, each on the CE loss averaged over `eot_samples` forwards of one batched call."""

    iterations: int = 200
    eot_samples: int = 20
    step_size: Optional[float] = None  # None: STEP_FRACTION * eps (0.007 at Linf 8/255)
    random_start: bool = True
    sanity_checks: bool = True  # AutoAttack's checks once per run() call, and the zero-gradient check

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.step_size is None or self.step_size > 0, f"attack.step_size must be > 0, got {self.step_size}")
        require(self.iterations >= 1, f"attack.iterations must be >= 1, got {self.iterations}")
        require(self.eot_samples >= 1, f"attack.eot_samples must be >= 1, got {self.eot_samples}")

    @property
    def alpha(self) -> float:
        """The step size."""
        return STEP_FRACTION * self.radius if self.step_size is None else self.step_size

    @property
    def step_text(self) -> str:
        """The step rule for summaries."""
        return f"step {self.alpha:.4g}"


@dataclass(frozen=True)
class BPDAEOTConfig(PGDEOTConfig):
    """BPDA+EOT PGD-20 (COUP Table 3): as PGDEOTConfig with 20 iterations by default."""

    iterations: int = 20


def _row_norm(v: torch.Tensor) -> torch.Tensor:
    """L2 norm of each row of v (B, ...), shaped (B, 1, ..., 1) for broadcasting."""
    return v.flatten(1).norm(dim=1).view(-1, *([1] * (v.dim() - 1)))


class LinfBall:
    """Linf geometry: sign steps, coordinate-wise clipping of the perturbation."""

    @staticmethod
    def start(shape: tuple[int, ...], eps: float, generator: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
        """A perturbation uniform in the Linf ball, shape `shape`."""
        return (2.0 * torch.rand(shape, generator=generator, dtype=dtype) - 1.0) * eps

    @staticmethod
    def step(grad: torch.Tensor, alpha: float) -> torch.Tensor:
        """alpha * sign(grad)."""
        return alpha * grad.sign()

    @staticmethod
    def project(delta: torch.Tensor, eps: float) -> torch.Tensor:
        """delta clipped to [-eps, eps]."""
        return delta.clamp(-eps, eps)


class L2Ball:
    """L2 geometry: normalised-gradient steps, radial projection of the perturbation."""

    @staticmethod
    def start(shape: tuple[int, ...], eps: float, generator: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
        """A random direction times a radius uniform in [0, eps], shape `shape`."""
        direction = torch.randn(shape, generator=generator, dtype=dtype)
        return direction / direction.norm().clamp_min(1e-12) * eps * torch.rand((), generator=generator, dtype=dtype)

    @staticmethod
    def step(grad: torch.Tensor, alpha: float) -> torch.Tensor:
        """alpha * grad / ||grad||_2 per row."""
        return alpha * grad / _row_norm(grad).clamp_min(1e-12)

    @staticmethod
    def project(delta: torch.Tensor, eps: float) -> torch.Tensor:
        """delta scaled down per row onto the L2 ball of radius eps when outside it."""
        return delta * (eps / _row_norm(delta).clamp_min(1e-12)).clamp(max=1.0)


BALLS: dict[str, type] = {"Linf": LinfBall, "L2": L2Ball}


def eot_point(forward: LogitsFn, x: torch.Tensor, y: torch.Tensor, samples: int,
              noise_seeds: Optional[torch.Tensor]) -> EotPoint:
    """grad_x of sum_b (1/K) sum_k CE(forward(x; xi_k)_b, y_b) for x (B, C, H, W), with each image's mean CE and
    all-samples-correct; the K samples are one stacked call (attacks.eot) with noise_seeds (K * B,)."""
    b, y_rows = x.shape[0], y.repeat(samples)

    def cross_entropy(x_rep: torch.Tensor, seeds: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        logits = forward(x_rep, seeds)
        return F.cross_entropy(logits, y_rows, reduction="none"), logits

    grad, rows, logits = eot_gradient(cross_entropy, x, samples, noise_seeds, divisor=samples)
    correct = (logits.argmax(dim=-1) == y.unsqueeze(0)).all(dim=0)
    return EotPoint(grad, rows.view(samples, b).mean(dim=0), correct)


def straight_through(model: nn.Module) -> LogitsFn:
    """BPDA: logits = classifier(x + (purifier(x) - x).detach()), so the purifier's backward is the identity."""
    purifier, classifier = getattr(model, "purifier", None), getattr(model, "classifier", None)
    if not isinstance(purifier, nn.Module) or not isinstance(classifier, nn.Module):
        raise TypeError(f"bpda_eot needs a defended model with .purifier and .classifier modules "
                        f"(runners.defended.DefendedClassifier), got {type(model).__name__}")
    purify = seeded_call(purifier)

    def forward(x: torch.Tensor, noise_seeds: Optional[torch.Tensor]) -> torch.Tensor:
        purified = in_chunks(purify, x.detach(), noise_seeds, getattr(model, "max_batch", None)).detach()
        return classifier(x + (purified - x.detach()))

    return forward


class PGDEOT:
    """PGD-EOT with exact gradients through the whole defended model, scored single / vote / worst-case."""

    name = "pgd_eot"
    identity_backward = False
    config_class: type = PGDEOTConfig

    def __init__(self, config: Mapping[str, Any] | PGDEOTConfig | None = None) -> None:
        self.config = from_dict(self.config_class, {} if config is None else config, f"attack ({self.name})")

    def check_model(self, model: nn.Module) -> None:
        """Nothing to check: this attack takes any logits model."""

    def gradient_forward(self, model: nn.Module) -> LogitsFn:
        """The function whose CE-loss gradient the attack follows."""
        return seeded_call(model)

    def random_start(self, x: torch.Tensor, indices: torch.Tensor, seed: int) -> torch.Tensor:
        """x plus a per-image random perturbation seeded by (seed, index, SeedStage.ATTACK_START), clipped to [0, 1]."""
        ball, eps = BALLS[self.config.norm], self.config.radius
        seeds = derive_seeds(seed, indices, SeedStage.ATTACK_START, 0, 0)
        delta = per_row(seeds, lambda g: ball.start(tuple(x.shape[1:]), eps, g, x.dtype), x.device)
        return (x + delta).clamp(0.0, 1.0)

    def ascent_gradient(self, model: nn.Module) -> AscentGradient:
        """(x_adv, y, noise seeds (K * B,)) -> the direction each step ascends, the EOT CE gradient, at an EotPoint."""
        forward, samples = self.gradient_forward(model), self.config.eot_samples
        return lambda x_adv, y, noise_seeds: eot_point(forward, x_adv, y, samples, noise_seeds)

    def projected_step(self, x: torch.Tensor, x_adv: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        """x + P(x_adv + alpha s(grad) - x), clipped to [0, 1] and detached (B, C, H, W); P projects on the eps ball."""
        ball = BALLS[self.config.norm]
        delta = ball.project(x_adv + ball.step(grad, self.config.alpha) - x, self.config.radius)
        return (x + delta).clamp(0.0, 1.0).detach()

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, indices: torch.Tensor,
                seed: int, callback: Optional[IterationCallback] = None) -> Perturbed:
        """Adversarial x (B, C, H, W) in [0, 1] within the eps ball, the zero-gradient flag of the first step and the
        loss / correctness traces of the iterates."""
        config = self.config
        gradient = self.ascent_gradient(model)
        x_adv = self.random_start(x, indices, seed) if config.random_start else x.clone()
        zero_gradient_flag, losses, corrects = None, [], []
        for step in range(config.iterations):
            noise_seeds = repeat_seeds(seed, indices, SeedStage.ATTACK_STEP, step, config.eot_samples)
            point = gradient(x_adv, y, noise_seeds)
            if step == 0 and config.sanity_checks:
                zero_gradient_flag = check_zero_gradients(point.grad)
            losses.append(point.loss)
            corrects.append(point.correct)
            x_adv = self.projected_step(x, x_adv, point.grad)
            if callback is not None:
                callback(step + 1, config.iterations)
        history = {"loss": torch.stack(losses, dim=1), "correct": torch.stack(corrects, dim=1)}
        return Perturbed(x_adv, zero_gradient_flag, history)

    def explain_flags(self, flags: dict[str, Optional[str]]) -> dict[str, Optional[str]]:
        """AutoAttack's warnings that are expected for an EOT attack, replaced by what they mean for it; others kept."""
        return explain_expected_flags(flags, f"{self.name} averages each step's gradient over "
                                             f"{self.config.eot_samples} noise draws (EOT) and scores "
                                             f"{self.config.eval_samples} forwards", self.identity_backward)

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, indices: torch.Tensor,
            seed: int, callback: Optional[IterationCallback] = None) -> AttackOutput:
        """Attack one batch x (B, C, H, W) in [0, 1], labels y (B,), dataset indices (B,); callback(i, n) per step."""
        check_attack_inputs(x, y, indices)
        flags = self.explain_flags(run_sanity_checks(model, x, y)) if self.config.sanity_checks else {}
        x_adv, zero_gradient_flag, history = self.perturb(model, x, y, indices, seed, callback)
        predictions, correct = score_samples(model, x_adv, y, indices, seed, self.config.eval_samples)
        if self.config.sanity_checks:
            flags["check_zero_gradients"] = zero_gradient_flag
        return AttackOutput(x_adv, predictions, correct, flags, history)


class BPDAEOT(PGDEOT):
    """BPDA+EOT: PGD-EOT whose gradient treats the purifier as the identity (straight-through)."""

    name = "bpda_eot"
    identity_backward = True
    config_class = BPDAEOTConfig

    def gradient_forward(self, model: nn.Module) -> LogitsFn:
        """classifier(x + (purifier(x) - x).detach())."""
        return straight_through(model)



__all__ = ["AscentGradient", "BPDAEOT", "BPDAEOTConfig", "EotPoint", "PGDEOT", "PGDEOTConfig", "Perturbed", "eot_point",
           "straight_through"]
