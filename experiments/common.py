"""What every experiment shares: the CLI skeleton, run metadata, CSV/JSON/PNG output, resumable points, bands."""
from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import sys
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after selecting the non-interactive backend)
import numpy as np  # noqa: E402
import torch  # noqa: E402
from scipy import stats  # noqa: E402

from utils.cli import parser as cli_parser  # noqa: E402
from utils.cli import run_main  # noqa: E402
from utils.files import atomic_write, atomic_write_text, config_digest  # noqa: E402
from utils.precision import numerics  # noqa: E402
from utils.provenance import provenance  # noqa: E402
from utils.stats import wilson_interval  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
logger = logging.getLogger(__name__)


def default_output_dir(name: str) -> Path:
    """results/experiments/<name>/ under the repository root."""
    return REPO_ROOT / "results" / "experiments" / name


def base_parser(name: str, description: str) -> argparse.ArgumentParser:
    """A parser with the options every experiment takes: --out, --seed, --threads, --log-level."""
    parser = cli_parser(description, prog=f"python -m experiments.{name}")
    parser.add_argument("--out", type=Path, default=default_output_dir(name),
                        help=f"output folder (default: results/experiments/{name}/ in the repository)")
    parser.add_argument("--seed", type=int, default=0, help="seed of this experiment's own randomness")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING"])
    return parser


def start_cli(parser: argparse.ArgumentParser,
              argv: Optional[Sequence[str]]) -> tuple[list[str], argparse.Namespace, Path]:
    """Parse argv (None: the process's arguments), configure logging and threads, create --out: (argv, args, out)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    return argv, args, args.out


def run_metadata(argv: Sequence[str], **extra: Any) -> dict[str, Any]:
    """What produced a result (utils.provenance: command line, start time, versions, git hash), plus `extra`."""
    return {**provenance(REPO_ROOT, argv), **extra}


def _plain(value: Any) -> Any:
    """JSON-able version of paths, tensors and numpy scalars."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def write_json(path: Path, data: Any) -> Path:
    """Write data as indented JSON (atomically: a temporary file renamed into place)."""
    atomic_write_text(path, json.dumps(data, indent=2, default=_plain) + "\n")
    return path


def write_csv(path: Path, rows: Sequence[dict[str, Any]]) -> Path:
    """Write rows (dicts with the same keys) as CSV with a header."""
    if not rows:
        raise ValueError(f"no rows to write to {path}")
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def label_axes(ax: plt.Axes, xlabel: str, ylabel: str, title: str, title_size: int = 10, legend_size: int = 9,
               legend_title: Optional[str] = None) -> None:
    """The look every experiment plot shares: axis labels, a small title, a light grid and the legend (if any line has a label)."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=title_size)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=legend_size, title=legend_title, title_fontsize=legend_size)


def save_figure(fig: plt.Figure, path: Path) -> Path:
    """Save a figure as PNG (150 dpi, tight) and close it."""
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=150, bbox_inches="tight"))
    plt.close(fig)
    logger.info("wrote %s", path)
    return path


def write_results(out: Path, stem: str, payload: dict[str, Any], rows: Sequence[dict[str, Any]],
                  figure: plt.Figure) -> None:
    """An experiment's outputs in `out`: <stem>.json (payload), <stem>.csv (rows) and <stem>.png (figure)."""
    write_json(out / f"{stem}.json", payload)
    write_csv(out / f"{stem}.csv", rows)
    save_figure(figure, out / f"{stem}.png")


def wilson_row(correct: int, total: int) -> dict[str, float]:
    """{'p', 'ci_low', 'ci_high'}: the proportion and its 95 % Wilson interval."""
    low, high = wilson_interval(correct, total)
    return {"p": correct / total, "ci_low": low, "ci_high": high}


def mean_band(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean over axis 0 of values (N, T) and its 95 % Student-t CI (mean -+ t_{0.975, N-1} sd / sqrt(N)), each (T,)."""
    values = np.asarray(values, dtype=np.float64)
    mean = values.mean(axis=0)
    if values.shape[0] < 2:
        return mean, mean, mean
    half = stats.t.ppf(0.975, values.shape[0] - 1) * values.std(axis=0, ddof=1) / math.sqrt(values.shape[0])
    return mean, mean - half, mean + half


def parse_values(text: str) -> list[float]:
    """'0,0.5,1' -> [0.0, 0.5, 1.0]."""
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def fingerprint(settings: dict[str, Any]) -> str:
    """A short hash of the settings that a stored point must share with the current run."""
    return config_digest(settings, default=_plain)[:16]


class PointStore:
    """One JSON file per finished point under <out>/points/, tagged with the run's settings fingerprint.

    A rerun with the same settings skips stored points; a stored point from different settings is an
    error (use a fresh --out), so results from different runs never mix.
    """

    def __init__(self, out: Path, settings: dict[str, Any]) -> None:
        self.folder = out / "points"
        self.folder.mkdir(parents=True, exist_ok=True)
        self.tag = fingerprint(settings)

    def path(self, key: str) -> Path:
        """The file of point `key` (safe file name)."""
        return self.folder / (key.replace("/", "_") + ".json")

    def load(self, key: str) -> Optional[dict[str, Any]]:
        """The stored result of `key`, or None if it is not done yet."""
        path = self.path(key)
        if not path.is_file():
            return None
        stored = json.loads(path.read_text())
        if stored.get("fingerprint") != self.tag:
            raise ValueError(f"{path} was made with other settings; pass a fresh --out or delete that folder")
        return stored["result"]

    def save(self, key: str, result: dict[str, Any]) -> None:
        """Store the result of `key` now (atomic write)."""
        write_json(self.path(key), {"fingerprint": self.tag, "key": key, "result": result})


def log_table(rows: Iterable[dict[str, Any]], columns: Sequence[str]) -> None:
    """Log rows as an aligned text table (the numbers behind a figure, for the terminal)."""
    rows = list(rows)
    cells = [[f"{r[c]:.4f}" if isinstance(r[c], float) else str(r[c]) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.rjust(w) for v, w in zip(row, widths)) for row in cells]
    logger.info("\n%s", "\n".join(lines))


def run_cli(main: Callable[[], Any]) -> None:
    """Call main() in full float32 (utils/precision.py) and exit with utils.cli's code: 2 and one line on a user
    error, 130 on Ctrl-C."""

    def in_float32() -> Any:
        with numerics():
            return main()

    sys.exit(run_main(in_float32, logger))
