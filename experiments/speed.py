"""COUP Table 4: purification wall-clock time per image for DiffPure, reverse-only and COUP at several t*.

Each (method, t*) purifies the first --num-images images in batches of --batch-size on --device,
--warmup untimed runs then --repeats timed runs; the time per image is the run time / images (mean
and 95 % Student-t CI over runs). With --with-grad the forward + input-gradient of the defended model
(what an attack step costs) is timed too. Times depend on the machine and its load: compare methods
within one run, not across machines.
"""
from __future__ import annotations

import argparse
import logging
import time
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from experiments.common import (base_parser, label_axes, log_table, mean_band, parse_values, plt, run_cli, start_cli,
                                write_results)
from experiments.image_setup import (DIFFUSION_METHODS, ImageSetup, add_model_arguments, defense_seeds,
                                     image_metadata, load_setup, method_fields)

NAME = "speed"
logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    """The CLI of this experiment."""
    parser = base_parser(NAME, __doc__.splitlines()[0])
    add_model_arguments(parser, num_images=8)
    parser.add_argument("--t-stars", type=parse_values, default=parse_values("0.05,0.1,0.2"), help="t* values")
    parser.add_argument("--methods", type=lambda s: s.split(","), default=list(DIFFUSION_METHODS),
                        help=f"comma-separated subset of {','.join(DIFFUSION_METHODS)}")
    parser.add_argument("--guidance-scale", type=float, default=None,
                        help="COUP's lambda (default: the config's if it is COUP, else 1)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per point (default 5)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs before timing (default 1)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default cpu)")
    parser.add_argument("--with-grad", action="store_true", help="also time forward + input gradient")
    return parser


def timed(run: Callable[[], None], device: torch.device, warmup: int, repeats: int) -> list[float]:
    """Wall-clock seconds of `repeats` runs after `warmup` runs (CUDA synchronised)."""
    def once() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        run()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - started

    for _ in range(warmup):
        once()
    return [once() for _ in range(repeats)]


def workloads(setup: ImageSetup, method: str, fields: dict, device: torch.device,
              seeds: torch.Tensor) -> dict[str, Callable[[], None]]:
    """'purify': purifier over all batches (no grad); 'purify+grad': defended forward and input gradient."""
    model = setup.defended(method, **fields).to(device)
    x = setup.images.x.to(device)

    def purify() -> None:
        with torch.no_grad():
            for part in setup.batches():
                model.purifier(x[part], seeds[part])

    def purify_grad() -> None:
        for part in setup.batches():
            x_in = x[part].clone().requires_grad_(True)
            torch.autograd.grad(model(x_in, noise_seeds=seeds[part]).logsumexp(dim=1).sum(), x_in)

    return {"purify": purify, "purify+grad": purify_grad}


def plot(rows: list[dict], caption: str) -> plt.Figure:
    """Seconds per image vs t*: one line per (method, mode) with 95 % CI error bars."""
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for (method, mode), color in zip(dict.fromkeys((r["method"], r["mode"]) for r in rows), plt.cm.tab10.colors):
        curve = sorted((r for r in rows if r["method"] == method and r["mode"] == mode), key=lambda r: r["t_star"])
        mean = np.array([r["seconds_per_image"] for r in curve])
        err = [mean - [r["ci_low"] for r in curve], [r["ci_high"] for r in curve] - mean]
        ax.errorbar([r["t_star"] for r in curve], mean, yerr=err, fmt="o-" if mode == "purify" else "s--",
                    capsize=3, markersize=4, color=color, label=f"{method} ({mode})")
    ax.set_ylim(bottom=0.0)
    label_axes(ax, "purification start t* (diffusion time)", "wall-clock time per image (s)", caption, title_size=9,
               legend_size=8)
    fig.tight_layout()
    return fig


def main(argv: Optional[Sequence[str]] = None) -> dict:
    """Time every (method, t*, mode), write speed.{csv,json,png}."""
    argv, args, out = start_cli(build_parser(), argv)
    unknown = sorted(set(args.methods) - set(DIFFUSION_METHODS))
    if unknown or args.repeats < 1 or args.warmup < 0:
        raise ValueError(f"need --methods from {list(DIFFUSION_METHODS)} (got unknown {unknown}), --repeats >= 1, "
                         f"--warmup >= 0")
    device = torch.device(args.device)
    setup = load_setup(args)
    coup = setup.coup_config(guidance_scale=args.guidance_scale)
    seeds = defense_seeds(args.seed, setup.images.indices)
    modes = ["purify", "purify+grad"] if args.with_grad else ["purify"]
    n_images, rows = len(setup.images.y), []
    for method in args.methods:
        for t_star in args.t_stars:
            fields = method_fields(method, t_star, coup.guidance_scale)
            jobs = workloads(setup, method, fields, device, seeds)
            steps = setup.purifier(method, **fields).grid.n_steps
            for mode in modes:
                per_image = np.array(timed(jobs[mode], device, args.warmup, args.repeats)) / n_images
                mean, low, high = mean_band(per_image[:, None])
                rows.append({"method": method, "t_star": t_star, "mode": mode, "solver_steps": steps,
                             "images": n_images, "batch_size": setup.batch_size, "repeats": args.repeats,
                             "seconds_per_image": float(mean[0]), "ci_low": float(low[0]), "ci_high": float(high[0]),
                             "min_seconds_per_image": float(per_image.min())})
                logger.info("%s t*=%g %s: %.4f s/image", method, t_star, mode, rows[-1]["seconds_per_image"])
    environment = {"device": str(device), "torch_threads": torch.get_num_threads(),
                   "cuda_device": torch.cuda.get_device_name(device) if device.type == "cuda" else None}
    payload = {"experiment": NAME, "guidance_scale": coup.guidance_scale, "environment": environment, "rows": rows,
               "metadata": image_metadata(setup, argv, args.seed)}
    caption = (f"{n_images} images, batch {setup.batch_size}, {environment['device']}, "
               f"{environment['torch_threads']} thread(s), dt = {coup.dt:g}, COUP λ = {coup.guidance_scale:g}")
    write_results(out, NAME, payload, rows, plot(rows, caption))
    log_table(rows, ["method", "t_star", "mode", "solver_steps", "seconds_per_image", "ci_low", "ci_high"])
    return payload


if __name__ == "__main__":
    run_cli(main)
