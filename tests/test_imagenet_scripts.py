"""The ImageNet run scripts end to end on tiny stand-ins: the paper config (purifier, backend, t*, eps) with the
tiny ADM UNet of tests/data/adm_tiny (the released options: learned sigma, scale-shift norm, resblock up/down),
the tiny config's 32x32 images and random WRN-10-1, and a one-iteration AutoAttack."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.test_eval import subprocess_env
from utils.config import read_yaml

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = {"run_imagenet_coup.sh": ("configs/imagenet_coup.yml", "coup"),
           "run_imagenet_diffpure.sh": ("configs/imagenet_diffpure.yml", "diffpure")}
ADM_TINY = REPO / "tests" / "data" / "adm_tiny"


def stand_in_config(paper: Path, tmp: Path) -> Path:
    """The paper config with data, backbone weights, classifier and attack budget swapped for tiny stand-ins."""
    raw, tiny = read_yaml(paper), read_yaml(REPO / "configs" / "tiny.yml")
    raw["data"] = {**tiny["data"], "num_sub": 2}
    raw["backbone"]["checkpoint"] = str(ADM_TINY / "model.pt")
    raw["backbone"]["model"]["unet"] = json.loads((ADM_TINY / "config.json").read_text())["config"]
    raw["classifier"] = tiny["classifier"]
    raw["purifier"]["dt"] = raw["purifier"]["t_star"] / 2  # 2 reverse steps
    (autoattack,) = [a for a in tiny["attacks"] if a["name"] == "autoattack"]
    raw["attacks"] = [{**autoattack, "eps": raw["attacks"][0]["eps"]}]
    raw["eval"].update(adv_batch_size=2, output_dir=str(tmp / "results"))
    path = tmp / "imagenet_stand_in.yml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_imagenet_script_dry_run_reads_the_paper_config(script):
    config, purifier = SCRIPTS[script]
    done = subprocess.run(["bash", str(REPO / "run_scripts" / "imagenet" / script), "7", "3"], cwd="/",
                          env=subprocess_env(EXTRA_ARGS="--dry-run"), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    resolved, paper = yaml.safe_load(done.stdout), read_yaml(REPO / config)
    assert resolved["purifier"]["name"] == purifier and resolved["purifier"] == {
        **resolved["purifier"], **paper["purifier"]}
    assert resolved["eval"]["seed"] == 7 and resolved["data"]["data_seed"] == 3
    assert [(a["name"], a["norm"], a["eps"]) for a in resolved["attacks"]] == [("autoattack", "Linf", 4 / 255)]


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_imagenet_script_end_to_end_on_stand_ins(script, tmp_path):
    config, purifier = SCRIPTS[script]
    stand_in = stand_in_config(REPO / config, tmp_path)
    done = subprocess.run(["bash", str(REPO / "run_scripts" / "imagenet" / script), "7", "0"], cwd="/",
                          env=subprocess_env(EXTRA_ARGS=f"--config {stand_in}"), capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    (run_dir,) = (tmp_path / "results").iterdir()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["purifier"] == purifier and summary["n"] == 2 and summary["config"]["eval"]["seed"] == 7
    assert summary["config"]["purifier"]["backend"] == "torchsde"
    records = [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]
    assert len(records) == 2 and all("autoattack" in r["attacks"] for r in records)
    assert "| defended | clean |" in done.stdout
