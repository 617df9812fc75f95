"""The attack registry: attack classes keyed by the names used in YAML, each built from its frozen config."""
from __future__ import annotations

from typing import Any, Mapping, Optional, Protocol

import torch
from torch import nn

from attacks.common import AttackOutput, IterationCallback
from utils.config import from_dict
from utils.images import check_images
from utils.registry import Lazy, Registry


class Attack(Protocol):
    """An attack: run(model, x, y, indices, seed) -> AttackOutput, all randomness from `seed`."""

    name: str
    config_class: type
    identity_backward: bool  # BPDA: the attack's backward replaces the purifier's by the identity

    def check_model(self, model: nn.Module) -> None:
        """Raise a one-line ValueError if this attack cannot attack `model` (called before any work)."""
        ...

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, indices: torch.Tensor,
            seed: int, callback: Optional[IterationCallback] = None) -> AttackOutput:
        """Adversarial examples for x (B, C, H, W) in [0, 1] and their per-image scores; callback(i, n) per step."""
        ...


ATTACKS: Registry[Attack] = Registry("attack", {
    "pgd_eot": Lazy("attacks.pgd", "PGDEOT"),
    "bpda_eot": Lazy("attacks.pgd", "BPDAEOT"),
    "autoattack": Lazy("attacks.autoattack", "AutoAttackEval"),
    "pgd_aid_joint": Lazy("attacks.aid_joint", "PGDAIDJoint"),
    "apgd_ce": Lazy("attacks.apgd_ce", "ApgdCeEval"),
    "pgd_eot_diffpure": Lazy("attacks.diffpure_protocol", "DiffPureProtocolPGD"),
    "bpda_eot_diffpure": Lazy("attacks.diffpure_protocol", "DiffPureProtocolBPDA"),
    "apgd_eot": Lazy("attacks.apgd", "ApgdEot"),
    "selective_eot": Lazy("attacks.apgd", "SelectiveEot"),
    "diffattack": Lazy("attacks.diffattack", "DiffAttack"),
    "cascade": Lazy("attacks.cascade", "Cascade"),
})


def attack_config(name: str, params: Mapping[str, Any] | None = None) -> Any:
    """The validated frozen config of attack `name` from a YAML mapping (unknown keys fail)."""
    return from_dict(ATTACKS.get(name).config_class, {} if params is None else params, f"attack ({name})")


def build_attack(name: str, params: Mapping[str, Any] | Any = None) -> Attack:
    """The attack registered under `name`, configured by a mapping or its config dataclass."""
    return ATTACKS.build(name, params)


def check_attack_inputs(x: torch.Tensor, y: torch.Tensor, indices: torch.Tensor) -> None:
    """Raise a one-line ValueError unless x is a [0, 1] image batch and y, indices are (B,) integer tensors."""
    check_images(x)
    for name, value in (("y", y), ("indices", indices)):
        if not isinstance(value, torch.Tensor) or value.dtype != torch.int64 or value.shape != x.shape[:1]:
            raise ValueError(f"{name} must be an int64 tensor of shape ({x.shape[0]},), got "
                             f"{getattr(value, 'dtype', type(value).__name__)} {tuple(getattr(value, 'shape', ()))}")
