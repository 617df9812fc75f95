"""summary.md names the purifier's defining settings; purify() is readable as one function."""
from __future__ import annotations

import torch

from attacks.registry import attack_config
from evaluation.labels import defining_values
from evaluation.summary import describe_config
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


def test_a_cascade_is_described_stage_by_stage_with_each_budget():
    config = attack_config("cascade", {"attacks": [
        {"name": "pgd_eot", "iterations": 7, "eot_samples": 3, "step_size": 0.01},
        {"name": "apgd_eot", "loss": "dlr", "iterations": 5, "eot_samples": 2},
        {"name": "selective_eot", "iterations": 4, "eot_samples": 2, "norm": "L2", "eps": 0.5}]})
    text = describe_config("cascade", config)
    assert text.startswith("cascade (each stage on the survivors of the previous ones, survival by worst score: ")
    assert "pgd_eot (Linf, eps 0.03137, 7 x 3 EOT, step 0.01)" in text
    assert "apgd_eot_dlr (Linf, eps 0.03137, DLR loss, 5 x 2 EOT, step from 0.06275 (2 eps), halved adaptively)" in text
    assert "selective_eot (L2, eps 0.5, CE loss, 4 x 2 EOT (selective aggregation), step from 1 (2 eps)" in text
