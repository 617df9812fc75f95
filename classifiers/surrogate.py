"""Smooth surrogates of ReLU classifiers, for attack gradient paths only: every nn.ReLU becomes a softplus."""
from __future__ import annotations

import copy

from torch import nn


def relu_sites(classifier: nn.Module) -> list[tuple[nn.Module, str]]:
    """(parent module, attribute name) of every nn.ReLU child in `classifier`."""
    return [(parent, name) for parent in classifier.modules() for name, child in parent.named_children()
            if isinstance(child, nn.ReLU)]


def smooth_surrogate(classifier: nn.Module, beta: float) -> nn.Module:
    """A copy of `classifier` with each nn.ReLU replaced by softplus(beta x) / beta (-> ReLU as beta -> inf).

    The copy shares no parameters with the original (weights are copied, frozen as the original). A classifier
    without nn.ReLU modules (e.g. one calling F.relu) has nothing to smooth and raises ValueError.
    """
    if beta <= 0.0:
        raise ValueError(f"the softplus surrogate needs beta > 0, got {beta}")
    surrogate = copy.deepcopy(classifier)
    relus = relu_sites(surrogate)
    if not relus:
        raise ValueError(f"{type(classifier).__name__} has no nn.ReLU modules to smooth: grad_mode 'surrogate' "
                         "needs a classifier built from nn.ReLU activations")
    for parent, name in relus:
        setattr(parent, name, nn.Softplus(beta=beta))
    return surrogate
