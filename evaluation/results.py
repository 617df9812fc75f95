"""Per-image results on disk: the run folder and its config header, append-only JSONL shards, and resuming.

A run's identity is its resolved config, the content fingerprint (sha256) of every checkpoint the config names
and the code version; resuming a run whose checkpoint or code changed is refused, naming what changed.
A run folder holds config.yaml (the identity and the resolved config) and one JSONL file per writing process
(results.jsonl, or results.rank<r>.jsonl under torchrun). Every line is one image's record; a batch's lines
are appended with one write and fsync'd, a torn last line is cut off before the next append and skipped on
reading, and when an image has several records (a batch re-run after a crash) the last written one counts.
"""
from __future__ import annotations

import copy
import json
import logging
import os
import time
from pathlib import Path
import dataclasses
from dataclasses import dataclass
from typing import Any, Iterator, Mapping

import yaml

from utils.files import atomic_write_text, config_digest, file_sha256
from evaluation.labels import run_slug
from utils.paths import resolve_path
from utils.provenance import REPO_DIR, code_version

CONFIG_FILE = "config.yaml"
RESULTS_GLOB = "results*.jsonl"
HASH_LENGTH = 8  # hex digits of the config hash in the run name

log = logging.getLogger(__name__)


class RunDirError(ValueError):
    """A results folder belongs to another config, or its records are inconsistent."""


# keys that say where and how a run computes, not what: where results go, the device, rows per forward, GPU
# determinism, the exact solver's memory budget (the same records on one device: tests/test_eval.py, test_solvers.py)
RUNTIME_KEYS = (("eval", "output_dir"), ("eval", "device"), ("eval", "max_batch"), ("eval", "deterministic"),
                ("purifier", "graph_steps"))


def hashed_config(resolved: dict[str, Any]) -> dict[str, Any]:
    """The part of the resolved config that defines the experiment: all but the RUNTIME_KEYS."""
    config = copy.deepcopy(resolved)
    for section, key in RUNTIME_KEYS:
        config.get(section, {}).pop(key, None)
    return config


def config_hash(resolved: dict[str, Any]) -> str:
    """sha256 hex digest of the canonical JSON of hashed_config(resolved)."""
    return config_digest(hashed_config(resolved))


def run_name(config_path: Path, resolved: dict[str, Any], digest: str) -> str:
    """<config stem>_<method, t*, dt, lambda, grads, backend, attacks>_seed<S>_data<D>_<short hash> (evaluation.labels)."""
    return (f"{Path(config_path).stem}_{run_slug(resolved)}_seed{resolved['eval']['seed']}"
            f"_data{resolved['data']['data_seed']}_{digest[:HASH_LENGTH]}")


def checkpoint_paths(resolved: Mapping[str, Any], base_dir: Path) -> list[Path]:
    """Every existing file the config names under a 'checkpoint' key (any section), by the config path rule."""
    found: set[Path] = set()

    def walk(node: Any) -> None:
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        for key, value in items:
            if key == "checkpoint" and isinstance(value, str):
                found.add(resolve_path(value, Path(base_dir)).resolve())
            else:
                walk(value)

    walk(resolved)
    return sorted(p for p in found if p.is_file())


def checkpoint_key(path: Path, repo_dir: Path = REPO_DIR) -> str:
    """How a run header names a checkpoint: its path relative to the repository when inside it (so a moved or
    fresh checkout, or a worktree, resumes the same run), else the absolute path."""
    try:
        return path.resolve().relative_to(repo_dir.resolve()).as_posix()
    except ValueError:
        return str(path.resolve())


def fingerprints(paths: list[Path], cache: Mapping[str, Any],
                 repo_dir: Path = REPO_DIR) -> dict[str, dict[str, Any]]:
    """{checkpoint_key(path): {size, mtime_ns, sha256}}; the sha256 is taken from cache when key, size and mtime
    still match."""
    out = {}
    for path in paths:
        stat = path.stat()
        key = checkpoint_key(path, repo_dir)
        known = cache.get(key) or {}
        same = known.get("size") == stat.st_size and known.get("mtime_ns") == stat.st_mtime_ns
        out[key] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
                    "sha256": known["sha256"] if same and "sha256" in known else file_sha256(path)}
    return out


@dataclass(frozen=True)
class RunIdentity:
    """What a run's results depend on: the config hash, the code version and the checkpoints' contents."""

    config_hash: str
    code_version: str
    checkpoints: dict[str, dict[str, Any]]

    def changes(self, stored: Mapping[str, Any]) -> list[str]:
        """What differs from a stored header, in words (empty when this is the same run)."""
        changed = []
        if stored.get("code_version") != self.code_version:
            changed.append(f"the code changed (version {str(stored.get('code_version'))[:12]} -> "
                           f"{self.code_version[:12]})")
        before = {path: entry.get("sha256") for path, entry in (stored.get("checkpoints") or {}).items()}
        now = {path: entry["sha256"] for path, entry in self.checkpoints.items()}
        for path in sorted(set(before) | set(now)):
            if before.get(path) != now.get(path):
                changed.append(f"checkpoint {path} changed (sha256 {str(before.get(path))[:12]} -> "
                               f"{str(now.get(path))[:12]})")
        return changed


def run_identity(resolved: Mapping[str, Any], digest: str, base_dir: Path,
                 cache: Mapping[str, Any] | None = None) -> RunIdentity:
    """The identity of a run of `resolved`: fingerprints reuse `cache` (a stored header's) by path, size and mtime."""
    return RunIdentity(digest, code_version(), fingerprints(checkpoint_paths(resolved, base_dir), cache or {}))


def claim_run_dir(run_dir: Path, resolved: dict[str, Any], digest: str, base_dir: Path, write: bool) -> None:
    """Create run_dir with config.yaml (when `write`), or check that the run there has this identity."""
    header = run_dir / CONFIG_FILE
    if header.is_file():
        stored = yaml.safe_load(header.read_text()) or {}
        if stored.get("config_hash") != digest:
            raise RunDirError(f"{run_dir} holds results of another config (hash {stored.get('config_hash')}, "
                              f"this run {digest}); pick another --output_dir or delete that folder")
        changes = run_identity(resolved, digest, base_dir, stored.get("checkpoints")).changes(stored)
        if changes:
            raise RunDirError(f"cannot resume {run_dir}: {'; '.join(changes)} since it started; restore them, "
                              "or delete that folder (or pick another --output_dir) to start afresh")
        return
    if not write:
        raise RunDirError(f"{header} is missing; rank 0 should have written it before the barrier")
    identity = run_identity(resolved, digest, base_dir)
    header_data = {"config_hash": digest, "code_version": identity.code_version,
                   "checkpoints": identity.checkpoints, "config": resolved}
    atomic_write_text(header, yaml.safe_dump(header_data, sort_keys=False))


@dataclass(frozen=True)
class ImageRecord:
    """One image's result line, written by ResultWriter and read by the summary.

    clean: {model: {prediction, correct}}; attacks: {attack key: {model: {predictions, correct}, 'flags': {...}}}
    with model 'defended' or 'classifier', and when the attack gives them 'history' (encoded per-iteration traces,
    attacks.traces), 'extra' (e.g. the cascade stage that broke the image) and 'cost' (score-network and classifier
    evaluations per image, attacks.accounting); purified_range: (min, max) and purified_sum: the sum of the purified
    clean image; clean_margin: the defended model's clean logit of the label minus its best other logit;
    seconds: {attack key: wall seconds per image}, kept apart (as written_at) since it is not deterministic.
    """

    index: int
    batch: int
    label: int
    seeds: dict[str, int]
    clean: dict[str, dict[str, Any]]
    purified_range: tuple[float, float]
    purified_sum: float
    clean_margin: float
    attacks: dict[str, dict[str, Any]]
    written_at: int = 0
    seconds: dict[str, float] = dataclasses.field(default_factory=dict)

    def to_json(self) -> str:
        """The record as one JSON line (sorted keys, no newline)."""
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, data: Any, where: str) -> "ImageRecord":
        """Parse a decoded line; anything that is not a record of this format raises RunDirError naming `where`."""
        names = [f.name for f in dataclasses.fields(cls)]
        if not isinstance(data, dict) or set(data) != set(names):
            keys = sorted(data) if isinstance(data, dict) else type(data).__name__
            raise RunDirError(f"{where}: not a result line of this program (keys {keys}); move that file out of "
                              "the run folder, or delete the line")
        try:
            return cls(int(data["index"]), int(data["batch"]), int(data["label"]), dict(data["seeds"]),
                       dict(data["clean"]), tuple(data["purified_range"]), float(data["purified_sum"]),
                       float(data["clean_margin"]), dict(data["attacks"]), int(data["written_at"]),
                       {key: float(value) for key, value in dict(data["seconds"]).items()})
        except (TypeError, ValueError) as err:
            raise RunDirError(f"{where}: malformed result line ({err}); delete that line to recompute it") from None


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

    def append(self, records: list[ImageRecord]) -> None:
        """Write `records` (one JSON line each, stamped with written_at in ns) and fsync."""
        stamp = time.time_ns()
        payload = "".join(dataclasses.replace(r, written_at=stamp).to_json() + "\n" for r in records)
        data = memoryview(payload.encode())
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            while data:
                data = data[os.write(fd, data):]
            os.fsync(fd)
        finally:
            os.close(fd)


def iter_lines(path: Path) -> Iterator[ImageRecord]:
    """The records of one JSONL file. A torn last line (a kill mid-write) is skipped with a warning (the next
    append cuts it); an undecodable line before the end or a line of another format raises RunDirError."""
    data = path.read_bytes()
    lines = data.split(b"\n")
    torn = lines.pop() if lines else b""  # after the last newline: b"" unless the last write was cut short
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        where = f"{path}:{number}"
        try:
            decoded = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise RunDirError(f"{where}: not a JSON result line (a damaged file?); delete that line to recompute "
                              "its image, or move the file out of the run folder") from None
        yield ImageRecord.from_json(decoded, where)
    if torn.strip():
        log.warning("%s:%d: skipping a half-written last line (%d bytes)", path, len(lines) + 1, len(torn))


def read_records(run_dir: Path) -> dict[int, ImageRecord]:
    """{dataset index: its last written record} over every results*.jsonl file in run_dir. An image recorded twice
    with different results (beyond wall time; a batch recomputed after a change of batch size gives equal ones) is
    logged as a warning naming both files."""
    latest: dict[int, tuple[ImageRecord, Path]] = {}
    for path in sorted(Path(run_dir).glob(RESULTS_GLOB)):
        for record in iter_lines(path):
            earlier, earlier_path = latest.get(record.index, (None, path))
            if earlier is not None and _result(earlier) != _result(record):
                kept = path if record.written_at >= earlier.written_at else earlier_path
                log.warning("dataset index %d has two different records, in %s and %s; using the later one (%s)",
                            record.index, earlier_path, path, kept)
            if earlier is None or record.written_at >= earlier.written_at:
                latest[record.index] = record, path
    return {index: record for index, (record, _) in latest.items()}


def _result(record: ImageRecord) -> ImageRecord:
    """The record without its wall-time fields (written_at, seconds), which differ between two computations."""
    return dataclasses.replace(record, written_at=0, seconds={})


def ordered_records(records: dict[int, ImageRecord], indices: list[int]) -> list[ImageRecord]:
    """The records of `indices` in subset order; fails if one is missing."""
    missing = [i for i in indices if i not in records]
    if missing:
        raise RunDirError(f"{len(missing)} image(s) have no result (first: dataset index {missing[0]}); "
                          "rerun the same command to finish them")
    return [records[i] for i in indices]
