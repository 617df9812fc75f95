"""eval_sde_adv.py end to end on the tiny config: run scripts, resume after SIGKILL, torchrun shards, refusals."""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
import yaml

import eval_sde_adv
from attacks.autoattack import AutoAttackEval
from utils.data import load_images
from evaluation.evaluate import Batch, make_models, pending_batches, plan_batches, reseed_unseeded_noise
from evaluation.experiment import build_models, load_experiment
from evaluation.results import ImageRecord, ResultWriter, claim_run_dir, config_hash, read_records, run_name

REPO = Path(__file__).resolve().parent.parent
TINY = REPO / "configs" / "tiny.yml"
SCRIPTS = REPO / "run_scripts" / "cifar10"
# run script -> (purifier, attack key, AutoAttack version or None, norm); every one runs in the default suite
SCRIPT_CASES = {
    "run_cifar_stand_inf_guide.sh": ("coup", "autoattack", "standard", "Linf"),
    "run_cifar_rand_L2_revonly.sh": ("reverse_only", "autoattack", "rand", "L2"),
    "run_cifar_stand_L2_diffpure.sh": ("diffpure", "autoattack", "standard", "L2"),
    "run_cifar_pgd_eot.sh": ("coup", "pgd_eot", None, "Linf"),
    "run_cifar_bpda.sh": ("coup", "bpda_eot", None, "Linf"),
    **{f"run_cifar_{v}_{n}_{m}.sh": (p, "autoattack", version, norm)
       for m, p in (("guide", "coup"), ("revonly", "reverse_only"), ("diffpure", "diffpure"))
       for v, version in (("stand", "standard"), ("rand", "rand")) for n, norm in (("inf", "Linf"), ("L2", "L2"))},
}
RESUME_ARGS = ["--config", str(TINY), "--num_sub", "6", "--attack", "autoattack"]  # 3 batches of 2


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment of child runs: one thread each (like the in-process runs), plus `extra`."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), **extra}


def run_dir_of(root: Path) -> Path:
    """The single run folder under an output root."""
    (run_dir,) = [p for p in root.iterdir() if p.is_dir()]
    return run_dir


def lines_per_index(run_dir: Path) -> Counter:
    """How many JSONL lines each dataset index has over all result files."""
    return Counter(json.loads(line)["index"] for path in run_dir.glob("results*.jsonl")
                   for line in path.read_text().splitlines())


def outcomes(run_dir: Path) -> dict[int, dict]:
    """{index: record without its write time and wall seconds}: what must not depend on interruptions or sharding."""
    return {i: dataclasses.replace(r, written_at=0, seconds={}) for i, r in read_records(run_dir).items()}


def bare_classifier_hits(num_sub: int) -> list[bool]:
    """Per-image clean correctness of the tiny config's bare classifier, computed directly."""
    experiment = load_experiment(TINY, {"data.num_sub": num_sub})
    images = load_images(experiment.file.data, experiment.base_dir)
    _, classifier = build_models(experiment)
    with torch.no_grad():
        return (classifier(images.x).argmax(dim=-1) == images.y).tolist()


@pytest.fixture(scope="module")
def reference(tmp_path_factory, eval_device_args) -> Path:
    """An uninterrupted single-process, in-process run of RESUME_ARGS on the test device."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("reference")
    assert eval_sde_adv.main([*RESUME_ARGS, *eval_device_args, "--output_dir", str(root)]) == 0
    torch.set_num_threads(threads)
    return run_dir_of(root)


@pytest.mark.parametrize("script", sorted(SCRIPT_CASES))
def test_run_script_end_to_end(script, tmp_path, eval_device_args):
    purifier, key, version, norm = SCRIPT_CASES[script]
    bare = " --evaluate_classifier" if key == "pgd_eot" else ""
    extra = " ".join([f"--output_dir {tmp_path} --num_sub 2{bare}", *eval_device_args])
    env = subprocess_env(CONFIG="configs/tiny.yml", EXTRA_ARGS=extra)
    done = subprocess.run(["bash", str(SCRIPTS / script), "7", "0"], cwd="/", env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    run_dir = run_dir_of(tmp_path)
    summary = json.loads((run_dir / "summary.json").read_text())
    config = summary["config"]
    assert summary["purifier"] == purifier and config["eval"]["seed"] == 7 and summary["n"] == 2
    assert [a["name"] for a in config["attacks"]] and {a["norm"] for a in config["attacks"]} == {norm}
    assert all(a.get("version") == version for a in config["attacks"] if a["name"] == "autoattack")
    records = [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]
    assert len(records) == 2
    for rule, entry in summary["accuracy"]["defended"]["attacks"][key].items():
        assert entry["correct"] == sum(r["attacks"][key]["defended"]["correct"][rule] for r in records)
    hits = bare_classifier_hits(2)
    assert [r["clean"]["classifier"]["correct"] for r in records] == hits
    assert set(summary["accuracy"]) == ({"defended", "classifier"} if bare else {"defended"})
    if bare:  # the transfer attack's bare-classifier score is the attack's own output on the classifier
        assert summary["accuracy"]["classifier"]["clean"]["correct"] == sum(hits)
        assert set(summary["accuracy"]["classifier"]["attacks"]) == {"pgd_eot", "pgd_eot_transfer"}
    span = summary["purified_range"]
    assert span["left_unit_interval"] == (span["min"] < 0 or span["max"] > 1)
    assert span["left_unit_interval"] or purifier != "diffpure"  # DiffPure's output is not clamped
    assert "| defended | clean |" in (run_dir / "summary.md").read_text() and "| defended | clean |" in done.stdout
    assert summary["packages"]["torch"] == torch.__version__.split("+")[0]


def test_every_cifar10_run_script_is_tested():
    assert sorted(SCRIPT_CASES) == sorted(p.name for p in SCRIPTS.glob("*.sh"))


def test_scripts_read_the_paper_config_and_pick_purifier_and_backend(tmp_path):
    env = subprocess_env(EXTRA_ARGS=f"--output_dir {tmp_path} --dry-run")
    bad = subprocess.run(["bash", str(SCRIPTS / "run_cifar_bpda.sh"), "7"], env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and "usage: bash" in bad.stderr and "SEED DATA_SEED" in bad.stderr
    configs = {}
    for script, args in (("run_cifar_pgd_eot.sh", ["7", "3", "diffpure"]), ("run_cifar_bpda.sh", ["7", "3"])):
        dry = subprocess.run(["bash", str(SCRIPTS / script), *args], env=env, capture_output=True, text=True,
                             timeout=120)
        assert dry.returncode == 0, dry.stderr[-2000:]
        configs[script] = yaml.safe_load(dry.stdout)
    pgd, bpda = configs["run_cifar_pgd_eot.sh"], configs["run_cifar_bpda.sh"]
    assert (pgd["purifier"]["name"], pgd["purifier"]["backend"], pgd["purifier"]["t_star"]) == \
        ("diffpure", "exact", 0.1)
    assert (bpda["purifier"]["name"], bpda["purifier"]["backend"], bpda["purifier"]["guidance_scale"]) == \
        ("coup", "torchsde", 1.0)
    assert [(a["name"], a["iterations"], a["eot_samples"], a["norm"]) for a in pgd["attacks"]] == \
        [("pgd_eot", 200, 20, "Linf")]
    assert [(a["name"], a["iterations"]) for a in bpda["attacks"]] == [("bpda_eot", 20)]
    assert pgd["data"]["data_seed"] == 3 and pgd["eval"]["seed"] == 7
    assert not any(tmp_path.iterdir())


def test_sigkill_then_rerun_equals_uninterrupted_run(reference, tmp_path, eval_device_args):
    args = [*RESUME_ARGS, *eval_device_args, "--output_dir", str(tmp_path)]
    command = [sys.executable, str(REPO / "eval_sde_adv.py"), *args]
    child = subprocess.Popen(command, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and child.poll() is None:
            files = list(tmp_path.glob("*/results.jsonl"))
            if files and len(files[0].read_text().splitlines()) >= 2:
                break
            time.sleep(0.05)
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    run_dir = run_dir_of(tmp_path)
    written = len((run_dir / "results.jsonl").read_text().splitlines())
    assert 2 <= written < 6, "the child must be killed after its first batch and before its last"
    assert eval_sde_adv.main(args) == 0
    assert set(lines_per_index(run_dir).values()) == {1}
    assert outcomes(run_dir) == outcomes(reference)
    assert json.loads((run_dir / "summary.json").read_text())["accuracy"] == \
        json.loads((reference / "summary.json").read_text())["accuracy"]


def test_torchrun_two_processes_equal_one(reference, tmp_path, eval_device_args):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(REPO / "eval_sde_adv.py"), *RESUME_ARGS, *eval_device_args, "--output_dir", str(tmp_path)]
    done = subprocess.run(command, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    run_dir = run_dir_of(tmp_path)
    assert run_dir.name == reference.name
    shards = {p.name: [json.loads(line)["batch"] for line in p.read_text().splitlines()]
              for p in run_dir.glob("results*.jsonl")}
    assert shards == {"results.rank0.jsonl": [0, 0, 2, 2], "results.rank1.jsonl": [1, 1]}
    assert outcomes(run_dir) == outcomes(reference)
    assert json.loads((run_dir / "summary.json").read_text())["processes"] == 2


def test_records_carry_noise_dependent_continuous_values(reference, device):
    """The resume / sharding comparisons see the purification noise: the purified sum differs between images and
    is reproduced by purifying with the record's own clean-noise seed."""
    records = read_records(reference)
    assert len({r.purified_sum for r in records.values()}) == len(records)
    experiment = load_experiment(TINY, {"data.num_sub": 6})
    images = load_images(experiment.file.data, experiment.base_dir)
    defended, _ = build_models(experiment)
    defended.to(device)
    first = records[int(images.indices[0])]
    seeds = torch.tensor([first.seeds["clean_noise"], first.seeds["clean_noise"] + 1])
    with torch.no_grad():
        purified = defended.purifier(images.x[:1].to(device).expand(2, -1, -1, -1), seeds)
        logits = defended.classifier(purified[:1])[0]
    assert float(purified[0].double().sum()) == pytest.approx(first.purified_sum, rel=1e-6)
    assert float(purified[1].double().sum()) != pytest.approx(first.purified_sum, rel=1e-6)
    label = first.label
    margin = float(logits[label] - torch.cat([logits[:label], logits[label + 1:]]).max())
    assert margin == pytest.approx(first.clean_margin, rel=1e-5, abs=1e-6)
    assert (margin > 0) == first.clean["defended"]["correct"]


def test_resume_from_a_hand_written_half_batch(reference, tmp_path, eval_device_args):
    """Batch 0 written, batch 1 holds only its first image: the rerun keeps batch 0 and redoes all of batch 1."""
    run_dir = tmp_path / reference.name
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text((reference / "config.yaml").read_text())
    lines = (reference / "results.jsonl").read_text().splitlines()
    kept = [json.loads(line) for line in lines if json.loads(line)["batch"] == 0]
    half = [json.loads(line) for line in lines if json.loads(line)["batch"] == 1][:1]
    (run_dir / "results.jsonl").write_text("".join(json.dumps({**r, "written_at": 1}) + "\n" for r in kept + half))
    assert eval_sde_adv.main([*RESUME_ARGS, *eval_device_args, "--output_dir", str(tmp_path)]) == 0
    records = read_records(run_dir)
    assert {i for i, r in records.items() if r.written_at == 1} == {r["index"] for r in kept}
    assert lines_per_index(run_dir)[half[0]["index"]] == 2 and sum(lines_per_index(run_dir).values()) == 7
    assert outcomes(run_dir) == outcomes(reference)


def test_batch_size_changes_no_clean_record(reference, tmp_path, eval_device_args):
    """Clean purification noise is seeded per image: batches of 3 instead of 2 give the same clean values.

    Predictions are equal; the continuous values agree to float32 round-off (a batch of another size may sum in
    another order), far below what another noise draw moves them (test_records_carry_noise_dependent_continuous_values).
    """
    args = [*RESUME_ARGS, *eval_device_args, "--output_dir", str(tmp_path), "--adv_batch_size", "3"]
    assert eval_sde_adv.main(args) == 0
    batched, reference_records = read_records(run_dir_of(tmp_path)), read_records(reference)

    def discrete(records: dict[int, ImageRecord]) -> dict[int, tuple]:
        return {i: (r.clean, r.purified_range) for i, r in records.items()}

    def continuous(records: dict[int, ImageRecord]) -> list[float]:
        return [value for _, r in sorted(records.items()) for value in (r.purified_sum, r.clean_margin)]

    assert discrete(batched) == discrete(reference_records)
    assert continuous(batched) == pytest.approx(continuous(reference_records), rel=1e-6, abs=1e-6)


def test_results_dir_of_another_config_is_refused(tmp_path, caplog):
    args = ["--config", str(TINY), "--output_dir", str(tmp_path)]
    resolved = load_experiment(TINY, {"eval.output_dir": str(tmp_path)}).to_dict()
    other = load_experiment(TINY, {"data.num_sub": 3}).to_dict()
    claim_run_dir(tmp_path / run_name(TINY, resolved, config_hash(resolved)), other, config_hash(other), TINY.parent,
                  write=True)
    assert eval_sde_adv.main(args) == 2
    assert "holds results of another config" in caplog.text and "--output_dir" in caplog.text


def test_dry_run_prints_resolved_config_and_loads_nothing(tmp_path, monkeypatch, capsys):
    def forbidden(*args, **kwargs):
        raise AssertionError("--dry-run must not load data or models")

    monkeypatch.setattr(eval_sde_adv, "load_prerequisites", forbidden)
    args = ["--config", str(TINY), "--dry-run", "--purifier", "reverse_only", "--t", "20", "--attack_version", "rand",
            "--lp_norm", "L2", "--set", "backbone.checkpoint=missing.pth", "--set", "eval.adv_batch_size=3",
            "--output_dir", str(tmp_path)]
    assert eval_sde_adv.main(args) == 0
    config = yaml.safe_load(capsys.readouterr().out)
    assert config["purifier"]["name"] == "reverse_only" and config["purifier"]["guidance_scale"] == 0.0
    assert config["purifier"]["forward_noise"] is False
    assert config["purifier"]["t_star"] == pytest.approx(0.02) and config["purifier"]["dt"] == 0.005
    assert config["backbone"]["checkpoint"] == "missing.pth" and config["eval"]["adv_batch_size"] == 3
    assert [(a["name"], a.get("version")) for a in config["attacks"]][:2] == [("autoattack", "rand"), ("pgd_eot", None)]
    assert {a["norm"] for a in config["attacks"]} == {"L2"}
    assert not any(tmp_path.iterdir())


def test_bad_overrides_fail_with_one_line(caplog, capsys):
    assert eval_sde_adv.main(["--config", str(TINY), "--dry-run", "--attack", "bpda_eot",
                              "--attack_version", "rand"]) == 2
    assert "--attack_version: no attack in the config has a 'version' setting" in caplog.text
    with pytest.raises(SystemExit) as usage_error:
        eval_sde_adv.main(["--config", str(TINY), "--dry-run", "--purifier", "nope"])
    assert usage_error.value.code == 2
    err = capsys.readouterr().err
    assert "argument --purifier: invalid choice: 'nope' (choose from" in err and err.count("\n") == 1
    assert eval_sde_adv.main(["--config", str(TINY), "--dry-run", "--set", "attacks.1.target=both"]) == 2
    assert "attacks[1].target" in caplog.text


def test_batches_are_fixed_and_shards_partition_pending_work():
    batches = plan_batches(7, 2)
    assert batches == [Batch(0, 0, 2), Batch(1, 2, 4), Batch(2, 4, 6), Batch(3, 6, 7)]
    indices = [40, 41, 42, 43, 44, 45, 46]
    done = {40, 41, 42}  # batch 0 finished, batch 1 half written
    shards = [pending_batches(batches, indices, done, rank, 3) for rank in range(3)]
    assert [[b.number for b in s] for s in shards] == [[3], [1], [2]]


def test_unseeded_purifier_noise_restarts_per_batch(device):
    defended, classifier = build_models(load_experiment(TINY))
    models = make_models(defended, classifier, device)
    x = torch.full((1, 3, 32, 32), 0.5, device=device)
    with torch.no_grad():
        reseed_unseeded_noise(models.defended, 5)
        first = models.defended.purifier(x)
        later = models.defended.purifier(x)
        reseed_unseeded_noise(models.defended, 5)
        again = models.defended.purifier(x)
        reseed_unseeded_noise(models.defended, 6)
        other = models.defended.purifier(x)
    assert not torch.equal(first, later) and torch.equal(first, again) and not torch.equal(first, other)


def record(index: int, label: int) -> ImageRecord:
    """A minimal result line of image `index` whose label tells the versions apart."""
    return ImageRecord(index, 0, label, {}, {}, (0.0, 1.0), 0.0, 0.0, {})


def test_torn_lines_are_cut_and_the_last_record_wins(tmp_path):
    path = tmp_path / "results.jsonl"
    ResultWriter(path).append([record(1, 0), record(2, 0)])
    with path.open("a") as f:
        f.write('{"index": 1, "label": 9, "torn')
    assert read_records(tmp_path)[1].label == 0
    ResultWriter(path).append([record(1, 5)])
    assert path.read_text().count("\n") == 3 and "torn" not in path.read_text()
    assert {i: r.label for i, r in read_records(tmp_path).items()} == {1: 5, 2: 0}


def test_an_image_recorded_twice_with_different_results_is_reported(tmp_path, caplog):
    """Equal records of one image in two files (a recomputed batch) pass silently; different ones are logged."""
    ResultWriter(tmp_path / "results.rank0.jsonl").append([record(1, 0), dataclasses.replace(record(2, 0), seconds={"a": 1.0})])
    ResultWriter(tmp_path / "results.rank1.jsonl").append([dataclasses.replace(record(2, 0), seconds={"a": 2.0})])
    assert set(read_records(tmp_path)) == {1, 2} and "two different records" not in caplog.text
    ResultWriter(tmp_path / "results.rank1.jsonl").append([record(1, 7)])
    assert read_records(tmp_path)[1].label == 7
    assert "dataset index 1 has two different records" in caplog.text and "results.rank1.jsonl" in caplog.text


def test_autoattack_budget_fields_reach_pyautoattack():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    adversary = AutoAttackEval({"version": "rand", "n_iter": 3, "n_queries": 7, "eot_iter": 2}).adversary(
        model, seed=5, device=torch.device("cpu"))
    assert (adversary.apgd.n_iter, adversary.apgd_targeted.n_iter, adversary.fab.n_iter) == (3, 3, 3)
    assert adversary.square.n_queries == 7 and adversary.apgd.eot_iter == 2
    default = AutoAttackEval({"version": "rand"}).adversary(model, seed=5, device=torch.device("cpu"))
    assert (default.apgd.n_iter, default.square.n_queries, default.apgd.eot_iter) == (100, 5000, 20)


def test_data_channels_repeat_the_gray_channel():
    experiment = load_experiment(TINY)
    rgb = load_images(experiment.file.data, experiment.base_dir)
    gray = load_images(load_experiment(TINY, {"data.channels": None}).file.data, experiment.base_dir)
    assert rgb.x.shape == (4, 3, 32, 32) and gray.x.shape == (4, 1, 32, 32)
    assert torch.equal(rgb.x, gray.x.expand(-1, 3, -1, -1)) and torch.equal(rgb.indices, gray.indices)


def test_examples_hold_clean_adversarial_and_purified_images(tmp_path, eval_device_args):
    args = ["--config", str(TINY), "--attack", "pgd_eot", "--output_dir", str(tmp_path), "--set", "eval.save_examples=2",
            *eval_device_args]
    assert eval_sde_adv.main(args) == 0
    examples = torch.load(run_dir_of(tmp_path) / "examples.pt", weights_only=True)
    assert examples["x"].shape == (2, 3, 32, 32) and examples["purified"].shape == (2, 3, 32, 32)
    adv = examples["attacks"]["pgd_eot"]
    assert (adv["x_adv"] - examples["x"]).abs().max() <= 8 / 255 + 1e-6
    assert not torch.equal(adv["purified"], adv["x_adv"])
    experiment = load_experiment(TINY)
    assert torch.equal(examples["indices"], load_images(experiment.file.data, experiment.base_dir).indices[:2])


def test_report_merges_defenses_into_one_table_and_figure(tmp_path, capsys, eval_device_args):
    from evaluation import report

    base = ["--config", str(TINY), "--attack", "pgd_eot", "--output_dir", str(tmp_path / "runs"),
            "--set", "eval.save_examples=1", "--num_sub", "2", *eval_device_args]
    for purifier in ("coup", "none"):
        assert eval_sde_adv.main([*base, "--purifier", purifier]) == 0
    capsys.readouterr()
    assert report.main(["--results", str(tmp_path / "runs"), "--config", str(TINY), "--out", str(tmp_path / "out"),
                        "--attack", "pgd_eot", "--num_sub", "2", "--title", "Budget line"]) == 0
    printed = capsys.readouterr().out
    rows = [line for line in printed.splitlines() if line.startswith("| ") and "defense" not in line]
    assert printed.startswith("Budget line\n") and (tmp_path / "out" / "table.md").read_text() == printed
    assert [row.split(" |")[0] for row in rows] == ["| none (classifier only)", "| coup (t* 0.01, dt 0.005, lambda 1, "
                                                    "detached grads, exact backend)"]
    assert all(row.split(" | ")[1] == "2" for row in rows)  # n per row
    assert all(cell.count("[") == 1 for row in rows for cell in row.split(" | ")[2:])
    assert (tmp_path / "out" / "examples.png").stat().st_size > 0


@pytest.mark.parametrize("name, purifier, label", [
    ("diffpure", {"t_star": 0.1, "dt": 0.01, "guidance_scale": 0.0, "grad_mode": "full"}, "diffpure (t* 0.1, dt 0.01)"),
    ("coup", {"t_star": 0.1, "dt": 0.01, "guidance_scale": 2.0, "grad_mode": "full"},
     "coup (t* 0.1, dt 0.01, lambda 2, full grads)"),
    ("aid", {"def_step": 10, "eps": 8 / 255, "grad_mode": "exact"}, "aid (10 steps, eps 0.03137, exact grads)"),
])
def test_report_labels_each_purifier_kind_from_its_own_fields(name, purifier, label):
    from evaluation import report

    assert report.defense_label({"purifier": name, "config": {"purifier": {"name": name, **purifier}}}) == label


def test_all_attacks_counts_an_image_only_if_it_survives_every_attack():
    from evaluation.summary import model_accuracy

    def outcome(a: bool, b: bool) -> ImageRecord:
        correct = {"pgd": {"single": a, "worst": a}, "joint": {"single": b, "worst": b and a}}
        return ImageRecord(0, 0, 0, {}, {"defended": {"correct": True}}, (0.0, 1.0), 0.0, 0.0,
                           {k: {"defended": {"correct": c}} for k, c in correct.items()})

    records = [outcome(True, True), outcome(True, False), outcome(False, True), outcome(True, True)]
    table = model_accuracy(records, "defended", ["pgd", "joint"])
    assert table["attacks"]["pgd"]["single"]["correct"] == 3 and table["attacks"]["joint"]["single"]["correct"] == 3
    assert {rule: e["correct"] for rule, e in table["all_attacks"].items()} == {"single": 2, "worst": 2}
    assert "all_attacks" not in model_accuracy(records, "defended", ["pgd"])
