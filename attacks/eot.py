"""The one EOT forward of every attack: K noise draws of each image stacked into the batch dimension.

Row k * B + b of a stacked batch is image b under draw k, with its own noise seed, so one call (or a few chunks of
at most eval.max_batch rows, runners.defended.in_chunks) purifies every draw of every image. The iterates an attack
passes in lie in [0, 1] by construction, so the defended model's per-call value check (a host sync) is skipped here
(utils.images.iterates_in_range); each attack checks its input and scores its result with the check.
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import torch

from utils.images import iterates_in_range

# (x (R, C, H, W), noise seeds (R,) or None) -> logits (R, classes): a model called with per-row noise seeds
LogitsFn = Callable[[torch.Tensor, Optional[torch.Tensor]], torch.Tensor]
# (stacked x (R, C, H, W), noise seeds (R,)) -> (the terms whose sum is differentiated, logits (R, classes))
Evaluate = Callable[[torch.Tensor, Optional[torch.Tensor]], tuple[torch.Tensor, torch.Tensor]]


class EotGradient(NamedTuple):
    """grad: w.r.t. x (B, C, H, W), or per draw (K, B, C, H, W); terms: the differentiated terms (detached);
    logits: (K, B, classes) of the K draws (detached)."""

    grad: torch.Tensor
    terms: torch.Tensor
    logits: torch.Tensor


def stack_draws(x: torch.Tensor, samples: int) -> torch.Tensor:
    """x (B, ...) repeated `samples` times along the batch: (K * B, ...), row k * B + b is image b, draw k."""
    return x.repeat(samples, *([1] * (x.dim() - 1)))


def eot_logits(forward: LogitsFn, x: torch.Tensor, samples: int, noise_seeds: Optional[torch.Tensor]) -> torch.Tensor:
    """Logits (K, B, classes) of K draws of x (B, C, H, W) in one stacked call with noise_seeds (K * B,) (host)."""
    with iterates_in_range():
        logits = forward(stack_draws(x, samples), noise_seeds)
    return logits.view(samples, x.shape[0], -1)


def eot_gradient(evaluate: Evaluate, x: torch.Tensor, samples: int, noise_seeds: Optional[torch.Tensor],
                 per_draw: bool = False, divisor: int = 1) -> EotGradient:
    """Gradient of sum(terms) / divisor over the K stacked draws of x (B, C, H, W), in one forward-backward.

    per_draw: w.r.t. each draw's copy of x (K, B, C, H, W), for aggregations that weigh the draws; else w.r.t. x
    (the draws' gradients summed). The terms are those evaluate(stacked x, noise_seeds) returns with the logits.
    """
    with torch.enable_grad(), iterates_in_range():
        x_in = x.detach().requires_grad_(not per_draw)
        x_rep = stack_draws(x_in, samples)
        x_rep = x_rep.requires_grad_(True) if per_draw else x_rep
        terms, logits = evaluate(x_rep, noise_seeds)
        total = terms.sum() if divisor == 1 else terms.sum() / divisor
        (grad,) = torch.autograd.grad(total, x_rep if per_draw else x_in)
    grad = grad.view(samples, *x.shape) if per_draw else grad
    return EotGradient(grad, terms.detach(), logits.detach().view(samples, x.shape[0], -1))
