"""Certified robustness: randomized-smoothing certification (DiffSmooth) and its report."""
