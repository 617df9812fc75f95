"""DiffSmooth and randomized-smoothing certification: Clopper-Pearson radii, abstention, the one-shot denoiser on
analytic and discrete backbones, local smoothing, resumable batch-independent TSVs, Cohen checkpoints, the CLI."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from scipy.stats import beta, norm
from torch import nn

import certify_diffsmooth
from classifiers import ClassifierConfig, build_classifier
from classifiers.cohen import CifarResNet, read_cohen_checkpoint
from classifiers.wide_resnet import Normalized
from guided_diffusion import (ADM_IMAGENET256_SCHEDULE, IMPROVED_CIFAR10_SCHEDULE, DiscreteSchedule,
                              GuidedDiffusionBackbone, UNetConfig, load_unet)
from certification.certify import (ABSTAIN, SmoothingSpec, certify, lower_confidence_bound, predict,
                             predict_from_counts, sample_counts, sample_seeds)
from certification.report import ResultRow, ResultsMismatch, ResultsTSV
from runners.diffsmooth import DiffSmooth, noise_level, one_shot_denoise, schedule_of, smoothing_time
from score_sde import NCSNpp, NCSNppConfig
from diffusion.sde import VPSDE
from tests.toys import TinyClassifier, gaussian_backbone, interrupt_on_call
from utils.config import from_dict
from utils.data import DEBIAN_FASHION_MNIST, DataConfig, load_images
from utils.paths import resolve_path

DATA = Path(__file__).resolve().parent / "data"
# 0.001 ** (1 / 10000) = exp(ln(0.001) / 10000) = exp(-6.907755279e-4), by hand (series to third order)
HAND_P_LOWER = 1.0 - 6.907755279e-4 + 6.907755279e-4**2 / 2 - 6.907755279e-4**3 / 6


class ConstantClassifier(nn.Module):
    """Always predicts class `label` out of `num_classes`."""

    def __init__(self, label: int, num_classes: int = 10) -> None:
        super().__init__()
        self.logits = F.one_hot(torch.tensor(label), num_classes).float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(x.shape[0], -1)


class NoiseArgmaxClassifier(nn.Module):
    """Argmax of the first K pixels: on a constant image plus i.i.d. noise, a uniformly random class."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)[:, : self.num_classes]


def test_constant_classifier_gets_the_clopper_pearson_radius():
    spec = SmoothingSpec(sigma=0.5, num_classes=10, n0=100, n=10_000, alpha=0.001, batch=2500, seed=3)
    outcome = certify(ConstantClassifier(7), torch.full((1, 4, 4), 0.5), index=11, spec=spec)
    assert outcome.prediction == 7
    assert outcome.p_a_lower == pytest.approx(float(beta.ppf(0.001, 10_000, 1)), rel=1e-12)
    assert outcome.p_a_lower == pytest.approx(HAND_P_LOWER, abs=1e-12)
    assert outcome.radius == pytest.approx(0.5 * float(norm.ppf(HAND_P_LOWER)), rel=1e-9)
    assert outcome.radius == pytest.approx(0.5 * 3.2005, abs=1e-3)  # Phi^-1(1 - 6.9053e-4) ~ 3.2005


@pytest.mark.parametrize("n_a, n", [(9_000, 10_000), (520, 1_000), (1, 20)])
def test_lower_bound_is_the_one_sided_beta_quantile(n_a, n):
    assert lower_confidence_bound(n_a, n, 0.001) == pytest.approx(float(beta.ppf(0.001, n_a, n - n_a + 1)))
    assert lower_confidence_bound(0, n, 0.001) == 0.0


def test_uniformly_random_classifier_abstains():
    spec = SmoothingSpec(sigma=0.25, num_classes=10, n0=50, n=500, alpha=0.001, batch=128)
    outcome = certify(NoiseArgmaxClassifier(), torch.full((1, 8, 8), 0.5), index=0, spec=spec)
    assert (outcome.prediction, outcome.radius) == (ABSTAIN, 0.0)
    assert outcome.p_a_lower < 0.2
    assert predict(NoiseArgmaxClassifier(), torch.full((1, 8, 8), 0.5), 0, spec).prediction == ABSTAIN


def test_predict_abstains_on_a_tie_and_predicts_a_clear_winner():
    assert predict_from_counts(np.array([50, 50, 0]), 0.001) == ABSTAIN
    assert predict_from_counts(np.array([0, 60, 40]), 0.001) == ABSTAIN  # binomtest p = 0.057
    assert predict_from_counts(np.array([2, 90, 8]), 0.001) == 1


def test_noise_is_per_image_and_batch_independent(device):
    spec = SmoothingSpec(sigma=0.3, num_classes=10, n0=5, n=37, batch=4)
    x = torch.full((1, 8, 8), 0.5, device=device)
    model = NoiseArgmaxClassifier()
    first = predict(model, x, 4, spec)
    counts = [sample_counts(model, x, sample_seeds(0, 4, 2, 37), 0.3, 10, batch) for batch in (1, 7, 37)]
    assert all((c == counts[0]).all() for c in counts) and counts[0].sum() == 37
    assert not (sample_counts(model, x, sample_seeds(0, 5, 2, 37), 0.3, 10, 37) == counts[0]).all()
    assert predict(model, x, 4, spec) == first


@pytest.mark.parametrize("sigma", [0.12, 0.25, 0.5, 1.0])
def test_vp_level_solves_alpha_squared_equals_one_over_one_plus_four_sigma_squared(sigma):
    sde = VPSDE(0.1, 20.0)
    t_star = torch.tensor(smoothing_time(sde, 2 * sigma), dtype=torch.float64)
    alpha = float(sde.marginal_mean_coeff(t_star))
    assert alpha**2 == pytest.approx(1.0 / (1.0 + 4.0 * sigma**2), rel=1e-12)
    assert float(sde.marginal_std(t_star)) / alpha == pytest.approx(2 * sigma, rel=1e-9)
    level = noise_level(gaussian_backbone(), 2 * sigma)
    assert level.alpha**2 == pytest.approx(1.0 / (1.0 + 4.0 * sigma**2), rel=1e-14)
    assert level.t == pytest.approx(float(t_star), rel=1e-14)


def test_one_shot_denoiser_is_the_gaussian_posterior_mean(device):
    backbone = gaussian_backbone(mu=0.1, sigma0=0.3)
    sigma = 0.25
    x = torch.rand(3, 1, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    x_noisy = (x + sigma * noise).to(device)
    level = noise_level(backbone, 2 * sigma)
    alpha, var0 = level.alpha, 0.3**2
    x_t = alpha * (2 * x_noisy - 1)
    posterior_mean = 0.1 + alpha * var0 * (x_t - alpha * 0.1) / (alpha**2 * var0 + 1 - alpha**2)
    out = one_shot_denoise(backbone, x_noisy, level, clamp=False)
    assert torch.allclose(out, (posterior_mean + 1) / 2, rtol=0, atol=1e-12)
    clamped = one_shot_denoise(backbone, 3 * x_noisy, level, clamp=True)
    assert clamped.min() >= 0 and clamped.max() <= 1 and (clamped == 1).any()


def tiny_guided_backbone(schedule) -> GuidedDiffusionBackbone:
    """The tiny reference ADM UNet with a released schedule."""
    config = from_dict(UNetConfig, json.loads((DATA / "adm_tiny" / "config.json").read_text())["config"])
    net = load_unet(config, DATA / "adm_tiny" / "model.pt")
    return GuidedDiffusionBackbone(net, DiscreteSchedule.from_config(schedule), VPSDE()).eval()


@pytest.mark.parametrize("schedule, steps", [(ADM_IMAGENET256_SCHEDULE, (70, 145, 259, 396)),
                                             (IMPROVED_CIFAR10_SCHEDULE, (573, 1158, 1984, 2809))])
def test_discrete_level_takes_diffsmooths_step_and_calls_the_net_there(schedule, steps, device):
    backbone = tiny_guided_backbone(schedule).to(device)
    reference = DiscreteSchedule.from_config(schedule)
    assert torch.allclose(schedule_of(backbone).alphas_cumprod.cpu(), reference.alphas_cumprod, rtol=1e-12, atol=0)
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2)).to(device)
    for sigma, step in zip((0.12, 0.25, 0.5, 1.0), steps):
        level = noise_level(backbone, 2 * sigma)
        alpha_bar = float(reference.alphas_cumprod[step])
        assert level.alpha == pytest.approx(math.sqrt(alpha_bar), rel=1e-12) and f"k={step}" in level.description
        x_t = level.alpha * (2 * x - 1)
        with torch.no_grad():
            eps = backbone.net(x_t, torch.full((2,), step * reference.timestep_scale, device=device))[:, :3]
            expected = ((x_t - math.sqrt(1 - alpha_bar) * eps) / level.alpha).clamp(-1, 1)
            assert torch.allclose(one_shot_denoise(backbone, x, level), (expected + 1) / 2, atol=1e-4)


def test_local_smoothing_reuses_the_seeded_noise_and_averages_softmax(device):
    backbone, classifier = gaussian_backbone(), TinyClassifier(16, num_classes=3).to(device)
    model = DiffSmooth(backbone, classifier, sigma=0.25, image_shape=(1, 4, 4), m=4, local_sigma=0.1).to(device)
    expected_noise = (torch.randn(4, 1, 4, 4, generator=torch.Generator().manual_seed(42)) * 0.1).to(device)
    assert torch.equal(model.local_noise, expected_noise)
    x = torch.rand(5, 1, 4, 4, generator=torch.Generator().manual_seed(3)).to(device)
    with torch.no_grad():
        out = model(x)
        x0 = model.denoise(x)
        probs = torch.stack([F.softmax(classifier(x0 + noise), -1) for noise in expected_noise]).mean(0)
        assert torch.allclose(out.exp(), probs, atol=1e-6)
        assert torch.equal(model(x), out) and torch.allclose(model(x[2:3]), out[2:3], atol=1e-6)
        model.vote = "hard"
        votes = torch.stack([F.one_hot(classifier(x0 + n).argmax(-1), 3) for n in expected_noise]).float().mean(0)
        assert torch.allclose(model(x).exp(), votes)


def write_cohen_checkpoint(path: Path, net: nn.Module, arch: str, prefix: str = "1.") -> None:
    """A file in Cohen's layout: {'arch', 'state_dict' of Sequential(NormalizeLayer, net), 'epoch'}."""
    torch.save({"arch": arch, "epoch": 90, "state_dict": {prefix + k: v for k, v in net.state_dict().items()}}, path)


def test_cohen_resnet110_checkpoint_loads_and_normalises(tmp_path):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = CifarResNet(110).eval()
    keys = list(net.state_dict())
    assert len(net.layer1) == len(net.layer3) == 18 and net.layer3[0].conv1.out_channels == 64
    assert "layer2.0.downsample.0.weight" in keys and "layer1.0.downsample.0.weight" not in keys
    assert keys[:2] == ["conv1.weight", "bn1.weight"] and keys[-2:] == ["fc.weight", "fc.bias"]
    path = tmp_path / "checkpoint.pth.tar"
    write_cohen_checkpoint(path, net, "cifar_resnet110")
    model = build_classifier(ClassifierConfig(name="cohen-cifar10-resnet110", checkpoint=path.name), tmp_path)
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    reference = Normalized(net, (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))
    with torch.no_grad():
        assert torch.allclose(model(x), reference(x), atol=1e-5)
    with pytest.raises(ValueError, match="arch 'cifar_resnet110'.*cohen-imagenet-resnet50"):
        build_classifier(ClassifierConfig(name="cohen-imagenet-resnet50", checkpoint=str(path)), tmp_path)


def test_dataparallel_prefix_and_normaliser_keys(tmp_path):
    path = tmp_path / "rn50.pth.tar"
    torch.save({"arch": "resnet50", "state_dict": {"1.module.fc.bias": torch.zeros(2), "0.means": torch.zeros(3)}},
               path)
    arch, state = read_cohen_checkpoint(path, "source")
    assert arch == "resnet50" and list(state) == ["fc.bias"]
    torch.save({"arch": "resnet50", "state_dict": {"fc.bias": torch.zeros(2)}}, path)
    with pytest.raises(ValueError, match="not under '1.'"):
        read_cohen_checkpoint(path, "source")


@pytest.mark.parametrize("name, fragments", [
    ("cohen-cifar10-resnet110", ("pretrained/cohen/models/cifar10/resnet110/noise_0.25/checkpoint.pth.tar",
                                 "locuslab/smoothing")),
    ("cohen-imagenet-resnet50", ("pretrained/cohen/models/imagenet/resnet50/noise_0.25", "locuslab/smoothing")),
    ("timm-beit", ("pretrained/diffsmooth/beit_large_patch16_224", "javyduck/DiffSmooth")),
    ("imagenet-resnet50", ("pretrained/imagenet/resnet50-0676ba61.pth", "IMAGENET1K_V1")),
])
def test_missing_weights_name_the_expected_path_and_source(tmp_path, name, fragments):
    with pytest.raises(FileNotFoundError) as err:
        build_classifier(ClassifierConfig(name=name), tmp_path)
    message = str(err.value)
    assert "\n" not in message and all(fragment in message for fragment in fragments)


def test_results_tsv_refuses_another_config_and_cuts_a_torn_line(tmp_path):
    path = tmp_path / "certify.tsv"
    results = ResultsTSV(path, {"N": 10}, {"run": 1})
    results.append(ResultRow(3, 1, 1, 0.25, 1, "0:00:01"))
    with path.open("a") as f:
        f.write("8\t2\t")
    reopened = ResultsTSV(path, {"N": 10}, {"run": 2})
    assert list(reopened.rows) == [3] and path.read_text().endswith("0:00:01\n")
    assert len(json.loads(path.with_suffix(".json").read_text())["runs"]) == 2
    with pytest.raises(ResultsMismatch, match="another config"):
        ResultsTSV(path, {"N": 20}, {"run": 3})
    empty = tmp_path / "empty.tsv"
    ResultsTSV(empty, {"N": 10}, {"run": 1})
    assert ResultsTSV(empty, {"N": 20}, {"run": 2}).rows == {}  # nothing certified yet: a new config may start
    assert json.loads(empty.with_suffix(".json").read_text())["config"] == {"N": 20}


def tiny_demo_config(tmp_path: Path) -> Path:
    """A CLI config: 2 real Fashion-MNIST images, a tiny random NCSN++ and a random 1-channel WRN-10-1."""
    ncsnpp = NCSNppConfig(nf=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(), image_size=32,
                          num_channels=1, dropout=0.0, init_scale=1.0)
    net = NCSNpp(ncsnpp, generator=torch.Generator().manual_seed(5))
    torch.save(net.state_dict(), tmp_path / "score.pth")
    config = {
        "data": {"name": "fashion-mnist", "pad_to": 32, "num_sub": 2, "data_seed": 0},
        "backbone": {"name": "score_sde", "checkpoint": "score.pth",
                     "model": {"nf": 16, "ch_mult": [1, 2], "num_res_blocks": 1, "attn_resolutions": [],
                               "image_size": 32, "num_channels": 1, "dropout": 0.0, "init_scale": 1.0}},
        "classifier": {"name": "tiny-wrn", "in_channels": 1, "num_classes": 10, "seed": 10},
        "smoothing": {"sigma": 0.25, "m": 2, "local_sigma": 0.1},
        "certify": {"N0": 10, "N": 20},
        "run": {"batch": 10, "output_dir": "out"},
    }
    path = tmp_path / "demo.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def stable_rows(tsv: Path) -> list[list[str]]:
    """TSV rows without the time column."""
    return [line.split("\t")[:5] for line in tsv.read_text().splitlines()]


@pytest.mark.skipif(not (DEBIAN_FASHION_MNIST / "t10k-images-idx3-ubyte.gz").is_file(),
                    reason="Fashion-MNIST not installed: apt-get install dataset-fashion-mnist")
def test_cli_certifies_resumes_and_is_batch_independent(tmp_path, monkeypatch):
    config = tiny_demo_config(tmp_path)
    data = load_images(DataConfig(name="fashion-mnist", pad_to=32, num_sub=2))
    full = certify_diffsmooth.main(["--config", str(config), "--output_dir", str(tmp_path / "full"), "--batch", "20"])
    rows = stable_rows(full.tsv)
    assert rows[0] == ["idx", "label", "predict", "radius", "correct"] and len(rows) == 3
    assert [int(r[0]) for r in rows[1:]] == data.indices.tolist() and [int(r[1]) for r in rows[1:]] == data.y.tolist()
    assert full.table.read_text().count("| 0.00 |") == 1 and full.plot.stat().st_size > 1000
    sidecar = json.loads(full.tsv.with_suffix(".json").read_text())
    assert sidecar["runs"][0]["seeds"]["certify_seed"] == 0 and "torch" in sidecar["runs"][0]["versions"]

    original = interrupt_on_call(monkeypatch, certify_diffsmooth.MODES, "certify", 2)
    with pytest.raises(KeyboardInterrupt):
        certify_diffsmooth.main(["--config", str(config), "--batch", "7"])
    partial = tmp_path / "out" / "certify_sigma0.25.tsv"
    assert len(stable_rows(partial)) == 2
    monkeypatch.setitem(certify_diffsmooth.MODES, "certify", original)
    resumed = certify_diffsmooth.main(["--config", str(config), "--batch", "3"])
    assert stable_rows(resumed.tsv) == rows
    with pytest.raises(ResultsMismatch):
        certify_diffsmooth.main(["--config", str(config), "--N", "30"])


def test_imagenet_folder_is_read_lazily_resized_and_centre_cropped(tmp_path):
    from PIL import Image
    from torchvision import transforms

    for wnid in range(1000):
        (tmp_path / f"n{wnid:08d}").mkdir()
    pixels = np.random.RandomState(0).randint(0, 256, size=(300, 400, 3), dtype=np.uint8)
    for wnid, name in ((3, "a.JPEG"), (3, "b.JPEG"), (998, "c.png")):
        Image.fromarray(pixels).save(tmp_path / f"n{wnid:08d}" / name)
    data = load_images(DataConfig(name="imagenet", data_dir=str(tmp_path)))
    assert data.x.shape == (3, 3, 224, 224) and data.y.tolist() == [3, 3, 998]
    expected = transforms.ToTensor()(transforms.CenterCrop(224)(transforms.Resize(256)(Image.fromarray(pixels))))
    assert torch.equal(data.x[2], expected)
    assert load_images(DataConfig(name="imagenet-256", data_dir=str(tmp_path), num_sub=1)).x.shape[-1] == 256
    (tmp_path / "n00000000").rmdir()
    with pytest.raises(ValueError, match="999 class folders, expected 1000"):
        load_images(DataConfig(name="imagenet", data_dir=str(tmp_path)))


def test_dry_run_prints_the_resolved_config(tmp_path, capsys):
    config = Path(__file__).resolve().parents[1] / "configs" / "diffsmooth" / "cifar10.yml"
    assert certify_diffsmooth.main(["--config", str(config), "--sigma", "1.0", "--N", "100000", "--dry-run",
                                    "--set", "smoothing.vote=hard", "--set", "certify.N=100000"]) is None
    printed = capsys.readouterr().out
    resolved = yaml.safe_load(printed)
    assert printed.endswith(f"# output folder: {resolve_path(resolved['run']['output_dir'], config.parent)}\n")
    assert resolved["smoothing"]["sigma"] == 1.0 and resolved["certify"]["N"] == 100000
    assert resolved["smoothing"]["vote"] == "hard" and resolved["backbone"]["model"]["unet"]["num_heads"] == 4
