"""CelebA-HQ: the attribute data source (DiffPure's folder layout and subset), the config and the run scripts."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

import eval_sde_adv
from utils.data import DataConfig, load_images, subset_indices
from evaluation.experiment import load_experiment

ROOT = Path(__file__).resolve().parents[1]
TINY_CLASSIFIER = ROOT / "tests" / "data" / "ddpm_celebahq_tiny" / "attribute_classifier_tiny" / "net_best.pth"
ATTRIBUTES = ["5_o_Clock_Shadow", "Eyeglasses", "Smiling"]
# CelebA file, Eyeglasses, Smiling, partition
ROWS = [("000001.jpg", 1, -1, 0), ("000002.jpg", -1, 1, 1), ("000003.jpg", 1, 1, 1), ("000004.jpg", -1, -1, 1),
        ("000005.jpg", 1, -1, 2)]


def make_celebahq(root: Path, suffix: str = ".png") -> Path:
    """A 5-image CelebA-HQ folder in DiffPure's layout (64x64 images; 3 of them in partition 1)."""
    (root / "images").mkdir(parents=True)
    gen = np.random.default_rng(0)
    for name, *_ in ROWS:
        pixels = gen.integers(0, 256, (64, 64, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / "images" / (Path(name).stem + suffix))
    attr_lines = [str(len(ROWS)), " ".join(ATTRIBUTES)]
    attr_lines += [f"{name} -1 {glasses:2d} {smiling:2d}" for name, glasses, smiling, _ in ROWS]
    (root / "list_attr_celeba.txt").write_text("\n".join(attr_lines) + "\n")
    (root / "list_eval_partition.txt").write_text("".join(f"{name} {part}\n" for name, *_, part in ROWS))
    return root


@pytest.mark.parametrize("attribute, expected", [("Eyeglasses", [0, 1, 0]), ("Smiling", [1, 1, 0])])
def test_val_partition_with_attribute_labels(tmp_path, attribute, expected):
    root = make_celebahq(tmp_path / "celebahq")
    data = load_images(DataConfig(name=f"celebahq-{attribute}", data_dir=str(root)), tmp_path)
    assert data.y.tolist() == expected
    assert data.x.shape == (3, 3, 256, 256) and 0.0 <= float(data.x.min()) and float(data.x.max()) <= 1.0
    train = load_images(DataConfig(name=f"celebahq-{attribute}", data_dir=str(root), split="train"), tmp_path)
    assert train.y.tolist() == [1 if attribute == "Eyeglasses" else 0]


def test_subset_is_the_first_images_of_diffpures_fraction():
    partition_idx = np.arange(100, 2093)  # any index list of the val partition's length
    diffpure = np.random.RandomState(3).choice(partition_idx, int(2 / 100 * len(partition_idx)), replace=False)
    ours = partition_idx[subset_indices(len(partition_idx), 8, 3)]
    assert ours.tolist() == diffpure[:8].tolist()


def test_missing_data_says_where_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"images is missing; .*progressive_growing_of_gans.*CelebA\.html"):
        load_images(DataConfig(name="celebahq-Smiling", data_dir=str(tmp_path)), tmp_path)
    root = make_celebahq(tmp_path / "celebahq")
    (root / "images" / "999999.png").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="1 image.*not in the CelebA lists, e.g. 999999.jpg"):
        load_images(DataConfig(name="celebahq-Smiling", data_dir=str(root)), tmp_path)


def test_config_resolves_to_diffpures_protocol():
    experiment = load_experiment(ROOT / "configs" / "celebahq_diffpure.yml")
    assert experiment.purifier.name == "diffpure_ddpm" and experiment.purifier.t_star == 0.5
    assert experiment.file.backbone.name == "ddpm"
    assert [a.name for a in experiment.attacks] == ["bpda_eot_diffpure", "pgd_eot_diffpure"]
    for attack in experiment.attacks:
        config = attack.config
        assert (config.norm, config.eps, config.step_size, config.iterations, config.eot_samples) == \
            ("Linf", pytest.approx(16 / 255), pytest.approx(2 / 255), 50, 15)
        assert (config.defense_samples, config.random_start) == (20, False)


def run_script(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = {**os.environ, "VENV": str(Path(sys.executable).parents[1])}
    return subprocess.run(["bash", *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=300)


def test_script_dry_run_prints_the_resolved_config():
    attribute = "Smiling"
    result = run_script("run_scripts/celebahq/run_celebahq_bpda.sh", "121", "0", attribute, "--dry-run")
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)
    assert config["classifier"]["name"] == f"celebahq__{attribute}"
    assert config["data"]["name"] == f"celebahq-{attribute}" and config["data"]["data_seed"] == 0
    assert config["eval"]["seed"] == 121 and [a["name"] for a in config["attacks"]] == ["bpda_eot_diffpure"]


def test_script_without_files_fails_with_one_line(tmp_path):
    result = run_script("run_scripts/celebahq/run_celebahq_exact.sh", "121", "0", "Smiling",
                        "--output_dir", str(tmp_path))
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if "ERROR" in line]
    assert len(errors) == 1, result.stderr
    hints = ("put the CelebA-HQ images", "pretrained_classifiers.zip", "s3-us-west-2")  # data, classifier, DDPM
    assert any(hint in errors[0] for hint in hints), errors[0]
    usage = run_script("run_scripts/celebahq/run_celebahq_bpda.sh", "121", "0")
    assert usage.returncode == 2 and usage.stderr.startswith("usage:")


def test_missing_classifier_then_checkpoint_fail_with_one_line(tmp_path, caplog):
    args = ["--config", str(ROOT / "configs" / "celebahq_diffpure.yml"), "--output_dir", str(tmp_path / "results"),
            "--num_sub", "2", "--set", f"data.data_dir={make_celebahq(tmp_path / 'celebahq')}"]
    assert eval_sde_adv.main(args) == 2
    assert "pretrained/celebahq/Eyeglasses/net_best.pth" in caplog.text
    assert "pretrained_classifiers.zip" in caplog.text
    caplog.clear()
    assert eval_sde_adv.main([*args, "--set", f"classifier.checkpoint={TINY_CLASSIFIER}"]) == 2
    assert "celeba_hq.ckpt" in caplog.text and "s3-us-west-2" in caplog.text
    assert "Traceback" not in caplog.text
