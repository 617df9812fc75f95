"""COUP Fig. 5/6: a grid of clean / adversarial / DiffPure / reverse-only / COUP images with the classifier's labels.

The adversarial row is crafted against --attack-target's defended model (default reverse-only); the
three purified rows purify that same x_adv at one t* with the same per-image noise seeds. Each cell
is titled with the classifier's prediction (green: correct, red: wrong); the CSV lists predictions
and the L2 / Linf distances of every cell to the clean image.
"""
from __future__ import annotations

import argparse
import logging
from typing import Optional, Sequence

import numpy as np
import torch

from experiments.common import base_parser, plt, run_cli, start_cli, write_results
from experiments.image_setup import (DIFFUSION_METHODS, add_attack_arguments, add_model_arguments, attack_images,
                                     defense_seeds, image_metadata, load_setup, make_attack, method_fields)

NAME = "purified_images"
PURIFIED_ROWS = ("diffpure", "reverse_only", "coup")
ROW_TITLES = {"clean": "clean", "adversarial": "adversarial", "diffpure": "DiffPure", "reverse_only": "reverse-only",
              "coup": "COUP"}
logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    """The CLI of this experiment."""
    parser = base_parser(NAME, __doc__.splitlines()[0])
    add_model_arguments(parser, num_images=8)
    add_attack_arguments(parser)
    parser.add_argument("--attack-target", default="reverse_only", choices=["none", *DIFFUSION_METHODS],
                        help="the defended model the attack differentiates (default reverse_only)")
    parser.add_argument("--t-star", type=float, default=None, help="t* of every purifier (default: the config's)")
    parser.add_argument("--guidance-scale", type=float, default=None,
                        help="COUP's lambda (default: the config's if it is COUP, else 1)")
    return parser


def to_display(x: torch.Tensor) -> np.ndarray:
    """Images (N, C, H, W) in [0, 1] -> (N, H, W) for 1 channel or (N, H, W, C), clipped for display."""
    x = x.detach().clamp(0.0, 1.0).cpu()
    return x[:, 0].numpy() if x.shape[1] == 1 else x.permute(0, 2, 3, 1).numpy()


def plot_grid(rows: dict[str, torch.Tensor], predictions: dict[str, torch.Tensor], labels: torch.Tensor,
              caption: str) -> plt.Figure:
    """One row per image set, one column per image; titles are predicted labels (green correct, red wrong)."""
    n = labels.shape[0]
    fig, axes = plt.subplots(len(rows), n, figsize=(1.25 * n + 1.0, 1.45 * len(rows) + 0.6), squeeze=False)
    for i, (name, images) in enumerate(rows.items()):
        shown = to_display(images)
        for j in range(n):
            ax = axes[i][j]
            ax.imshow(shown[j], cmap="gray" if shown.ndim == 3 else None, vmin=0.0, vmax=1.0,
                      interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            correct = bool(predictions[name][j] == labels[j])
            ax.set_title(f"pred {int(predictions[name][j])}", fontsize=8, color="green" if correct else "red")
            if j == 0:
                ax.set_ylabel(ROW_TITLES.get(name, name), fontsize=9)
            if i == len(rows) - 1:
                ax.set_xlabel(f"label {int(labels[j])}", fontsize=8)
    fig.suptitle(caption, fontsize=9)
    fig.tight_layout()
    return fig


def cell_rows(rows: dict[str, torch.Tensor], predictions: dict[str, torch.Tensor], labels: torch.Tensor,
              indices: torch.Tensor) -> list[dict]:
    """CSV rows: per (image set, image) the prediction and its distances to the clean image."""
    clean = rows["clean"].flatten(1)
    out = []
    for name, images in rows.items():
        diff = images.flatten(1) - clean
        for j in range(labels.shape[0]):
            out.append({"row": name, "dataset_index": int(indices[j]), "label": int(labels[j]),
                        "prediction": int(predictions[name][j]), "correct": bool(predictions[name][j] == labels[j]),
                        "l2_to_clean": float(diff[j].norm()), "linf_to_clean": float(diff[j].abs().max())})
    return out


def main(argv: Optional[Sequence[str]] = None) -> dict:
    """Attack, purify three ways, write purified_images.{png,csv,json,npz}."""
    argv, args, out = start_cli(build_parser(), argv)
    setup = load_setup(args)
    coup = setup.coup_config(args.t_star, args.guidance_scale)
    attack, params = make_attack(setup, args)
    target_fields = method_fields(args.attack_target, coup.t_star, coup.guidance_scale)
    outputs = attack_images(setup, attack, setup.defended(args.attack_target, **target_fields))
    images = setup.images
    rows = {"clean": images.x, "adversarial": torch.cat([o.x_adv for o in outputs])}
    seeds = defense_seeds(args.seed, images.indices)
    for method in PURIFIED_ROWS:
        purifier = setup.purifier(method, **method_fields(method, coup.t_star, coup.guidance_scale))
        with torch.no_grad():
            rows[method] = torch.cat([purifier(rows["adversarial"][p], seeds[p]) for p in setup.batches()])
    with torch.no_grad():
        predictions = {name: setup.classifier(x).argmax(dim=1) for name, x in rows.items()}
    accuracy = {name: float((p == images.y).double().mean()) for name, p in predictions.items()}
    payload = {"experiment": NAME, "t_star": coup.t_star, "guidance_scale": coup.guidance_scale,
               "attack": {"name": args.attack, "params": params, "target": args.attack_target,
                          "flags": outputs[0].flags},
               "accuracy_per_row": accuracy,
               "metadata": image_metadata(setup, argv, args.seed)}
    caption = (f"{args.attack} against {ROW_TITLES.get(args.attack_target, args.attack_target)}; purified at "
               f"t* = {coup.t_star:g}, COUP λ = {coup.guidance_scale:g}; title: prediction (green correct)")
    write_results(out, NAME, payload, cell_rows(rows, predictions, images.y, images.indices),
                  plot_grid(rows, predictions, images.y, caption))
    np.savez_compressed(out / f"{NAME}.npz", labels=images.y.numpy(),
                        **{name: x.detach().cpu().numpy().astype(np.float32) for name, x in rows.items()})
    logger.info("accuracy per row: %s", accuracy)
    return payload


if __name__ == "__main__":
    run_cli(main)
