"""CIFAR-100 LM / COUP-LM: run scripts (--dry-run, one-line missing-checkpoint errors), config, training config."""
from __future__ import annotations

import subprocess

import pytest
import yaml

from runners.backbones import BackboneConfig, build_backbone
from tests.test_eval import REPO, subprocess_env
from training.train_score_model import ScoreTrainingFile
from utils.config import from_dict, read_yaml
from evaluation.experiment import load_experiment
from evaluation.report import defense_label

SCRIPTS = REPO / "run_scripts" / "cifar100"
# script, extra args -> (purifier, lambda, attacks)
CASES = {
    ("run_cifar100_apgd_ce_lm.sh", ()): ("lm", 0.0, ["apgd_ce"]),
    ("run_cifar100_apgd_ce_coup_lm.sh", ()): ("coup_lm", 1.0, ["apgd_ce"]),
    ("run_cifar100_strong.sh", ("lm",)): ("lm", 0.0, ["autoattack", "pgd_eot"]),
    ("run_cifar100_strong.sh", ()): ("coup_lm", 1.0, ["autoattack", "pgd_eot"]),
}


def _run(script: str, *args: str, extra: str = "") -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPTS / script), *args], cwd="/", env=subprocess_env(EXTRA_ARGS=extra),
                          capture_output=True, text=True, timeout=180)


@pytest.mark.parametrize("script, extra", list(CASES), ids=[f"{s}{''.join(e)}" for s, e in CASES])
def test_dry_run_prints_the_resolved_paper_config(script, extra):
    purifier, scale, attacks = CASES[(script, extra)]
    done = _run(script, "7", "3", *extra, extra="--dry-run")
    assert done.returncode == 0, done.stderr[-2000:]
    config = yaml.safe_load(done.stdout)
    assert (config["purifier"]["name"], config["purifier"]["guidance_scale"]) == (purifier, scale)
    assert (config["purifier"]["steps"], config["purifier"]["lr"], config["purifier"]["optimizer"]) == (5, 0.1, "adam")
    assert [a["name"] for a in config["attacks"]] == attacks and {a["norm"] for a in config["attacks"]} == {"Linf"}
    assert (config["data"]["name"], config["data"]["data_seed"], config["eval"]["seed"]) == ("cifar100", 3, 7)
    assert config["classifier"]["name"] == "cifar100-wrn-28-10"
    assert all(a.get("version") == "rand" for a in config["attacks"] if a["name"] == "autoattack")


def test_scripts_stop_at_a_one_line_missing_checkpoint_error(tmp_path):
    # CIFAR-100 is absent here too, so the demo's Fashion-MNIST stands in for the data to reach the models
    data = "--set data.name=fashion-mnist --set data.data_dir=null --set data.pad_to=32 --num_sub 2"
    done = _run("run_cifar100_apgd_ce_coup_lm.sh", "7", "0", extra=f"{data} --output_dir {tmp_path}")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    (line,) = [x for x in done.stderr.splitlines() if "ERROR" in x]
    assert "classifier weights not found" in line and "wrn-28-10/weights.pt; get it from" in line
    bad = _run("run_cifar100_strong.sh", "7", "0", "diffpure", extra="--dry-run")
    assert bad.returncode == 2 and "use lm or coup_lm" in bad.stderr
    usage = _run("run_cifar100_apgd_ce_lm.sh", "7")
    assert usage.returncode == 2 and "usage: bash" in usage.stderr


def test_cifar100_backbone_says_where_its_checkpoint_comes_from(tmp_path):
    experiment = load_experiment(REPO / "configs" / "cifar100_lm.yml")
    backbone = experiment.file.backbone
    assert backbone.name == "edm"
    with pytest.raises(FileNotFoundError, match="edm_cifar100_uncond_vp.pt.*huanranchen/DiffusionClassifier"):
        build_backbone(backbone, experiment.base_dir)
    with pytest.raises(FileNotFoundError, match="Score-SDE"):  # without a source: the loader's own message
        build_backbone(BackboneConfig(name="score_sde", checkpoint="missing.pth"), tmp_path)
    training = from_dict(ScoreTrainingFile, read_yaml(REPO / "configs" / "train" / "score_cifar100.yml"))
    assert training.data.name == "cifar100"  # the NCSN++ alternative for CIFAR-100 (--set backbone=...)


def test_report_labels_name_the_lm_steps_and_lambda():
    purifier = {"name": "coup_lm", "steps": 5, "lr": 0.1, "guidance_scale": 1.0, "grad_mode": "full"}
    assert defense_label({"purifier": "coup_lm", "config": {"purifier": purifier}}) == \
        "coup_lm (5 steps, lr 0.1, lambda 1, full grads)"
    unguided = {**purifier, "name": "lm", "guidance_scale": 0.0}
    assert defense_label({"purifier": "lm", "config": {"purifier": unguided}}) == "lm (5 steps, lr 0.1)"
