"""Merge several eval_sde_adv.py runs into one table (Markdown) and one figure of example images.

    python -m utils.report --results results/demo --config configs/demo.yml --out results/demo
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from utils.summary import ALL_ATTACKS, attack_groups  # noqa: E402

log = logging.getLogger("report")
ORDER = ("none", "diffpure", "reverse_only", "coup", "aid")
RULE_NAMES = {"single": "1 forward", "vote": "vote of K", "worst": "worst of K", "autoattack": "AutoAttack"}


def find_runs(results: Path, config: Path) -> list[dict[str, Any]]:
    """Summaries of the runs under `results` made from `config`, ordered by defense (then grad_mode)."""
    runs = []
    for path in sorted(results.glob("*/summary.json")):
        summary = json.loads(path.read_text())
        if Path(summary["config_file"]).resolve() == config.resolve():
            summary["dir"] = path.parent
            runs.append(summary)
    if not runs:
        raise FileNotFoundError(f"no finished run of {config} under {results}; run eval_sde_adv.py first")
    rank = {name: i for i, name in enumerate(ORDER)}
    return sorted(runs, key=lambda s: (rank.get(s["purifier"], len(ORDER)), s["grad_mode"] or ""))


# purifier config fields shown in a run's label, in order, where the purifier has them
LABEL_FIELDS = (("t_star", "t* {:g}"), ("dt", "dt {:g}"), ("def_step", "{} steps"), ("eps", "eps {:.4g}"),
                ("steps", "{} steps"), ("lr", "lr {:g}"))


def defense_label(summary: dict[str, Any]) -> str:
    """'coup (t* 0.1, dt 0.01, lambda 1, full grads)' style label of a run, from its purifier config."""
    purifier = summary["config"]["purifier"]
    name = summary["purifier"]
    if name == "none":
        return "none (classifier only)"
    parts = [fmt.format(purifier[key]) for key, fmt in LABEL_FIELDS if key in purifier]
    if purifier.get("guidance_scale"):
        parts += [f"lambda {purifier['guidance_scale']:g}", f"{purifier['grad_mode']} grads"]
    return f"{name} ({', '.join(parts)})"


def pct(entry: dict[str, Any]) -> str:
    """'54.7 [45.3, 63.8]' from an accuracy entry with a Wilson 95 % CI."""
    lo, hi = entry["ci95"]
    return f"{100 * entry['accuracy']:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]"


def table(runs: list[dict[str, Any]], title: Optional[str] = None) -> str:
    """One Markdown table: clean and robust accuracy (95 % CI) per defense, attack and scoring rule."""
    first = runs[0]
    header = [title] if title else []
    header += [f"Defenses on {first['config']['data']['name']} ({first['n']} test images, data seed "
              f"{first['seeds']['data']}, eval seed {first['seeds']['eval']}). Attacks:"]
    header += sorted({f"- {key}: {text}" for run in runs for key, text in run["attacks"].items()})
    rules = [rule for rule in RULE_NAMES if any(rule in scores for run in runs
                                                 for scores in run["accuracy"]["defended"]["attacks"].values())]
    keys = sorted({key for run in runs for key in run["accuracy"]["defended"]["attacks"]})
    worst = any(ALL_ATTACKS in attack_groups(run["accuracy"]["defended"]) for run in runs)
    keys += [ALL_ATTACKS] if worst else []
    columns = ["defense", "clean acc. %"] + [f"{key}: {RULE_NAMES[r]} %" for key in keys for r in rules]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for run in runs:
        accuracy = run["accuracy"]["defended"]
        groups = attack_groups(accuracy)
        cells = [defense_label(run), pct(accuracy["clean"])]
        cells += [pct(scores[r]) if r in scores else "-" for scores in (groups.get(k, {}) for k in keys) for r in rules]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Accuracy in %, 95 % Wilson CI in brackets. Attacks differentiate the whole defended model unless "
                 "marked 'crafted on the bare classifier' (transfer)"
                 + (f"; '{ALL_ATTACKS}' counts an image only if it survives every attack." if worst else "."))
    samples = sorted({a["eval_samples"] for run in runs for a in run["config"]["attacks"] if "eval_samples" in a})
    note = f"K = {'/'.join(map(str, samples))} purifications of each adversarial image." if samples else ""
    return "\n".join(header + ["", *lines, *([note] if note else [])]) + "\n"


def figure(runs: list[dict[str, Any]], out: Path, attack: Optional[str] = None) -> Optional[Path]:
    """PNG: per defense a row of clean | adversarial | purified adversarial images (from examples.pt)."""
    rows = [(run, torch.load(run["dir"] / "examples.pt", weights_only=True)) for run in runs
            if (run["dir"] / "examples.pt").is_file()]
    if not rows:
        log.warning("no examples.pt in the runs (set eval.save_examples); no figure")
        return None
    count = rows[0][1]["x"].shape[0]
    fig, axes = plt.subplots(len(rows), 3 * count, figsize=(1.1 * 3 * count, 1.25 * len(rows) + 0.4), squeeze=False)
    for r, (run, ex) in enumerate(rows):
        key = attack or next(iter(ex["attacks"]))
        images = [ex["x"], ex["attacks"][key]["x_adv"], ex["attacks"][key]["purified"]]
        for i in range(count):
            for j, (name, batch) in enumerate(zip(("clean", "adversarial", "purified adv."), images)):
                ax = axes[r, 3 * i + j]
                ax.imshow(batch[i].permute(1, 2, 0).squeeze(-1).clamp(0, 1).numpy(), cmap="gray", vmin=0, vmax=1)
                ax.set_xticks([]), ax.set_yticks([])
                if r == 0:
                    ax.set_title(f"{name}\n(image {int(ex['indices'][i])})" if j == 0 else name, fontsize=7)
        axes[r, 0].set_ylabel(defense_label(run).replace(" (", "\n("), fontsize=6, rotation=0, ha="right",
                              va="center")
    fig.suptitle(f"Clean, adversarial ({key}, crafted against each defense) and purified images", fontsize=9)
    fig.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    path = out / "examples.png"
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Print the merged table; write table.md and examples.png into --out."""
    parser = argparse.ArgumentParser(description="Merge eval_sde_adv.py runs into one table and figure.")
    parser.add_argument("--results", type=Path, required=True, help="eval.output_dir of the runs")
    parser.add_argument("--config", type=Path, required=True, help="the config file the runs used")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--title", help="a first line for the table, e.g. the budget and why it was chosen")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    runs = find_runs(args.results, args.config)
    markdown = table(runs, args.title)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "table.md").write_text(markdown)
    png = figure(runs, args.out)
    sys.stdout.write(markdown)
    log.info("wrote %s%s", args.out / "table.md", f" and {png}" if png else "")
    return 0


if __name__ == "__main__":
    sys.exit(main())
