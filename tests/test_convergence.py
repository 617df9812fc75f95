"""Cost accounting, compact traces and the converged evaluation's report, on hand-made records."""
from __future__ import annotations

import dataclasses
import math
import shutil

import numpy as np
import pytest
import torch
import yaml

from attacks.registry import attack_config
from attacks.traces import decode_correct, encode_history
from matplotlib.container import ErrorbarContainer
from evaluation.results import CONFIG_FILE, ImageRecord, ResultWriter
from experiments.convergence import main as convergence_main
from experiments.common import run_cli
from experiments.convergence import (Doubling, Run, checkpoint_counts, curves, doubling_check, figure, markdown_table,
                                     stage_table)
from experiments.paired import compare, same_scoring, seed_note, sign_test
from tests.figures import errorbar_spans
from utils.config import ConfigError


def _record(index: int, broken_by, stages, correct_a: str, correct_b: str, worst_b: str) -> ImageRecord:
    history = {"a.correct": correct_a, "b.correct": correct_b, "b.worst_correct_at_2": worst_b}
    return ImageRecord(index=index, batch=0, label=0, seeds={}, clean={"defended": {"correct": True}},
                       purified_range=(0.0, 1.0), purified_sum=0.0, clean_margin=1.0,
                       attacks={"cascade": {"extra": {"broken_by": broken_by, "stages_run": stages},
                                            "history": history}})


def test_report_counts_the_cascade_per_stage_and_iteration():
    records = [_record(0, "a", ["a"], "110", "--", "-"),   # broken by a at iteration 2
               _record(1, "b", ["a", "b"], "111", "10", "0"),  # survived a, broken by b at iteration 1
               _record(2, None, ["a", "b"], "111", "11", "1")]  # robust
    rows = stage_table("coup", records)
    assert [(r["after"], round(r["p"] * 3)) for r in rows] == [("clean", 3), ("a", 2), ("b", 1)]
    assert checkpoint_counts(records) == [{"stage": "b", "iteration": 2, "robust": 1}]
    got = curves(records)
    assert np.allclose(got["a"], [1, 1, 2 / 3]) and np.allclose(got["b"], [2 / 3, 1 / 3])
    panel = figure({"coup": Run(COUP, CASCADE, records)}).get_axes()[0]
    (bars,) = [c for c in panel.containers if isinstance(c, ErrorbarContainer)]
    _, y, low, high = errorbar_spans(bars)  # b's worst of N at iteration 2: 1 of 3, with its Wilson interval
    assert np.allclose(y, [100 / 3]) and np.allclose(low, [6.1], atol=0.05) and np.allclose(high, [79.2], atol=0.05)


STAGES = [{"name": "pgd_eot", "iterations": 10}, {"name": "apgd_eot", "loss": "ce", "iterations": 100}]
CASCADE = attack_config("cascade", {"attacks": STAGES})
UNTRACED, TRACED = "pgd_eot", "apgd_eot_ce"


def _cascade_record(index: int, broken_by, worst_at: dict[int, str], evals: float, seconds: float) -> ImageRecord:
    """A record of the cascade pgd_eot, apgd_eot_ce, the second stage scored worst-of-N at the iterations of
    worst_at."""
    history = {f"{TRACED}.worst_correct_at_{t}": c for t, c in worst_at.items()}
    return ImageRecord(index=index, batch=0, label=0, seeds={},
                       clean={"defended": {"correct": broken_by != UNTRACED}}, purified_range=(0.0, 1.0),
                       purified_sum=0.0, clean_margin=1.0, seconds={"cascade": seconds},
                       attacks={"cascade": {"extra": {"broken_by": broken_by, "stages_run": [UNTRACED, TRACED]},
                                            "history": history, "cost": {"score_evals": evals}}})


COUP = {"name": "coup", "backend": "exact", "dt": 0.01, "guidance_scale": 1.0, "grad_mode": "full"}


def test_doubling_check_and_markdown_table():
    """Image 1 falls between t = 50 and 100 and image 2 between 25 and 50: the doubling change 50 -> 100 is 1."""
    records = [_cascade_record(0, UNTRACED, {}, 10.0, 1.0),
               _cascade_record(1, TRACED, {25: "1", 50: "1", 100: "0"}, 20.0, 2.0),
               _cascade_record(2, TRACED, {25: "1", 50: "0", 100: "0"}, 30.0, 3.0),
               _cascade_record(3, None, {25: "1", 50: "1", 100: "1"}, 40.0, 6.0)]
    budgets = {UNTRACED: 10, TRACED: 100}
    assert doubling_check(records, budgets) == [Doubling("25 -> 50", 3, 2, 1, False), Doubling("50 -> 100", 2, 1, 1, True)]
    assert doubling_check(records[:1], budgets) == []
    text = markdown_table({"coup": Run(COUP, CASCADE, records)})
    row = text.splitlines()[2]
    assert row == ("| coup | 4 | 75.0 (3/4) | 25.0 (1/4) [4.6, 69.9] | 1 / 2 | 1 (3 -> 2 robust) at 25 -> 50; "
                   "1 (2 -> 1 robust) at 50 -> 100 (converged) | 25 | 3 |")
    assert text.splitlines()[0].startswith("| defense | n | clean (%) | robust, worst of 10 (%) [95 % Wilson CI] | broken by "
                                           "pgd_eot / apgd_eot_ce |")
    assert "- broken by pgd_eot includes the images the defense gets wrong without any attack" in text
    assert "- coup: gradient: exact (backprop through the discretised solver, dt 0.01), guidance term" in text
    late = [_cascade_record(i, TRACED, {50: "1", 100: "0"}, 1.0, 1.0) for i in range(2)]
    assert "| 2 (2 -> 0 robust) at 50 -> 100 (NOT converged) |" in markdown_table(
        {"none": Run({"name": "none"}, CASCADE, late)})


def test_doubling_check_counts_flips_both_ways_and_over_the_whole_cascade():
    """Two images that flip in opposite directions keep the count but fail the check; so do two stages that each
    change one image (each stage alone would pass)."""
    opposite = [_cascade_record(0, TRACED, {50: "1", 100: "0"}, 1.0, 1.0),
                _cascade_record(1, None, {50: "0", 100: "1"}, 1.0, 1.0)]
    assert doubling_check(opposite, {TRACED: 100}) == [Doubling("50 -> 100", 1, 1, 2, True)]
    assert "| 2 (1 -> 1 robust) at 50 -> 100 (NOT converged) |" in markdown_table({"coup": Run(COUP, CASCADE, opposite)})
    second = "apgd_eot_dlr"
    two_stages = [_cascade_record(0, TRACED, {50: "1", 100: "0"}, 1.0, 1.0),
                  _cascade_record(1, second, {50: "1", 100: "1"}, 1.0, 1.0),
                  _cascade_record(2, None, {50: "1", 100: "1"}, 1.0, 1.0)]
    two_stages[1].attacks["cascade"]["history"].update({f"{second}.worst_correct_at_50": "1",
                                                       f"{second}.worst_correct_at_100": "0"})
    assert doubling_check(two_stages, {TRACED: 100, second: 100}) == [Doubling("50 -> 100", 3, 1, 2, True)]
    odd = [_cascade_record(0, None, {50: "1", 100: "1"}, 1.0, 1.0)]
    odd[0].attacks["cascade"]["history"].update({f"{second}.worst_correct_at_50": "1",
                                                 f"{second}.worst_correct_at_101": "1"})
    # the second stage's budget 101 is not a doubling of 50: the check is not a verdict at the final budget
    assert doubling_check(odd, {TRACED: 100, second: 101}) == [Doubling("50 -> 100", 1, 1, 0, False)]


def test_doubling_check_below_the_final_budget_is_not_a_verdict_and_scoring_is_per_row():
    """score_at [25, 50] with 100 iterations checks 25 -> 50 only; runs with other scorings name theirs per row."""
    early = [_cascade_record(i, None, {25: "1", 50: "1"}, 1.0, 1.0) for i in range(2)]
    vote = attack_config("cascade", {"attacks": [dict(s, eval_samples=4) for s in STAGES], "survivor_rule": "vote"})
    text = markdown_table({"coup": Run(COUP, CASCADE, early), "none": Run({"name": "none"}, vote, early)})
    assert "| 0 (2 -> 2 robust) at 25 -> 50 (not checked at the final budget) |" in text
    gap = [_cascade_record(0, None, {25: "1", 100: "1"}, 1.0, 1.0)]  # 25 and 100 scored, 50 not: no doubling
    assert doubling_check(gap, {TRACED: 100}) == []
    assert "robust (%), scoring per row [95 % Wilson CI]" in text.splitlines()[0]
    assert "| 100.0 (2/2, worst of 10) [" in text and "| 100.0 (2/2, vote of 4) [" in text


def _write_run(folder, purifier: dict, records: list[ImageRecord], attacks: list[dict]) -> None:
    folder.mkdir(parents=True)
    (folder / CONFIG_FILE).write_text(yaml.safe_dump({"config": {"purifier": purifier, "attacks": attacks}}))
    ResultWriter(folder / "results.jsonl").append(records)


def test_command_writes_the_table_csvs_and_figure_from_run_folders(tmp_path):
    """experiments.convergence end to end on two run folders (one with no traced stage, as 'none' has)."""
    runs = {"coup": [_cascade_record(i, None if i else TRACED, {50: "1", 100: "1" if i else "0"}, 8.0, 2.0)
                     for i in range(3)],
            "none": [_cascade_record(i, UNTRACED, {}, 0.0, 0.5) for i in range(2)]}
    cascade = [{"name": "cascade", "target": "defended", "attacks": STAGES}]
    for name, records in runs.items():
        _write_run(tmp_path / "runs" / f"converged_{name}", COUP if name == "coup" else {"name": name}, records,
                   cascade)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "checkpoints.csv").write_text("stale\n")
    convergence_main(["--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "out")])
    table = (tmp_path / "out" / "table.md").read_text().splitlines()
    assert table[2] == ("| coup | 3 | 100.0 (3/3) | 66.7 (2/3) [20.8, 93.9] | 0 / 1 | 1 (3 -> 2 robust) at 50 -> 100 "
                        "(converged) | 8 | 2 |")
    assert table[3].startswith("| none | 2 | 0.0 (0/2) | 0.0 (0/2) [0.0, 65.8] | 2 / 0 | - |")
    assert (tmp_path / "out" / "convergence.png").stat().st_size > 0
    assert (tmp_path / "out" / "checkpoints.csv").read_text().splitlines()[1:] == [
        f"coup,{TRACED},50,3", f"coup,{TRACED},100,2"]
    shutil.rmtree(tmp_path / "runs" / "converged_coup")
    convergence_main(["--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out" / "checkpoints.csv").exists()


def test_command_refuses_two_runs_of_one_defense_and_runs_without_a_cascade(tmp_path, caplog):
    records = [_cascade_record(0, None, {}, 1.0, 1.0)]
    cascade = [{"name": "cascade", "attacks": STAGES}]
    for name in ("converged_coup_a", "converged_coup_b"):
        _write_run(tmp_path / "two" / name, COUP, records, cascade)
    _write_run(tmp_path / "pgd" / "demo_coup", COUP, records, [{"name": "pgd_eot"}])
    for folder, message in (("two", "two coup runs under"), ("pgd", "is not a run of one cascade")):
        with pytest.raises(SystemExit) as exit_info:
            run_cli(lambda: convergence_main(["--runs", str(tmp_path / folder), "--out", str(tmp_path / "out")]))
        assert exit_info.value.code == 2 and message in caplog.text


def test_curves_count_images_a_stage_without_trace_broke():
    """PGD-EOT stores no trace: the image it broke starts the next stage as fooled."""
    untraced = ImageRecord(index=0, batch=0, label=0, seeds={}, clean={"defended": {"correct": True}},
                           purified_range=(0.0, 1.0), purified_sum=0.0, clean_margin=1.0,
                           attacks={"cascade": {"extra": {"broken_by": "pgd", "stages_run": ["pgd"]}, "history": {}}})
    survivor = ImageRecord(index=1, batch=0, label=0, seeds={}, clean={"defended": {"correct": True}},
                           purified_range=(0.0, 1.0), purified_sum=0.0, clean_margin=1.0,
                           attacks={"cascade": {"extra": {"broken_by": None, "stages_run": ["pgd", "b"]},
                                                "history": {"b.correct": "11"}}})
    assert np.allclose(curves([untraced, survivor])["b"], [0.5, 0.5])


def test_traces_are_compact_and_decode():
    history = {"loss": torch.tensor([[0.123456, float("nan")]]), "correct": torch.tensor([[1.0, float("nan")]])}
    encoded = encode_history(history, 0)
    assert encoded == {"loss": [0.1235, None], "correct": "1-"}
    assert decode_correct("10-") == [True, False, None]


def _scored(index: int, clean: bool, single: bool, worst: bool, worst_at_2: str) -> ImageRecord:
    attack = {"defended": {"correct": {"single": single, "worst": worst}},
              "history": {"loss": [1.0, 2.0], "worst_correct_at_2": worst_at_2}}
    return ImageRecord(index=index, batch=0, label=0, seeds={}, clean={"defended": {"correct": clean}},
                       purified_range=(0.0, 1.0), purified_sum=0.0, clean_margin=1.0, attacks={"apgd_eot": attack})


def test_paired_comparison_counts_discordant_images_and_runs_the_sign_test():
    a = {i: _scored(i, True, True, i < 6, "1") for i in range(8)}        # worst of K: 6 robust
    b = {i: _scored(i, True, i < 7, i == 7, "1" if i < 4 else "0") for i in range(9)}  # worst of K: 1 robust
    rows = {(r["attack"], r["score"]): r for r in compare(a, b)}
    assert rows["clean", "defended"]["n"] == 8 and rows["clean", "defended"]["only_a"] == 0
    worst = rows["apgd_eot", "worst of K"]
    assert (worst["robust_a"], worst["robust_b"], worst["only_a"], worst["only_b"]) == (6, 1, 6, 1)
    assert math.isclose(worst["sign_test_p"], 2 * 8 / 2**7)  # P(X <= 1), X ~ Bin(7, 1/2), two-sided
    assert rows["apgd_eot", "1 forward"]["only_a"] == 1
    checkpoint = rows["apgd_eot", "worst of K at 2 it."]
    assert (checkpoint["robust_a"], checkpoint["robust_b"], checkpoint["only_a"]) == (8, 4, 4)
    assert math.isclose(checkpoint["sign_test_p"], 2 / 2**4)
    assert sign_test(0, 0) == 1.0
    renamed = {i: dataclasses.replace(r, attacks={"cascade": r.attacks["apgd_eot"]}) for i, r in b.items()}
    across = {(r["attack"], r["score"]): r for r in compare(a, renamed, ("apgd_eot", "cascade"))}
    assert across["apgd_eot (A) vs cascade (B)", "worst of K"]["only_a"] == 6
    with pytest.raises(ValueError, match="missing for dataset index 0"):
        compare(a, renamed, ("apgd_eot", "apgd_eot"))


def test_paired_note_says_what_the_pairing_shares_and_how_many_images(caplog):
    a = {i: dataclasses.replace(_scored(i, True, True, True, "1"), seeds={"clean_noise": i, "attack": 5})
         for i in range(3)}
    b = {i: dataclasses.replace(r, seeds={"clean_noise": i, "attack": 5}) for i, r in a.items() if i < 2}
    assert seed_note(a, b, True) == ("A has 3 images, B 2; the table pairs the 2 both have. Same clean-noise and "
                                     "attack seeds on every image.")
    assert "Same clean-noise seeds on every image" in seed_note(a, b, False)
    other = {i: dataclasses.replace(r, seeds={"clean_noise": 7, "attack": 5}) for i, r in b.items()}
    differ = ("The clean-noise seeds differ or are not recorded (another eval seed, dataset order or older records): "
              "images are paired, draws are not.")
    assert seed_note(a, other, True).endswith(differ) and differ in caplog.text
    unrecorded = {i: dataclasses.replace(r, seeds={}) for i, r in a.items()}
    assert seed_note(unrecorded, unrecorded, True).endswith(differ)


def test_paired_comparison_refuses_other_data_and_other_k():
    a = {i: _scored(i, True, True, True, "1") for i in range(2)}
    relabelled = {i: dataclasses.replace(r, label=3) for i, r in a.items()}
    with pytest.raises(ValueError, match="dataset index 0 has label 0 in A and 3 in B"):
        compare(a, relabelled)
    config = {"data": {"name": "fashion-mnist"}, "attacks": [{"name": "pgd_eot", "eval_samples": 10},
                                                             {"name": "cascade", "attacks": [{"eval_samples": 10}]}]}
    assert same_scoring((config, config), [("pgd_eot", "cascade")]) == "K = 10"
    twenty = dict(config, attacks=[{"name": "pgd_eot", "eval_samples": 20}])
    with pytest.raises(ConfigError, match="A scores pgd_eot with K = 10, B scores pgd_eot with K = 20: "):
        same_scoring((config, twenty), [("pgd_eot", "pgd_eot")])
    with pytest.raises(ConfigError, match="A is a run on fashion-mnist, B on cifar10"):
        same_scoring((config, dict(config, data={"name": "cifar10"})), [("pgd_eot", "pgd_eot")])
