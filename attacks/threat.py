"""The threat model every attack config shares: an eps ball in the Linf or L2 norm around an image in [0, 1],
and the number of stochastic forwards that score the attack's point."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from utils.config import require

Norm = Literal["Linf", "L2"]
DEFAULT_EPS = {"Linf": 8.0 / 255.0, "L2": 0.5}


@dataclass(frozen=True)
class ThreatConfig:
    """eps ball in `norm` (eps None: 8/255 for Linf, 0.5 for L2); x_adv scored by `eval_samples` forwards."""

    norm: Norm = "Linf"
    eps: Optional[float] = None
    eval_samples: int = 10  # stochastic forwards for the single / vote / worst-case scores of x_adv

    def __post_init__(self) -> None:
        require(self.eps is None or self.eps > 0, f"attack.eps must be > 0, got {self.eps}")
        require(self.norm != "Linf" or self.eps is None or self.eps <= 1,
                f"attack.eps must lie in (0, 1] for Linf (images are in [0, 1]; 8/255 = 0.0314), got {self.eps}")
        require(self.eval_samples >= 1, f"attack.eval_samples must be >= 1, got {self.eval_samples}")

    @property
    def radius(self) -> float:
        """The perturbation budget eps."""
        return DEFAULT_EPS[self.norm] if self.eps is None else self.eps


__all__ = ["DEFAULT_EPS", "Norm", "ThreatConfig"]
