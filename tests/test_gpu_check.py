"""The GPU check's CPU twin: `gpu_check.py --device cpu --tiny` runs every section end to end and prints its table."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import gpu_check

SECTIONS = ("correctness", "throughput", "gradient", "projection", "numerics")


def test_tiny_cpu_mode_writes_every_section_and_prints_the_table(tmp_path: Path, capsys) -> None:
    assert gpu_check.main(["--device", "cpu", "--tiny", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["mode"] == "tiny" and report["device"].startswith("CPU") and report["torch"]
    assert tuple(report["sections"]) == tuple(gpu_check.SECTIONS) == SECTIONS
    assert report["provenance"]["numerics"]["precision"] == "float32"
    for name, section in report["sections"].items():
        assert section["status"] == "ok", (name, section.get("error"), section.get("traceback"))
    sections = report["sections"]
    references = sections["correctness"]["references"]
    assert len(references) == 5 and all(r["pass"] for r in references.values())
    demo = sections["correctness"]["demo"]
    assert demo["pass"] and demo["images"] == 4 and demo["n_mismatches"] == 0
    coup = sections["throughput"]["ncsnpp_deep"]["coup"]
    assert set(coup) == {"1", "2"} and all(c["images_per_s"] > 0 and c["steps_timed"] == 2 for c in coup.values())
    assert all("evals_per_s" in c for c in sections["throughput"]["adm256"]["score_forward"].values())
    rows = sections["gradient"]["rows"]
    assert {"exact/full/checkpoint", "exact/detached/plain", "torchsde/detached (adjoint)"} <= set(rows)
    assert all(c["seconds_per_image"] > 0 and c["peak_memory_gib"] is None for r in rows.values() for c in r.values())
    standard = sections["projection"]["autoattack"]["standard"]["coup"]
    assert standard["counts"]["gradient_passes"] == 101 + 909 + 900 and standard["gpu_hours"] > 0
    assert sections["projection"]["autoattack"]["rand"]["coup"]["counts"]["gradient_passes"] == 2 * 101 * 20
    assert sections["numerics"]["max_rel_diff_tf32"] == 0.0
    table = (tmp_path / "gpu_check.md").read_text()
    assert capsys.readouterr().out == table and table.startswith("# GPU check: CPU")
    assert "| section | measurement | value |" in table and report["torch"] in table and "GPU-h" in table
    assert all(f"| {name} |" in table for name in SECTIONS)
    assert sum(line.startswith("| ") for line in table.splitlines()) > 30


def test_spent_budget_skips_the_selected_sections(tmp_path: Path, capsys) -> None:
    args = ["--device", "cpu", "--tiny", "--out", str(tmp_path), "--sections", "projection,numerics", "--budget_s", "0"]
    assert gpu_check.main(args) == 0
    sections = json.loads((tmp_path / "gpu_check.json").read_text())["sections"]
    assert list(sections) == ["projection", "numerics"]
    assert all(s["status"] == "skipped" for s in sections.values())
    assert "| projection | status | skipped" in capsys.readouterr().out


def test_an_unknown_section_is_refused_with_the_valid_names(capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        gpu_check.main(["--device", "cpu", "--sections", "speed"])
    assert exit_.value.code == 2
    assert "valid: correctness, throughput, gradient, projection, numerics" in capsys.readouterr().err
