"""COUP Sec. 5.3.2 / Fig. 3b: label-flip probability of guided purification vs guidance scale, per classifier noise.

Every (noise kind, delta, start, lambda) point integrates the guided reverse VP-SDE (Euler-Maruyama,
runners.solvers) for --paths paths from x_start = +start at t_star to t_end and counts the paths that
end on the class-0 side of the Bayes boundary (x < 0); see experiments.toy_mixture for the model.
All points share one noise table and one set of classifier draws (common random numbers), so the
curves differ only by lambda, delta and the start; each point's 95 % CI is Wilson's.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
from typing import Optional, Sequence

import numpy as np
import torch

from experiments.common import (base_parser, label_axes, log_table, parse_values, plt, run_cli, run_metadata, start_cli,
                                wilson_row, write_results)
from experiments.toy_mixture import NOISE_MODELS, ToySetting, classifier_accuracy, flip_mask
from utils.seeds import derive_seeds

NAME = "toy_label_flip"
DEFAULT_NOISE = ("boundary=0,0.1,0.25,0.5", "label=0,0.5,0.9")
NOISE_TITLES = {"boundary": "boundary noise: p(y | x − b), b ~ N(0, δ²)",
                "label": "label noise: (1 − δ) p(y | x) + δ/2"}
logger = logging.getLogger(__name__)


def parse_noise(text: str) -> tuple[str, list[float]]:
    """'boundary=0,0.1' -> ('boundary', [0.0, 0.1]); the kind must be registered."""
    kind, sep, levels = text.partition("=")
    if not sep or kind not in NOISE_MODELS:
        raise argparse.ArgumentTypeError(f"expected KIND=d1,d2,... with KIND one of {NOISE_MODELS.names()}, "
                                         f"got {text!r}")
    return kind, parse_values(levels)


def build_parser() -> argparse.ArgumentParser:
    """The CLI of this experiment."""
    parser = base_parser(NAME, __doc__.splitlines()[0])
    parser.add_argument("--paths", type=int, default=50_000, help="paths per point (default 50000)")
    parser.add_argument("--lambdas", type=parse_values, default=parse_values("0,0.25,0.5,1,1.5,2,3,4"),
                        help="guidance scales, comma-separated")
    parser.add_argument("--noise", type=parse_noise, nargs="+", default=[parse_noise(n) for n in DEFAULT_NOISE],
                        help="classifier noise: KIND=delta1,delta2,... per kind (boundary: std of the boundary "
                             "offset in data units; label: weight of the uniform posterior)")
    parser.add_argument("--starts", type=parse_values, default=parse_values("0.05,0.15"),
                        help="start distances d > 0 from the boundary (paths start at x = +d, true class 1)")
    defaults = ToySetting()
    for field in dataclasses.fields(ToySetting):
        if field.type in ("float", float):
            parser.add_argument(f"--{field.name.replace('_', '-')}", type=float, default=getattr(defaults, field.name))
    parser.add_argument("--label-mode", default=defaults.label_mode, choices=["argmax", "input"],
                        help="guidance label: argmax of p(y|x_t) at each step (COUP) or fixed at the start")
    return parser


def draw_common_noise(setting: ToySetting, n_paths: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """xi (N,) for the classifier draws and z (n_steps, N, 1) for the Euler steps, float64, from two seeded streams."""
    xi_gen = torch.Generator().manual_seed(int(derive_seeds(seed, 1)))
    z_gen = torch.Generator().manual_seed(int(derive_seeds(seed, 2)))
    xi = torch.randn(n_paths, generator=xi_gen, dtype=torch.float64)
    z = torch.randn((setting.grid().n_steps, n_paths, 1), generator=z_gen, dtype=torch.float64)
    return xi, z


def paired_difference(mask: torch.Tensor, baseline: torch.Tensor) -> dict[str, float]:
    """Flip rate minus the lambda = 0 rate on the same paths, with a 95 % normal CI of the paired mean."""
    diff = mask.double() - baseline.double()
    half = 1.96 * float(diff.std()) / diff.numel() ** 0.5 if diff.numel() > 1 else 0.0
    mean = float(diff.mean())
    return {"diff_vs_lambda0": mean, "diff_ci_low": mean - half, "diff_ci_high": mean + half}


def run_points(setting: ToySetting, noise: list[tuple[str, list[float]]], starts: list[float],
               lambdas: list[float], xi: torch.Tensor, z: torch.Tensor, seed: int) -> list[dict]:
    """One row per (noise kind, delta, start, lambda): flips, p with Wilson CI, paired change vs lambda = 0."""
    baselines = {start: flip_mask(setting, "label", 0.0, 0.0, start, xi, z) for start in starts}
    rows = []
    for kind, deltas in noise:
        for delta in deltas:
            accuracy_gen = torch.Generator().manual_seed(int(derive_seeds(seed, 3)))
            accuracy = classifier_accuracy(setting, kind, delta, xi, accuracy_gen)
            for start in starts:
                for scale in lambdas:
                    mask = (baselines[start] if scale == 0.0
                            else flip_mask(setting, kind, delta, scale, start, xi, z))
                    flips = int(mask.sum())
                    rows.append({"noise": kind, "delta": delta, "start": start, "guidance_scale": scale,
                                 "flips": flips, "paths": xi.shape[0], **wilson_row(flips, xi.shape[0]),
                                 **paired_difference(mask, baselines[start]), "classifier_accuracy": accuracy})
                logger.info("%s delta=%g start=%g: %s", kind, delta, start,
                            " ".join(f"{r['p']:.3f}" for r in rows[-len(lambdas):]))
    return rows


def plot(rows: list[dict], setting: ToySetting, n_paths: int) -> plt.Figure:
    """Flip probability vs lambda: one panel per (start, noise kind), one curve per delta with its 95 % CI band."""
    kinds = list(dict.fromkeys(r["noise"] for r in rows))
    starts = list(dict.fromkeys(r["start"] for r in rows))
    fig, axes = plt.subplots(len(starts), len(kinds), figsize=(5.2 * len(kinds), 3.9 * len(starts)),
                             squeeze=False, sharey="row")
    for i, start in enumerate(starts):
        for j, kind in enumerate(kinds):
            ax = axes[i][j]
            panel = [r for r in rows if r["start"] == start and r["noise"] == kind]
            for k, delta in enumerate(dict.fromkeys(r["delta"] for r in panel)):
                curve = sorted((r for r in panel if r["delta"] == delta), key=lambda r: r["guidance_scale"])
                lam = np.array([r["guidance_scale"] for r in curve])
                color = plt.cm.viridis(k / max(1, len(set(r["delta"] for r in panel)) - 1) * 0.85)
                ax.fill_between(lam, [r["ci_low"] for r in curve], [r["ci_high"] for r in curve],
                                color=color, alpha=0.25, linewidth=0)
                ax.plot(lam, [r["p"] for r in curve], "o-", color=color, markersize=3.5,
                        label=f"δ = {delta:g} (clf. acc. {curve[0]['classifier_accuracy']:.3f})")
            label_axes(ax, "guidance scale λ (dimensionless)", "label-flip probability (fraction of paths)",
                       f"{NOISE_TITLES.get(kind, kind)}, start x = +{start:g} (true class 1)", legend_size=8,
                       legend_title="classifier noise")
    mixture = f"½N(−{setting.mu:g}, {setting.s:g}²) + ½N({setting.mu:g}, {setting.s:g}²)"
    fig.suptitle(f"Guided reverse VP-SDE on {mixture}: t* = {setting.t_star:g}, Euler–Maruyama dt = {setting.dt:g}, "
                 f"{n_paths} paths/point, bands: 95 % Wilson CI", fontsize=10)
    fig.tight_layout()
    return fig


def main(argv: Optional[Sequence[str]] = None) -> dict:
    """Run the toy, write flip_probability.{csv,json,png} to --out; returns the JSON payload."""
    argv, args, out = start_cli(build_parser(), argv)
    if args.paths < 1:
        raise ValueError(f"--paths must be >= 1, got {args.paths}")
    setting = ToySetting(**{f.name: getattr(args, f.name) for f in dataclasses.fields(ToySetting)})
    xi, z = draw_common_noise(setting, args.paths, args.seed)
    logger.info("toy: %d paths x %d steps per point, %d points", args.paths, setting.grid().n_steps,
                sum(len(d) for _, d in args.noise) * len(args.starts) * len(args.lambdas))
    rows = run_points(setting, args.noise, args.starts, args.lambdas, xi, z, args.seed)
    payload = {"experiment": NAME, "setting": dataclasses.asdict(setting), "paths_per_point": args.paths,
               "flip_definition": "x_start = +start (true class 1); flip = end point x_0 < 0 (Bayes boundary)",
               "metadata": run_metadata(argv, seed=args.seed), "rows": rows}
    write_results(out, "flip_probability", payload, rows, plot(rows, setting, args.paths))
    log_table(rows, ["noise", "delta", "start", "guidance_scale", "flips", "p", "ci_low", "ci_high",
                     "diff_vs_lambda0", "diff_ci_low", "diff_ci_high"])
    return payload


if __name__ == "__main__":
    run_cli(main)
