"""The layers and the lint are part of the suite: import-linter's contract (pyproject.toml) and `ruff check`."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from attacks.registry import ATTACKS
from classifiers.registry import CLASSIFIERS
from runners.defended import PURIFIERS
from utils.data import DATASETS
from utils.registry import Lazy, Registry

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def run_tool(name: str, *args: str) -> subprocess.CompletedProcess:
    """Run a console script of the venv in the repository root, capturing its output."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([str(BIN / name), *args], cwd=REPO, env=env, capture_output=True, text=True, check=False)


def test_import_layers_contract_is_kept():
    done = run_tool("lint-imports", "--no-cache")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "1 kept, 0 broken" in done.stdout


def test_ruff_check_is_clean():
    done = run_tool("ruff", "check", "--no-cache", ".")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]


def test_utils_imports_no_project_package():
    packages = {p.name for p in REPO.iterdir() if (p / "__init__.py").is_file()} - {"utils", "tests"}
    for path in (REPO / "utils").glob("*.py"):
        lines = [line.split() for line in path.read_text().splitlines() if line.startswith(("from ", "import "))]
        imported = {words[1].split(".")[0] for words in lines}
        assert not imported & packages, f"{path.name} imports {imported & packages}"


@pytest.mark.parametrize("registry", [ATTACKS, CLASSIFIERS, PURIFIERS, DATASETS], ids=lambda r: r.kind)
def test_every_listed_member_resolves(registry: Registry):
    for name in registry:
        assert registry.get(name) is not None and not isinstance(registry.get(name), Lazy), name


def test_lazy_member_is_imported_on_first_use_and_unknown_names_are_listed():
    registry: Registry[object] = Registry("thing", {"b": Lazy("math", "sqrt"), "a": len})
    assert registry.names() == ["a", "b"]
    assert registry.build("b", 9.0) == 3.0
    with pytest.raises(KeyError, match="unknown thing 'c'; valid names: a, b"):
        registry.get("c")
