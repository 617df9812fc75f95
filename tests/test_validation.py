"""Validation at the edge: bad settings and inputs are refused with one line before any work."""
from __future__ import annotations

import pytest
import torch

from attacks.apgd import ApgdEotConfig
from attacks.apgd_ce import ApgdCeConfig
from attacks.autoattack import AutoAttackConfig
from attacks.pgd import PGDEOTConfig
from runners.defended import DefendedClassifier
from runners.purifiers import DiffusionPurifier, PurifierConfig
from tests.toys import TinyClassifier, gaussian_backbone
from utils.config import ConfigError

SHAPE = (1, 2, 2)


def one_line(err: pytest.ExceptionInfo) -> str:
    """The exception's message, asserted to be one line."""
    text = str(err.value)
    assert "\n" not in text and text
    return text


def defended(**overrides) -> DefendedClassifier:
    config = PurifierConfig(name="coup", t_star=0.05, dt=1e-2, **overrides)
    classifier = TinyClassifier(4)
    return DefendedClassifier(DiffusionPurifier(gaussian_backbone(), config, classifier), classifier)


@pytest.mark.parametrize("t_star,dt,t_end", [(0.1, 0.5, 1e-5), (0.05, 0.06, 0.0), (0.02, 0.021, 0.001)])
def test_dt_larger_than_t_star_is_refused(t_star, dt, t_end):
    with pytest.raises(ConfigError) as err:
        PurifierConfig(t_star=t_star, dt=dt, t_end=t_end)
    assert f"larger than t_star {t_star}" in one_line(err)


@pytest.mark.parametrize("t_end", [0.0, 1e-5])
def test_dt_equal_to_t_star_is_one_step(t_end):
    config = PurifierConfig(name="reverse_only", t_star=0.1, dt=0.1, t_end=t_end)
    assert DiffusionPurifier(gaussian_backbone(), config).grid.n_steps == 1


def test_negative_guidance_needs_the_explicit_opt_in():
    with pytest.raises(ConfigError) as err:
        PurifierConfig(guidance_scale=-1.0)
    assert "anti-guidance" in one_line(err) and "allow_anti_guidance" in str(err.value)
    assert PurifierConfig(guidance_scale=-1.0, allow_anti_guidance=True).guidance_scale == -1.0


THREAT_CONFIGS = [PGDEOTConfig, ApgdEotConfig, ApgdCeConfig, AutoAttackConfig]


@pytest.mark.parametrize("config_type", THREAT_CONFIGS)
@pytest.mark.parametrize("eps", [1.5, 8.0])
def test_linf_eps_outside_the_image_range_is_refused(config_type, eps):
    with pytest.raises(ConfigError) as err:
        config_type(eps=eps)
    assert "(0, 1] for Linf" in one_line(err)


@pytest.mark.parametrize("config_type", THREAT_CONFIGS)
@pytest.mark.parametrize("norm", ["Linf", "L2"])
@pytest.mark.parametrize("eps", [0.0, -0.1])
def test_non_positive_eps_is_refused(config_type, norm, eps):
    with pytest.raises(ConfigError) as err:
        config_type(norm=norm, eps=eps)
    assert "must be > 0" in one_line(err)


@pytest.mark.parametrize("config_type", THREAT_CONFIGS)
def test_the_threat_model_is_shared(config_type):
    """Default radius per norm, an L2 eps above 1 (ImageNet's 3.0) accepted, eval_samples checked."""
    assert config_type().radius == pytest.approx(8 / 255) and config_type(norm="L2").radius == 0.5
    assert config_type(norm="L2", eps=3.0).radius == 3.0
    with pytest.raises(ConfigError) as err:
        config_type(eval_samples=0)
    assert "eval_samples must be >= 1" in one_line(err)


@pytest.mark.parametrize("x,needle", [
    (torch.rand(2, *SHAPE, dtype=torch.float64), "float64"),
    (torch.rand(0, *SHAPE), "non-empty"),
    (torch.rand(*SHAPE), "(B, C, H, W)"),
    (torch.rand(2, 0, 2, 2), "non-empty"),
    (torch.randint(0, 2, (2, *SHAPE)), "float tensor"),
    (torch.full((2, *SHAPE), 1.5), "[0, 1]"),
    (torch.full((2, *SHAPE), float("nan")), "NaN"),
])
def test_public_api_refuses_bad_images_with_one_line(x, needle):
    model = defended()
    with pytest.raises(ValueError) as err:
        model(x)
    assert needle in one_line(err)
    with pytest.raises(ValueError) as err:
        model.purifier(x)
    assert needle in one_line(err)


def test_float64_model_takes_float64_images():
    model = defended().double()
    assert model(torch.rand(2, *SHAPE, dtype=torch.float64)).dtype == torch.float64


def test_guided_purification_refuses_inference_mode():
    """Guidance differentiates the classifier inside the forward, which inference mode forbids."""
    with torch.inference_mode(), pytest.raises(RuntimeError) as err:
        defended(guidance_scale=1.0).purifier(torch.rand(2, *SHAPE))
    assert "use torch.no_grad(), not torch.inference_mode()" in one_line(err)


def test_unguided_purification_runs_in_inference_mode():
    with torch.inference_mode():
        assert defended(guidance_scale=0.0).purifier(torch.rand(2, *SHAPE)).shape == (2, *SHAPE)
