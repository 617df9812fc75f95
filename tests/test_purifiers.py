"""Purifiers: guidance identities, exact gradients (finite differences), batch independence, bad input."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from attacks.common import repeat_seeds, seeded_call
from attacks.eot import eot_logits
from runners.defended import DefendedClassifier, PurifierContext, build_purifier, parse_purifier_config
from runners.guidance import GuidedScore
from runners.purifiers import DiffusionPurifier, PurifierConfig
from runners.solvers import solve_exact
from utils.images import to_diffusion_space, to_image_space
from utils.config import ConfigError
from tests.toys import TinyClassifier, gaussian_backbone

SHAPE = (1, 2, 2)


def _purifier(name: str = "coup", dtype=torch.float32, device: torch.device | str = "cpu",
              **overrides) -> DiffusionPurifier:
    config = PurifierConfig(name=name, t_star=0.05, dt=1e-2, **overrides)
    classifier = TinyClassifier(4).to(dtype)
    return DiffusionPurifier(gaussian_backbone(), config, classifier).to(device)


def _images(n: int, seed: int = 0, dtype=torch.float32, device: torch.device | str = "cpu") -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (0.2 + 0.6 * torch.rand((n, *SHAPE), generator=gen)).to(device, dtype)


def test_scale_zero_guidance_is_bit_identical_to_base_score(device):
    backbone = gaussian_backbone()
    x = torch.randn(4, *SHAPE).to(device)
    t = torch.full((4,), 0.07, device=device)
    guided = GuidedScore(backbone, TinyClassifier(4).to(device), guidance_scale=0.0)
    assert torch.equal(guided(x, t), backbone(x, t))
    nonzero = GuidedScore(backbone, TinyClassifier(4).to(device), guidance_scale=1.0)
    assert not torch.equal(nonzero(x, t), backbone(x, t))


def test_coup_with_lambda_zero_equals_reverse_only(device):
    x, seeds = _images(3, device=device), torch.tensor([5, 6, 7])
    coup = _purifier("coup", guidance_scale=0.0, device=device)(x, seeds)
    reverse = _purifier("reverse_only", device=device)(x, seeds)
    assert torch.equal(coup, reverse)
    guided = _purifier("coup", guidance_scale=1.0, device=device)(x, seeds)
    assert not torch.equal(guided, reverse)


def test_presets_and_unguided_methods_reject_guidance():
    assert _purifier("diffpure").config.forward_noise and not _purifier("diffpure").config.clamp_output
    assert _purifier("coup").config.guidance_scale == 1.0 and _purifier("coup").config.clamp_output
    with pytest.raises(ConfigError, match="has no guidance"):
        _purifier("diffpure", guidance_scale=1.0)


def test_diffpure_forward_noise_uses_discrete_alpha_bar():
    purifier = DiffusionPurifier(gaussian_backbone(), PurifierConfig(name="diffpure", t_star=0.1))
    assert purifier.alpha_bar == pytest.approx(0.8970, abs=1e-4)


def test_image_alone_equals_image_in_batch(device):
    x, seeds = _images(5, device=device), torch.arange(100, 105)
    for name in ("coup", "diffpure"):
        purifier = _purifier(name, device=device)
        batch = purifier(x, seeds)
        alone = purifier(x[3:4], seeds[3:4])
        assert torch.allclose(batch[3:4], alone, atol=1e-6), name


def test_fresh_noise_per_call_and_fixed_option(device):
    x = _images(2, device=device)
    stochastic = _purifier("reverse_only", device=device)
    assert not torch.equal(stochastic(x), stochastic(x))
    fixed = _purifier("reverse_only", fixed_noise=True, device=device)
    assert torch.equal(fixed(x), fixed(x))


def test_full_gradient_matches_finite_differences(device):
    purifier = _purifier("coup", dtype=torch.float64, device=device, grad_mode="full", guidance_scale=2.0)
    seeds = torch.tensor([11, 12])
    x = _images(2, dtype=torch.float64, device=device).requires_grad_(True)
    torch.autograd.gradcheck(lambda v: purifier(v, seeds), (x,), eps=1e-6, atol=1e-6)


def test_detached_gradient_matches_finite_differences_with_frozen_guidance(device):
    """'detached' is the exact gradient of the solver in which the guidance terms are constants."""
    purifier = _purifier("coup", dtype=torch.float64, device=device, grad_mode="detached", guidance_scale=2.0)
    seeds = torch.tensor([11, 12])
    x = _images(2, dtype=torch.float64, device=device)
    backbone, guided = purifier.backbone, purifier.guided
    recorded: list[torch.Tensor] = []

    def recording_score(x_t, t):
        out = guided(x_t, t)
        recorded.append((out - backbone(x_t, t)).detach())
        return out

    z = purifier.draw_noise(x, seeds)
    with torch.no_grad():
        solve_exact(backbone.sde, recording_score, to_diffusion_space(x), purifier.grid, z[1:])

    def frozen(v: torch.Tensor) -> torch.Tensor:
        steps = iter(recorded)
        out = solve_exact(backbone.sde, lambda x_t, t: backbone(x_t, t) + next(steps), to_diffusion_space(v),
                          purifier.grid, z[1:], checkpoint=False)
        return to_image_space(out.clamp(-1, 1))

    x_req = x.clone().requires_grad_(True)
    w = torch.randn(x.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64).to(device)
    (g_purifier,) = torch.autograd.grad((purifier(x_req, seeds) * w).sum(), x_req)
    numeric = torch.zeros_like(x)
    eps = 1e-6
    for i in range(x.numel()):
        bump = torch.zeros_like(x).view(-1)
        bump[i] = eps
        bump = bump.view_as(x)
        numeric.view(-1)[i] = ((frozen(x + bump) - frozen(x - bump)) * w).sum() / (2 * eps)
    assert torch.allclose(g_purifier, numeric, atol=1e-7)


def test_full_and_detached_gradients_differ_only_with_guidance(device):
    seeds = torch.tensor([3, 4])

    def grad(mode: str, scale: float) -> torch.Tensor:
        purifier = _purifier("coup", dtype=torch.float64, device=device, grad_mode=mode, guidance_scale=scale)
        x = _images(2, dtype=torch.float64, device=device).requires_grad_(True)
        (g,) = torch.autograd.grad(purifier(x, seeds).square().sum(), x)
        return g

    assert not torch.allclose(grad("detached", 2.0), grad("full", 2.0), atol=1e-6)
    assert torch.equal(grad("detached", 0.0), grad("full", 0.0))


def test_backends_agree_with_guidance_in_both_modes(device):
    seeds = torch.tensor([1, 2])
    for mode in ("detached", "full"):
        outs, grads = [], []
        for backend in ("exact", "torchsde"):
            purifier = _purifier("coup", device=device, grad_mode=mode, backend=backend)
            x = _images(2, device=device).requires_grad_(True)
            out = purifier(x, seeds)
            (g,) = torch.autograd.grad(out.square().sum(), x)
            outs.append(out.detach())
            grads.append(g.flatten())
        assert torch.allclose(outs[0], outs[1], atol=1e-5)
        assert torch.nn.functional.cosine_similarity(grads[0], grads[1], dim=0) > 0.999
        # scale too: the adjoint differs from the discrete solver's exact gradient by O(dt) (0.15 at dt 0.01;
        # both are pinned to closed forms in tests/test_formulas.py)
        assert float((grads[0] - grads[1]).norm() / grads[0].norm()) < 0.2


def test_step_callback_sees_every_step_and_needs_the_exact_backend(device):
    x, seeds = _images(2, device=device), torch.tensor([3, 4])
    purifier = _purifier("coup", device=device)
    states = []
    with torch.no_grad():
        recorded = purifier(x, seeds, callback=lambda k, tau, x_t: states.append((k, tau, x_t)))
    assert torch.equal(recorded, purifier(x, seeds).detach())
    assert [(k, tau) for k, tau, _ in states] == [(k, purifier.grid.step(k)[0]) for k in range(purifier.grid.n_steps)]
    assert torch.equal(to_image_space(states[-1][2].clamp(-1.0, 1.0)), recorded)
    with pytest.raises(ValueError, match="exact"):
        _purifier("coup", device=device, backend="torchsde")(x, seeds, callback=lambda k, tau, x_t: None)


@pytest.mark.parametrize("bad,match", [
    (torch.full((1, *SHAPE), float("nan")), "NaN"),
    (torch.full((1, *SHAPE), 1.5), r"\[0, 1\]"),
    (torch.zeros(SHAPE), "shape"),
    (torch.zeros(1, 3, 2, 2), "channels|shape"),
    (torch.zeros(1, *SHAPE, dtype=torch.int64), "float"),
])
def test_bad_images_raise_clear_errors(bad, match):
    with pytest.raises((ValueError, RuntimeError), match=match):
        _purifier("coup")(bad)


@pytest.mark.parametrize("field,value", [("t_star", 0.0), ("t_star", 1.2), ("dt", 0.0), ("dt", -0.1)])
def test_bad_settings_raise_clear_errors(field, value):
    with pytest.raises(ConfigError, match=field):
        dataclasses.replace(PurifierConfig(), **{field: value})


def test_defended_classifier_and_eot_are_plain_logits_models():
    context = PurifierContext(backbone=gaussian_backbone, classifier=TinyClassifier(4))
    purifier = build_purifier(parse_purifier_config({"name": "reverse_only", "t_star": 0.05, "dt": 0.01}), context)
    model = DefendedClassifier(purifier, TinyClassifier(4))
    x = _images(3)
    assert model(x).shape == (3, 3)
    seeds = repeat_seeds(5, torch.tensor([1, 2, 3]), 0, 0, 4)
    logits = eot_logits(seeded_call(model), x, 4, seeds)
    assert logits.shape == (4, 3, 3)
    again = eot_logits(seeded_call(model), x, 4, seeds)
    assert torch.equal(logits, again) and not torch.equal(logits[0], logits[1])
    assert torch.equal(build_purifier(parse_purifier_config({"name": "none"}), context)(x), x)


def test_unknown_purifier_lists_valid_names():
    with pytest.raises(KeyError, match="valid names: .*coup, .*diffpure, .*none, reverse_only") as info:
        parse_purifier_config({"name": "diffpur"})
    assert "unknown purifier 'diffpur'" in str(info.value)
    with pytest.raises(ConfigError, match="unknown key"):
        parse_purifier_config({"name": "coup", "lambda": 1.0})


def test_label_modes_input_and_given_agree_and_given_needs_labels(device):
    x, seeds = _images(3, device=device), torch.tensor([1, 2, 3])
    by_input = _purifier("coup", device=device, label_mode="input")
    predicted = by_input.guidance_classifier(x).argmax(1)
    given = _purifier("coup", device=device, label_mode="given")
    assert torch.equal(by_input(x, seeds), given(x, seeds, labels=predicted))
    other = (predicted + 1) % 3
    assert not torch.equal(given(x, seeds, labels=other), given(x, seeds, labels=predicted))
    with pytest.raises(ValueError, match="needs labels"):
        given(x, seeds)
    with pytest.raises(KeyError, match="valid names: argmax, given, input"):
        _purifier("coup", label_mode="argmx")
