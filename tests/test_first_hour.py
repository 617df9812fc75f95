"""A new user's first hour: progress in a log file, a copied config run from elsewhere, writes confined to the output
folder, readable summaries and folder names, reuse that says so, --help with choices, labelled example figures."""
from __future__ import annotations

import io
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import eval_sde_adv
from attacks.pgd import BPDAEOT, PGDEOT
from attacks.registry import ATTACKS, attack_config
from runners.defended import PURIFIERS
from utils.config import ConfigError
from evaluation.labels import attack_slug, class_name, defining_values, purifier_label, run_slug
from utils.paths import REPO_ROOT, candidates, find_file, output_folder, resolve_path
from utils.progress import Progress, format_duration
from evaluation import report
from evaluation.report import image_caption
from evaluation.results import ImageRecord
from evaluation.reuse import reuse_text, row_origin
from evaluation.run_plan import AttackBudget, attack_weights, config_budget

REPO = Path(__file__).resolve().parent.parent
TINY = REPO / "configs" / "tiny.yml"
# tiny.yml's two pgd_eot entries (adaptive, transfer) on 2 images in 1 batch: a run that exercises every stage
SMALL = ["--attack", "pgd_eot", "--num_sub", "2"]
IGNORED_PARTS = {".git", ".venv", "__pycache__", ".pytest_cache"}


def tree(root: Path) -> dict[str, int]:
    """{relative path: mtime in ns} of the files under root, skipping caches, the venv and git's own folder."""
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*")
            if p.is_file() and not IGNORED_PARTS & set(p.relative_to(root).parts)}


@pytest.fixture(scope="module")
def copied_run(tmp_path_factory) -> dict:
    """configs/tiny.yml copied unchanged to another folder, run from a third folder with stderr to a file."""
    home = tmp_path_factory.mktemp("user")
    (home / "mine").mkdir()
    (home / "cwd").mkdir()
    config = home / "mine" / "tiny_copy.yml"
    shutil.copyfile(TINY, config)
    before, repo_before = tree(home), tree(REPO)
    root_results = Path("/results").exists()
    log_file = home / "cwd" / "run.log"
    command = [sys.executable, str(REPO / "eval_sde_adv.py"), "--config", str(config), *SMALL,
               "--output_dir", str(home / "out"), "--progress_interval", "0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    with log_file.open("w") as stderr:
        done = subprocess.run(command, cwd=home / "cwd", env=env, stdout=subprocess.PIPE, stderr=stderr, text=True,
                              timeout=600)
    return {"home": home, "config": config, "done": done, "log": log_file.read_text(), "before": before,
            "after": tree(home), "repo_before": repo_before, "repo_after": tree(REPO), "root_results": root_results}


def test_progress_lines_in_a_log_file_estimate_the_time_left(copied_run):
    log = copied_run["log"]
    assert copied_run["done"].returncode == 0, log[-3000:]
    assert re.search(r"run size: 2 images \(2 to compute\), 2 attack\(s\): pgd_eot 2 x 2 EOT .*; "
                     r"pgd_eot_transfer 2 x 1 EOT", log)
    assert re.search(r"estimated time: about \d+ (s|min)", log)
    lines = [line for line in log.splitlines() if "progress:" in line]
    assert any(re.search(r"0/2 images done .*now pgd_eot iteration 1/2; elapsed .*, about .* left", line)
               for line in lines)
    assert re.search(r"progress: 2/2 images done \(100 % of the work\)", lines[-1])
    assert "\r" not in log  # no tqdm bar redraws in a file


def test_a_copied_config_runs_unchanged_from_another_folder(copied_run):
    assert copied_run["done"].returncode == 0, copied_run["log"][-3000:]
    assert copied_run["config"].read_bytes() == TINY.read_bytes()
    (run_dir,) = (copied_run["home"] / "out").iterdir()
    assert (run_dir / "summary.md").is_file() and (run_dir / "results.jsonl").is_file()
    assert str(REPO / "tests" / "data" / "ncsnpp_tiny" / "checkpoint.pth") in copied_run["log"]


def test_nothing_is_written_outside_the_output_folder(copied_run):
    assert copied_run["done"].returncode == 0, copied_run["log"][-3000:]
    new = {path for path in copied_run["after"] if path not in copied_run["before"]}
    changed = {path for path, mtime in copied_run["before"].items() if copied_run["after"].get(path) != mtime}
    assert new - {"cwd/run.log"} and all(path.startswith("out/") for path in new - {"cwd/run.log"})
    assert changed == set()
    assert copied_run["repo_after"] == copied_run["repo_before"]
    assert Path("/results").exists() == copied_run["root_results"]


def test_summary_states_t_star_and_lambda_and_no_autoattack_warnings_for_pgd_eot(copied_run):
    (run_dir,) = (copied_run["home"] / "out").iterdir()
    summary = (run_dir / "summary.md").read_text()
    assert "t* 0.01, lambda 1, dt 0.005, grad_mode detached, backend exact" in summary
    assert run_dir.name.startswith("tiny_copy_coup_t0.01_dt0.005_lam1_detached_exact_pgd_eot-Linf-2x2_"
                                   "pgd_eot-transfer-Linf-2x1_seed121_data0_")
    for text in (summary, copied_run["log"]):
        assert 'version="rand"' not in text and "dynamic defense" not in text and "randomized defense" not in text
    assert "pgd_eot: check_randomized: expected: the defense is randomized; pgd_eot averages" in summary
    assert copied_run["log"].count("pgd_eot sanity check check_randomized") == 1


def test_reuse_is_stated_in_log_and_summary_and_fresh_recomputes(tmp_path, caplog):
    args = ["--config", str(TINY), *SMALL, "--output_dir", str(tmp_path)]
    assert eval_sde_adv.main(args) == 0
    (run_dir,) = tmp_path.iterdir()
    first = (run_dir / "results.jsonl").read_text()
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert eval_sde_adv.main(args) == 0
    assert re.search(r"2 of 2 images reused from earlier runs \(written \d{4}-\d\d-\d\d \d\d:\d\d UTC\); "
                     r"to recompute, pass --fresh or delete .*" + re.escape(run_dir.name), caplog.text)
    assert "images reused from earlier runs" in (run_dir / "summary.md").read_text()
    assert (run_dir / "results.jsonl").read_text() == first
    assert report.main(["--results", str(tmp_path), "--config", str(TINY), *SMALL, "--out", str(tmp_path / "report")]) == 0
    table = (tmp_path / "report" / "table.md").read_text()
    assert "| coup (t* 0.01, dt 0.005, lambda 1, detached grads, exact backend) * |" in table
    assert re.search(r"\n\* coup \(.*\): 2 of 2 images reused from earlier runs \(written .* UTC\); to recompute, "
                     r"pass --fresh or delete " + re.escape(str(run_dir)), table)
    assert eval_sde_adv.main([*args, "--fresh"]) == 0
    assert "reused" not in (run_dir / "summary.md").read_text()
    assert len((run_dir / "results.jsonl").read_text().splitlines()) == 2


def test_help_lists_every_choice_and_default(capsys):
    with pytest.raises(SystemExit):
        eval_sde_adv.parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    purifiers, attacks = "{" + ",".join(PURIFIERS.names()) + "}", "{" + ",".join(ATTACKS.names()) + "}"
    for choices in ("{detached,full,surrogate,exact,create_graph,bpda}", "{exact,torchsde}", purifiers, attacks,
                    "{standard,rand}", "{Linf,L2}"):
        assert choices in text
    assert "(default: from the config)" in text and "(default: 30.0)" in text


def test_config_paths_resolve_against_the_config_folder_then_the_repository(tmp_path):
    (tmp_path / "here.pt").write_bytes(b"x")
    assert resolve_path("here.pt", tmp_path) == tmp_path / "here.pt"
    assert resolve_path("configs/tiny.yml", tmp_path) == TINY
    assert resolve_path("out/w.pt", tmp_path) == tmp_path / "out" / "w.pt"  # a new output of a config elsewhere
    assert resolve_path("../../results/x", REPO_ROOT / "configs" / "train") == REPO_ROOT / "results" / "x"
    assert candidates("/abs/file.pt", tmp_path) == [Path("/abs/file.pt")]
    with pytest.raises(FileNotFoundError) as missing:
        find_file("pretrained/nothing.pt", tmp_path, "classifier weights", "train it with X")
    message = str(missing.value)
    assert str(tmp_path / "pretrained" / "nothing.pt") in message and str(REPO_ROOT / "pretrained" / "nothing.pt") \
        in message and message.endswith("train it with X") and "\n" not in message
    with pytest.raises(ConfigError, match="outside the repository"):
        output_folder("../results", tmp_path)  # the old config layout copied elsewhere: refused, not written above
    assert output_folder("results/demo", REPO_ROOT / "configs") == REPO_ROOT / "results" / "demo"
    assert output_folder("../results/demo", REPO_ROOT / "configs") == REPO_ROOT / "results" / "demo"
    assert output_folder("results/demo", tmp_path) == tmp_path / "results" / "demo"  # a copy writes next to itself
    assert output_folder("configs", tmp_path) == tmp_path / "configs"  # even where the repository has that folder


def test_missing_backbone_checkpoint_names_both_places(tmp_path, caplog):
    config = tmp_path / "tiny.yml"
    config.write_text(TINY.read_text().replace("tests/data/ncsnpp_tiny/checkpoint.pth", "pretrained/absent.pth"))
    assert eval_sde_adv.main(["--config", str(config), *SMALL, "--output_dir", str(tmp_path / "out")]) == 2
    assert str(tmp_path / "pretrained" / "absent.pth") in caplog.text
    assert str(REPO_ROOT / "pretrained" / "absent.pth") in caplog.text


def test_progress_logs_at_a_steady_interval_with_the_time_left():
    now = [0.0]
    lines: list[str] = []
    log = logging.getLogger("progress-test")
    log.info = lambda fmt, text: lines.append(text)  # type: ignore[method-assign]
    progress = Progress(4, {"a": 1.0, "b": 3.0}, log, interval=30.0, terminal=False, clock=lambda: now[0])
    progress.start_batch(2)
    now[0] = 10.0
    progress.step("a", 1, 1)  # 1/4 of 2 images of 4: 1/8 done after 10 s -> 70 s left
    assert lines == []  # within the interval
    now[0] = 40.0
    progress.step("b", 1, 2)  # (1 + 1.5) / 4 of half the images: 5/16 done after 40 s -> 88 s left
    assert lines[-1] == ("progress: 0/4 images done (31 % of the work), now b iteration 1/2; elapsed 40 s, "
                         "about 1 min 28 s left")
    progress.finish_batch()
    assert len(lines) == 1
    now[0] = 80.0
    progress.start_batch(2)
    progress.finish_batch()  # the last batch always reports
    assert lines[-1] == "progress: 4/4 images done (100 % of the work); elapsed 1 min 20 s, about 0 s left"
    progress.close()
    assert format_duration(3725) == "1 h 02 min" and format_duration(59.6) == "1 min 00 s"


def test_progress_timer_logs_while_a_step_takes_longer_than_the_interval():
    lines: list[str] = []
    log = logging.getLogger("progress-timer-test")
    log.info = lambda fmt, text: lines.append(text)  # type: ignore[method-assign]
    progress = Progress(2, {"pgd_eot": 1.0}, log, interval=0.02, terminal=False)
    progress.start_batch(2)
    deadline = time.monotonic() + 5.0
    while len(lines) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)  # no step is reported meanwhile
    progress.close()
    assert len(lines) >= 2 and lines[0].startswith("progress: 0/2 images done (0 % of the work); elapsed 0 s, "
                                                   "estimating time left")
    count = len(lines)
    time.sleep(0.1)
    assert len(lines) == count  # close() stops the timer


def test_progress_bar_on_a_terminal_shows_the_current_attack():
    stream = io.StringIO()
    progress = Progress(2, {"pgd_eot": 1.0}, logging.getLogger("bar-test"), terminal=True, stream=stream)
    progress.start_batch(2)
    progress.step("pgd_eot", 1, 4)
    progress.close()
    assert "images:  25%" in stream.getvalue() and "pgd_eot iteration 1/4" in stream.getvalue()


def test_labels_carry_the_defining_values():
    coup = {"name": "coup", "t_star": 0.1, "dt": 0.01, "guidance_scale": 2.0, "grad_mode": "full", "backend": "exact"}
    attack = {"name": "pgd_eot", "target": "defended", "norm": "Linf", "eps": 8 / 255, "iterations": 8,
              "eot_samples": 2}
    assert purifier_label(coup) == "coup (t* 0.1, dt 0.01, lambda 2, full grads, exact backend)"
    assert defining_values(coup) == "t* 0.1, lambda 2, dt 0.01, grad_mode full, backend exact"
    assert defining_values({"name": "reverse_only", "t_star": 0.1, "guidance_scale": 0.0}) == "t* 0.1, lambda 0"
    assert defining_values({"name": "reverse_only", "t_star": 0.1, "guidance_scale": 0.0, "grad_mode": "full",
                            "backend": "exact"}) == "t* 0.1, lambda 0, backend exact"
    assert attack_slug(attack) == "pgd_eot-Linf-eps8-255-8x2"
    assert attack_slug({"name": "autoattack", "version": "rand", "norm": "L2", "eps": 0.5}) == \
        "autoattack-rand-L2-eps0.5"
    assert run_slug({"purifier": coup, "attacks": [attack]}) == \
        "coup_t0.1_dt0.01_lam2_full_exact_pgd_eot-Linf-eps8-255-8x2"
    assert run_slug({"purifier": {"name": "none"}, "attacks": []}) == "none"


def test_reuse_text_names_rows_times_and_how_to_recompute():
    started = 1_800_000_000 * 10**9
    records = [ImageRecord(0, 0, 0, {}, {}, (0.0, 1.0), 0.0, 0.0, {}, written_at=t)
               for t in (started - 60 * 10**9, started - 10**9, started + 1)]
    origin = row_origin(records, started)
    assert origin["reused"] == 2 and origin["computed"] == 1
    assert reuse_text(origin, Path("results/x")) == ("2 of 3 images reused from earlier runs (written 2027-01-15 "
                                                     "07:59 UTC); to recompute, pass --fresh or delete results/x")
    assert reuse_text(row_origin(records[2:], started), Path("x")) is None


def test_pgd_eot_explains_expected_checks_and_keeps_real_warnings():
    attack = PGDEOT({"iterations": 1, "eot_samples": 3, "eval_samples": 5})
    raw = {"check_randomized": 'it seems to be a randomized defense! Please use version="rand".',
           "check_dynamic": "it seems to be a dynamic defense!", "check_range_output": "probabilities",
           "check_zero_gradients": None}
    flags = attack.explain_flags(raw)
    assert flags["check_randomized"].startswith("expected: the defense is randomized; pgd_eot averages each step's "
                                                "gradient over 3 noise draws (EOT) and scores 5 forwards")
    assert flags["check_dynamic"].startswith("expected:") and "backpropagates through the defended model" in flags["check_dynamic"]
    assert flags["check_range_output"] == "probabilities" and flags["check_zero_gradients"] is None
    bpda = BPDAEOT({"iterations": 1, "eot_samples": 3, "eval_samples": 5}).explain_flags(raw)
    assert "backward by the identity" in bpda["check_dynamic"] and bpda["check_randomized"].startswith("expected:")


def test_figure_captions_give_true_class_and_prediction():
    example = {"y": torch.tensor([7, 2]), "attacks": {"pgd_eot": {"predicted": torch.tensor([7, 5])}}}
    assert image_caption("fashion-mnist", example, "pgd_eot", 0, 0) == "true: Sneaker"
    assert image_caption("fashion-mnist", example, "pgd_eot", 0, 2) == "pred: Sneaker"
    assert image_caption("fashion-mnist", example, "pgd_eot", 1, 2) == "pred: Sandal (wrong)"
    assert image_caption("fashion-mnist", example, "pgd_eot", 1, 1) == ""
    assert class_name("svhn", 3) == "3"


def test_attack_weights_leave_the_scoring_forwards_for_the_end_of_a_batch():
    budgets = [AttackBudget("pgd_eot", 8, 2, 10)]
    weights = attack_weights(budgets)
    assert weights == {"pgd_eot": 48.0, "scoring": 11.0}
    progress = Progress(4, weights, logging.getLogger("weights-test"), interval=0.0, terminal=False)
    progress.start_batch(4)
    progress.step("pgd_eot", 8, 8)  # every iteration done, the 10 scoring forwards (and the clean one) not yet
    assert progress.mark[0] == pytest.approx(48 / 59)
    progress.finish_batch()
    assert progress.mark[0] == 1.0


def test_cascade_budget_counts_every_stage_and_its_scored_points():
    cascade = attack_config("cascade", {"attacks": [
        {"name": "pgd_eot", "iterations": 6, "eot_samples": 3, "eval_samples": 5},
        {"name": "apgd_eot", "loss": "dlr", "iterations": 8, "eot_samples": 2, "eval_samples": 4, "score_at": [4]}]})
    budget = config_budget("cascade", cascade)
    assert [s.key for s in budget.stages] == ["pgd_eot", "apgd_eot_dlr"]
    assert budget.gradient_passes == 6 * 3 + (1 + 8) * 2  # APGD also takes the gradient at its start point
    assert budget.iterations == 14 and budget.scoring == 5 + 4 * 2
    assert budget.text().startswith("cascade of 2 stages, at most (later stages see only survivors): pgd_eot 6 x 3 EOT")
    assert attack_weights([budget]) == {"cascade": 3.0 * 36, "scoring": 1.0 + 13}
