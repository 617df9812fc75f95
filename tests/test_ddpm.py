"""SDEdit's DDPM UNet and DiffPure's ancestral purifier against reference vectors made with the official code."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from ddpm import CELEBAHQ_DDPM, DDPMConfig, DDPMUNet, DDPMUNetConfig, load_ddpm_backbone, load_ddpm_unet
from ddpm.unet import sinusoidal_embedding
from runners.ancestral import AncestralConfig, AncestralPurifier
from runners.backbones import BackboneConfig, build_backbone
from runners.defended import PurifierContext, build_purifier, parse_purifier_config
from runners.purifiers import DiffusionPurifier, PurifierConfig
from utils.checkpoints import CheckpointError
from utils.config import ConfigError, from_dict

DATA = Path(__file__).parent / "data" / "ddpm_celebahq_tiny"
UNET_KEYS = ("in_channels", "out_ch", "ch", "ch_mult", "num_res_blocks", "attn_resolutions", "dropout",
             "resamp_with_conv")


def tiny_config() -> DDPMUNetConfig:
    """The reference tiny model's options, read from its config.json (SDEdit's config layout)."""
    config = json.loads((DATA / "config.json").read_text())["config"]
    return from_dict(DDPMUNetConfig, {**{k: config["model"][k] for k in UNET_KEYS},
                                      "image_size": config["data"]["image_size"]})


def tiny_backbone():
    sde = BackboneConfig(name="ddpm").sde()
    return load_ddpm_backbone(DDPMConfig(unet=tiny_config()), DATA / "model.pt", sde)


def load(name: str, device: torch.device | str = "cpu") -> dict:
    return torch.load(DATA / name, weights_only=True, map_location=device)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def test_tiny_unet_matches_reference_output(device):
    net = load_ddpm_unet(tiny_config(), DATA / "model.pt").to(device)
    case = load("cases.pt")
    assert torch.equal(sinusoidal_embedding(case["t"], net.config.ch), case["temb_sinusoidal"])
    with torch.no_grad():
        out = net(case["x"].to(device), case["t"].to(device))
    assert rel_err(out.cpu(), case["out"]) <= 1e-5
    assert sum(p.numel() for p in net.parameters()) == json.loads((DATA / "config.json").read_text())["n_params"]


def test_real_celebahq_unet_names_and_shapes_on_meta_device():
    reference = json.loads((DATA / "ddpm_celebahq256_keys.json").read_text())
    unet = {k: reference["config"]["model"][k] for k in UNET_KEYS}
    assert from_dict(DDPMUNetConfig, {**unet, "image_size": reference["config"]["data"]["image_size"]}) \
        == CELEBAHQ_DDPM.unet
    with torch.device("meta"):
        net = DDPMUNet(CELEBAHQ_DDPM.unet)
    assert [[k, list(v.shape)] for k, v in net.state_dict().items()] == reference["keys"]
    assert sum(p.numel() for p in net.parameters()) == reference["n_params"] == 113_673_219


def test_missing_checkpoint_says_where_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"celeba_hq\.ckpt.*s3-us-west-2.*pretrained/ddpm/celeba_hq\.ckpt"):
        load_ddpm_unet(tiny_config(), tmp_path / "celeba_hq.ckpt")


def test_wrong_config_fails_with_one_line_mismatch():
    with pytest.raises(CheckpointError, match="does not match.*check ch, ch_mult"):
        load_ddpm_unet(dataclasses.replace(tiny_config(), ch_mult=(1, 2, 2)), DATA / "model.pt")


def test_config_rejects_nonconvolutional_resampling():
    with pytest.raises(ConfigError, match="resamp_with_conv"):
        from_dict(DDPMUNetConfig, {"resamp_with_conv": False})


def test_registered_backbone_is_a_vp_backbone_with_the_discrete_time_map(tmp_path, device):
    config = BackboneConfig(name="ddpm", checkpoint=str(DATA / "model.pt"),
                            model={"unet": dataclasses.asdict(tiny_config())})
    backbone = build_backbone(config, tmp_path).to(device)
    x = load("cases.pt", device)["x"][:2]
    t = torch.tensor([0.1, 0.5], device=device)
    with torch.no_grad():
        eps = backbone.epsilon(x, t)
        expected = backbone.step_epsilon(x, backbone.model_step(t))
        score = backbone(x, t)
    assert torch.equal(eps, expected)
    assert torch.allclose(score, -eps / backbone.sde.marginal_std(t).view(-1, 1, 1, 1))
    assert abs(float(backbone.model_step(torch.tensor(0.5, device=device))) - 499.0) < 1.0


def test_reverse_only_runs_on_the_ddpm_backbone(device):
    purifier = DiffusionPurifier(tiny_backbone(), PurifierConfig(name="reverse_only", t_star=0.02, dt=0.01)).to(device)
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)).to(device)
    with torch.no_grad():
        out = purifier(x, torch.tensor([3]))
    assert out.shape == x.shape and bool(((out >= 0) & (out <= 1)).all())


def test_schedule_tables_match_the_official_runner():
    purifier = AncestralPurifier(tiny_backbone(), AncestralConfig(t_star=0.006))
    ref = load("purify_cases.pt")
    schedule = purifier.schedule
    assert torch.allclose(schedule.betas.float(), ref["betas"], rtol=1e-6, atol=0)
    assert torch.allclose(schedule.alphas_cumprod.float(), ref["alphas_cumprod"], rtol=1e-6, atol=0)
    assert torch.allclose(schedule.logvar, ref["logvar"], rtol=1e-9, atol=1e-9)
    assert purifier.n_steps == ref["purify_t"] == 6


def test_single_reverse_steps_match_reference(device):
    purifier = AncestralPurifier(tiny_backbone(), AncestralConfig()).to(device)
    ref = load("purify_cases.pt", device)
    with torch.no_grad():
        out = torch.cat([purifier.reverse_step(ref["step_x_t"][b:b + 1], int(ref["step_t"][b]),
                                               ref["step_noise"][b:b + 1]) for b in range(len(ref["step_t"]))])
    assert (out - ref["step_out"]).abs().max() <= 1e-5


def stored_noise(ref: dict):
    """The reference run's noise as a NoiseFn: k = 0 forward noise, k >= 1 the k-th reverse step's."""
    return lambda k: ref["purify_forward_noise"] if k == 0 else ref["purify_step_noise"][k - 1]


def test_six_step_purification_matches_reference(device):
    purifier = AncestralPurifier(tiny_backbone(), AncestralConfig(t_star=0.006)).to(device)
    ref = load("purify_cases.pt", device)
    noise = stored_noise(ref)
    with torch.no_grad():
        x_start = purifier.forward_noise(2.0 * ref["purify_x01"] - 1.0, noise(0))
        out = purifier.purify(ref["purify_x01"], noise)
    assert (x_start - ref["purify_x_t_start"]).abs().max() <= 1e-5
    assert (out - ref["purify_out01"]).abs().max() <= 1e-5
    assert (2.0 * out - 1.0 - ref["purify_out_m11"]).abs().max() <= 2e-5


def test_input_gradient_matches_finite_differences(device):
    purifier = AncestralPurifier(tiny_backbone().double(), AncestralConfig(t_star=0.003)).to(device)
    gen = torch.Generator().manual_seed(0)
    x = (0.2 + 0.6 * torch.rand(1, 3, 32, 32, generator=gen, dtype=torch.float64)).to(device)
    w = torch.randn(x.shape, generator=gen, dtype=torch.float64).to(device)
    seeds = torch.tensor([11])
    x_in = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad((purifier(x_in, seeds) * w).sum(), x_in)
    direction = torch.randn(x.shape, generator=gen, dtype=torch.float64).to(device)
    h = 1e-5
    with torch.no_grad():
        diff = ((purifier(x + h * direction, seeds) - purifier(x - h * direction, seeds)) * w).sum() / (2 * h)
    assert float((grad * direction).sum()) == pytest.approx(float(diff), rel=1e-6)


def test_checkpointed_gradient_equals_plain_backprop(device):
    backbone = tiny_backbone().to(device)
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1)).to(device)
    grads = []
    for checkpoint in (True, False):
        purifier = AncestralPurifier(backbone, AncestralConfig(t_star=0.003, checkpoint=checkpoint))
        x_in = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(purifier(x_in, torch.tensor([4])).sum(), x_in)
        grads.append(grad)
    assert torch.allclose(grads[0], grads[1], rtol=1e-5, atol=1e-6)


def test_noise_is_per_image_and_seeded(device):
    purifier = AncestralPurifier(tiny_backbone(), AncestralConfig(t_star=0.002)).to(device)
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2)).to(device)
    with torch.no_grad():
        pair = purifier(x, torch.tensor([7, 8]))
        single = purifier(x[1:], torch.tensor([8]))
        other = purifier(x[1:], torch.tensor([9]))
    assert torch.allclose(pair[1:], single, atol=1e-6)
    assert not torch.allclose(single, other)


def test_registered_purifier_and_its_errors(tmp_path):
    config = parse_purifier_config({"name": "diffpure_ddpm", "t_star": 0.5})
    assert config == AncestralConfig(t_star=0.5)
    purifier = build_purifier(config, PurifierContext(tiny_backbone, torch.nn.Identity(), base_dir=tmp_path))
    assert isinstance(purifier, AncestralPurifier) and purifier.n_steps == 500
    with pytest.raises(ConfigError, match="t_star must lie in"):
        parse_purifier_config({"name": "diffpure_ddpm", "t_star": 0.0})
    with pytest.raises(ConfigError, match="needs a discrete-step backbone"):
        AncestralPurifier(torch.nn.Identity(), AncestralConfig())
