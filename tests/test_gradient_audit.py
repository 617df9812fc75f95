"""The gradient audit: passes exact gradients, flags a deliberately wrong one, compares backends and noise draws."""
from __future__ import annotations

import torch

from experiments.gradient_audit import audit_images, audit_loss, cosine_and_ratio, flat_row
from runners.defended import DefendedClassifier
from runners.purifiers import DiffusionPurifier, PurifierConfig
from tests.toys import ReLUClassifier, TinyClassifier, gaussian_backbone


class WrongSquare(torch.autograd.Function):
    """Forward x^2, backward claims d/dx = 1.5 x (the true derivative is 2 x)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * 1.5 * x


def test_audit_passes_an_exact_gradient_and_flags_a_wrong_one():
    x = torch.linspace(0.1, 0.9, 12, dtype=torch.float64).view(1, 3, 2, 2)
    right = audit_loss(lambda v: torch.sin(v * v).sum(), x, n_random=2, seed=0, tolerance=1e-3)
    wrong = audit_loss(lambda v: torch.sin(WrongSquare.apply(v)).sum(), x, n_random=2, seed=0, tolerance=1e-3)
    assert right["ok"] and all(c["ok"] for c in right["checks"].values())
    assert not wrong["ok"] and not any(c["ok"] for c in wrong["checks"].values())
    assert wrong["checks"]["gradient"]["best_rel_error"] > 0.1


def test_cosine_and_ratio():
    g = torch.tensor([1.0, 0.0])
    assert cosine_and_ratio(2 * g, g) == {"cosine": 1.0, "norm_ratio": 2.0}
    assert abs(cosine_and_ratio(torch.tensor([0.0, 1.0]), g)["cosine"]) < 1e-12


def test_audit_of_a_guided_toy_purifier_reports_every_comparison():
    config = PurifierConfig(name="coup", t_star=0.05, dt=0.01, grad_mode="full")
    purifier = DiffusionPurifier(gaussian_backbone(), config, TinyClassifier(4).double())
    model = DefendedClassifier(purifier, TinyClassifier(4, seed=1).double()).double().eval()
    x = torch.full((1, 1, 2, 2), 0.45, dtype=torch.float64)
    (record,) = audit_images(model, x, torch.tensor([1]), torch.tensor([7]), seed=0, n_random=1, tolerance=1e-4)
    assert record["exact_vs_fd"]["ok"]
    assert record["adjoint_vs_exact"]["cosine"] > 0.9  # the smooth Gaussian score: the adjoint is close
    assert record["detached_vs_full"]["cosine"] < 1.0
    assert -1.0 <= record["noise_draws_cosine"] < 1.0
    assert "surrogate_vs_full" not in record  # a tanh classifier has no ReLU to smooth


def test_audit_of_a_torchsde_run_measures_its_adjoint_against_the_exact_gradient():
    x = torch.full((1, 1, 2, 2), 0.45, dtype=torch.float64)
    records = {}
    for backend in ("exact", "torchsde"):
        config = PurifierConfig(name="coup", t_star=0.05, dt=0.01, grad_mode="full", backend=backend)
        purifier = DiffusionPurifier(gaussian_backbone(), config, TinyClassifier(4).double())
        model = DefendedClassifier(purifier, TinyClassifier(4, seed=1).double()).double().eval()
        (records[backend],) = audit_images(model, x, torch.tensor([1]), torch.tensor([7]), seed=0, n_random=1,
                                           tolerance=1e-4)
    assert records["torchsde"]["adjoint_vs_exact"]["norm_ratio"] != 1.0  # not the adjoint against itself
    assert flat_row(records["torchsde"]) == flat_row(records["exact"])


def test_audit_compares_the_softplus_surrogate_with_a_relu_guidance_classifier():
    config = PurifierConfig(name="coup", t_star=0.05, dt=0.01, grad_mode="full", guidance_scale=2.0)
    purifier = DiffusionPurifier(gaussian_backbone(), config, ReLUClassifier(4).double())
    model = DefendedClassifier(purifier, TinyClassifier(4, seed=1).double()).double().eval()
    x = torch.full((1, 1, 2, 2), 0.45, dtype=torch.float64)
    (record,) = audit_images(model, x, torch.tensor([1]), torch.tensor([7]), seed=0, n_random=1, tolerance=1e-4,
                             surrogate_beta=3.0)
    sharp = audit_images(model, x, torch.tensor([1]), torch.tensor([7]), seed=0, n_random=1, tolerance=1e-4,
                         surrogate_beta=1e5)[0]
    assert record["surrogate_vs_full"]["cosine"] < sharp["surrogate_vs_full"]["cosine"]
    assert abs(sharp["surrogate_vs_full"]["cosine"] - 1.0) < 1e-6
    assert flat_row(record)["surrogate_vs_full_cosine"] == record["surrogate_vs_full"]["cosine"]


def test_eval_option_writes_the_audit_into_the_run_folder(tmp_path):
    import json

    import eval_sde_adv
    from experiments.audit_table import main as table_main
    from tests.test_eval import TINY, run_dir_of

    args = ["--config", str(TINY), "--num_sub", "2", "--attack", "pgd_eot", "--set", "attacks.0.iterations=1",
            "--set", "attacks.0.eot_samples=1", "--set", "attacks.0.eval_samples=1", "--output_dir", str(tmp_path)]
    assert eval_sde_adv.main([*args, "--gradient_audit", "1"]) == 0
    run_dir = run_dir_of(tmp_path)
    gradients = json.loads((run_dir / "summary.json").read_text())["gradient"]  # per attack key
    assert gradients["pgd_eot"].startswith("gradient: exact (backprop through the discretised solver")
    assert gradients["pgd_eot_transfer"].startswith("gradient: none of the defense's (transfer")
    audit = json.loads((run_dir / "gradient_audit.json").read_text())
    assert len(audit["images"]) == 1 and "adjoint_vs_exact" in audit["images"][0]
    assert "adjoint_vs_exact_cosine" in (run_dir / "gradient_audit.csv").read_text().splitlines()[0]
    table_main(["--audits", str(tmp_path), "--out", str(tmp_path)])  # the audit table reads run folders too
    assert (tmp_path / "audit_table.md").read_text().splitlines()[2].startswith("| coup | 0.005 | 1 | ")


def test_audit_table_summarises_each_audit_by_median_and_range(tmp_path):
    import json

    from experiments.audit_table import main as table_main

    def image(index: int, ok: bool, error: float, cosine: float) -> dict:
        return {"index": index, "exact_vs_fd": {"ok": ok, "checks": {"gradient": {"best_rel_error": error}}},
                "adjoint_vs_exact": {"cosine": cosine, "norm_ratio": 2 * cosine}, "noise_draws_cosine": 0.5}

    for dt, images in ((0.01, [image(1, True, 1e-3, 0.1), image(2, False, 0.03, 0.3), image(3, True, 2e-3, 0.2)]),
                       (0.001, [image(1, True, 1e-4, 0.9)])):
        folder = tmp_path / f"reverse_only_dt{dt}"
        folder.mkdir()
        meta = {"config": {"purifier": {"name": "reverse_only", "dt": dt}}}
        (folder / "gradient_audit.json").write_text(json.dumps({"metadata": meta, "images": images}))
    (tmp_path / "none").mkdir()  # a run without a diffusion purifier: finite differences only
    bare = {"index": 1, "exact_vs_fd": {"ok": True, "checks": {"gradient": {"best_rel_error": 1e-5}}}}
    (tmp_path / "none" / "gradient_audit.json").write_text(json.dumps(
        {"metadata": {"config": {"purifier": {"name": "none"}}}, "images": [bare]}))
    table_main(["--audits", str(tmp_path), "--out", str(tmp_path)])
    lines = (tmp_path / "audit_table.md").read_text().splitlines()
    assert lines[3].startswith("| reverse_only | 0.01 | 3 | 2/3 (max rel. err. 3.0e-02) | 0.2 [0.1, 0.3] | 0.4 [0.2, 0.6] | - |")
    assert lines[2].startswith("| none | - | 1 | 1/1 (max rel. err. 1.0e-05) | - | - | - | - | - |")
    assert lines[4].startswith("| reverse_only | 0.001 | 1 | 1/1 (max rel. err. 1.0e-04) | 0.9 [0.9, 0.9] |")
