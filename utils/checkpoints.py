"""Safe checkpoint I/O shared by every loader: weights-only reads with one-line errors, mismatch reports,
atomic writes."""
from __future__ import annotations

import logging
import pickle
import re
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from utils.files import atomic_write

logger = logging.getLogger(__name__)
_SHOWN = 5
# weights-only refusals of a callable or class (code on load), as opposed to a garbled byte stream
_UNSAFE = re.compile(r"global|reduce|allowlist|instantiate|unsupported class", re.IGNORECASE)


class CheckpointError(ValueError):
    """A checkpoint file is unreadable, unsafe, or does not fit the configured network."""


def read_checkpoint(path: Path, missing_hint: str) -> Any:
    """torch.load(path, weights_only=True) on CPU (memory-mapped when possible); one-line errors.

    Errors end with `missing_hint` (where to get the file): FileNotFoundError when it is missing,
    CheckpointError when it is truncated, corrupt or would run code on load.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}; {missing_hint}")
    try:
        return _torch_load(path)
    except pickle.UnpicklingError as err:
        reason = _refusal_reason(err)
        if not _UNSAFE.search(reason):
            raise CheckpointError(f"{path} is not a readable PyTorch checkpoint (truncated or corrupt: "
                                  f"{reason}); {missing_hint}") from None
        raise CheckpointError(
            f"refused to load {path}: it pickles objects whose unpickling could run code ({reason}), which "
            f"torch.load(weights_only=True) rejects; use a checkpoint from a trusted source, saved as "
            f"tensors only") from None
    except (RuntimeError, EOFError, KeyError, ValueError, OSError) as err:
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint (truncated or corrupt: "
                              f"{first_line(err)}); {missing_hint}") from None


def _torch_load(path: Path) -> Any:
    """Memory-map zip checkpoints (unused entries are never read); plain load for legacy files."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as err:
        if "mmap can only be used" not in str(err):
            raise
    return torch.load(path, map_location="cpu", weights_only=True)


def tensor_dict(state: Any, path: Path, what: str = "checkpoint") -> dict[str, torch.Tensor]:
    """`state` checked to be a mapping of names to tensors."""
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        found = sorted(map(str, state))[:_SHOWN] if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"{path}: {what} is not a state_dict of tensors (found {found})")
    return state


def strip_prefix(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Keys without `prefix` (e.g. DataParallel's 'module.')."""
    return {k.removeprefix(prefix): v for k, v in state.items()}


def describe_mismatch(expected: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor]) -> str | None:
    """Missing/unexpected keys and shape differences (checkpoint vs model), a few of each; None if equal."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k}: {tuple(state[k].shape)} vs {tuple(v.shape)}"
              for k, v in expected.items() if k in state and state[k].shape != v.shape]
    problems = [f"{label} {truncate(items)}" for label, items in
                (("missing keys", missing), ("unexpected keys", unexpected),
                 ("shape mismatches (checkpoint vs model)", shapes)) if items]
    return "; ".join(problems) or None


def truncate(items: list[str]) -> str:
    """At most a few items, then '(+N more)'."""
    shown = "[" + ", ".join(items[:_SHOWN]) + "]"
    return shown + (f" (+{len(items) - _SHOWN} more)" if len(items) > _SHOWN else "")


def load_strict(net: nn.Module, path: Path, missing_hint: str, options: str) -> nn.Module:
    """net in eval mode with the plain state_dict at `path` loaded strictly; one-line errors name `options`."""
    state = tensor_dict(read_checkpoint(path, missing_hint), path, "the file (a plain state_dict)")
    mismatch = describe_mismatch(net.state_dict(), state)
    if mismatch:
        raise CheckpointError(f"{path} does not match the network config: {mismatch}; check {options}")
    net.load_state_dict(state, strict=True)
    logger.info("loaded %s (%d parameters)", path, sum(p.numel() for p in net.parameters()))
    return net.eval()


def atomic_save(obj: Any, path: str | Path) -> None:
    """torch.save to a temp file in the same folder, then rename: nothing is ever half-written."""
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def _refusal_reason(err: BaseException) -> str:
    """What the weights-only unpickler rejected, e.g. 'Unsupported global: GLOBAL io.open'."""
    text = str(err)
    _, found, rest = text.partition("WeightsUnpickler error:")
    lines = [line.strip() for line in (rest if found else text).splitlines() if line.strip()]
    return lines[0].split(" was not ")[0].rstrip(".") if lines else type(err).__name__


def first_line(err: BaseException) -> str:
    """The first line of an exception message, for one-line errors."""
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__
