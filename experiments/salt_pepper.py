"""COUP App. E.1: accuracy under salt-and-pepper noise for no defense, reverse-only and COUP.

Salt-and-pepper of amount p: each pixel (all channels together) becomes 0 with probability p/2 and 1
with probability p/2. The uniform field deciding this is drawn per image from a generator seeded by
(--seed, dataset index), the same field for every p, so larger amounts corrupt a superset of pixels.
Accuracy is one seeded stochastic forward per image (95 % Wilson CIs); every (method, p) point is
saved to <out>/points/ when done, and a rerun skips finished points.
"""
from __future__ import annotations

import argparse
import logging
from typing import Optional, Sequence

import torch

from experiments.common import (PointStore, base_parser, label_axes, log_table, parse_values, plt, run_cli, start_cli,
                                wilson_row, write_results)
from experiments.image_setup import (DIFFUSION_METHODS, add_model_arguments, config_record, defense_seeds,
                                     image_metadata, load_setup, method_fields, predict, seeds_record)
from utils.seeds import SeedStage, derive_seeds, per_row

NAME = "salt_pepper"
METHOD_LABELS = {"none": "no defense", "reverse_only": "reverse-only", "diffpure": "DiffPure", "coup": "COUP"}
logger = logging.getLogger(__name__)


def salt_and_pepper(x: torch.Tensor, amount: float, seeds: torch.Tensor) -> torch.Tensor:
    """x (B, C, H, W) in [0, 1] with pixels set to 0 (u < p/2) or 1 (p/2 <= u < p), u ~ U(0, 1) per image seed."""
    if not 0.0 <= amount <= 1.0:
        raise ValueError(f"salt-and-pepper amount must lie in [0, 1], got {amount}")
    u = per_row(seeds, lambda gen: torch.rand(tuple(x.shape[-2:]), generator=gen)).unsqueeze(1).to(x.device, x.dtype)
    pepper, salt = u < amount / 2.0, (u >= amount / 2.0) & (u < amount)
    return torch.where(pepper, torch.zeros_like(x), torch.where(salt, torch.ones_like(x), x))


def build_parser() -> argparse.ArgumentParser:
    """The CLI of this experiment."""
    parser = base_parser(NAME, __doc__.splitlines()[0])
    add_model_arguments(parser, num_images=64)
    parser.add_argument("--amounts", type=parse_values, default=parse_values("0,0.02,0.05,0.1,0.2,0.3"),
                        help="salt-and-pepper amounts p in [0, 1]")
    parser.add_argument("--methods", type=lambda s: s.split(","), default=["none", "reverse_only", "coup"],
                        help=f"comma-separated subset of none,{','.join(DIFFUSION_METHODS)}")
    parser.add_argument("--t-star", type=float, default=None, help="t* of the purifiers (default: the config's)")
    parser.add_argument("--guidance-scale", type=float, default=None,
                        help="COUP's lambda (default: the config's if it is COUP, else 1)")
    return parser


def plot(rows: list[dict], caption: str) -> plt.Figure:
    """Accuracy vs amount, one line per method, 95 % Wilson bands."""
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for method, color in zip(dict.fromkeys(r["method"] for r in rows), plt.cm.tab10.colors):
        curve = sorted((r for r in rows if r["method"] == method), key=lambda r: r["amount"])
        amounts = [r["amount"] for r in curve]
        ax.fill_between(amounts, [100 * r["ci_low"] for r in curve], [100 * r["ci_high"] for r in curve],
                        color=color, alpha=0.2, linewidth=0)
        ax.plot(amounts, [100 * r["accuracy"] for r in curve], "o-", color=color, markersize=4,
                label=METHOD_LABELS.get(method, method))
    ax.set_ylim(-2, 102)
    label_axes(ax, "salt-and-pepper amount p (fraction of pixels replaced)", "accuracy (%)", caption, title_size=9)
    fig.tight_layout()
    return fig


def main(argv: Optional[Sequence[str]] = None) -> dict:
    """Evaluate every (method, amount), write salt_pepper.{csv,json,png} and points/*.json."""
    argv, args, out = start_cli(build_parser(), argv)
    unknown = sorted(set(args.methods) - {"none", *DIFFUSION_METHODS})
    if unknown:
        raise ValueError(f"unknown --methods {unknown}; choose from none,{','.join(DIFFUSION_METHODS)}")
    setup = load_setup(args)
    coup = setup.coup_config(args.t_star, args.guidance_scale)
    images = setup.images
    store = PointStore(out, {"config": config_record(setup), "seeds": seeds_record(setup, args.seed)})
    corruption_seeds = derive_seeds(args.seed, images.indices, SeedStage.CORRUPTION)
    noise_seeds = defense_seeds(args.seed, images.indices)
    rows = []
    for method in args.methods:
        model = setup.defended(method, **method_fields(method, coup.t_star, coup.guidance_scale))
        for amount in args.amounts:
            key = f"{method}_p={amount:g}"
            result = store.load(key)
            if result is None:
                noisy = salt_and_pepper(images.x, amount, corruption_seeds)
                correct = predict(model, noisy, noise_seeds, setup.batch_size) == images.y
                result = {"correct": int(correct.sum()), "images": len(images.y), "per_image": correct.tolist()}
                store.save(key, result)
            rows.append({"method": method, "amount": amount, "images": result["images"], "correct": result["correct"],
                         **{("accuracy" if k == "p" else k): v
                            for k, v in wilson_row(result["correct"], result["images"]).items()}})
        logger.info("%s: %s", method, " ".join(f"{r['accuracy']:.3f}" for r in rows[-len(args.amounts):]))
    payload = {"experiment": NAME, "t_star": coup.t_star, "guidance_scale": coup.guidance_scale, "rows": rows,
               "metadata": image_metadata(setup, argv, args.seed, corruption_stage=int(SeedStage.CORRUPTION))}
    caption = f"{len(images.y)} images; purifiers at t* = {coup.t_star:g}, COUP λ = {coup.guidance_scale:g}"
    write_results(out, NAME, payload, rows, plot(rows, caption))
    log_table(rows, ["method", "amount", "correct", "accuracy", "ci_low", "ci_high"])
    return payload


if __name__ == "__main__":
    run_cli(main)
