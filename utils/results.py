"""Per-image results on disk: the run folder and its config header, append-only JSONL shards, and resuming.

A run folder holds config.yaml (the resolved config and its hash) and one JSONL file per writing process
(results.jsonl, or results.rank<r>.jsonl under torchrun). Every line is one image's record; a batch's lines
are appended with one write and fsync'd, a torn last line is cut off before the next append and skipped on
reading, and when an image has several records (a batch re-run after a crash) the last written one counts.
"""
from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Iterator

import yaml

from utils.labels import run_slug

CONFIG_FILE = "config.yaml"
RESULTS_GLOB = "results*.jsonl"
HASH_LENGTH = 8  # hex digits of the config hash in the run name

log = logging.getLogger(__name__)


class RunDirError(RuntimeError):
    """A results folder belongs to another config, or its records are inconsistent."""


def hashed_config(resolved: dict[str, Any]) -> dict[str, Any]:
    """The part of the resolved config that defines the experiment: all but eval.output_dir (where results go)."""
    config = copy.deepcopy(resolved)
    config.get("eval", {}).pop("output_dir", None)
    return config


def config_hash(resolved: dict[str, Any]) -> str:
    """sha256 hex digest of the canonical JSON of hashed_config(resolved)."""
    canonical = json.dumps(hashed_config(resolved), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def run_name(config_path: Path, resolved: dict[str, Any], digest: str) -> str:
    """<config stem>_<method, t*, dt, lambda, grads, backend, attacks>_seed<S>_data<D>_<short hash> (utils.labels)."""
    return (f"{Path(config_path).stem}_{run_slug(resolved)}_seed{resolved['eval']['seed']}"
            f"_data{resolved['data']['data_seed']}_{digest[:HASH_LENGTH]}")


def claim_run_dir(run_dir: Path, resolved: dict[str, Any], digest: str, write: bool) -> None:
    """Create run_dir with config.yaml (when `write`), or check that the config.yaml there has hash `digest`."""
    header = run_dir / CONFIG_FILE
    if header.is_file():
        stored = yaml.safe_load(header.read_text()) or {}
        if stored.get("config_hash") != digest:
            raise RunDirError(f"{run_dir} holds results of another config (hash {stored.get('config_hash')}, "
                              f"this run {digest}); pick another --output_dir or delete that folder")
        return
    if not write:
        raise RunDirError(f"{header} is missing; rank 0 should have written it before the barrier")
    run_dir.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump({"config_hash": digest, "config": resolved}, sort_keys=False)
    partial = header.with_suffix(".yaml.tmp")
    partial.write_text(text)
    os.replace(partial, header)


def shard_file(run_dir: Path, rank: int, world_size: int) -> Path:
    """results.jsonl for a single process, results.rank<r>.jsonl for rank r of a torchrun job."""
    return run_dir / ("results.jsonl" if world_size == 1 else f"results.rank{rank}.jsonl")


def cut_torn_line(path: Path) -> None:
    """Truncate `path` after its last newline, dropping a line a killed process left half-written."""
    if not path.is_file():
        return
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end != len(data):
        log.warning("%s: dropping a half-written last line (%d bytes)", path, len(data) - end)
        with path.open("r+b") as f:
            f.truncate(end)


class ResultWriter:
    """Appends records to one JSONL file: each call is one write of whole lines, flushed and fsync'd."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        cut_torn_line(self.path)

    def append(self, records: list[dict[str, Any]]) -> None:
        """Write `records` (one JSON line each, stamped with written_at in ns) and fsync."""
        stamp = time.time_ns()
        payload = "".join(json.dumps({**r, "written_at": stamp}, sort_keys=True) + "\n" for r in records)
        data = memoryview(payload.encode())
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            while data:
                data = data[os.write(fd, data):]
            os.fsync(fd)
        finally:
            os.close(fd)


def iter_lines(path: Path) -> Iterator[dict[str, Any]]:
    """The records of one JSONL file; an undecodable line (torn by a kill) is skipped with a warning."""
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield json.loads(line)
        except json.JSONDecodeError:
            log.warning("%s:%d: skipping a half-written line", path, number)


def read_records(run_dir: Path) -> dict[int, dict[str, Any]]:
    """{dataset index: its last written record} over every results*.jsonl file in run_dir."""
    latest: dict[int, dict[str, Any]] = {}
    for path in sorted(Path(run_dir).glob(RESULTS_GLOB)):
        for record in iter_lines(path):
            index = int(record["index"])
            if index not in latest or record["written_at"] >= latest[index]["written_at"]:
                latest[index] = record
    return latest


def ordered_records(records: dict[int, dict[str, Any]], indices: list[int]) -> list[dict[str, Any]]:
    """The records of `indices` in subset order; fails if one is missing."""
    missing = [i for i in indices if i not in records]
    if missing:
        raise RunDirError(f"{len(missing)} image(s) have no result (first: dataset index {missing[0]}); "
                          "rerun the same command to finish them")
    return [records[i] for i in indices]
