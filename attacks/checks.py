"""AutoAttack's own sanity checks (randomness, probability outputs, dynamic defenses, zero gradients), recorded as flags.

pyautoattack's check_* functions report by logger.warning on the 'auto-attack' logger (the one
AutoAttack uses internally); a handler on that logger records each warning under the name of the
check function that emitted it, so flags are captured both from our own calls and from inside
AutoAttack.run_standard_evaluation.
"""
from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Iterator, Optional

import torch
from torch import nn

from utils.compat import autoattack_checks, reset_dynamic_check

AUTOATTACK_LOGGER = "auto-attack"
FlagDict = dict[str, Optional[str]]


class _FlagRecorder(logging.Handler):
    """Store warnings of check_* functions as {function name: message}."""

    def __init__(self, flags: FlagDict) -> None:
        super().__init__(level=logging.WARNING)
        self.flags = flags

    def emit(self, record: logging.LogRecord) -> None:
        if record.funcName.startswith("check_"):
            self.flags[record.funcName] = record.getMessage()


@contextmanager
def recorded_flags(quiet: bool = False) -> Iterator[FlagDict]:
    """Within the block, AutoAttack's check warnings are collected into the yielded dict (and only there if quiet)."""
    logger = logging.getLogger(AUTOATTACK_LOGGER)
    flags: FlagDict = {}
    handler = _FlagRecorder(flags)
    old_level, old_propagate = logger.level, logger.propagate
    if logger.getEffectiveLevel() > logging.WARNING:
        logger.setLevel(logging.WARNING)
    logger.addHandler(handler)
    logger.propagate = old_propagate and not quiet
    try:
        yield flags
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
        logger.propagate = old_propagate


def run_sanity_checks(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> FlagDict:
    """Run check_randomized, check_range_output and check_dynamic once on (x, y).

    Returns {check name: warning message, or None if the check passed}; nothing is logged (the caller reports).
    """
    checks = autoattack_checks()
    logger = logging.getLogger(AUTOATTACK_LOGGER)
    reset_dynamic_check()
    with recorded_flags(quiet=True) as flags:
        checks.check_randomized(model, x, y, bs=x.shape[0], logger=logger)
        checks.check_range_output(model, x, logger=logger)
        checks.check_dynamic(model, x, False, logger=logger)
    names = ("check_randomized", "check_range_output", "check_dynamic")
    return {name: flags.get(name) for name in names}


MODEL_BACKWARD = "the attack backpropagates through the defended model as built (the summary states its gradient path)"
IDENTITY_BACKWARD = "BPDA replaces the purifier's backward by the identity on purpose"


def explain_expected_flags(flags: FlagDict, randomized: str, identity_backward: bool = False) -> FlagDict:
    """AutoAttack's randomized / dynamic warnings, which an EOT attack through a solver expects, replaced by
    'expected: ...' and what the attack does about them (`randomized`; the backward it takes, the model's or the
    identity's for BPDA); other flags kept as they are."""
    dynamic = IDENTITY_BACKWARD if identity_backward else MODEL_BACKWARD
    notes = {"check_randomized": f"expected: the defense is randomized; {randomized}",
             "check_dynamic": f"expected: the forward pass runs an iterative solver; {dynamic}"}
    return {check: notes.get(check, message) if message else message for check, message in flags.items()}


def check_zero_gradients(grad: torch.Tensor) -> Optional[str]:
    """AutoAttack's zero-gradient check on grad (B, ...): the warning message, or None if every row has a gradient."""
    with recorded_flags(quiet=True) as flags:
        autoattack_checks().check_zero_gradients(grad, logger=logging.getLogger(AUTOATTACK_LOGGER))
    return flags.get("check_zero_gradients")

