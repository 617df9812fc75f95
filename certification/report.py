"""Certification results on disk: Cohen's resumable TSV with a config-hash sidecar (which also holds each run's
provenance, see utils.provenance), and the accuracy-vs-radius table and plot."""
from __future__ import annotations

import datetime
import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from utils.files import atomic_write, atomic_write_text, config_digest
from utils.stats import wilson_interval

log = logging.getLogger(__name__)

HEADER = ("idx", "label", "predict", "radius", "correct", "time")


class ResultsMismatch(ValueError):
    """An existing results file was written under a different resolved config."""


@dataclass(frozen=True)
class ResultRow:
    """One line of Cohen's TSV: dataset index, label, prediction (-1 abstain), radius, correct, elapsed time."""

    idx: int
    label: int
    predict: int
    radius: float
    correct: int
    time: str

    def line(self) -> str:
        """The tab-separated line, newline-terminated."""
        return f"{self.idx}\t{self.label}\t{self.predict}\t{self.radius:.6f}\t{self.correct}\t{self.time}\n"

    @classmethod
    def parse(cls, line: str) -> ResultRow:
        """A row from one TSV line."""
        idx, label, predict, radius, correct, elapsed = line.rstrip("\n").split("\t")
        return cls(int(idx), int(label), int(predict), float(radius), int(correct), elapsed)


def elapsed_text(seconds: float) -> str:
    """Cohen's time column: str(datetime.timedelta(seconds=...))."""
    return str(datetime.timedelta(seconds=seconds))


def config_hash(config: dict[str, Any]) -> str:
    """16 hex digits of the config hash (utils.files.config_digest)."""
    return config_digest(config)[:16]


class ResultsTSV:
    """Cohen's TSV, appended and flushed per image; a rerun skips finished indices.

    The sidecar <name>.json holds the hash of the config that determines each row; opening a TSV that has rows
    under another hash raises ResultsMismatch (one with only its header starts afresh). A trailing partial line
    (a crash mid-write) is dropped on open.
    """

    def __init__(self, path: Path, hashed_config: dict[str, Any], run_info: dict[str, Any]) -> None:
        self.path, self.sidecar = Path(path), Path(path).with_suffix(".json")
        self.hash = config_hash(hashed_config)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._check_or_create_sidecar(hashed_config, run_info)
        self.rows: dict[int, ResultRow] = self._read_rows()

    def _check_or_create_sidecar(self, hashed_config: dict[str, Any], run_info: dict[str, Any]) -> None:
        """Refuse a TSV from another config; record this run in the sidecar."""
        has_rows = self.path.exists() and len(self.path.read_text().splitlines()) > 1
        meta = json.loads(self.sidecar.read_text()) if has_rows and self.sidecar.exists() else None
        if has_rows and meta is None:
            raise ResultsMismatch(f"{self.path} exists without its sidecar {self.sidecar.name}, so its config is "
                                  "unknown; move it away or choose another output_dir")
        if meta is not None and meta.get("config_hash") != self.hash:
            raise ResultsMismatch(
                f"{self.path} was written under another config (hash {meta.get('config_hash')}, now "
                f"{self.hash}); choose another output_dir or delete {self.path} and {self.sidecar}")
        if meta is None:
            self.path.unlink(missing_ok=True)
            meta = {"config_hash": self.hash, "config": hashed_config, "runs": []}
        meta["runs"].append(run_info)
        atomic_write_text(self.sidecar, json.dumps(meta, indent=1, default=str) + "\n")

    def _read_rows(self) -> dict[int, ResultRow]:
        """Finished rows by index; writes the header to a new file and cuts a trailing partial line."""
        if not self.path.exists():
            atomic_write_text(self.path, "\t".join(HEADER) + "\n")
            return {}
        text = self.path.read_text()
        if not text.endswith("\n"):
            text = text[: text.rfind("\n") + 1]
            atomic_write_text(self.path, text)
        lines = text.splitlines()
        if not lines or tuple(lines[0].split("\t")) != HEADER:
            raise ResultsMismatch(f"{self.path} does not start with Cohen's header {' '.join(HEADER)}")
        rows: dict[int, ResultRow] = {}
        for line in lines[1:]:
            row = ResultRow.parse(line)
            if row.idx in rows:
                raise ResultsMismatch(f"{self.path} lists index {row.idx} twice; delete the duplicate line")
            rows[row.idx] = row
        return rows

    def append(self, row: ResultRow) -> None:
        """Write one row and flush it to disk."""
        if row.idx in self.rows:
            raise ValueError(f"index {row.idx} is already in {self.path}")
        with self.path.open("a") as f:
            f.write(row.line())
            f.flush()
            os.fsync(f.fileno())
        self.rows[row.idx] = row


def certified_accuracy(rows: Sequence[ResultRow], radius: float) -> int:
    """Number of rows certified correct at L2 radius >= `radius`."""
    return sum(1 for r in rows if r.correct and r.radius >= radius)


def radius_grid(rows: Sequence[ResultRow], max_radius: float, step: float = 0.25) -> list[float]:
    """Radii 0, step, 2 step, ... up to max(max_radius, largest certified radius)."""
    top = max([max_radius] + [r.radius for r in rows])
    return [round(i * step, 6) for i in range(int(math.floor(top / step + 1e-9)) + 1)]


def certify_table(rows: Sequence[ResultRow], radii: Iterable[float], title: str) -> str:
    """Markdown: certified accuracy (with 95 % Wilson interval) at each radius, plus abstention count."""
    total = len(rows)
    lines = [f"# {title}", "", f"{total} images, {sum(r.predict == -1 for r in rows)} abstentions.", "",
             "| L2 radius | certified accuracy | 95 % interval | certified correct |", "|---|---|---|---|"]
    for radius in radii:
        hits = certified_accuracy(rows, radius)
        low, high = wilson_interval(hits, total) if total else (math.nan, math.nan)
        lines.append(f"| {radius:.2f} | {100 * hits / max(total, 1):.1f} % | {100 * low:.1f} - {100 * high:.1f} % "
                     f"| {hits} / {total} |")
    return "\n".join(lines) + "\n"


def predict_table(rows: Sequence[ResultRow], title: str) -> str:
    """Markdown: accuracy and abstentions of PREDICT."""
    total, correct = len(rows), sum(r.correct for r in rows)
    low, high = wilson_interval(correct, total) if total else (math.nan, math.nan)
    return (f"# {title}\n\n| images | accuracy | 95 % interval | abstentions |\n|---|---|---|---|\n"
            f"| {total} | {100 * correct / max(total, 1):.1f} % | {100 * low:.1f} - {100 * high:.1f} % "
            f"| {sum(r.predict == -1 for r in rows)} |\n")


def plot_certified_accuracy(rows: Sequence[ResultRow], max_radius: float, label: str, title: str,
                            path: Path) -> None:
    """PNG of certified accuracy vs L2 radius (a step curve over a fine radius grid)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    top = max([max_radius] + [r.radius for r in rows])
    radii = np.linspace(0.0, 1.05 * top, 400)
    accuracy = [certified_accuracy(rows, radius) / max(len(rows), 1) for radius in radii]
    fig, ax = plt.subplots(figsize=(5.5, 4.0))
    ax.plot(radii, accuracy, drawstyle="steps-post", label=label)
    ax.set_xlabel("L2 radius (in [0, 1] pixel space)")
    ax.set_ylabel("certified accuracy")
    ax.set_ylim(0.0, 1.0)
    ax.set_xlim(0.0, radii[-1])
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=150))
    plt.close(fig)
