"""The exact solver's memory is flat in the number of steps: peak RSS growth of one input gradient, 100 vs 25 steps,
plain and with DiffAttack's per-step tap (purify_tapped, the deviated-reconstruction loss on every state).

Each measurement runs in a fresh process (VmHWM is per process). The score is a wide elementwise stand-in whose
per-step graph (BATCH x WIDTH x 64 floats, 2 MiB) dwarfs the states the solver keeps per step (BATCH x 64 floats).
Measured: step-checkpointed 50.2 -> 51.5 MiB (1.02x); plain backprop (checkpoint: false) 63 -> 215 MiB (3.4x).
The children inherit run_tests.sh's tcmalloc (utils/tcmalloc.sh); under glibc malloc peak RSS is allocator noise.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from attacks.diffattack import deviation_tap, reference_states, step_weights  # noqa: E402
from runners.purifiers import DiffusionPurifier, PurifierConfig  # noqa: E402
from diffusion.backbone import VPBackbone  # noqa: E402
from diffusion.sde import VPSDE  # noqa: E402

BATCH, WIDTH, SHAPE = 8, 1024, (1, 8, 8)


class WideScore(VPBackbone):
    """s(x, t) = -x - mean_k tanh(w_k x): an (x-shaped) score whose graph holds a (B, WIDTH, 64) tensor per step."""

    def __init__(self) -> None:
        super().__init__(VPSDE(0.1, 20.0, 1000))
        self.register_buffer("w", torch.linspace(0.5, 1.5, WIDTH).view(1, WIDTH, 1))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        wide = torch.tanh(self.w * x.flatten(1).unsqueeze(1))
        return -x - wide.mean(dim=1).view_as(x)


def peak_rss_mib() -> float:
    """This process's peak resident set (VmHWM) in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status: the memory test needs Linux")


def gradient_peak_growth(steps: int, tapped: bool) -> float:
    """(Child) peak RSS growth in MiB of one input gradient through `steps` exact-solver steps (reverse-only), of the
    purified sum, or (tapped) of the purified sum plus the deviated-reconstruction loss on every state."""
    torch.set_num_threads(1)
    config = PurifierConfig(name="reverse_only", t_star=steps * 1e-3, dt=1e-3, t_end=0.0, backend="exact")
    purifier = DiffusionPurifier(WideScore(), config)
    x = torch.rand((BATCH, *SHAPE), generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    seeds = torch.arange(BATCH)
    reference = reference_states(purifier, x.detach() * 0.9, seeds) if tapped else []
    base = peak_rss_mib()
    out, total = (purifier.purify_tapped(x, seeds, deviation_tap(reference, step_weights(purifier, "uniform")))
                  if tapped else (purifier(x, seeds), torch.zeros(())))
    (grad,) = torch.autograd.grad(out.sum() + total.sum(), x)
    assert torch.isfinite(grad).all()
    return peak_rss_mib() - base


def measured(steps: int, tapped: bool) -> float:
    """gradient_peak_growth(steps, tapped) in a fresh Python process."""
    done = subprocess.run([sys.executable, __file__, str(steps), str(int(tapped))], capture_output=True, text=True,
                          timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stderr[-2000:]
    return float(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("tapped", [False, True], ids=["plain", "diffattack_tap"])
def test_exact_solver_peak_memory_is_flat_in_the_number_of_steps(tapped):
    low, high = measured(25, tapped), measured(100, tapped)
    per_step_graph = BATCH * WIDTH * 64 * 4 / 2**20
    assert low > per_step_graph  # the measurement sees at least one step's graph
    assert high <= 1.2 * low, f"peak RSS growth {high:.1f} MiB at 100 steps vs {low:.1f} MiB at 25"


if __name__ == "__main__":
    sys.stdout.write(json.dumps(gradient_peak_growth(int(sys.argv[1]), bool(int(sys.argv[2])))) + "\n")
