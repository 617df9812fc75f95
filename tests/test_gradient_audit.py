"""The gradient audit: passes exact gradients, flags a deliberately wrong one, compares backends and noise draws."""
from __future__ import annotations

import json

import pytest
import torch

from experiments.audit_table import main as table_main
from experiments.gradient_audit import (audit_images, audit_loss, cosine_and_ratio, flat_row, input_gradient, read_audit,
                                       write_audit)
from runners.defended import DefendedClassifier
from runners.purifiers import DiffusionPurifier, IdentityPurifier, PurifierConfig
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


def rotated(grad: torch.Tensor, sine: float) -> torch.Tensor:
    """grad (any shape) turned by asin(sine) towards a fixed direction orthogonal to it, its norm kept."""
    g = grad.flatten() / grad.norm()
    w = torch.randn(g.shape, generator=torch.Generator().manual_seed(5), dtype=g.dtype)
    u = w - (w @ g) * g
    return (grad.norm() * ((1 - sine**2) ** 0.5 * g + sine * u / u.norm())).view_as(grad)


class RotatedSinSquare(torch.autograd.Function):
    """Forward sum(sin(x^2)); backward returns its true gradient 2 x cos(x^2) rotated with an orthogonal 0.1 |g|."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.sin(x * x).sum()

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * rotated(2 * x * torch.cos(x * x), 0.1)


X12 = torch.linspace(0.1, 0.9, 12, dtype=torch.float64).view(1, 3, 2, 2)


def test_audit_passes_an_exact_gradient_and_flags_a_wrong_one():
    right = audit_loss(lambda v: torch.sin(v * v).sum(), X12, n_random=2, seed=0, tolerance=1e-3)
    wrong = audit_loss(lambda v: torch.sin(WrongSquare.apply(v)).sum(), X12, n_random=2, seed=0, tolerance=1e-3)
    assert right["ok"] and all(c["ok"] for c in right["checks"].values()) and right["worst_error"] < 1e-5
    assert not wrong["ok"] and not any(c["ok"] for c in wrong["checks"].values())
    assert wrong["checks"]["gradient"]["best_error"] > 0.1


def test_audit_flags_a_rotated_gradient_of_the_right_norm_that_passes_along_itself():
    true = input_gradient(lambda v: torch.sin(v * v).sum(), X12)
    assert cosine_and_ratio(input_gradient(RotatedSinSquare.apply, X12), true) == pytest.approx(
        {"cosine": 0.99499, "norm_ratio": 1.0}, abs=1e-5)
    audit = audit_loss(RotatedSinSquare.apply, X12, n_random=2, seed=0, tolerance=1e-2)
    along = audit["checks"]["gradient"]
    # the old verdict, along the audited gradient only, passes it: its error there is 1 - cos = 0.005
    assert min(row["rel_error"] for row in along["rows"]) < 1e-2 and along["ok"]
    assert along["best_error"] == pytest.approx(1 - 0.99499, abs=1e-5)
    assert not audit["ok"] and not audit["checks"]["random_0"]["ok"] and audit["worst_error"] > 2e-2
    assert audit_loss(lambda v: torch.sin(v * v).sum(), X12, n_random=2, seed=0, tolerance=1e-2)["ok"]


def test_cosine_and_ratio():
    g = torch.tensor([1.0, 0.0])
    assert cosine_and_ratio(2 * g, g) == {"cosine": 1.0, "norm_ratio": 2.0}
    assert abs(cosine_and_ratio(torch.tensor([0.0, 1.0]), g)["cosine"]) < 1e-12


def test_audit_of_a_guided_toy_purifier_reports_every_comparison(device):
    config = PurifierConfig(name="coup", t_star=0.05, dt=0.01, grad_mode="full")
    purifier = DiffusionPurifier(gaussian_backbone(), config, TinyClassifier(4).double())
    model = DefendedClassifier(purifier, TinyClassifier(4, seed=1).double()).double().eval().to(device)
    x = torch.full((1, 1, 2, 2), 0.45, dtype=torch.float64, device=device)
    (record,) = audit_images(model, x, torch.tensor([1], device=device), torch.tensor([7]), seed=0, n_random=2,
                             tolerance=1e-4)
    assert record["exact_vs_fd"]["ok"] and len(record["exact_vs_fd"]["checks"]) == 3  # every direction passes
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


def test_random_directions_follow_the_run_seed():
    model = DefendedClassifier(IdentityPurifier(), TinyClassifier(4).double()).eval()  # g does not depend on the seed
    x = torch.full((1, 1, 2, 2), 0.45, dtype=torch.float64)

    def random_derivatives(seed: int) -> list[float]:
        (record,) = audit_images(model, x, torch.tensor([1]), torch.tensor([7]), seed=seed, n_random=2)
        return [record["exact_vs_fd"]["checks"][f"random_{i}"]["rows"][0]["analytic"] for i in range(2)]

    assert random_derivatives(0) == random_derivatives(0)
    assert all(abs(a - b) > 1e-6 for a, b in zip(random_derivatives(0), random_derivatives(1)))


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


def test_a_detached_run_tabulates_its_surrogate_comparison(tmp_path):
    x = torch.full((1, 1, 2, 2), 0.45, dtype=torch.float64)
    for mode in ("full", "detached"):
        config = PurifierConfig(name="coup", t_star=0.05, dt=0.01, grad_mode=mode, guidance_scale=2.0)
        purifier = DiffusionPurifier(gaussian_backbone(), config, ReLUClassifier(4).double())
        model = DefendedClassifier(purifier, TinyClassifier(4, seed=1).double()).double().eval()
        records = audit_images(model, x, torch.tensor([1]), torch.tensor([7]), seed=0, n_random=1, tolerance=1e-4)
        assert f"surrogate_vs_{mode}" in records[0] and flat_row(records[0])[f"surrogate_vs_{mode}_cosine"] > 0.5
        meta = {"config": {"purifier": {"name": f"coup_{mode}", "dt": 0.01}}}
        write_audit(tmp_path / mode, records, meta)
    table_main(["--audits", str(tmp_path), "--out", str(tmp_path)])
    header, _, detached, full = [line.split(" | ") for line in (tmp_path / "audit_table.md").read_text().splitlines()]
    column = {title: i for i, title in enumerate(header)}
    assert detached[0] == "| coup_detached" and full[0] == "| coup_full"
    assert "-" not in (detached[column["detached vs full: cosine"]], full[column["detached vs full: cosine"]],
                       detached[column["softplus surrogate vs detached: cosine"]],
                       full[column["softplus surrogate vs full: cosine"]])
    assert "-" == detached[column["softplus surrogate vs full: cosine"]] == \
        full[column["softplus surrogate vs detached: cosine"]]


def test_eval_option_writes_the_audit_into_the_run_folder(tmp_path):
    import eval_sde_adv
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
    image = audit["images"][0]
    quoted = json.loads((run_dir / "summary.json").read_text())["gradient_audit"]
    assert quoted == {"n": 1, "fd_ok": int(image["exact_vs_fd"]["ok"]),
                      "adjoint_cosine": image["adjoint_vs_exact"]["cosine"],
                      "adjoint_norm_ratio": image["adjoint_vs_exact"]["norm_ratio"]}
    line = f"median cosine {image['adjoint_vs_exact']['cosine']:.2g}"
    assert line in (run_dir / "summary.md").read_text()
    assert eval_sde_adv.main(args) == 0  # resumed without the option: the summary still quotes the folder's audit
    assert line in (run_dir / "summary.md").read_text()
    table_main(["--audits", str(tmp_path), "--out", str(tmp_path)])  # the audit table reads run folders too
    assert (tmp_path / "audit_table.md").read_text().splitlines()[2].startswith("| coup | 0.005 | 1 | ")


def fake_audit(folder, purifier: dict, images: list[dict]) -> None:
    """folder/gradient_audit.json holding these image records under a config with this purifier section."""
    folder.mkdir()
    (folder / "gradient_audit.json").write_text(json.dumps({"metadata": {"config": {"purifier": purifier}},
                                                            "images": images}))


def fd_record(ok: bool, error: float, tolerance: float = 0.02) -> dict:
    """The exact_vs_fd fields the table reads."""
    return {"ok": ok, "worst_error": error, "tolerance": tolerance}


def test_read_audit_returns_what_write_audit_wrote(tmp_path):
    records = [{"index": 3, "exact_vs_fd": fd_record(False, 0.5)}]
    write_audit(tmp_path, records, {"run": "r"})
    assert read_audit(tmp_path) == records and read_audit(tmp_path / "elsewhere") is None


def test_audit_table_summarises_each_audit_by_median_and_range(tmp_path):
    def image(index: int, ok: bool, error: float, cosine: float) -> dict:
        return {"index": index, "exact_vs_fd": fd_record(ok, error),
                "adjoint_vs_exact": {"cosine": cosine, "norm_ratio": 2 * cosine}, "noise_draws_cosine": 0.5}

    for dt, images in ((0.01, [image(1, True, 1e-3, 0.1), image(2, False, 0.03, 0.3), image(3, True, 2e-3, 0.2)]),
                       (0.001, [image(1, True, 1e-4, 0.9)])):
        fake_audit(tmp_path / f"reverse_only_dt{dt}", {"name": "reverse_only", "dt": dt}, images)
    # a run without a diffusion purifier: finite differences only
    fake_audit(tmp_path / "none", {"name": "none"}, [{"index": 1, "exact_vs_fd": fd_record(True, 1e-5)}])
    table_main(["--audits", str(tmp_path), "--out", str(tmp_path)])
    lines = (tmp_path / "audit_table.md").read_text().splitlines()
    assert lines[0] == ("| purifier | dt | images | exact vs finite differences (within 2 % of the gradient norm) | "
                        "adjoint vs exact: cosine | adjoint / exact norm | two noise draws: cosine |")
    assert lines[2] == "| none | - | 1 | 1/1 (max err. 1.0e-05) | - | - | - |"
    assert lines[3] == ("| reverse_only | 0.01 | 3 | 2/3 (max err. 3.0e-02) | 0.2 [0.1, 0.3] | 0.4 [0.2, 0.6] | "
                        "0.5 [0.5, 0.5] |")
    assert lines[4] == ("| reverse_only | 0.001 | 1 | 1/1 (max err. 1.0e-04) | 0.9 [0.9, 0.9] | 1.8 [1.8, 1.8] | "
                        "0.5 [0.5, 0.5] |")


def test_audit_table_refuses_audits_of_different_tolerances(tmp_path):
    fake_audit(tmp_path / "a", {"name": "none"}, [{"index": 1, "exact_vs_fd": fd_record(True, 1e-3, 0.01)}])
    fake_audit(tmp_path / "b", {"name": "none"}, [{"index": 1, "exact_vs_fd": fd_record(True, 1e-3, 0.02)}])
    with pytest.raises(ValueError, match=r"different --fd-tolerance values \[0.01, 0.02\]"):
        table_main(["--audits", str(tmp_path), "--out", str(tmp_path)])
