"""Classifier guidance as a score wrapper: s(x, t) + lambda * grad_x log p(yhat | x) (COUP, eq. 7).

What an attack's backward sees of the guidance term is the explicit grad_mode: 'detached' (a constant), 'full'
(its exact Jacobian, second order through the classifier) or 'surrogate' (the forward value is exact, the backward
uses the Jacobian of a softplus copy of the classifier: a smooth surrogate in the attack's gradient path only).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal, Optional, get_args

import torch
import torch.nn.functional as F
from torch import nn

from diffusion.sde import ScoreFn
from utils.images import to_image_space
from utils.registry import Registry

LabelMode = Literal["argmax", "input", "given"]
GradMode = Literal["detached", "full", "surrogate"]
GRAD_MODES: tuple[str, ...] = get_args(GradMode)


@dataclass(frozen=True)
class LabelRule:
    """How yhat is chosen: `path` fixes labels once per purification, `step` picks them at each x_t."""

    path: Callable[[nn.Module, torch.Tensor, Optional[torch.Tensor]], Optional[torch.Tensor]]
    step: Callable[[torch.Tensor, Optional[torch.Tensor]], torch.Tensor]


def _given_labels(classifier: nn.Module, x01: torch.Tensor, labels: Optional[torch.Tensor]) -> torch.Tensor:
    """The caller's labels (analyses only)."""
    if labels is None:
        raise ValueError("label_mode 'given' needs labels=... in the purifier call")
    return labels


@torch.no_grad()
def _input_prediction(classifier: nn.Module, x01: torch.Tensor, labels: Optional[torch.Tensor]) -> torch.Tensor:
    """The classifier's prediction on the purifier's input (B,)."""
    return classifier(x01).argmax(dim=1)


LABEL_RULES: Registry[LabelRule] = Registry("guidance label mode")
LABEL_RULES.register("argmax")(LabelRule(path=lambda classifier, x01, labels: None,
                                         step=lambda logits, fixed: logits.argmax(dim=1)))
LABEL_RULES.register("input")(LabelRule(path=_input_prediction, step=lambda logits, fixed: fixed))
LABEL_RULES.register("given")(LabelRule(path=_given_labels, step=lambda logits, fixed: fixed))


def _guidance_gradient(classifier: nn.Module, x: torch.Tensor, keep_graph: bool, fixed_labels: Optional[torch.Tensor],
                       label_mode: LabelMode) -> tuple[torch.Tensor, torch.Tensor]:
    """(grad_x log p(yhat | (x + 1) / 2) (B, C, H, W), yhat (B,)) for x in [-1, 1]; keep_graph for an outer backward."""
    with torch.enable_grad():
        x_in = x if keep_graph else x.detach().requires_grad_(True)
        logits = classifier(to_image_space(x_in))
        labels = LABEL_RULES.get(label_mode).step(logits.detach(), fixed_labels)
        log_p = F.log_softmax(logits, dim=1).gather(1, labels.view(-1, 1)).sum()
        (grad,) = torch.autograd.grad(log_p, x_in, create_graph=keep_graph)
    return grad, labels


def log_prob_gradient(classifier: nn.Module, x: torch.Tensor, grad_mode: GradMode,
                      fixed_labels: Optional[torch.Tensor], label_mode: LabelMode,
                      surrogate: Optional[nn.Module] = None) -> torch.Tensor:
    """grad_x log p(yhat | (x + 1) / 2) for x (B, C, H, W) in [-1, 1], per row (rows are independent).

    grad_mode 'detached' differentiates a detached copy (an outer backward sees a constant);
    'full' keeps the graph so an outer backward includes the second-order term;
    'surrogate' returns the same value as 'full' but an outer backward differentiates `surrogate`'s
    log p(yhat | x) (same yhat) instead: g + (g_s - stop_grad(g_s)).
    """
    tracking = torch.is_grad_enabled() and x.requires_grad
    grad, labels = _guidance_gradient(classifier, x, grad_mode == "full" and tracking, fixed_labels, label_mode)
    if grad_mode != "surrogate" or not tracking:
        return grad
    if surrogate is None:
        raise ValueError("grad_mode 'surrogate' needs the surrogate classifier (classifiers.surrogate.smooth_surrogate)")
    smooth, _ = _guidance_gradient(surrogate, x, True, labels, "given")
    return grad + (smooth - smooth.detach())


class GuidedScore:
    """Wraps any score s(x, t): returns s + guidance_scale * grad_x log p(yhat | x); scale 0 returns s itself.

    grad_mode 'surrogate' differentiates `surrogate` (e.g. a softplus copy of the classifier) in the backward.
    """

    def __init__(self, score_fn: ScoreFn, classifier: Optional[nn.Module], guidance_scale: float,
                 label_mode: LabelMode = "argmax", grad_mode: GradMode = "detached",
                 surrogate: Optional[nn.Module] = None) -> None:
        if guidance_scale != 0.0 and classifier is None:
            raise ValueError("guidance_scale != 0 needs a guidance classifier")
        LABEL_RULES.get(label_mode)
        if grad_mode not in GRAD_MODES:
            raise ValueError(f"grad_mode must be one of {', '.join(GRAD_MODES)}, got {grad_mode!r}")
        if grad_mode == "surrogate" and guidance_scale != 0.0 and surrogate is None:
            raise ValueError("grad_mode 'surrogate' needs a surrogate classifier (classifiers.surrogate)")
        self.score_fn, self.classifier = score_fn, classifier
        self.guidance_scale, self.label_mode, self.grad_mode = float(guidance_scale), label_mode, grad_mode
        self.surrogate = surrogate

    def path_labels(self, x01: torch.Tensor, labels: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        """Labels fixed for a whole purification of x01 (B, C, H, W) in [0, 1], or None (label_mode 'argmax')."""
        if self.guidance_scale == 0.0:
            return None
        return LABEL_RULES.get(self.label_mode).path(self.classifier, x01, labels)

    def __call__(self, x: torch.Tensor, t: torch.Tensor,
                 labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Guided score (B, C, H, W) at x (B, C, H, W) in [-1, 1], t (B,)."""
        score = self.score_fn(x, t)
        if self.guidance_scale == 0.0:
            return score
        grad = log_prob_gradient(self.classifier, x, self.grad_mode, labels, self.label_mode, self.surrogate)
        return score + self.guidance_scale * grad
