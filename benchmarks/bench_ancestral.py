"""DiffPure's CelebA-HQ DDPM path on CPU: one call of the real-size 256x256 UNet and classifier (random weights),
and the peak memory of one input gradient of the ancestral purifier (tiny reference UNet) versus its step count.

    python benchmarks/bench_ancestral.py [--steps 6 24] [--batch 8] [--threads 1] [--skip-real-size]

Each memory point runs in its own process (growth of its peak RSS, VmHWM, over a warm-up forward pass).
"""
from __future__ import annotations

import argparse
import logging
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from classifiers.attribute import AttributeClassifier, AttributeNet, AttributeNetShape  # noqa: E402
from ddpm import CELEBAHQ_DDPM, DDPMConfig, DDPMUNet, DDPMUNetConfig, load_ddpm_backbone  # noqa: E402
from runners.ancestral import AncestralConfig, AncestralPurifier  # noqa: E402
from diffusion.sde import VPSDE  # noqa: E402
from utils.config import from_dict, read_yaml  # noqa: E402

TINY = ROOT / "tests" / "data" / "ddpm_celebahq_tiny"
log = logging.getLogger("bench_ancestral")


def peak_rss_mib() -> float:
    """This process's peak resident set (VmHWM, MiB; unlike ru_maxrss it starts afresh at exec)."""
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def seconds(fn) -> float:
    """Wall time of one call of fn."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def real_size() -> str:
    """Forward and forward+backward time of the 256x256 UNet (batch 1), and one classifier forward."""
    net = DDPMUNet(CELEBAHQ_DDPM.unet).eval().requires_grad_(False)
    classifier = AttributeClassifier(AttributeNet(AttributeNetShape.stylegan())).eval().requires_grad_(False)
    x, t = torch.randn(1, 3, 256, 256), torch.tensor([499])
    with torch.no_grad():
        forward = seconds(lambda: net(x, t))
        classify = seconds(lambda: classifier(torch.rand(1, 3, 256, 256)))
    x_in = x.clone().requires_grad_(True)
    both = seconds(lambda: torch.autograd.grad(net(x_in, t).sum(), x_in))
    return (f"real-size DDPM UNet, 256x256, batch 1: forward {forward:.2f} s, forward+backward {both:.2f} s; "
            f"attribute classifier forward {classify:.3f} s")


def memory_point(steps: int, checkpoint: bool, batch: int) -> str:
    """Peak RSS growth and time of one input gradient through `steps` ancestral steps of the tiny UNet."""
    model = read_yaml(TINY / "config.json")["config"]
    options = {k: v for k, v in model["model"].items() if k in DDPMUNetConfig.__annotations__}
    unet = from_dict(DDPMUNetConfig, {**options, "image_size": model["data"]["image_size"]})
    backbone = load_ddpm_backbone(DDPMConfig(unet=unet), TINY / "model.pt", VPSDE(0.1, 20.0, 1000))
    purifier = AncestralPurifier(backbone, AncestralConfig(t_star=steps / 1000, checkpoint=checkpoint))
    x, seeds = torch.rand(batch, 3, 32, 32, generator=torch.Generator().manual_seed(0)), torch.arange(batch)
    with torch.no_grad():
        purifier(x, seeds)
    base = peak_rss_mib()
    x_in = x.clone().requires_grad_(True)
    elapsed = seconds(lambda: torch.autograd.grad(purifier(x_in, seeds).sum(), x_in))
    growth = peak_rss_mib() - base
    return (f"{steps} steps, checkpoint {checkpoint}, batch {batch}: peak RSS growth {growth:.0f} MiB, "
            f"gradient {elapsed:.2f} s")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, nargs="+", default=[6, 24])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--skip-real-size", action="store_true")
    p.add_argument("--point", nargs=2, type=int, metavar=("STEPS", "CHECKPOINT"), help=argparse.SUPPRESS)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    if args.point:
        sys.stdout.write(memory_point(args.point[0], bool(args.point[1]), args.batch) + "\n")
        return
    if not args.skip_real_size:
        log.info(real_size())
    for steps in args.steps:
        for checkpoint in (1, 0):
            command = [sys.executable, __file__, "--point", str(steps), str(checkpoint), "--batch", str(args.batch),
                       "--threads", str(args.threads)]
            log.info(subprocess.run(command, check=True, capture_output=True, text=True).stdout.strip())


if __name__ == "__main__":
    main()
