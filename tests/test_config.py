"""YAML into typed dataclasses: unknown keys, wrong types and bad values fail with clear messages."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

import pytest

from utils.config import ConfigError, from_dict, read_yaml, require, to_dict
from utils.registry import Registry


@dataclass(frozen=True)
class Inner:
    steps: int = 3
    mode: Literal["a", "b"] = "a"


@dataclass(frozen=True)
class Outer:
    rate: float
    sizes: tuple[int, ...] = (1, 2)
    inner: Inner = Inner()
    path: Optional[str] = None

    def __post_init__(self) -> None:
        require(self.rate > 0, f"rate must be > 0, got {self.rate}")


def test_valid_mapping_builds_typed_dataclass():
    cfg = from_dict(Outer, {"rate": 1, "sizes": [4, 5], "inner": {"mode": "b"}})
    assert cfg == Outer(rate=1.0, sizes=(4, 5), inner=Inner(mode="b"))
    assert isinstance(cfg.rate, float)
    assert to_dict(cfg) == {"rate": 1.0, "sizes": [4, 5], "inner": {"steps": 3, "mode": "b"}, "path": None}


@pytest.mark.parametrize("data,match", [
    ({"rate": 1, "typo": 2}, r"unknown key\(s\) \['typo'\]"),
    ({"rate": "fast"}, "config.rate: expected a number"),
    ({"rate": True}, "expected a number"),
    ({"rate": 1, "inner": {"steps": 1.5}}, "config.inner.steps: expected an integer"),
    ({"rate": 1, "inner": {"mode": "c"}}, r"not one of \['a', 'b'\]"),
    ({"rate": -1}, "rate must be > 0"),
    ({}, r"missing required key\(s\) \['rate'\]"),
])
def test_invalid_mappings_fail_clearly(data, match):
    with pytest.raises(ConfigError, match=match):
        from_dict(Outer, data)


def test_read_yaml_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        read_yaml(tmp_path / "missing.yml")
    bad = tmp_path / "list.yml"
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        read_yaml(bad)


def test_registry_lists_valid_names_on_unknown():
    reg: Registry[int] = Registry("thing")
    reg.register("one")(lambda: 1)
    reg.register("two")(lambda: 2)
    assert reg.build("two") == 2 and reg.names() == ["one", "two"]
    with pytest.raises(KeyError, match="unknown thing 'three'; valid names: one, two"):
        reg.get("three")
    with pytest.raises(ValueError, match="twice"):
        reg.register("one")(lambda: 3)
