"""Derived seeds: one hash turns (base seed, keys such as dataset index, stage, step, sample) into a seed.

Every per-image or per-stage seed in the repository comes from derive_seeds, so results do not depend on
batching or on which other images run, and different stages never share a noise stream.
"""
from __future__ import annotations

import enum
from typing import Callable

import numpy as np
import torch

from utils.devices import to_device

SEED_BITS = 62  # derived seeds lie in [0, 2^62): non-negative int64, accepted by torch.Generator.manual_seed
_MASK64 = (1 << 64) - 1
ATTACK_SEED_BITS = 31  # an attack's run seed is < 2^31, accepted by every library's seeding


@enum.unique
class SeedStage(enum.IntEnum):
    """The stage tag mixed into a derived seed, so two stages never share a noise stream (values never change)."""

    ATTACK_START = 0  # PGD random start: (attack seed, index, stage)
    ATTACK_STEP = 1  # purification noise of an attack's EOT samples: (attack seed, index, stage, step, sample)
    SCORE = 2  # purification noise when scoring x_adv: (attack seed, index, stage, 0, sample)
    FIXED = 3  # the one purification noise per image of the fixed-noise white-box mode: (attack seed, index, stage)
    DEFENSE = 7  # experiments' defense noise: (seed, index, stage, key)
    CORRUPTION = 11  # salt-and-pepper corruption fields: (seed, index, stage)
    AUDIT = 13  # the gradient audit's noise draws and random directions: (seed, index, stage, draw)
    CLEAN_NOISE = 1000  # purification noise of the clean forward: (eval seed, index, stage)
    ATTACK_RUN = 1001  # an evaluation's attack seed: (eval seed, stage); the same for every batch
    CASCADE = 2000  # the seed of stage i of a cascade attack: (attack seed, stage, i)


def _splitmix64(z: np.ndarray) -> np.ndarray:
    """The splitmix64 output function on uint64 arrays (Steele et al. 2014; wrap-around arithmetic)."""
    z = z + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def derive_seeds(base_seed: int, *keys: torch.Tensor | int) -> torch.Tensor:
    """CPU int64 seeds in [0, 2^62), shaped like the broadcast keys (0-d for integer keys only).

    h_0 = splitmix64(base_seed), h_j = splitmix64(h_{j-1} XOR key_j), seed = h_n >> 2: every key passes
    through the full splitmix64 avalanche, so changing any one bit of any key changes about half the output
    bits, and the order of the keys matters. Keys are integers or integer tensors (e.g. dataset indices (B,)).
    """
    parts = [np.asarray(torch.as_tensor(key).detach().cpu(), dtype=np.int64).astype(np.uint64) for key in keys]
    shape = np.broadcast_shapes(*(part.shape for part in parts))
    with np.errstate(over="ignore"):
        mixed = _splitmix64(np.full(shape, int(base_seed) & _MASK64, dtype=np.uint64))
        for part in parts:
            mixed = _splitmix64(mixed ^ part)
    return torch.from_numpy(np.asarray(mixed >> np.uint64(64 - SEED_BITS)).astype(np.int64))


def per_row(seeds: torch.Tensor, draw: Callable[[torch.Generator], torch.Tensor],
            device: torch.device | str = "cpu") -> torch.Tensor:
    """Stack draw(generator_b) over rows, generator_b a CPU torch.Generator seeded with seeds[b] only: (B, ...).

    Row b depends on seeds[b] alone, so a batch's noise never depends on the batch size, the other rows or the
    device (drawn on the host, then copied to a GPU through pinned memory without blocking: utils.devices.to_device).
    """
    return to_device(torch.stack([draw(torch.Generator().manual_seed(int(s))) for s in seeds.tolist()]), device)
