"""Classifier registry: offline RobustBench loading, DiffPure's WRN-70-16 layout, demo and tiny WRNs, clear errors."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from classifiers import CLASSIFIERS, ClassifierConfig, build_classifier, fmnist_wrn_16_2
from classifiers.wide_resnet import CIFAR10_MEAN, CIFAR10_STD, Normalized, wide_resnet
from utils.compat import import_robustbench
from utils.config import ConfigError, from_dict

REPO = Path(__file__).resolve().parents[1]


def test_registry_names_and_unknown_name():
    assert {"cifar10-standard-wrn-28-10", "cifar10-wrn-70-16-dropout", "fmnist-wrn-16-2",
            "tiny-wrn"} <= set(CLASSIFIERS.names())
    with pytest.raises(KeyError, match="valid names: .*cifar10-standard"):
        build_classifier(ClassifierConfig(name="resnet-50"), REPO)


def test_tiny_wrn_is_frozen_seeded_and_differentiable():
    rng_state = torch.get_rng_state()
    model = build_classifier(from_dict(ClassifierConfig, {"name": "tiny-wrn", "in_channels": 1, "seed": 3}), REPO)
    assert torch.equal(torch.get_rng_state(), rng_state)  # construction leaves the global RNG alone
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    same = build_classifier(ClassifierConfig(name="tiny-wrn", in_channels=1, seed=3), REPO)
    other = build_classifier(ClassifierConfig(name="tiny-wrn", in_channels=1, seed=4), REPO)
    x = torch.rand(2, 1, 32, 32, requires_grad=True)
    logits = model(x)
    assert logits.shape == (2, 10)
    assert torch.equal(logits, same(x)) and not torch.allclose(logits, other(x))
    (grad,) = torch.autograd.grad(logits[:, 0].sum(), x)
    assert grad.abs().sum() > 0


def test_standard_missing_file_is_a_clear_error_without_network(tmp_path, no_network):
    with pytest.raises(FileNotFoundError) as err:
        build_classifier(ClassifierConfig(name="cifar10-standard-wrn-28-10", model_dir=str(tmp_path)), REPO)
    message = str(err.value)
    assert str(tmp_path / "cifar10" / "Linf" / "Standard.pt") in message
    assert "RobustBench" in message and "'Standard'" in message
    assert not (tmp_path / "cifar10").exists()  # nothing created, nothing downloaded


def test_standard_loads_offline_through_robustbench(tmp_path, monkeypatch, no_network):
    # RobustBench's own loader with its zoo entry's architecture swapped for a tiny WRN (the real one is 36M params)
    robustbench = import_robustbench()
    entry = robustbench.utils.all_models[robustbench.model_zoo.enums.BenchmarkDataset.cifar_10][
        robustbench.model_zoo.enums.ThreatModel.Linf]["Standard"]
    monkeypatch.setitem(entry, "model", lambda: wide_resnet(depth=10, widen_factor=1))
    reference = wide_resnet(depth=10, widen_factor=1, seed=5).eval()
    path = tmp_path / "cifar10" / "Linf" / "Standard.pt"
    path.parent.mkdir(parents=True)
    torch.save({"module." + k: v for k, v in reference.state_dict().items()}, path)
    model = build_classifier(from_dict(ClassifierConfig, {"name": "cifar10-standard-wrn-28-10",
                                                          "model_dir": str(tmp_path)}), REPO)
    x = torch.rand(3, 3, 32, 32)
    torch.testing.assert_close(model(x), reference(x))
    assert not any(p.requires_grad for p in model.parameters())


def test_standard_architecture_is_robustbench_wrn_28_10():
    robustbench = import_robustbench()
    entry = robustbench.utils.all_models[robustbench.model_zoo.enums.BenchmarkDataset.cifar_10][
        robustbench.model_zoo.enums.ThreatModel.Linf]["Standard"]
    with torch.device("meta"):
        model = entry["model"]()
    assert model.fc.in_features == 640 and len(model.block1.layer) == 4  # width 10, (28 - 4) / 6 blocks


def test_standard_rejects_checkpoint_and_wrong_shape():
    with pytest.raises(ConfigError, match="model_dir"):
        build_classifier(ClassifierConfig(name="cifar10-standard-wrn-28-10", checkpoint="x.pt"), REPO)
    with pytest.raises(ConfigError, match="3 channels"):
        build_classifier(ClassifierConfig(name="cifar10-standard-wrn-28-10", in_channels=1), REPO)


def test_wrn_70_16_dropout_layout_from_diffpure():
    with torch.device("meta"):
        net = wide_resnet(depth=70, widen_factor=16, drop_rate=0.3)
    keys = net.state_dict().keys()
    assert "block1.layer.10.conv2.weight" in keys and "block1.layer.11.conv1.weight" not in keys
    assert net.conv1.weight.shape == (16, 3, 3, 3) and net.fc.weight.shape == (10, 1024)
    assert net.block2.layer[0].droprate == 0.3


def test_wrn_70_16_dropout_missing_and_loading(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="pretrained/cifar10/wrn-70-16-dropout/weights.pt"):
        build_classifier(ClassifierConfig(name="cifar10-wrn-70-16-dropout"), tmp_path)
    # the same loading path with a small stand-in network: 'module.' keys, normalisation inside
    import classifiers.zoo as zoo

    small = lambda **kwargs: wide_resnet(depth=10, widen_factor=1, drop_rate=kwargs["drop_rate"])  # noqa: E731
    monkeypatch.setattr(zoo, "wide_resnet", small)
    net = wide_resnet(depth=10, widen_factor=1, drop_rate=0.3, seed=2).eval()
    path = tmp_path / "w.pt"
    torch.save({"module." + k: v for k, v in net.state_dict().items()}, path)
    model = build_classifier(ClassifierConfig(name="cifar10-wrn-70-16-dropout", checkpoint=str(path)), REPO)
    x = torch.rand(2, 3, 32, 32)
    mean, std = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1), torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(model(x), net((x - mean) / std))
    assert isinstance(model, Normalized) and "mean" not in model.state_dict()
    torch.testing.assert_close(model(x), model(x))  # dropout is off in eval mode


@pytest.mark.parametrize("wrapped", [False, True])
def test_fmnist_wrn_16_2_loads_state_dict_files(tmp_path, wrapped):
    net = fmnist_wrn_16_2(seed=1).eval()
    path = tmp_path / "demo.pt"
    torch.save({"state_dict": net.state_dict(), "epoch": 3} if wrapped else net.state_dict(), path)
    model = build_classifier(ClassifierConfig(name="fmnist-wrn-16-2", checkpoint="demo.pt"), tmp_path)
    x = torch.rand(2, 1, 32, 32)
    torch.testing.assert_close(model(x), net(x))


def test_fmnist_wrn_16_2_missing_file_says_how_to_train(tmp_path):
    with pytest.raises(FileNotFoundError, match="training.train_classifier") as missing:
        build_classifier(ClassifierConfig(name="fmnist-wrn-16-2", checkpoint="pretrained/absent.pt"), tmp_path)
    assert f"{tmp_path}/pretrained/absent.pt and {REPO}/pretrained/absent.pt" in str(missing.value)
    with pytest.raises(ConfigError, match="1 channels"):
        build_classifier(ClassifierConfig(name="fmnist-wrn-16-2", in_channels=3), tmp_path)


def test_trained_demo_classifier_accuracy():
    if not (REPO / "pretrained" / "demo" / "classifier_wrn16_2.pt").is_file():
        pytest.skip("pretrained/demo/classifier_wrn16_2.pt not trained yet (python -m training.train_classifier)")
    from utils.data import DataConfig, load_images

    try:
        data = load_images(DataConfig(name="fashion-mnist", num_sub=200, pad_to=32))
    except FileNotFoundError:
        pytest.skip("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
    model = build_classifier(ClassifierConfig(name="fmnist-wrn-16-2"), REPO)
    with torch.no_grad():
        accuracy = (model(data.x).argmax(-1) == data.y).float().mean()
    assert accuracy >= 0.85


@pytest.fixture
def tiny_training_config(tmp_path):
    """A training config on 64 real Fashion-MNIST images, writing under tmp_path."""
    from training.train_classifier import TrainConfig
    from utils.data import DEBIAN_FASHION_MNIST

    if not (DEBIAN_FASHION_MNIST / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
    return TrainConfig(output="out/w.pt", checkpoint="out/last.pt", train_subset=64, test_subset=32, epochs=1,
                       batch_size=32, lr=0.05, crop_padding=0, horizontal_flip=False)


def test_training_loss_falls(tiny_training_config, tmp_path):
    from training.train_classifier import build_training, load_split, train_epoch

    config = tiny_training_config
    images, labels = load_split(config, tmp_path, "train", config.train_subset)
    model, optimizer, scheduler = build_training(config, steps_per_epoch=2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)  # constant lr for this check
    generator = torch.Generator().manual_seed(0)
    losses = [train_epoch(model, optimizer, scheduler, images, labels, config, generator)[0] for _ in range(5)]
    assert losses[-1] < 0.85 * losses[0] and min(losses[-2:]) < min(losses[:2])


def test_training_resumes_and_writes_weights_and_card(tiny_training_config, tmp_path):
    import dataclasses

    from training.train_classifier import run_training

    config_path = tmp_path / "train.yml"
    run_training(tiny_training_config, config_path)
    first = torch.load(tmp_path / "out" / "last.pt", weights_only=True)
    assert first["epoch"] == 1
    accuracy = run_training(dataclasses.replace(tiny_training_config, epochs=2), config_path)
    state = torch.load(tmp_path / "out" / "last.pt", weights_only=True)
    assert state["epoch"] == 2 and not torch.equal(state["model"]["fc.weight"], first["model"]["fc.weight"])
    card = (tmp_path / "out" / "w.md").read_text()
    assert f"{100 * accuracy:.2f} %" in card and "python -m training.train_classifier" in card
    model = build_classifier(ClassifierConfig(name="fmnist-wrn-16-2", checkpoint="out/w.pt"), tmp_path)
    assert model(torch.rand(1, 1, 32, 32)).shape == (1, 10)


def test_compat_aliases_autoattack_and_explains_missing_pkg_resources(monkeypatch):
    import sys

    import pyautoattack

    from utils.compat import autoattack_class, require_pkg_resources

    import_robustbench()
    assert sys.modules["autoattack"] is pyautoattack
    assert sys.modules["autoattack.state"].EvaluationState is pyautoattack.state.EvaluationState
    assert autoattack_class() is pyautoattack.AutoAttack
    monkeypatch.setitem(sys.modules, "pkg_resources", None)  # as if setuptools >= 81
    with pytest.raises(ImportError, match='pip install "setuptools<81"'):
        require_pkg_resources()
