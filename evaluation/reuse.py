"""Results reused from earlier runs: which rows they are, when they were made, and how to recompute them."""
from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any, Optional

from evaluation.results import ImageRecord

# what --fresh removes from a run folder (config.yaml stays: it names the folder's config)
RUN_OUTPUTS = ("results*.jsonl", "summary.json", "summary.md", "examples.pt")


def stamp(written_ns: int) -> str:
    """'2026-12-01 01:23 UTC' from a time in ns since the epoch."""
    return datetime.datetime.fromtimestamp(written_ns / 1e9, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def row_origin(records: list[ImageRecord], started_ns: int) -> dict[str, Any]:
    """{'reused': images written before `started_ns`, 'computed': the others, 'reused_from'/'reused_until': stamps}."""
    earlier = [r.written_at for r in records if r.written_at < started_ns]
    origin: dict[str, Any] = {"reused": len(earlier), "computed": len(records) - len(earlier)}
    if earlier:
        origin.update(reused_from=stamp(min(earlier)), reused_until=stamp(max(earlier)))
    return origin


def reuse_text(origin: dict[str, Any], run_dir: Path) -> Optional[str]:
    """One sentence on the reused rows and how to recompute them, or None when every row was computed now."""
    if not origin.get("reused"):
        return None
    when = origin["reused_from"] if origin["reused_from"] == origin["reused_until"] else \
        f"{origin['reused_from']} to {origin['reused_until']}"
    return (f"{origin['reused']} of {origin['reused'] + origin['computed']} images reused from earlier runs "
            f"(written {when}); to recompute, pass --fresh or delete {run_dir}")


def clear_run(run_dir: Path) -> list[Path]:
    """Delete the results and summaries inside run_dir (nothing outside it); returns what was removed."""
    removed = [path for pattern in RUN_OUTPUTS for path in sorted(run_dir.glob(pattern)) if path.is_file()]
    for path in removed:
        path.unlink()
    return removed
