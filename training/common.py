"""What the training scripts share: the --config / --dry-run entry point, atomic text files, the model card's end."""
from __future__ import annotations

import logging
import platform
import sys
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
import yaml

from classifiers.registry import resolve_path
from utils.cli import parser as cli_parser
from utils.cli import add_spine, apply_overrides, command_overrides, dry_run_text, run_main, setup_logging
from utils.config import from_dict, read_yaml, to_dict
from utils.files import atomic_write_text


def write_text_atomic(text: str, path: Path) -> None:
    """Write text to path atomically (utils.files)."""
    atomic_write_text(path, text)


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
                argv: Optional[Sequence[str]] = None) -> int:
    """`--config FILE [--set KEY=VALUE] [--dry-run]` (utils.cli): read FILE into config_type, then run(config, FILE);
    --dry-run prints the resolved config and where the weights go. Returns the exit code (2: user error)."""
    parser = cli_parser(description)
    add_spine(parser, "YAML training config")
    args = parser.parse_args(argv)
    setup_logging()

    def main() -> None:
        raw = apply_overrides(read_yaml(args.config), command_overrides(args, {}))
        config = from_dict(config_type, raw, str(args.config))
        if args.dry_run:
            sys.stdout.write(dry_run_text(to_dict(config), resolve_path(config.output, args.config.parent).resolve()))
            return
        run(config, args.config)

    return run_main(main, log)
