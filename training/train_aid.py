"""Train AID-Purifier's discriminator D on a frozen classifier with PGD examples and AVmixup.

Usage: python -m training.train_aid --config configs/train/aid_fmnist.yml [--dry-run]
Per batch: x_adv = PGD on the classifier (tr_steps steps of tr_alpha, Linf ball tr_eps, random start);
AVmixup vertex v = clamp01(x + gamma (x_adv - x)); w ~ U(0, 1) per example; D sees w x + (1 - w) v with
the soft label w (1 = clean), BCE loss; SGD on D's head only. All randomness is derived from
(seed, epoch, batch), so a run resumed from its checkpoint equals an uninterrupted one. Writes D's
weights (an AIDHead state_dict) atomically and a model card next to them.
"""
from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from tqdm import tqdm

from attacks.pgd import PGDEOT, PGDEOTConfig
from classifiers import ClassifierConfig, build_classifier
from classifiers.registry import resolve_path
from runners.aid import WIDTH, AIDDiscriminator, AIDPurifier, build_discriminator
from training.common import card_tail, config_main, write_text_atomic
from utils.checkpoints import atomic_save, read_checkpoint
from utils.config import require
from utils.data import DataConfig, ImageSet, load_images
from utils.seeds import derive_seeds

log = logging.getLogger("train_aid")
COMMAND = "python -m training.train_aid --config {config}"
STAGE_ORDER, STAGE_MIX, STAGE_PGD, STAGE_EVAL = 0, 1, 2, 3


@dataclass(frozen=True)
class TrainAIDConfig:
    """D's training recipe and paths (relative paths resolve against the config file's folder)."""

    classifier: ClassifierConfig
    data: DataConfig  # training images
    eval_data: DataConfig  # images for the measured detection / purification numbers
    output: str  # D's weights; the model card is written next to it (.md)
    checkpoint: str  # resumable training state
    taps: tuple[int, ...] = (1, 3)  # paper numbering: 1 = conv1, 2 = block1, 3 = block2, 4 = block3
    bcd: int = 1
    acd: int = 3
    width: int = WIDTH
    tr_eps: float = 0.031
    tr_alpha: float = 0.004
    tr_steps: int = 10
    gamma: float = 1.5  # AVmixup vertex scale
    epochs: int = 1
    batch_size: int = 128
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 2e-4
    seed: int = 0
    def_eps: float = 0.031  # purification budget for the model card's numbers (step def_eps / 4)
    def_step: int = 10
    eval_batch_size: int = 250
    save_every: int = 20  # optimizer steps between resumable checkpoints
    num_threads: int = 1
    progress_interval: float = 30.0

    def __post_init__(self) -> None:
        require(self.tr_eps > 0 and self.tr_alpha > 0 and self.tr_steps >= 1, "tr_eps, tr_alpha > 0, tr_steps >= 1")
        require(self.gamma >= 1.0, f"gamma must be >= 1 (AVmixup scales the perturbation up), got {self.gamma}")
        require(self.epochs >= 1 and self.batch_size >= 2, "epochs >= 1 and batch_size >= 2 (BatchNorm) required")
        require(self.lr > 0 and self.save_every >= 1 and self.num_threads >= 1, "lr > 0, save_every >= 1, "
                "num_threads >= 1 required")


def run_seed(seed: int, *keys: int) -> int:
    """An int seed mixed from (seed, *keys), e.g. (seed, STAGE_MIX, epoch, batch)."""
    return int(derive_seeds(seed, *keys))


def avmixup(x: torch.Tensor, x_adv: torch.Tensor, gamma: float,
            generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(w x + (1 - w) v, w): v = clamp01(x + gamma (x_adv - x)), w ~ U(0, 1) (B,) the 'clean' soft label."""
    vertex = (x + gamma * (x_adv - x)).clamp(0.0, 1.0)
    w = torch.rand(x.shape[0], generator=generator, dtype=x.dtype).to(x.device)
    weight = w.view(-1, *([1] * (x.dim() - 1)))
    return weight * x + (1.0 - weight) * vertex, w


def training_attack(config: TrainAIDConfig) -> PGDEOT:
    """Linf PGD on the bare classifier: tr_steps steps of tr_alpha in the tr_eps ball, random start."""
    return PGDEOT(PGDEOTConfig(norm="Linf", eps=config.tr_eps, step_size=config.tr_alpha, iterations=config.tr_steps,
                               eot_samples=1, random_start=True, eval_samples=1, sanity_checks=False))


def train_step(discriminator: AIDDiscriminator, optimizer: torch.optim.Optimizer, inputs: torch.Tensor,
               labels: torch.Tensor) -> float:
    """One SGD step of BCE(D(inputs), labels) on D's head; inputs (B, C, H, W) in [0, 1], labels (B,) in [0, 1]."""
    with torch.no_grad():
        feats = discriminator.taps(inputs)
    loss = F.binary_cross_entropy_with_logits(discriminator.head(feats), labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.item()


def train_epoch(discriminator: AIDDiscriminator, optimizer: torch.optim.Optimizer, data: ImageSet,
                config: TrainAIDConfig, epoch: int, start_batch: int,
                on_step: Callable[[float, int, int], None]) -> None:
    """Batches start_batch.. of one shuffled epoch; after each, on_step(BCE loss, next batch, batches in epoch)."""
    attack = training_attack(config)
    shuffle = torch.Generator().manual_seed(run_seed(config.seed, STAGE_ORDER, epoch))
    batches = torch.randperm(len(data.y), generator=shuffle).split(config.batch_size)
    bar = tqdm(range(start_batch, len(batches)), desc=f"epoch {epoch + 1}", mininterval=config.progress_interval)
    for b in bar:
        x, y, indices = data.x[batches[b]], data.y[batches[b]], data.indices[batches[b]]
        x_adv = attack.perturb(discriminator.classifier, x, y, indices, run_seed(config.seed, STAGE_PGD, epoch)).x_adv
        generator = torch.Generator().manual_seed(run_seed(config.seed, STAGE_MIX, epoch, b))
        inputs, labels = avmixup(x, x_adv, config.gamma, generator)
        discriminator.train()
        loss = train_step(discriminator, optimizer, inputs, labels)
        bar.set_postfix(bce=f"{loss:.4f}", refresh=False)
        on_step(loss, b + 1, len(batches))


@torch.no_grad()
def evaluate(discriminator: AIDDiscriminator, data: ImageSet, config: TrainAIDConfig) -> dict[str, float]:
    """Detection accuracy of D (clean vs PGD at tr_eps) and classifier accuracy before/after purification."""
    discriminator.eval()
    attack, classifier = training_attack(config), discriminator.classifier
    purifier = AIDPurifier(discriminator, config.def_step, config.def_eps)
    totals = dict.fromkeys(("d_clean", "d_adv", "detect_clean", "detect_adv", "acc_clean", "acc_adv",
                            "acc_clean_purified", "acc_adv_purified"), 0.0)
    for start in range(0, len(data.y), config.eval_batch_size):
        x, y = data.x[start:start + config.eval_batch_size], data.y[start:start + config.eval_batch_size]
        indices = data.indices[start:start + config.eval_batch_size]
        x_adv = attack.perturb(classifier, x, y, indices, run_seed(config.seed, STAGE_EVAL)).x_adv
        d_clean, d_adv = discriminator(x), discriminator(x_adv)
        batch = {"d_clean": d_clean, "d_adv": d_adv, "detect_clean": d_clean > 0.5, "detect_adv": d_adv < 0.5}
        for name, images in (("clean", x), ("adv", x_adv)):
            batch[f"acc_{name}"] = classifier(images).argmax(-1) == y
            batch[f"acc_{name}_purified"] = classifier(purifier(images)).argmax(-1) == y
        for name, values in batch.items():
            totals[name] += float(values.float().sum())
    metrics = {name: total / len(data.y) for name, total in totals.items()}
    metrics["detection_accuracy"] = (metrics["detect_clean"] + metrics["detect_adv"]) / 2.0
    return metrics


def model_card(config: TrainAIDConfig, config_path: Path, weights_name: str, metrics: dict[str, float],
               steps: int, seconds: float) -> str:
    """Markdown describing D's weights: data, config, steps, seed, measured numbers, command."""
    pct = {name: f"{100.0 * value:.2f} %" for name, value in metrics.items()}
    lines = [
        f"# {weights_name} - AID-Purifier discriminator on `{config.classifier.name}`",
        "",
        f"- Discriminator: taps {list(config.taps)} (1 = conv1, 2 = block1, 3 = block2, 4 = block3), bcd {config.bcd}, "
        f"acd {config.acd}, width {config.width}; a `runners.aid.AIDHead` state_dict.",
        f"- Data: {config.data.name} {config.data.split} split, {config.data.num_sub or 'all'} images "
        f"(data_seed {config.data.data_seed}); evaluation on {config.eval_data.name} {config.eval_data.split}, "
        f"{config.eval_data.num_sub or 'all'} images (data_seed {config.eval_data.data_seed}).",
        f"- Training: {config.epochs} epoch(s), {steps} SGD steps (lr {config.lr}, momentum {config.momentum}, "
        f"weight decay {config.weight_decay}, batch {config.batch_size}); PGD {config.tr_steps} x {config.tr_alpha} in "
        f"Linf {config.tr_eps} with random start; AVmixup gamma {config.gamma}, w ~ U(0, 1); seed {config.seed}.",
        f"- Measured on the evaluation images (PGD as in training, against the classifier alone): detection "
        f"accuracy **{pct['detection_accuracy']}** (clean judged clean {pct['detect_clean']}, adversarial judged "
        f"adversarial {pct['detect_adv']}; mean D clean {metrics['d_clean']:.3f}, adversarial {metrics['d_adv']:.3f}).",
        f"- Classifier accuracy, non-adaptive (purification {config.def_step} steps, eps {config.def_eps}, "
        f"alpha eps/4): "
        f"clean {pct['acc_clean']} -> purified {pct['acc_clean_purified']}; adversarial {pct['acc_adv']} -> "
        f"purified {pct['acc_adv_purified']}.",
        *card_tail(config, config_path, COMMAND, seconds),
    ]
    return "\n".join(lines)


def resume(discriminator: AIDDiscriminator, optimizer: torch.optim.Optimizer,
           path: Optional[Path]) -> tuple[int, int, int, float]:
    """Load the training state from path if it exists: (epoch, next batch, steps done, seconds)."""
    if path is None or not path.is_file():
        return 0, 0, 0, 0.0
    state = read_checkpoint(path, "delete it to start over")
    discriminator.head.load_state_dict(state["head"])
    optimizer.load_state_dict(state["optimizer"])
    log.info("resumed from %s at epoch %d, batch %d", path, int(state["epoch"]), int(state["batch"]))
    return int(state["epoch"]), int(state["batch"]), int(state["steps"]), float(state["seconds"])


def fit(discriminator: AIDDiscriminator, data: ImageSet, config: TrainAIDConfig,
        checkpoint_path: Optional[Path] = None) -> tuple[list[float], int, float]:
    """Train D, resuming from checkpoint_path when it exists: (this run's BCE losses, total steps, total seconds)."""
    optimizer = torch.optim.SGD(discriminator.head.parameters(), lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay)
    first_epoch, first_batch, steps, seconds = resume(discriminator, optimizer, checkpoint_path)
    losses: list[float] = []
    started = time.time()

    def on_step(loss: float, epoch: int, next_batch: int, n_batches: int) -> None:
        losses.append(loss)
        if checkpoint_path is not None and (len(losses) % config.save_every == 0 or next_batch == n_batches):
            done = next_batch == n_batches
            atomic_save({"head": discriminator.head.state_dict(), "optimizer": optimizer.state_dict(),
                         "epoch": epoch + 1 if done else epoch, "batch": 0 if done else next_batch,
                         "steps": steps + len(losses), "seconds": seconds + time.time() - started}, checkpoint_path)

    for epoch in range(first_epoch, config.epochs):
        before = len(losses)
        train_epoch(discriminator, optimizer, data, config, epoch, first_batch if epoch == first_epoch else 0,
                    lambda loss, b, n: on_step(loss, epoch, b, n))
        epoch_losses = losses[before:]
        log.info("epoch %d/%d: mean BCE %.4f over %d steps", epoch + 1, config.epochs,
                 sum(epoch_losses) / max(len(epoch_losses), 1), len(epoch_losses))
    return losses, steps + len(losses), seconds + time.time() - started


def run_training(config: TrainAIDConfig, config_path: Path) -> dict[str, float]:
    """Train D on the frozen classifier, write weights and model card; returns the measured numbers."""
    base = config_path.parent
    torch.set_num_threads(config.num_threads)
    classifier = build_classifier(config.classifier, base)
    discriminator = build_discriminator(classifier, config.taps, config.bcd, config.acd, config.width, config.seed)
    train_data = load_images(config.data, base)
    log.info("training D (%d head parameters) on %d images", sum(p.numel() for p in discriminator.head.parameters()),
             len(train_data.y))
    _, steps, seconds = fit(discriminator, train_data, config, resolve_path(config.checkpoint, base))
    metrics = evaluate(discriminator, load_images(config.eval_data, base), config)
    output = resolve_path(config.output, base)
    atomic_save({name: value.contiguous() for name, value in discriminator.head.state_dict().items()}, output)
    write_text_atomic(model_card(config, config_path, output.name, metrics, steps, seconds), output.with_suffix(".md"))
    log.info("measured: %s", ", ".join(f"{name} {value:.4f}" for name, value in metrics.items()))
    log.info("weights written to %s, model card to %s", output, output.with_suffix(".md"))
    return metrics


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point: the exit code."""
    return config_main(__doc__.splitlines()[0], TrainAIDConfig, run_training, log, argv)


if __name__ == "__main__":
    sys.exit(main())
