"""Wilson score interval against published values (Newcombe 1998, Statistics in Medicine 17:857, Table I, method 3)."""
from __future__ import annotations

import math

import pytest

from utils.stats import wilson_interval


@pytest.mark.parametrize("correct,total,low,high", [
    (81, 263, 0.2553, 0.3662),
    (15, 148, 0.0624, 0.1605),
    (0, 20, 0.0, 0.1611),
    (1, 29, 0.0061, 0.1718),
])
def test_wilson_matches_newcombe_table(correct, total, low, high):
    lo, hi = wilson_interval(correct, total)
    assert lo == pytest.approx(low, abs=5e-5) and hi == pytest.approx(high, abs=5e-5)


def test_wilson_bounds_solve_the_score_equation():
    # each bound p satisfies |p_hat - p| = z sqrt(p (1 - p) / n)
    correct, total, z = 37, 50, 1.959963984540054
    for p in wilson_interval(correct, total):
        assert abs(correct / total - p) == pytest.approx(z * math.sqrt(p * (1 - p) / total), rel=1e-9)


def test_wilson_symmetry_confidence_and_errors():
    lo, hi = wilson_interval(10, 10)
    assert hi == 1.0 and lo == pytest.approx(1.0 - wilson_interval(0, 10)[1])
    assert wilson_interval(5, 10, 0.99)[0] < wilson_interval(5, 10, 0.95)[0]
    with pytest.raises(ValueError, match="correct"):
        wilson_interval(11, 10)
    with pytest.raises(ValueError, match="confidence"):
        wilson_interval(1, 10, 1.0)
