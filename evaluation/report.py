"""Merge several eval_sde_adv.py runs into one table (Markdown) and one figure of example images.

    python -m evaluation.report --results results/demo --config configs/demo.yml --out results/demo

Only runs of the experiment asked for (--config with the same --num_sub / --attack / --set as the runs) make
rows: a run on another data subset, with another attack budget or eval seed is listed as skipped with the
reason. Two runs with the same label never make two rows: the newer one is kept, the other listed as skipped.
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

from evaluation.experiment import load_experiment  # noqa: E402
from evaluation.overrides import select_attacks  # noqa: E402
from evaluation.summary import ALL_ATTACKS, attack_groups  # noqa: E402
from utils.cli import parser as cli_parser  # noqa: E402
from utils.cli import add_spine, command_overrides, dry_run_text, run_main, setup_logging  # noqa: E402
from utils.config import ConfigError, read_yaml  # noqa: E402
from utils.files import atomic_write, atomic_write_text  # noqa: E402
from evaluation.labels import class_name, purifier_label  # noqa: E402
from evaluation.reuse import reuse_text  # noqa: E402

log = logging.getLogger("report")
ORDER = ("none", "diffpure", "reverse_only", "coup", "aid")
RULE_NAMES = {"single": "1 forward", "vote": "vote of K", "worst": "worst of K", "autoattack": "AutoAttack"}


# what must match the experiment asked for: the data subset, the attacks with their budgets, the eval seed
MATCHED = (("data", lambda c: c["data"]), ("attacks", lambda c: c["attacks"]), ("eval.seed", lambda c: c["eval"]["seed"]))


def read_summary(path: Path) -> dict[str, Any]:
    """A run's summary.json with its folder under 'dir'; a malformed file raises one-line ConfigError."""
    try:
        summary = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: not valid JSON ({err}); rerun that run or move its folder away") from None
    config = summary.get("config") if isinstance(summary, dict) else None
    if not isinstance(config, dict) or not {"data", "attacks", "eval"} <= set(config) or "purifier" not in summary:
        raise ConfigError(f"{path}: not a summary written by eval_sde_adv.py; rerun that run or move its folder away")
    summary["dir"] = path.parent
    return summary


def differences(name: str, ran: Any, wanted: Any) -> list[str]:
    """'name.key ran (asked wanted)' for every differing key of two configs (dicts, lists of dicts or values)."""
    if isinstance(ran, dict) and isinstance(wanted, dict):
        return [line for key in sorted(set(ran) | set(wanted))
                for line in differences(f"{name}.{key}", ran.get(key), wanted.get(key))]
    if isinstance(ran, list) and isinstance(wanted, list) and len(ran) == len(wanted):
        return [line for i, (a, b) in enumerate(zip(ran, wanted)) for line in differences(f"{name}[{i}]", a, b)]
    return [] if ran == wanted else [f"{name} {ran!r} (asked {wanted!r})"]


def mismatch(summary: dict[str, Any], asked: dict[str, Any]) -> Optional[str]:
    """Why a run is not a run of the experiment asked for (None if it is)."""
    found = [line for name, part in MATCHED for line in differences(name, part(summary["config"]), part(asked))]
    return "; ".join(found) or None


def find_runs(results: Path, asked: dict[str, Any]) -> tuple[list[dict[str, Any]], list[str]]:
    """(runs of the experiment asked for, one per label, ordered by defense; skipped runs with the reason)."""
    matching, skipped = [], []
    for path in sorted(results.glob("*/summary.json"), key=lambda p: p.stat().st_mtime_ns, reverse=True):
        summary = read_summary(path)
        reason = mismatch(summary, asked)
        if reason is None and defense_label(summary) in {defense_label(run) for run in matching}:
            reason = f"same defense as a newer run ({defense_label(summary)}); the newer one is shown"
        if reason is None:
            matching.append(summary)
        else:
            skipped.append(f"{path.parent.name}: {reason}")
    if not matching:
        raise FileNotFoundError(f"no finished run of the asked experiment under {results} ({len(skipped)} other "
                                "run(s) skipped); run eval_sde_adv.py with the same options first")
    rank = {name: i for i, name in enumerate(ORDER)}
    runs = sorted(matching, key=lambda s: (rank.get(s["purifier"], len(ORDER)), s["grad_mode"] or ""))
    return runs, sorted(skipped)


def defense_label(summary: dict[str, Any]) -> str:
    """'coup (t* 0.1, dt 0.01, lambda 1, full grads, exact backend)' label of a run, from its purifier config."""
    return purifier_label(summary["config"]["purifier"])


def reused_text(run: dict[str, Any]) -> Optional[str]:
    """How many of a run's rows come from earlier runs, when, and how to recompute (None: all computed fresh)."""
    return reuse_text(run.get("rows", {}), run["dir"])


def pct(entry: dict[str, Any]) -> str:
    """'54.7 [45.3, 63.8]' from an accuracy entry with a Wilson 95 % CI."""
    lo, hi = entry["ci95"]
    return f"{100 * entry['accuracy']:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]"


def table(runs: list[dict[str, Any]], title: Optional[str] = None, skipped: Sequence[str] = ()) -> str:
    """One Markdown table: n, clean and robust accuracy (95 % CI) per defense, attack and scoring rule."""
    first = runs[0]
    header = [title] if title else []
    header += [f"Defenses on {first['config']['data']['name']} (data subset num_sub "
              f"{first['config']['data']['num_sub']}, data seed {first['seeds']['data']}, eval seed "
              f"{first['seeds']['eval']}). Attacks:"]
    header += sorted({f"- {key}: {text}" for run in runs for key, text in run["attacks"].items()})
    rules = [rule for rule in RULE_NAMES if any(rule in scores for run in runs
                                                 for scores in run["accuracy"]["defended"]["attacks"].values())]
    keys = sorted({key for run in runs for key in run["accuracy"]["defended"]["attacks"]})
    worst = any(ALL_ATTACKS in attack_groups(run["accuracy"]["defended"]) for run in runs)
    keys += [ALL_ATTACKS] if worst else []
    columns = ["defense", "n", "clean acc. %"] + [f"{key}: {RULE_NAMES[r]} %" for key in keys for r in rules]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for run in runs:
        accuracy = run["accuracy"]["defended"]
        groups = attack_groups(accuracy)
        cells = [defense_label(run) + (" *" if reused_text(run) else ""), str(run["n"]), pct(accuracy["clean"])]
        cells += [pct(scores[r]) if r in scores else "-" for scores in (groups.get(k, {}) for k in keys) for r in rules]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Accuracy in %, 95 % Wilson CI in brackets. Attacks differentiate the whole defended model unless "
                 "marked 'crafted on the bare classifier' (transfer)"
                 + (f"; '{ALL_ATTACKS}' counts an image only if it survives every attack." if worst else "."))
    lines += [f"* {defense_label(run)}: {reused_text(run)}." for run in runs if reused_text(run)]
    samples = sorted({a["eval_samples"] for run in runs for a in run["config"]["attacks"] if "eval_samples" in a})
    note = f"K = {'/'.join(map(str, samples))} purifications of each adversarial image." if samples else ""
    skips = ["", "Skipped runs (not the experiment asked for, or a repeated defense):", *(f"- {s}" for s in skipped)]
    return "\n".join(header + ["", *lines, *([note] if note else []), *(skips if skipped else [])]) + "\n"


def image_caption(dataset: str, ex: dict[str, Any], key: str, i: int, column: int) -> str:
    """Under image i: the true class under the clean image, the prediction under the purified adversarial one."""
    if column == 0:
        return f"true: {class_name(dataset, int(ex['y'][i]))}"
    if column == 2 and "predicted" in ex["attacks"][key]:
        predicted = int(ex["attacks"][key]["predicted"][i])
        return f"pred: {class_name(dataset, predicted)}" + ("" if predicted == int(ex["y"][i]) else " (wrong)")
    return ""


def figure(runs: list[dict[str, Any]], out: Path, attack: Optional[str] = None) -> Optional[Path]:
    """PNG: per defense a row of clean | adversarial | purified adversarial images (from examples.pt), the clean image
    labelled with its true class and the purified one with the defended model's prediction."""
    rows = [(run, torch.load(run["dir"] / "examples.pt", map_location="cpu", weights_only=True)) for run in runs
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
                ax.set_xlabel(image_caption(run["config"]["data"]["name"], ex, key, i, j), fontsize=5)
                if r == 0:
                    ax.set_title(f"{name}\n(image {int(ex['indices'][i])})" if j == 0 else name, fontsize=7)
        axes[r, 0].set_ylabel(defense_label(run).replace(" (", "\n("), fontsize=6, rotation=0, ha="right",
                              va="center")
    fig.suptitle(f"Clean, adversarial ({key}, crafted against each defense) and purified images", fontsize=9)
    fig.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    path = out / "examples.png"
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=130))
    plt.close(fig)
    return path


def asked_config(args: argparse.Namespace) -> dict[str, Any]:
    """The resolved config of the experiment asked for: --config with --num_sub, --attack and --set (utils.cli)."""
    raw = read_yaml(args.config)
    overrides = {}
    if args.attack:
        overrides["attacks"] = select_attacks(raw.get("attacks") or [], args.attack)
    overrides.update(command_overrides(args, {"num_sub": "data.num_sub"}))
    return load_experiment(args.config, overrides).to_dict()


def run(args: argparse.Namespace) -> None:
    """Print the merged table; write table.md and examples.png into --out."""
    asked = asked_config(args)
    if args.dry_run:
        sys.stdout.write(dry_run_text(asked, args.out.resolve()))
        return
    runs, skipped = find_runs(args.results, asked)
    for line in skipped:
        log.warning("skipped %s", line)
    markdown = table(runs, args.title, skipped)
    atomic_write_text(args.out / "table.md", markdown)
    png = figure(runs, args.out)
    sys.stdout.write(markdown)
    log.info("wrote %s%s", args.out / "table.md", f" and {png}" if png else "")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry: the exit code (2 and one line on a user error)."""
    parser = cli_parser("Merge eval_sde_adv.py runs into one table and figure.")
    add_spine(parser, "the config file the runs used (with the same --num_sub / --attack / --set)")
    parser.add_argument("--results", type=Path, required=True, help="eval.output_dir of the runs")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--num_sub", type=int, help="data.num_sub, as given to eval_sde_adv.py")
    parser.add_argument("--attack", action="append", metavar="NAME", help="as given to eval_sde_adv.py; repeatable")
    parser.add_argument("--title", help="a first line for the table, e.g. the budget and why it was chosen")
    args = parser.parse_args(argv)
    setup_logging()
    return run_main(lambda: run(args), log)


if __name__ == "__main__":
    sys.exit(main())
