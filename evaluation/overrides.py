"""Command-line edits of an experiment's raw YAML: the purifier switch, the attack selection, per-attack fields.

Each function returns the dotted overrides (or section) it decides on, so the caller passes everything to
evaluation.experiment.load_experiment and the resolved config says exactly what ran.
"""
from __future__ import annotations

import copy
import dataclasses
import logging
from typing import Any


from attacks.registry import ATTACKS
from runners.defended import PURIFIERS
from runners.purifiers import PRESETS
from utils.config import ConfigError, require

log = logging.getLogger(__name__)


def _config_type(name: Any) -> type:
    """The config dataclass of purifier `name` (unknown names fail with the valid ones)."""
    try:
        return PURIFIERS.get(name).config_type
    except KeyError as err:
        raise ConfigError(err.args[0]) from None


def switch_purifier(section: dict[str, Any], name: str) -> dict[str, Any]:
    """The purifier section for method `name`, starting from `section` (the config's purifier).

    Between methods of one config type (coup, reverse_only, diffpure) every setting is kept except
    guidance_scale when the new method has no guidance (its preset, 0, applies); a method of another
    type (none, aid) starts from its own defaults.
    """
    same_type = isinstance(section, dict) and _config_type(section.get("name")) is _config_type(name)
    unguided = name in PRESETS and not PRESETS[name].guided
    kept = {k: v for k, v in (section.items() if same_type else ())
            if k != "name" and not (unguided and k == "guidance_scale")}
    dropped = sorted(set(section if isinstance(section, dict) else ()) - set(kept) - {"name"})
    if dropped:
        log.info("--purifier %s: dropping the config's purifier setting(s) %s", name, ", ".join(dropped))
    return {"name": name, **copy.deepcopy(kept)}


def select_attacks(entries: list[dict[str, Any]], names: list[str]) -> list[dict[str, Any]]:
    """The config's attack entries named in `names`, in that order; a name the config lacks runs with defaults."""
    selected = []
    for name in names:
        ATTACKS.get(name)
        matching = [copy.deepcopy(e) for e in entries if isinstance(e, dict) and e.get("name") == name]
        if not matching:
            log.info("--attack %s: not in the config, using its default settings", name)
        selected.extend(matching or [{"name": name}])
    return selected


def attack_fields(name: str) -> set[str]:
    """The config fields of attack `name`."""
    return {f.name for f in dataclasses.fields(ATTACKS.get(name).config_class)}


def attack_field_overrides(entries: list[dict[str, Any]], field: str, value: Any, option: str) -> dict[str, Any]:
    """{'attacks.<i>.<field>': value} for every attack entry whose config has `field` (e.g. version: autoattack)."""
    matching = [i for i, entry in enumerate(entries) if field in attack_fields(entry["name"])]
    names = ", ".join(e["name"] for e in entries) or "none"
    require(bool(matching), f"{option}: no attack in the config has a '{field}' setting (attacks: {names})")
    return {f"attacks.{i}.{field}": value for i in matching}
