"""The converged evaluation's table and figure from its per-image records (configs/converged.yml run folders).

    python -m experiments.convergence --runs docs/converged --out docs/converged

table.md (the README's table), table.csv, checkpoints.csv and convergence.png. Per defense: clean accuracy, the
robust accuracy after each cascade stage (worst-of-N scoring, cumulative over the stages), with 95 % Wilson intervals
over the images finished so far; the convergence check (the cascade's worst-case outcome per image with every
APGD-type stage stopped at each doubling of its scored iterations, 25 -> 50 and 50 -> 100: converged when the last
changes at most one image); and a figure against iterations for each attack and defense of the images not yet
fooled (an image counts as fooled from the first iteration at which any EOT sample of an APGD-type stage
misclassified it, cumulative over the cascade; of a stage without a trace, as PGD-EOT in records made before it
stored one (the pinned converged run's), the images it broke worst-of-N count as fooled from the start of the next
stage and its other draws are not seen).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Iterator, NamedTuple, Optional, Sequence

import numpy as np
import yaml

from attacks.cascade import CascadeConfig, stage_configs
from attacks.traces import decode_correct
from experiments.common import base_parser, label_axes, plt, run_cli, save_figure, start_cli, wilson_row, write_csv
from evaluation.experiment import parse_attack
from evaluation.results import CONFIG_FILE, ImageRecord, read_records
from evaluation.summary import attack_gradient
from utils.files import atomic_write_text
from utils.config import require

CASCADE_KEY = "cascade"
SCORE_NAMES = {"worst": "worst of {k}", "vote": "vote of {k}", "single": "1 forward"}


class Run(NamedTuple):
    """One converged run folder: its resolved purifier config, its cascade config and its records sorted by
    dataset index."""

    purifier: dict[str, Any]
    cascade: CascadeConfig
    records: list[ImageRecord]

    @property
    def score(self) -> str:
        """How a stage decides that an image survived, e.g. 'worst of 10' (eval_samples of the stages)."""
        samples = sorted({config.eval_samples for _, _, config in stage_configs(self.cascade)})
        return SCORE_NAMES[self.cascade.survivor_rule].format(k="/".join(map(str, samples)))

    @property
    def iterations(self) -> dict[str, int]:
        """{stage key: its iteration budget}."""
        return {key: config.iterations for key, _, config in stage_configs(self.cascade)}


def load_runs(folder: Path) -> dict[str, Run]:
    """{purifier name: Run} of every run folder with records under `folder` (all cascade runs, one per purifier)."""
    runs: dict[str, Run] = {}
    folders: dict[str, Path] = {}
    for header in sorted(Path(folder).glob(f"*/{CONFIG_FILE}")):
        config = yaml.safe_load(header.read_text())["config"]
        entries = [a for a in config.get("attacks", []) if a["name"] == CASCADE_KEY]
        require(len(entries) == 1, f"{header.parent} is not a run of one cascade (configs/converged.yml): "
                                   f"move it out of {folder}")
        records = read_records(header.parent)
        name = config["purifier"]["name"]
        if not records:
            continue
        require(name not in runs, f"two {name} runs under {folder}: {folders.get(name)} and {header.parent}; "
                                  f"move the one not to report out of {folder}")
        cascade = parse_attack(entries[0], f"{header}: attacks").config
        runs[name] = Run(config["purifier"], cascade, [records[i] for i in sorted(records)])
        folders[name] = header.parent
    return runs


def _stages(records: Iterable[ImageRecord]) -> list[str]:
    """The cascade stages that ran on any of the records, in cascade order."""
    return list(dict.fromkeys(s for r in records for s in r.attacks[CASCADE_KEY]["extra"]["stages_run"]))


def stage_table(purifier: str, records: list[ImageRecord]) -> list[dict[str, Any]]:
    """Rows: clean, then the cumulative worst-case robust accuracy after each cascade stage (Wilson 95 %)."""
    n = len(records)
    rows = [{"purifier": purifier, "after": "clean", "n": n,
             **wilson_row(sum(r.clean["defended"]["correct"] for r in records), n)}]
    stages = _stages(records)
    for i, stage in enumerate(stages):
        broken = sum(1 for r in records if _broken_by(r) in stages[:i + 1])
        rows.append({"purifier": purifier, "after": stage, "n": n, **wilson_row(n - broken, n)})
    return rows


def _broken_by(record: ImageRecord) -> Optional[str]:
    """The cascade stage that broke the image, or None if it survived."""
    return record.attacks[CASCADE_KEY]["extra"]["broken_by"]


def stage_scores(record: ImageRecord) -> dict[str, dict[int, bool]]:
    """{stage: {scored iteration t: still correct worst-of-N at t}} of the stages that ran on the image with a score."""
    scores: dict[str, dict[int, bool]] = {}
    for name, trace in record.attacks[CASCADE_KEY].get("history", {}).items():
        stage, _, field = name.partition(".")
        if field.startswith("worst_correct_at_") and trace != "-":
            scores.setdefault(stage, {})[int(field.rsplit("_", 1)[1])] = trace == "1"
    return scores


def checkpoint_counts(records: list[ImageRecord]) -> list[dict[str, Any]]:
    """Per stage and scored iteration t: images the stage attacked that were still correct (worst-of-N) at t."""
    counts: dict[tuple[str, int], int] = {}
    for r in records:
        for stage, scores in stage_scores(r).items():
            for t, correct in scores.items():
                counts[(stage, t)] = counts.get((stage, t), 0) + int(correct)
    return [{"stage": s, "iteration": t, "robust": c} for (s, t), c in sorted(counts.items())]


class Doubling(NamedTuple):
    """One doubling of the cascade-level check: the worst-of-N robust count with every scored stage stopped at t / 2d
    and at t / d (t its last scored iteration), and the images whose outcome differs (flips both ways count)."""

    spans: str  # the doubling, '50 -> 100'
    robust_half: int
    robust_full: int
    flips: int
    final: bool  # d = 1, and every scored stage that ran was scored at t / 2 and t, with t its iteration budget


def _doublings(scores: dict[int, bool]) -> Iterator[int]:
    """The divisors d = 2, 4, ... for which the stage was scored at t / d, t / (d / 2), ..., t (t its last scored
    iteration): each is one doubling of the chain ending at t."""
    t, divisor = max(scores), 2
    while t % divisor == 0 and t // divisor in scores:
        yield divisor
        divisor *= 2


def _robust_at(record: ImageRecord, image: dict[str, dict[int, bool]], divisor: int) -> bool:
    """The image's worst-of-N outcome with every scored stage stopped at t / divisor (a stage not scored there
    counts at t); divisor 1 is the cascade's own outcome. Above 1 an upper bound of a cascade run at that budget:
    later stages were not run on the images a stage broke only after it."""
    broken_by = _broken_by(record)
    if divisor == 1:
        return broken_by is None
    ok = broken_by is None or broken_by in image
    return ok and all(scores.get(max(scores) // divisor, scores[max(scores)]) for scores in image.values())


def doubling_check(records: list[ImageRecord], iterations: dict[str, int]) -> list[Doubling]:
    """Every doubling of the scored iterations, ending at the last (score_at [25, 50, 100]: 25 -> 50, 50 -> 100);
    [] if no stage was scored before its end."""
    per_image = [stage_scores(r) for r in records]
    divisors = sorted({d for image in per_image for scores in image.values() for d in _doublings(scores)},
                      reverse=True)
    checks = []
    for divisor in divisors:
        half, full = divisor, divisor // 2
        spans = {f"{max(s) // half} -> {max(s) // full}": None for image in per_image for s in image.values()
                 if divisor in _doublings(s)}
        final = full == 1 and all(2 in _doublings(s) and max(s) == iterations.get(stage, max(s))
                                  for image in per_image for stage, s in image.items())
        outcomes = [(_robust_at(r, image, half), _robust_at(r, image, full)) for r, image in zip(records, per_image)]
        checks.append(Doubling(", ".join(sorted(spans, key=lambda span: int(span.split()[0]))),
                               sum(a for a, _ in outcomes), sum(b for _, b in outcomes),
                               sum(a != b for a, b in outcomes), final))
    return checks


def doubling_cell(checks: list[Doubling]) -> str:
    """The table's doubling check: per doubling the images that change and the robust counts, then the verdict of
    the last (converged only when at most one image changes and every stage was checked at its final budget)."""
    if not checks:
        return "-"
    last = checks[-1]
    verdict = "NOT converged" if last.flips > 1 else "converged" if last.final else "not checked at the final budget"
    return "; ".join(f"{c.flips} ({c.robust_half} -> {c.robust_full} robust) at {c.spans}" for c in checks) + \
        f" ({verdict})"


def markdown_table(runs: dict[str, Run]) -> str:
    """table.md: per defense n, clean and robust accuracy with 95 % intervals, the images each stage broke, the
    doubling check, the cost per image, and below the table each defense's attack gradient path."""
    stages = _stages(r for run in runs.values() for r in run.records)
    scores = {run.score for run in runs.values()}
    shared_score = next(iter(scores)) if len(scores) == 1 else None
    robust_header = f"robust, {shared_score} (%)" if shared_score else "robust (%), scoring per row"
    lines = [f"| defense | n | clean (%) | {robust_header} [95 % Wilson CI] | broken by " + " / ".join(stages)
             + " | doubling t/2 -> t: images that change (robust at t/2 -> t) | score-network evals / image "
             "| s / image |",
             "|---|---:|---|---|---|---|---:|---:|"]
    for purifier, run in runs.items():
        records, n = run.records, len(run.records)
        clean = sum(r.clean["defended"]["correct"] for r in records)
        robust = sum(_broken_by(r) is None for r in records)
        row = wilson_row(robust, n)
        scoring = "" if shared_score else f", {run.score}"
        broken = " / ".join(str(sum(_broken_by(r) == s for r in records)) for s in stages)
        check = doubling_cell(doubling_check(records, run.iterations))
        evals = np.mean([r.attacks[CASCADE_KEY]["cost"]["score_evals"] for r in records])
        seconds = np.mean([r.seconds[CASCADE_KEY] for r in records])
        lines.append(f"| {purifier} | {n} | {100 * clean / n:.1f} ({clean}/{n}) | {100 * row['p']:.1f} ({robust}/{n}"
                     f"{scoring}) [{100 * row['ci_low']:.1f}, {100 * row['ci_high']:.1f}] | {broken} | {check} "
                     f"| {evals:,.0f} | {seconds:,.0f} |")
    lines.append("")
    if stages:
        lines.append(f"- broken by {stages[0]} includes the images the defense gets wrong without any attack (the "
                     f"clean errors, and clean images a worst-of-N scoring catches)")
    lines += [f"- {purifier}: {attack_gradient('cascade', run.cascade, run.purifier)}"
              for purifier, run in runs.items()]
    return "\n".join(lines) + "\n"


def curves(records: list[ImageRecord]) -> dict[str, np.ndarray]:
    """{stage: (T + 1,) fraction of all images not yet fooled at each iteration}, fooled = some EOT sample wrong
    at some iteration so far, in this stage or an earlier traced one (images broken before the stage stay broken;
    of a stage without a trace only its worst-of-N outcome is known)."""
    out: dict[str, np.ndarray] = {}
    n = len(records)
    alive = np.ones(n, dtype=bool)
    for stage in _stages(records):
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


def figure(runs: dict[str, Run]) -> plt.Figure:
    """Robust accuracy against iterations, one panel per defense: per cascade stage a line of the images not yet
    fooled on any EOT sample and markers of the worst-of-N robust accuracy at the stage's scored iterations (the
    doubling check) with their 95 % Wilson intervals; both are fractions of all images, cumulative over the cascade."""
    fig, axes = plt.subplots(1, max(1, len(runs)), figsize=(4.4 * max(1, len(runs)), 3.4), squeeze=False)
    styles = ["-", "--", ":", "-."]
    legend: dict[str, Any] = {}
    for ax, (purifier, run) in zip(axes[0], runs.items()):
        stage_curves, n = curves(run.records), len(run.records)
        scored = checkpoint_counts(run.records)
        for i, (stage, curve) in enumerate(stage_curves.items()):
            line, = ax.plot(np.arange(len(curve)), 100 * curve, styles[i % len(styles)], label=stage)
            points = [(row["iteration"], wilson_row(row["robust"], n)) for row in scored if row["stage"] == stage]
            if points:  # stages side by side around each scored iteration, so equal counts stay visible
                y = np.array([100 * ci["p"] for _, ci in points])
                low, high = (np.array([100 * ci[k] for _, ci in points]) for k in ("ci_low", "ci_high"))
                ax.errorbar([t + 1.5 * (i - 1.5) for t, _ in points], y, yerr=[y - low, high - y], fmt="o",
                            color=line.get_color(), markersize=5, fillstyle="none", capsize=2, elinewidth=0.8,
                            label="worst of N at the scored iterations, 95 % CI" if i == 0 else None)
        if not stage_curves:
            ax.text(0.5, 0.5, "no traced stage ran:\nthe untraced first stage\nbroke every image", ha="center",
                    va="center", transform=ax.transAxes)
        ax.set_ylim(-3, 103)
        label_axes(ax, "iteration", "robust (%)", f"{purifier} (n = {n})")
        if ax.get_legend() is not None:
            legend.update({label: handle for handle, label in zip(*ax.get_legend_handles_labels())
                           if label not in legend})
            ax.get_legend().remove()
    if legend:
        fig.legend(list(legend.values()), list(legend), loc="lower center", ncol=5, fontsize=8,
                   title="line: not yet fooled on any EOT sample of a traced stage (untraced: worst of N); "
                         "o: worst of N with its 95 % CI", title_fontsize=8)
        fig.subplots_adjust(bottom=0.32, wspace=0.3)
    return fig


def plot(runs: dict[str, Run], out: Path) -> Path:
    """out/convergence.png: the figure of `runs`."""
    return save_figure(figure(runs), out / "convergence.png")


def main(argv: Optional[Sequence[str]] = None) -> None:
    """CLI: table (CSV), checkpoint counts (CSV) and the figure of the converged runs found under --runs."""
    parser = base_parser("convergence", __doc__.split("\n")[0])
    parser.add_argument("--runs", type=Path, required=True, help="folder holding the converged run folders")
    _, args, out = start_cli(parser, argv)
    runs = load_runs(args.runs)
    if not runs:
        raise FileNotFoundError(f"no run with records under {args.runs}: run configs/converged.yml first")
    table = [row for purifier, run in runs.items() for row in stage_table(purifier, run.records)]
    write_csv(out / "table.csv", table)
    checkpoints = [{"purifier": p, **row} for p, run in runs.items() for row in checkpoint_counts(run.records)]
    if checkpoints:
        write_csv(out / "checkpoints.csv", checkpoints)
    else:  # no stale file from an earlier call
        (out / "checkpoints.csv").unlink(missing_ok=True)
    atomic_write_text(out / "table.md", markdown_table(runs))
    plot(runs, out)


if __name__ == "__main__":
    run_cli(main)
