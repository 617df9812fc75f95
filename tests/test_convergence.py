"""Cost accounting, compact traces and the converged evaluation's report, on hand-made records."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from torch import nn

from attacks.accounting import measured, paper_projection
from attacks.traces import decode_correct, encode_history
from evaluation.results import ImageRecord
from experiments.convergence import checkpoint_counts, curves, stage_table
from experiments.paired import compare, seed_note, sign_test
from runners.gradient_path import gradient_statement


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


def test_cost_counts_rows_through_backbone_and_classifier():
    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.purifier = nn.Module()
            self.purifier.backbone = nn.Identity()
            self.classifier = nn.Identity()

        def forward(self, x):
            return self.classifier(self.purifier.backbone(self.purifier.backbone(x)))

    model = Model()
    with measured(model) as cost:
        model(torch.zeros(3, 2))
    assert (cost.score_rows, cost.classifier_rows) == (6, 3) and cost.seconds >= 0
    model(torch.zeros(1, 2))
    assert cost.score_rows == 6  # hooks removed after the block
    assert math.isclose(paper_projection(40.0, n_steps=10, eot_samples=2), 40.0 * 10 * 10 * 512)


def test_summary_states_the_gradient_path():
    assert gradient_statement({"backend": "exact", "dt": 0.01, "grad_mode": "full"}).startswith("gradient: exact")
    assert "APPROXIMATE" in gradient_statement({"backend": "torchsde", "dt": 0.001, "grad_mode": "detached"})
    assert "no diffusion solver" in gradient_statement({"name": "none"})


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


def test_paired_note_says_whether_the_seeds_match():
    config = {"eval": {"seed": 121}, "data": {"name": "fashion-mnist", "data_seed": 0, "num_sub": 32}}
    other = {"eval": {"seed": 7}, "data": {"name": "fashion-mnist", "data_seed": 0, "num_sub": 64}}
    assert seed_note(config, dict(config, data={**config["data"], "num_sub": 64})).startswith("Same eval seed")
    assert seed_note(config, other) == "The runs differ in eval seed 121 vs 7: images are paired, seeds are not."
