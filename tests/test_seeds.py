"""utils.seeds.derive_seeds: the splitmix64 chain against a plain-Python reference, shapes and range."""
from __future__ import annotations

import torch

from utils.seeds import SEED_BITS, derive_seeds

MASK = (1 << 64) - 1


def splitmix64(z: int) -> int:
    """splitmix64's output function on Python ints (Steele, Lea and Flood 2014)."""
    z = (z + 0x9E3779B97F4A7C15) & MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return z ^ (z >> 31)


def reference(base_seed: int, *keys: int) -> int:
    mixed = splitmix64(base_seed & MASK)
    for key in keys:
        mixed = splitmix64(mixed ^ (key & MASK))
    return mixed >> (64 - SEED_BITS)


def test_derive_seeds_matches_the_python_reference():
    assert splitmix64(0) == 0xE220A8397B1DCDAF  # first output of splitmix64 seeded with 0
    indices = torch.tensor([0, 7, 2**40, -3])
    expected = [reference(5, int(i), 1000) for i in indices]
    assert derive_seeds(5, indices, 1000).tolist() == expected
    assert int(derive_seeds(-9, 3, 2**62 - 1)) == reference(-9, 3, 2**62 - 1)


def test_derive_seeds_broadcasts_keys_and_stays_in_range():
    grid = derive_seeds(11, torch.arange(3).view(3, 1), 4, torch.arange(5))
    assert grid.shape == (3, 5) and grid.dtype == torch.int64 and derive_seeds(11, 2).shape == ()
    assert grid[1, 2] == derive_seeds(11, 1, 4, 2)
    many = derive_seeds(0, torch.arange(10_000))
    assert int(many.min()) >= 0 and int(many.max()) < 2**SEED_BITS and many.unique().numel() == 10_000
    assert derive_seeds(1, 2, 3) != derive_seeds(1, 3, 2)  # the order of the keys matters


def test_seed_stages_are_one_enum_whose_values_never_change():
    from utils.seeds import SeedStage

    assert {stage.name: int(stage) for stage in SeedStage} == {
        "ATTACK_START": 0, "ATTACK_STEP": 1, "SCORE": 2, "FIXED": 3, "DEFENSE": 7, "CORRUPTION": 11, "AUDIT": 13,
        "CLEAN_NOISE": 1000, "ATTACK_RUN": 1001, "CASCADE": 2000}
    assert torch.equal(derive_seeds(3, torch.arange(4), SeedStage.SCORE), derive_seeds(3, torch.arange(4), 2))


def test_per_row_draws_depend_on_the_row_seed_only():
    from utils.seeds import per_row

    seeds = derive_seeds(0, torch.arange(5))
    whole = per_row(seeds, lambda gen: torch.randn(3, generator=gen))
    assert whole.shape == (5, 3)
    assert torch.equal(per_row(seeds[2:4], lambda gen: torch.randn(3, generator=gen)), whole[2:4])
    assert not torch.equal(whole[0], whole[1])
