"""Shared test setup: one CPU thread per test (the machine's other cores stay free) and the no-network fixture."""
from __future__ import annotations

import socket
from typing import Iterator

import pytest
import torch

from utils.compat import import_robustbench


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
