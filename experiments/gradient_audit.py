"""Gradient audit: can the attack's input gradient be trusted? Per image, with the purification noise fixed:

- the exact gradient g against central finite differences (f(x + h d) - f(x - h d)) / 2h along g/|g| and random
  unit directions d, for several h (the loss is the CE of the defended model, one fixed noise draw);
- the torchsde adjoint gradient against g (cosine, norm ratio), at the purifier's dt;
- grad_mode 'full' against 'detached', and the softplus surrogate of the guidance against the run's mode (guided
  purifiers only; the surrogate's forward is exact, so only its backward differs);
- g under two independent noise draws (cosine): how much EOT an attack needs.

g is always the exact backend's gradient (backprop through the discretised solver), whichever backend the audited
run attacks through, so auditing a torchsde run measures its adjoint against the exact gradient.

    python -m experiments.gradient_audit --config configs/demo.yml --purifier reverse_only --num-images 4 --dt 0.01

Writes gradient_audit.json / .csv to --out. A direction d passes when some h brings the finite difference within
--fd-tolerance x |g| of the analytic <g, d>: along g, the relative error; along a random d, an error that stays
meaningful where <g, d> is tiny, but that sees an error e of the gradient only through <e, d> ~ |e| / sqrt(numel),
so it catches a wrong scale or a gross error in direction, not a slight rotation of a large image's gradient. An
image is flagged unless every direction passes. Auditing a config with grad_mode 'surrogate' flags it by design:
its gradient is the surrogate's, not the defense's.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from classifiers.surrogate import relu_sites
from evaluation.experiment import build_models, load_experiment
from evaluation.overrides import switch_purifier
from experiments.common import base_parser, run_metadata, start_cli, write_csv, write_json
from runners.defended import DefendedClassifier
from runners.purifiers import DEFAULT_SURROGATE_BETA, DiffusionPurifier
from utils.config import read_yaml
from utils.data import load_images
from utils.seeds import SeedStage, derive_seeds

log = logging.getLogger(__name__)
LossFn = Callable[[torch.Tensor], torch.Tensor]
STEPS = (1e-2, 3e-3, 1e-3, 3e-4, 1e-4)  # float32 models: below 1e-4 rounding dominates
MARGIN = 0.01  # images are audited at MARGIN + (1 - 2 MARGIN) x, so x -+ h d (h <= 1e-2, |d| = 1) stays in [0, 1]
AUDIT_FILE = "gradient_audit.json"  # the records of a run folder's audit (with a flat .csv twin)
DIRECTIONS_DRAW = 2  # the AUDIT draw key of the random directions (0 and 1 key the two noise draws)


def cosine_and_ratio(g: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
    """cos(g, reference) and |g| / |reference| of two gradients of the same shape."""
    g, reference = g.flatten().double(), reference.flatten().double()
    return {"cosine": float(F.cosine_similarity(g, reference, dim=0, eps=1e-30)),
            "norm_ratio": float(g.norm() / reference.norm().clamp_min(1e-30))}


def input_gradient(loss_fn: LossFn, x: torch.Tensor) -> torch.Tensor:
    """d loss_fn / dx at x (any shape), loss_fn a scalar function."""
    with torch.enable_grad():
        x_in = x.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(loss_fn(x_in), x_in)
    return grad


@torch.no_grad()
def finite_differences(loss_fn: LossFn, x: torch.Tensor, grad: torch.Tensor, direction: torch.Tensor,
                       steps: Sequence[float] = STEPS) -> list[dict[str, float]]:
    """Per h: the central difference along the unit `direction`, the analytic <grad, d>, and their relative error
    (|fd - analytic| over the larger of the two: for reading; fd_verdict decides)."""
    d = direction / direction.norm()
    analytic = float((grad * d).sum())
    rows = []
    for h in steps:
        fd = float((loss_fn(x + h * d) - loss_fn(x - h * d)) / (2 * h))
        rows.append({"h": h, "fd": fd, "analytic": analytic,
                     "rel_error": abs(fd - analytic) / max(abs(analytic), abs(fd), 1e-30)})
    return rows


def fd_verdict(rows: list[dict[str, float]], grad_norm: float, tolerance: float) -> dict[str, Any]:
    """The h with the smallest |fd - <g, d>| / |g|, that error, and whether it is within tolerance."""
    errors = [abs(r["fd"] - r["analytic"]) / max(grad_norm, 1e-30) for r in rows]
    best = min(range(len(rows)), key=errors.__getitem__)
    return {"best_h": rows[best]["h"], "best_error": errors[best], "ok": errors[best] <= tolerance}


def fd_report(grad_norm: float, rows: dict[str, list[dict[str, float]]], tolerance: float) -> dict[str, Any]:
    """Per direction its finite-difference rows and verdict; the worst best error; ok only if every direction passes."""
    checks = {name: {"rows": r, **fd_verdict(r, grad_norm, tolerance)} for name, r in rows.items()}
    return {"grad_norm": grad_norm, "tolerance": tolerance, "checks": checks,
            "worst_error": max(c["best_error"] for c in checks.values()),
            "ok": all(c["ok"] for c in checks.values())}


def audit_loss(loss_fn: LossFn, x: torch.Tensor, n_random: int, seed: int,
               tolerance: float, steps: Sequence[float] = STEPS) -> dict[str, Any]:
    """Finite-difference audit of the gradient of a deterministic scalar loss at x: along g and n_random directions
    drawn from a generator seeded with `seed`."""
    return audit_gradient(loss_fn, x, input_gradient(loss_fn, x), n_random, seed, tolerance, steps)


def audit_gradient(loss_fn: LossFn, x: torch.Tensor, grad: torch.Tensor, n_random: int, seed: int,
                   tolerance: float, steps: Sequence[float] = STEPS) -> dict[str, Any]:
    """audit_loss with the gradient grad (shape of x) already computed by input_gradient(loss_fn, x)."""
    gen = torch.Generator().manual_seed(seed)
    directions = {"gradient": grad} | {f"random_{i}": torch.randn(x.shape, generator=gen, dtype=x.dtype).to(x.device)
                                       for i in range(n_random)}
    rows = {name: finite_differences(loss_fn, x, grad, d, steps) for name, d in directions.items()}
    return fd_report(float(grad.norm()), rows, tolerance)


def ce_loss(model: nn.Module, y: torch.Tensor, seeds: torch.Tensor) -> LossFn:
    """x (1, C, H, W) -> CE(model(x; noise seeds), y): the loss an attack differentiates, noise held fixed."""
    return lambda x: F.cross_entropy(model(x, noise_seeds=seeds), y, reduction="sum")


def twin(model: DefendedClassifier, **changes: Any) -> DefendedClassifier:
    """The same defended model with purifier config fields replaced (e.g. backend='torchsde')."""
    purifier = model.purifier
    config = dataclasses.replace(purifier.config, **changes)
    return DefendedClassifier(DiffusionPurifier(purifier.backbone, config, purifier.guidance_classifier),
                              model.classifier).eval()


def audit_image(model: DefendedClassifier, x: torch.Tensor, y: torch.Tensor, index: int, seed: int,
                n_random: int, tolerance: float, surrogate_beta: float = DEFAULT_SURROGATE_BETA) -> dict[str, Any]:
    """Every audit of one image x (1, C, H, W) in [0, 1] with label y (1,), moved MARGIN inside the box."""
    x = MARGIN + (1.0 - 2.0 * MARGIN) * x
    seeds = derive_seeds(seed, torch.tensor([index]), SeedStage.AUDIT, 0)
    diffusion = isinstance(model.purifier, DiffusionPurifier)
    exact = twin(model, backend="exact") if diffusion else model
    loss_fn = ce_loss(exact, y, seeds)
    direction_seed = int(derive_seeds(seed, index, SeedStage.AUDIT, DIRECTIONS_DRAW))
    grad = input_gradient(loss_fn, x)
    record: dict[str, Any] = {"index": index,
                              "exact_vs_fd": audit_gradient(loss_fn, x, grad, n_random, direction_seed, tolerance)}
    if not diffusion:
        return record
    adjoint = input_gradient(ce_loss(twin(model, backend="torchsde"), y, seeds), x)
    record["adjoint_vs_exact"] = cosine_and_ratio(adjoint, grad)
    other = derive_seeds(seed, torch.tensor([index]), SeedStage.AUDIT, 1)
    record["noise_draws_cosine"] = cosine_and_ratio(input_gradient(ce_loss(exact, y, other), x), grad)["cosine"]
    mode = model.purifier.config.grad_mode
    if model.purifier.config.guidance_scale != 0.0 and mode != "surrogate":
        flipped = "detached" if mode == "full" else "full"
        record[f"{flipped}_vs_{mode}"] = cosine_and_ratio(
            input_gradient(ce_loss(twin(exact, grad_mode=flipped), y, seeds), x), grad)
        if relu_sites(model.purifier.guidance_classifier):
            surrogate = twin(exact, grad_mode="surrogate", surrogate_beta=surrogate_beta)
            record[f"surrogate_vs_{mode}"] = cosine_and_ratio(input_gradient(ce_loss(surrogate, y, seeds), x), grad)
    return record


def flat_row(record: dict[str, Any]) -> dict[str, Any]:
    """One CSV row per image: the headline numbers of its audit."""
    row = {"index": record["index"], "fd_ok": record["exact_vs_fd"]["ok"],
           "fd_worst_error": record["exact_vs_fd"]["worst_error"]}
    for key in ("adjoint_vs_exact", "full_vs_detached", "detached_vs_full", "surrogate_vs_full",
                "surrogate_vs_detached"):
        if key in record:
            row.update({f"{key}_cosine": record[key]["cosine"], f"{key}_norm_ratio": record[key]["norm_ratio"]})
    if "noise_draws_cosine" in record:
        row["noise_draws_cosine"] = record["noise_draws_cosine"]
    return row


def audit_images(model: DefendedClassifier, x: torch.Tensor, y: torch.Tensor, indices: torch.Tensor, seed: int,
                 n_random: int = 2, tolerance: float = 1e-2,
                 surrogate_beta: float = DEFAULT_SURROGATE_BETA) -> list[dict[str, Any]]:
    """audit_image over a batch x (N, C, H, W), one image at a time (each with its own noise seed)."""
    records = []
    for b in range(x.shape[0]):
        records.append(audit_image(model, x[b:b + 1], y[b:b + 1], int(indices[b]), seed, n_random, tolerance,
                                   surrogate_beta))
        log.info("audit image %d: %s", int(indices[b]), flat_row(records[-1]))
    return records


def write_audit(out: Path, records: list[dict[str, Any]], metadata: dict[str, Any]) -> None:
    """out/gradient_audit.json ({metadata, images}, what experiments.audit_table reads) and out/gradient_audit.csv."""
    write_json(out / AUDIT_FILE, {"metadata": metadata, "images": records})
    write_csv(out / "gradient_audit.csv", [flat_row(r) for r in records])


def read_audit(out: Path) -> Optional[list[dict[str, Any]]]:
    """The image records write_audit put in out/gradient_audit.json; None when out holds no audit."""
    path = out / AUDIT_FILE
    return json.loads(path.read_text())["images"] if path.is_file() else None


def main(argv: Optional[Sequence[str]] = None) -> None:
    """CLI: audit the first --num-images images of a config's subset (float32 models, noise fixed per image)."""
    parser = base_parser("gradient_audit", __doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="experiment YAML (its data, models and purifier)")
    parser.add_argument("--purifier", help="purifier.name override: coup | reverse_only | diffpure")
    parser.add_argument("--dt", type=float, help="purifier.dt override")
    parser.add_argument("--num-images", type=int, default=4)
    parser.add_argument("--random-directions", type=int, default=2)
    parser.add_argument("--fd-tolerance", type=float, default=1e-2,
                        help="largest |finite difference - <g, d>| passed, as a fraction of |g|")
    parser.add_argument("--surrogate-beta", type=float, default=DEFAULT_SURROGATE_BETA,
                        help="softplus beta of the guidance surrogate compared with the exact gradient (COUP)")
    argv, args, out = start_cli(parser, argv)
    overrides = {} if args.purifier is None else {
        "purifier": switch_purifier(read_yaml(args.config)["purifier"], args.purifier)}
    overrides.update({} if args.dt is None else {"purifier.dt": args.dt})
    experiment = load_experiment(args.config, overrides)
    model, _ = build_models(experiment)
    images = load_images(experiment.file.data, experiment.base_dir)
    n = min(args.num_images, len(images.y))
    x, y = images.x[:n], images.y[:n]
    records = audit_images(model, x, y, torch.as_tensor(images.indices[:n]), args.seed, args.random_directions,
                           args.fd_tolerance, args.surrogate_beta)
    write_audit(out, records, run_metadata(argv, config=experiment.to_dict()))


if __name__ == "__main__":
    main()
