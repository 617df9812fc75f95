"""The run summary: clean and robust accuracy with 95 % Wilson intervals per model, attack and scoring rule,
plus everything needed to reproduce it (resolved config, seeds, package versions, git hash, check flags)."""
from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from attacks.accounting import cost_summary, paper_projection
from attacks.cascade import CascadeConfig, stage_configs
from evaluation.evaluate import attack_keys
from evaluation.experiment import AttackSpec, Experiment
from evaluation.results import ImageRecord
from evaluation.run_plan import attack_budget, common_eot, reverse_steps
from attacks.registry import ATTACKS
from runners.defended import gradient_statement
from runners.gradient_path import STRAIGHT_THROUGH, TRANSFER
from utils.files import atomic_write_text
from evaluation.labels import defining_values
from utils.devices import deterministic_flags
from utils.precision import describe_numerics, precision_flags
from utils.provenance import git_hash, package_versions
from evaluation.reuse import reuse_text, row_origin
from utils.stats import wilson_interval

MODELS = ("defended", "classifier")
ALL_ATTACKS = "all attacks"  # the per-image worst case over a run's attacks, listed after them
SEED_DERIVATION = ("every batch attacks with seed hash(eval, ATTACK_RUN), and the attacks draw image i's noise from "
                   "hash(seed, i, stage); image i's clean forward uses noise seed hash(eval, i, CLEAN_NOISE); both "
                   "are in every result line, so a record depends on neither batch size nor sharding")


@dataclass(frozen=True)
class RunInfo:
    """Where the records come from: run name, config file and hash, the attack seed, number of processes."""

    name: str
    config_file: str
    config_hash: str
    attack_seed: int
    world_size: int
    started_ns: int = 0  # when this process started; records written before it were reused from earlier runs
    device: str = "cpu"  # utils.devices.device_name of rank 0's device, e.g. 'NVIDIA H100 80GB HBM3 (cuda:0)'


def accuracy(hits: list[bool]) -> dict[str, Any]:
    """{accuracy, correct, n, ci95: [low, high]} of a list of per-image outcomes (Wilson interval)."""
    correct, n = sum(bool(h) for h in hits), len(hits)
    low, high = wilson_interval(correct, n)
    return {"accuracy": correct / n, "correct": correct, "n": n, "ci95": [low, high]}


def model_accuracy(records: list[ImageRecord], model: str, keys: list[str]) -> dict[str, Any]:
    """{'clean': entry, 'attacks': {key: {rule: entry}}} for one model over the records."""
    attacks = {}
    for key in keys:
        rules = records[0].attacks[key][model]["correct"]
        attacks[key] = {rule: accuracy([r.attacks[key][model]["correct"][rule] for r in records]) for rule in rules}
    table = {"clean": accuracy([r.clean[model]["correct"] for r in records]), "attacks": attacks}
    if len(keys) > 1:
        table["all_attacks"] = worst_over_attacks(records, model, keys)
    return table


def worst_over_attacks(records: list[ImageRecord], model: str, keys: list[str]) -> dict[str, Any]:
    """{rule: entry}: an image counts as robust only if it survives every attack (per-image worst case)."""
    rules = [rule for rule in records[0].attacks[keys[0]][model]["correct"]
             if all(rule in records[0].attacks[key][model]["correct"] for key in keys)]
    return {rule: accuracy([all(r.attacks[key][model]["correct"][rule] for key in keys) for r in records])
            for rule in rules}


def attack_groups(table: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """{attack key: {rule: entry}} of one model's accuracy table, then ALL_ATTACKS when the run has several attacks."""
    return {**table["attacks"], **({ALL_ATTACKS: table["all_attacks"]} if "all_attacks" in table else {})}


def check_flags(records: list[ImageRecord], keys: list[str]) -> dict[str, dict[str, list[str]]]:
    """{attack key: {check name: distinct warning messages over all batches}}; an empty list means passed."""
    flags: dict[str, dict[str, set[str]]] = {key: {} for key in keys}
    for record in records:
        for key in keys:
            for check, message in record.attacks[key]["flags"].items():
                flags[key].setdefault(check, set()).update([message] if message else [])
    return {key: {check: sorted(messages) for check, messages in checks.items()} for key, checks in flags.items()}


def purified_range(records: list[ImageRecord]) -> dict[str, Any]:
    """Min and max of the purified clean images, and whether they left [0, 1] (DiffPure's unclamped output)."""
    low = min(r.purified_range[0] for r in records)
    high = max(r.purified_range[1] for r in records)
    return {"min": low, "max": high, "left_unit_interval": low < 0.0 or high > 1.0}


def describe_attack(spec: AttackSpec) -> str:
    """'autoattack (standard, Linf, eps 0.03137)' from the attack's config; a cascade lists its stages."""
    return describe_config(spec.name, spec.config, spec.target)


def describe_config(name: str, config: Any, target: str = "defended") -> str:
    """'pgd_eot (Linf, eps 0.03137, 100 x 4 EOT, step 0.007843)'; a cascade: its rule and each stage so described."""
    if isinstance(config, CascadeConfig):
        stages = "; ".join(describe_config(key, stage) for key, _, stage in stage_configs(config))
        return f"{name} (each stage on the survivors of the previous ones, survival by {config.survivor_rule} " \
               f"score: {stages})"
    radius = getattr(config, "radius", None)
    loss = getattr(config, "loss", None)
    details = [getattr(config, "version", None), getattr(config, "norm", None),
               None if radius is None else f"eps {radius:.4g}", None if loss is None else f"{loss.upper()} loss",
               None if target == "defended" else "crafted on the bare classifier"]
    if hasattr(config, "iterations"):
        aggregation = getattr(config, "aggregation", "mean")
        details += [f"{config.iterations} x {config.eot_samples} EOT"
                    + ("" if aggregation == "mean" else f" ({aggregation} aggregation)"), config.step_text,
                    "fixed noise (deterministic)" if getattr(config, "noise", None) == "fixed" else None]
    if getattr(config, "dev_weight", None) is not None:
        details.append(f"deviated-reconstruction weight {config.dev_weight} ({config.dev_schedule})")
    return f"{name} ({', '.join(d for d in details if d)})"


def attack_gradient(name: str, config: Any, purifier: dict[str, Any], target: str = "defended") -> str:
    """The gradient attack `name` followed against a resolved purifier config: the purifier's own path
    (runners.defended.gradient_statement) unless the attack is a transfer or BPDA; a cascade per stage."""
    if target != "defended":
        return TRANSFER
    if isinstance(config, CascadeConfig):
        stages = {key: attack_gradient(stage_name, stage, purifier) for key, stage_name, stage in stage_configs(config)}
        if len(set(stages.values())) == 1:
            return next(iter(stages.values()))
        return "; ".join(f"{key}: {text}" for key, text in stages.items())
    return STRAIGHT_THROUGH if ATTACKS.get(name).identity_backward else gradient_statement(purifier)


def paper_projections(costs: dict[str, dict[str, float]], experiment: Experiment, keys: list[str]
                      ) -> dict[str, Optional[float]]:
    """{attack key: its score-network evaluations in the papers' setting (attacks.accounting.paper_projection), None
    when its records lack the gradient / forward-only split or a cascade's stages differ in EOT} for runs of a
    purifier with a time grid (t_star, dt)."""
    purifier = experiment.purifier
    if not hasattr(purifier, "dt") or not hasattr(purifier, "t_star"):
        return {}
    steps, projections = reverse_steps(purifier), {}
    for key, spec in zip(keys, experiment.attacks):
        if key in costs:
            eot = common_eot(attack_budget(key, spec))
            projections[key] = None if eot is None else paper_projection(costs[key], steps, eot)
    return projections


def audit_digest(audit: list[dict[str, Any]]) -> dict[str, Any]:
    """A run's gradient audit (experiments.gradient_audit records) in brief: images audited, those whose exact
    gradient matched finite differences, and the median cosine and norm ratio of the torchsde adjoint against it."""
    digest: dict[str, Any] = {"n": len(audit), "fd_ok": sum(bool(r["exact_vs_fd"]["ok"]) for r in audit)}
    adjoint = [r["adjoint_vs_exact"] for r in audit if "adjoint_vs_exact" in r]
    if adjoint:
        digest["adjoint_cosine"] = statistics.median(a["cosine"] for a in adjoint)
        digest["adjoint_norm_ratio"] = statistics.median(a["norm_ratio"] for a in adjoint)
    return digest


def audit_lines(digest: Optional[dict[str, Any]]) -> list[str]:
    """The run's own gradient audit in one sentence (none without an audit)."""
    if not digest:
        return []
    text = (f"Gradient audit of this run ({digest['n']} images, gradient_audit.csv): the exact gradient matched "
            f"central finite differences on {digest['fd_ok']} of {digest['n']}")
    if "adjoint_cosine" in digest:
        text += (f"; the torchsde adjoint against it: median cosine {digest['adjoint_cosine']:.2g}, "
                 f"{digest['adjoint_norm_ratio']:.2g}x its norm (this model's figure at this dt)")
    return [text + ".", ""]


def build_summary(experiment: Experiment, records: list[ImageRecord], info: RunInfo,
                  audit: Optional[list[dict[str, Any]]] = None) -> dict[str, Any]:
    """Everything summary.json holds, from the ordered per-image records of the whole subset and the run's gradient
    audit records, if it has one."""
    resolved = experiment.to_dict()
    keys = attack_keys(experiment.attacks)
    models = MODELS if experiment.file.eval.evaluate_classifier else MODELS[:1]
    purifier = resolved["purifier"]
    costs = cost_summary(records, keys)
    return {
        "run": info.name, "config_file": info.config_file, "config_hash": info.config_hash, "n": len(records),
        "purifier": purifier["name"], "grad_mode": purifier.get("grad_mode"), "backend": purifier.get("backend"),
        "attacks": {key: describe_attack(spec) for key, spec in zip(keys, experiment.attacks)},
        "accuracy": {model: model_accuracy(records, model, keys) for model in models},
        "classifier_clean": accuracy([r.clean["classifier"]["correct"] for r in records]),
        "autoattack_checks": check_flags(records, keys),
        "rows": row_origin(records, info.started_ns),
        "gradient": {key: attack_gradient(spec.name, spec.config, purifier, spec.target)
                     for key, spec in zip(keys, experiment.attacks)},
        "gradient_audit": audit_digest(audit) if audit else None,
        "cost_per_image": costs,
        "cost_paper_projection": paper_projections(costs, experiment, keys),
        "purified_range": purified_range(records),
        "seeds": {"eval": resolved["eval"]["seed"], "data": resolved["data"]["data_seed"],
                  "classifier_init": resolved["classifier"]["seed"], "derivation": SEED_DERIVATION,
                  "attack": info.attack_seed},
        "processes": info.world_size, "device": info.device,
        "packages": package_versions(), "git": git_hash(), "numerics": precision_flags(),
        "determinism": deterministic_flags(),
        "config": resolved,
    }


def gradient_lines(gradients: dict[str, str]) -> list[str]:
    """'Attack gradient: ...' when every attack followed the same one, else one line per attack."""
    if len(set(gradients.values())) == 1:
        return [f"Attack {next(iter(gradients.values()))}."]
    return ["Attack gradients:", *(f"- {key}: {text}" for key, text in gradients.items())]


def _percent(entry: dict[str, Any]) -> str:
    """'| 87.50 | [80.1, 92.3] | 448 / 512 |' cells of an accuracy entry."""
    low, high = entry["ci95"]
    return f"{100 * entry['accuracy']:.2f} | [{100 * low:.1f}, {100 * high:.1f}] | {entry['correct']} / {entry['n']}"


def accuracy_rows(summary: dict[str, Any]) -> list[str]:
    """Markdown table rows: model | attack | rule | accuracy | CI | correct / n."""
    rows = []
    for model, table in summary["accuracy"].items():
        rows.append(f"| {model} | clean | - | {_percent(table['clean'])} |")
        for key, rules in attack_groups(table).items():
            rows.extend(f"| {model} | {key} | {rule} | {_percent(entry)} |" for rule, entry in rules.items())
    return rows


def flag_lines(summary: dict[str, Any]) -> list[str]:
    """One line per raised AutoAttack check, or a line saying all passed."""
    raised = [f"- {key}: {check}: {message}" for key, checks in summary["autoattack_checks"].items()
              for check, messages in checks.items() for message in messages]
    return raised or ["- all checks passed"]


def cost_lines(summary: dict[str, Any]) -> list[str]:
    """Per attack: score-network and classifier evaluations and seconds per image (empty for older runs)."""
    costs = summary.get("cost_per_image") or {}
    lines = [f"- {key}: {c['score_evals']:.0f} score-network and {c['classifier_evals']:.0f} classifier evaluations, "
             f"{c['seconds']:.2f} s per image" for key, c in costs.items()]
    projected = summary.get("cost_paper_projection") or {}
    lines += [f"- {key} in the papers' setting (100 steps, EOT 20, 512 images, its own iterations): {total:.3g} "
              "score-network evaluations" if total is not None else
              f"- {key}: no projection to the papers' setting (its records predate the split of gradient and "
              "forward-only evaluations, or its cascade's stages differ in EOT)" for key, total in projected.items()]
    return ["Cost (forward network evaluations, backward recomputation included):", *lines, ""] if lines else []


def render_markdown(summary: dict[str, Any]) -> str:
    """summary.md: the defining values, the accuracy table, then attacks, checks, purified range, seeds and versions."""
    seeds, span = summary["seeds"], summary["purified_range"]
    reused = reuse_text(summary["rows"], Path(summary["run"])) if "rows" in summary else None
    lines = [f"# {summary['run']}", "",
             f"Purifier **{summary['purifier']}**: {defining_values(summary['config']['purifier'])}; "
             f"n = {summary['n']} images. Config `{summary['config_file']}` (hash {summary['config_hash'][:12]}).", "",
             *([f"{reused}.", ""] if reused else []),
             "| model | attack | rule | accuracy (%) | 95 % CI (%) | correct / n |",
             "|---|---|---|---:|---|---:|", *accuracy_rows(summary), "",
             "Attacks:", *(f"- {key}: {text}" for key, text in summary["attacks"].items()),
             *([f"- {ALL_ATTACKS}: an image counts as robust only if it survives every attack above"]
               if len(summary["attacks"]) > 1 else []), "",
             "Sanity checks (AutoAttack's check functions as each attack runs them; each message once):",
             *flag_lines(summary), "",
             *gradient_lines(summary["gradient"]), "",
             *audit_lines(summary.get("gradient_audit")),
             *cost_lines(summary),
             f"Purified clean images span [{span['min']:.4f}, {span['max']:.4f}]"
             f"{' (outside [0, 1])' if span['left_unit_interval'] else ''}; bare classifier clean accuracy "
             f"{100 * summary['classifier_clean']['accuracy']:.2f} %.", "",
             f"Seeds: eval {seeds['eval']}, data {seeds['data']}, classifier init {seeds['classifier_init']}; "
             "batch seeds in summary.json.",
             f"Device: {summary.get('device', 'cpu')}; numerics: {describe_numerics(summary['numerics'])}.",
             f"attack seed {seeds['attack']} for every batch.",
             "Versions: " + ", ".join(f"{k} {v}" for k, v in summary["packages"].items()) + f"; git {summary['git']}."]
    return "\n".join(lines) + "\n"


def write_summary(run_dir: Path, summary: dict[str, Any]) -> str:
    """Write summary.json and summary.md into run_dir; returns the Markdown."""
    markdown = render_markdown(summary)
    atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    atomic_write_text(run_dir / "summary.md", markdown)
    return markdown
