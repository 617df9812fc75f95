"""Euler-Maruyama for the reverse VP-SDE: the exact, step-checkpointed backend (torchsde's: runners/torchsde_backend.py).

Both integrate diffusion time tau from t_star down to t_end on the same grid and consume the same
standard-normal table z (n_steps, B, C, H, W), so they give the same output for the same noise:
    x_{k+1} = x_k - h_k [f(x_k, tau_k) - g(tau_k)^2 s(x_k, tau_k)] + g(tau_k) sqrt(h_k) z_k.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Literal, Optional, Union

import torch

from diffusion.sde import VPSDE, ScoreFn

StepCallback = Callable[[int, float, torch.Tensor], None]
StepTap = Callable[[int, torch.Tensor], torch.Tensor]  # (k, x_{k+1} (B, C, H, W)) -> a per-row term (B,)


@dataclass(frozen=True)
class TimeGrid:
    """Diffusion times tau_0 = t_star > tau_1 > ... > tau_n = t_end, steps of dt (the last may be shorter)."""

    taus: tuple[float, ...]

    @classmethod
    def reverse(cls, t_star: float, dt: float, t_end: float = 1e-5) -> "TimeGrid":
        """The grid torchsde's fixed-step Euler walks from tau = t_star to tau = t_end."""
        if not 0.0 < t_star <= 1.0:
            raise ValueError(f"t_star must lie in (0, 1], got {t_star}")
        if not dt > 0.0:
            raise ValueError(f"dt must be > 0, got {dt}")
        if not 0.0 <= t_end < t_star:
            raise ValueError(f"t_end must lie in [0, t_star), got {t_end} with t_star {t_star}")
        span = t_star - t_end
        n_steps = max(1, math.ceil(span / dt - 1e-9))
        taus = [t_star - min(k * dt, span) for k in range(n_steps)] + [t_end]
        return cls(tuple(taus))

    @property
    def n_steps(self) -> int:
        """Number of Euler steps."""
        return len(self.taus) - 1

    def step(self, k: int) -> tuple[float, float]:
        """(tau_k, h_k) for step k."""
        return self.taus[k], self.taus[k] - self.taus[k + 1]


def reverse_em_step(sde: VPSDE, score_fn: ScoreFn, x: torch.Tensor, tau: float, h: float,
                    z: torch.Tensor) -> torch.Tensor:
    """One Euler-Maruyama step of the reverse SDE from tau to tau - h; x, z (B, C, H, W)."""
    t = torch.full((x.shape[0],), tau, dtype=x.dtype, device=x.device)
    drift = sde.reverse_drift(x, t, score_fn(x, t))
    return x - h * drift + math.sqrt(sde.beta(tau)) * math.sqrt(h) * z


class _StepCheckpointedSolve(torch.autograd.Function):
    """Stores only the n states x_k; backward recomputes each step and backpropagates through it.

    With a tap, it also returns sum_k tap(k, x_{k+1}) (B,), whose gradient joins each step's backward.
    """

    @staticmethod
    def forward(ctx, x_start: torch.Tensor, step: Callable[[torch.Tensor, int], torch.Tensor],
                n_steps: int, tap: Optional[StepTap] = None) -> tuple[torch.Tensor, torch.Tensor]:
        states = []
        x = x_start.detach()
        total = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        for k in range(n_steps):
            states.append(x)
            x = step(x, k)
            if tap is not None:
                total = total + tap(k, x)
        ctx.step, ctx.states, ctx.tap = step, states, tap
        return x, total

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor, grad_total: torch.Tensor):
        grad = grad_out
        for k in reversed(range(len(ctx.states))):
            with torch.enable_grad():
                x_k = ctx.states[k].detach().requires_grad_(True)
                x_next = ctx.step(x_k, k)
                outputs, grads = [x_next], [grad]
                if ctx.tap is not None:
                    outputs.append(ctx.tap(k, x_next))
                    grads.append(grad_total)
                (grad,) = torch.autograd.grad(outputs, x_k, grads)
        return grad, None, None, None


def solve_exact(sde: VPSDE, score_fn: ScoreFn, x_start: torch.Tensor, grid: TimeGrid, z: torch.Tensor,
                checkpoint: bool = True, callback: Optional[StepCallback] = None,
                graph_steps: GraphSteps = 0) -> torch.Tensor:
    """Integrate the reverse SDE; backprop gives the exact gradient of the discrete solver.

    With checkpoint=True memory is flat in the number of steps (one step's graph at a time) but for the first
    graph_steps steps, whose graphs are kept (the memory budget: fewer recomputations); see iterate_steps.
    x_start (B, C, H, W) in [-1, 1], z (n_steps, B, C, H, W) standard normal.
    """
    _check_noise(z, x_start, grid)

    def step(x: torch.Tensor, k: int) -> torch.Tensor:
        tau, h = grid.step(k)
        x_next = reverse_em_step(sde, score_fn, x, tau, h, z[k])
        if callback is not None and not torch.is_grad_enabled():
            callback(k, tau, x_next)
        return x_next

    return iterate_steps(step, x_start, grid.n_steps, checkpoint, graph_steps)


GraphSteps = Union[int, Literal["all"]]


def iterate_steps(step: Callable[[torch.Tensor, int], torch.Tensor], x_start: torch.Tensor, n_steps: int,
                  checkpoint: bool = True, graph_steps: GraphSteps = 0) -> torch.Tensor:
    """x_{k+1} = step(x_k, k) for k < n_steps; when x_start needs grad and checkpoint is set, the first graph_steps
    steps keep their graphs (3 network passes per step in a gradient) and the rest are step-checkpointed (4 passes,
    memory flat in their number); graph_steps 'all' or checkpoint False keeps every step's graph (plain backprop)."""
    if not (checkpoint and torch.is_grad_enabled() and x_start.requires_grad):
        graph_steps = "all"
    kept = n_steps if graph_steps == "all" else min(int(graph_steps), n_steps)
    x = x_start
    for k in range(kept):
        x = step(x, k)
    if kept == n_steps:
        return x
    return _StepCheckpointedSolve.apply(x, lambda x_k, k: step(x_k, kept + k), n_steps - kept)[0]


def solve_exact_tapped(sde: VPSDE, score_fn: ScoreFn, x_start: torch.Tensor, grid: TimeGrid, z: torch.Tensor,
                       tap: StepTap) -> tuple[torch.Tensor, torch.Tensor]:
    """(x at t_end, sum_k tap(k, x_{k+1}) (B,)): a loss on every intermediate Euler state, memory flat in steps.

    Backprop through both outputs recomputes one step at a time (as solve_exact with checkpoint=True).
    """
    _check_noise(z, x_start, grid)

    def step(x: torch.Tensor, k: int) -> torch.Tensor:
        tau, h = grid.step(k)
        return reverse_em_step(sde, score_fn, x, tau, h, z[k])

    if torch.is_grad_enabled() and x_start.requires_grad:
        return _StepCheckpointedSolve.apply(x_start, step, grid.n_steps, tap)
    x, total = x_start, torch.zeros(x_start.shape[0], dtype=x_start.dtype, device=x_start.device)
    for k in range(grid.n_steps):
        x = step(x, k)
        total = total + tap(k, x)
    return x, total


def _check_noise(z: torch.Tensor, x_start: torch.Tensor, grid: TimeGrid) -> None:
    """The noise table must be (n_steps, *x_start.shape)."""
    if tuple(z.shape) != (grid.n_steps, *x_start.shape):
        raise ValueError(f"noise table has shape {tuple(z.shape)}, expected {(grid.n_steps, *x_start.shape)}")
