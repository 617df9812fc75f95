"""Feature taps: named intermediate outputs of a frozen classifier, collected with forward hooks.

Tap names are the same for every supported layout; AID-Purifier's paper numbering is PAPER_TAPS
(tap 1 = 'conv1', 2 = 'block1', 3 = 'block2', 4 = 'block3'). In the AID-Purifier release the taps are
the first 1, 2, 3, 4 children of the TRADES-layout WideResNet (conv1, block1, block2, block3) and its
flags call them the '1st conv', '5th block', '10th block' and '15th block' of WRN-34-10. Each tap is the
output of that module as the classifier computes it: the group outputs are pre-activation (before the
block's or the head's BatchNorm + ReLU).

Layouts (module paths relative to the first submodule that has them, so wrappers such as
classifiers.wide_resnet.Normalized work):
- 'wide_resnet' (RobustBench WideResNet, the demo fmnist-wrn-16-2): conv1, block1, block2, block3.
- 'dm_wide_resnet' (RobustBench DMWideResNet): init_conv, layer.0, layer.1, layer.2.
"""
from __future__ import annotations

from contextlib import AbstractContextManager, contextmanager
from typing import Iterator, Sequence

import torch
from torch import nn

TAP_NAMES = ("conv1", "block1", "block2", "block3")
PAPER_TAPS: dict[int, str] = {1: "conv1", 2: "block1", 3: "block2", 4: "block3"}
TAP_LAYOUTS: dict[str, dict[str, str]] = {
    "wide_resnet": {"conv1": "conv1", "block1": "block1", "block2": "block2", "block3": "block3"},
    "dm_wide_resnet": {"conv1": "init_conv", "block1": "layer.0", "block2": "layer.1", "block3": "layer.2"},
}


class _TapsComplete(Exception):
    """Raised by a hook once every requested tap is filled, to skip the rest of the forward."""


def paper_tap_names(taps: Sequence[int]) -> tuple[str, ...]:
    """Tap names for AID-Purifier's 1-based tap numbers, e.g. (1, 3) -> ('conv1', 'block2')."""
    unknown = [t for t in taps if t not in PAPER_TAPS]
    if unknown or not taps or len(set(taps)) != len(taps):
        raise ValueError(f"taps must be distinct numbers from {sorted(PAPER_TAPS)}, got {list(taps)}")
    return tuple(PAPER_TAPS[t] for t in sorted(taps))


def _layout_root(model: nn.Module, paths: dict[str, str]) -> nn.Module | None:
    """The outermost submodule of model (model itself first) that has every path in `paths`, else None."""
    for _, module in model.named_modules():
        try:
            for path in paths.values():
                module.get_submodule(path)
        except AttributeError:
            continue
        return module
    return None


def tap_modules(model: nn.Module, names: Sequence[str]) -> dict[str, nn.Module]:
    """{tap name: the classifier submodule whose output it is} for names from TAP_NAMES."""
    unknown = [n for n in names if n not in TAP_NAMES]
    if unknown or not names:
        raise ValueError(f"tap names must be among {list(TAP_NAMES)}, got {list(names)}")
    for paths in TAP_LAYOUTS.values():
        root = _layout_root(model, paths)
        if root is not None:
            return {name: root.get_submodule(paths[name]) for name in names}
    raise ValueError(f"no feature-tap layout fits {type(model).__name__}; supported: {sorted(TAP_LAYOUTS)} "
                     "(add its module paths to classifiers.taps.TAP_LAYOUTS)")


def tap_channels(model: nn.Module, names: Sequence[str]) -> dict[str, int]:
    """{tap name: channel count}, the out_channels of the last Conv2d inside each tapped module."""
    channels = {}
    for name, module in tap_modules(model, names).items():
        convs = [m for m in module.modules() if isinstance(m, nn.Conv2d)]
        if not convs:
            raise ValueError(f"tap '{name}' ({type(module).__name__}) holds no Conv2d to read its width from")
        channels[name] = convs[-1].out_channels
    return channels


@contextmanager
def hooked(modules: dict[str, nn.Module], stop_early: bool = False) -> Iterator[dict[str, torch.Tensor]]:
    """Within the block, each forward through modules[name] stores its output under name in the yielded dict.

    The hooks only record outputs, so the model's output is unchanged. With stop_early the forward is
    cut short (a private exception, caught here) as soon as every tap is filled; only for callers that
    do not need the logits (see `features`).
    """
    store: dict[str, torch.Tensor] = {}

    def recorder(name: str):
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            store[name] = output
            if stop_early and len(store) == len(modules):
                raise _TapsComplete

        return hook

    handles = [module.register_forward_hook(recorder(name)) for name, module in modules.items()]
    try:
        yield store
    except _TapsComplete:
        pass
    finally:
        for handle in handles:
            handle.remove()


def tap(model: nn.Module, names: Sequence[str]) -> AbstractContextManager[dict[str, torch.Tensor]]:
    """`with tap(model, names) as feats: logits = model(x)` fills feats {name: output (B, C, H, W)}."""
    return hooked(tap_modules(model, names))


def forward_with_taps(model: nn.Module, x: torch.Tensor,
                      names: Sequence[str]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(logits (B, num_classes), {name: tap output (B, C, H, W)}) from one forward of model on x."""
    with tap(model, names) as feats:
        logits = model(x)
    return logits, dict(feats)


def features(model: nn.Module, x: torch.Tensor, modules: dict[str, nn.Module]) -> dict[str, torch.Tensor]:
    """{name: output (B, C, H, W)} of the tapped modules (from tap_modules) on x; later layers are skipped."""
    with hooked(modules, stop_early=True) as feats:
        model(x)
    missing = [n for n in modules if n not in feats]
    if missing:
        raise RuntimeError(f"the forward of {type(model).__name__} never ran the tapped module(s) {missing}")
    return dict(feats)
