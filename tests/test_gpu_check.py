"""The GPU check's CPU twin: `gpu_check.py --device cpu --tiny` runs every section end to end and prints its table."""
from __future__ import annotations

import json

import pytest

from benchmarks import gpu_check

SECTIONS = ("correctness", "throughput", "gradient", "projection", "numerics")


def test_tiny_cpu_check_runs_every_section_and_prints_its_table(tmp_path, capsys):
    assert gpu_check.main(["--device", "cpu", "--tiny", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert tuple(report["sections"]) == SECTIONS
    assert {name: section["status"] for name, section in report["sections"].items()} == dict.fromkeys(SECTIONS, "ok")
    assert report["device"].startswith("CPU") and report["mode"] == "tiny"
    assert report["provenance"]["numerics"]["precision"] == "float32"
    correctness = report["sections"]["correctness"]
    assert all(entry["pass"] for entry in correctness["references"].values()) and len(correctness["references"]) == 5
    assert correctness["demo"]["pass"] and correctness["demo"]["images"] == 4
    table = capsys.readouterr().out
    assert table == (tmp_path / "gpu_check.md").read_text() and table.startswith("# GPU check: CPU")
    assert all(f"| {name} |" in table for name in SECTIONS) and "GPU-h" in table


def test_an_unknown_section_is_refused_with_the_valid_names(capsys):
    with pytest.raises(SystemExit) as exit_:
        gpu_check.main(["--device", "cpu", "--sections", "speed"])
    assert exit_.value.code == 2
    assert "valid: correctness, throughput, gradient, projection, numerics" in capsys.readouterr().err
