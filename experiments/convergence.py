"""The converged evaluation's table and figure from its per-image records (configs/converged.yml run folders).

    python -m experiments.convergence --runs docs/converged --out docs/converged

Per defense: clean accuracy, the robust accuracy after each cascade stage (worst-of-N scoring, cumulative over the
stages), with 95 % Wilson intervals over the images finished so far; the convergence check (worst-case robust
count of each APGD-type stage at its scored iterations: doubling the last budget must change it by at most one
image); and a figure against iterations for each attack and defense of the images not yet fooled (an image counts
as fooled from the first iteration at which any of its EOT samples misclassified it, cumulative over the cascade;
images a stage without a trace, PGD-EOT, broke count as fooled from the start of the next stage).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import yaml

from attacks.traces import decode_correct
from experiments.common import base_parser, label_axes, plt, run_cli, save_figure, start_cli, wilson_row, write_csv
from evaluation.results import CONFIG_FILE, ImageRecord, read_records

CASCADE_KEY = "cascade"


def load_runs(folder: Path) -> dict[str, list[ImageRecord]]:
    """{purifier name: records (subset order unknown, sorted by index)} of every run folder under `folder`."""
    runs = {}
    for header in sorted(Path(folder).glob(f"*/{CONFIG_FILE}")):
        purifier = yaml.safe_load(header.read_text())["config"]["purifier"]["name"]
        records = read_records(header.parent)
        if records:
            runs[purifier] = [records[i] for i in sorted(records)]
    return runs


def stage_table(purifier: str, records: list[ImageRecord]) -> list[dict[str, Any]]:
    """Rows: clean, then the cumulative worst-case robust accuracy after each cascade stage (Wilson 95 %)."""
    n = len(records)
    rows = [{"purifier": purifier, "after": "clean", "n": n,
             **wilson_row(sum(r.clean["defended"]["correct"] for r in records), n)}]
    stages: list[str] = []
    for r in records:
        stages += [s for s in r.attacks[CASCADE_KEY]["extra"]["stages_run"] if s not in stages]
    for i, stage in enumerate(stages):
        broken = sum(1 for r in records if _broken_by(r) in stages[:i + 1])
        rows.append({"purifier": purifier, "after": stage, "n": n, **wilson_row(n - broken, n)})
    return rows


def _broken_by(record: ImageRecord) -> Optional[str]:
    """The cascade stage that broke the image, or None if it survived."""
    return record.attacks[CASCADE_KEY]["extra"]["broken_by"]


def checkpoint_counts(records: list[ImageRecord]) -> list[dict[str, Any]]:
    """Per stage and scored iteration t: images the stage attacked that were still correct (worst-of-N) at t."""
    counts: dict[tuple[str, int], int] = {}
    for r in records:
        for name, trace in r.attacks[CASCADE_KEY].get("history", {}).items():
            stage, _, field = name.partition(".")
            if field.startswith("worst_correct_at_") and trace != "-":
                key = (stage, int(field.rsplit("_", 1)[1]))
                counts[key] = counts.get(key, 0) + int(trace == "1")
    return [{"stage": s, "iteration": t, "robust": c} for (s, t), c in sorted(counts.items())]


def curves(records: list[ImageRecord]) -> dict[str, np.ndarray]:
    """{stage: (T + 1,) fraction of all images not yet fooled at each iteration}, fooled = some EOT sample wrong
    at some iteration so far, in this stage or an earlier one (images broken before the stage stay broken, also by a
    stage without a trace)."""
    out: dict[str, np.ndarray] = {}
    n = len(records)
    alive = np.ones(n, dtype=bool)
    stages: list[str] = []
    for r in records:
        stages += [s for s in r.attacks[CASCADE_KEY]["extra"]["stages_run"] if s not in stages]
    for stage in stages:
        traces = [r.attacks[CASCADE_KEY].get("history", {}).get(f"{stage}.correct") for r in records]
        length = max((len(t) for t in traces if t), default=0)
        if length == 0:
            alive &= np.array([_broken_by(r) != stage for r in records])
            continue
        ok = np.ones((n, length), dtype=bool)
        for b, trace in enumerate(traces):
            if trace:
                ok[b] = np.logical_and.accumulate([c is not False for c in decode_correct(trace)])
        ok &= alive[:, None]
        out[stage] = ok.mean(axis=0)
        alive = ok[:, -1] & np.array([_broken_by(r) != stage for r in records])
    return out


def plot(all_curves: dict[str, dict[str, np.ndarray]], out: Path) -> Path:
    """Robust accuracy against iterations: one panel per defense, one line per cascade stage."""
    fig, axes = plt.subplots(1, max(1, len(all_curves)), figsize=(4 * max(1, len(all_curves)), 3.2), squeeze=False)
    for ax, (purifier, stage_curves) in zip(axes[0], all_curves.items()):
        for stage, curve in stage_curves.items():
            ax.plot(np.arange(len(curve)), 100 * curve, label=stage)
        label_axes(ax, "iteration", "not yet fooled on any EOT sample (%)", purifier)
    return save_figure(fig, out / "convergence.png")


def main(argv: Optional[Sequence[str]] = None) -> None:
    """CLI: table (CSV), checkpoint counts (CSV) and the figure of the converged runs found under --runs."""
    parser = base_parser("convergence", __doc__.split("\n")[0])
    parser.add_argument("--runs", type=Path, required=True, help="folder holding the converged run folders")
    _, args, out = start_cli(parser, argv)
    runs = load_runs(args.runs)
    if not runs:
        raise FileNotFoundError(f"no run with records under {args.runs}: run configs/converged.yml first")
    table = [row for purifier, records in runs.items() for row in stage_table(purifier, records)]
    write_csv(out / "table.csv", table)
    checkpoints = [{"purifier": p, **row} for p, records in runs.items() for row in checkpoint_counts(records)]
    if checkpoints:
        write_csv(out / "checkpoints.csv", checkpoints)
    plot({p: curves(records) for p, records in runs.items()}, out)


if __name__ == "__main__":
    run_cli(main)
