"""Per-image randomness: each row of a batch draws its noise from its own seeded torch.Generator."""
from __future__ import annotations

import torch

from utils.seeds import SEED_BITS, derive_seeds, per_row


def per_row_normal(seeds: torch.Tensor, shape: tuple[int, ...], device: torch.device,
                   dtype: torch.dtype) -> torch.Tensor:
    """Standard normal (B, *shape): row b is drawn from a CPU generator seeded with seeds[b] only (utils.seeds.per_row)."""
    return per_row(seeds, lambda gen: torch.randn(shape, generator=gen, dtype=dtype), device)


class NoiseSource:
    """Seeds for the rows of a batch: given per image, or fresh per call from one generator."""

    def __init__(self, seed: int, fixed: bool = False) -> None:
        self.seed = int(seed)
        self.fixed = bool(fixed)
        self._generator = torch.Generator().manual_seed(self.seed)

    def row_seeds(self, batch_size: int, noise_seeds: torch.Tensor | None) -> torch.Tensor:
        """(B,) seeds: `noise_seeds` when given, else drawn fresh (or the same every call if fixed)."""
        if noise_seeds is not None:
            noise_seeds = torch.as_tensor(noise_seeds, dtype=torch.int64).reshape(-1).cpu()
            if noise_seeds.numel() != batch_size:
                raise ValueError(f"noise_seeds has {noise_seeds.numel()} entries for a batch of {batch_size}")
            return noise_seeds
        if self.fixed:
            return derive_seeds(self.seed, torch.arange(batch_size))
        return torch.randint(1 << SEED_BITS, (batch_size,), generator=self._generator, dtype=torch.int64)
