"""Paired comparison of two evaluation runs on the same images: robust counts and the images only one run keeps.

    python -m experiments.paired --runs RUN_A RUN_B --out DIR [--attacks KEY_A KEY_B]

For every attack both runs made and every score of it (1 forward, vote and worst of K, and the worst-of-K
checkpoints of an APGD-type attack at its score_at iterations; a cascade's per-stage checkpoints are in
experiments.convergence): n common images, robust accuracy of each run with its 95 % Wilson interval, the images
robust only under A and only under B, and the exact two-sided sign test on those discordant pairs (binomial,
p = 1/2). The runs must be on the same dataset (labels checked per image) and score with the same K. Writes
paired.csv and paired.md to --out.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

import yaml
from scipy import stats

from evaluation.evaluate import attack_keys
from evaluation.experiment import AttackSpec
from evaluation.labels import purifier_label
from evaluation.report import RULE_NAMES
from evaluation.results import CONFIG_FILE, ImageRecord, read_records
from experiments.common import base_parser, logger, run_cli, run_metadata, start_cli, wilson_row, write_csv
from utils.config import require
from utils.files import atomic_write_text

CHECKPOINT_PREFIX = "worst_correct_at_"


def outcomes(record: ImageRecord, key: str) -> dict[str, bool]:
    """{score name: image still correct} of attack `key` on the defended model: each rule, and each scored
    checkpoint ('worst of K at 25 it.') the attack recorded in its history."""
    entry = record.attacks[key]
    out = {RULE_NAMES.get(rule, rule): bool(value) for rule, value in entry["defended"]["correct"].items()}
    for name, trace in entry.get("history", {}).items():
        if name.startswith(CHECKPOINT_PREFIX) and trace in ("0", "1"):
            out[f"worst of K at {name[len(CHECKPOINT_PREFIX):]} it."] = trace == "1"
    return out


def sign_test(only_a: int, only_b: int) -> float:
    """Exact two-sided sign test p-value of the discordant pairs (1.0 when there are none)."""
    n = only_a + only_b
    return 1.0 if n == 0 else float(stats.binomtest(only_a, n, 0.5).pvalue)


def common_images(a: dict[int, ImageRecord], b: dict[int, ImageRecord]) -> list[int]:
    """The dataset indices both runs have, checked to carry the same label (the same dataset)."""
    common = sorted(set(a) & set(b))
    if not common:
        raise ValueError("the two runs share no image: compare runs of the same data subset")
    for i in common:
        if a[i].label != b[i].label:
            raise ValueError(f"dataset index {i} has label {a[i].label} in A and {b[i].label} in B: the runs are on "
                             "different data; compare runs of the same dataset")
    return common


def attack_pairs(a: dict[int, ImageRecord], b: dict[int, ImageRecord],
                 attacks: Optional[tuple[str, str]] = None) -> list[tuple[str, str]]:
    """(key in A, key in B) of the attacks to compare: `attacks` if given, else every key both runs have."""
    if attacks is not None:
        return [attacks]
    first = common_images(a, b)[0]
    return [(k, k) for k in a[first].attacks if k in b[first].attacks]


def compare(a: dict[int, ImageRecord], b: dict[int, ImageRecord],
            attacks: Optional[tuple[str, str]] = None) -> list[dict[str, Any]]:
    """One row per (attack, score) both runs have on every common image, clean accuracy first; with `attacks`
    (key in A, key in B) only that pair, e.g. the demo's pgd_eot against the converged run's cascade."""
    common = common_images(a, b)
    rows = [_row("clean", "defended", [(a[i].clean["defended"]["correct"], b[i].clean["defended"]["correct"])
                                       for i in common])]
    for key_a, key_b in attack_pairs(a, b, attacks):
        missing = [i for i in common if key_a not in a[i].attacks or key_b not in b[i].attacks]
        if missing:
            raise ValueError(f"attack {key_a!r} (A) or {key_b!r} (B) is missing for dataset index {missing[0]}: "
                             "pass attack keys both runs have")
        per_image = [(outcomes(a[i], key_a), outcomes(b[i], key_b)) for i in common]
        scores = [s for s in per_image[0][0] if all(s in oa and s in ob for oa, ob in per_image)]
        name = key_a if key_a == key_b else f"{key_a} (A) vs {key_b} (B)"
        rows += [_row(name, s, [(oa[s], ob[s]) for oa, ob in per_image]) for s in scores]
    return rows


def _row(attack: str, score: str, pairs: list[tuple[bool, bool]]) -> dict[str, Any]:
    """Counts, intervals and the sign test of per-image (A correct, B correct) pairs."""
    n = len(pairs)
    robust_a, robust_b = sum(pa for pa, _ in pairs), sum(pb for _, pb in pairs)
    only_a, only_b = sum(pa and not pb for pa, pb in pairs), sum(pb and not pa for pa, pb in pairs)
    wa, wb = wilson_row(robust_a, n), wilson_row(robust_b, n)
    return {"attack": attack, "score": score, "n": n, "robust_a": robust_a, "robust_b": robust_b,
            "a_pct": 100 * wa["p"], "a_low": 100 * wa["ci_low"], "a_high": 100 * wa["ci_high"],
            "b_pct": 100 * wb["p"], "b_low": 100 * wb["ci_low"], "b_high": 100 * wb["ci_high"],
            "only_a": only_a, "only_b": only_b, "sign_test_p": sign_test(only_a, only_b)}


def run_config(run_dir: Path) -> dict[str, Any]:
    """The resolved config of a run folder, from its config.yaml."""
    header = run_dir / CONFIG_FILE
    if not header.is_file():
        raise FileNotFoundError(f"{run_dir} is not a run folder (no {CONFIG_FILE}): pass the folders eval_sde_adv.py "
                                "wrote")
    return yaml.safe_load(header.read_text())["config"]


def scoring_samples(config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """{attack key: the K of its vote / worst-of-K scores (a cascade: its stages')} of a run's resolved config."""
    entries = config.get("attacks", [])
    keys = attack_keys(tuple(AttackSpec(e["name"], None, e.get("target", "defended")) for e in entries))
    return {key: tuple(sorted({s.get("eval_samples", 1) for s in e.get("attacks", [e])})) for key, e in zip(keys, entries)}


def same_scoring(configs: tuple[dict[str, Any], dict[str, Any]], pairs: list[tuple[str, str]]) -> str:
    """'K = 10': the K both runs score every compared attack with; refuses runs on other datasets or with other K."""
    names = [c["data"]["name"] for c in configs]
    require(names[0] == names[1], f"A is a run on {names[0]}, B on {names[1]}: compare runs of the same dataset")
    samples = scoring_samples(configs[0]), scoring_samples(configs[1])
    for key_a, key_b in pairs:
        k_a, k_b = ("/".join(map(str, side.get(key, ()))) for side, key in zip(samples, (key_a, key_b)))
        require(k_a == k_b, f"A scores {key_a} with K = {k_a}, B scores {key_b} with K = {k_b}: worst / vote of K "
                            "differ in meaning; compare runs with the same eval_samples")
    ks = sorted({k for key_a, _ in pairs for k in samples[0].get(key_a, ())})
    return "K = " + " / ".join(map(str, ks)) if ks else ""


def seed_note(a: dict[int, ImageRecord], b: dict[int, ImageRecord], same_attack: bool) -> str:
    """What the pairing shares, from the per-image seeds: the clean purification noise, and the attacks' seeds when
    both sides ran the same attack (`same_attack`); also how many images each run has. Seeds that differ or are not
    recorded are also logged as a warning."""
    common = common_images(a, b)
    same = {kind: all(a[i].seeds.get(kind) is not None and a[i].seeds.get(kind) == b[i].seeds.get(kind)
                      for i in common) for kind in ("clean_noise", "attack")}
    sizes = f"A has {len(a)} images, B {len(b)}; the table pairs the {len(common)} both have."
    if same["clean_noise"] and same["attack"] and same_attack:
        return f"{sizes} Same clean-noise and attack seeds on every image."
    if same["clean_noise"]:
        return (f"{sizes} Same clean-noise seeds on every image (the clean column uses the same draws); the attacks "
                "differ, so their noise draws do not correspond.")
    differ = ("The clean-noise seeds differ or are not recorded (another eval seed, dataset order or older records): "
              "images are paired, draws are not.")
    logger.warning("%s", differ)
    return f"{sizes} {differ}"


def markdown(rows: list[dict[str, Any]], label_a: str, label_b: str, note: str = "") -> str:
    """The rows as a markdown table under a header naming A and B, then `note`."""
    lines = [f"A: {label_a}", f"B: {label_b}", "",
             "| attack | score | n | A robust % | B robust % | only A | only B | sign test p |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['attack']} | {r['score']} | {r['n']} | {r['a_pct']:.1f} [{r['a_low']:.1f}, {r['a_high']:.1f}] "
                     f"| {r['b_pct']:.1f} [{r['b_low']:.1f}, {r['b_high']:.1f}] | {r['only_a']} | {r['only_b']} "
                     f"| {r['sign_test_p']:.3g} |")
    lines += ["", "Robust accuracy in %, 95 % Wilson interval in brackets; only A / only B: images one run keeps "
              "correct and the other does not (same images); exact two-sided sign test on those."] + ([note] if note else [])
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> None:
    """CLI: compare two run folders image by image."""
    parser = base_parser("paired", __doc__.split("\n")[0])
    parser.add_argument("--runs", type=Path, nargs=2, required=True, metavar=("RUN_A", "RUN_B"),
                        help="two run folders of eval_sde_adv.py on the same images")
    parser.add_argument("--attacks", nargs=2, metavar=("KEY_A", "KEY_B"),
                        help="compare only this attack of A with this attack of B (default: every attack both have)")
    argv, args, out = start_cli(parser, argv)
    run_a, run_b = args.runs
    configs = run_config(run_a), run_config(run_b)
    records = read_records(run_a), read_records(run_b)
    attacks = None if args.attacks is None else (args.attacks[0], args.attacks[1])
    pairs = attack_pairs(*records, attacks)
    scoring = same_scoring(configs, pairs)
    rows = compare(*records, attacks)
    write_csv(out / "paired.csv", rows)
    meta = run_metadata(argv)
    labels = purifier_label(configs[0]["purifier"]), purifier_label(configs[1]["purifier"])
    note = (f"{scoring}. " if scoring else "") + seed_note(*records, all(key_a == key_b for key_a, key_b in pairs))
    atomic_write_text(out / "paired.md", markdown(rows, *labels, note)
                      + f"\nMade by `python -m experiments.paired {' '.join(argv)}` (git {meta['git']}).\n")


if __name__ == "__main__":
    run_cli(main)
