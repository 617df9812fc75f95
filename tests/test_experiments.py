"""Experiments: the toy's closed forms and SDE behaviour, and every experiment's main() in a reduced setting."""
from __future__ import annotations

import argparse
import csv
import gzip
import json
import math
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from experiments import common, confidence_path, purified_images, salt_pepper, speed, sweeps, toy_label_flip
from experiments.image_setup import add_model_arguments, defense_seeds, load_setup
from experiments.salt_pepper import salt_and_pepper
from experiments.toy_mixture import MixtureBackbone, NOISE_MODELS, ToySetting, flip_mask, purify_toy
from diffusion.sde import VPSDE
from tests.figures import check_figure
from utils.images import to_image_space


@pytest.fixture
def figures(monkeypatch) -> list:
    """The figures the experiments save, in order (each is still written to disk)."""
    saved = []
    original = common.save_figure

    def recording(fig, path):
        saved.append(fig)
        return original(fig, path)

    monkeypatch.setattr(common, "save_figure", recording)
    return saved


def test_mixture_score_is_the_gradient_of_the_marginal_log_density():
    backbone = MixtureBackbone(VPSDE(0.1, 20.0), mu=0.5, s=0.2)
    x = torch.linspace(-1.5, 1.5, 31, dtype=torch.float64).view(-1, 1).requires_grad_(True)
    for t in (1e-4, 0.05, 0.3, 1.0):
        (grad,) = torch.autograd.grad(backbone.log_density(x, t).sum(), x)
        assert torch.allclose(backbone(x.detach(), torch.full((31,), t, dtype=torch.float64)), grad,
                              rtol=1e-10, atol=1e-10)
    # the marginal is a density: it integrates to one on a fine grid
    grid = torch.linspace(-4.0, 4.0, 8001, dtype=torch.float64).view(-1, 1)
    assert torch.trapezoid(backbone.log_density(grid, 0.2).exp().squeeze(1), grid.squeeze(1)) == pytest.approx(1.0)


def test_bayes_classifier_is_the_logistic_posterior_and_noise_models_keep_their_promises():
    mu, s = 0.5, 0.2
    x = torch.linspace(-1.0, 1.0, 21, dtype=torch.float64)
    xi = torch.linspace(-2.0, 2.0, 21, dtype=torch.float64)
    u = to_image_space(x).unsqueeze(1)
    bayes = NOISE_MODELS.get("boundary")(0.0, mu, s, xi)(u).exp()[:, 1]
    assert torch.allclose(bayes, torch.sigmoid(2.0 * mu * x / s**2), atol=1e-12)
    label = NOISE_MODELS.get("label")(0.4, mu, s, xi)(u).exp()[:, 1]
    assert torch.allclose(label, 0.6 * bayes + 0.2, atol=1e-12)
    shifted = NOISE_MODELS.get("boundary")(0.1, mu, s, xi)(u).exp()[:, 1]
    assert torch.allclose(shifted, torch.sigmoid(2.0 * mu * (x - 0.1 * xi) / s**2), atol=1e-12)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        NOISE_MODELS.get("label")(1.0, mu, s, xi)


def test_unguided_reverse_sde_maps_the_marginal_back_to_the_data_mixture():
    setting = ToySetting(t_star=0.3)
    backbone = setting.backbone()
    gen = torch.Generator().manual_seed(0)
    n = 10_000
    x_start = backbone.sample(n, setting.t_star, gen)
    z = torch.randn((setting.grid().n_steps, n, 1), generator=gen, dtype=torch.float64)
    x_end = purify_toy(setting, None, 0.0, x_start, z).squeeze(1)

    def ks_distance(samples: torch.Tensor) -> float:
        ordered = samples.sort().values
        cdf = backbone.data_cdf(ordered)
        ranks = torch.arange(1, n + 1, dtype=torch.float64) / n
        return float(torch.maximum(ranks - cdf, cdf - (ranks - 1.0 / n)).max())

    assert ks_distance(x_start.squeeze(1)) > 0.1  # the start is far from the data: the check has power
    assert ks_distance(x_end) < 1.63 / math.sqrt(n)  # KS 99 % critical value
    assert x_end.abs().mean() == pytest.approx(0.5, abs=0.01)


def test_guidance_with_the_bayes_classifier_lowers_the_flip_rate():
    setting = ToySetting()
    n = 2000
    gen = torch.Generator().manual_seed(1)
    xi = torch.randn(n, generator=gen, dtype=torch.float64)
    z = torch.randn((setting.grid().n_steps, n, 1), generator=gen, dtype=torch.float64)
    unguided = flip_mask(setting, "boundary", 0.0, 0.0, 0.05, xi, z).double().mean()
    guided = flip_mask(setting, "boundary", 0.0, 2.0, 0.05, xi, z).double().mean()
    assert 0.3 < unguided < 0.5  # near the boundary the reverse SDE alone flips often
    assert guided < unguided - 0.1
    fixed_label = ToySetting(label_mode="input")  # yhat = the prediction at the start (class 1) for the whole path
    assert flip_mask(fixed_label, "boundary", 0.0, 2.0, 0.05, xi, z).double().mean() < unguided - 0.1


def test_toy_main_writes_figure_and_numbers(tmp_path: Path, figures):
    payload = toy_label_flip.main(["--out", str(tmp_path), "--paths", "300", "--lambdas", "0,2",
                                   "--noise", "boundary=0,0.2", "label=0.5", "--starts", "0.05",
                                   "--t-star", "0.02", "--dt", "0.002"])
    assert (tmp_path / "flip_probability.png").stat().st_size > 10_000
    check_figure(figures[-1], [2, 1])  # panels: boundary noise (delta 0, 0.2), label noise (0.5)
    with (tmp_path / "flip_probability.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(payload["rows"]) == 3 * 2
    stored = json.loads((tmp_path / "flip_probability.json").read_text())
    assert stored["setting"]["t_star"] == 0.02 and stored["paths_per_point"] == 300
    for row in stored["rows"]:
        assert row["ci_low"] <= row["p"] <= row["ci_high"] and row["flips"] == round(row["p"] * 300)
    zero = [r for r in stored["rows"] if r["guidance_scale"] == 0.0]
    assert len({r["flips"] for r in zero}) == 1  # lambda = 0 ignores the classifier: one shared baseline


# ---- image experiments on a tiny setup: synthetic Fashion-MNIST IDX files, Gaussian backbone, random WRN-10-1 ----

TINY_YAML = """
data: {name: fashion-mnist, data_dir: fmnist, num_sub: 4, data_seed: 0, pad_to: 32}
backbone: {name: gaussian, model: {mu: 0.0, sigma0: 0.5}}
classifier: {name: tiny-wrn, in_channels: 1, num_classes: 10, seed: 0}
purifier: {name: coup, t_star: 0.02, guidance_scale: 1.0, dt: 0.01, backend: exact}
attacks:
  - {name: pgd_eot, iterations: 1, eot_samples: 1, eval_samples: 1, sanity_checks: false}
eval: {seed: 121, adv_batch_size: 2}
"""


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tiny")
    (root / "fmnist").mkdir()
    rng = np.random.RandomState(0)
    _write_idx(root / "fmnist" / "t10k-images-idx3-ubyte.gz", rng.randint(0, 256, (8, 28, 28)))
    _write_idx(root / "fmnist" / "t10k-labels-idx1-ubyte.gz", rng.randint(0, 10, 8))
    (root / "tiny.yml").write_text(TINY_YAML)
    return root / "tiny.yml"


def _setup(config: Path):
    parser = argparse.ArgumentParser()
    add_model_arguments(parser, num_images=4)
    return load_setup(parser.parse_args(["--config", str(config)]))


def test_recorded_purification_equals_the_purifier_and_calls_back_every_step(tiny_config: Path):
    setup = _setup(tiny_config)
    x, seeds = setup.images.x, defense_seeds(0, setup.images.indices)
    for method in ("coup", "diffpure", "reverse_only"):
        purifier = setup.purifier(method, t_star=0.03)
        calls = []
        with torch.no_grad():
            recorded = purifier(x, seeds, callback=lambda k, tau, x_t: calls.append((k, tau, x_t)))
            plain = purifier(x, seeds)
        assert torch.allclose(recorded, plain, atol=1e-6), method
        path_end = calls[-1][2].clamp(-1.0, 1.0) if purifier.config.clamp_output else calls[-1][2]
        assert torch.allclose(to_image_space(path_end), plain, atol=1e-6), method
        assert [k for k, _, _ in calls] == list(range(purifier.grid.n_steps)) == [0, 1, 2]
        assert [tau for _, tau, _ in calls] == pytest.approx([0.03, 0.02, 0.01])


def test_confidence_path_main(tiny_config: Path, tmp_path: Path, figures):
    payload = confidence_path.main(["--config", str(tiny_config), "--out", str(tmp_path), "--num-images", "4"])
    with (tmp_path / "confidence_path.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * (2 + 1)  # two methods, t* = 0.02 / dt = 0.01: start + 2 steps
    assert all(0.0 <= float(r["p_true_mean"]) <= 1.0 and float(r["p_adv_ci_low"]) <= float(r["p_adv_mean"])
               for r in rows)
    starts = [r for r in rows if r["step"] == "0"]
    assert starts[0]["p_true_mean"] == starts[1]["p_true_mean"]  # both methods start from the same x_adv
    arrays = np.load(tmp_path / "confidence_path.npz")
    assert arrays["coup_p_true"].shape == (4, 3) and arrays["coup_t"][0] == pytest.approx(0.02)
    assert payload["attack"]["params"]["iterations"] == 1  # taken from the config's pgd_eot entry
    assert (tmp_path / "confidence_path.png").stat().st_size > 10_000
    check_figure(figures[-1], [2, 2])  # p_true and p_adv panels: reverse-only and COUP, bands of the mean


def test_sweeps_main_saves_points_and_resumes(tiny_config: Path, tmp_path: Path, monkeypatch, figures):
    args = ["--config", str(tiny_config), "--out", str(tmp_path), "--num-images", "2",
            "--t-stars", "0.01,0.02", "--lambdas", "0,1"]
    first = sweeps.main(args)
    assert sorted(p.name for p in (tmp_path / "points").iterdir()) == [
        "t_star=0.01_lambda=1.json", "t_star=0.02_lambda=0.json", "t_star=0.02_lambda=1.json"]
    assert [(r["sweep"], r["t_star"], r["guidance_scale"]) for r in first["rows"]] == [
        ("t_star", 0.01, 1.0), ("t_star", 0.02, 1.0), ("lambda", 0.02, 0.0), ("lambda", 0.02, 1.0)]

    def fail(*args, **kwargs):
        raise AssertionError("a stored point was recomputed")

    monkeypatch.setattr(sweeps, "run_point", fail)
    assert sweeps.main(args)["rows"] == first["rows"]
    with pytest.raises(ValueError, match="other settings"):
        sweeps.main(args + ["--attack-param", "iterations=2"])
    assert (tmp_path / "sweeps.png").is_file() and (tmp_path / "sweeps.csv").is_file()
    check_figure(figures[0], [2, 2])  # clean and robust accuracy with Wilson error bars


def test_purified_images_main(tiny_config: Path, tmp_path: Path):
    purified_images.main(["--config", str(tiny_config), "--out", str(tmp_path), "--num-images", "3"])
    with (tmp_path / "purified_images.csv").open() as f:
        cells = list(csv.DictReader(f))
    assert [c["row"] for c in cells[::3]] == ["clean", "adversarial", "diffpure", "reverse_only", "coup"]
    assert all(float(c["l2_to_clean"]) == 0.0 for c in cells if c["row"] == "clean")
    eps = 8.0 / 255.0
    assert all(0.0 < float(c["linf_to_clean"]) <= eps + 1e-6 for c in cells if c["row"] == "adversarial")
    assert np.load(tmp_path / "purified_images.npz")["coup"].shape == (3, 1, 32, 32)
    assert (tmp_path / "purified_images.png").stat().st_size > 10_000


def test_speed_main(tiny_config: Path, tmp_path: Path, figures):
    payload = speed.main(["--config", str(tiny_config), "--out", str(tmp_path), "--num-images", "2",
                          "--t-stars", "0.01,0.03", "--repeats", "2", "--warmup", "0", "--with-grad"])
    rows = payload["rows"]
    assert len(rows) == 3 * 2 * 2
    assert {(r["t_star"], r["solver_steps"]) for r in rows} == {(0.01, 1), (0.03, 3)}
    assert all(r["seconds_per_image"] > 0.0 and r["ci_low"] <= r["seconds_per_image"] <= r["ci_high"] for r in rows)
    assert json.loads((tmp_path / "speed.json").read_text())["environment"]["device"] == "cpu"
    assert (tmp_path / "speed.png").is_file()
    check_figure(figures[-1], [6])  # 3 methods x (purify, gradient), t-interval error bars


def test_salt_and_pepper_is_seeded_per_image_nested_and_of_the_right_amount(device):
    x = torch.full((3, 2, 64, 64), 0.5, device=device)
    seeds = torch.tensor([11, 12, 13])
    assert torch.equal(salt_and_pepper(x, 0.0, seeds), x)
    noisy = salt_and_pepper(x, 0.2, seeds)
    assert torch.equal(noisy[1:2], salt_and_pepper(x[1:2], 0.2, seeds[1:2]))  # independent of the batch
    assert torch.equal(noisy[:, 0], noisy[:, 1])  # a pixel is hit in all channels
    hit = noisy != 0.5
    assert float(hit.double().mean()) == pytest.approx(0.2, abs=0.01)
    assert float((noisy == 0.0).double().mean()) == pytest.approx(0.1, abs=0.01)
    assert bool((salt_and_pepper(x, 0.4, seeds) != 0.5)[hit].all())  # larger amounts corrupt a superset


def test_salt_pepper_main(tiny_config: Path, tmp_path: Path, figures):
    args = ["--config", str(tiny_config), "--out", str(tmp_path), "--num-images", "4", "--amounts", "0,0.3"]
    payload = salt_pepper.main(args)
    assert [(r["method"], r["amount"]) for r in payload["rows"]] == [
        (m, a) for m in ("none", "reverse_only", "coup") for a in (0.0, 0.3)]
    assert len(list((tmp_path / "points").iterdir())) == 6
    assert salt_pepper.main(args)["rows"] == payload["rows"]
    assert (tmp_path / "salt_pepper.png").is_file() and (tmp_path / "salt_pepper.csv").is_file()
    check_figure(figures[-1], [3])  # none, reverse-only, COUP with Wilson bands
