"""Purification cost on CPU: solver overhead over the bare networks, input-gradient time per backend, the exact
solver's memory budget (purifier.graph_steps: steps whose graph is kept instead of recomputed) and peak memory of a
gradient versus the number of steps. Prints ratios measured in this one run (times: the fastest of --repeats
interleaved rounds).

    python benchmarks/bench_purification.py [--repeats 5] [--threads 2] [--part all | budget]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from classifiers.wide_resnet import wide_resnet  # noqa: E402
from runners.purifiers import DiffusionPurifier, PurifierConfig  # noqa: E402
from runners.solvers import GraphSteps  # noqa: E402
from diffusion.sde import VPSDE  # noqa: E402
from score_sde import NCSNpp, ScoreSDEBackbone  # noqa: E402
from score_sde.config import NCSNppConfig  # noqa: E402
from utils.config import from_dict, read_yaml  # noqa: E402
from utils.images import to_image_space  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.yml"


def build(config: PurifierConfig) -> DiffusionPurifier:
    """Tiny NCSN++ (the reference config, random weights from seed 0) + WRN-16-2 guidance classifier."""
    model_cfg = from_dict(NCSNppConfig, read_yaml(TINY)["backbone"]["model"], "backbone.model")
    backbone = ScoreSDEBackbone(NCSNpp(model_cfg, torch.Generator().manual_seed(0)).eval(), VPSDE(0.1, 20.0, 1000))
    classifier = wide_resnet(16, 2, in_channels=3, num_classes=10, seed=0).eval()
    return DiffusionPurifier(backbone, config, classifier)


def timed(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Fastest wall time (s) of each fn over `repeats` interleaved rounds after one warm-up call each: the rounds
    spread the machine's drift evenly over the candidates, and the minimum is the least disturbed run."""
    for fn in fns.values():
        fn()
    best = {name: float("inf") for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def purify(purifier: DiffusionPurifier, x: torch.Tensor) -> Callable[[], object]:
    """One purification of x without building a graph."""

    def run() -> None:
        with torch.no_grad():
            purifier(x)

    return run


def bare_step(purifier: DiffusionPurifier, x: torch.Tensor) -> Callable[[], object]:
    """What one guided step must cost at least: score forward + classifier forward/backward."""
    t = torch.full((x.shape[0],), 0.05)
    x_d = x * 2 - 1

    def run() -> None:
        with torch.no_grad():
            purifier.backbone(x_d, t)
        x_in = x_d.clone().requires_grad_(True)
        logp = torch.log_softmax(purifier.guidance_classifier(to_image_space(x_in)), 1).max(1).values.sum()
        torch.autograd.grad(logp, x_in)

    return run


def gradient(purifier: DiffusionPurifier, x: torch.Tensor) -> Callable[[], object]:
    """One input gradient of sum(purified) through the whole solver."""

    def run() -> None:
        x_req = x.clone().requires_grad_(True)
        torch.autograd.grad(purifier(x_req).sum(), x_req)

    return run


def step_times(batch: int, steps: int, repeats: int) -> dict[str, float]:
    """Seconds per purification step for both backends and for the bare networks."""
    x = torch.rand(batch, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    fns = {backend: purify(build(PurifierConfig(name="coup", t_star=steps * 1e-3, backend=backend, t_end=0.0)), x)
           for backend in ("exact", "torchsde")}
    fns["bare"] = bare_step(build(PurifierConfig(name="coup")), x)
    seconds = timed(fns, repeats)
    return {name: value if name == "bare" else value / steps for name, value in seconds.items()}


def gradient_times(batch: int, steps: int, repeats: int) -> dict[str, float]:
    """Seconds per input gradient: exact vs torchsde adjoint (frozen nets), detached and full, and DiffPure-style."""
    x = torch.rand(batch, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    settings = {
        "exact/detached": dict(backend="exact", grad_mode="detached"),
        "exact/full": dict(backend="exact", grad_mode="full"),
        "adjoint/detached": dict(backend="torchsde", grad_mode="detached"),
        "adjoint/full": dict(backend="torchsde", grad_mode="full"),
        "adjoint/detached+net params (DiffPure-style)": dict(backend="torchsde", grad_mode="detached",
                                                             adjoint_over_networks=True),
    }
    return timed({name: gradient(build(PurifierConfig(name="coup", t_star=steps * 1e-3, t_end=0.0, **kw)), x)
                  for name, kw in settings.items()}, repeats)


def budget_times(batch: int, steps: int, repeats: int) -> dict[str, float]:
    """Seconds of one purification (no graph) and of one input gradient at graph_steps 0, steps // 2 and 'all'."""
    x = torch.rand(batch, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    config = PurifierConfig(name="coup", t_star=steps * 1e-3, t_end=0.0, grad_mode="full")
    fns = {"forward": purify(build(config), x)}
    for budget in graph_budgets(steps):
        fns[f"gradient, graph_steps {budget}"] = gradient(build(dataclasses.replace(config, graph_steps=budget)), x)
    return timed(fns, repeats)


def noise_share(batch: int, steps: int, repeats: int) -> float:
    """Time of drawing a purification's noise table (per-row CPU generators) over the whole purification's."""
    x = torch.rand(batch, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    purifier, seeds = build(PurifierConfig(name="coup", t_star=steps * 1e-3, t_end=0.0)), torch.arange(batch)
    times = timed({"noise": lambda: purifier.draw_noise(x, seeds), "purification": purify(purifier, x)}, repeats)
    return times["noise"] / times["purification"]


def graph_budgets(steps: int) -> tuple[GraphSteps, ...]:
    """The memory budgets measured: every step recomputed, half of them kept, all kept (plain backprop)."""
    return 0, steps // 2, "all"


def peak_rss_mib() -> float:
    """This process's peak resident set (VmHWM, Linux) in MiB; unlike ru_maxrss it is not inherited from the parent."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status: the memory measurement needs Linux")


def peak_memory_child(steps: int, graph_steps: GraphSteps) -> None:
    """(Child process) print the peak RSS growth in MiB of one gradient at `steps` steps (no warm-up: the
    one-time allocations of the first call are counted at every step count alike)."""
    purifier = build(PurifierConfig(name="coup", t_star=steps * 1e-3, t_end=0.0, graph_steps=graph_steps))
    x = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    base = peak_rss_mib()
    gradient(purifier, x)()
    sys.stdout.write(json.dumps(peak_rss_mib() - base) + "\n")


def peak_memory(steps: int, graph_steps: GraphSteps) -> float:
    """Peak RSS growth (MiB) of one batch-8 gradient, measured in a fresh process."""
    cmd = [sys.executable, __file__, "--child-memory", str(steps), "--graph-steps", str(graph_steps),
           "--threads", str(torch.get_num_threads())]
    return float(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])


def budget_report(repeats: int, steps: int = 10) -> list[str]:
    """The memory-budget table: gradient / forward time ratio and peak memory per graph_steps."""
    times = {b: budget_times(b, steps, repeats) for b in (1, 8)}
    lines = [f"| memory budget ({steps} steps, COUP full grads) | batch 1: s | gradient / forward | batch 8: s | "
             "gradient / forward | vs graph_steps 0 (batch 8) |", "|---|---|---|---|---|---|"]
    base = times[8]["gradient, graph_steps 0"]
    for key in times[1]:
        cells = [f"{times[b][key]:.3f} | {times[b][key] / times[b]['forward']:.2f}" for b in (1, 8)]
        lines.append(f"| {key} | {cells[0]} | {cells[1]} | {times[8][key] / base:.2f}x |")
    share = {b: noise_share(b, steps, repeats) for b in (1, 8)}
    lines.append(f"| noise table drawn on the host, share of a purification | {share[1]:.2%} | | {share[8]:.2%} | | |")
    mem = {(s, g): peak_memory(s, g) for s in (25, 100) for g in graph_budgets(s)}
    lines += ["", "| peak RSS growth of one batch-8 gradient (exact backend) | 25 steps | 100 steps | ratio |",
              "|---|---|---|---|"]
    for name, budget in (("graph_steps 0: step-checkpointed (default)", lambda s: 0),
                         ("graph_steps steps / 2", lambda s: s // 2),
                         ("graph_steps all: plain backprop (= checkpoint: false)", lambda s: "all")):
        low, high = mem[25, budget(25)], mem[100, budget(100)]
        lines.append(f"| {name} | {low:.0f} MiB | {high:.0f} MiB | {high / low:.2f}x |")
    return lines


def report(repeats: int) -> None:
    """Run every measurement and print the table with its ratios."""
    lines = ["| measurement | batch 1 | batch 8 |", "|---|---|---|"]
    steps = {b: step_times(b, 10, repeats) for b in (1, 8)}
    for key in ("bare", "exact", "torchsde"):
        lines.append(f"| s per step: {key} | {steps[1][key]*1e3:.1f} ms | {steps[8][key]*1e3:.1f} ms |")
    overhead = {b: steps[b]["exact"] / steps[b]["bare"] - 1 for b in (1, 8)}
    lines.append(f"| exact-backend overhead over bare networks | {overhead[1]:+.1%} | {overhead[8]:+.1%} |")
    grads = {b: gradient_times(b, 10, repeats) for b in (1, 8)}
    for key in grads[1]:
        lines.append(f"| s per gradient (10 steps): {key} | {grads[1][key]:.3f} | {grads[8][key]:.3f} |")
    for mode in ("detached", "full"):
        ratio = {b: grads[b][f"adjoint/{mode}"] / grads[b][f"exact/{mode}"] for b in (1, 8)}
        lines.append(f"| speed-up exact vs adjoint ({mode}) | {ratio[1]:.2f}x | {ratio[8]:.2f}x |")
    diffpure = {b: grads[b]["adjoint/detached+net params (DiffPure-style)"] / grads[b]["exact/detached"]
                for b in (1, 8)}
    lines.append(f"| speed-up exact vs DiffPure-style adjoint | {diffpure[1]:.2f}x | {diffpure[8]:.2f}x |")
    sys.stdout.write("\n".join(lines + [""] + budget_report(repeats)) + "\n")  # the benchmark's output is its table


def graph_steps_arg(text: str) -> GraphSteps:
    """--graph-steps: an integer or 'all'."""
    return text if text == "all" else int(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (the memory children use them too)")
    parser.add_argument("--part", choices=("all", "budget"), default="all", help="budget: the memory-budget table only")
    parser.add_argument("--child-memory", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--graph-steps", type=graph_steps_arg, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    if args.child_memory:
        peak_memory_child(args.child_memory, args.graph_steps)
    elif args.part == "budget":
        sys.stdout.write("\n".join(budget_report(args.repeats)) + "\n")
    else:
        report(args.repeats)


if __name__ == "__main__":
    main()
