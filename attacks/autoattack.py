"""AutoAttack (pyautoattack): 'standard' (apgd-ce, apgd-t, fab-t, square) or 'rand' (apgd-ce, apgd-dlr, EOT 20)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Mapping, Optional

import torch
from torch import nn

from attacks.checks import recorded_flags
from attacks.common import AttackOutput, IterationCallback, score_samples
from attacks.registry import check_attack_inputs
from attacks.threat import ThreatConfig
from utils.compat import autoattack_class, reset_dynamic_check
from utils.config import from_dict, require

# the checks run_standard_evaluation runs for each version (check_randomized is skipped for 'rand')
CHECKS_RUN = {
    "standard": ("check_randomized", "check_range_output", "check_dynamic", "check_n_classes",
                 "check_zero_gradients", "check_square_sr"),
    "rand": ("check_range_output", "check_dynamic", "check_n_classes", "check_zero_gradients", "check_square_sr"),
}
# optional budget fields (None: the version's own value) -> the AutoAttack sub-attacks whose attribute they set
BUDGET_TARGETS = {"n_iter": ("apgd", "apgd_targeted", "fab"), "n_queries": ("square",), "eot_iter": ("apgd",)}
RAND_EOT = 20  # the EOT samples of APGD in AutoAttack's 'rand' version


@dataclass(frozen=True)
class AutoAttackConfig(ThreatConfig):
    """AutoAttack with a fixed version, norm and eps; always seeded, never a custom attack list."""

    version: Literal["standard", "rand"] = "standard"
    batch_size: Optional[int] = None  # AutoAttack's internal batch size; None: the whole input at once
    n_iter: Optional[int] = None  # APGD / APGD-T / FAB iterations (None: 100); cut only for tests and smoke runs
    n_queries: Optional[int] = None  # Square queries (None: 5000)
    eot_iter: Optional[int] = None  # APGD EOT samples (None: 1, or 20 for 'rand')

    def __post_init__(self) -> None:
        super().__post_init__()
        for budget in BUDGET_TARGETS:
            value = getattr(self, budget)
            require(value is None or value >= 1, f"attack.{budget} must be >= 1 or null, got {value}")
        require(self.batch_size is None or self.batch_size >= 1, f"attack.batch_size must be >= 1, got {self.batch_size}")

    @property
    def eot_samples(self) -> int:
        """Gradient samples per APGD step: eot_iter, else the version's own (1, or 20 for 'rand')."""
        return self.eot_iter or (RAND_EOT if self.version == "rand" else 1)


class AutoAttackEval:
    """Runs AutoAttack's run_standard_evaluation (with its sanity checks) and rescores x_adv three ways."""

    name = "autoattack"
    identity_backward = False
    config_class: type = AutoAttackConfig

    def __init__(self, config: Mapping[str, Any] | AutoAttackConfig | None = None) -> None:
        self.config = from_dict(self.config_class, {} if config is None else config, f"attack ({self.name})")

    def check_model(self, model: nn.Module) -> None:
        """Nothing to check: this attack takes any logits model."""

    @property
    def checks_run(self) -> tuple[str, ...]:
        """The sanity checks run_standard_evaluation runs for this configuration (recorded even when passed)."""
        return CHECKS_RUN[self.config.version]

    def adversary(self, model: nn.Module, seed: int, device: torch.device) -> Any:
        """pyautoattack.AutoAttack with an explicit seed and version (no custom attack list), budgets as configured."""
        adversary = autoattack_class()(model, norm=self.config.norm, eps=self.config.radius,
                                       version=self.config.version, seed=int(seed), device=device)
        for budget, parts in BUDGET_TARGETS.items():
            value = getattr(self.config, budget)
            for part in parts if value is not None else ():
                setattr(getattr(adversary, part), budget, value)
        return adversary

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, indices: torch.Tensor,
            seed: int, callback: Optional[IterationCallback] = None) -> AttackOutput:
        """Attack x (B, C, H, W) in [0, 1]; scores 'autoattack' (its own) plus single / vote / worst over x_adv.

        AutoAttack runs as one step for `callback` (its internal iterations are not exposed).
        """
        check_attack_inputs(x, y, indices)
        adversary = self.adversary(model, seed, x.device)
        batch_size = self.config.batch_size or x.shape[0]
        # AutoAttack reseeds the global torch RNG; fork it so the caller's state is untouched
        with recorded_flags() as raised, torch.random.fork_rng(devices=[] if x.device.type == "cpu" else [x.device]):
            reset_dynamic_check()
            x_adv, y_adv = adversary.run_standard_evaluation(x, y, batch_size=batch_size)
        if callback is not None:
            callback(1, 1)
        predictions, correct = score_samples(model, x_adv, y, indices, seed, self.config.eval_samples)
        predictions["autoattack"], correct["autoattack"] = y_adv, y_adv == y
        flags = {name: raised.get(name) for name in self.checks_run}
        flags.update(raised)
        return AttackOutput(x_adv.detach(), predictions, correct, flags)

