"""Load (EMA weights) and save NCSN++ checkpoints in the official Score-SDE training layout."""
from __future__ import annotations

import logging
import os
import pickle
import re
import tempfile
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from score_sde.config import NCSNppConfig
from score_sde.ncsnpp import NCSNpp

logger = logging.getLogger(__name__)

DEFAULT_CHECKPOINT = Path("pretrained/score_sde/checkpoint_8.pth")
OFFICIAL_SOURCE = ("checkpoint_8.pth of vp/cifar10_ddpmpp_deep_continuous from the Score-SDE PyTorch release "
                   "(github.com/yang-song/score_sde_pytorch, 'Pretrained checkpoints': "
                   "https://drive.google.com/drive/folders/1ZMLBiu9j7-rpdTQu8M2LlHAEQq4xRYrj)")
_PREFIX = "module."
_SHOWN = 5
# weights-only refusals of a callable or class (code on load), as opposed to a garbled byte stream
_UNSAFE = re.compile(r"global|reduce|allowlist|instantiate|unsupported class", re.IGNORECASE)


class CheckpointError(ValueError):
    """A checkpoint file is unreadable, unsafe, or does not fit the configured network."""


def load_score_model(config: NCSNppConfig, checkpoint_path: str | Path) -> NCSNpp:
    """NCSN++ for `config` holding the checkpoint's EMA weights, in eval mode, on the CPU.

    The network is built without random init (every tensor comes from the checkpoint).

    Accepts the official training checkpoint ({'model', 'ema', 'optimizer', 'step'}; the optimizer
    is ignored) or a plain state_dict, with or without the 'module.' prefix.
    """
    path = Path(checkpoint_path)
    raw = _read(path)
    with torch.device("meta"):
        model = NCSNpp(config)
    model = model.to_empty(device="cpu")
    state = _network_state(raw, model, path)
    model.load_state_dict(state, strict=True)
    logger.info("loaded NCSN++ weights from %s (%d tensors)", path, len(state))
    return model.eval()


def save_score_checkpoint(path: str | Path, model: nn.Module, ema_params: Sequence[torch.Tensor], step: int,
                          optimizer_state: dict[str, Any] | None = None, ema_decay: float = 0.9999) -> None:
    """Write the official layout atomically: model ('module.' keys), ema shadow params, optimizer, step.

    `ema_params` are the EMA copies of the trainable parameters in named_parameters() order.
    """
    path = Path(path)
    names = _trainable_names(model)
    _check_ema(ema_params, model, names, path)
    checkpoint = {
        "model": {_PREFIX + k: v.detach().cpu() for k, v in model.state_dict().items()},
        "ema": {"decay": float(ema_decay), "num_updates": int(step),
                "shadow_params": [p.detach().cpu() for p in ema_params]},
        "optimizer": optimizer_state if optimizer_state is not None else {},
        "step": int(step),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save(checkpoint, tmp_name)
        os.replace(tmp_name, path)
    finally:
        if os.path.exists(tmp_name):
            os.remove(tmp_name)
    logger.info("saved NCSN++ checkpoint (step %d) to %s", step, path)


def _read(path: Path) -> Any:
    """torch.load(weights_only=True) with one-line errors for a missing, unsafe or corrupt file."""
    if not path.is_file():
        raise FileNotFoundError(f"Score-SDE checkpoint not found: {path}; download {OFFICIAL_SOURCE} and "
                                f"save it as {DEFAULT_CHECKPOINT} (or pass its path)")
    try:
        return _torch_load(path)
    except pickle.UnpicklingError as err:
        reason = _refusal_reason(err)
        if not _UNSAFE.search(reason):
            raise CheckpointError(f"{path} is not a readable PyTorch checkpoint (truncated or corrupt: "
                                  f"{reason}); download it again") from None
        raise CheckpointError(
            f"refused to load {path}: it pickles objects whose unpickling could run code ({reason}), which "
            f"torch.load(weights_only=True) rejects; use a checkpoint from a trusted source, saved as "
            f"tensors only") from None
    except (RuntimeError, EOFError, KeyError, ValueError, OSError) as err:
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint (truncated or corrupt: "
                              f"{_first_line(err)}); download it again") from None


def _torch_load(path: Path) -> Any:
    """Memory-map zip checkpoints (the optimizer state is then never read); plain load for legacy files."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as err:
        if "mmap can only be used" not in str(err):
            raise
    return torch.load(path, map_location="cpu", weights_only=True)


def _network_state(raw: Any, model: NCSNpp, path: Path) -> dict[str, torch.Tensor]:
    """The state_dict to load: the checkpoint's tensors with EMA shadow params in place of parameters."""
    if isinstance(raw, dict) and "model" in raw:
        state = _strip_prefix(raw["model"], path)
        _check_architecture(state, model, path)
        return {**state, **_ema_state(raw, model, path)}
    if isinstance(raw, dict) and raw and all(isinstance(v, torch.Tensor) for v in raw.values()):
        state = _strip_prefix(raw, path)
        _check_architecture(state, model, path)
        return state
    keys = sorted(map(str, raw))[:_SHOWN] if isinstance(raw, dict) else type(raw).__name__
    raise CheckpointError(f"{path} is neither a Score-SDE training checkpoint (with 'model' and 'ema') nor a "
                          f"state_dict of tensors (found {keys}); pass the official checkpoint_*.pth")


def _strip_prefix(state: Any, path: Path) -> dict[str, torch.Tensor]:
    """Keys without the DataParallel 'module.' prefix; every value must be a tensor."""
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: checkpoint['model'] is not a state_dict of tensors")
    return {k.removeprefix(_PREFIX): v for k, v in state.items()}


def _ema_state(raw: dict[str, Any], model: NCSNpp, path: Path) -> dict[str, torch.Tensor]:
    """EMA shadow params keyed by the trainable parameter names they follow (official order)."""
    ema = raw.get("ema")
    shadow = ema.get("shadow_params") if isinstance(ema, dict) else None
    if not isinstance(shadow, (list, tuple)) or not all(isinstance(p, torch.Tensor) for p in shadow):
        raise CheckpointError(f"{path} has 'model' but no usable 'ema' entry (expected ema['shadow_params'], "
                              "a list of tensors); pass the official training checkpoint or a plain "
                              "state_dict")
    names = _trainable_names(model)
    _check_ema(shadow, model, names, path)
    return dict(zip(names, shadow))


def _trainable_names(model: nn.Module) -> list[str]:
    """Names of the parameters an official EMA tracks: requires_grad ones, named_parameters() order."""
    return [name for name, p in model.named_parameters() if p.requires_grad]


def _check_ema(shadow: Sequence[torch.Tensor], model: nn.Module, names: list[str], path: Path) -> None:
    """EMA list length and shapes must match the trainable parameters."""
    if len(shadow) != len(names):
        raise CheckpointError(f"{path}: EMA has {len(shadow)} shadow params but the network has {len(names)} "
                              "trainable parameters; the checkpoint is for a different NCSN++ config")
    params = dict(model.named_parameters())
    wrong = [f"{n}: {tuple(s.shape)} vs {tuple(params[n].shape)}"
             for n, s in zip(names, shadow) if s.shape != params[n].shape]
    if wrong:
        raise CheckpointError(f"{path}: EMA shadow params do not match the network (ema vs model): "
                              f"{_truncate(wrong)}; the checkpoint is for a different NCSN++ config")


def _check_architecture(state: dict[str, torch.Tensor], model: nn.Module, path: Path) -> None:
    """Key sets and shapes must equal the model's; the error lists a few of each difference."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k}: {tuple(state[k].shape)} vs {tuple(v.shape)}"
              for k, v in expected.items() if k in state and state[k].shape != v.shape]
    problems = [f"{label} {_truncate(items)}" for label, items in
                (("missing keys", missing), ("unexpected keys", unexpected),
                 ("shape mismatches (checkpoint vs model)", shapes)) if items]
    if problems:
        raise CheckpointError(f"{path} does not fit the NCSN++ config: {'; '.join(problems)}; check nf, "
                              "ch_mult, num_res_blocks, attn_resolutions, embedding_type and resblock_type")


def _truncate(items: list[str]) -> str:
    """At most a few items, then '... (+N more)'."""
    shown = "[" + ", ".join(items[:_SHOWN]) + "]"
    return shown + (f" (+{len(items) - _SHOWN} more)" if len(items) > _SHOWN else "")


def _refusal_reason(err: BaseException) -> str:
    """What the weights-only unpickler rejected, e.g. 'Unsupported global: GLOBAL io.open'."""
    text = str(err)
    _, found, rest = text.partition("WeightsUnpickler error:")
    lines = [line.strip() for line in (rest if found else text).splitlines() if line.strip()]
    return lines[0].split(" was not ")[0].rstrip(".") if lines else type(err).__name__


def _first_line(err: BaseException) -> str:
    """The first line of an exception message, for one-line errors."""
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__
