"""ADM / improved-diffusion UNets against OpenAI reference vectors; schedules, VP adapter and checkpoint loading."""
from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from guided_diffusion import (ADM_IMAGENET256_SCHEDULE, ADM_IMAGENET256_UNCOND, IMPROVED_CIFAR10_SCHEDULE,
                              IMPROVED_CIFAR10_UNCOND, CheckpointError, DiscreteSchedule, GuidedDiffusionBackbone,
                              GuidedDiffusionConfig, UNetConfig, UNetModel, alpha_bar_to_timestep, cosine_betas,
                              linear_betas, load_unet, sigma_to_timestep)
from diffusion.sde import VPSDE, std_to_time
from utils.config import ConfigError, from_dict

DATA = Path(__file__).parent / "data"
TINY = ["adm_tiny", "improved_diffusion_tiny"]


def tiny_config(name: str, **changes) -> UNetConfig:
    """The reference tiny model's UNetConfig, read from its config.json."""
    data = json.loads((DATA / name / "config.json").read_text())["config"]
    return from_dict(UNetConfig, {**data, **changes})


def cases(name: str, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    return torch.load(DATA / name / "cases.pt", weights_only=True, map_location=device)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("name", TINY)
def test_tiny_unet_matches_reference_output(name, device):
    net = load_unet(tiny_config(name), DATA / name / "model.pt").to(device)
    case = cases(name, device)
    with torch.no_grad():
        out = net(case["x"], case["timesteps"])
    assert out.shape == case["out"].shape
    assert rel_err(out, case["out"]) <= 1e-5
    n_params = json.loads((DATA / name / "config.json").read_text())["n_params"]
    assert sum(p.numel() for p in net.parameters()) == n_params


@pytest.mark.parametrize("keys_file, preset, n_params", [
    ("adm_imagenet256_uncond_keys.json", ADM_IMAGENET256_UNCOND, 552_814_086),
    ("improved_diffusion_cifar10_keys.json", IMPROVED_CIFAR10_UNCOND, 52_546_438),
])
def test_full_size_state_dict_names_and_shapes(keys_file, preset, n_params):
    reference = json.loads((DATA / keys_file).read_text())
    config = from_dict(UNetConfig, reference["config"])
    assert config == preset.unet
    schedule = {"name": preset.schedule.name, "num_steps": preset.schedule.num_steps,
                "rescale_timesteps": preset.schedule.rescale_timesteps}
    assert from_dict(GuidedDiffusionConfig, {"unet": reference["config"], "schedule": schedule}) == preset
    with torch.device("meta"):
        net = UNetModel(config)
    assert [[k, list(v.shape)] for k, v in net.state_dict().items()] == reference["keys"]
    assert sum(p.numel() for p in net.parameters()) == n_params


def test_new_attention_order_is_a_permutation_of_qkv(device):
    name = "adm_tiny"
    state = torch.load(DATA / name / "model.pt", weights_only=True)
    config = tiny_config(name, use_new_attention_order=True)
    for key, value in state.items():
        if ".qkv." in key:
            channels = value.shape[0] // 3
            heads = channels // config.num_head_channels
            state[key] = value.reshape(heads, 3, -1, *value.shape[1:]).transpose(0, 1).reshape(value.shape)
    net = UNetModel(config).eval().to(device)
    net.load_state_dict(state)
    case = cases(name, device)
    with torch.no_grad():
        assert rel_err(net(case["x"], case["timesteps"]), case["out"]) <= 1e-5


def test_gradient_checkpointing_gives_same_output_and_gradient(device):
    name = "improved_diffusion_tiny"
    state = torch.load(DATA / name / "model.pt", weights_only=True)
    x = cases(name, device)["x"][:1]
    grads = []
    for use_checkpoint in (False, True):
        net = UNetModel(tiny_config(name, use_checkpoint=use_checkpoint)).eval().to(device)
        net.load_state_dict(state)
        xg = x.clone().requires_grad_(True)
        out = net(xg, torch.tensor([300.0], device=device))
        out.square().sum().backward()
        grads.append((out.detach(), xg.grad))
    assert torch.allclose(grads[0][0], grads[1][0], rtol=0, atol=1e-6)
    assert torch.allclose(grads[0][1], grads[1][1], rtol=1e-5, atol=1e-6)


def test_config_rejects_unsupported_options_and_bad_input():
    with pytest.raises(ConfigError, match="num_classes"):
        tiny_config("adm_tiny", num_classes=1000)
    with pytest.raises(ConfigError, match="use_fp16"):
        tiny_config("adm_tiny", use_fp16=True)
    with pytest.raises(ConfigError, match="multiple of 32"):
        tiny_config("adm_tiny", model_channels=48)
    net = UNetModel(tiny_config("adm_tiny"))
    with pytest.raises(ValueError, match="multiples of 2"):
        net(torch.zeros(1, 3, 31, 32), torch.tensor([1]))


@pytest.mark.parametrize("schedule, sigmas, steps", [
    (ADM_IMAGENET256_SCHEDULE, (0.12, 0.25, 0.5, 1.0), (70, 145, 259, 396)),
    (IMPROVED_CIFAR10_SCHEDULE, (0.12, 0.25, 0.5, 1.0), (573, 1158, 1984, 2809)),
])
def test_sigma_to_timestep_table(schedule, sigmas, steps):
    discrete = DiscreteSchedule.from_config(schedule)
    assert [sigma_to_timestep(discrete, s) for s in sigmas] == list(steps)
    with pytest.raises(ValueError, match="sigma"):
        sigma_to_timestep(discrete, 0.0)


def test_schedules_match_their_formulas():
    linear = linear_betas(1000)
    assert linear.dtype == torch.float64 and linear.shape == (1000,)
    assert math.isclose(linear[0], 1e-4) and math.isclose(linear[-1], 0.02)
    assert math.isclose(linear_betas(4000)[-1], 0.005)
    cosine = DiscreteSchedule.from_config(IMPROVED_CIFAR10_SCHEDULE)
    assert cosine.alphas_cumprod.dtype == torch.float64 and cosine.num_steps == 4000
    f = [math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2 for u in (0.0, 0.5)]
    assert math.isclose(cosine.alphas_cumprod[1999], f[1] / f[0], rel_tol=1e-12)
    assert float(cosine_betas(4000).max()) == 0.999
    assert cosine.model_timesteps(torch.tensor(1158.0)) == 289.5
    assert DiscreteSchedule.from_config(ADM_IMAGENET256_SCHEDULE).model_timesteps(torch.tensor(70.0)) == 70.0


class RecordingNet(nn.Module):
    """Stub UNet: epsilon channels = timestep * 1e-3 + x, variance channels = 1e6; records its timesteps."""

    def __init__(self) -> None:
        super().__init__()
        self.config = SimpleNamespace(in_channels=3, out_channels=6)
        self.timesteps = None

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        self.timesteps = timesteps
        eps = x + 1e-3 * timesteps[:, None, None, None]
        return torch.cat([eps, torch.full_like(x, 1e6)], dim=1)


@pytest.mark.parametrize("schedule", [ADM_IMAGENET256_SCHEDULE, IMPROVED_CIFAR10_SCHEDULE])
def test_adapter_score_is_minus_first_channels_over_sigma(schedule, device):
    sde = VPSDE()
    discrete = DiscreteSchedule.from_config(schedule)
    backbone = GuidedDiffusionBackbone(RecordingNet(), discrete, sde).to(device)
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0)).to(device)
    t = torch.tensor([0.1, 0.5], device=device)
    score = backbone(x, t)
    expected_steps = discrete.model_timesteps(backbone.model_step(t)).float()
    assert torch.equal(backbone.net.timesteps, expected_steps)
    eps = x + 1e-3 * expected_steps[:, None, None, None]
    sigma = sde.marginal_std(t)[:, None, None, None]
    assert torch.allclose(score, -eps / sigma, rtol=1e-6, atol=0)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        backbone(x.cpu(), torch.tensor([0.0, 0.5]))


@pytest.mark.parametrize("schedule, steps", [
    (ADM_IMAGENET256_SCHEDULE, (0, 70, 99, 500, 990)),
    (IMPROVED_CIFAR10_SCHEDULE, (0, 573, 2000, 3500)),
])
def test_timestep_mapping_is_monotone_and_matches_alpha_bar(schedule, steps, device):
    sde = VPSDE()
    discrete = DiscreteSchedule.from_config(schedule)
    backbone = GuidedDiffusionBackbone(RecordingNet(), discrete, sde).to(device)
    grid = torch.linspace(1e-4, 1.0, 2001, device=device)
    assert bool((backbone.model_step(grid).diff() > 0).all())
    for k in steps:
        t_k = std_to_time(sde, math.sqrt(1.0 - float(discrete.alphas_cumprod[k])))
        t = torch.tensor([t_k], dtype=torch.float64, device=device)
        assert backbone.model_step(t).item() == pytest.approx(k, abs=1e-6)


def test_linear_schedule_step_is_close_to_1000t_minus_1(device):
    backbone = GuidedDiffusionBackbone(RecordingNet(), DiscreteSchedule.from_config(ADM_IMAGENET256_SCHEDULE),
                                       VPSDE()).to(device)
    t = torch.linspace(1e-3, 0.5, 500, dtype=torch.float64, device=device)
    assert float((backbone.model_step(t) - (1000 * t - 1)).abs().max()) < 0.6


def test_alpha_bar_to_timestep_interpolates_log_alpha_bar(device):
    alphas_cumprod = torch.tensor([0.9, 0.5, 0.1], dtype=torch.float64, device=device)
    alpha_bar = torch.tensor([1.0, 0.9, math.sqrt(0.9 * 0.5), 0.1, 0.01], dtype=torch.float64, device=device)
    expected = torch.tensor([-1.0, 0.0, 0.5, 2.0, 2.0], dtype=torch.float64, device=device)
    assert torch.allclose(alpha_bar_to_timestep(alphas_cumprod, alpha_bar), expected, atol=1e-12)


def test_missing_checkpoint_names_expected_path_and_url(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        load_unet(ADM_IMAGENET256_UNCOND.unet, tmp_path / "256x256_diffusion_uncond.pt")
    message = str(info.value)
    assert "pretrained/guided_diffusion/256x256_diffusion_uncond.pt" in message
    assert "https://openaipublic.blob.core.windows.net/diffusion/jul-2021/256x256_diffusion_uncond.pt" in message
    with pytest.raises(FileNotFoundError, match="march-2021/cifar10_uncond_50M_500K.pt"):
        load_unet(IMPROVED_CIFAR10_UNCOND.unet, tmp_path / "other.pt")


def test_truncated_checkpoint_is_reported(tmp_path):
    data = (DATA / "improved_diffusion_tiny" / "model.pt").read_bytes()
    path = tmp_path / "cifar10_uncond_50M_500K.pt"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt.*cifar10_uncond_50M_500K"):
        load_unet(tiny_config("improved_diffusion_tiny"), path)


def test_architecture_mismatch_lists_keys_and_shapes():
    adm_weights = DATA / "adm_tiny" / "model.pt"
    with pytest.raises(CheckpointError, match="missing keys.*op.weight.*unexpected keys"):
        load_unet(tiny_config("improved_diffusion_tiny"), adm_weights)
    with pytest.raises(CheckpointError, match=r"shape mismatches.*time_embed.0.weight: \(128, 32\) vs \(256, 64\)"):
        load_unet(tiny_config("adm_tiny", model_channels=64, num_head_channels=32), adm_weights)
