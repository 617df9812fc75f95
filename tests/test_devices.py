"""eval.device, host-to-device copies, GPU timing and determinism (utils/devices.py) and their place in a run."""
from __future__ import annotations

import json
import logging

import pytest
import torch

import eval_sde_adv
from tests.test_eval import TINY, run_dir_of
from utils.config import ConfigError
from utils.devices import deterministic, deterministic_flags, resolve_device, to_device
from utils.seeds import per_row


@pytest.mark.parametrize("spec", ["gpu", "cuda:x", "CUDA", "", "cuda:0:1"])
def test_a_device_that_is_not_auto_cpu_or_cuda_n_is_refused(spec):
    with pytest.raises(ConfigError, match="eval.device must be auto, cpu, cuda or cuda:N"):
        resolve_device(spec)


def test_auto_is_the_gpu_of_this_rank_when_there_is_one_and_cpu_is_always_the_cpu():
    expected = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    assert resolve_device("auto") == expected
    assert resolve_device("cpu", local_rank=3) == torch.device("cpu")


def test_a_gpu_that_is_not_there_is_named_with_the_number_visible():
    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    with pytest.raises(ConfigError, match=f"needs GPU {visible}, but {visible} GPU"):
        resolve_device(f"cuda:{visible}")


def test_per_row_noise_is_the_same_on_every_device(device):
    seeds = torch.tensor([11, 12, 13])
    on_host = per_row(seeds, lambda gen: torch.randn((2, 3), generator=gen))
    moved = per_row(seeds, lambda gen: torch.randn((2, 3), generator=gen), device)
    assert moved.device.type == device.type and torch.equal(moved.cpu(), on_host)
    assert torch.equal(to_device(on_host, device).cpu(), on_host)


def test_deterministic_sets_the_flags_and_restores_them():
    before = deterministic_flags()
    with deterministic(True) as flags:
        assert flags == {"deterministic_algorithms": True, "cudnn_deterministic": True, "cudnn_benchmark": False}
        assert torch.are_deterministic_algorithms_enabled()
    assert deterministic_flags() == before
    with deterministic(False) as flags:
        assert flags == before


def test_an_unavailable_gpu_stops_the_run_with_one_line_before_anything_is_written(tmp_path, caplog, capsys):
    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    with caplog.at_level(logging.ERROR):
        code = eval_sde_adv.main(["--config", str(TINY), "--num_sub", "2", "--attack", "pgd_eot",
                                  "--output_dir", str(tmp_path / "runs"), "--set", f"eval.device=cuda:{visible}"])
    assert code == 2 and not (tmp_path / "runs").exists()
    assert f"needs GPU {visible}" in caplog.text and "Traceback" not in caplog.text + capsys.readouterr().err


def test_the_summary_records_the_device_and_the_determinism_flags(tmp_path, device, eval_device_args):
    args = ["--config", str(TINY), "--num_sub", "2", "--attack", "pgd_eot", "--output_dir", str(tmp_path),
            "--set", "eval.deterministic=true", *eval_device_args]
    assert eval_sde_adv.main(args) == 0
    run_dir = run_dir_of(tmp_path)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["device"] == ("cpu" if device.type == "cpu" else f"{torch.cuda.get_device_name(device)} ({device})")
    assert summary["determinism"]["deterministic_algorithms"] is True
    assert summary["config"]["eval"]["device"] == ("auto" if device.type == "cpu" else str(device))
    assert f"Device: {summary['device']}; numerics:" in (run_dir / "summary.md").read_text()
