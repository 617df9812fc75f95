"""NCSN++ against the official Score-SDE reference vectors, key layout, and checkpoint loading errors."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from diffusion.sde import VPSDE
from score_sde import CheckpointError, NCSNpp, NCSNppConfig, ScoreSDEBackbone, load_score_model, save_score_checkpoint
from score_sde import checkpoint as checkpoint_module
from score_sde import fir
from utils.config import ConfigError, from_dict

DATA = Path(__file__).parent / "data"
# the README's tiny config: vp/cifar10_ddpmpp_deep_continuous with nf 16, ch_mult [1, 2, 2], 2 blocks
TINY = {"nf": 16, "ch_mult": [1, 2, 2], "num_res_blocks": 2, "attn_resolutions": [16], "fir": False,
        "fir_kernel": [1, 3, 3, 1], "embedding_type": "positional", "dropout": 0.1}
DEEP_PARAMS = 106_632_579


def tiny_config(**overrides) -> NCSNppConfig:
    """The reference tiny config, built the YAML way."""
    return from_dict(NCSNppConfig, {**TINY, **overrides})


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b|."""
    return float((a - b).abs().max() / b.abs().max())


def reference(name: str) -> tuple[Path, dict[str, torch.Tensor]]:
    """(checkpoint path, cases) of a reference folder."""
    folder = DATA / name
    return folder / "checkpoint.pth", torch.load(folder / "cases.pt", weights_only=True)


@pytest.mark.parametrize("name, use_fir", [("ncsnpp_tiny", False), ("ncsnpp_tiny_fir", True)])
def test_reproduces_official_outputs_and_scores(name: str, use_fir: bool, device: torch.device) -> None:
    path, cases = reference(name)
    net = load_score_model(tiny_config(fir=use_fir), path).to(device)
    assert not net.training
    x = cases["x"].to(device)
    with torch.inference_mode():
        out = net(x, cases["labels"].to(device))
        score = ScoreSDEBackbone(net, VPSDE(0.1, 20.0, 1000))(x, cases["t"].to(device))
    assert rel_err(out.cpu(), cases["net_out"]) <= 1e-5
    assert rel_err(score.cpu(), cases["score"]) <= 1e-5


def test_deep_cifar10_keys_order_shapes_and_size_match_official() -> None:
    reference_keys = json.loads((DATA / "ncsnpp_cifar10_deep_keys.json").read_text())["keys"]
    with torch.device("meta"):
        net = NCSNpp(NCSNppConfig())
    params = dict(net.named_parameters())
    ours = [[name, list(t.shape), name in params] for name, t in net.state_dict().items()]
    assert ours == reference_keys
    assert sum(p.numel() for p in params.values()) == DEEP_PARAMS
    assert sum(torch.Size(s).numel() for _, s, is_param in reference_keys if is_param) == DEEP_PARAMS


def test_loads_ema_weights_of_the_official_checkpoint() -> None:
    path, _ = reference("ncsnpp_tiny")
    raw = torch.load(path, weights_only=True)
    net = load_score_model(tiny_config(), path)
    named = list(net.named_parameters())
    assert len(named) == len(raw["ema"]["shadow_params"])
    assert all(torch.equal(p, s) for (_, p), s in zip(named, raw["ema"]["shadow_params"]))
    assert any(not torch.equal(p, raw["model"]["module." + n]) for n, p in named)
    assert torch.equal(net.sigmas, raw["model"]["module.sigmas"])


def test_saved_ema_differs_from_model_and_is_what_loads(tmp_path: Path) -> None:
    config = tiny_config(num_res_blocks=1)
    net = NCSNpp(config, generator=torch.Generator().manual_seed(0)).eval()
    ema = [p.detach() + 0.01 * (i + 1) for i, p in enumerate(net.parameters())]
    save_score_checkpoint(tmp_path / "ckpt.pth", net, ema, step=7)
    raw = torch.load(tmp_path / "ckpt.pth", weights_only=True)
    assert set(raw) == {"model", "ema", "optimizer", "step"} and raw["step"] == 7
    assert all(k.startswith("module.") for k in raw["model"])
    loaded = load_score_model(config, tmp_path / "ckpt.pth")
    assert all(torch.equal(p, e) for p, e in zip(loaded.parameters(), ema))
    assert not any(torch.equal(p, q) for p, q in zip(loaded.parameters(), net.parameters()))


@pytest.mark.parametrize("prefix, zip_format", [("", True), ("module.", True), ("module.", False)])
def test_plain_state_dict_loads(tmp_path: Path, prefix: str, zip_format: bool) -> None:
    path, cases = reference("ncsnpp_tiny")
    state = load_score_model(tiny_config(), path).state_dict()
    torch.save({prefix + k: v for k, v in state.items()}, tmp_path / "plain.pt",
               _use_new_zipfile_serialization=zip_format)
    net = load_score_model(tiny_config(), tmp_path / "plain.pt")
    with torch.inference_mode():
        assert rel_err(net(cases["x"], cases["labels"]), cases["net_out"]) <= 1e-5


def test_fourier_ddpm_variant_round_trips_with_fixed_projection(tmp_path: Path) -> None:
    config = tiny_config(embedding_type="fourier", resblock_type="ddpm", scale_by_sigma=True,
                         centered=False, num_res_blocks=1, nonlinearity="elu")
    net = NCSNpp(config, generator=torch.Generator().manual_seed(1)).eval()
    trainable = [p for p in net.parameters() if p.requires_grad]
    assert len(trainable) == len(list(net.parameters())) - 1  # the Fourier W is fixed, as officially
    save_score_checkpoint(tmp_path / "f.pth", net, [p.detach() for p in trainable], step=1)
    loaded = load_score_model(config, tmp_path / "f.pth")
    x, sigma = torch.rand(2, 3, 32, 32), torch.tensor([0.05, 3.0])
    with torch.inference_mode():
        assert torch.equal(loaded(x, sigma), net(x, sigma))


def test_eval_is_deterministic_and_train_uses_dropout(device: torch.device) -> None:
    net = NCSNpp(tiny_config(num_res_blocks=1, dropout=0.5, init_scale=1.0),
                 generator=torch.Generator().manual_seed(2)).to(device)
    x, labels = torch.randn(1, 3, 32, 32).to(device), torch.tensor([300.0], device=device)
    with torch.inference_mode():
        net.eval()
        assert torch.equal(net(x, labels), net(x, labels))
        net.train()
        assert not torch.equal(net(x, labels), net(x, labels))


def test_gradients_reach_the_input(device: torch.device) -> None:
    net = NCSNpp(tiny_config(num_res_blocks=1, init_scale=1.0), generator=torch.Generator().manual_seed(3)).to(device)
    x = torch.randn(2, 3, 32, 32).to(device).requires_grad_(True)
    net.eval()(x, torch.tensor([10.0, 900.0], device=device)).square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_missing_file_names_pretrained_path_and_official_source(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as info:
        load_score_model(NCSNppConfig(), tmp_path / "nope.pth")
    message = str(info.value)
    assert "pretrained/score_sde/checkpoint_8.pth" in message
    assert "yang-song/score_sde_pytorch" in message and "vp/cifar10_ddpmpp_deep_continuous" in message
    assert "drive.google.com" in message and "\n" not in message


@pytest.mark.parametrize("content", ["half", "junk"])
def test_truncated_or_junk_file_is_a_clear_error(tmp_path: Path, content: str) -> None:
    data = (DATA / "ncsnpp_tiny" / "checkpoint.pth").read_bytes()
    bad = tmp_path / "bad.pth"
    bad.write_bytes(data[: len(data) // 2] if content == "half" else b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="truncated or corrupt") as info:
        load_score_model(tiny_config(), bad)
    assert "\n" not in str(info.value)


class _RunsCode:
    """A pickle payload whose unpickling would create a file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def test_pickle_that_would_run_code_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    torch.save({"model": {"x": _RunsCode(marker)}}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match="could run code") as info:
        load_score_model(tiny_config(), tmp_path / "evil.pth")
    assert "weights_only=True" in str(info.value) and "\n" not in str(info.value)
    assert not marker.exists()


def test_architecture_mismatch_lists_keys_and_shapes() -> None:
    path, _ = reference("ncsnpp_tiny")
    with pytest.raises(CheckpointError) as info:
        load_score_model(tiny_config(num_res_blocks=1), path)
    message = str(info.value)
    assert "unexpected keys [all_modules." in message and "more)" in message and "\n" not in message
    with pytest.raises(CheckpointError, match=r"all_modules\.0\.weight: \(64, 16\) vs \(128, 32\)"):
        load_score_model(tiny_config(nf=32), path)


def test_wrong_ema_length_is_reported(tmp_path: Path) -> None:
    path, _ = reference("ncsnpp_tiny")
    raw = torch.load(path, weights_only=True)
    raw["ema"]["shadow_params"] = raw["ema"]["shadow_params"][:-1]
    torch.save(raw, tmp_path / "short_ema.pth")
    with pytest.raises(CheckpointError, match="EMA has 287 shadow params but the network has 288"):
        load_score_model(tiny_config(), tmp_path / "short_ema.pth")


def test_failed_save_leaves_previous_checkpoint_intact(tmp_path: Path, monkeypatch) -> None:
    net = NCSNpp(tiny_config(num_res_blocks=1), generator=torch.Generator().manual_seed(4))
    ema = [p.detach() for p in net.parameters()]
    target = tmp_path / "ckpt.pth"
    save_score_checkpoint(target, net, ema, step=1)
    before = target.read_bytes()

    def broken_save(obj, f):
        Path(f).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint_module.torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_score_checkpoint(target, net, ema, step=2)
    assert target.read_bytes() == before and sorted(tmp_path.iterdir()) == [target]
    with pytest.raises(CheckpointError, match="EMA has 1 shadow params"):
        save_score_checkpoint(target, net, ema[:1], step=3)


@pytest.mark.parametrize("override, fragment", [
    ({"progressive": "output_skip"}, "output_skip"),
    ({"attention_type": "legacy"}, "legacy"),
    ({"attn_resolutions": [12]}, r"attn_resolutions \[12\] are not among"),
    ({"image_size": 30}, "divisible"),
    ({"fir": True, "resblock_type": "ddpm"}, "fused FIR conv"),
])
def test_unsupported_config_values_fail_clearly(override: dict, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        tiny_config(**override)


def test_unsupported_literal_fails_when_built_in_python() -> None:
    with pytest.raises(ConfigError, match=r"progressive='residual' is not supported.*\['none'\]"):
        NCSNppConfig(progressive="residual")


def test_fir_resampling_keeps_constants_and_halves_or_doubles_size(device: torch.device) -> None:
    x = torch.full((1, 2, 8, 8), 3.0, device=device)
    up, down = fir.upsample_2d(x, (1, 3, 3, 1)), fir.downsample_2d(x, (1, 3, 3, 1))
    assert up.shape == (1, 2, 16, 16) and down.shape == (1, 2, 4, 4)
    assert torch.allclose(up[..., 2:-2, 2:-2], x.new_tensor(3.0))
    assert torch.allclose(down[..., 1:-1, 1:-1], x.new_tensor(3.0))


def test_fir_upsampling_of_an_impulse_is_the_scaled_kernel(device: torch.device) -> None:
    x = torch.zeros(1, 1, 4, 4, device=device)
    x[0, 0, 1, 1] = 1.0
    taps = torch.tensor([1.0, 3.0, 3.0, 1.0])
    kernel = torch.outer(taps, taps) / 64 * 4
    up = fir.upsample_2d(x, (1, 3, 3, 1))[0, 0].cpu()
    assert torch.allclose(up[1:5, 1:5], kernel) and torch.isclose(up.sum(), torch.tensor(4.0))
