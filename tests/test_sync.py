"""No host sync inside the solver's steps and the attacks' iterations (issue: the first GPU run).

A host sync is a read of device data by the host (item, float, bool, tolist, cpu, nonzero, ...): on a GPU each
one waits for every queued kernel. On the CPU (CI) the work runs on the meta device, whose tensors hold no data:
every sync point is patched to record a call on a device tensor, so a read of device data anywhere in the loop fails
with where it happened, while host bookkeeping (seeds, time grids, schedule constants on the CPU) is allowed. With
`--device cuda` the same runs on the GPU under torch.cuda.set_sync_debug_mode('error') as well.
"""
from __future__ import annotations

import traceback
from contextlib import contextmanager
from typing import Iterator

import pytest
import torch

from attacks.apgd import ApgdEot
from attacks.pgd import PGDEOT
from classifiers.wide_resnet import wide_resnet
from runners.defended import DefendedClassifier
from runners.purifiers import DiffusionPurifier, PurifierConfig
from tests.test_lm import tiny_improved_diffusion, tiny_ncsnpp
from utils.images import iterates_in_range

# (owner, attribute): the ways host code reads a tensor's data
SYNC_POINTS = [(torch.Tensor, name) for name in ("item", "tolist", "__bool__", "__float__", "__int__", "__index__",
                                                  "cpu", "numpy", "nonzero")] + [(torch, "nonzero")]


@pytest.fixture
def sync_device(device: torch.device) -> torch.device:
    """The device the loops run on: meta for a CPU run (no data, so reads are caught), else the test device."""
    return torch.device("meta") if device.type == "cpu" else device


@contextmanager
def no_host_sync(monkeypatch: pytest.MonkeyPatch, device: torch.device) -> Iterator[list[str]]:
    """Within the block, record each sync point called on a tensor of `device` (with the line that called it)."""
    calls: list[str] = []

    def patched(original, name):
        def wrapper(*args, **kwargs):
            if any(isinstance(a, torch.Tensor) and a.device.type == device.type for a in args):
                where = traceback.extract_stack(limit=2)[0]
                calls.append(f"{name} at {where.filename}:{where.lineno}")
                if device.type == "meta":
                    raise AssertionError(f"host sync: {calls[-1]}")
            return original(*args, **kwargs)
        return wrapper

    for owner, name in SYNC_POINTS:
        monkeypatch.setattr(owner, name, patched(getattr(owner, name), name))
    debug = device.type == "cuda"
    if debug:
        torch.cuda.set_sync_debug_mode("error")
    try:
        yield calls
    finally:
        if debug:
            torch.cuda.set_sync_debug_mode("default")
        monkeypatch.undo()


def defended(backbone, device: torch.device, **fields) -> DefendedClassifier:
    """COUP (guidance differentiated) on `backbone` with a WRN-16-2, 3 steps, on `device`."""
    classifier = wide_resnet(16, 2, in_channels=3, num_classes=10, seed=0).eval()
    config = PurifierConfig(**{"name": "coup", "t_star": 0.03, "dt": 0.01, "grad_mode": "full", **fields})
    return DefendedClassifier(DiffusionPurifier(backbone, config, classifier), classifier).to(device).eval()


def images(device: torch.device, n: int = 2) -> torch.Tensor:
    """n random images (n, 3, 32, 32) in [0, 1] on `device`."""
    return torch.rand((n, 3, 32, 32), generator=torch.Generator().manual_seed(0)).to(device)


@pytest.mark.parametrize("backend", ["exact", "torchsde"])
@pytest.mark.parametrize("backbone", [tiny_ncsnpp, tiny_improved_diffusion], ids=["ncsnpp", "improved_diffusion"])
def test_a_purification_and_its_gradient_read_no_device_data_inside_the_steps(monkeypatch, sync_device, backend,
                                                                              backbone):
    model = defended(backbone(), sync_device, backend=backend)
    purifier = model.purifier
    x = images(sync_device)
    with iterates_in_range():  # its one value check comes before the loop (and meta tensors have no values)
        score_fn, z = purifier.prepare(x, torch.tensor([3, 4]), None)
    x_start = (2 * x - 1).requires_grad_(True)
    with no_host_sync(monkeypatch, sync_device) as calls:
        out = purifier.solve_exact(score_fn, x_start, z[1:]) if backend == "exact" else \
            purifier.solve_torchsde(score_fn, x_start, z[1:])
        (grad,) = torch.autograd.grad(out.sum(), x_start)
    assert calls == []
    assert grad.shape == x.shape and grad.device.type == sync_device.type


@pytest.mark.parametrize("attack", [PGDEOT, ApgdEot], ids=["pgd_eot", "apgd_eot"])
def test_an_attack_iteration_reads_no_device_data(monkeypatch, sync_device, attack):
    model = defended(tiny_ncsnpp(), sync_device)
    x, y = images(sync_device), torch.tensor([1, 2]).to(sync_device)
    runner = attack({"iterations": 2, "eot_samples": 2, "sanity_checks": False})
    with no_host_sync(monkeypatch, sync_device) as calls:
        out = runner.perturb(model, x, y, torch.tensor([5, 6]), 7)
    assert calls == []
    x_adv = out[0]
    assert x_adv.shape == x.shape and x_adv.device.type == sync_device.type


def test_the_patched_sync_points_catch_a_device_read(monkeypatch, sync_device):
    x = images(sync_device)
    with pytest.raises(Exception):
        with no_host_sync(monkeypatch, sync_device):
            float(x.max())
