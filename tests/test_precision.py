"""GPU numerics: full float32 by default (TF32 and autocast off), TF32 on request, applied in one place and recorded."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import eval_sde_adv
from utils.precision import describe_numerics, numerics, precision_flags
from utils.provenance import provenance

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny.yml"


@pytest.fixture
def torch_defaults():
    """PyTorch's own defaults (cuDNN TF32 on, matmul TF32 off, 'highest'), restored after the test."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
             torch.get_float32_matmul_precision())
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = False, True
    torch.set_float32_matmul_precision("highest")
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved[:2]
    torch.set_float32_matmul_precision(saved[2])


def test_float32_turns_off_the_cudnn_tf32_default_and_restores_it(torch_defaults):
    assert torch.backends.cudnn.allow_tf32  # what PyTorch does on Ampere GPUs unless told otherwise
    with numerics("float32") as flags:
        assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
        assert torch.get_float32_matmul_precision() == "highest"
        assert flags == precision_flags() == provenance(argv=[])["numerics"]
    assert flags == {"precision": "float32", "autocast": False, "cuda_matmul_allow_tf32": False,
                     "cudnn_allow_tf32": False, "float32_matmul_precision": "highest", "autocast_cpu": False,
                     "autocast_cuda": False}
    assert describe_numerics(flags) == "full float32 (TF32 off, autocast off)"
    assert torch.backends.cudnn.allow_tf32  # restored on exit


def test_tf32_is_the_opt_in_and_is_recorded(torch_defaults):
    with numerics("tf32") as flags:
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        assert provenance(argv=[])["numerics"] == flags
    assert (flags["precision"], flags["float32_matmul_precision"]) == ("tf32", "high")
    assert describe_numerics(flags) == "reduced precision (TF32 allowed, autocast off)"
    assert not torch.backends.cuda.matmul.allow_tf32 and torch.get_float32_matmul_precision() == "highest"


def test_an_outer_autocast_is_switched_off_inside():
    layer = torch.nn.Linear(4, 3)
    x = torch.rand(2, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer(x).dtype == torch.bfloat16 and precision_flags()["autocast"]
        with numerics() as flags:
            assert layer(x).dtype == torch.float32 and not flags["autocast_cpu"]


def test_eval_run_applies_the_configured_precision_and_states_it(tmp_path, torch_defaults):
    args = ["--config", str(TINY), "--num_sub", "2", "--attack", "pgd_eot", "--set", "attacks.*.iterations=1",
            "--set", "attacks.*.eot_samples=1", "--set", "attacks.*.eval_samples=1",
            "--set", "eval.precision=tf32", "--output_dir", str(tmp_path)]
    assert eval_sde_adv.main(args) == 0
    (run_dir,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["config"]["eval"]["precision"] == "tf32"
    assert summary["numerics"]["precision"] == "tf32" and summary["numerics"]["cuda_matmul_allow_tf32"]
    assert "numerics: reduced precision (TF32 allowed, autocast off)." in (run_dir / "summary.md").read_text()
    assert not torch.backends.cuda.matmul.allow_tf32  # the run's setting does not leak out of it
