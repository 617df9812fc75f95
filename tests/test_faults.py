"""Bad inputs and faults against eval_sde_adv.py, certify_diffsmooth.py and the report: each is refused with
exit code 2 (130 for Ctrl-C) and one log line, and leaves nothing on disk; resumes refuse changed inputs."""
from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

import certify_diffsmooth
import eval_sde_adv
from evaluation import report, results
from tests.toys import interrupt_on_call
from utils.paths import resolve_path

REPO = Path(__file__).resolve().parent.parent
TINY = REPO / "configs" / "tiny.yml"
FAST = ["--attack", "pgd_eot", "--num_sub", "2", "--set", "attacks.*.iterations=1", "--set", "attacks.*.eot_samples=1",
        "--set", "attacks.*.eval_samples=1"]  # the quickest real run of the tiny config


def tiny_copy(tmp_path: Path, **sections) -> Path:
    """configs/tiny.yml copied into tmp_path with absolute paths, its checkpoint copied too, sections replaced."""
    raw = yaml.safe_load(TINY.read_text())
    shutil.copy(resolve_path(raw["backbone"]["checkpoint"], TINY.parent), tmp_path / "score.pth")
    raw["backbone"]["checkpoint"] = str(tmp_path / "score.pth")
    for name, value in sections.items():
        raw[name] = {**raw.get(name, {}), **value} if isinstance(value, dict) else value
    path = tmp_path / "tiny_copy.yml"
    path.write_text(yaml.safe_dump(raw))
    return path


def error_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The messages logged at ERROR or above."""
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def refused(caplog: pytest.LogCaptureFixture, code: int, out: Path, expected: int = 2) -> str:
    """Assert the exit code, exactly one one-line error, and that `out` was not created; return the line."""
    assert code == expected
    (line,) = error_lines(caplog)
    assert "\n" not in line and "Traceback" not in line
    assert not out.exists(), f"{out} was created"
    return line


def run_eval(tmp_path: Path, *args: str, config: Path = TINY) -> tuple[int, Path]:
    """eval_sde_adv.main with --output_dir tmp_path/out; (exit code, out)."""
    out = tmp_path / "out"
    return eval_sde_adv.main(["--config", str(config), *args, "--output_dir", str(out)]), out


@pytest.mark.parametrize("args, needle", [
    (["--set", "purifier.dt=0.5"], "larger than t_star 0.01"),
    (["--guidance_scale", "-1"], "anti-guidance"),
    (["--adv_eps", "8"], "(0, 1]"),
    (["--set", "purifier.nope=1"], "nope"),
    (["--set", "purifier.name=nope"], "unknown purifier 'nope'"),
    (["--set", "attacks.0.name=nope"], "unknown attack 'nope'"),
    (["--set", "purifier.dt"], "expected KEY=VALUE"),
    (["--set", "purifier.dt=[1,"], "not valid YAML"),
    (["--set", "eval.adv_batch_size=abc"], "adv_batch_size"),
    (["--set", "eval.adv_batch_size=0"], "adv_batch_size"),
    (["--set", "purifier.t_star=1.5"], "t_star"),
    (["--set", "attacks.7.eps=0.1"], "entry number below"),
    (["--set", "purifier.grad_mode=sideways"], "grad_mode"),
    (["--set", "data.name=mnist-ish"], "unknown dataset 'mnist-ish'"),
    (["--set", "classifier.name=resnet-9000"], "unknown classifier 'resnet-9000'"),
    (["--num_sub", "100000"], "num_sub"),
])
def test_eval_refuses_bad_settings_with_one_line(tmp_path, caplog, args, needle):
    assert needle in refused(caplog, *run_eval(tmp_path, *args))


@pytest.mark.parametrize("option", ["--purifier", "--attack", "--grad_mode", "--backend"])
def test_eval_refuses_an_unknown_choice_with_one_usage_line(tmp_path, capsys, option):
    with pytest.raises(SystemExit) as exit_info:
        run_eval(tmp_path, option, "nope")
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and len(err.strip().splitlines()) == 1 and "invalid choice: 'nope'" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("text, needle", [
    ("data: [1, 2\n", "not valid YAML at line"),
    ("- just\n- a list\n", "expected a YAML mapping"),
    ("data: {name: fashion-mnist}\nclassifier: {name: tiny-wrn}\npurifier: {name: none}\nextra: 1\n", "extra"),
])
def test_eval_refuses_a_broken_config_file(tmp_path, caplog, text, needle):
    config = tmp_path / "broken.yml"
    config.write_text(text)
    assert needle in refused(caplog, *run_eval(tmp_path, config=config))


def test_eval_refuses_a_missing_config_file(tmp_path, caplog):
    assert "config file not found" in refused(caplog, *run_eval(tmp_path, config=tmp_path / "no.yml"))


def test_every_missing_prerequisite_is_named_at_once_and_nothing_is_created(tmp_path, caplog):
    config = tiny_copy(tmp_path, classifier={"checkpoint": str(tmp_path / "missing_classifier.pt")},
                       data={"data_dir": str(tmp_path / "no_data")})
    (tmp_path / "score.pth").unlink()
    line = refused(caplog, *run_eval(tmp_path, *FAST, config=config))
    assert "3 problem(s)" in line
    assert "missing_classifier.pt" in line and "score.pth" in line and "no_data" in line
    assert "dataset-fashion-mnist" in line  # how to get *this* model's data and weights, not CIFAR-10's
    assert "drive.google" not in line and "checkpoint_8.pth" not in line and "train_score_model.py" in line


@pytest.mark.parametrize("content, needle", [
    (b"not a checkpoint at all", "score.pth"),
    (None, "score.pth"),  # a pickle that would run code on load
    ({"just": torch.zeros(2)}, "score.pth"),  # another architecture's keys
])
def test_eval_refuses_a_corrupt_unsafe_or_foreign_checkpoint(tmp_path, caplog, content, needle):
    config = tiny_copy(tmp_path)
    target = tmp_path / "score.pth"
    if isinstance(content, bytes):
        target.write_bytes(content)
    elif content is None:
        torch.save({"state": Path("x")}, target)  # pathlib.Path is not an allowed weights-only global
    else:
        torch.save(content, target)
    assert needle in refused(caplog, *run_eval(tmp_path, *FAST, config=config))


def test_labels_outside_the_classifier_are_refused_before_any_work(tmp_path, caplog):
    line = refused(caplog, *run_eval(tmp_path, *FAST, "--set", "classifier.num_classes=2"))
    assert "outside the classifier's 2 classes" in line


def test_unwritable_output_folder_is_one_line(tmp_path, caplog):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    code = eval_sde_adv.main(["--config", str(TINY), *FAST, "--output_dir", str(blocker / "out")])
    line = refused(caplog, code, blocker / "out")
    assert str(blocker) in line and "output folder" in line


def test_checkpoint_replaced_between_kill_and_resume_is_refused(tmp_path, caplog):
    config = tiny_copy(tmp_path)
    out = tmp_path / "out"
    args = ["--config", str(config), *FAST, "--output_dir", str(out)]
    assert eval_sde_adv.main(args) == 0
    (run_dir,) = out.iterdir()
    lines = (run_dir / "results.jsonl").read_text().splitlines()
    (run_dir / "results.jsonl").write_text(lines[0] + "\n")  # as if killed after the first image's batch
    state = torch.load(tmp_path / "score.pth", weights_only=True)
    state["ema"]["shadow_params"][0] += 1.0
    torch.save(state, tmp_path / "score.pth")  # same path, other weights
    caplog.clear()
    assert eval_sde_adv.main(args) == 2
    (line,) = error_lines(caplog)
    assert "score.pth changed" in line and "cannot resume" in line
    assert (run_dir / "results.jsonl").read_text() == lines[0] + "\n"  # nothing was added


def test_code_change_between_runs_is_refused(tmp_path, caplog, monkeypatch):
    args = ["--config", str(TINY), *FAST, "--output_dir", str(tmp_path / "out")]
    assert eval_sde_adv.main(args) == 0
    monkeypatch.setattr(results, "code_version", lambda: "f" * 64)
    caplog.clear()
    assert eval_sde_adv.main(args) == 2
    (line,) = error_lines(caplog)
    assert "the code changed" in line and "ffffffffffff" in line


def first_run_dir(out: Path) -> Path:
    (run_dir,) = out.iterdir()
    return run_dir


@pytest.mark.parametrize("bad_line, needle", [
    ('{"index": 3, "mood": "foreign"}', "not a result line of this program"),
    ("\x00\x01 binary junk", "not a JSON result line"),
    ('{"index": "x", "batch": 0, "label": 1, "seeds": {}, "clean": {}, "purified_range": [0, 1], "purified_sum": 0, '
     '"clean_margin": 0, "attacks": {}, "written_at": 0, "seconds": {}}', "malformed result line"),
])
def test_foreign_or_damaged_result_lines_are_refused_naming_file_and_line(tmp_path, caplog, bad_line, needle):
    args = ["--config", str(TINY), *FAST, "--output_dir", str(tmp_path / "out")]
    assert eval_sde_adv.main(args) == 0
    results_file = first_run_dir(tmp_path / "out") / "results.jsonl"
    good = results_file.read_text()
    results_file.write_text(bad_line + "\n" + good)
    caplog.clear()
    assert eval_sde_adv.main(args) == 2
    (line,) = error_lines(caplog)
    assert needle in line and f"{results_file}:1" in line


def test_ctrl_c_ends_with_one_line_and_the_run_resumes(tmp_path, caplog, monkeypatch):
    args = ["--config", str(TINY), *FAST, "--num_sub", "4", "--output_dir", str(tmp_path / "out")]
    original = interrupt_on_call(monkeypatch, vars(eval_sde_adv), "evaluate_batch", 2)
    assert eval_sde_adv.main(args) == 130
    (line,) = error_lines(caplog)
    assert "interrupted" in line and "rerun the same command to resume" in line
    results_file = first_run_dir(tmp_path / "out") / "results.jsonl"
    assert len(results_file.read_text().splitlines()) == 2  # the first batch is kept
    monkeypatch.setattr(eval_sde_adv, "evaluate_batch", original)
    assert eval_sde_adv.main(args) == 0
    assert len(results_file.read_text().splitlines()) == 4


def test_sigint_in_a_child_process_exits_130_with_one_line(tmp_path):
    command = [sys.executable, str(REPO / "eval_sde_adv.py"), "--config", str(TINY), "--num_sub", "6",
               "--attack", "autoattack", "--output_dir", str(tmp_path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    # a shell's background job inherits SIGINT ignored; the child gets the default back, as in a terminal
    child = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and child.poll() is None and not list(tmp_path.glob("*/results.jsonl")):
        time.sleep(0.05)
    child.send_signal(signal.SIGINT)
    _, stderr = child.communicate(timeout=120)
    assert child.returncode == 130
    errors = [line for line in stderr.splitlines() if " ERROR: " in line]
    assert len(errors) == 1 and "interrupted" in errors[0] and "Traceback" not in stderr


def test_batch_size_2_and_4_give_identical_per_image_records(tmp_path, eval_device_args):
    runs = {}
    for size in (2, 4):
        out = tmp_path / f"b{size}"
        args = ["--config", str(TINY), "--attack", "pgd_eot", "--attack", "bpda_eot", "--num_sub", "4",
                "--adv_batch_size", str(size), "--output_dir", str(out), *eval_device_args]
        assert eval_sde_adv.main(args) == 0
        records = results.read_records(first_run_dir(out))
        runs[size] = {i: (r.label, r.seeds, r.clean, r.purified_range, r.attacks) for i, r in records.items()}
    assert len(runs[2]) == 4 and runs[2] == runs[4]


def is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


@pytest.fixture
def tiny_disk(tmp_path):
    """A 64 KiB tmpfs (root only; skipped otherwise), unmounted afterwards."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if not is_root() or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)],
                                       capture_output=True, check=False).returncode != 0:
        pytest.skip("a tmpfs needs root and mount permission")
    yield mount
    subprocess.run(["umount", str(mount)], check=False)


def test_disk_full_is_one_line_and_leaves_no_partial_file(tiny_disk, caplog):
    (tiny_disk / "filler").write_bytes(b"\0" * (64 * 1024 - 6 * 1024))
    code = eval_sde_adv.main(["--config", str(TINY), *FAST, "--output_dir", str(tiny_disk / "out")])
    assert code == 2
    (line,) = error_lines(caplog)
    assert "No space left on device" in line and "free disk space" in line
    assert not list(tiny_disk.rglob("*.tmp")) and not list(tiny_disk.rglob("summary.json"))


def test_atomic_write_leaves_the_old_file_when_the_write_fails(tmp_path):
    from utils.files import atomic_write, atomic_write_text

    target = tmp_path / "summary.json"
    atomic_write_text(target, "old")

    def fail(tmp: str) -> None:
        Path(tmp).write_text("half")
        raise OSError(28, "No space left on device", tmp)

    with pytest.raises(OSError):
        atomic_write(target, fail)
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_report_skips_a_foreign_run_and_lists_why(tmp_path, capsys):
    out = tmp_path / "runs"
    base = ["--config", str(TINY), *FAST, "--output_dir", str(out)]
    assert eval_sde_adv.main([*base, "--purifier", "none"]) == 0
    assert eval_sde_adv.main([*base, "--purifier", "none", "--num_sub", "3"]) == 0  # another subset: foreign
    assert eval_sde_adv.main([*base, "--purifier", "coup", "--adv_eps", "0.01"]) == 0  # another budget: foreign
    capsys.readouterr()
    assert report.main(["--results", str(out), "--config", str(TINY), "--out", str(tmp_path / "rep"), *FAST]) == 0
    table = (tmp_path / "rep" / "table.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ") and "defense" not in line]
    assert len(rows) == 1 and rows[0].startswith("| none")
    assert "Skipped runs" in table and "data.num_sub 3 (asked 2)" in table and "eps 0.01 (asked None)" in table


def test_report_refuses_a_malformed_summary_with_one_line(tmp_path, caplog):
    run_dir = tmp_path / "runs" / "tiny_none_x"
    run_dir.mkdir(parents=True)
    (run_dir / "summary.json").write_text("{ not json")
    code = report.main(["--results", str(tmp_path / "runs"), "--config", str(TINY), "--out", str(tmp_path / "rep")])
    line = refused(caplog, code, tmp_path / "rep")
    assert "summary.json" in line


def certify_config(tmp_path: Path, **changes) -> Path:
    """configs/diffsmooth/fmnist_demo.yml with absolute checkpoint paths and `changes` to its sections."""
    source = REPO / "configs" / "diffsmooth" / "fmnist_demo.yml"
    raw = yaml.safe_load(source.read_text())
    for section in ("backbone", "classifier"):
        raw[section]["checkpoint"] = str(resolve_path(raw[section]["checkpoint"], source.parent).resolve())
    raw["run"]["output_dir"] = str(tmp_path / "out")
    for name, value in changes.items():
        raw[name] = {**raw[name], **value}
    path = tmp_path / "certify.yml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize("args, needle", [
    (["--sigma", "-1"], "smoothing.sigma"),
    (["--alpha", "2"], "certify.alpha"),
    (["--mode", "certify", "--set", "certify.N0=0"], "N0"),
    (["--set", "classifier.name=nope"], "unknown classifier 'nope'"),
    (["--set", "backbone.name=nope"], "unknown backbone 'nope'"),
    (["--set", "smoothing.nope=1"], "nope"),
])
def test_certify_refuses_bad_settings_with_one_line(tmp_path, caplog, args, needle):
    code = certify_diffsmooth.cli(["--config", str(certify_config(tmp_path)), *args])
    assert needle in refused(caplog, code, tmp_path / "out")


def test_certify_names_every_missing_file_at_once(tmp_path, caplog):
    config = certify_config(tmp_path, backbone={"checkpoint": str(tmp_path / "nope.pth")},
                            classifier={"checkpoint": str(tmp_path / "nope.pt")})
    line = refused(caplog, certify_diffsmooth.cli(["--config", str(config)]), tmp_path / "out")
    assert "2 problem(s)" in line and "nope.pth" in line and "nope.pt" in line


def test_certify_refuses_a_missing_config(tmp_path, caplog):
    line = refused(caplog, certify_diffsmooth.cli(["--config", str(tmp_path / "no.yml")]), tmp_path / "out")
    assert "config file not found" in line


def test_certify_ctrl_c_is_one_line_and_keeps_finished_rows(tmp_path, caplog, monkeypatch):
    config = certify_config(tmp_path, certify={"N0": 4, "N": 8, "max_images": 2}, run={"batch": 8})
    interrupt_on_call(monkeypatch, certify_diffsmooth.MODES, "certify", 2)
    assert certify_diffsmooth.cli(["--config", str(config)]) == 130
    (line,) = error_lines(caplog)
    assert "interrupted" in line and "resume" in line
    (tsv,) = (tmp_path / "out").glob("*.tsv")
    assert len(tsv.read_text().splitlines()) == 2  # the header and the first image's row


def test_certify_unwritable_output_is_one_line(tmp_path, caplog):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    config = certify_config(tmp_path, run={"output_dir": str(blocker / "out")})
    line = refused(caplog, certify_diffsmooth.cli(["--config", str(config)]), blocker / "out")
    assert "output folder" in line


def test_checkpoint_fingerprints_name_files_by_repository_path_so_a_moved_checkout_resumes(tmp_path):
    """The same checkpoint bytes in two checkouts at different places give the same run identity; other bytes do not."""
    for checkout in ("a", "b"):
        (tmp_path / checkout / "pretrained").mkdir(parents=True)
        (tmp_path / checkout / "pretrained" / "model.pt").write_bytes(b"weights")
    first = results.fingerprints([tmp_path / "a" / "pretrained" / "model.pt"], {}, tmp_path / "a")
    moved = results.fingerprints([tmp_path / "b" / "pretrained" / "model.pt"], {}, tmp_path / "b")
    assert list(first) == list(moved) == ["pretrained/model.pt"]
    stored = {"code_version": "v", "checkpoints": first}
    assert results.RunIdentity("h", "v", moved).changes(stored) == []
    (tmp_path / "b" / "pretrained" / "model.pt").write_bytes(b"other weights")
    changed = results.fingerprints([tmp_path / "b" / "pretrained" / "model.pt"], {}, tmp_path / "b")
    assert results.RunIdentity("h", "v", changed).changes(stored)[0].startswith("checkpoint pretrained/model.pt changed")
    outside = results.checkpoint_key(tmp_path / "a" / "pretrained" / "model.pt", tmp_path / "b")
    assert outside == str((tmp_path / "a" / "pretrained" / "model.pt").resolve())


def test_an_attack_that_cannot_take_the_defense_fails_before_any_work(tmp_path, caplog):
    attack = "attacks=[{name: cascade, attacks: [{name: pgd_eot, iterations: 1}, {name: diffattack, iterations: 1}]}]"
    code, out = run_eval(tmp_path, "--backend", "torchsde", "--set", attack)
    assert "diffattack needs the intermediate states" in refused(caplog, code, out)
    caplog.clear()
    code, out = run_eval(tmp_path, "--set", "attacks=[{name: pgd_aid_joint, iterations: 1}]")
    assert "pgd_aid_joint needs a defended model whose purifier is AID-Purifier" in refused(caplog, code, out)
