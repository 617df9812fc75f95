"""run_scripts/robustbench: --dry-run prints every combination's resolved config; a real run stops at the one-line
missing-checkpoint error (real checkpoints are absent here, and model_dir points at an empty folder)."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from tests.test_eval import subprocess_env

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "run_scripts" / "robustbench"
WANG = "Wang2023Better_WRN-28-10"
LINF, L2 = 0.03137254901960784, 0.5
# script -> its combinations: (classifier model or name, threat model, purifier, attack, version, norm, eps)
COMBINATIONS = {
    "run_wang2023_apgd_ce.sh": [(WANG, threat, purifier, "apgd_ce", None, threat, eps)
                                for threat, eps in (("Linf", LINF), ("L2", L2))
                                for purifier in ("none", "reverse_only", "coup")],
    "run_wang2023_strongest.sh": [row for threat, eps in (("Linf", LINF), ("L2", L2)) for row in
                                  [(WANG, threat, "none", "autoattack", "standard", threat, eps)]
                                  + [(WANG, threat, purifier, attack, version, threat, eps)
                                     for purifier in ("reverse_only", "coup")
                                     for attack, version in (("autoattack", "rand"), ("pgd_eot", None))]],
    "run_cross_threat.sh": [(WANG, threat, purifier, "apgd_ce", None, other, eps)
                            for threat, other, eps in (("Linf", "L2", L2), ("L2", "Linf", LINF))
                            for purifier in ("none", "coup")],
    "run_guidance_ablation.sh": [(name, None, purifier, "apgd_ce", None, "Linf", LINF)
                                 for name in ("cifar10-standard-wrn-28-10", "cifar10-wrn-70-16-dropout")
                                 for purifier in ("reverse_only", "coup")],
}
FAST = ("run_cross_threat.sh",)  # one python start per combination: the other scripts' dry runs are slow tests


def run_script(script: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """bash SCRIPT 7 3 ARGS with results and RobustBench's model_dir under tmp_path (empty), from another folder."""
    extra = f"--output_dir {tmp_path / 'results'} --set classifier.model_dir={tmp_path / 'models'}"
    return subprocess.run(["bash", str(SCRIPTS / script), "7", "3", *args], cwd="/", capture_output=True, text=True,
                          env=subprocess_env(EXTRA_ARGS=extra), timeout=600)


def summary_of(config: dict) -> tuple:
    """(classifier model or name, threat model, purifier, attack, version, norm, eps) of a resolved config."""
    classifier, (attack,) = config["classifier"], config["attacks"]
    return (classifier["model"] or classifier["name"], classifier["threat_model"], config["purifier"]["name"],
            attack["name"], attack.get("version"), attack["norm"], attack["eps"])


@pytest.mark.parametrize("script", [s if s in FAST else pytest.param(s, marks=pytest.mark.slow)
                                    for s in COMBINATIONS])
def test_dry_run_prints_each_resolved_config(script, tmp_path):
    done = run_script(script, tmp_path, "--dry-run")
    assert done.returncode == 0, done.stderr[-2000:]
    configs = list(yaml.safe_load_all(done.stdout))
    assert [summary_of(c) for c in configs] == COMBINATIONS[script]
    assert all((c["eval"]["seed"], c["data"]["data_seed"], c["eval"]["precision"]) == (7, 3, "float32")
               for c in configs)
    guided = [c["purifier"] for c in configs if c["purifier"]["name"] == "coup"]
    assert guided and all(p["guidance_scale"] == 1.0 for p in guided)
    assert all(c["purifier"]["backend"] == ("exact" if c["attacks"][0]["name"] == "pgd_eot" else "torchsde")
               for c in configs if c["purifier"]["name"] != "none")
    assert not (tmp_path / "results").exists()  # a dry run writes nothing


@pytest.mark.parametrize("script,missing", [
    ("run_wang2023_apgd_ce.sh", f"cifar10/Linf/{WANG}.pt"),
    pytest.param("run_guidance_ablation.sh", "cifar10/Linf/Standard.pt", marks=pytest.mark.slow),
    pytest.param("run_wang2023_strongest.sh", f"cifar10/Linf/{WANG}.pt", marks=pytest.mark.slow),
    pytest.param("run_cross_threat.sh", f"cifar10/Linf/{WANG}.pt", marks=pytest.mark.slow)])
def test_run_stops_at_the_one_line_missing_checkpoint_error(script, missing, tmp_path):
    done = run_script(script, tmp_path)
    assert done.returncode == 2
    (error,) = [line for line in done.stderr.splitlines() if "ERROR" in line]
    assert error == done.stderr.strip().splitlines()[-1] and "Traceback" not in done.stderr
    assert f"classifier weights not found: {tmp_path / 'models' / missing}" in error
    model = Path(missing).stem
    assert f"load_model('{model}', model_dir='{tmp_path / 'models'}', dataset='cifar10', threat_model='Linf')" in error
    assert not (tmp_path / "models").exists()  # nothing downloaded
    assert done.stdout.count("--- # ") == 1  # the script stopped at its first combination


def test_gradient_exact_switches_every_diffusion_purifier_to_the_exact_solver(tmp_path):
    extra = f"--output_dir {tmp_path / 'results'} --dry-run"
    done = subprocess.run(["bash", str(SCRIPTS / "run_cross_threat.sh"), "7", "3"], cwd="/", capture_output=True,
                          text=True, env=subprocess_env(EXTRA_ARGS=extra, GRADIENT="exact"), timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    purifiers = [c["purifier"] for c in yaml.safe_load_all(done.stdout)]
    assert [p["name"] for p in purifiers] == ["none", "coup", "none", "coup"]
    assert all(p.get("backend") == ("exact" if p["name"] == "coup" else None) for p in purifiers)
    cifar = subprocess.run(["bash", str(REPO / "run_scripts/cifar10/run_cifar_stand_inf_guide.sh"), "7", "3"],
                           cwd="/", capture_output=True, text=True, timeout=600,
                           env=subprocess_env(EXTRA_ARGS=extra, GRADIENT="exact"))
    assert cifar.returncode == 0 and yaml.safe_load(cifar.stdout)["purifier"]["backend"] == "exact"
    wrong = subprocess.run(["bash", str(SCRIPTS / "run_cross_threat.sh"), "7", "3"], cwd="/", capture_output=True,
                           text=True, env=subprocess_env(EXTRA_ARGS=extra, GRADIENT="adjiont"), timeout=600)
    assert wrong.returncode == 2 and wrong.stderr.strip() == \
        "GRADIENT must be 'exact' or 'adjoint' (the config's backend), got 'adjiont'"
