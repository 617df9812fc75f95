"""EDM's DDPM++ denoiser (edm/) against NVlabs/edm's outputs (tests/data/edm_ddpmpp_tiny, made with commit 008a4e5)."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from edm import EDMPrecond, SongUNetConfig, load_edm_denoiser
from utils.config import ConfigError, from_dict

DATA = Path(__file__).parent / "data" / "edm_ddpmpp_tiny"
REAL_VALUES = 55_733_923  # the CIFAR config of Chen et al.'s edm_cifar(100)_uncond_vp.pt


def tiny_config() -> SongUNetConfig:
    """The reference's tiny EDMPrecond constructor arguments (config.json, every key) as our config."""
    return from_dict(SongUNetConfig, json.loads((DATA / "config.json").read_text()))


def relative_error(ours: torch.Tensor, official: torch.Tensor) -> float:
    """max |ours - official| / max |official|."""
    return float((ours.cpu() - official).abs().max() / official.abs().max())


@pytest.fixture(scope="module")
def cases() -> dict:
    """The official outputs."""
    return torch.load(DATA / "cases.pt", weights_only=True)


def test_tiny_denoiser_matches_the_official_outputs_at_every_sigma(cases, device):
    net = load_edm_denoiser(tiny_config(), DATA / "model.pt").to(device)
    x, sigma = cases["x"].to(device), cases["sigma"].to(device)
    with torch.no_grad():
        assert relative_error(net(x, sigma), cases["denoised"]) < 1e-5
        assert relative_error(net(x, sigma, torch.zeros(3, 9, device=device)), cases["denoised_zero_augment"]) < 1e-5
        raw = net.model(cases["raw_in"].to(device), cases["raw_noise_labels"].to(device))
        assert relative_error(raw, cases["raw_out"]) < 1e-5
        for k in range(3):  # one sigma at a time: the per-row preconditioning
            assert relative_error(net(x[k:k + 1], sigma[k:k + 1]), cases["denoised"][k:k + 1]) < 1e-5


def test_the_augment_map_is_used_when_labels_are_given(cases):
    net = load_edm_denoiser(tiny_config(), DATA / "model.pt")
    with torch.no_grad():
        plain = net(cases["x"], cases["sigma"])
        augmented = net(cases["x"], cases["sigma"], torch.ones(3, 9))
    assert not torch.allclose(plain, augmented)


def test_the_real_cifar_key_list_builds_strictly_on_the_meta_device():
    with torch.device("meta"):
        net = EDMPrecond(SongUNetConfig())
    state = net.state_dict()
    expected = json.loads((DATA / "edm_cifar_ddpmpp_keys.json").read_text())
    assert [(k, list(v.shape)) for k, v in state.items()] == list(expected.items())
    assert sum(v.numel() for v in state.values()) == REAL_VALUES
    net.load_state_dict({k: torch.empty(v, device="meta") for k, v in expected.items()}, strict=True, assign=True)


def test_a_missing_or_mismatched_checkpoint_is_one_line_naming_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="edm_cifar100_uncond_vp.pt.*DiffusionClassifier") as info:
        load_edm_denoiser(SongUNetConfig(), tmp_path / "edm_cifar100_uncond_vp.pt")
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="does not match the network config: .*shape mismatches"):
        load_edm_denoiser(SongUNetConfig(img_resolution=16, model_channels=16, channel_mult=(1, 2), num_blocks=2,
                                         attn_resolutions=(8,)), DATA / "model.pt")


def test_gradients_reach_the_input_and_train_mode_uses_dropout(cases):
    config = dataclasses.replace(tiny_config(), dropout=0.5)
    net = load_edm_denoiser(config, DATA / "model.pt")
    x = cases["x"].clone().requires_grad_(True)
    net(x, cases["sigma"]).square().sum().backward()
    assert x.grad is not None and bool(x.grad.abs().sum() > 0)
    with torch.no_grad():
        assert torch.equal(net(cases["x"], cases["sigma"]), net(cases["x"], cases["sigma"]))
        net.train()
        assert not torch.equal(net(cases["x"], cases["sigma"]), net(cases["x"], cases["sigma"]))


@pytest.mark.parametrize("changes, fragment", [
    ({"label_dim": 10}, "only unconditional"),
    ({"encoder_type": "residual"}, "encoder_type='residual' is not supported"),
    ({"embedding_type": "fourier"}, "supported: \\['positional'\\]"),
    ({"attn_resolutions": (12,)}, "not among the network's resolutions"),
    ({"model_channels": 18}, "multiple of 4"),
    ({"img_resolution": 30}, "divisible by 2"),
    ({"resample_filter": (1, 3, 1)}, "even number of taps"),
])
def test_unsupported_or_invalid_options_fail_on_construction(changes, fragment):
    with pytest.raises(ConfigError, match=fragment):
        SongUNetConfig(**changes)
