"""summary.md names the purifier's defining settings; purify() is readable as one function."""
from __future__ import annotations

import torch

from evaluation.labels import defining_values
from runners.purifiers import purify


def test_summary_names_t_star_lambda_and_dt():
    settings = defining_values({"name": "coup", "t_star": 0.1, "guidance_scale": 1.0, "dt": 0.01,
                                "forward_noise": False, "grad_mode": "full"})
    assert settings == "t* 0.1, lambda 1, dt 0.01, grad_mode full"
    assert defining_values({"name": "none"}) == "no purifier"


def test_purify_with_an_identity_solver_is_the_clamped_round_trip():
    x = torch.tensor([0.0, 0.25, 1.0]).view(1, 1, 1, 3)
    z = torch.ones(3, 1, 1, 1, 3)
    identity = lambda score_fn, x_t, noise, callback: x_t  # noqa: E731
    assert torch.allclose(purify(None, x, z, identity, None, clamp=True), x)
    noised = purify(None, x, z, identity, alpha_bar=0.64, clamp=False)  # 0.8 (2x - 1) + 0.6 z_0, back to [0, 1]
    assert torch.allclose(noised, (0.8 * (2 * x - 1) + 0.6 + 1) / 2)
    assert torch.equal(purify(None, x, z, identity, alpha_bar=0.64, clamp=True).max(), torch.tensor(1.0))
