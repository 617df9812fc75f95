"""The torchsde backend: the reverse VP-SDE as torchsde's f / g shim, driven by a tabulated Brownian path.

It integrates on the grid of runners.solvers.TimeGrid with the same standard-normal table z as solve_exact,
so both backends give the same output for the same noise (tests/test_solvers.py).
"""
from __future__ import annotations

import bisect
from typing import Optional

import torch
import torchsde
from torch import nn

from diffusion.sde import VPSDE, ScoreFn
from runners.solvers import TimeGrid, _check_noise
from utils.devices import to_device


class TabulatedBrownian(torchsde.BaseBrownian):
    """A Brownian path fixed at grid times s_k by given increments, linear in between (torchsde's bm)."""

    def __init__(self, s_grid: torch.Tensor, increments: torch.Tensor) -> None:
        self._s = s_grid.to(torch.float64).tolist()
        self._w = torch.cat([torch.zeros_like(increments[:1]), increments.cumsum(0)])

    def _path(self, s: torch.Tensor | float) -> torch.Tensor:
        """W(s) (B, D) on the increments' device; s is a host time (ts stays on the CPU), so no device sync."""
        s = float(s)
        k = min(max(bisect.bisect_left(self._s, s), 1), len(self._s) - 1)
        lo, hi = self._s[k - 1], self._s[k]
        frac = min(max((s - lo) / (hi - lo), 0.0), 1.0)
        return self._w[k - 1] + frac * (self._w[k] - self._w[k - 1])

    def __call__(self, ta, tb=None, return_U=False, return_A=False):
        if return_U or return_A or tb is None:
            raise ValueError("TabulatedBrownian supports increments W(tb) - W(ta) only (method 'euler')")
        return self._path(tb) - self._path(ta)

    def __repr__(self) -> str:
        return f"TabulatedBrownian(n_steps={len(self._s) - 1}, shape={tuple(self.shape)})"

    @property
    def dtype(self) -> torch.dtype:
        return self._w.dtype

    @property
    def device(self) -> torch.device:
        return self._w.device

    @property
    def shape(self) -> torch.Size:
        return self._w.shape[1:]

    @property
    def levy_area_approximation(self) -> str:
        return "none"


class ReverseSDEShim(nn.Module):
    """torchsde's f/g contract for the reverse SDE in solver time s = t_star - tau, state (B, C*H*W)."""

    noise_type = "diagonal"
    sde_type = "ito"

    def __init__(self, sde: VPSDE, score_fn: ScoreFn, t_star: float, image_shape: tuple[int, ...],
                 networks: Optional[nn.Module] = None) -> None:
        super().__init__()
        self.sde, self.score_fn = sde, score_fn
        self.t_star, self.image_shape = t_star, image_shape
        self.networks = networks  # registered only to reproduce DiffPure's adjoint over network parameters

    def f(self, s: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Drift in solver time: -(f(x, tau) - g(tau)^2 s(x, tau)), flattened."""
        x = y.view(y.shape[0], *self.image_shape)
        tau = torch.full((y.shape[0],), self.t_star, dtype=y.dtype, device=y.device) - s
        return -self.sde.reverse_drift(x, tau, self.score_fn(x, tau)).flatten(1)

    def g(self, s: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Diagonal diffusion sqrt(beta(tau)), shape of y."""
        return self.sde.diffusion(self.t_star - s).to(y.dtype) * torch.ones_like(y)


def solve_torchsde(sde: VPSDE, score_fn: ScoreFn, x_start: torch.Tensor, grid: TimeGrid, z: torch.Tensor,
                   adjoint: bool = True, networks: Optional[nn.Module] = None) -> torch.Tensor:
    """Integrate with torchsde (method euler; sdeint_adjoint when gradients are needed).

    networks=None freezes the networks in the adjoint (only the input gradient is integrated);
    passing the networks reproduces DiffPure's adjoint over all their parameters.
    """
    _check_noise(z, x_start, grid)
    t_star = grid.taus[0]
    s_grid = torch.tensor([t_star - tau for tau in grid.taus], dtype=torch.float64)
    steps = torch.tensor([grid.step(k)[1] for k in range(grid.n_steps)], dtype=z.dtype)
    # the increments live only while the path's cumulative sum is built: one table beside z, not two
    bm = TabulatedBrownian(s_grid, z.flatten(2) * to_device(steps.sqrt().view(-1, 1, 1), z.device))
    shim = ReverseSDEShim(sde, score_fn, t_star, tuple(x_start.shape[1:]), networks)
    # on the host: torchsde compares its times every step, which on a GPU would wait for the device each time
    ts = torch.tensor([0.0, t_star - grid.taus[-1]], dtype=x_start.dtype)
    dt = grid.taus[0] - grid.taus[1]
    y0 = x_start.flatten(1)
    if adjoint and torch.is_grad_enabled() and x_start.requires_grad:
        params = None if networks is not None else ()
        ys = torchsde.sdeint_adjoint(shim, y0, ts, bm=bm, method="euler", adjoint_method="euler", dt=dt,
                                     adjoint_params=params)
    else:
        ys = torchsde.sdeint(shim, y0, ts, bm=bm, method="euler", dt=dt)
    return ys[-1].view_as(x_start)
