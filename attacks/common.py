"""What every attack shares: its output, per-image seeds, calling a model with noise seeds, and scoring."""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
from torch import nn

from attacks.eot import LogitsFn, eot_logits
from utils.images import check_images
from utils.seeds import SeedStage, derive_seeds

# progress hook of an attack: called with (iteration done, iterations) after each step; never prints
IterationCallback = Callable[[int, int], None]



@dataclass
class AttackOutput:
    """x_adv (N, C, H, W) in [0, 1]; per scoring rule, predictions (N,) int64 and correct (N,) bool; check flags.

    history: optional per-image traces, each (N, T) (e.g. 'loss' and 'correct' at every iteration);
    extra: optional per-image JSON-able details (N entries), e.g. which cascade stage broke the image.
    """

    x_adv: torch.Tensor
    predictions: dict[str, torch.Tensor]
    correct: dict[str, torch.Tensor]
    flags: dict[str, Optional[str]] = field(default_factory=dict)
    history: dict[str, torch.Tensor] = field(default_factory=dict)
    extra: list[dict[str, Any]] = field(default_factory=list)

    def accuracy(self) -> dict[str, float]:
        """Robust accuracy in [0, 1] under each scoring rule."""
        return {name: float(hits.float().mean()) for name, hits in self.correct.items()}


def accepts_noise_seeds(model: nn.Module) -> bool:
    """Whether model.forward takes a `noise_seeds` argument (per-row seeded randomness)."""
    return "noise_seeds" in inspect.signature(model.forward).parameters


def seeded_call(model: nn.Module) -> LogitsFn:
    """f(x, noise_seeds) -> model output: passes the seeds when the model accepts them, else ignores them."""
    if accepts_noise_seeds(model):
        return lambda x, noise_seeds: model(x, noise_seeds=noise_seeds)
    return lambda x, noise_seeds: model(x)


def repeat_seeds(seed: int, indices: torch.Tensor, stage: int, step: int, samples: int) -> torch.Tensor:
    """(K * B,) seeds for x repeated K times along the batch: row k * B + b gets (seed, index_b, stage, step, k)."""
    return torch.cat([derive_seeds(seed, indices, stage, step, k) for k in range(samples)])


def majority_vote(predictions: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(B,) most frequent label over predictions (K, B); ties go to the smallest label."""
    counts = nn.functional.one_hot(predictions, num_classes).sum(dim=0)
    return counts.argmax(dim=-1)


@torch.no_grad()
def score_samples(model: nn.Module, x: torch.Tensor, y: torch.Tensor, indices: torch.Tensor, seed: int,
                  n_samples: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Predictions and correctness of x (B, C, H, W) under n_samples stochastic forwards, three ways.

    'single': the first forward; 'vote': the majority over all n_samples; 'worst': correct only if every
    forward is correct (its prediction is the first wrong label, or y). Sample k of image b uses
    the noise seed (seed, index_b, SeedStage.SCORE, 0, k) when the model accepts noise_seeds; the samples are
    one stacked call (attacks.eot), chunked by the model's max_batch.
    """
    check_images(x)
    logits = eot_logits(seeded_call(model), x, n_samples, repeat_seeds(seed, indices, SeedStage.SCORE, 0, n_samples))
    predictions = logits.argmax(dim=-1)
    hits = predictions == y.unsqueeze(0)
    all_correct = hits.all(dim=0)
    first_wrong = predictions.gather(0, (~hits).int().argmax(dim=0, keepdim=True)).squeeze(0)
    vote = majority_vote(predictions, logits.shape[-1])
    chosen = {"single": predictions[0], "vote": vote, "worst": torch.where(all_correct, y, first_wrong)}
    correct = {"single": hits[0], "vote": vote == y, "worst": all_correct}
    return chosen, correct
