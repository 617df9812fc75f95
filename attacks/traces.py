"""Per-image attack traces stored compactly in the JSONL records: losses rounded to 4 significant digits, and
correctness as one character per iteration ('1' correct, '0' fooled, '-' not attacked)."""
from __future__ import annotations

import math
from typing import Any

import torch

SIGNIFICANT = 4


def is_correctness(name: str) -> bool:
    """Whether trace `name` holds correctness (its name mentions 'correct') rather than a loss."""
    return "correct" in name


def encode_trace(name: str, trace: torch.Tensor) -> Any:
    """One image's trace (T,): correctness as a '1'/'0'/'-' string, a loss as a list (None for NaN)."""
    values = trace.detach().float().cpu().tolist()
    if is_correctness(name):
        return "".join("-" if math.isnan(v) else str(int(v)) for v in values)
    return [None if math.isnan(v) else float(f"{v:.{SIGNIFICANT}g}") for v in values]


def encode_history(history: dict[str, torch.Tensor], b: int) -> dict[str, Any]:
    """Image b's traces {name: encoded trace}."""
    return {name: encode_trace(name, trace[b]) for name, trace in history.items()}


def decode_correct(encoded: str) -> list[bool | None]:
    """'10-' -> [True, False, None]."""
    return [None if c == "-" else c == "1" for c in encoded]
