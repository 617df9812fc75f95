"""One way to write a file (a temp file in the same folder, fsync'd, then renamed) and to fingerprint one."""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

CHUNK = 1 << 20


def atomic_write(path: str | Path, write: Callable[[str], None]) -> None:
    """write(temp path), fsync, then rename over `path`: a reader sees the old file or the new one, never half.

    On any failure (a full disk, an unwritable folder) the temp file is removed and the error propagates.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp_name)
        with open(tmp_name, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, path)
    finally:
        if os.path.exists(tmp_name):
            os.remove(tmp_name)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write text (UTF-8) to path atomically (atomic_write)."""
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def config_digest(data: Any, default: Callable[[Any], Any] | None = None) -> str:
    """The one config hash: sha256 hex digest of data's canonical JSON (sorted keys, compact separators)."""
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), default=default)
    return hashlib.sha256(canonical.encode()).hexdigest()


def file_sha256(path: str | Path) -> str:
    """sha256 hex digest of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()
