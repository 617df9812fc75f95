"""The one rule for relative paths in a config: inputs in the config's folder first, then the repository root.

An input (checkpoint, data folder) is the first of <config folder>/path and <repository>/path that exists, so a
config copied to any folder keeps finding the bundled files (`pretrained/...`); one found in neither place fails
naming both. An output that does not exist yet goes under the repository root when the config lies inside the
repository (`results/...`; a path leading out of it, as `../../results` from configs/train/, counts from the
config's folder), and next to the config when the config lies elsewhere. An output folder outside both the
repository and the config's folder is refused.
"""
from __future__ import annotations

from pathlib import Path

from utils.config import ConfigError

REPO_ROOT = Path(__file__).resolve().parent.parent


def candidates(path: str | Path, base_dir: Path) -> list[Path]:
    """The places a config path may name: [path] if absolute, else [base_dir / path, REPO_ROOT / path] (normalised)."""
    path = Path(path).expanduser()
    if path.is_absolute():
        return [path]
    places = [(Path(base_dir) / path).resolve(), (REPO_ROOT / path).resolve()]
    return places[:1] if places[0] == places[1] else places


def inside(path: Path, folder: Path) -> bool:
    """Whether `path` is `folder` or lies below it (both resolved)."""
    return path.resolve().is_relative_to(folder.resolve())


def new_path(path: str | Path, base_dir: Path) -> Path:
    """Where an output that does not exist yet goes (see the module docstring)."""
    places = candidates(path, base_dir)
    if inside(Path(base_dir), REPO_ROOT) and inside(places[-1], REPO_ROOT):
        return places[-1]
    return places[0]


def resolve_path(path: str | Path, base_dir: Path) -> Path:
    """The first existing candidate, else new_path: the rule for any config path, input or output."""
    existing = [p for p in candidates(path, base_dir) if p.exists()]
    return existing[0] if existing else new_path(path, base_dir)


def find_file(path: str | Path, base_dir: Path, what: str, hint: str) -> Path:
    """The first candidate that is a file; else a one-line FileNotFoundError naming every place looked in and `hint`."""
    places = candidates(path, base_dir)
    for place in places:
        if place.is_file():
            return place
    looked = " and ".join(str(p) for p in places)
    raise FileNotFoundError(f"{what} not found: looked for {path} in {looked}; {hint}")


def output_folder(path: str | Path, base_dir: Path) -> Path:
    """Where results go: new_path, refused when outside both the repository and the config's folder."""
    folder = new_path(path, base_dir)
    if not Path(path).expanduser().is_absolute() and not (inside(folder, REPO_ROOT) or inside(folder, base_dir)):
        raise ConfigError(f"output folder {path} resolves to {folder}, outside the repository and the config's "
                          f"folder; give an absolute path or one below the config's folder (e.g. results/mine)")
    return folder
