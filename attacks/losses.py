"""Per-image attack losses on logits (N, num_classes) and labels (N,): cross-entropy and DLR (Croce and Hein 2020)."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from utils.registry import Registry

RowLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
DLR_FLOOR = 1e-12  # keeps the DLR denominator positive when the top logits tie


def cross_entropy_rows(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(N,) CE(z, y) = -log softmax(z)_y per row."""
    return F.cross_entropy(logits, y, reduction="none")


def dlr_rows(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(N,) DLR(z, y) = -(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3), pi the logits sorted decreasingly (APGD eq. 6).

    Positive exactly when the image is misclassified; invariant to shifting and scaling the logits.
    Needs at least three classes.
    """
    if logits.shape[-1] < 3:
        raise ValueError(f"the DLR loss needs at least 3 classes, got {logits.shape[-1]}; use loss 'ce'")
    ranked = logits.sort(dim=-1, descending=True).values
    z_y = logits.gather(1, y[:, None]).squeeze(1)
    others = logits.scatter(1, y[:, None], float("-inf")).amax(dim=-1)
    return -(z_y - others) / (ranked[:, 0] - ranked[:, 2]).clamp_min(DLR_FLOOR)


LOSSES: Registry[RowLoss] = Registry("attack loss")
LOSSES.register("ce")(cross_entropy_rows)
LOSSES.register("dlr")(dlr_rows)
