"""The one place that sets float32 numerics: full float32 by default (TF32 and autocast off), TF32 on request.

COUP's guidance is a small term in each reverse step's drift, and the COUP paper reports that automatic
reduced precision on A100 GPUs hurt it; PyTorch enables TF32 for cuDNN convolutions by default on such
GPUs (torch.backends.cudnn.allow_tf32 = True). 'float32' turns TF32 off for matmuls and convolutions;
'tf32' allows it for speed. Autocast is off in both (no float16/bfloat16 anywhere in purification or guidance).
"""
from __future__ import annotations

from contextlib import ExitStack, contextmanager
from typing import Any, Iterator, Literal

import torch

Precision = Literal["float32", "tf32"]
MATMUL_PRECISION = {"float32": "highest", "tf32": "high"}  # torch.set_float32_matmul_precision per policy
AUTOCAST_DEVICES = ("cpu", "cuda")


def set_precision(precision: Precision) -> None:
    """Allow TF32 in CUDA matmuls and cuDNN convolutions iff precision is 'tf32'."""
    reduced = precision == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = reduced
    torch.backends.cudnn.allow_tf32 = reduced
    torch.set_float32_matmul_precision(MATMUL_PRECISION[precision])


def precision_flags() -> dict[str, Any]:
    """The numerics in effect now (read back from torch): policy, TF32 flags, matmul precision, autocast per device."""
    flags: dict[str, Any] = {"cuda_matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
                             "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
                             "float32_matmul_precision": torch.get_float32_matmul_precision()}
    flags.update({f"autocast_{device}": torch.is_autocast_enabled(device) for device in AUTOCAST_DEVICES})
    reduced = (flags["cuda_matmul_allow_tf32"] or flags["cudnn_allow_tf32"]
               or flags["float32_matmul_precision"] != "highest")
    autocast = any(flags[f"autocast_{device}"] for device in AUTOCAST_DEVICES)
    return {"precision": "tf32" if reduced else "float32", "autocast": autocast, **flags}


def describe_numerics(flags: dict[str, Any]) -> str:
    """One sentence for summaries: 'full float32 (TF32 off, autocast off)' or the reduced variant."""
    tf32 = "TF32 allowed" if flags["precision"] == "tf32" else "TF32 off"
    kind = "reduced precision" if flags["precision"] == "tf32" or flags["autocast"] else "full float32"
    return f"{kind} ({tf32}, autocast {'on' if flags['autocast'] else 'off'})"


@contextmanager
def numerics(precision: Precision = "float32") -> Iterator[dict[str, Any]]:
    """Run the block under `precision` with autocast off on every device; yields precision_flags(); restores after."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
             torch.get_float32_matmul_precision())
    try:
        set_precision(precision)
        with ExitStack() as stack:
            for device in AUTOCAST_DEVICES:
                if device == "cpu" or torch.cuda.is_available():
                    stack.enter_context(torch.autocast(device_type=device, enabled=False))
            yield precision_flags()
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved[:2]
        torch.set_float32_matmul_precision(saved[2])
