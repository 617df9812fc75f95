"""Load (EMA weights) and save NCSN++ checkpoints in the official Score-SDE training layout."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from score_sde.config import NCSNppConfig
from score_sde.ncsnpp import NCSNpp
from utils.checkpoints import (CheckpointError, atomic_save, describe_mismatch, read_checkpoint, strip_prefix,
                               tensor_dict, truncate)

logger = logging.getLogger(__name__)

DEFAULT_CHECKPOINT = Path("pretrained/score_sde/checkpoint_8.pth")
OFFICIAL_SOURCE = ("checkpoint_8.pth of vp/cifar10_ddpmpp_deep_continuous from the Score-SDE PyTorch release "
                   "(github.com/yang-song/score_sde_pytorch, 'Pretrained checkpoints': "
                   "https://drive.google.com/drive/folders/1ZMLBiu9j7-rpdTQu8M2LlHAEQq4xRYrj)")
_PREFIX = "module."
_MISSING_HINT = f"download {OFFICIAL_SOURCE} and save it as {DEFAULT_CHECKPOINT} (or pass its path)"
TRAIN_HINT = ("it is not the official CIFAR-10 model ({shape}): train it with python training/train_score_model.py "
              "--config configs/train/score_fmnist.yml (adapted to these model options), or point backbone.checkpoint "
              "at the file it was trained into")


def missing_hint(config: NCSNppConfig) -> str:
    """Where to get the checkpoint of this NCSN++: the official release for its config, else train one."""
    if config == NCSNppConfig():
        return _MISSING_HINT
    return TRAIN_HINT.format(shape=f"{config.num_channels} channel(s), {config.image_size}x{config.image_size}, "
                                   f"nf {config.nf}")


def load_score_model(config: NCSNppConfig, checkpoint_path: str | Path) -> NCSNpp:
    """NCSN++ for `config` holding the checkpoint's EMA weights, in eval mode, on the CPU.

    The network is built without random init (every tensor comes from the checkpoint).

    Accepts the official training checkpoint ({'model', 'ema', 'optimizer', 'step'}; the optimizer
    is ignored) or a plain state_dict, with or without the 'module.' prefix.
    """
    path = Path(checkpoint_path)
    raw = read_checkpoint(path, missing_hint(config))
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
    atomic_save(checkpoint, path)
    logger.info("saved NCSN++ checkpoint (step %d) to %s", step, path)


def _network_state(raw: Any, model: NCSNpp, path: Path) -> dict[str, torch.Tensor]:
    """The state_dict to load: the checkpoint's tensors with EMA shadow params in place of parameters."""
    if isinstance(raw, dict) and "model" in raw:
        state = strip_prefix(tensor_dict(raw["model"], path, "checkpoint['model']"), _PREFIX)
        _check_architecture(state, model, path)
        return {**state, **_ema_state(raw, model, path)}
    if isinstance(raw, dict) and raw and all(isinstance(v, torch.Tensor) for v in raw.values()):
        state = strip_prefix(raw, _PREFIX)
        _check_architecture(state, model, path)
        return state
    keys = sorted(map(str, raw))[:5] if isinstance(raw, dict) else type(raw).__name__
    raise CheckpointError(f"{path} is neither a Score-SDE training checkpoint (with 'model' and 'ema') nor a "
                          f"state_dict of tensors (found {keys}); pass the official checkpoint_*.pth")


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
                              f"{truncate(wrong)}; the checkpoint is for a different NCSN++ config")


def _check_architecture(state: dict[str, torch.Tensor], model: nn.Module, path: Path) -> None:
    """Key sets and shapes must equal the model's; the error lists a few of each difference."""
    problems = describe_mismatch(model.state_dict(), state)
    if problems:
        raise CheckpointError(f"{path} does not fit the NCSN++ config: {problems}; check nf, "
                              "ch_mult, num_res_blocks, attn_resolutions, embedding_type and resblock_type")
