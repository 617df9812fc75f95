"""A cascade of attacks (as AutoAttack runs its own): each attack runs only on the images every previous one failed
to break, and an image counts as robust only if it survived all of them (the per-image worst case)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Mapping, Optional

import torch
from torch import nn

from attacks.common import AttackOutput, IterationCallback
from attacks.registry import Attack, attack_config, build_attack, check_attack_inputs
from utils.config import from_dict, require
from utils.seeds import ATTACK_SEED_BITS, SeedStage, derive_seeds


@dataclass(frozen=True)
class CascadeConfig:
    """YAML `{name: cascade, attacks: [{name: pgd_eot, ...}, {name: apgd_eot, loss: dlr, ...}]}`."""

    attacks: tuple[dict[str, Any], ...] = ()
    survivor_rule: Literal["worst", "vote", "single"] = "worst"  # which score decides that an image survived
    eval_samples: int = 10  # used when the cascade's x_adv is re-scored on another model (transfer setting)

    def __post_init__(self) -> None:
        require(len(self.attacks) >= 1, "attack.attacks: a cascade needs at least one attack")
        for i, entry in enumerate(self.attacks):
            require(isinstance(entry, dict) and "name" in entry, f"attack.attacks[{i}]: needs a 'name'")
            require(entry["name"] != "cascade", f"attack.attacks[{i}]: a cascade cannot contain a cascade")
        stage_configs(self)


def stage_configs(config: CascadeConfig) -> list[tuple[str, str, Any]]:
    """(stage key, attack name, validated attack config) of each stage, in order."""
    return [(key, entry["name"], attack_config(entry["name"], {k: v for k, v in entry.items() if k != "name"}))
            for key, entry in zip(stage_keys(config), config.attacks)]


def stage_keys(config: CascadeConfig) -> list[str]:
    """A unique key per stage: its attack name, plus its loss when it has one, repeats suffixed _2, _3, ..."""
    keys, seen = [], {}
    for entry in config.attacks:
        base = entry["name"] + (f"_{entry['loss']}" if "loss" in entry else "")
        seen[base] = seen.get(base, 0) + 1
        keys.append(base if seen[base] == 1 else f"{base}_{seen[base]}")
    return keys


def _scatter_history(history: dict[str, torch.Tensor], rows: torch.Tensor, batch: int) -> dict[str, torch.Tensor]:
    """Per-image traces of the attacked rows placed into (batch, T) float tensors, NaN for images not attacked."""
    out = {}
    for name, trace in history.items():
        full = torch.full((batch, trace.shape[1]), float("nan"))
        full[rows.cpu()] = trace.detach().float().cpu()
        out[name] = full
    return out


class Cascade:
    """Run the configured attacks in order on the survivors; x_adv of an image comes from the stage that broke it."""

    name = "cascade"
    identity_backward = False  # each stage says for itself (evaluation.summary.attack_gradient)
    config_class: type = CascadeConfig

    def __init__(self, config: Mapping[str, Any] | CascadeConfig | None = None) -> None:
        self.config = from_dict(self.config_class, {} if config is None else config, f"attack ({self.name})")
        self.stages: list[tuple[str, Attack]] = [(key, build_attack(name, stage_config))
                                                 for key, name, stage_config in stage_configs(self.config)]

    def check_model(self, model: nn.Module) -> None:
        """Every stage's check, so a stage that cannot run fails before the earlier ones spend any time."""
        for _, attack in self.stages:
            attack.check_model(model)

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, indices: torch.Tensor,
            seed: int, callback: Optional[IterationCallback] = None) -> AttackOutput:
        """Attack x (B, C, H, W) in [0, 1]; correct[rule] (B,) is the AND over the stages each image went through, for
        the survivor rule only: an image leaves the cascade once that rule counts it broken, so the other rules'
        AND would cover only some stages and is not reported.

        callback(i, n) sees stage s's iteration i of n as iteration s * n + i of len(stages) * n. A fixed-noise
        (deterministic) stage gets the cascade's own seed, so every such stage attacks and scores the same draw.
        """
        check_attack_inputs(x, y, indices)
        self.check_model(model)
        batch, rule = x.shape[0], self.config.survivor_rule
        x_adv = x.clone()
        predictions = {rule: y.clone()}
        correct = {rule: torch.ones(batch, dtype=torch.bool, device=x.device)}
        alive = torch.ones(batch, dtype=torch.bool, device=x.device)
        extra: list[dict[str, Any]] = [{"broken_by": None, "stages_run": []} for _ in range(batch)]
        flags, history = {}, {}
        for i, (key, attack) in enumerate(self.stages):
            rows = alive.nonzero().squeeze(1)
            if rows.numel() == 0:
                break
            stage_seed = seed if getattr(attack.config, "noise", "random") == "fixed" else \
                int(derive_seeds(seed, SeedStage.CASCADE, i)) % (1 << ATTACK_SEED_BITS)
            out = attack.run(model, x[rows], y[rows], indices[rows], stage_seed,
                             stage_callback(callback, i, len(self.stages)))
            self._merge(out, rows, x_adv, predictions, correct)
            for b in rows.tolist():
                extra[b]["stages_run"].append(key)
                if not bool(correct[rule][b]) and extra[b]["broken_by"] is None:
                    extra[b]["broken_by"] = key
            flags.update({f"{key}.{name}": value for name, value in out.flags.items()})
            history.update({f"{key}.{name}": trace for name, trace in
                            _scatter_history(out.history, rows, batch).items()})
            alive = alive & correct[rule]
        return AttackOutput(x_adv, predictions, correct, flags, history, extra)

    @staticmethod
    def _merge(out: AttackOutput, rows: torch.Tensor, x_adv: torch.Tensor, predictions: dict[str, torch.Tensor],
               correct: dict[str, torch.Tensor]) -> None:
        """Fold one stage's output on `rows` into the running worst case of the survivor rule (in place); x_adv of an
        image is that of the last stage it went through."""
        for r in correct:
            newly = correct[r][rows] & ~out.correct[r]
            predictions[r][rows[newly]] = out.predictions[r][newly]
            correct[r][rows] = correct[r][rows] & out.correct[r]
        x_adv[rows] = out.x_adv


def stage_callback(callback: Optional[IterationCallback], stage: int, stages: int) -> Optional[IterationCallback]:
    """Stage `stage` of `stages`' progress (i, n) reported as the cascade's (stage * n + i, stages * n)."""
    if callback is None:
        return None
    return lambda i, n: callback(stage * n + i, stages * n)


__all__ = ["Cascade", "CascadeConfig", "stage_callback", "stage_configs", "stage_keys"]
