"""The README's gradient-audit table from the audits under a folder (each written by experiments.gradient_audit).

    python -m experiments.audit_table --audits docs/gradient_audit --out docs/gradient_audit

One row per audit (purifier, dt): images whose gradient passes every finite-difference direction (tolerance from
the audits, a fraction of |g|) with the largest error, and the median [min, max] over the images of each
comparison any audit has. Writes audit_table.md to --out and prints it.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from experiments.common import base_parser, run_cli, start_cli
from experiments.gradient_audit import AUDIT_FILE
from utils.files import atomic_write_text

log = logging.getLogger(__name__)
# (record keys holding the comparison, either order of a symmetric one; field; column title)
COMPARISONS = ((("adjoint_vs_exact",), "cosine", "adjoint vs exact: cosine"),
               (("adjoint_vs_exact",), "norm_ratio", "adjoint / exact norm"),
               (("detached_vs_full", "full_vs_detached"), "cosine", "detached vs full: cosine"),
               (("surrogate_vs_full",), "cosine", "softplus surrogate vs full: cosine"),
               (("surrogate_vs_detached",), "cosine", "softplus surrogate vs detached: cosine"))
NOISE_DRAWS = "two noise draws: cosine"
OPTIONAL = {title for _, _, title in COMPARISONS} | {NOISE_DRAWS}  # columns left out when no audit has them


def spread(values: Sequence[float]) -> str:
    """'0.0213 [-0.01, 0.0508]': median [min, max] to 3 significant digits; '-' when there are none."""
    if not values:
        return "-"
    return f"{np.median(values):.3g} [{min(values):.3g}, {max(values):.3g}]"


def fd_tolerances(audits: Sequence[dict[str, Any]]) -> list[float]:
    """The distinct finite-difference tolerances (fractions of |g|) of the audits' images, sorted."""
    return sorted({image["exact_vs_fd"]["tolerance"] for audit in audits for image in audit["images"]})


def fd_title(tolerance: float) -> str:
    """The finite-difference column's title at a tolerance of 0.01: '... (within 1 % of the gradient norm)'."""
    return f"exact vs finite differences (within {100 * tolerance:g} % of the gradient norm)"


def audit_row(audit: dict[str, Any]) -> dict[str, str]:
    """The table cells of one gradient_audit.json."""
    purifier, images = audit["metadata"]["config"]["purifier"], audit["images"]
    fd = [image["exact_vs_fd"] for image in images]
    (tolerance,) = fd_tolerances([audit])
    worst = max(f["worst_error"] for f in fd)
    row = {"purifier": purifier["name"], "dt": f"{purifier['dt']:g}" if "dt" in purifier else "-",
           "images": str(len(images)),
           fd_title(tolerance): f"{sum(f['ok'] for f in fd)}/{len(fd)} (max err. {worst:.1e})"}
    for keys, field, title in COMPARISONS:
        row[title] = spread([image[key][field] for image in images for key in keys if key in image])
    row[NOISE_DRAWS] = spread([image["noise_draws_cosine"] for image in images if "noise_draws_cosine" in image])
    return row


def markdown(rows: list[dict[str, str]]) -> str:
    """The rows as one markdown table, sorted by purifier then dt, without the optional columns all rows lack."""
    rows = sorted(rows, key=lambda r: (r["purifier"], -float(r["dt"]) if r["dt"] != "-" else 0.0))
    header = [h for h in rows[0] if h not in OPTIONAL or any(r[h] != "-" for r in rows)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r[h] for h in header) + " |" for r in rows]) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> None:
    """CLI: collect every */gradient_audit.json under --audits into one table."""
    parser = base_parser("audit_table", __doc__.split("\n")[0])
    parser.add_argument("--audits", type=Path, required=True, help="folder holding the audit folders")
    _, args, out = start_cli(parser, argv)
    found = sorted(args.audits.glob(f"*/{AUDIT_FILE}"))
    if not found:
        raise FileNotFoundError(f"no */{AUDIT_FILE} under {args.audits}: run python -m "
                                "experiments.gradient_audit first")
    audits = [json.loads(path.read_text()) for path in found]
    tolerances = fd_tolerances(audits)
    if len(tolerances) > 1:
        raise ValueError(f"the audits under {args.audits} use different --fd-tolerance values "
                         f"{tolerances}: tabulate each tolerance from its own folder")
    table = markdown([audit_row(audit) for audit in audits])
    atomic_write_text(out / "audit_table.md", table)
    log.info("audit table of %d audit(s) -> %s\n%s", len(found), out / "audit_table.md", table)


if __name__ == "__main__":
    run_cli(main)
