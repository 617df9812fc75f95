"""Shared test setup: one CPU thread per test (the machine's other cores stay free), the no-network fixture, and the
--device option that puts the numerics tests on a GPU (`python -m pytest --device cuda ...`)."""
from __future__ import annotations

import socket
from typing import Iterator

import pytest
import torch

from utils.compat import import_robustbench
from utils.precision import numerics


def pytest_addoption(parser: pytest.Parser) -> None:
    """--device: the torch device the numerics tests run their models and tensors on."""
    parser.addoption("--device", default="cpu", help="torch device of the numerics tests: cpu (default), cuda, cuda:N")


def pytest_configure(config: pytest.Config) -> None:
    """Refuse a --device this machine cannot run, before anything is collected."""
    device = parse_device(config.getoption("device"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise pytest.UsageError(f"--device {device}: CUDA is not available here (torch {torch.__version__}); "
                                "run on a machine with a GPU or leave --device at cpu")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise pytest.UsageError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")


def parse_device(name: str) -> torch.device:
    """torch.device of a --device value: cpu, cuda or cuda:N, else a UsageError."""
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise pytest.UsageError(f"--device {name!r}: expected cpu, cuda or cuda:N")
    return device


@pytest.fixture(scope="session")
def device(pytestconfig: pytest.Config) -> Iterator[torch.device]:
    """The --device of this run, with the project's full float32 numerics (TF32 and autocast off) held throughout."""
    with numerics("float32"):
        yield parse_device(pytestconfig.getoption("device"))


@pytest.fixture(scope="session")
def eval_device_args(device: torch.device) -> list[str]:
    """The eval_sde_adv.py override that runs an evaluation on --device: none on the CPU (the config's own device)."""
    return [] if device.type == "cpu" else ["--set", f"eval.device={device}"]


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """torch.set_num_threads(1) for the test, restoring the previous count afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def no_network(monkeypatch):
    """Fail the test if anything opens a connection or calls robustbench's downloaders."""

    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    robustbench = import_robustbench()
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    for name in ("download_gdrive", "download_gdrive_new"):
        monkeypatch.setattr(robustbench.utils, name, refuse)
