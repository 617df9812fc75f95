"""How an attack spends its noise: EOT gradient aggregation ('mean' or DiffHammer-style 'selective') and the noise
seeds of each iteration ('random' per step and sample, or 'fixed': the deterministic white-box mode)."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from attacks.common import repeat_seeds, seeded_call
from utils.registry import Registry
from utils.seeds import SeedStage, derive_seeds

# (per-sample gradients (K, B, ...), per-sample losses (K, B), EM rounds) -> gradient (B, ...)
Aggregation = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]
# (attack seed, dataset indices (B,), iteration, K) -> noise seeds (K * B,), row k * B + b for sample k of image b
NoiseSeeds = Callable[[int, torch.Tensor, int, int], torch.Tensor]
COSINE_FLOOR = 1e-12


def mean_gradient(grads: torch.Tensor, losses: torch.Tensor, em_steps: int) -> torch.Tensor:
    """EOT: (1/K) sum_k grad_k, (B, ...)."""
    return grads.mean(dim=0)


def selective_gradient(grads: torch.Tensor, losses: torch.Tensor, em_steps: int) -> torch.Tensor:
    """EM over EOT samples (after DiffHammer): weights w_k proportional to max(cos(grad_k, g), 0), g = sum_k w_k grad_k.

    E-step: a sample's responsibility is how far its gradient agrees with the current aggregate; M-step: the
    aggregate is the responsibility-weighted sum. Starting from the mean, samples whose gradient points against
    the shared vulnerable direction stop diluting it. (B, ...) from grads (K, B, ...).
    """
    flat = grads.flatten(2)
    direction = flat.mean(dim=0)
    for _ in range(em_steps):
        cosine = nn.functional.cosine_similarity(flat, direction[None], dim=-1, eps=COSINE_FLOOR)  # (K, B)
        weights = cosine.clamp_min(0.0)
        weights = torch.where(weights.sum(dim=0, keepdim=True) > 0, weights, torch.ones_like(weights))
        weights = weights / weights.sum(dim=0, keepdim=True)
        direction = (weights[..., None] * flat).sum(dim=0)
    return direction.view(grads.shape[1:])


def random_noise(seed: int, indices: torch.Tensor, iteration: int, samples: int) -> torch.Tensor:
    """A fresh draw per iteration and sample: (seed, index, ATTACK_STEP, iteration, k)."""
    return repeat_seeds(seed, indices, SeedStage.ATTACK_STEP, iteration, samples)


def fixed_noise(seed: int, indices: torch.Tensor, iteration: int, samples: int) -> torch.Tensor:
    """One draw per image for every iteration (and for scoring): (seed, index, FIXED)."""
    return derive_seeds(seed, indices, SeedStage.FIXED).repeat(samples)


@torch.no_grad()
def score_fixed(model: nn.Module, x: torch.Tensor, y: torch.Tensor, indices: torch.Tensor,
                seed: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Deterministic white-box scoring: the one fixed-noise forward, the same for single / vote / worst."""
    predictions = seeded_call(model)(x, fixed_noise(seed, indices, 0, 1).to(x.device)).argmax(dim=-1)
    hits = predictions == y
    return ({rule: predictions for rule in ("single", "vote", "worst")},
            {rule: hits for rule in ("single", "vote", "worst")})


AGGREGATIONS: Registry[Aggregation] = Registry("EOT aggregation")
AGGREGATIONS.register("mean")(mean_gradient)
AGGREGATIONS.register("selective")(selective_gradient)
NOISE_MODES: Registry[NoiseSeeds] = Registry("attack noise mode")
NOISE_MODES.register("random")(random_noise)
NOISE_MODES.register("fixed")(fixed_noise)
