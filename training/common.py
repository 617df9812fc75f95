"""What the training scripts share: the --config / --dry-run entry point, atomic text files, the model card's end."""
from __future__ import annotations

import argparse
import logging
import os
import platform
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
import yaml

from classifiers.registry import resolve_path
from utils.config import from_dict, read_yaml, to_dict


def write_text_atomic(text: str, path: Path) -> None:
    """Write text to a temporary file next to path, then rename over it."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def card_tail(config: Any, config_path: Path, command: str, seconds: float) -> list[str]:
    """The model card's last lines: training time (machine, config.num_threads, torch), the command, the YAML config."""
    return [
        f"- Training time: {seconds / 60.0:.1f} min on {platform.machine()} CPU, {config.num_threads} thread(s), "
        f"torch {torch.__version__}.",
        f"- Reproduce: `{command.format(config=config_path)}`",
        "",
        "## Config",
        "",
        "```yaml",
        yaml.safe_dump(to_dict(config), sort_keys=False).rstrip(),
        "```",
        "",
    ]


def config_main(description: str, config_type: type, run: Callable[[Any, Path], Any], log: logging.Logger,
                argv: Optional[Sequence[str]] = None) -> None:
    """`--config FILE [--dry-run]`: read FILE into config_type, then run(config, FILE), or with --dry-run only log
    the resolved config and where its `output` and `checkpoint` paths point."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", type=Path, required=True, help="YAML training config")
    parser.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    config = from_dict(config_type, read_yaml(args.config), str(args.config))
    if args.dry_run:
        base = args.config.parent
        log.info("resolved config:\n%s\nweights -> %s\ncheckpoint -> %s",
                 yaml.safe_dump(to_dict(config), sort_keys=False), resolve_path(config.output, base).resolve(),
                 resolve_path(config.checkpoint, base).resolve())
        return
    run(config, args.config)
