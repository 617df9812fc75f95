"""PGD on AID-Purifier's joint loss CE(f(P(x)), y) - lambda * BCE(D(x), clean): the attacker also tries to
look clean to the discriminator D ('pgd_aid_joint').

BCE(D(x), clean) = -log D(x), so the ascended loss is CE + lambda log D(x); the CE part is PGDEOT's
(exact or BPDA gradients through the purifier, as the purifier's grad_mode says), the D part is
differentiated directly. With lambda = 0 this is pgd_eot with the same seeds.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from attacks.checks import check_zero_gradients
from attacks.common import IterationCallback, repeat_seeds
from attacks.pgd import BALLS, PGDEOT, PGDEOTConfig, eot_gradient
from runners.aid import AIDDiscriminator, AIDPurifier
from utils.config import require
from utils.seeds import SeedStage


@dataclass(frozen=True)
class PGDAIDJointConfig(PGDEOTConfig):
    """PGD on CE + joint_weight * log D(x); one forward per step by default (AID purification is deterministic)."""

    eot_samples: int = 1
    joint_weight: float = 1.0  # lambda

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.joint_weight >= 0.0, f"attack.joint_weight must be >= 0, got {self.joint_weight}")


def aid_discriminator(model: nn.Module) -> AIDDiscriminator:
    """The discriminator of model.purifier, which must be an AIDPurifier."""
    purifier = getattr(model, "purifier", None)
    if not isinstance(purifier, AIDPurifier):
        raise TypeError(f"pgd_aid_joint needs a defended model whose purifier is AID-Purifier (purifier: "
                        f"{{name: aid}}), got purifier {type(purifier).__name__}; use pgd_eot for other defenses")
    return purifier.discriminator


def log_clean_gradient(discriminator: AIDDiscriminator, x: torch.Tensor) -> torch.Tensor:
    """grad_x sum_b log D(x_b) for x (B, C, H, W) in [0, 1] (= -grad_x sum_b BCE(D(x_b), clean))."""
    with torch.enable_grad():
        x_in = x.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(F.logsigmoid(discriminator.logit(x_in)).sum(), x_in)
    return grad


class PGDAIDJoint(PGDEOT):
    """PGD-EOT whose step follows grad [CE(f(P(x)), y) + lambda log D(x)], scored single / vote / worst-case."""

    name = "pgd_aid_joint"
    config_class: type = PGDAIDJointConfig

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, indices: torch.Tensor,
                seed: int, callback: Optional[IterationCallback] = None) -> tuple[torch.Tensor, Optional[str]]:
        """Adversarial x (B, C, H, W) in [0, 1] within the eps ball, and the zero-gradient flag of the first step."""
        config, ball = self.config, BALLS[self.config.norm]
        discriminator, forward = aid_discriminator(model), self.gradient_forward(model)
        x_adv = self.random_start(x, indices, seed) if config.random_start else x.clone()
        zero_gradient_flag = None
        for step in range(config.iterations):
            noise_seeds = repeat_seeds(seed, indices, SeedStage.ATTACK_STEP, step, config.eot_samples).to(x.device)
            grad = eot_gradient(forward, x_adv, y, config.eot_samples, noise_seeds)
            grad = grad + config.joint_weight * log_clean_gradient(discriminator, x_adv)
            if step == 0 and config.sanity_checks:
                zero_gradient_flag = check_zero_gradients(grad)
            delta = ball.project(x_adv + ball.step(grad, config.alpha) - x, config.radius)
            x_adv = (x + delta).clamp(0.0, 1.0).detach()
            if callback is not None:
                callback(step + 1, config.iterations)
        return x_adv, zero_gradient_flag



__all__ = ["PGDAIDJoint", "PGDAIDJointConfig", "aid_discriminator", "log_clean_gradient"]
