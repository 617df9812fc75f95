"""DiffPure's attack protocol (its bpda_eot attack, used for CelebA-HQ), with BPDA or exact gradients.

Every iteration (the start included) takes one gradient of CE(mean of K logits) over K = eot_samples stochastic
forwards; an image whose averaged logits misclassify is re-checked on defense_samples fresh purifications
(averaged logits) and, if still wrong, counts as broken for good, keeping that iterate as its adversarial
example. The loop stops when no image is left defended. Scores: DiffPure's decision as rule 'diffpure', and the
framework's single / vote / worst rules on the returned examples.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from attacks.checks import check_zero_gradients, run_sanity_checks
from attacks.common import AttackOutput, IterationCallback, LogitsFn, repeat_seeds, score_samples, seeded_call
from attacks.eot import eot_gradient, eot_logits
from attacks.pgd import PGDEOT, PGDEOTConfig, straight_through
from attacks.registry import check_attack_inputs
from utils.config import require
from utils.seeds import SeedStage


@dataclass(frozen=True)
class DiffPureProtocolConfig(PGDEOTConfig):
    """DiffPure's CelebA-HQ settings by default: Linf 16/255, step 2/255, 50 iterations, 15 EOT, 20 re-checks."""

    eps: Optional[float] = 16.0 / 255.0
    step_size: Optional[float] = 2.0 / 255.0
    iterations: int = 50
    eot_samples: int = 15
    eval_samples: int = 20
    random_start: bool = False
    defense_samples: int = 20  # --eot_defense_reps: purifications that confirm a broken image

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.defense_samples >= 1, f"attack.defense_samples must be >= 1, got {self.defense_samples}")


class DiffPureProtocolPGD(PGDEOT):
    """DiffPure's protocol with exact gradients through the whole defended model."""

    name = "pgd_eot_diffpure"
    config_class = DiffPureProtocolConfig

    def recheck(self, model: nn.Module, x: torch.Tensor, indices: torch.Tensor, seed: int,
                step: int) -> torch.Tensor:
        """Predictions (B,) from the logits averaged over defense_samples fresh purifications of x (B, ...)."""
        samples = self.config.defense_samples
        seeds = repeat_seeds(seed, indices, SeedStage.SCORE, 1 + step, samples)
        with torch.no_grad():
            return eot_logits(seeded_call(model), x, samples, seeds).mean(dim=0).argmax(dim=-1)

    def gradient_step(self, forward: LogitsFn, x_adv: torch.Tensor, y: torch.Tensor, indices: torch.Tensor,
                      seed: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(grad of CE(mean of K logits, y) w.r.t. x_adv, the averaged logits (B, classes), detached)."""
        samples, b = self.config.eot_samples, x_adv.shape[0]
        seeds = repeat_seeds(seed, indices, SeedStage.ATTACK_STEP, step, samples)

        def averaged_cross_entropy(x_rep: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            logits = forward(x_rep, noise)
            return F.cross_entropy(logits.view(samples, b, -1).mean(dim=0), y, reduction="none"), logits

        grad, _, logits = eot_gradient(averaged_cross_entropy, x_adv, samples, seeds)
        return grad, logits.mean(dim=0)

    def protocol(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, indices: torch.Tensor, seed: int,
                 callback: Optional[IterationCallback] = None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, Optional[str]]:
        """(x_adv (B, ...), defended (B,) bool, DiffPure's predictions (B,), the first step's zero-gradient flag);
        callback(i, iterations) after each of the i steps taken (none after an early stop)."""
        config = self.config
        forward = self.gradient_forward(model)
        x_adv = self.random_start(x, indices, seed) if config.random_start else x.clone()
        x_out, predictions = x_adv.clone(), y.clone()
        defended = torch.ones_like(y, dtype=torch.bool)
        zero_gradient_flag = None
        for step in range(config.iterations + 1):
            grad, logits = self.gradient_step(forward, x_adv, y, indices, seed, step)
            if step == 0 and config.sanity_checks:
                zero_gradient_flag = check_zero_gradients(grad)
            suspects = torch.nonzero(defended & (logits.argmax(dim=-1) != y)).squeeze(1)
            if suspects.numel():
                confirmed = self.recheck(model, x_adv[suspects], indices[suspects], seed, step)
                broken = suspects[confirmed != y[suspects]]
                defended[broken], x_out[broken] = False, x_adv[broken]
                predictions[broken] = confirmed[confirmed != y[suspects]]
            if not bool(defended.any()) or step == config.iterations:
                break
            x_adv = self.projected_step(x, x_adv, grad)
            if callback is not None:
                callback(step + 1, config.iterations)
        x_out[defended] = x_adv[defended]
        return x_out, defended, predictions, zero_gradient_flag

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, indices: torch.Tensor,
            seed: int, callback: Optional[IterationCallback] = None) -> AttackOutput:
        """Attack one batch x (B, C, H, W) in [0, 1]; rule 'diffpure' is DiffPure's robust-accuracy decision;
        callback(i, n) per step."""
        check_attack_inputs(x, y, indices)
        flags = run_sanity_checks(model, x, y) if self.config.sanity_checks else {}
        x_adv, defended, diffpure_predictions, zero_gradient_flag = self.protocol(model, x, y, indices, seed,
                                                                                  callback)
        predictions, correct = score_samples(model, x_adv, y, indices, seed, self.config.eval_samples)
        predictions["diffpure"], correct["diffpure"] = diffpure_predictions, defended
        if self.config.sanity_checks:
            flags["check_zero_gradients"] = zero_gradient_flag
        return AttackOutput(x_adv, predictions, correct, flags)


class DiffPureProtocolBPDA(DiffPureProtocolPGD):
    """DiffPure's protocol as released: BPDA, the purifier's backward replaced by the identity."""

    name = "bpda_eot_diffpure"
    identity_backward = True

    def gradient_forward(self, model: nn.Module) -> LogitsFn:
        """classifier(x + (purifier(x) - x).detach())."""
        return straight_through(model)

