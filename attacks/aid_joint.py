"""PGD on AID-Purifier's joint loss CE(f(P(x)), y) - lambda * BCE(D(x), clean): the attacker also tries to
look clean to the discriminator D ('pgd_aid_joint').

BCE(D(x), clean) = -log D(x), so the ascended loss is CE + lambda log D(x); the CE part is PGDEOT's
(exact or BPDA gradients through the purifier, as the purifier's grad_mode says), the D part is
differentiated directly. With lambda = 0 this is pgd_eot with the same seeds.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from attacks.pgd import PGDEOT, AscentGradient, EotPoint, PGDEOTConfig
from runners.aid import AIDDiscriminator, AIDPurifier
from utils.config import require


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
        raise ValueError(f"pgd_aid_joint needs a defended model whose purifier is AID-Purifier (purifier: "
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

    def check_model(self, model: nn.Module) -> None:
        """Refuse a defense whose purifier is not AID-Purifier (there is no discriminator to fool)."""
        aid_discriminator(model)

    def ascent_gradient(self, model: nn.Module) -> AscentGradient:
        """grad_x [CE(f(P(x)), y) + lambda log D(x)]: PGDEOT's EOT CE gradient plus the discriminator's term."""
        discriminator, ce_gradient = aid_discriminator(model), super().ascent_gradient(model)
        weight = self.config.joint_weight
        def joint(x_adv: torch.Tensor, y: torch.Tensor, noise_seeds: torch.Tensor) -> EotPoint:
            point = ce_gradient(x_adv, y, noise_seeds)  # its loss trace stays the CE
            return point._replace(grad=point.grad + weight * log_clean_gradient(discriminator, x_adv))

        return joint


__all__ = ["PGDAIDJoint", "PGDAIDJointConfig", "aid_discriminator", "log_clean_gradient"]
