"""The one command-line spine of every entry point: --config, named options, --set, --dry-run, one-line errors.

One precedence rule everywhere: the config file, then the named options, then each --set in the order given
(a later assignment wins). A user error (config, missing or broken file, unwritable output) ends with exit
code 2 and one line saying what is wrong and what to do; Ctrl-C ends with exit code 130 and one line.
"""
from __future__ import annotations

import argparse
import copy
import errno
import logging
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, NoReturn, TypeVar

import yaml

from utils.config import ConfigError, require

T = TypeVar("T")

# what a user can cause: ConfigError, CheckpointError and results-file errors are ValueErrors; unknown
# registry names are KeyErrors; missing, unreadable or unwritable files and a full disk are OSErrors
USER_ERRORS = (ValueError, KeyError, OSError)
EXIT_USER_ERROR, EXIT_INTERRUPTED = 2, 130
INTERRUPTED = "interrupted: finished work is saved; rerun the same command to resume"
OS_HINTS = {errno.ENOSPC: "free disk space (or pick another output folder), then rerun the same command",
            errno.EACCES: "pick a writable output folder (--output_dir or --set)",
            errno.EROFS: "pick a writable output folder (--output_dir or --set)",
            errno.ENOTDIR: "pick a writable output folder (--output_dir or --set): a file stands in the path"}
LOG_FORMAT = "%(asctime)s %(name)s %(levelname)s: %(message)s"


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The description as written, and every option's default ('from the config' when the option is unset)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        """The option's help followed by its default."""
        if action.default is argparse.SUPPRESS or action.required or action.help is None:
            return action.help or ""
        default = "from the config" if action.default in (None, []) else "%(default)s"
        return f"{action.help} (default: {default})"


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line on stderr and exit status 2."""

    def error(self, message: str) -> NoReturn:
        """Print '<prog>: <message> (see --help)' and exit 2."""
        self.exit(2, f"{self.prog}: {message} (see --help)\n")


def parser(description: str, prog: str | None = None) -> argparse.ArgumentParser:
    """The argument parser of every entry point: one-line usage errors (exit 2), each option's default in --help."""
    return OneLineParser(prog=prog, description=description, formatter_class=HelpFormatter)


def add_spine(parser: argparse.ArgumentParser, config_help: str, default_config: Path | None = None) -> None:
    """Add --config (required unless a default is given), --set and --dry-run, the options every entry point shares."""
    parser.add_argument("--config", type=Path, required=default_config is None, default=default_config,
                        help=config_help)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="any dotted config key, the value read as YAML (e.g. --set purifier.dt=0.002); applied "
                             "after the named options, a later one wins; repeatable")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the resolved config and the output folder, then exit (loads no model)")


def parse_assignments(items: Iterable[str]) -> dict[str, Any]:
    """{'a.b': value} from ['a.b=VALUE', ...]; each VALUE is parsed as YAML ('1' -> 1, '[1, 2]' -> list)."""
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        require(bool(sep) and bool(key.strip()), f"--set {item!r}: expected KEY=VALUE, e.g. --set purifier.dt=0.002")
        try:
            overrides[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as err:
            require(False, f"--set {item!r}: the value is not valid YAML ({' '.join(str(err).split())})")
    return overrides


def named_overrides(args: argparse.Namespace, keys: Mapping[str, str]) -> dict[str, Any]:
    """{config key: value} of the named options given on the command line (an option left out is None)."""
    return {key: getattr(args, option) for option, key in keys.items() if getattr(args, option) is not None}


def command_overrides(args: argparse.Namespace, keys: Mapping[str, str]) -> dict[str, Any]:
    """The named options, then the --set assignments: the one precedence rule (a later assignment wins)."""
    overrides = named_overrides(args, keys)
    for key, value in parse_assignments(args.set).items():
        overrides.pop(key, None)
        overrides[key] = value
    return overrides


def set_override(raw: Any, dotted: str, value: Any) -> None:
    """Set raw['a']['b'] = value for 'a.b'; 'attacks.*.eps' sets it in every attack entry, 'attacks.0.eps' in one."""
    head, _, rest = dotted.partition(".")
    if head == "*":
        require(isinstance(raw, list) and bool(rest), f"override {dotted}: '*' must stand for a list's entries")
        for entry in raw:
            set_override(entry, rest, value)
        return
    if isinstance(raw, list):
        require(head.isdigit() and int(head) < len(raw) and bool(rest),
                f"override {dotted}: '{head}' must be an entry number below {len(raw)} followed by a key")
        set_override(raw[int(head)], rest, value)
        return
    require(isinstance(raw, dict), f"override {dotted}: '{head}' is not inside a section")
    if rest:
        set_override(raw.setdefault(head, {}), rest, value)
    else:
        raw[head] = value


def apply_overrides(raw: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """A deep copy of raw with every dotted override applied in order."""
    out = copy.deepcopy(dict(raw))
    for dotted, value in overrides.items():
        set_override(out, dotted, copy.deepcopy(value))
    return out


def dry_run_text(resolved: Mapping[str, Any], output: Path) -> str:
    """What --dry-run prints: the resolved config as YAML, then the output folder as a YAML comment."""
    return yaml.safe_dump(dict(resolved), sort_keys=False) + f"# output folder: {output}\n"


def one_line(err: BaseException) -> str:
    """The error's message on one line; an OSError also says what to do about it."""
    if isinstance(err, KeyError) and err.args:
        message = str(err.args[0])
    elif isinstance(err, OSError) and err.strerror:
        where = f": {err.filename}" if err.filename else ""
        message = f"{err.strerror}{where}; {OS_HINTS.get(err.errno, 'check the path and its permissions')}"
    else:
        message = str(err) or type(err).__name__
    return " ".join(message.split())


def attempt(what: str, load: Callable[[], T], problems: list[str]) -> T | None:
    """load(), or None with "what: message" appended to problems when it fails with a user error."""
    try:
        return load()
    except USER_ERRORS as err:
        problems.append(f"{what}: {one_line(err)}")
        return None


def raise_problems(problems: list[str]) -> None:
    """One ConfigError naming every problem at once (what is missing and where to get it), if there is any."""
    if problems:
        numbered = "; ".join(f"({i}) {problem}" for i, problem in enumerate(problems, 1))
        raise ConfigError(f"cannot start, {len(problems)} problem(s), nothing was written: {numbered}")


def setup_logging(level: int | str = logging.INFO) -> None:
    """The log format every entry point shares."""
    logging.basicConfig(level=level, format=LOG_FORMAT)


def run_main(main: Callable[[], Any], log: logging.Logger) -> int:
    """main()'s exit code (an int it returns, else 0); a user error -> 2, Ctrl-C -> 130, each with one line."""
    try:
        result = main()
    except KeyboardInterrupt:
        log.error(INTERRUPTED)
        return EXIT_INTERRUPTED
    except USER_ERRORS as err:
        log.error("%s", one_line(err))
        return EXIT_USER_ERROR
    return result if isinstance(result, int) and not isinstance(result, bool) else 0
