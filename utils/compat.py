"""The one place for third-party wrinkles: robustbench's `import autoattack` and its need for pkg_resources.

robustbench 1.1.1 imports `autoattack` (and `autoattack.state`), but the package installed here is
`pyautoattack` (keyword-only API, same submodules); robustbench also imports pkg_resources, which
setuptools removed in version 81. Everything else imports robustbench and AutoAttack through here.
"""
from __future__ import annotations

import functools
import importlib
import sys
import warnings
from types import ModuleType

SETUPTOOLS_FIX = 'pip install "setuptools<81"'
AUTOATTACK_SUBMODULES = ("autoattack", "autopgd_base", "checks", "fab_base", "fab_projections",
                         "fab_pt", "other_utils", "square", "state")


def _import_pyautoattack() -> ModuleType:
    """The installed pyautoattack package, with a one-line error saying how to install it."""
    try:
        return importlib.import_module("pyautoattack")
    except ImportError:
        raise ImportError("AutoAttack is missing; install it with: pip install pyautoattack==0.2.0") from None


def install_autoattack_alias() -> None:
    """Make `autoattack` and `autoattack.<submodule>` resolve to pyautoattack (robustbench imports them)."""
    package = _import_pyautoattack()
    sys.modules.setdefault("autoattack", package)
    for name in AUTOATTACK_SUBMODULES:
        sys.modules.setdefault(f"autoattack.{name}", importlib.import_module(f"pyautoattack.{name}"))


def require_pkg_resources() -> None:
    """Raise a clear ImportError unless pkg_resources (setuptools < 81) is importable."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            importlib.import_module("pkg_resources")
    except ImportError:
        raise ImportError("robustbench 1.1.1 needs pkg_resources, which setuptools 81 removed; "
                          f"run: {SETUPTOOLS_FIX}") from None


@functools.cache
def import_robustbench() -> ModuleType:
    """The robustbench package (with robustbench.utils loaded), importable despite both wrinkles."""
    require_pkg_resources()
    install_autoattack_alias()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
        warnings.filterwarnings("ignore", message=".*torch.jit.interface.*", category=FutureWarning)
        warnings.filterwarnings("ignore", message="Importing from timm", category=DeprecationWarning)
        robustbench = importlib.import_module("robustbench")
        importlib.import_module("robustbench.utils")
    return robustbench


def autoattack_class() -> type:
    """pyautoattack's AutoAttack(model, *, attacks, device, eps, norm, seed, version)."""
    return _import_pyautoattack().AutoAttack


def autoattack_checks() -> ModuleType:
    """pyautoattack.checks: check_randomized, check_range_output, check_dynamic, check_n_classes, ..."""
    return importlib.import_module("pyautoattack.checks")


def reset_dynamic_check() -> None:
    """Zero the call counters check_dynamic keeps in a module global (never reset by pyautoattack itself)."""
    counters = autoattack_checks().funcs
    for name in counters:
        counters[name] = 0
