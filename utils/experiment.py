"""An experiment: the YAML file read into typed, validated sections, and the defended model built from it."""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional, get_args

import yaml
from torch import nn

from attacks.registry import attack_config
from classifiers import ClassifierConfig, build_classifier
from runners.backbones import BackboneConfig, build_backbone, parse_backbone_model
from runners.defended import DefendedClassifier, PurifierContext, build_purifier, parse_purifier_config
from utils.config import ConfigError, from_dict, read_yaml, require, to_dict
from utils.data import DataConfig
import utils.imagenet  # noqa: F401  (registers the 'imagenet' datasets)


@dataclass(frozen=True)
class EvalConfig:
    """YAML `eval:`: the attack seed, batch size and where results go (relative to the config file)."""

    seed: int = 121
    adv_batch_size: int = 64
    output_dir: str = "results"
    evaluate_classifier: bool = False
    save_examples: int = 0  # keep the first K images of batch 0 (clean, adversarial, purified) in examples.pt

    def __post_init__(self) -> None:
        require(self.adv_batch_size >= 1, f"eval.adv_batch_size must be >= 1, got {self.adv_batch_size}")
        require(self.save_examples >= 0, f"eval.save_examples must be >= 0, got {self.save_examples}")


@dataclass(frozen=True)
class ExperimentFile:
    """The YAML layout; `purifier` and `attacks` are read by their registries into typed configs."""

    data: DataConfig
    classifier: ClassifierConfig
    purifier: dict[str, Any]
    attacks: tuple[dict[str, Any], ...] = ()
    backbone: Optional[BackboneConfig] = None
    guidance_classifier: Optional[ClassifierConfig] = None
    eval: EvalConfig = EvalConfig()


AttackTarget = Literal["defended", "classifier"]


@dataclass(frozen=True)
class AttackSpec:
    """One attack: its registry name, typed config, and the model it is crafted on.

    target 'defended' is the adaptive setting; 'classifier' crafts x_adv on the bare classifier and
    scores it on the defended model (the non-adaptive, transfer setting).
    """

    name: str
    config: Any
    target: AttackTarget = "defended"


@dataclass(frozen=True)
class Experiment:
    """The resolved experiment: typed sections and the folder that relative paths resolve against."""

    file: ExperimentFile
    purifier: Any
    attacks: tuple[AttackSpec, ...]
    base_dir: Path

    def to_dict(self) -> dict[str, Any]:
        """The resolved config as plain data (saved with every result)."""
        out = to_dict(self.file)
        out["purifier"] = to_dict(self.purifier)
        out["attacks"] = [{"name": a.name, "target": a.target, **to_dict(a.config)} for a in self.attacks]
        return out


def set_override(raw: Any, dotted: str, value: Any) -> None:
    """Set raw['a']['b'] = value for 'a.b'; 'attacks.*.eps' sets it in every attack entry, 'attacks.0.eps' in one."""
    head, _, rest = dotted.partition(".")
    if head == "*":
        require(isinstance(raw, list) and bool(rest), f"override {dotted}: '*' must stand for a list's entries")
        for entry in raw:
            set_override(entry, rest, value)
        return
    if isinstance(raw, list):
        require(head.isdigit() and int(head) < len(raw) and bool(rest),
                f"override {dotted}: '{head}' must be an entry number below {len(raw)} followed by a key")
        set_override(raw[int(head)], rest, value)
        return
    require(isinstance(raw, dict), f"override {dotted}: '{head}' is not inside a section")
    if rest:
        set_override(raw.setdefault(head, {}), rest, value)
    else:
        raw[head] = value


def parse_experiment(raw: dict[str, Any], base_dir: Path, where: str = "config") -> Experiment:
    """Validate a raw mapping into an Experiment (every section typed, unknown keys rejected)."""
    file = from_dict(ExperimentFile, raw, where)
    if file.backbone is not None:
        parse_backbone_model(file.backbone)
    purifier = parse_purifier_config(file.purifier)
    attacks = []
    for i, entry in enumerate(file.attacks):
        require(isinstance(entry, dict) and "name" in entry, f"{where}.attacks[{i}]: needs a 'name'")
        target = entry.get("target", "defended")
        require(target in get_args(AttackTarget),
                f"{where}.attacks[{i}].target: {target!r} is not one of {list(get_args(AttackTarget))}")
        params = {k: v for k, v in entry.items() if k not in ("name", "target")}
        attacks.append(AttackSpec(entry["name"], attack_config(entry["name"], params), target))
    return Experiment(file, purifier, tuple(attacks), base_dir)


def load_experiment(path: str | Path, overrides: Optional[dict[str, Any]] = None) -> Experiment:
    """Read the YAML at `path`, apply dotted overrides, validate; paths resolve against its folder."""
    path = Path(path)
    raw = copy.deepcopy(read_yaml(path))
    for dotted, value in (overrides or {}).items():
        set_override(raw, dotted, value)
    return parse_experiment(raw, path.resolve().parent, str(path))


def build_models(experiment: Experiment) -> tuple[DefendedClassifier, nn.Module]:
    """(defended model, bare classifier), networks frozen and in eval mode."""
    file, base = experiment.file, experiment.base_dir
    classifier = build_classifier(file.classifier, base)
    guidance = build_classifier(file.guidance_classifier, base) if file.guidance_classifier else None

    def backbone():
        require(file.backbone is not None, f"purifier '{experiment.purifier.name}' needs a backbone section")
        return build_backbone(file.backbone, base)

    purifier = build_purifier(experiment.purifier, PurifierContext(backbone, classifier, guidance, base))
    return DefendedClassifier(purifier, classifier).eval(), classifier


def dump_yaml(experiment: Experiment) -> str:
    """The resolved config as YAML (what --dry-run prints)."""
    return yaml.safe_dump(experiment.to_dict(), sort_keys=False)
