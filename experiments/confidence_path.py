"""COUP Fig. 2a: classifier confidence p(y_true | x_t) and p(y_adv | x_t) along the purification path.

Adversarial examples are crafted against the reverse-only defended model (--attack, adaptive), then
purified by reverse-only (lambda = 0) and by COUP (lambda > 0) with the same per-image noise; after
every Euler step the classifier's softmax at x_t is recorded (runners.solvers' step callback).
y_adv is the classifier's most probable wrong label at x_adv: argmax_{y != y_true} p(y | x_adv).
Curves are means over images with 95 % Student-t CIs of the mean.
"""
from __future__ import annotations

import argparse
import logging
from typing import Optional, Sequence

import numpy as np
import torch
from torch import nn

from experiments.common import base_parser, label_axes, mean_band, plt, run_cli, start_cli, wilson_row, write_results
from experiments.image_setup import (ImageSetup, add_attack_arguments, add_model_arguments, attack_images,
                                     defense_seeds, image_metadata, load_setup, make_attack, method_fields)
from utils.images import to_image_space

NAME = "confidence_path"
logger = logging.getLogger(__name__)


class ConfidenceRecorder:
    """Step callback: p(y_true | x_t) and p(y_adv | x_t) for a batch, at the start and after every step."""

    def __init__(self, classifier: nn.Module, x_start01: torch.Tensor, y_true: torch.Tensor,
                 y_adv: torch.Tensor) -> None:
        self.classifier, self.y_true, self.y_adv = classifier, y_true, y_adv
        self.p_true: list[torch.Tensor] = []
        self.p_adv: list[torch.Tensor] = []
        self.record(x_start01)

    @torch.no_grad()
    def record(self, x01: torch.Tensor) -> None:
        """Append the two probabilities (B,) at images x01 (B, C, H, W)."""
        probs = torch.softmax(self.classifier(x01), dim=1)
        self.p_true.append(probs.gather(1, self.y_true.view(-1, 1)).squeeze(1))
        self.p_adv.append(probs.gather(1, self.y_adv.view(-1, 1)).squeeze(1))

    def __call__(self, k: int, tau: float, x_next: torch.Tensor) -> None:
        """After step k (from tau): x_next in [-1, 1], seen by the classifier as the guidance sees it."""
        self.record(to_image_space(x_next))

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """p_true, p_adv as (B, n_steps + 1) arrays."""
        return torch.stack(self.p_true, 1).double().numpy(), torch.stack(self.p_adv, 1).double().numpy()


def build_parser() -> argparse.ArgumentParser:
    """The CLI of this experiment."""
    parser = base_parser(NAME, __doc__.splitlines()[0])
    add_model_arguments(parser, num_images=16)
    add_attack_arguments(parser)
    parser.add_argument("--t-star", type=float, default=None, help="purification start t* (default: the config's)")
    parser.add_argument("--guidance-scale", type=float, default=None,
                        help="COUP's lambda (default: the config's if it is COUP, else 1)")
    return parser


@torch.no_grad()
def adversarial_labels(classifier: nn.Module, x_adv: torch.Tensor, y_true: torch.Tensor) -> torch.Tensor:
    """(N,) argmax over y != y_true of the classifier's logits at x_adv."""
    logits = classifier(x_adv).clone()
    logits.scatter_(1, y_true.view(-1, 1), -torch.inf)
    return logits.argmax(dim=1)


def record_paths(setup: ImageSetup, method: str, fields: dict, x_adv: torch.Tensor, y_adv: torch.Tensor,
                 seeds: torch.Tensor) -> dict[str, np.ndarray]:
    """Purify x_adv with `method`; per image (N, T + 1) confidences, final predictions (N,) and the times (T + 1,)."""
    purifier = setup.purifier(method, **fields)
    p_true, p_adv, final = [], [], []
    for part in setup.batches():
        recorder = ConfidenceRecorder(setup.classifier, x_adv[part], setup.images.y[part], y_adv[part])
        with torch.no_grad():
            purified = purifier(x_adv[part], seeds[part], callback=recorder)
            final.append(setup.classifier(purified).argmax(dim=1))
        true_part, adv_part = recorder.arrays()
        p_true.append(true_part)
        p_adv.append(adv_part)
    return {"p_true": np.concatenate(p_true), "p_adv": np.concatenate(p_adv),
            "final_prediction": torch.cat(final).numpy(), "t": np.array(purifier.grid.taus)}


def band_rows(method: str, paths: dict[str, np.ndarray]) -> list[dict]:
    """CSV rows: per step, the mean and 95 % CI of both confidences."""
    true_mean, true_lo, true_hi = mean_band(paths["p_true"])
    adv_mean, adv_lo, adv_hi = mean_band(paths["p_adv"])
    return [{"method": method, "step": k, "t": float(t), "p_true_mean": true_mean[k], "p_true_ci_low": true_lo[k],
             "p_true_ci_high": true_hi[k], "p_adv_mean": adv_mean[k], "p_adv_ci_low": adv_lo[k],
             "p_adv_ci_high": adv_hi[k]} for k, t in enumerate(paths["t"])]


def endpoint_means(paths: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """Mean p_true and p_adv at the start (x_adv) and at the end (purified) of the path."""
    return {where: {key: float(paths[key][:, k].mean()) for key in ("p_true", "p_adv")}
            for where, k in (("start", 0), ("end", -1))}


def plot(results: dict[str, dict[str, np.ndarray]], labels: dict[str, str], attack_name: str) -> plt.Figure:
    """Two panels (true label, adversarial label): mean confidence vs diffusion time, one curve per method."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    keys = (("p_true", "p(y_true | x_t)"), ("p_adv", "p(y_adv | x_t)"))
    for ax, (key, title) in zip(axes, keys):
        for (method, paths), color in zip(results.items(), ("tab:orange", "tab:blue")):
            mean, lo, hi = mean_band(paths[key])
            ax.fill_between(paths["t"], lo, hi, color=color, alpha=0.25, linewidth=0)
            ax.plot(paths["t"], mean, color=color, label=labels[method])
        ax.set_xlim(results[next(iter(results))]["t"][0], 0.0)
        ax.set_ylim(-0.02, 1.02)
        label_axes(ax, "diffusion time t (purification runs from t* to 0)", "classifier probability",
                   f"{title}, mean over {len(paths[key])} images (95 % CI)")
    fig.suptitle(f"Confidence along the purification path of adversarial examples ({attack_name} on reverse-only)",
                 fontsize=11)
    fig.tight_layout()
    return fig


def main(argv: Optional[Sequence[str]] = None) -> dict:
    """Attack, purify with both methods while recording, write confidence_path.{csv,json,npz,png}."""
    argv, args, out = start_cli(build_parser(), argv)
    setup = load_setup(args)
    coup = setup.coup_config(args.t_star, args.guidance_scale)
    methods = {m: method_fields(m, coup.t_star, coup.guidance_scale) for m in ("reverse_only", "coup")}
    attack, params = make_attack(setup, args)
    outputs = attack_images(setup, attack, setup.defended("reverse_only", t_star=coup.t_star))
    x_adv = torch.cat([o.x_adv for o in outputs])
    y_true = setup.images.y
    y_adv = adversarial_labels(setup.classifier, x_adv, y_true)
    seeds = defense_seeds(args.seed, setup.images.indices)
    results = {m: record_paths(setup, m, fields, x_adv, y_adv, seeds) for m, fields in methods.items()}
    n = len(y_true)
    rows = [row for method, paths in results.items() for row in band_rows(method, paths)]
    accuracy = {m: wilson_row(int((r["final_prediction"] == y_true.numpy()).sum()), n) for m, r in results.items()}
    robust = {rule: wilson_row(int(torch.cat([o.correct[rule] for o in outputs]).sum()), n)
              for rule in outputs[0].correct}
    payload = {"experiment": NAME, "methods": methods, "images": n,
               "attack": {"name": args.attack, "params": params, "target": "reverse_only",
                          "robust_accuracy_of_target": robust, "flags": outputs[0].flags},
               "accuracy_after_purification": accuracy, "y_adv_definition": "argmax_{y != y_true} p(y | x_adv)",
               "metadata": image_metadata(setup, argv, args.seed),
               "mean_confidence": {m: endpoint_means(r) for m, r in results.items()}}
    labels = {"reverse_only": "reverse-only (λ = 0)", "coup": f"COUP (λ = {coup.guidance_scale:g})"}
    write_results(out, NAME, payload, rows, plot(results, labels, args.attack))
    arrays = {f"{method}_{key}": value for method, r in results.items() for key, value in r.items()}
    np.savez_compressed(out / f"{NAME}.npz", **arrays)
    logger.info("accuracy after purification: %s", {m: round(a["p"], 4) for m, a in accuracy.items()})
    return payload


if __name__ == "__main__":
    run_cli(main)
