"""Classifier guidance as a score wrapper: s(x, t) + lambda * grad_x log p(yhat | x) (COUP, eq. 7)."""
from __future__ import annotations

from typing import Callable, Literal, Optional

import torch
import torch.nn.functional as F
from torch import nn

from utils.images import to_image_space
from utils.registry import Registry

LabelMode = Literal["argmax", "input", "given"]
GradMode = Literal["detached", "full"]

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
LabelRule = Callable[[torch.Tensor, Optional[torch.Tensor]], torch.Tensor]

LABEL_RULES: Registry[LabelRule] = Registry("guidance label mode")


@LABEL_RULES.register("argmax")
def _argmax_label(logits: torch.Tensor, fixed: Optional[torch.Tensor]) -> torch.Tensor:
    """yhat = argmax p(y | x_t), recomputed at every step (as released)."""
    return logits.argmax(dim=1)


def _fixed_label(logits: torch.Tensor, fixed: Optional[torch.Tensor]) -> torch.Tensor:
    """yhat fixed for the whole path: the prediction on the input, or a given label."""
    if fixed is None:
        raise ValueError("this guidance label mode needs labels; pass them to the purifier")
    return fixed


LABEL_RULES.register("input")(_fixed_label)
LABEL_RULES.register("given")(_fixed_label)


def log_prob_gradient(classifier: nn.Module, x: torch.Tensor, grad_mode: GradMode,
                      fixed_labels: Optional[torch.Tensor], label_mode: LabelMode) -> torch.Tensor:
    """grad_x log p(yhat | (x + 1) / 2) for x (B, C, H, W) in [-1, 1], per row (rows are independent).

    grad_mode 'detached' differentiates a detached copy (an outer backward sees a constant);
    'full' keeps the graph so an outer backward includes the second-order term.
    """
    keep_graph = grad_mode == "full" and torch.is_grad_enabled() and x.requires_grad
    with torch.enable_grad():
        x_in = x if keep_graph else x.detach().requires_grad_(True)
        logits = classifier(to_image_space(x_in))
        labels = LABEL_RULES.get(label_mode)(logits.detach(), fixed_labels)
        log_p = F.log_softmax(logits, dim=1).gather(1, labels.view(-1, 1)).sum()
        (grad,) = torch.autograd.grad(log_p, x_in, create_graph=keep_graph)
    return grad


class GuidedScore:
    """Wraps any score s(x, t): returns s + guidance_scale * grad_x log p(yhat | x); scale 0 returns s itself."""

    def __init__(self, score_fn: ScoreFn, classifier: Optional[nn.Module], guidance_scale: float,
                 label_mode: LabelMode = "argmax", grad_mode: GradMode = "detached") -> None:
        if guidance_scale != 0.0 and classifier is None:
            raise ValueError("guidance_scale != 0 needs a guidance classifier")
        LABEL_RULES.get(label_mode)
        if grad_mode not in ("detached", "full"):
            raise ValueError(f"grad_mode must be 'detached' or 'full', got {grad_mode!r}")
        self.score_fn, self.classifier = score_fn, classifier
        self.guidance_scale, self.label_mode, self.grad_mode = float(guidance_scale), label_mode, grad_mode

    def __call__(self, x: torch.Tensor, t: torch.Tensor,
                 labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Guided score (B, C, H, W) at x (B, C, H, W) in [-1, 1], t (B,)."""
        score = self.score_fn(x, t)
        if self.guidance_scale == 0.0:
            return score
        grad = log_prob_gradient(self.classifier, x, self.grad_mode, labels, self.label_mode)
        return score + self.guidance_scale * grad
