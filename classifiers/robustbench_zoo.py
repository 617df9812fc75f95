"""Any RobustBench model zoo entry, offline: RobustBench's own architecture, weights read from model_dir only.

RobustBench models take [0, 1] images and normalise inside (DMWideResNet's mean/std buffers, or
normalize_model's 'normalize' + 'model' layers on ImageNet), so no wrapper is added here. RobustBench's
load_model would download a missing file; this loader never does: it names the file and the command.
ImageNet entries' 'preprocessing' (resize and crop) is the data pipeline's job and is not applied here.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from classifiers.registry import ClassifierConfig, require_shape, resolve_path
from utils.checkpoints import CheckpointError, describe_mismatch, read_checkpoint, strip_prefix, tensor_dict
from utils.compat import import_robustbench
from utils.config import require

NUM_CLASSES = {"cifar10": 10, "cifar100": 100, "imagenet": 1000}
# checkpoint layouts RobustBench unwraps: {'last': ...} (two entries), {'state_dict': ...}, DataParallel / 'model.' keys
WRAPPER_KEYS = ("last", "state_dict")
STRIPPED_PREFIXES = ("module.", "model.")
NORMALISATION_BUFFERS = ("mu", "sigma", "mean", "std")  # constants set by the constructor, absent from some files


def expected_path(model_dir: Path, model: str, dataset: str, threat_model: str) -> Path:
    """Where RobustBench's load_model keeps the weights: <model_dir>/<dataset>/<threat_model>/<model>.pt."""
    return Path(model_dir) / dataset / threat_model / f"{model}.pt"


def fetch_command(model: str, dataset: str, threat_model: str, model_dir: Path) -> str:
    """The shell command (from the repository root) that downloads the weights with RobustBench's own load_model."""
    return (f"python -c \"from utils.compat import import_robustbench; import_robustbench().utils.load_model("
            f"'{model}', model_dir='{model_dir}', dataset='{dataset}', threat_model='{threat_model}')\"")


def zoo_entry(model: str, dataset: str, threat_model: str) -> dict[str, Any]:
    """RobustBench's model zoo entry {'model': constructor, 'gdrive_id': ...}; an unknown name lists the valid ones."""
    robustbench = import_robustbench()
    enums = robustbench.model_zoo.enums
    by_threat = robustbench.model_zoo.model_dicts[enums.BenchmarkDataset(dataset)]
    entries = by_threat.get(enums.ThreatModel(threat_model), {})
    require(model in entries, f"classifier.model '{model}' is not in RobustBench's {dataset} {threat_model} zoo; "
            f"valid names: {', '.join(sorted(entries)) or 'none'}")
    entry = entries[model]
    require(isinstance(entry["gdrive_id"], str) and bool(entry["gdrive_id"]),
            f"RobustBench's '{model}' ({dataset}, {threat_model}) is an ensemble or a timm/torchvision hub model "
            "whose weights are downloaded at build time; only single-file zoo entries load offline")
    return entry


def fit_state(raw: Any, model: nn.Module, path: Path) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors under the model's key names (RobustBench's unwrapping, prefix fixes)."""
    for key in WRAPPER_KEYS:
        if isinstance(raw, dict) and isinstance(raw.get(key), dict):
            raw = raw[key]
    state = tensor_dict(raw, path, "RobustBench checkpoint")
    for prefix in STRIPPED_PREFIXES:
        state = strip_prefix(state, prefix)
    expected = model.state_dict()
    if sum(f"model.{k}" in expected for k in state) > sum(k in expected for k in state):
        state = {f"model.{k}": v for k, v in state.items()}  # ImageNet: normalize_model's 'model.' layer
    return state


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    """load_state_dict, strict except for normalisation constants the file omits; one-line CheckpointError."""
    expected = model.state_dict()
    buffers = {name for name, _ in model.named_buffers()}
    optional = {k for k in expected if k in buffers and k.rsplit(".", 1)[-1] in NORMALISATION_BUFFERS}
    required = {k: v for k, v in expected.items() if k not in optional or k in state}
    problem = describe_mismatch(required, state)
    if problem is not None:
        raise CheckpointError(f"{path} does not fit RobustBench's architecture: {problem}")
    model.load_state_dict(state, strict=False)


def load_robustbench(model: str, dataset: str, threat_model: str, model_dir: Path) -> nn.Module:
    """RobustBench's `model` built by its zoo constructor, weights from model_dir: [0, 1] images -> logits."""
    model_dir = Path(model_dir).resolve()
    path = expected_path(model_dir, model, dataset, threat_model)
    hint = (f"it is RobustBench's model zoo entry '{model}' ({dataset}, {threat_model}); fetch it once on a networked "
            f"machine, from this repository's root: {fetch_command(model, dataset, threat_model, model_dir)}")
    entry = zoo_entry(model, dataset, threat_model)
    if not path.is_file():
        raise FileNotFoundError(f"classifier weights not found: {path}; {hint}")
    with torch.random.fork_rng(devices=[]):  # the constructor's random init must not move the global RNG
        net = entry["model"]()
    load_weights(net, fit_state(read_checkpoint(path, hint), net, path), path)
    return net


def robustbench_classifier(config: ClassifierConfig, base_dir: Path) -> nn.Module:
    """Any single-file RobustBench zoo entry by classifier.model, .dataset and .threat_model, from model_dir."""
    require(None not in (config.model, config.dataset, config.threat_model),
            "classifier 'robustbench' needs classifier.model (a RobustBench zoo name, e.g. Wang2023Better_WRN-28-10), "
            "classifier.dataset (cifar10 | cifar100 | imagenet) and classifier.threat_model (Linf | L2 | corruptions)")
    require(config.checkpoint is None, "classifier 'robustbench' reads "
            "<model_dir>/<dataset>/<threat_model>/<model>.pt; set classifier.model_dir, not checkpoint")
    require_shape(config, in_channels=3, num_classes=NUM_CLASSES[config.dataset])
    return load_robustbench(config.model, config.dataset, config.threat_model,
                            resolve_path(config.model_dir, base_dir))
