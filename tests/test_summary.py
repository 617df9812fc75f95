"""summary.md names the purifier's defining settings and each attack's gradient path; purify() is one function."""
from __future__ import annotations

import csv
import statistics
from pathlib import Path

import torch

from attacks.registry import attack_config
from evaluation.labels import defining_values
from evaluation.summary import attack_gradient, describe_config, gradient_lines
from runners.defended import gradient_statement
from runners.gradient_path import ADJOINT_FIDELITY, STRAIGHT_THROUGH, TRANSFER
from runners.purifiers import purify

REPO = Path(__file__).resolve().parents[1]


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
    assert "selective_eot (L2, eps 0.5, DLR loss, 4 x 2 EOT (selective aggregation), step from 1 (2 eps)" in text


COUP_ADJOINT = {"name": "coup", "backend": "torchsde", "dt": 0.001, "guidance_scale": 1.0, "grad_mode": "detached"}


def test_the_gradient_statement_follows_the_purifier_kind_and_its_grad_mode():
    exact = {**COUP_ADJOINT, "backend": "exact", "dt": 0.01, "grad_mode": "full"}
    assert gradient_statement(exact) == ("gradient: exact (backprop through the discretised solver, dt 0.01), "
                                         "guidance term differentiated")
    assert "APPROXIMATE" in gradient_statement(COUP_ADJOINT)
    assert "cosine 0.48 and 2x the norm" in gradient_statement(COUP_ADJOINT)
    assert "not on this model" in gradient_statement(COUP_ADJOINT)
    assert "not audited at this dt" in gradient_statement({**COUP_ADJOINT, "dt": 0.005})
    diffpure = {"name": "diffpure", "backend": "torchsde", "dt": 0.01, "grad_mode": "full"}
    assert "cosine 0.0092 and 63x the norm" in gradient_statement(diffpure)  # the unguided (reverse-only) audit
    assert "(median of 4 images, reverse_only)" in gradient_statement(diffpure)
    assert gradient_statement({"name": "diffpure_ddpm", "t_star": 0.5}) == \
        "gradient: exact (backprop through the DDPM ancestral chain from t* 0.5)"
    assert gradient_statement({"name": "lm", "steps": 5, "grad_mode": "bpda"}) == STRAIGHT_THROUGH
    assert "the 5 likelihood-maximisation steps" in gradient_statement({"name": "lm", "steps": 5, "grad_mode": "full"})
    assert gradient_statement({"name": "aid", "def_step": 10, "grad_mode": "bpda"}) == STRAIGHT_THROUGH
    assert "the 10 purification steps" in gradient_statement({"name": "aid", "def_step": 10, "grad_mode": "exact"})
    assert "no purifier" in gradient_statement({"name": "none"})


def test_the_attack_decides_when_it_bypasses_the_purifier_backward():
    pgd, bpda = attack_config("pgd_eot"), attack_config("bpda_eot")
    assert attack_gradient("pgd_eot", pgd, COUP_ADJOINT) == gradient_statement(COUP_ADJOINT)
    assert attack_gradient("bpda_eot", bpda, COUP_ADJOINT) == STRAIGHT_THROUGH
    assert attack_gradient("bpda_eot_diffpure", attack_config("bpda_eot_diffpure"), COUP_ADJOINT) == STRAIGHT_THROUGH
    assert attack_gradient("pgd_eot", pgd, COUP_ADJOINT, target="classifier") == TRANSFER
    same = attack_config("cascade", {"attacks": [{"name": "pgd_eot"}, {"name": "apgd_eot"}]})
    assert attack_gradient("cascade", same, COUP_ADJOINT) == gradient_statement(COUP_ADJOINT)
    mixed = attack_config("cascade", {"attacks": [{"name": "pgd_eot"}, {"name": "bpda_eot"}]})
    assert attack_gradient("cascade", mixed, COUP_ADJOINT) == \
        f"pgd_eot: {gradient_statement(COUP_ADJOINT)}; bpda_eot: {STRAIGHT_THROUGH}"
    assert attack_gradient("cascade", mixed, COUP_ADJOINT, target="classifier") == TRANSFER
    assert gradient_lines({"a": "gradient: x", "b": "gradient: x"}) == ["Attack gradient: x."]
    assert gradient_lines({"a": "gradient: x", "b": "gradient: y"}) == \
        ["Attack gradients:", "- a: gradient: x", "- b: gradient: y"]


def test_the_quoted_adjoint_fidelity_is_the_committed_audit():
    assert {purifier for purifier, _ in ADJOINT_FIDELITY} == {"coup", "reverse_only"}
    for (purifier, dt), (cosine, ratio) in ADJOINT_FIDELITY.items():
        with open(REPO / f"docs/gradient_audit/{purifier}_dt{dt:g}/gradient_audit.csv") as f:
            rows = list(csv.DictReader(f))
        assert len(rows) == 4
        assert f"{statistics.median(float(r['adjoint_vs_exact_cosine']) for r in rows):.3g}" == f"{cosine:.3g}"
        assert f"{statistics.median(float(r['adjoint_vs_exact_norm_ratio']) for r in rows):.3g}" == f"{ratio:.3g}"
