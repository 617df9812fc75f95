"""torchrun sharding: rank r of N evaluates batches r, r + N, ...; a single process is rank 0 of 1."""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from utils.devices import resolve_device

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


def start_shard(device_spec: str = "auto") -> Shard:
    """Read torchrun's RANK / WORLD_SIZE / LOCAL_RANK, pick the device (utils.devices.resolve_device: 'auto' and
    'cuda' give rank r the GPU LOCAL_RANK) and init torch.distributed (nccl on GPU, gloo on CPU).

    Several GPUs: one process per GPU under torchrun, each with its own batches, generators and result file
    (DataParallel is not used).
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_spec, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world_size > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=world_size,
                                timeout=BARRIER_TIMEOUT, **({"device_id": device} if device.type == "cuda" else {}))
    return Shard(rank, world_size, device)


def barrier(shard: Shard) -> None:
    """Wait for every rank (no-op for a single process)."""
    if shard.distributed:
        dist.barrier()


def stop_shard(shard: Shard) -> None:
    """Tear down torch.distributed if this process started it."""
    if shard.distributed and dist.is_initialized():
        dist.destroy_process_group()
