"""APGD-CE alone (Croce & Hein 2020): the first attack of AutoAttack, the attack of COUP Sec. 5.2.1 (LM vs COUP-LM)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from attacks.autoattack import AutoAttackConfig, AutoAttackEval
from attacks.registry import ATTACKS
from utils.compat import autoattack_class
from utils.config import require


@dataclass(frozen=True)
class APGDCEConfig(AutoAttackConfig):
    """AutoAttack's APGD-CE with AutoAttack's standard settings (100 iterations, 1 restart, EOT 1) unless set.

    `version` only names the sanity checks that run ('standard': all of them, as for any non-'rand' run);
    n_queries is unused (no Square). The attack's own score is reported under 'autoattack'.
    """

    version: Literal["standard"] = "standard"
    n_restarts: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.n_restarts >= 1, f"attack.n_restarts must be >= 1, got {self.n_restarts}")


class APGDCEEval(AutoAttackEval):
    """pyautoattack's AutoAttack(version='custom', attacks=['apgd-ce']), seeded, with AutoAttack's checks."""

    name = "apgd_ce"
    config_class: type = APGDCEConfig

    def adversary(self, model: nn.Module, seed: int, device: torch.device) -> Any:
        """AutoAttack running APGD-CE only, with this config's eps, iterations, restarts and EOT samples."""
        adversary = autoattack_class()(model, norm=self.config.norm, eps=self.config.radius, version="custom",
                                       attacks=["apgd-ce"], seed=int(seed), device=device)
        adversary.apgd.n_restarts = self.config.n_restarts
        for budget in ("n_iter", "eot_iter"):
            value = getattr(self.config, budget)
            if value is not None:
                setattr(adversary.apgd, budget, value)
        return adversary


ATTACKS.register(APGDCEEval.name)(APGDCEEval)
