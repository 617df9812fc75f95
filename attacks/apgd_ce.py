"""APGD-CE alone (Croce & Hein 2020, the first attack of AutoAttack): the attack of COUP's Sec. 5.3.3 / Fig. 2b
and of its adversarially trained classifiers in Sec. 5.4.1, run through pyautoattack so its sanity checks run too."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import nn

from attacks.autoattack import CHECKS_RUN, AutoAttackEval
from attacks.threat import ThreatConfig
from utils.compat import autoattack_class
from utils.config import require

APGD_CE = "apgd-ce"
# APGD's attributes set from the config (AutoAttack's 'custom' version would otherwise keep 5 restarts)
APGD_FIELDS = ("n_iter", "n_restarts", "eot_iter")


@dataclass(frozen=True)
class ApgdCeConfig(ThreatConfig):
    """APGD on the cross-entropy loss: norm, eps, iterations, restarts and EOT samples per gradient."""

    n_iter: int = 100
    n_restarts: int = 1
    eot_iter: int = 1  # gradient samples per step; 20 (AutoAttack 'rand') for stochastic defenses
    batch_size: Optional[int] = None  # AutoAttack's internal batch size; None: the whole input at once

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in APGD_FIELDS:
            require(getattr(self, name) >= 1, f"attack.{name} must be >= 1, got {getattr(self, name)}")
        require(self.batch_size is None or self.batch_size >= 1,
                f"attack.batch_size must be >= 1, got {self.batch_size}")

    @property
    def eot_samples(self) -> int:
        """Gradient samples per APGD step (eot_iter, AutoAttack's name)."""
        return self.eot_iter


class ApgdCeEval(AutoAttackEval):
    """AutoAttack restricted to APGD-CE (its 'custom' version), seeded; scores as AutoAttackEval does."""

    name = "apgd_ce"
    config_class: type = ApgdCeConfig

    @property
    def checks_run(self) -> tuple[str, ...]:
        """The 'standard' version's checks: run_standard_evaluation runs them for every version but 'rand'."""
        return CHECKS_RUN["standard"]

    def adversary(self, model: nn.Module, seed: int, device: torch.device) -> Any:
        """pyautoattack.AutoAttack running only 'apgd-ce' with this config's eps, norm, seed and budgets."""
        adversary = autoattack_class()(model, norm=self.config.norm, eps=self.config.radius, version="custom",
                                       attacks=[APGD_CE], seed=int(seed), device=device)
        for field in APGD_FIELDS:
            setattr(adversary.apgd, field, getattr(self.config, field))
        return adversary

