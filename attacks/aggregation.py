"""How an attack spends its noise: EOT gradient aggregation ('mean' or DiffHammer-style 'selective') and the noise
seeds of each iteration ('random' per step and sample, or 'fixed': the deterministic white-box mode)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from attacks.common import repeat_seeds, seeded_call
from attacks.pgd import BALLS
from utils.registry import Registry
from utils.seeds import SeedStage, derive_seeds


@dataclass(frozen=True)
class SelectiveSettings:
    """What the selective aggregation needs of the attack: its geometry, radius and EM settings."""

    norm: str  # 'Linf' | 'L2'
    radius: float
    em_steps: int
    sharpness: float  # lambda of the E-step's sigmoid


# (per-sample gradients (K, B, ...), per-sample losses (K, B), settings) -> gradient (B, ...)
Aggregation = Callable[[torch.Tensor, torch.Tensor, SelectiveSettings], torch.Tensor]
# (attack seed, dataset indices (B,), iteration, K) -> noise seeds (K * B,), row k * B + b for sample k of image b
NoiseSeeds = Callable[[int, torch.Tensor, int, int], torch.Tensor]


def mean_gradient(grads: torch.Tensor, losses: torch.Tensor, settings: SelectiveSettings) -> torch.Tensor:
    """EOT: (1/K) sum_k grad_k, (B, ...)."""
    return grads.mean(dim=0)


def predicted_losses(flat: torch.Tensor, losses: torch.Tensor, directions: torch.Tensor,
                     settings: SelectiveSettings) -> torch.Tensor:
    """(M, K, B): sample k's loss after a step of the radius along unit(direction m), to first order:
    l_k + radius <unit(d_m), g_k>, for gradients flat (K, B, D), losses (K, B) and directions (M, B, D)."""
    unit = BALLS[settings.norm].step(directions.reshape(-1, flat.shape[-1]), 1.0).view_as(directions)
    return losses[None] + settings.radius * torch.einsum("mbd,kbd->mkb", unit, flat)


def selective_gradient(grads: torch.Tensor, losses: torch.Tensor, settings: SelectiveSettings) -> torch.Tensor:
    """Selective aggregation after DiffHammer (Wang et al., NeurIPS 2024): EM over the EOT samples, (B, ...) from
    grads (K, B, ...) and losses (K, B), weighting the purifications an attack can break.

    Start from the sample gradient whose step raises the most loss over all samples, sum_k elu(l_k + radius
    <unit(g_m), g_k>); then em_steps rounds of E: w_k = sigmoid(lambda (l_k + radius <unit(g), g_k>)), the
    responsibility of sample k for the vulnerable set (its loss, predicted after a step along g, is high: for a
    margin loss such as DLR, positive means misclassified), and M: g = sum_k w_k g_k / sum_k w_k (normalised in log
    space, so a sharp lambda cannot underflow every weight). The samples no step along g can break stop diluting the
    direction that breaks the others. unit() is the attack's step direction (sign for Linf, normalised for L2), so the
    first-order prediction is that of the attack's actual step. Differences from the released code: the E-step's
    first-order term is scaled by the radius (the start's already is there), EM iterates em_steps rounds, and the
    gradient is not averaged over iterations (APGD's momentum plays that part).
    """
    k, b = losses.shape
    flat = grads.reshape(k, b, -1)
    start = F.elu(predicted_losses(flat, losses, flat, settings)).sum(dim=1).argmax(dim=0)  # (B,)
    direction = flat[start, torch.arange(b, device=flat.device)]
    for _ in range(settings.em_steps):
        log_weights = F.logsigmoid(settings.sharpness * predicted_losses(flat, losses, direction[None], settings)[0])
        direction = (torch.softmax(log_weights, dim=0)[..., None] * flat).sum(dim=0)
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
    predictions = seeded_call(model)(x, fixed_noise(seed, indices, 0, 1)).argmax(dim=-1)
    hits = predictions == y
    return ({rule: predictions for rule in ("single", "vote", "worst")},
            {rule: hits for rule in ("single", "vote", "worst")})


AGGREGATIONS: Registry[Aggregation] = Registry("EOT aggregation")
AGGREGATIONS.register("mean")(mean_gradient)
AGGREGATIONS.register("selective")(selective_gradient)
NOISE_MODES: Registry[NoiseSeeds] = Registry("attack noise mode")
NOISE_MODES.register("random")(random_noise)
NOISE_MODES.register("fixed")(fixed_noise)
