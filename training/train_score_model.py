"""Train an NCSN++ score model with the VP-SDE denoising score-matching loss (Song et al. 2021, eq. 7).

    python training/train_score_model.py --config configs/train/score_fmnist.yml

Resumable: rerunning continues from the state file. Every step's batch, times and noise come from a
generator seeded with (seed, step), so a resumed run equals an uninterrupted one.
"""
from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffusion.sde import VPSDE  # noqa: E402
from score_sde import NCSNpp, NCSNppConfig, ScoreSDEBackbone, save_score_checkpoint  # noqa: E402
from training.common import write_text_atomic  # noqa: E402
from utils.cli import parser as cli_parser  # noqa: E402
from utils.cli import add_spine, apply_overrides, command_overrides, dry_run_text, run_main, setup_logging  # noqa: E402
from utils.config import from_dict, read_yaml, require, to_dict  # noqa: E402
from utils.data import DataConfig, load_images  # noqa: E402
from utils.images import to_diffusion_space  # noqa: E402
from utils.paths import resolve_path  # noqa: E402

logger = logging.getLogger("train_score")


@dataclass(frozen=True)
class ScoreTrainConfig:
    """Optimisation settings; paths are relative to the config file."""

    steps: int = 6000
    batch_size: int = 64
    lr: float = 2e-4
    warmup_steps: int = 500
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    t_eps: float = 1e-5
    seed: int = 0
    log_every: int = 100
    checkpoint_every: int = 250
    eval_images: int = 1000
    num_threads: int = 2
    output: str = "../../pretrained/demo/score_ncsnpp_fmnist.pth"
    state: str = "../../pretrained/demo/score_ncsnpp_fmnist.resume.pth"

    def __post_init__(self) -> None:
        require(self.steps > 0 and self.batch_size > 0, "train.steps and train.batch_size must be > 0")
        require(0.0 < self.ema_decay < 1.0, f"train.ema_decay must lie in (0, 1), got {self.ema_decay}")
        require(0.0 < self.t_eps < 1.0, f"train.t_eps must lie in (0, 1), got {self.t_eps}")


@dataclass(frozen=True)
class ScoreTrainingFile:
    """The YAML file: model (NCSN++ options), data (training split) and train sections."""

    model: NCSNppConfig
    data: DataConfig
    train: ScoreTrainConfig


def ema_decay(decay: float, num_updates: int) -> float:
    """The official EMA warm-up: min(decay, (1 + n) / (10 + n)), so early averages forget the random init."""
    return min(decay, (1.0 + num_updates) / (10.0 + num_updates))


def dsm_loss(backbone: ScoreSDEBackbone, x0: torch.Tensor, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """E ||eps(x_t, t) - z||^2 with x_t = alpha(t) x0 + sigma(t) z: the DSM loss with lambda(t) = sigma(t)^2."""
    mean, std = backbone.sde.marginal_prob(x0, t)
    return (backbone.epsilon(mean + std * z, t) - z).square().mean()


def load_training_state(path: Path, net: NCSNpp, ema: list[torch.Tensor], optimizer: torch.optim.Optimizer) -> int:
    """Restore network, EMA and Adam from our own state file (official layout); returns the step."""
    raw = torch.load(path, map_location="cpu", weights_only=True)
    net.load_state_dict({k.removeprefix("module."): v for k, v in raw["model"].items()})
    with torch.no_grad():
        for e, s in zip(ema, raw["ema"]["shadow_params"], strict=True):
            e.copy_(s)
    optimizer.load_state_dict(raw["optimizer"])
    return int(raw["step"])


def write_card(cfg: ScoreTrainingFile, base_dir: Path, config_path: Path, result: dict[str, float]) -> Path:
    """A small model card next to the weights: data, config, steps, seed, measured loss, command."""
    card = resolve_path(cfg.train.output, base_dir).with_suffix(".md")
    model = ", ".join(f"{k}: {v}" for k, v in to_dict(cfg.model).items())
    write_text_atomic(
        f"# {Path(cfg.train.output).name}\n\n"
        f"NCSN++ score model (VP-SDE, continuous, EMA {cfg.train.ema_decay}) trained by this repository.\n\n"
        f"- data: {cfg.data.name} {cfg.data.split} split, padded to {cfg.data.pad_to}, scaled to [-1, 1]\n"
        f"- model: {model}\n"
        f"- parameters: {int(result['parameters']):,}\n"
        f"- training: {cfg.train.steps} steps, batch {cfg.train.batch_size}, Adam lr {cfg.train.lr} "
        f"(warm-up {cfg.train.warmup_steps}), grad clip {cfg.train.grad_clip}, t ~ U({cfg.train.t_eps}, 1), "
        f"seed {cfg.train.seed}\n"
        f"- measured: held-out DSM loss (EMA weights, {cfg.train.eval_images} test images, "
        f"E||eps - z||^2 per pixel) = {result['heldout_dsm_loss_ema']:.5f}\n"
        f"- reproduce: `python training/train_score_model.py --config {config_path}`\n", card)
    return card


def step_batch(x_all: torch.Tensor, config: ScoreTrainConfig, step: int) -> tuple[torch.Tensor, ...]:
    """(x0 in [-1, 1], t, z) for `step`, drawn from a generator seeded with (seed, step) only."""
    gen = torch.Generator().manual_seed(config.seed * 1_000_003 + step)
    idx = torch.randint(x_all.shape[0], (config.batch_size,), generator=gen)
    x0 = to_diffusion_space(x_all[idx])
    t = config.t_eps + (1.0 - config.t_eps) * torch.rand(config.batch_size, generator=gen)
    return x0, t, torch.randn(x0.shape, generator=gen)


@torch.no_grad()
def held_out_loss(backbone: ScoreSDEBackbone, x: torch.Tensor, seed: int) -> float:
    """DSM loss on held-out images with fixed times and noise (comparable across runs)."""
    gen = torch.Generator().manual_seed(seed)
    losses = []
    for chunk in x.split(250):
        x0 = to_diffusion_space(chunk)
        t = 1e-5 + (1 - 1e-5) * torch.rand(x0.shape[0], generator=gen)
        losses.append(dsm_loss(backbone, x0, t, torch.randn(x0.shape, generator=gen)).item() * x0.shape[0])
    return sum(losses) / x.shape[0]


def train(cfg: ScoreTrainingFile, base_dir: Path) -> dict[str, float]:
    """Run (or resume) training; returns the final losses. EMA weights go to train.output."""
    torch.set_num_threads(cfg.train.num_threads)
    images = load_images(cfg.data, base_dir).x
    net = NCSNpp(cfg.model, torch.Generator().manual_seed(cfg.train.seed)).train()
    backbone = ScoreSDEBackbone(net, VPSDE(cfg.model.beta_min, cfg.model.beta_max, cfg.model.num_scales))
    optimizer = torch.optim.Adam(net.parameters(), lr=cfg.train.lr)
    ema = [p.detach().clone() for p in net.parameters()]
    state_path, step = resolve_path(cfg.train.state, base_dir), 0
    if state_path.is_file():
        step = load_training_state(state_path, net, ema, optimizer)
        logger.info("resumed from %s at step %d", state_path, step)
    progress = tqdm(range(step, cfg.train.steps), initial=step, total=cfg.train.steps, desc="score model")
    running: Optional[float] = None
    for step in progress:
        loss = dsm_loss(backbone, *step_batch(images, cfg.train, step))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.train.grad_clip)
        for group in optimizer.param_groups:
            group["lr"] = cfg.train.lr * min(1.0, (step + 1) / cfg.train.warmup_steps)
        optimizer.step()
        with torch.no_grad():
            torch._foreach_lerp_(ema, list(net.parameters()), 1.0 - ema_decay(cfg.train.ema_decay, step + 1))
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        progress.set_postfix(loss=f"{running:.4f}")
        if (step + 1) % cfg.train.log_every == 0:
            logger.info("step %d loss %.5f (running %.5f)", step + 1, loss.item(), running)
        if (step + 1) % cfg.train.checkpoint_every == 0 or step + 1 == cfg.train.steps:
            save_score_checkpoint(state_path, net, ema, step + 1, optimizer.state_dict(), cfg.train.ema_decay)
    return finish(cfg, base_dir, net, ema, backbone)


def finish(cfg: ScoreTrainingFile, base_dir: Path, net: NCSNpp, ema: list[torch.Tensor],
           backbone: ScoreSDEBackbone) -> dict[str, float]:
    """Write the EMA weights in the official layout (no optimizer) and report held-out losses."""
    save_score_checkpoint(resolve_path(cfg.train.output, base_dir), net, ema, cfg.train.steps, None, cfg.train.ema_decay)
    with torch.no_grad():
        for p, e in zip(net.parameters(), ema):
            p.copy_(e)
    net.eval()
    test = load_images(DataConfig(name=cfg.data.name, data_dir=cfg.data.data_dir, split="test",
                                  num_sub=cfg.train.eval_images, data_seed=0, pad_to=cfg.data.pad_to), base_dir)
    result = {"heldout_dsm_loss_ema": held_out_loss(backbone, test.x, seed=1), "steps": cfg.train.steps,
              "parameters": sum(p.numel() for p in net.parameters())}
    logger.info("final: %s", result)
    return result


KEY_OPTIONS = {"steps": "train.steps", "threads": "train.num_threads"}


def run(args: argparse.Namespace) -> None:
    """Train as the command line says; --dry-run prints the resolved config and where the checkpoint goes."""
    raw = apply_overrides(read_yaml(args.config), command_overrides(args, KEY_OPTIONS))
    cfg = from_dict(ScoreTrainingFile, raw, str(args.config))
    base_dir = args.config.resolve().parent
    if args.dry_run:
        sys.stdout.write(dry_run_text(to_dict(cfg), base_dir))
        return
    result = train(cfg, base_dir)
    write_card(cfg, base_dir, args.config, result)
    logger.info("held-out DSM loss %.5f after %d steps", result["heldout_dsm_loss_ema"], result["steps"])


def main(argv: Optional[list[str]] = None) -> int:
    """Command-line entry point: the exit code (2 and one line on a user error)."""
    parser = cli_parser("Train the NCSN++ score model (VP-SDE DSM loss).")
    add_spine(parser, "YAML training config (configs/train/score_fmnist.yml)")
    parser.add_argument("--steps", type=int, help="sets train.steps")
    parser.add_argument("--threads", type=int, help="sets train.num_threads")
    args = parser.parse_args(argv)
    setup_logging()
    return run_main(lambda: run(args), logger)


if __name__ == "__main__":
    sys.exit(main())
