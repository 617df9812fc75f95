"""torchrun sharding: rank r of N evaluates batches r, r + N, ...; a single process is rank 0 of 1."""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

# a rank that finishes early waits at the final barrier for the slowest one; attack batches can take hours
BARRIER_TIMEOUT = datetime.timedelta(days=7)


@dataclass(frozen=True)
class Shard:
    """This process's place in the job and the device it computes on."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def distributed(self) -> bool:
        """Whether this process is one of several (torch.distributed is initialised)."""
        return self.world_size > 1


def start_shard() -> Shard:
    """Read torchrun's RANK / WORLD_SIZE / LOCAL_RANK and init torch.distributed (nccl on GPU, gloo on CPU)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if world_size > 1:
        if cuda:
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=world_size,
                                timeout=BARRIER_TIMEOUT)
    return Shard(rank, world_size, device)


def barrier(shard: Shard) -> None:
    """Wait for every rank (no-op for a single process)."""
    if shard.distributed:
        dist.barrier()


def stop_shard(shard: Shard) -> None:
    """Tear down torch.distributed if this process started it."""
    if shard.distributed and dist.is_initialized():
        dist.destroy_process_group()
