"""The README's gradient-audit table from the audits under a folder (each written by experiments.gradient_audit).

    python -m experiments.audit_table --audits docs/gradient_audit --out docs/gradient_audit

One row per audit (purifier, dt): images within the finite-difference tolerance, and the median [min, max] over
the images of each comparison. Writes audit_table.md to --out and prints it.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from experiments.common import base_parser, run_cli, start_cli
from utils.files import atomic_write_text

log = logging.getLogger(__name__)
# (record keys holding the comparison, either order of a symmetric one; field; column title)
COMPARISONS = ((("adjoint_vs_exact",), "cosine", "adjoint vs exact: cosine"),
               (("adjoint_vs_exact",), "norm_ratio", "adjoint / exact norm"),
               (("detached_vs_full", "full_vs_detached"), "cosine", "detached vs full: cosine"),
               (("surrogate_vs_full",), "cosine", "softplus surrogate vs full: cosine"))


def spread(values: Sequence[float]) -> str:
    """'0.0213 [-0.01, 0.0508]': median [min, max] to 3 significant digits; '-' when there are none."""
    if not values:
        return "-"
    return f"{np.median(values):.3g} [{min(values):.3g}, {max(values):.3g}]"


def audit_row(audit: dict[str, Any]) -> dict[str, str]:
    """The table cells of one gradient_audit.json."""
    purifier, images = audit["metadata"]["config"]["purifier"], audit["images"]
    fd = [image["exact_vs_fd"] for image in images]
    worst = max(f["checks"]["gradient"]["best_rel_error"] for f in fd)
    row = {"purifier": purifier["name"], "dt": f"{purifier['dt']:g}" if "dt" in purifier else "-",
           "images": str(len(images)),
           "exact vs finite differences (within 1 %)": f"{sum(f['ok'] for f in fd)}/{len(fd)} "
                                                       f"(max rel. err. {worst:.1e})"}
    for keys, field, title in COMPARISONS:
        row[title] = spread([image[key][field] for image in images for key in keys if key in image])
    row["two noise draws: cosine"] = spread([image["noise_draws_cosine"] for image in images
                                             if "noise_draws_cosine" in image])
    return row


def markdown(rows: list[dict[str, str]]) -> str:
    """The rows as one markdown table, sorted by purifier then dt."""
    rows = sorted(rows, key=lambda r: (r["purifier"], -float(r["dt"]) if r["dt"] != "-" else 0.0))
    header = list(rows[0])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r[h] for h in header) + " |" for r in rows]) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> None:
    """CLI: collect every */gradient_audit.json under --audits into one table."""
    parser = base_parser("audit_table", __doc__.split("\n")[0])
    parser.add_argument("--audits", type=Path, required=True, help="folder holding the audit folders")
    _, args, out = start_cli(parser, argv)
    found = sorted(args.audits.glob("*/gradient_audit.json"))
    if not found:
        raise FileNotFoundError(f"no */gradient_audit.json under {args.audits}: run python -m "
                                "experiments.gradient_audit first")
    table = markdown([audit_row(json.loads(path.read_text())) for path in found])
    atomic_write_text(out / "audit_table.md", table)
    log.info("audit table of %d audit(s) -> %s\n%s", len(found), out / "audit_table.md", table)


if __name__ == "__main__":
    run_cli(main)
