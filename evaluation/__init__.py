"""The evaluation pipeline: experiment config, overrides, per-image evaluation, the run store, summary and report."""
