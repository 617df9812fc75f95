"""The 'robustbench' classifier: RobustBench's own architectures, weights from model_dir only, never a download."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

import eval_sde_adv
from classifiers import ClassifierConfig, build_classifier
from utils.checkpoints import CheckpointError
from utils.compat import import_robustbench
from utils.config import ConfigError, from_dict

REPO = Path(__file__).resolve().parents[1]
WANG = "Wang2023Better_WRN-28-10"


def zoo(dataset: str, threat_model: str) -> dict:
    """RobustBench's model zoo entries of one dataset and threat model."""
    robustbench = import_robustbench()
    enums = robustbench.model_zoo.enums
    return robustbench.model_zoo.model_dicts[enums.BenchmarkDataset(dataset)][enums.ThreatModel(threat_model)]


def small_dm_wrn(seed: int | None = None) -> torch.nn.Module:
    """RobustBench's DMWideResNet (Wang et al. 2023's: SiLU, CIFAR-10 mean/std inside) at depth 10, width 1."""
    from robustbench.model_zoo.architectures.dm_wide_resnet import CIFAR10_MEAN, CIFAR10_STD, DMWideResNet
    if seed is not None:
        torch.manual_seed(seed)
    return DMWideResNet(num_classes=10, depth=10, width=1, activation_fn=torch.nn.SiLU, mean=CIFAR10_MEAN,
                        std=CIFAR10_STD)


def config(tmp_path: Path, **fields) -> ClassifierConfig:
    """A 'robustbench' classifier config for Wang et al.'s Linf WRN-28-10 under tmp_path, fields overridden."""
    return from_dict(ClassifierConfig, {"name": "robustbench", "model": WANG, "dataset": "cifar10",
                                        "threat_model": "Linf", "model_dir": str(tmp_path), **fields})


@pytest.mark.parametrize("threat_model", ["Linf", "L2"])
def test_builds_robustbench_architecture_from_local_file(tmp_path, monkeypatch, no_network, threat_model):
    monkeypatch.setitem(zoo("cifar10", threat_model)[WANG], "model", small_dm_wrn)  # the real one has 36M params
    reference = small_dm_wrn(seed=3).eval()
    path = tmp_path / "cifar10" / threat_model / f"{WANG}.pt"
    path.parent.mkdir(parents=True)
    torch.save({"state_dict": {"module." + k: v for k, v in reference.state_dict().items()}}, path)
    rng_state = torch.get_rng_state()
    model = build_classifier(config(tmp_path, threat_model=threat_model), REPO)
    assert torch.equal(torch.get_rng_state(), rng_state)  # the constructor's init leaves the global RNG alone
    assert type(model).__name__ == "DMWideResNet" and not model.training
    assert not any(p.requires_grad for p in model.parameters())
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    logits = model(x)
    torch.testing.assert_close(logits, reference(x), rtol=0, atol=0)
    # [0, 1] in: the CIFAR-10 normalisation is the architecture's own buffer, not a wrapper of ours
    torch.testing.assert_close(model.mean.flatten(), torch.tensor([0.4914, 0.4822, 0.4465]), atol=1e-4, rtol=0)
    (grad,) = torch.autograd.grad(logits[:, 1].sum(), x)
    assert grad.abs().sum() > 0


def test_missing_file_is_one_line_with_path_and_fetch_command(tmp_path, no_network):
    with pytest.raises(FileNotFoundError) as err:
        build_classifier(config(tmp_path), REPO)
    message = str(err.value)
    assert "\n" not in message
    assert str(tmp_path / "cifar10" / "Linf" / f"{WANG}.pt") in message
    assert (f"load_model('{WANG}', model_dir='{tmp_path}', dataset='cifar10', threat_model='Linf')") in message
    assert not (tmp_path / "cifar10").exists()  # nothing created, nothing downloaded


def test_existing_standard_entry_is_an_alias_with_the_same_error(tmp_path, no_network):
    with pytest.raises(FileNotFoundError, match="load_model\\('Standard'"):
        build_classifier(ClassifierConfig(name="cifar10-standard-wrn-28-10", model_dir=str(tmp_path)), REPO)


def test_bad_names_and_hub_models_fail_with_one_line(tmp_path, no_network):
    with pytest.raises(ConfigError, match="valid names: .*Wang2023Better_WRN-70-16"):
        build_classifier(config(tmp_path, model="Wang2023Better_WRN-28-1O"), REPO)
    with pytest.raises(ConfigError, match="downloaded at build time"):  # timm hub weights, gdrive_id None
        build_classifier(config(tmp_path, model="Debenedetti2022Light_XCiT-S12"), REPO)
    with pytest.raises(ConfigError, match="classifier.dataset"):
        build_classifier(ClassifierConfig(name="robustbench", model=WANG), REPO)
    with pytest.raises(ConfigError, match="not one of"):
        config(tmp_path, threat_model="Linf8")
    with pytest.raises(ConfigError, match="100 classes"):
        build_classifier(config(tmp_path, dataset="cifar100", num_classes=10), REPO)


def test_checkpoint_of_another_architecture_is_refused(tmp_path, monkeypatch, no_network):
    monkeypatch.setitem(zoo("cifar10", "Linf")[WANG], "model", small_dm_wrn)
    path = tmp_path / "cifar10" / "Linf" / f"{WANG}.pt"
    path.parent.mkdir(parents=True)
    torch.save({"conv.weight": torch.zeros(1)}, path)
    with pytest.raises(CheckpointError, match="does not fit RobustBench's architecture: missing keys"):
        build_classifier(config(tmp_path), REPO)


def test_imagenet_normalize_model_gets_its_model_prefix(tmp_path, monkeypatch, no_network):
    from robustbench.model_zoo.architectures.utils_architectures import normalize_model
    name = "Salman2020Do_R18"

    def small() -> torch.nn.Module:
        return normalize_model(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(),
                                                   torch.nn.LazyLinear(1000)), (0.485, 0.456, 0.406),
                               (0.229, 0.224, 0.225))

    reference = small()
    reference(torch.rand(1, 3, 8, 8))  # materialise the lazy layer
    monkeypatch.setitem(zoo("imagenet", "Linf")[name], "model", lambda: _materialised(small()))
    path = tmp_path / "imagenet" / "Linf" / f"{name}.pt"
    path.parent.mkdir(parents=True)
    torch.save(reference.model.state_dict(), path)  # RobustBench's files hold the bare network's keys
    model = build_classifier(config(tmp_path, model=name, dataset="imagenet"), REPO)
    x = torch.rand(2, 3, 8, 8)
    torch.testing.assert_close(model(x), reference(x))


def _materialised(model: torch.nn.Module) -> torch.nn.Module:
    """`model` after one 8x8 forward, so its lazy layers have shapes."""
    model(torch.rand(1, 3, 8, 8))
    return model


def test_eval_refuses_a_checkpoint_of_another_architecture_with_one_line(tmp_path, monkeypatch, caplog, no_network):
    monkeypatch.setitem(zoo("cifar10", "Linf")[WANG], "model", small_dm_wrn)
    path = tmp_path / "cifar10" / "Linf" / f"{WANG}.pt"
    path.parent.mkdir(parents=True)
    torch.save({"conv.weight": torch.zeros(1)}, path)
    classifier = f"{{name: robustbench, model: {WANG}, dataset: cifar10, threat_model: Linf, model_dir: {tmp_path}}}"
    args = ["--config", str(REPO / "configs" / "tiny.yml"), "--set", f"classifier={classifier}",
            "--output_dir", str(tmp_path / "results")]
    assert eval_sde_adv.main(args) == 2
    (error,) = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert "does not fit RobustBench's architecture: missing keys" in error and "\n" not in error
