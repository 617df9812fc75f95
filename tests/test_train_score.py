"""The score-model training script: the DSM loss falls, a resumed run equals an uninterrupted one, weights load."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from diffusion.sde import VPSDE
from score_sde import NCSNppConfig, ScoreSDEBackbone, load_score_model
from training.train_score_model import ScoreTrainConfig, ScoreTrainingFile, ema_decay, held_out_loss, train, write_card
from utils.data import DEBIAN_FASHION_MNIST, DataConfig, load_images

TINY_MODEL = NCSNppConfig(nf=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(), image_size=28, num_channels=1,
                          dropout=0.0, fir=False)


@pytest.fixture
def tiny_config() -> ScoreTrainingFile:
    if not (DEBIAN_FASHION_MNIST / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
    return ScoreTrainingFile(
        model=TINY_MODEL, data=DataConfig(name="fashion-mnist", split="train", num_sub=256),
        train=ScoreTrainConfig(steps=2, batch_size=16, lr=2e-3, warmup_steps=1, eval_images=32, num_threads=1,
                               checkpoint_every=1, output="out/score.pth", state="out/score.resume.pth"))


def _with_steps(cfg: ScoreTrainingFile, steps: int, tag: str) -> ScoreTrainingFile:
    train_cfg = dataclasses.replace(cfg.train, steps=steps, output=f"{tag}/score.pth", state=f"{tag}/score.resume.pth")
    return dataclasses.replace(cfg, train=train_cfg)


def _backbone(path: Path) -> ScoreSDEBackbone:
    return ScoreSDEBackbone(load_score_model(TINY_MODEL, path), VPSDE(0.1, 20.0, 1000))


def test_ema_warm_up_follows_the_official_rule():
    assert ema_decay(0.999, 0) == pytest.approx(0.1) and ema_decay(0.999, 10) == pytest.approx(11 / 20)
    assert ema_decay(0.999, 10 ** 6) == 0.999


def test_dsm_loss_falls_and_resume_equals_uninterrupted_run(tiny_config, tmp_path):
    test_x = load_images(DataConfig(name="fashion-mnist", split="test", num_sub=64), tmp_path).x

    train(_with_steps(tiny_config, 1, "short"), tmp_path)
    early = _backbone(tmp_path / "short" / "score.pth")
    result = train(_with_steps(tiny_config, 40, "long"), tmp_path)
    late = _backbone(tmp_path / "long" / "score.pth")
    loss_early, loss_late = held_out_loss(early, test_x, seed=1), held_out_loss(late, test_x, seed=1)
    assert loss_late < 0.8 * loss_early and result["steps"] == 40

    train(_with_steps(tiny_config, 3, "resumed"), tmp_path)
    train(_with_steps(tiny_config, 6, "resumed"), tmp_path)
    train(_with_steps(tiny_config, 6, "straight"), tmp_path)
    resumed = torch.load(tmp_path / "resumed" / "score.pth", weights_only=True)
    straight = torch.load(tmp_path / "straight" / "score.pth", weights_only=True)
    for a, b in zip(resumed["ema"]["shadow_params"], straight["ema"]["shadow_params"], strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)

    card = write_card(_with_steps(tiny_config, 6, "resumed"), tmp_path, Path("cfg.yml"), result)
    assert "python training/train_score_model.py --config cfg.yml" in card.read_text()
