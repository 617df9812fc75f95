"""An experiment: the YAML file read into typed, validated sections, and the defended model built from it."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional, get_args

import torch
import yaml
from torch import nn

from attacks.registry import attack_config
from classifiers import ClassifierConfig, build_classifier
from runners.backbones import BackboneConfig, build_backbone, parse_backbone_model
from runners.defended import (DefendedClassifier, PurifierContext, build_purifier, needs_backbone,
                              parse_purifier_config)
from utils.cli import apply_overrides, attempt, raise_problems
from utils.config import from_dict, read_yaml, require, to_dict
from utils.data import DataConfig, ImageSet, load_images
from utils.devices import check_device_spec
from utils.precision import Precision


@dataclass(frozen=True)
class EvalConfig:
    """YAML `eval:`: the attack seed, batch size and where results go (relative to the config file)."""

    seed: int = 121
    adv_batch_size: int = 64
    output_dir: str = "results"
    evaluate_classifier: bool = False
    save_examples: int = 0  # keep the first K images of batch 0 (clean, adversarial, purified) in examples.pt
    precision: Precision = "float32"  # utils/precision.py: 'float32' (TF32, autocast off) or 'tf32' (TF32 allowed)
    device: str = "auto"  # auto (the GPU when there is one) | cpu | cuda | cuda:N (utils/devices.py)
    max_batch: Optional[int] = None  # rows (images x EOT draws) per forward of the defended model; None: all at once
    deterministic: bool = False  # torch's deterministic algorithms and cuDNN (GPU reruns give identical records)

    def __post_init__(self) -> None:
        require(self.adv_batch_size >= 1, f"eval.adv_batch_size must be >= 1, got {self.adv_batch_size}")
        require(self.save_examples >= 0, f"eval.save_examples must be >= 0, got {self.save_examples}")
        require(self.max_batch is None or self.max_batch >= 1, f"eval.max_batch must be >= 1, got {self.max_batch}")
        check_device_spec(self.device)


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


def parse_experiment(raw: dict[str, Any], base_dir: Path, where: str = "config") -> Experiment:
    """Validate a raw mapping into an Experiment (every section typed, unknown keys rejected)."""
    file = from_dict(ExperimentFile, raw, where)
    if file.backbone is not None:
        parse_backbone_model(file.backbone)
    purifier = parse_purifier_config(file.purifier)
    attacks = tuple(parse_attack(entry, f"{where}.attacks[{i}]") for i, entry in enumerate(file.attacks))
    return Experiment(file, purifier, attacks, base_dir)


def parse_attack(entry: Any, where: str) -> AttackSpec:
    """One YAML attack entry {name, target (default 'defended'), the attack's own keys} validated."""
    require(isinstance(entry, dict) and "name" in entry, f"{where}: needs a 'name'")
    target = entry.get("target", "defended")
    require(target in get_args(AttackTarget), f"{where}.target: {target!r} is not one of {list(get_args(AttackTarget))}")
    params = {k: v for k, v in entry.items() if k not in ("name", "target")}
    return AttackSpec(entry["name"], attack_config(entry["name"], params), target)


def load_experiment(path: str | Path, overrides: Optional[dict[str, Any]] = None) -> Experiment:
    """Read the YAML at `path`, apply dotted overrides, validate; paths resolve against its folder."""
    path = Path(path)
    raw = apply_overrides(read_yaml(path), overrides or {})
    return parse_experiment(raw, path.resolve().parent, str(path))


def collect_models(experiment: Experiment, problems: list[str]) -> Optional[tuple[DefendedClassifier, nn.Module]]:
    """(defended model, bare classifier) frozen in eval mode, or None; every failing part is added to problems."""
    file, base = experiment.file, experiment.base_dir
    classifier = attempt("classifier", lambda: build_classifier(file.classifier, base), problems)
    guidance = (attempt("guidance_classifier", lambda: build_classifier(file.guidance_classifier, base), problems)
                if file.guidance_classifier else None)
    backbone = None
    if needs_backbone(experiment.purifier):
        if file.backbone is None:
            problems.append(f"purifier '{experiment.purifier.name}' needs a backbone section")
        else:
            backbone = attempt("backbone", lambda: build_backbone(file.backbone, base), problems)
    if classifier is None or (needs_backbone(experiment.purifier) and backbone is None):
        return None
    context = PurifierContext(lambda: backbone, classifier, guidance, base)
    purifier = attempt("purifier", lambda: build_purifier(experiment.purifier, context), problems)
    return None if purifier is None else (DefendedClassifier(purifier, classifier).eval(), classifier)


def build_models(experiment: Experiment) -> tuple[DefendedClassifier, nn.Module]:
    """(defended model, bare classifier), networks frozen and in eval mode; all missing parts named at once."""
    problems: list[str] = []
    models = collect_models(experiment, problems)
    raise_problems(problems)
    return models


@torch.no_grad()
def check_labels(classifier: nn.Module, images: ImageSet) -> None:
    """Raise ConfigError unless every label lies in [0, number of classes of classifier) (one forward of x[:1])."""
    num_classes = int(classifier(images.x[:1]).shape[-1])
    bad = sorted({int(y) for y in images.y.tolist() if not 0 <= int(y) < num_classes})
    require(not bad, f"data labels {bad[:5]} lie outside the classifier's {num_classes} classes; "
            "check that data and classifier belong to the same dataset")


def load_prerequisites(experiment: Experiment) -> tuple[ImageSet, DefendedClassifier, nn.Module]:
    """(images, defended model, bare classifier), all checked before any output exists; every problem named at once."""
    problems: list[str] = []
    images = attempt("data", lambda: load_images(experiment.file.data, experiment.base_dir), problems)
    models = collect_models(experiment, problems)
    if images is not None and models is not None:
        attempt("labels", lambda: check_labels(models[1], images), problems)
    raise_problems(problems)
    return images, *models


def dump_yaml(experiment: Experiment) -> str:
    """The resolved config as YAML (what --dry-run prints)."""
    return yaml.safe_dump(experiment.to_dict(), sort_keys=False)
