"""grad_mode 'surrogate': the forward is exactly COUP's, the backward differentiates a softplus copy of the guidance
classifier, and it tends to the exact gradient as beta grows; the config, labels and gradient statement say so."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from classifiers.surrogate import smooth_surrogate
from evaluation.labels import defining_values, purifier_label
from runners.defended import gradient_statement
from runners.guidance import GuidedScore
from runners.purifiers import DiffusionPurifier, PurifierConfig, resolve_purifier_config
from utils.config import ConfigError, from_dict
from utils.images import to_image_space
from tests.toys import ReLUClassifier, TinyClassifier, gaussian_backbone

SHAPE = (1, 2, 2)


def _purifier(grad_mode: str, **overrides) -> DiffusionPurifier:
    config = PurifierConfig(name="coup", t_star=0.05, dt=1e-2, guidance_scale=2.0, grad_mode=grad_mode, **overrides)
    return DiffusionPurifier(gaussian_backbone(), config, ReLUClassifier(4).double()).double()


def _images(n: int = 2) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    return (0.2 + 0.6 * torch.rand((n, *SHAPE), generator=gen)).double()


def _input_gradient(purifier: DiffusionPurifier, x: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
    x = x.clone().requires_grad_(True)
    w = torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=x.dtype)
    (grad,) = torch.autograd.grad((purifier(x, seeds) * w).sum(), x)
    return grad


def test_smooth_surrogate_replaces_every_relu_and_leaves_the_original():
    classifier = ReLUClassifier(4)
    surrogate = smooth_surrogate(classifier, beta=5.0)
    assert sum(isinstance(m, nn.ReLU) for m in classifier.modules()) == 2
    assert not any(isinstance(m, nn.ReLU) for m in surrogate.modules())
    assert [m.beta for m in surrogate.modules() if isinstance(m, nn.Softplus)] == [5.0, 5.0]
    x = torch.rand(3, *SHAPE, generator=torch.Generator().manual_seed(2))
    assert torch.allclose(smooth_surrogate(classifier, beta=1e4)(x), classifier(x), atol=1e-3)
    assert not torch.allclose(surrogate(x), classifier(x), atol=1e-3)
    with pytest.raises(ValueError, match="no nn.ReLU modules"):
        smooth_surrogate(TinyClassifier(4), beta=5.0)
    with pytest.raises(ValueError, match="beta > 0"):
        smooth_surrogate(classifier, beta=0.0)


def test_surrogate_score_has_the_exact_value_and_the_surrogates_jacobian():
    """At the score wrapper: value = s + lambda grad log p (true classifier); vector-Jacobian product = that of
    s + lambda grad log p_surrogate(yhat), with yhat the true classifier's label."""
    backbone, classifier = gaussian_backbone(), ReLUClassifier(4).double()
    surrogate = smooth_surrogate(classifier, beta=3.0)
    x = (2 * _images(3) - 1).requires_grad_(True)
    t = torch.full((3,), 0.03, dtype=torch.float64)
    w = torch.randn(x.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    out = GuidedScore(backbone, classifier, 2.0, grad_mode="surrogate", surrogate=surrogate)(x, t)
    exact = GuidedScore(backbone, classifier, 2.0, grad_mode="full")(x, t)
    assert torch.equal(out, exact)
    labels = classifier(to_image_space(x)).argmax(dim=1)
    log_p = F.log_softmax(surrogate(to_image_space(x)), dim=1).gather(1, labels.view(-1, 1)).sum()
    (smooth,) = torch.autograd.grad(log_p, x, create_graph=True)
    (expected,) = torch.autograd.grad(((backbone(x, t) + 2.0 * smooth) * w).sum(), x)
    (got,) = torch.autograd.grad((out * w).sum(), x)
    assert torch.allclose(got, expected, rtol=1e-10, atol=1e-12)
    (full,) = torch.autograd.grad((exact * w).sum(), x)
    assert not torch.allclose(got, full, atol=1e-3)


def test_surrogate_purifier_forward_is_coup_and_gradient_tends_to_the_exact_one():
    x, seeds = _images(), torch.tensor([5, 6])
    full, surrogate = _purifier("full"), _purifier("surrogate", surrogate_beta=3.0)
    tracked = x.clone().requires_grad_(True)  # the surrogate branch runs only when the input is tracked
    assert torch.equal(full(tracked, seeds), surrogate(tracked, seeds))
    assert torch.equal(full(x, seeds), surrogate(x, seeds))
    exact = _input_gradient(full, x, seeds)
    assert not torch.allclose(_input_gradient(surrogate, x, seeds), exact, atol=1e-4)
    sharp = _input_gradient(_purifier("surrogate", surrogate_beta=1e5), x, seeds)
    assert torch.allclose(sharp, exact, rtol=1e-3, atol=1e-6)


def test_surrogate_config_defaults_labels_and_errors():
    config = resolve_purifier_config(PurifierConfig(name="coup", grad_mode="surrogate"))
    assert config.surrogate_beta == 10.0
    resolved = {"name": "coup", "t_star": 0.1, "guidance_scale": 1.0, "dt": 0.01, "grad_mode": "surrogate",
                "surrogate_beta": 10.0, "backend": "exact"}
    assert "surrogate grads, softplus beta 10" in purifier_label(resolved)
    assert "surrogate softplus beta 10" in defining_values(resolved)
    assert "SURROGATE (softplus beta 10" in gradient_statement(resolved)
    with pytest.raises(ConfigError, match="needs grad_mode 'surrogate'"):
        from_dict(PurifierConfig, {"grad_mode": "full", "surrogate_beta": 5.0}, "purifier")
    with pytest.raises(ConfigError, match="grad_mode"):
        from_dict(PurifierConfig, {"grad_mode": "smooth"}, "purifier")


def test_surrogate_on_the_torchsde_backend_matches_the_exact_backend_within_the_adjoints_error():
    """Same forward on both backends; the adjoint's surrogate gradient tends to the exact backend's (Gaussian score)."""
    x, seeds = _images(), torch.tensor([5, 6])
    exact = _purifier("surrogate", surrogate_beta=3.0)
    adjoint = _purifier("surrogate", surrogate_beta=3.0, backend="torchsde")
    assert torch.allclose(exact(x, seeds), adjoint(x, seeds), atol=1e-10)
    g_exact, g_adjoint = _input_gradient(exact, x, seeds), _input_gradient(adjoint, x, seeds)
    assert F.cosine_similarity(g_exact.flatten(), g_adjoint.flatten(), dim=0) > 0.99
    assert not torch.allclose(g_adjoint, _input_gradient(_purifier("full", backend="torchsde"), x, seeds), atol=1e-4)


def test_surrogate_is_only_built_when_there_is_a_guidance_term():
    config = PurifierConfig(name="coup", t_star=0.05, dt=1e-2, guidance_scale=0.0, grad_mode="surrogate")
    purifier = DiffusionPurifier(gaussian_backbone(), config, TinyClassifier(4).double())  # no ReLU: fine at lambda 0
    assert purifier.guidance_surrogate is None
    with pytest.raises(ConfigError, match="finite value > 0"):
        from_dict(PurifierConfig, {"grad_mode": "surrogate", "surrogate_beta": float("inf")}, "purifier")
