"""Train the demo classifier fmnist-wrn-16-2 (normal training) on Fashion-MNIST padded 28 -> 32.

Usage: python -m training.train_classifier --config configs/train/classifier_fmnist.yml [--dry-run]
Resumes from its own checkpoint (model, optimizer, scheduler, generator, epoch) when present; writes
the final state_dict and a model card next to it atomically.
"""
from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from classifiers import fmnist_wrn_16_2
from classifiers.registry import resolve_path
from training.common import card_tail, config_main, write_text_atomic
from utils.checkpoints import atomic_save
from utils.config import require
from utils.data import DEBIAN_FASHION_MNIST, fashion_mnist_idx, pad_images, subset_indices

log = logging.getLogger("train_classifier")
COMMAND = "python -m training.train_classifier --config {config}"


@dataclass(frozen=True)
class TrainConfig:
    """Training hyper-parameters and paths (relative paths resolve against the config file's directory)."""

    output: str
    checkpoint: str
    data_dir: Optional[str] = None  # None: the Debian package's IDX directory
    train_subset: Optional[int] = None
    test_subset: Optional[int] = None
    data_seed: int = 0
    seed: int = 0
    epochs: int = 5
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    crop_padding: int = 2
    horizontal_flip: bool = True
    eval_batch_size: int = 500
    num_threads: int = 1
    channels_last: bool = True  # NHWC convolutions: about 25 % faster on CPU
    progress_interval: float = 30.0

    def __post_init__(self) -> None:
        require(self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}")
        require(self.batch_size >= 1 and self.eval_batch_size >= 1, "batch sizes must be >= 1")
        require(self.lr > 0, f"lr must be > 0, got {self.lr}")
        require(self.crop_padding >= 0, f"crop_padding must be >= 0, got {self.crop_padding}")
        require(self.num_threads >= 1, f"num_threads must be >= 1, got {self.num_threads}")


def load_split(config: TrainConfig, base: Path, split: str, subset: Optional[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images (N, 1, 32, 32) zero-padded from 28x28, and int64 labels (N,), of a Fashion-MNIST split."""
    directory = DEBIAN_FASHION_MNIST if config.data_dir is None else resolve_path(config.data_dir, base)
    images, labels = fashion_mnist_idx(directory, split)
    keep = subset_indices(len(labels), subset, config.data_seed)
    x = pad_images(torch.from_numpy(images[keep]).unsqueeze(1), 32)
    return x.contiguous(), torch.from_numpy(labels[keep].astype(np.int64))


def augment(x: torch.Tensor, padding: int, flip: bool, generator: torch.Generator) -> torch.Tensor:
    """Random crops of x (B, C, H, W) zero-padded by `padding`, and random horizontal flips."""
    if padding > 0:
        padded = F.pad(x, (padding, padding, padding, padding))
        offsets = torch.randint(0, 2 * padding + 1, (x.shape[0], 2), generator=generator).tolist()
        height, width = x.shape[-2:]
        x = torch.stack([padded[b, :, i:i + height, j:j + width] for b, (i, j) in enumerate(offsets)])
    if flip:
        mask = torch.rand(x.shape[0], generator=generator) < 0.5
        x = torch.where(mask.view(-1, 1, 1, 1), x.flip(-1), x)
    return x


def train_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler,
                images: torch.Tensor, labels: torch.Tensor, config: TrainConfig,
                generator: torch.Generator) -> tuple[float, float]:
    """One shuffled pass over uint8 images (N, 1, 32, 32); returns (mean CE loss, training accuracy)."""
    model.train()
    order = torch.randperm(len(labels), generator=generator)
    total_loss, total_correct = 0.0, 0
    batches = order.split(config.batch_size)
    for batch in tqdm(batches, desc="train", leave=False, mininterval=config.progress_interval):
        x = augment(images[batch].float().div(255.0), config.crop_padding, config.horizontal_flip, generator)
        x = x.contiguous(memory_format=torch.channels_last) if config.channels_last else x
        y = labels[batch]
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        total_loss += loss.item() * len(batch)
        total_correct += int((logits.argmax(dim=-1) == y).sum())
    return total_loss / len(labels), total_correct / len(labels)


@torch.no_grad()
def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int) -> float:
    """Clean accuracy in [0, 1] of the model on uint8 images (N, 1, 32, 32)."""
    model.eval()
    correct = sum(int((model(images[i:i + batch_size].float().div(255.0)).argmax(-1) == labels[i:i + batch_size]).sum())
                  for i in range(0, len(labels), batch_size))
    return correct / len(labels)


def build_training(config: TrainConfig, steps_per_epoch: int) -> tuple[nn.Module, torch.optim.Optimizer,
                                                                       torch.optim.lr_scheduler.LRScheduler]:
    """Model (seeded init), SGD (Nesterov) and a per-step cosine schedule over all epochs."""
    model = fmnist_wrn_16_2(seed=config.seed)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                nesterov=config.nesterov, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs * steps_per_epoch)
    return model, optimizer, scheduler


def model_card(config: TrainConfig, config_path: Path, weights_name: str, accuracy: float, seconds: float) -> str:
    """Markdown describing the weights: data, config, epochs, seed, measured test accuracy, command."""
    lines = [
        f"# {weights_name} - demo Fashion-MNIST classifier (`fmnist-wrn-16-2`)",
        "",
        "- Architecture: RobustBench WideResNet, depth 16, widen factor 2, 1 input channel, 10 classes, "
        "input (B, 1, 32, 32) in [0, 1], no normalisation inside.",
        "- Data: Fashion-MNIST (Xiao et al. 2017) IDX files "
        f"({config.data_dir or DEBIAN_FASHION_MNIST}), images zero-padded 28 -> 32; "
        f"train subset {config.train_subset or 'all 60000'}, test subset {config.test_subset or 'all 10000'}.",
        f"- Training: normal (not adversarial), {config.epochs} epochs, SGD lr {config.lr} "
        f"(Nesterov {config.nesterov}, momentum {config.momentum}, weight decay {config.weight_decay}), "
        f"cosine schedule per step, batch {config.batch_size}, random crop (padding {config.crop_padding}) "
        f"and horizontal flip {config.horizontal_flip}; seed {config.seed}.",
        f"- Measured clean test accuracy: **{100.0 * accuracy:.2f} %**.",
        *card_tail(config, config_path, COMMAND, seconds),
    ]
    return "\n".join(lines)


def run_training(config: TrainConfig, config_path: Path) -> float:
    """Train (resuming from config.checkpoint if present), save weights and model card; returns test accuracy."""
    base = config_path.parent
    torch.set_num_threads(config.num_threads)
    train_x, train_y = load_split(config, base, "train", config.train_subset)
    test_x, test_y = load_split(config, base, "test", config.test_subset)
    steps_per_epoch = -(-len(train_y) // config.batch_size)
    model, optimizer, scheduler = build_training(config, steps_per_epoch)
    generator = torch.Generator().manual_seed(config.seed)
    checkpoint_path, start_epoch, seconds = resolve_path(config.checkpoint, base), 0, 0.0
    if checkpoint_path.is_file():
        state = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        generator.set_state(state["generator"])
        start_epoch, seconds = int(state["epoch"]), float(state["seconds"])
        log.info("resumed from %s at epoch %d", checkpoint_path, start_epoch)
    for epoch in range(start_epoch, config.epochs):
        started = time.time()
        loss, train_accuracy = train_epoch(model, optimizer, scheduler, train_x, train_y, config, generator)
        test_accuracy = evaluate(model, test_x, test_y, config.eval_batch_size)
        seconds += time.time() - started
        log.info("epoch %d/%d: loss %.4f, train accuracy %.4f, test accuracy %.4f (%.0f s)", epoch + 1,
                 config.epochs, loss, train_accuracy, test_accuracy, time.time() - started)
        atomic_save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                     "scheduler": scheduler.state_dict(), "generator": generator.get_state(),
                     "epoch": epoch + 1, "seconds": seconds}, checkpoint_path)
    accuracy = evaluate(model, test_x, test_y, config.eval_batch_size)
    output = resolve_path(config.output, base)
    atomic_save({name: value.contiguous() for name, value in model.state_dict().items()}, output)
    card = output.with_suffix(".md")
    write_text_atomic(model_card(config, config_path, output.name, accuracy, seconds), card)
    log.info("test accuracy %.4f; weights written to %s, model card to %s", accuracy, output.resolve(), card.resolve())
    return accuracy


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point: the exit code."""
    return config_main(__doc__.splitlines()[0], TrainConfig, run_training, log, argv)


if __name__ == "__main__":
    sys.exit(main())
