"""Training scripts for the small demo models."""
