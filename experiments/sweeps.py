"""COUP Fig. 4a / Sec. 5.4: clean and robust accuracy of COUP vs t* (lambda fixed) and vs lambda (t* fixed).

Every point attacks the COUP-defended model of its own (t*, lambda) (adaptive, --attack) and is saved
to <out>/points/ as soon as it is done; a rerun with the same settings skips finished points, so an
interrupted sweep resumes. Clean accuracy is one seeded stochastic forward per image; robust accuracy
is the attack's scoring rule (--score); 95 % Wilson CIs.
"""
from __future__ import annotations

import argparse
import logging
import time
from typing import Optional, Sequence

import torch

from attacks.registry import Attack
from experiments.common import (PointStore, base_parser, label_axes, log_table, parse_values, plt, run_cli, start_cli,
                                wilson_row, write_results)
from experiments.image_setup import (ImageSetup, add_attack_arguments, add_model_arguments, attack_images,
                                     config_record, defense_seeds, image_metadata, load_setup, make_attack, predict,
                                     seeds_record)

NAME = "sweeps"
logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    """The CLI of this experiment."""
    parser = base_parser(NAME, __doc__.splitlines()[0])
    add_model_arguments(parser, num_images=32)
    add_attack_arguments(parser)
    parser.add_argument("--t-stars", type=parse_values, default=parse_values("0.025,0.05,0.1,0.15,0.2"),
                        help="t* values of the t* sweep")
    parser.add_argument("--lambdas", type=parse_values, default=parse_values("0,0.5,1,2,4"),
                        help="guidance scales of the lambda sweep")
    parser.add_argument("--fixed-t-star", type=float, default=None, help="t* of the lambda sweep (default: config's)")
    parser.add_argument("--fixed-guidance-scale", type=float, default=None,
                        help="lambda of the t* sweep (default: the config's if it is COUP, else 1)")
    parser.add_argument("--score", default="single", help="the attack's scoring rule plotted (all are saved)")
    return parser


def point_key(t_star: float, guidance_scale: float) -> str:
    """The file stem of a point."""
    return f"t_star={t_star:g}_lambda={guidance_scale:g}"


def run_point(setup: ImageSetup, attack: Attack, t_star: float, guidance_scale: float, seed: int) -> dict:
    """Clean and attacked correct counts of COUP(t*, lambda) on the images, with the attack's check flags."""
    started = time.perf_counter()
    model = setup.defended("coup", t_star=t_star, guidance_scale=guidance_scale)
    images = setup.images
    clean = predict(model, images.x, defense_seeds(seed, images.indices), setup.batch_size) == images.y
    outputs = attack_images(setup, attack, model)
    robust = {rule: int(torch.cat([o.correct[rule] for o in outputs]).sum()) for rule in outputs[0].correct}
    return {"t_star": t_star, "guidance_scale": guidance_scale, "images": len(images.y),
            "clean_correct": int(clean.sum()), "robust_correct": robust, "flags": outputs[0].flags,
            "seconds": time.perf_counter() - started}


def table_rows(results: dict[str, dict], sweeps: dict[str, list[str]]) -> list[dict]:
    """One CSV row per (sweep, point): accuracies with Wilson CIs under every scoring rule."""
    rows = []
    for sweep, keys in sweeps.items():
        for key in keys:
            result = results[key]
            row = {"sweep": sweep, "t_star": result["t_star"], "guidance_scale": result["guidance_scale"],
                   "images": result["images"]}
            for name, correct in (("clean", result["clean_correct"]), *result["robust_correct"].items()):
                stats = wilson_row(correct, result["images"])
                row.update({f"{name}_acc": stats["p"], f"{name}_ci_low": stats["ci_low"],
                            f"{name}_ci_high": stats["ci_high"]})
            rows.append(row)
    return rows


def plot(rows: list[dict], score: str, fixed: dict[str, float], attack_name: str) -> plt.Figure:
    """Two panels: accuracy vs t* and vs lambda, clean and robust, with 95 % Wilson error bars."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    panels = (("t_star", "t_star", "purification start t* (diffusion time)", f"λ = {fixed['guidance_scale']:g}"),
              ("lambda", "guidance_scale", "guidance scale λ (dimensionless)", f"t* = {fixed['t_star']:g}"))
    for ax, (sweep, column, xlabel, held) in zip(axes, panels):
        curve = sorted((r for r in rows if r["sweep"] == sweep), key=lambda r: r[column])
        x = [r[column] for r in curve]
        for name, label, style in (("clean", "clean accuracy", "s--"), (score, f"robust accuracy ({attack_name}, "
                                                                                 f"{score})", "o-")):
            y = [100 * r[f"{name}_acc"] for r in curve]
            err = [[100 * (r[f"{name}_acc"] - r[f"{name}_ci_low"]) for r in curve],
                   [100 * (r[f"{name}_ci_high"] - r[f"{name}_acc"]) for r in curve]]
            ax.errorbar(x, y, yerr=err, fmt=style, capsize=3, markersize=4, label=label)
        ax.set_ylim(-2, 102)
        label_axes(ax, xlabel, "accuracy (%)",
                   f"COUP, {held}, {curve[0]['images'] if curve else 0} images (95 % Wilson CI)")
    fig.tight_layout()
    return fig


def main(argv: Optional[Sequence[str]] = None) -> dict:
    """Run (or resume) both sweeps, write sweeps.{csv,json,png} and points/*.json to --out."""
    argv, args, out = start_cli(build_parser(), argv)
    setup = load_setup(args)
    coup = setup.coup_config(args.fixed_t_star, args.fixed_guidance_scale)
    fixed = {"t_star": coup.t_star, "guidance_scale": coup.guidance_scale}
    attack, params = make_attack(setup, args)
    store = PointStore(out, {"config": config_record(setup), "attack": [args.attack, params],
                             "seeds": seeds_record(setup, args.seed)})
    sweeps = {"t_star": [(t, fixed["guidance_scale"]) for t in args.t_stars],
              "lambda": [(fixed["t_star"], lam) for lam in args.lambdas]}
    results = {}
    for t_star, scale in dict.fromkeys(p for points in sweeps.values() for p in points):
        key = point_key(t_star, scale)
        results[key] = store.load(key)
        if results[key] is None:
            logger.info("running %s", key)
            results[key] = run_point(setup, attack, t_star, scale, args.seed)
            store.save(key, results[key])
        else:
            logger.info("%s already done, skipped", key)
    rows = table_rows(results, {name: [point_key(*p) for p in points] for name, points in sweeps.items()})
    if f"{args.score}_acc" not in rows[0]:
        raise ValueError(f"--score {args.score!r} is not a scoring rule of {args.attack}; "
                         f"choose one of {sorted(results[next(iter(results))]['robust_correct'])}")
    payload = {"experiment": NAME, "fixed": fixed, "attack": {"name": args.attack, "params": params},
               "metadata": image_metadata(setup, argv, args.seed), "rows": rows, "points": results}
    write_results(out, NAME, payload, rows, plot(rows, args.score, fixed, args.attack))
    log_table(rows, ["sweep", "t_star", "guidance_scale", "clean_acc", f"{args.score}_acc"])
    return payload


if __name__ == "__main__":
    run_cli(main)
