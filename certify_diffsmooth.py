"""Certify (or predict with) DiffSmooth (Zhang et al. 2023) by Cohen et al.'s randomized smoothing.

Usage: python certify_diffsmooth.py --config configs/diffsmooth/cifar10.yml --sigma 0.5 [--N 100000] [--dry-run]
Writes <output_dir>/<mode>_sigma<sigma>.tsv (Cohen's columns, one flushed line per image; a rerun resumes), its
sidecar .json (config hash, resolved config, seeds, package versions, git hash), a Markdown table and a PNG plot.
Paths in the YAML: the config's folder, then the repository root (utils.paths); --output_dir resolves against the
working directory.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Optional, Sequence

from certification.certify import MODES
from certification.pipeline import Outputs, load_config, resolved_config, run
from utils.cli import parser as cli_parser
from utils.cli import add_spine, command_overrides, dry_run_text, run_main, setup_logging
from utils.paths import resolve_path
from utils.precision import numerics

log = logging.getLogger("certify_diffsmooth")

CLI_KEYS = {"output_dir": "run.output_dir", "sigma": "smoothing.sigma", "m": "smoothing.m", "local_sigma": "smoothing.local_sigma",
            "mode": "certify.mode", "N0": "certify.N0", "N": "certify.N", "alpha": "certify.alpha",
            "seed": "certify.seed", "skip": "certify.skip", "max_images": "certify.max_images",
            "num_sub": "data.num_sub", "data_seed": "data.data_seed", "batch": "run.batch", "device": "run.device"}


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    """The command line; every option left out keeps the config's value."""
    parser = cli_parser(__doc__)
    add_spine(parser, "DiffSmooth YAML (configs/diffsmooth/*.yml)")
    for name, kind in (("sigma", float), ("m", int), ("local_sigma", float), ("N0", int), ("N", int),
                       ("alpha", float), ("seed", int), ("skip", int), ("max_images", int), ("num_sub", int),
                       ("data_seed", int), ("batch", int), ("device", str)):
        parser.add_argument(f"--{name}", type=kind, default=None, help=f"sets {CLI_KEYS[name]}")
    parser.add_argument("--mode", choices=sorted(MODES), default=None, help="sets certify.mode")
    parser.add_argument("--output_dir", type=lambda s: str(Path(s).expanduser().resolve()), default=None,
                        help="results folder (default: run.output_dir, relative to the config file)")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> Outputs | None:
    """Certify as the command line says (user errors raise); None for --dry-run, which prints the resolved config."""
    args = parse_args(argv)
    file = load_config(args.config, command_overrides(args, CLI_KEYS))
    output_dir = resolve_path(file.run.output_dir, args.config.resolve().parent)
    if args.dry_run:
        sys.stdout.write(dry_run_text(resolved_config(file), output_dir))
        return None
    with numerics():  # full float32: TF32 and autocast off (utils/precision.py)
        outputs = run(file, args.config, output_dir)
    sys.stdout.write(outputs.table.read_text())
    return outputs


def cli(argv: Optional[Sequence[str]] = None) -> int:
    """The process entry: exit code 0, 2 and one line on a user error, 130 and one line on Ctrl-C."""
    setup_logging()
    return run_main(lambda: main(argv), log)


if __name__ == "__main__":
    sys.exit(cli())
