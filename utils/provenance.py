"""What produced a result: installed package versions, the git commit, the command line and the start time."""
from __future__ import annotations

import hashlib
import importlib.metadata
import platform
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional, Sequence

from utils.precision import precision_flags

REPO_DIR = Path(__file__).resolve().parents[1]
PACKAGES = ("torch", "torchvision", "torchsde", "numpy", "scipy", "pyautoattack", "robustbench", "timm",
            "matplotlib", "PyYAML")
NOT_INSTALLED = "not installed"


def package_versions(packages: Sequence[str] = PACKAGES) -> dict[str, str]:
    """{'python': version, package: installed version or 'not installed'} for the packages results depend on."""
    versions = {"python": platform.python_version()}
    for package in packages:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = NOT_INSTALLED
    return versions


def _git(repo_dir: Path, *args: str) -> Optional[str]:
    """Output of `git -C repo_dir args`, or None when git is missing, fails or times out."""
    try:
        done = subprocess.run(["git", "-C", str(repo_dir), *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def git_hash(repo_dir: Path = REPO_DIR) -> str:
    """The HEAD commit of repo_dir, with '+dirty' if tracked files changed; 'unknown' outside git."""
    head = _git(repo_dir, "rev-parse", "HEAD")
    status = _git(repo_dir, "status", "--porcelain", "--untracked-files=no")
    if head is None or status is None:
        return "unknown"
    return head + ("+dirty" if status else "")


def source_files(repo_dir: Path = REPO_DIR) -> list[Path]:
    """The project's Python sources: top-level scripts and every package folder (with __init__.py) but tests/."""
    packages = [p for p in sorted(repo_dir.iterdir()) if (p / "__init__.py").is_file() and p.name != "tests"]
    return sorted([*repo_dir.glob("*.py"), *(f for p in packages for f in p.rglob("*.py"))])


def code_version(repo_dir: Path = REPO_DIR) -> str:
    """sha256 over the project's sources (relative path and bytes): changes with any code change, git or not."""
    digest = hashlib.sha256()
    for path in source_files(repo_dir):
        digest.update(str(path.relative_to(repo_dir)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def provenance(repo_dir: Path = REPO_DIR, argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    """{'argv' (default sys.argv), 'started' (UTC, ISO 8601), 'versions' (package_versions), 'git' (git_hash),
    'numerics' (precision_flags: TF32 / autocast in effect)}."""
    return {"argv": list(sys.argv if argv is None else argv),
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "versions": package_versions(), "git": git_hash(repo_dir), "numerics": precision_flags()}
