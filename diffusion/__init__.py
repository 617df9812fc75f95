"""The VP-SDE and the backbone adapter base shared by score_sde/ and guided_diffusion/ (neither imports the other)."""
