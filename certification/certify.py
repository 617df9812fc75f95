"""Randomized-smoothing CERTIFY and PREDICT (Cohen et al. 2019, Algorithms 1 and 2) with per-image seeded noise.

The smoothed classifier g(x) = argmax_c P(f(x + delta) = c), delta ~ N(0, sigma^2 I) in [0, 1] image space.
CERTIFY guesses c_A from N0 selection samples, counts it in N fresh samples, takes the one-sided (1 - alpha)
Clopper-Pearson lower bound pA_lower and certifies the L2 radius sigma Phi^-1(pA_lower), abstaining (-1) when
pA_lower < 1/2. PREDICT counts N samples and returns the top class unless a two-sided binomial test of top-1 vs
top-2 counts has p-value > alpha. Sample j of image `index` in phase `phase` (0 selection, 1 estimation,
2 prediction) uses a CPU torch.Generator seeded with derive_seeds(seed, index, phase, j), so the counts do not
depend on the batch size, the device or on which other images are certified.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from scipy.stats import beta, binomtest, norm
from torch import nn

from runners.noise import per_row_normal
from utils.seeds import derive_seeds

ABSTAIN = -1
SELECTION, ESTIMATION, PREDICTION = 0, 1, 2
Mode = Literal["certify", "predict"]


@dataclass(frozen=True)
class SmoothingSpec:
    """How the smoothed classifier is sampled: noise std, class count, Monte-Carlo budget, batch, noise seed."""

    sigma: float
    num_classes: int
    n0: int = 100
    n: int = 10_000
    alpha: float = 0.001
    batch: int = 100
    seed: int = 0

    def __post_init__(self) -> None:
        if not (self.sigma > 0 and self.num_classes >= 2 and self.n0 >= 1 and self.n >= 1 and self.batch >= 1):
            raise ValueError(f"need sigma > 0, num_classes >= 2, N0, N, batch >= 1; got {self}")
        if not 0.0 < self.alpha < 1.0:
            raise ValueError(f"alpha must lie in (0, 1), got {self.alpha}")


@dataclass(frozen=True)
class SmoothedPrediction:
    """One image's outcome: predicted class (ABSTAIN = -1), certified L2 radius (0 unless certified), pA_lower."""

    prediction: int
    radius: float
    p_a_lower: float


def lower_confidence_bound(n_a: int, n: int, alpha: float) -> float:
    """One-sided (1 - alpha) Clopper-Pearson lower bound on p from n_a successes in n: Beta(alpha; n_a, n - n_a + 1)."""
    if not 0 <= n_a <= n:
        raise ValueError(f"need 0 <= n_a <= n, got n_a={n_a}, n={n}")
    return 0.0 if n_a == 0 else float(beta.ppf(alpha, n_a, n - n_a + 1))


def certify_from_counts(selection: np.ndarray, estimation: np.ndarray, sigma: float,
                        alpha: float) -> SmoothedPrediction:
    """CERTIFY's decision from class counts (K,) of the N0 selection and N estimation samples."""
    c_hat = int(np.argmax(selection))
    p_a_lower = lower_confidence_bound(int(estimation[c_hat]), int(estimation.sum()), alpha)
    if p_a_lower < 0.5:
        return SmoothedPrediction(ABSTAIN, 0.0, p_a_lower)
    return SmoothedPrediction(c_hat, float(sigma * norm.ppf(p_a_lower)), p_a_lower)


def predict_from_counts(counts: np.ndarray, alpha: float) -> int:
    """PREDICT's decision from class counts (K,): the top class, or ABSTAIN if binomtest(top1, top1 + top2) > alpha."""
    order = np.argsort(-counts, kind="stable")
    top1, top2 = int(counts[order[0]]), int(counts[order[1]])
    if binomtest(top1, top1 + top2, p=0.5).pvalue > alpha:
        return ABSTAIN
    return int(order[0])


def sample_seeds(seed: int, index: int, phase: int, num: int) -> torch.Tensor:
    """(num,) int64 seeds of the noise samples 0..num-1 of image `index` in `phase`."""
    return derive_seeds(seed, index, phase, torch.arange(num))


def sample_counts(model: nn.Module, x: torch.Tensor, seeds: torch.Tensor, sigma: float, num_classes: int,
                  batch: int) -> np.ndarray:
    """Class counts (K,) int64 of argmax model(x + sigma z_j) over noise rows z_j seeded by seeds (N,); x (C, H, W).

    The noise is drawn on the CPU and moved to x's device, so counts do not depend on the device either.
    """
    counts = torch.zeros(num_classes, dtype=torch.int64)
    for chunk in seeds.split(batch):
        noise = per_row_normal(chunk, tuple(x.shape), torch.device("cpu"), x.dtype).to(x.device) * sigma
        predictions = model(x.unsqueeze(0) + noise).argmax(dim=1).cpu()
        counts += torch.bincount(predictions, minlength=num_classes)
    return counts.numpy()


def certify(model: nn.Module, x: torch.Tensor, index: int, spec: SmoothingSpec) -> SmoothedPrediction:
    """Cohen et al.'s CERTIFY for one image x (C, H, W) in [0, 1] with dataset index `index`."""
    selection = sample_counts(model, x, sample_seeds(spec.seed, index, SELECTION, spec.n0), spec.sigma,
                              spec.num_classes, spec.batch)
    estimation = sample_counts(model, x, sample_seeds(spec.seed, index, ESTIMATION, spec.n), spec.sigma,
                               spec.num_classes, spec.batch)
    return certify_from_counts(selection, estimation, spec.sigma, spec.alpha)


def predict(model: nn.Module, x: torch.Tensor, index: int, spec: SmoothingSpec) -> SmoothedPrediction:
    """Cohen et al.'s PREDICT for one image x (C, H, W) in [0, 1]; radius and pA_lower are reported as 0."""
    counts = sample_counts(model, x, sample_seeds(spec.seed, index, PREDICTION, spec.n), spec.sigma,
                           spec.num_classes, spec.batch)
    return SmoothedPrediction(predict_from_counts(counts, spec.alpha), 0.0, 0.0)


MODES = {"certify": certify, "predict": predict}
