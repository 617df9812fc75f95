"""The compute device: `eval.device` resolved once, host-to-device copies that do not block, timing that waits for
the GPU, and the deterministic-algorithms switch (all of CUDA's settings in one place)."""
from __future__ import annotations

import os
import re
from contextlib import contextmanager
from typing import Any, Iterator

import torch

from utils.config import ConfigError

DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")


def check_device_spec(spec: str) -> None:
    """Raise ConfigError unless spec is 'auto', 'cpu', 'cuda' or 'cuda:N'."""
    if not isinstance(spec, str) or not DEVICE_PATTERN.match(spec):
        raise ConfigError(f"eval.device must be auto, cpu, cuda or cuda:N, got {spec!r}")


def resolve_device(spec: str, local_rank: int = 0) -> torch.device:
    """The device of `spec`: 'auto' is cuda:local_rank when a GPU is visible, else the CPU; 'cuda' is cuda:local_rank.

    Raises ConfigError (one line) for a GPU that is not there, naming how many are visible.
    """
    check_device_spec(spec)
    if spec == "cpu" or (spec == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    device = torch.device("cuda", local_rank) if spec in ("auto", "cuda") else torch.device(spec)
    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if device.index >= visible:
        raise ConfigError(f"eval.device {spec} needs GPU {device.index}, but {visible} GPU(s) are visible here; "
                          "use eval.device: cpu or auto, or pick a visible GPU")
    return device


def device_name(device: torch.device) -> str:
    """'NVIDIA H100 80GB HBM3 (cuda:0)' or 'cpu': what the provenance records."""
    if device.type != "cuda":
        return device.type
    return f"{torch.cuda.get_device_name(device)} ({device})"


def to_device(tensor: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """tensor (on the CPU) on `device`; to a GPU through pinned memory with non_blocking, so the host does not wait."""
    device = torch.device(device)
    if device.type != "cuda" or tensor.device.type != "cpu":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


def synchronize(device: torch.device | str) -> None:
    """Wait for the GPU's queued work (a no-op on the CPU): call before reading a wall clock."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of model's first parameter or buffer (the CPU for a module without any)."""
    tensors = (*model.parameters(), *model.buffers())
    return tensors[0].device if tensors else torch.device("cpu")


@contextmanager
def deterministic(enabled: bool) -> Iterator[dict[str, Any]]:
    """With enabled, torch.use_deterministic_algorithms(True) (warn_only: ops without a deterministic kernel warn),
    cuDNN deterministic and no benchmark, CUBLAS_WORKSPACE_CONFIG set; yields the flags in effect; restores after."""
    saved = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark,
             os.environ.get("CUBLAS_WORKSPACE_CONFIG"))
    try:
        if enabled:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
        yield deterministic_flags()
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[2], saved[3]
        if saved[4] is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
        else:
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = saved[4]


def deterministic_flags() -> dict[str, Any]:
    """The determinism settings in effect now, read back from torch (recorded in the provenance)."""
    return {"deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
            "cudnn_deterministic": torch.backends.cudnn.deterministic,
            "cudnn_benchmark": torch.backends.cudnn.benchmark}
