"""Confidence intervals for accuracies measured on a finite number of images."""
from __future__ import annotations

import math
from statistics import NormalDist


def wilson_interval(correct: int, total: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval (no continuity correction) for the accuracy correct / total.

    With p = correct / total and z the two-sided normal quantile (1.96 for 95 %):
    (p + z^2 / 2n -+ z sqrt(p (1 - p) / n + z^2 / 4n^2)) / (1 + z^2 / n)   (Wilson 1927; Newcombe 1998, method 3).
    Unlike the normal approximation it stays inside [0, 1] and is sensible at 0 % and 100 %.
    """
    if total <= 0 or not 0 <= correct <= total:
        raise ValueError(f"need 0 <= correct <= total and total > 0, got correct={correct}, total={total}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    z = NormalDist().inv_cdf(0.5 + confidence / 2.0)
    p, n = correct / total, float(total)
    denominator = 1.0 + z * z / n
    centre = (p + z * z / (2.0 * n)) / denominator
    half_width = z * math.sqrt(p * (1.0 - p) / n + z * z / (4.0 * n * n)) / denominator
    return max(0.0, centre - half_width), min(1.0, centre + half_width)
