"""AID-Purifier: feature taps, D's architecture and size, purification, AVmixup, training, registry, joint attack."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from attacks.aid_joint import PGDAIDJoint, PGDAIDJointConfig
from attacks.pgd import PGDEOT, PGDEOTConfig
from attacks.registry import ATTACKS
from classifiers import ClassifierConfig, fmnist_wrn_16_2
from classifiers.taps import TAP_NAMES, features, forward_with_taps, paper_tap_names, tap, tap_channels, tap_modules
from classifiers.wide_resnet import CIFAR10_MEAN, CIFAR10_STD, Normalized, wide_resnet
from runners.aid import AIDConfig, AIDHead, AIDPurifier, build_discriminator
from runners.defended import DefendedClassifier, PurifierContext, build_purifier, parse_purifier_config
from runners.purifiers import IdentityPurifier
from training import train_aid
from training.train_aid import TrainAIDConfig, avmixup, evaluate, fit, model_card, train_step
from utils.checkpoints import CheckpointError
from utils.compat import import_robustbench
from utils.config import ConfigError
from utils.data import DataConfig, ImageSet
from evaluation.experiment import load_experiment

EPS = 8.0 / 255.0


def tiny_classifier() -> nn.Module:
    """A frozen WRN-10-1 on (B, 1, 32, 32): tap widths conv1 16, block1 16, block2 32, block3 64."""
    return wide_resnet(10, 1, in_channels=1, num_classes=10, seed=0).eval().requires_grad_(False)


def tiny_purifier(grad_mode: str = "exact", seed: int = 0) -> AIDPurifier:
    """AID-Purifier with a seeded random D of width 64 on the tiny classifier's taps 1 and 3."""
    discriminator = build_discriminator(tiny_classifier(), (1, 3), width=64, seed=seed).eval().requires_grad_(False)
    return AIDPurifier(discriminator, def_step=10, eps=EPS, grad_mode=grad_mode)


def images(n: int, seed: int = 0) -> torch.Tensor:
    """(n, 1, 32, 32) in [0, 1] with a quarter of the pixels exactly 0 or 1 (so the [0, 1] clip matters)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 32, 32, generator=gen)
    border = torch.rand(n, 1, 32, 32, generator=gen)
    return torch.where(border < 0.125, torch.zeros_like(x), torch.where(border > 0.875, torch.ones_like(x), x))


def train_config(**overrides) -> TrainAIDConfig:
    """A tiny training recipe (data sections are unused by fit)."""
    data = DataConfig(name="fashion-mnist")
    base = dict(classifier=None, data=data, eval_data=data, output="d.pt", checkpoint="state.pt", width=64,
                tr_eps=0.1, tr_alpha=0.03, tr_steps=2, batch_size=8, epochs=1, save_every=1, progress_interval=0.0)
    return TrainAIDConfig(**{**base, **overrides})


def test_taps_have_the_documented_shapes_and_leave_the_output_unchanged():
    model = fmnist_wrn_16_2(seed=0).eval()
    x = torch.rand(3, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    logits, feats = forward_with_taps(model, x, TAP_NAMES)
    assert {k: tuple(v.shape) for k, v in feats.items()} == {
        "conv1": (3, 16, 32, 32), "block1": (3, 32, 32, 32), "block2": (3, 64, 16, 16), "block3": (3, 128, 8, 8)}
    assert torch.equal(logits, model(x))
    assert torch.equal(feats["conv1"], model.conv1(x))
    assert torch.equal(feats["block3"], model.block3(model.block2(model.block1(model.conv1(x)))))
    assert all(not m._forward_hooks for m in model.modules())
    with tap(model, ["block1"]) as inside:
        model(x)
    assert torch.equal(inside["block1"], feats["block1"])
    assert tap_channels(model, TAP_NAMES) == {"conv1": 16, "block1": 32, "block2": 64, "block3": 128}


def test_features_stop_after_the_deepest_tap():
    model = fmnist_wrn_16_2(seed=0).eval()
    calls = []
    model.fc.register_forward_hook(lambda *args: calls.append(1))
    x = torch.rand(2, 1, 32, 32)
    feats = features(model, x, tap_modules(model, ["conv1", "block2"]))
    assert not calls and set(feats) == {"conv1", "block2"}
    assert torch.equal(feats["block2"], forward_with_taps(model, x, ["block2"])[1]["block2"])


def test_taps_on_wrappers_and_robustbench_dm_wide_resnet():
    wrapped = Normalized(wide_resnet(10, 1, seed=0), CIFAR10_MEAN, CIFAR10_STD).eval()
    x = torch.rand(2, 3, 32, 32)
    logits, feats = forward_with_taps(wrapped, x, ["conv1"])
    assert torch.equal(logits, wrapped(x)) and feats["conv1"].shape == (2, 16, 32, 32)
    import_robustbench()
    from robustbench.model_zoo.architectures.dm_wide_resnet import DMWideResNet
    dm = DMWideResNet(depth=10, width=1).eval()
    logits, feats = forward_with_taps(dm, x, TAP_NAMES)
    assert torch.equal(logits, dm(x))
    assert {k: tuple(v.shape[1:]) for k, v in feats.items()} == {
        "conv1": (16, 32, 32), "block1": (16, 32, 32), "block2": (32, 16, 16), "block3": (64, 8, 8)}
    assert torch.equal(feats["block2"], dm.layer[1](dm.layer[0](dm.init_conv((x - dm.mean) / dm.std))))
    with pytest.raises(ValueError, match="no feature-tap layout"):
        tap_modules(nn.Sequential(nn.Conv2d(3, 4, 3)), ["conv1"])


def test_paper_tap_numbering():
    assert paper_tap_names((3, 1)) == ("conv1", "block2")
    assert paper_tap_names((2, 3)) == ("block1", "block2")
    for bad in ((), (0,), (5,), (1, 1)):
        with pytest.raises(ValueError, match="taps must be"):
            paper_tap_names(bad)


def test_wrn_34_10_discriminator_parameter_count_matches_the_formula():
    with torch.device("meta"):
        wrn = wide_resnet(34, 10)
    widths = tap_channels(wrn, TAP_NAMES)
    assert widths == {"conv1": 16, "block1": 160, "block2": 320, "block3": 640}
    head = AIDHead({"conv1": widths["conv1"], "block2": widths["block2"]}, bcd=1, acd=3)
    width = 1024

    def block(c_in: int, c_out: int) -> int:  # 1x1 conv with bias + BatchNorm weight and bias
        return c_in * c_out + c_out + 2 * c_out

    encoders = sum(block(c, width) + block(width, width) for c in (16, 320))
    after = block(2048, 1024) + block(1024, 512) + block(512, 256)
    expected = encoders + after + (256 + 1)
    assert expected == 5_211_649
    assert sum(p.numel() for p in head.parameters()) == expected


def test_purification_stays_in_the_ball_and_raises_d():
    purifier = tiny_purifier()
    x = images(16)
    with torch.no_grad():
        out = purifier(x)
        d_before, d_after = purifier.discriminator(x), purifier.discriminator(out)
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert (out - x).abs().max() <= EPS + 1e-6
    assert (out - x).abs().max() > 0.5 * EPS
    assert (d_after > d_before).all()
    assert torch.equal(purifier(x), out)
    assert AIDConfig(checkpoint="d.pt").step_size == pytest.approx(EPS / 4)


def test_exact_gradient_is_the_clip_mask_and_create_graph_agrees():
    x = images(4, seed=3)
    weights = torch.randn(x.shape, generator=torch.Generator().manual_seed(4))
    grads = {}
    for mode in ("exact", "create_graph", "bpda"):
        purifier = tiny_purifier(mode)
        x_in = x.clone().requires_grad_(True)
        (grads[mode],) = torch.autograd.grad((weights * purifier(x_in)).sum(), x_in)
    assert torch.equal(grads["bpda"], weights)
    assert torch.allclose(grads["create_graph"], grads["exact"], atol=1e-6)
    purifier, jacobian, x_k = tiny_purifier(), torch.ones_like(x), x
    for _ in range(purifier.def_step):  # J_{k+1} = a_k (1 - b_k + b_k J_k), the docstring's recursion
        step = x_k + purifier.alpha * purifier.ascent_sign(x_k, keep_graph=False) - x
        x_next = (x + step.clamp(-EPS, EPS)).clamp(0.0, 1.0)
        inside_ball = (step.abs() < EPS).float()
        inside_range = ((x + step.clamp(-EPS, EPS) > 0.0) & (x + step.clamp(-EPS, EPS) < 1.0)).float()
        jacobian, x_k = inside_range * (1.0 - inside_ball + inside_ball * jacobian), x_next
    assert torch.equal(grads["exact"], weights * jacobian)
    assert 0.0 < float(jacobian.mean()) < 1.0


def test_inference_mode_is_refused():
    with torch.inference_mode(), pytest.raises(RuntimeError, match="torch.no_grad"):
        tiny_purifier()(images(1))


def test_avmixup_batch_has_the_documented_labels():
    gen = torch.Generator().manual_seed(5)
    x = torch.rand(64, 1, 4, 4, generator=gen)
    x_adv = (x + 0.1 * (2 * torch.rand(x.shape, generator=gen) - 1)).clamp(0, 1)
    inputs, w = avmixup(x, x_adv, 2.0, torch.Generator().manual_seed(6))
    vertex = (x + 2.0 * (x_adv - x)).clamp(0.0, 1.0)
    assert w.shape == (64,) and w.min() >= 0.0 and w.max() <= 1.0 and 0.3 < float(w.mean()) < 0.7
    assert torch.equal(w, torch.rand(64, generator=torch.Generator().manual_seed(6)))
    assert torch.allclose(inputs, w.view(-1, 1, 1, 1) * x + (1 - w.view(-1, 1, 1, 1)) * vertex, atol=1e-7)
    assert torch.equal(avmixup(x, x_adv, 2.0, torch.Generator().manual_seed(6))[0], inputs)


def test_a_few_training_steps_lower_the_bce():
    discriminator = build_discriminator(tiny_classifier(), (1, 3), width=64, seed=0).train()
    optimizer = torch.optim.SGD(discriminator.head.parameters(), lr=0.01, momentum=0.9, weight_decay=2e-4)
    x = images(32, seed=7)
    x_adv = (x + 0.1 * torch.sign(torch.randn(x.shape, generator=torch.Generator().manual_seed(8)))).clamp(0, 1)
    inputs, labels = avmixup(x, x_adv, 1.5, torch.Generator().manual_seed(9))
    floor = float(F.binary_cross_entropy(labels, labels))  # the soft labels' entropy: the lowest BCE possible
    losses = [train_step(discriminator, optimizer, inputs, labels) for _ in range(15)]
    assert all(b < a for a, b in zip(losses, losses[1:]))
    assert losses[-1] - floor < 0.75 * (losses[0] - floor)
    assert not discriminator.classifier.training


def test_interrupted_training_resumes_to_the_same_weights(tmp_path, monkeypatch):
    config = train_config(epochs=2)
    x = images(16, seed=10)
    data = ImageSet(x, torch.arange(16) % 10, torch.arange(100, 116))
    full = build_discriminator(tiny_classifier(), (1, 3), width=64, seed=0)
    losses, steps, _ = fit(full, data, config, tmp_path / "full.pt")
    assert steps == 4 and len(losses) == 4

    calls = {"n": 0}

    def crash_on_third(*args):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return train_step(*args)

    resumed = build_discriminator(tiny_classifier(), (1, 3), width=64, seed=0)
    monkeypatch.setattr(train_aid, "train_step", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        fit(resumed, data, config, tmp_path / "resumed.pt")
    monkeypatch.setattr(train_aid, "train_step", train_step)
    resumed = build_discriminator(tiny_classifier(), (1, 3), width=64, seed=0)
    _, steps, _ = fit(resumed, data, config, tmp_path / "resumed.pt")
    assert steps == 4
    for name, value in full.head.state_dict().items():
        assert torch.equal(resumed.head.state_dict()[name], value), name


def test_aid_purifier_parses_and_builds_through_the_registry(tmp_path):
    classifier = tiny_classifier()
    trained = build_discriminator(classifier, (1, 3), width=64, seed=11)
    torch.save(trained.head.state_dict(), tmp_path / "d.pt")
    context = PurifierContext(backbone=lambda: pytest.fail("AID needs no backbone"), classifier=classifier,
                              base_dir=tmp_path)
    config = parse_purifier_config({"name": "aid", "checkpoint": "d.pt", "taps": [1, 3], "width": 64})
    assert isinstance(config, AIDConfig) and config.taps == (1, 3)
    purifier = build_purifier(config, context)
    assert isinstance(purifier, AIDPurifier) and purifier.alpha == pytest.approx(EPS / 4)
    assert not any(p.requires_grad for p in purifier.discriminator.head.parameters())
    x = images(2)
    with torch.no_grad():
        assert torch.equal(purifier.discriminator(x), trained.eval()(x))
    with pytest.raises(CheckpointError, match="does not fit"):
        build_purifier(dataclasses.replace(config, taps=(1, 4)), context)
    with pytest.raises(FileNotFoundError, match="train_aid"):
        build_purifier(dataclasses.replace(config, checkpoint="missing.pt"), context)
    with pytest.raises(ConfigError, match="checkpoint"):
        parse_purifier_config({"name": "aid"})
    with pytest.raises(ConfigError, match="taps"):
        parse_purifier_config({"name": "aid", "checkpoint": "d.pt", "taps": [5]})


def test_joint_attack_reduces_to_pgd_and_pushes_d_up():
    purifier = tiny_purifier()
    model = DefendedClassifier(purifier, purifier.discriminator.classifier).eval()
    x = images(6, seed=12)
    y, indices = torch.arange(6), torch.arange(6)
    common = dict(iterations=3, eot_samples=1, eval_samples=1, sanity_checks=False)
    plain = PGDEOT(PGDEOTConfig(**common)).run(model, x, y, indices, seed=1)
    joint = PGDAIDJoint(PGDAIDJointConfig(joint_weight=0.0, **common)).run(model, x, y, indices, seed=1)
    assert torch.equal(plain.x_adv, joint.x_adv)
    heavy = PGDAIDJoint({"joint_weight": 1e4, **common}).run(model, x, y, indices, seed=1)
    assert (heavy.x_adv - x).abs().max() <= EPS + 1e-6
    with torch.no_grad():
        assert purifier.discriminator(heavy.x_adv).mean() > purifier.discriminator(plain.x_adv).mean()
    with pytest.raises(ValueError, match="AID-Purifier"):
        PGDAIDJoint(common).run(DefendedClassifier(IdentityPurifier(), model.classifier), x, y, indices, seed=1)
    assert "pgd_aid_joint" in ATTACKS


def test_experiment_config_parses():
    experiment = load_experiment(Path(__file__).resolve().parents[1] / "configs" / "aid_fmnist.yml")
    assert isinstance(experiment.purifier, AIDConfig) and experiment.purifier.taps == (1, 3)
    assert [(a.name, a.target) for a in experiment.attacks] == [
        ("pgd_eot", "defended"), ("pgd_aid_joint", "defended"), ("pgd_eot", "classifier")]


def test_evaluation_numbers_and_model_card():
    config = train_config(def_step=2, eval_batch_size=4)
    discriminator = build_discriminator(tiny_classifier(), (1, 3), width=64, seed=0)
    data = ImageSet(images(6, seed=13), torch.arange(6), torch.arange(6))
    metrics = evaluate(discriminator, data, config)
    assert all(0.0 <= value <= 1.0 for value in metrics.values())
    assert metrics["detection_accuracy"] == pytest.approx((metrics["detect_clean"] + metrics["detect_adv"]) / 2)
    card = model_card(dataclasses.replace(config, classifier=ClassifierConfig(name="tiny-wrn")), Path("c.yml"), "d.pt",
                      metrics, steps=3, seconds=60.0)
    assert "python -m training.train_aid --config c.yml" in card
    assert f"{100 * metrics['detection_accuracy']:.2f} %" in card and "3 SGD steps" in card
