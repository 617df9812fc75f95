"""Classifier configs, the classifier registry, and checkpoint loading; every classifier maps [0, 1] images to logits."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

import torch
from torch import nn

from utils.config import require
from utils.paths import find_file, resolve_path  # noqa: F401  (resolve_path: re-exported)
from utils.registry import Lazy, Registry

CLASSIFIERS: Registry[nn.Module] = Registry("classifier", {
    "cifar10-standard-wrn-28-10": Lazy("classifiers.zoo", "standard_wrn_28_10"),
    "cifar10-wrn-70-16-dropout": Lazy("classifiers.zoo", "wrn_70_16_dropout"),
    "fmnist-wrn-16-2": Lazy("classifiers.zoo", "fmnist_wrn_16_2_classifier"),
    "tiny-wrn": Lazy("classifiers.zoo", "tiny_wrn"),
    "cohen-cifar10-resnet110": Lazy("classifiers.cohen", "cohen_cifar10_resnet110"),
    "cohen-imagenet-resnet50": Lazy("classifiers.cohen", "cohen_imagenet_resnet50"),
    "timm-beit": Lazy("classifiers.cohen", "timm_beit_classifier"),
    "imagenet-resnet50": Lazy("classifiers.cohen", "imagenet_resnet50"),
    "cifar100-wrn-28-10": Lazy("classifiers.zoo", "cifar100_wrn_28_10"),
    "robustbench": Lazy("classifiers.robustbench_zoo", "robustbench_classifier"),
    "celebahq__Eyeglasses": Lazy("classifiers.attribute", "celebahq_eyeglasses"),
    "celebahq__Smiling": Lazy("classifiers.attribute", "celebahq_smiling"),
})


@dataclass(frozen=True)
class ClassifierConfig:
    """Which classifier to build and where its weights live (relative paths resolve against base_dir)."""

    name: str
    checkpoint: Optional[str] = None  # weights file; None means the model's default path under pretrained/
    model_dir: str = "pretrained"  # RobustBench model directory: <model_dir>/<dataset>/<threat>/<model>.pt
    model: Optional[str] = None  # 'robustbench' only: the zoo name, e.g. Wang2023Better_WRN-28-10
    dataset: Optional[Literal["cifar10", "cifar100", "imagenet"]] = None  # 'robustbench' only: the zoo's dataset
    threat_model: Optional[Literal["Linf", "L2", "corruptions"]] = None  # 'robustbench' only: its threat model
    num_classes: Optional[int] = None  # None: the model's own (checked against it when given)
    in_channels: Optional[int] = None  # None: the model's own (checked against it when given)
    seed: int = 0  # initialisation seed of randomly initialised classifiers (tiny-wrn without checkpoint)

    def __post_init__(self) -> None:
        require(self.num_classes is None or self.num_classes >= 2,
                f"classifier.num_classes must be >= 2, got {self.num_classes}")
        require(self.in_channels is None or self.in_channels >= 1,
                f"classifier.in_channels must be >= 1, got {self.in_channels}")


def find_weights(path: str | Path, base_dir: Path, source: str) -> Path:
    """The weights file `path` by the config path rule (utils.paths); one-line error naming every place and `source`."""
    return find_file(path, base_dir, "classifier weights", source)


def require_shape(config: ClassifierConfig, in_channels: int, num_classes: int) -> None:
    """Fail unless the config's in_channels / num_classes (when given) match a fixed pretrained architecture."""
    require(config.in_channels in (None, in_channels) and config.num_classes in (None, num_classes),
            f"classifier '{config.name}' takes {in_channels} channels and has {num_classes} classes; "
            f"the config says in_channels={config.in_channels}, num_classes={config.num_classes}")


def require_file(path: Path, source: str) -> Path:
    """Return path if it is a file, else raise a one-line FileNotFoundError naming it and its source."""
    if not path.is_file():
        raise FileNotFoundError(f"classifier weights not found: {path}; {source}")
    return path


def load_state_dict(path: Path, strip_prefix: str = "") -> dict[str, torch.Tensor]:
    """A state_dict from a plain state_dict file or {'state_dict': ...}, with `strip_prefix` removed from keys."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state_dict (or {{'state_dict': ...}}), got {type(state).__name__}")
    cut = len(strip_prefix)
    return {key[cut:] if strip_prefix and key.startswith(strip_prefix) else key: value
            for key, value in state.items()}


def freeze(model: nn.Module) -> nn.Module:
    """Eval mode with parameters frozen (attacks still get input gradients)."""
    model.eval()
    model.requires_grad_(False)
    return model


def build_classifier(config: ClassifierConfig, base_dir: Path) -> nn.Module:
    """The classifier named in config, frozen in eval mode: (B, C, H, W) in [0, 1] -> logits (B, num_classes)."""
    return freeze(CLASSIFIERS.build(config.name, config, Path(base_dir)))
