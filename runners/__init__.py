"""Purifiers (COUP, DiffPure, reverse-only, DiffSmooth, AID), their solvers, guidance and the defended model."""
