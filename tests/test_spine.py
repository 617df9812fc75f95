"""Every registered attack through the evaluation spine (evaluation.evaluate, as eval_sde_adv runs it), one iteration
on tiny models, and a CelebA-HQ run of configs/celebahq_diffpure.yml end to end on stand-ins."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Callable

import pytest
import torch

import eval_sde_adv
from attacks import build_attack
from attacks.registry import ATTACKS
from classifiers import ClassifierConfig, build_classifier
from ddpm import DDPMUNet, DDPMUNetConfig
from evaluation.evaluate import Batch, attack_runs, evaluate_batch, make_models
from evaluation.experiment import load_experiment, load_prerequisites
from runners.aid import build_discriminator
from tests.test_attacks import Defended
from tests.test_celebahq import TINY_CLASSIFIER, make_celebahq
from tests.test_ddpm import DATA as DDPM_TINY, tiny_config
from tests.test_diffpure_protocol import GradSensitive, Identity
from utils.config import from_dict, read_yaml

REPO = Path(__file__).resolve().parent.parent
TINY = REPO / "configs" / "tiny.yml"
CELEBAHQ = REPO / "configs" / "celebahq_diffpure.yml"
ONE_STEP = {"iterations": 1, "eot_samples": 1, "eval_samples": 1}
AUTOATTACK_ONE_STEP = {"n_iter": 1, "eot_iter": 1, "eval_samples": 1}

# tiny.yml overrides that make a setup: (tmp_path) -> {dotted key: value}
Setup = Callable[[Path], dict[str, Any]]


def coup_setup(tmp_path: Path) -> dict[str, Any]:
    """tiny.yml as it is: COUP on the exact solver (2 reverse steps) of the tiny NCSN++, random WRN-10-1."""
    return {}


def aid_setup(tmp_path: Path) -> dict[str, Any]:
    """AID-Purifier (1 purification step) with a seeded random D of width 64 on the tiny WRN-10-1's taps 1 and 3."""
    classifier = build_classifier(ClassifierConfig(**read_yaml(TINY)["classifier"]), REPO)
    torch.save(build_discriminator(classifier, (1, 3), width=64, seed=0).head.state_dict(), tmp_path / "d.pt")
    return {"purifier": {"name": "aid", "checkpoint": str(tmp_path / "d.pt"), "taps": [1, 3], "width": 64,
                         "def_step": 1}}


def ddpm_setup(tmp_path: Path) -> dict[str, Any]:
    """DiffPure's ancestral purifier (2 steps) on the tiny reference DDPM (tests/data/ddpm_celebahq_tiny)."""
    return {"backbone": {"name": "ddpm", "checkpoint": str(DDPM_TINY / "model.pt"),
                         "model": {"unet": dataclasses.asdict(tiny_config())}},
            "purifier": {"name": "diffpure_ddpm", "t_star": 0.002}}


DIFFPURE_ONE_STEP = {**ONE_STEP, "defense_samples": 1}
# attack name -> (the setup it needs, its YAML entry at a one-iteration budget)
CASES: dict[str, tuple[Setup, dict[str, Any]]] = {
    "pgd_eot": (coup_setup, ONE_STEP),
    "bpda_eot": (coup_setup, ONE_STEP),
    "autoattack": (coup_setup, {**AUTOATTACK_ONE_STEP, "version": "standard", "n_queries": 1}),
    "apgd_ce": (coup_setup, {**AUTOATTACK_ONE_STEP, "n_restarts": 1}),
    "pgd_aid_joint": (aid_setup, ONE_STEP),
    "pgd_eot_diffpure": (ddpm_setup, DIFFPURE_ONE_STEP),
    "bpda_eot_diffpure": (ddpm_setup, DIFFPURE_ONE_STEP),
    "apgd_eot": (coup_setup, ONE_STEP),
    "selective_eot": (coup_setup, {**ONE_STEP, "em_steps": 1}),
    "diffattack": (coup_setup, ONE_STEP),
    "cascade": (coup_setup, {"attacks": [{"name": "pgd_eot", **ONE_STEP}], "eval_samples": 1}),
}


def test_every_registered_attack_has_a_spine_case():
    assert sorted(CASES) == sorted(ATTACKS.names())


@pytest.mark.parametrize("name", ATTACKS.names())
def test_attack_runs_through_the_evaluation_spine(name, tmp_path):
    setup, entry = CASES[name]  # a KeyError here: add the new attack to CASES
    experiment = load_experiment(TINY, {**setup(tmp_path), "data.num_sub": 2, "attacks": [{"name": name, **entry}]})
    images, defended, classifier = load_prerequisites(experiment)
    models = make_models(defended, classifier, torch.device("cpu"))
    runs = attack_runs(experiment)
    eval_sde_adv.check_attacks(runs, models)
    steps: list[tuple[str, int, int]] = []
    batch = Batch(0, 0, len(images.indices))
    records, outputs = evaluate_batch(models, runs, images.x, images.y, images.indices, batch,
                                      experiment.file.eval.seed, False, lambda *step: steps.append(step))
    (key,) = [run.key for run in runs]
    output = outputs[key]["defended"]
    assert output.x_adv.shape == images.x.shape and output.correct
    assert [r.index for r in records] == images.indices.tolist()
    for b, record in enumerate(records):
        scores = record.attacks[key]["defended"]
        assert scores["correct"] == {rule: bool(c[b]) for rule, c in output.correct.items()}
        assert scores["predictions"] == {rule: int(p[b]) for rule, p in output.predictions.items()}
    assert all(k == key and 1 <= i <= n for k, i, n in steps)


def test_diffpure_protocol_reports_each_step_and_nothing_after_an_early_stop():
    x, y = torch.full((2, 1, 4, 4), 0.5), torch.zeros(2, dtype=torch.int64)
    config = {"iterations": 3, "eot_samples": 1, "defense_samples": 1, "eval_samples": 1, "sanity_checks": False}
    for name in ("pgd_eot_diffpure", "bpda_eot_diffpure"):
        steps: list[tuple[int, int]] = []
        attack = build_attack(name, config)
        attack.run(Defended(Identity(), GradSensitive()), x, y, torch.arange(2), 0, lambda *s: steps.append(s))
        assert steps == [(1, 3), (2, 3), (3, 3)]  # every step looks broken, the re-checks keep the images
        steps.clear()
        attack.run(Defended(Identity(), GradSensitive()), x, y + 2, torch.arange(2), 0, lambda *s: steps.append(s))
        assert steps == []  # broken at the start: the loop stops before its first step


def random_ddpm_256(path: Path) -> dict[str, Any]:
    """Save a seeded random 256x256 DDPM UNet at `path` (4 levels, attention only in the middle at 32x32: the tiny
    reference DDPM takes 24 s a forward at 256x256) and return its `backbone.model` section."""
    unet = {"image_size": 256, "ch": 32, "ch_mult": [1, 1, 1, 1], "num_res_blocks": 1, "attn_resolutions": []}
    with torch.random.fork_rng():
        torch.manual_seed(0)
        torch.save(DDPMUNet(from_dict(DDPMUNetConfig, unet)).state_dict(), path)
    return {"unet": unet}


def test_celebahq_config_runs_both_diffpure_attacks_end_to_end(tmp_path):
    model = random_ddpm_256(tmp_path / "ddpm.pt")
    budget = {f"attacks.*.{key}": 1 for key in ("iterations", "eot_samples", "defense_samples", "eval_samples")}
    budget["attacks.*.sanity_checks"] = False  # their forwards at 256x256 would double the time; tested above
    sets = {**budget, "data.data_dir": str(make_celebahq(tmp_path / "celebahq")),
            "classifier.checkpoint": str(TINY_CLASSIFIER), "backbone.checkpoint": str(tmp_path / "ddpm.pt"),
            "backbone.model": model}
    args = ["--config", str(CELEBAHQ), "--num_sub", "2", "--t", "1", "--output_dir", str(tmp_path / "results")]
    for key, value in sets.items():
        args += ["--set", f"{key}={json.dumps(value)}"]
    assert eval_sde_adv.main(args) == 0
    (run_dir,) = (tmp_path / "results").iterdir()
    records = [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]
    assert len(records) == 2
    for record in records:
        assert set(record["attacks"]) == {"bpda_eot_diffpure", "pgd_eot_diffpure"}
        for scores in record["attacks"].values():
            assert set(scores["defended"]["correct"]) >= {"diffpure", "single"} and "classifier" in scores
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["n"] == 2 and summary["purifier"] == "diffpure_ddpm"
    assert set(summary["attacks"]) == {"bpda_eot_diffpure", "pgd_eot_diffpure"}
    assert set(summary["accuracy"]) == {"defended", "classifier"}
    assert (run_dir / "summary.md").is_file()


def test_an_attack_that_cannot_attack_the_bare_classifier_is_refused_before_the_run(tmp_path, caplog):
    attack = json.dumps([{"name": "pgd_aid_joint", **ONE_STEP}])
    args = ["--config", str(TINY), "--num_sub", "2", "--output_dir", str(tmp_path / "runs"), "--evaluate_classifier",
            "--set", f"purifier={json.dumps(aid_setup(tmp_path)['purifier'])}", "--set", f"attacks={attack}"]
    assert eval_sde_adv.main(args) == 2
    assert "eval.evaluate_classifier also runs pgd_aid_joint on the bare classifier" in caplog.text
    assert not (tmp_path / "runs").exists()
