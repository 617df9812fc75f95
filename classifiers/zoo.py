"""The registered classifiers: lazy constructors keyed by the names used in YAML."""
from __future__ import annotations

from pathlib import Path

from torch import nn

from classifiers.registry import (ClassifierConfig, find_weights, load_state_dict, require_shape, resolve_path)
from classifiers.robustbench_zoo import load_robustbench
from classifiers.wide_resnet import CIFAR10_MEAN, CIFAR10_STD, Normalized, wide_resnet
from utils.config import require

WRN_70_16_DROPOUT_PATH = "pretrained/cifar10/wrn-70-16-dropout/weights.pt"
DEMO_CLASSIFIER_PATH = "pretrained/demo/classifier_wrn16_2.pt"
CIFAR100_WRN_28_10_PATH = "pretrained/cifar100/wrn-28-10/weights.pt"
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
DEMO_TRAIN_COMMAND = "python -m training.train_classifier --config configs/train/classifier_fmnist.yml"

WRN_70_16_SOURCE = ("it is DiffPure's CIFAR-10 WRN-70-16-dropout (NVlabs/DiffPure README, 'Data and pre-trained "
                    "models'); download it and place it at that path or set classifier.checkpoint")
DEMO_SOURCE = f"train it with: {DEMO_TRAIN_COMMAND}"
CIFAR100_WRN_SOURCE = ("get it from the authors of the experiment you reproduce (the COUP release publishes no "
                       "CIFAR-100 classifier) or train one (standard training, CIFAR-100 mean/std normalisation, "
                       "RobustBench's WideResNet layout; training/ trains only the demo models) and save its "
                       "state_dict there or set classifier.checkpoint")


def fmnist_wrn_16_2(seed: int | None = None, num_classes: int = 10) -> nn.Module:
    """The demo WRN-16-2 for Fashion-MNIST padded to 32x32: (B, 1, 32, 32) in [0, 1] -> logits (B, 10)."""
    return wide_resnet(depth=16, widen_factor=2, in_channels=1, num_classes=num_classes, seed=seed)


def standard_wrn_28_10(config: ClassifierConfig, base_dir: Path) -> nn.Module:
    """RobustBench's CIFAR-10 Linf 'Standard' WRN-28-10 (no normalisation inside), loaded offline from model_dir."""
    require(config.checkpoint is None, "cifar10-standard-wrn-28-10 is loaded by RobustBench from "
            "classifier.model_dir (<model_dir>/cifar10/Linf/Standard.pt); set model_dir, not checkpoint")
    require_shape(config, in_channels=3, num_classes=10)
    return load_robustbench("Standard", "cifar10", "Linf", resolve_path(config.model_dir, base_dir))


def normalized_wrn(config: ClassifierConfig, base_dir: Path, default_path: str, source: str, num_classes: int,
                   mean: tuple[float, ...], std: tuple[float, ...], **arch) -> nn.Module:
    """A WideResNet(**arch) read from a state_dict file ('module.' stripped), mean/std normalisation inside."""
    require_shape(config, in_channels=3, num_classes=num_classes)
    path = find_weights(config.checkpoint or default_path, base_dir, source)
    net = wide_resnet(num_classes=num_classes, **arch)
    net.load_state_dict(load_state_dict(path, strip_prefix="module."))
    return Normalized(net, mean, std)


def wrn_70_16_dropout(config: ClassifierConfig, base_dir: Path) -> nn.Module:
    """DiffPure's WRN-70-16 (dropout 0.3) with CIFAR-10 mean/std normalisation inside; 'module.' keys stripped."""
    return normalized_wrn(config, base_dir, WRN_70_16_DROPOUT_PATH, WRN_70_16_SOURCE, 10, CIFAR10_MEAN, CIFAR10_STD,
                          depth=70, widen_factor=16, drop_rate=0.3)


def cifar100_wrn_28_10(config: ClassifierConfig, base_dir: Path) -> nn.Module:
    """A standard CIFAR-100 WRN-28-10 (COUP Sec. 5.2.1), CIFAR-100 mean/std normalisation inside; 'module.' stripped."""
    return normalized_wrn(config, base_dir, CIFAR100_WRN_28_10_PATH, CIFAR100_WRN_SOURCE, 100, CIFAR100_MEAN,
                          CIFAR100_STD, depth=28, widen_factor=10)


def fmnist_wrn_16_2_classifier(config: ClassifierConfig, base_dir: Path) -> nn.Module:
    """The demo Fashion-MNIST WRN-16-2 (1 channel, 32x32), trained by training/train_classifier.py."""
    require_shape(config, in_channels=1, num_classes=10)
    path = find_weights(config.checkpoint or DEMO_CLASSIFIER_PATH, base_dir, DEMO_SOURCE)
    net = fmnist_wrn_16_2()
    net.load_state_dict(load_state_dict(path))
    return net


def tiny_wrn(config: ClassifierConfig, base_dir: Path) -> nn.Module:
    """WRN-10-1 for tests: random init from config.seed, or weights from config.checkpoint when given."""
    net = wide_resnet(depth=10, widen_factor=1, in_channels=config.in_channels or 3,
                      num_classes=config.num_classes or 10, seed=config.seed)
    if config.checkpoint is not None:
        path = find_weights(config.checkpoint, base_dir, "save one with torch.save(model.state_dict())")
        net.load_state_dict(load_state_dict(path))
    return net
