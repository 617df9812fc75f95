"""Readable names for what a run defines: the method with t*, lambda, dt, gradient mode and backend, and each attack
with its budget; used by summary.md, the report's row labels and the run folder name."""
from __future__ import annotations

from typing import Any

# purifier fields shown where the purifier has them: (key, long format, short format for folder names)
PURIFIER_FIELDS = (("t_star", "t* {:g}", "t{:g}"), ("dt", "dt {:g}", "dt{:g}"), ("def_step", "{} steps", "{}steps"),
                   ("eps", "eps {:.4g}", "eps{:.4g}"), ("steps", "{} steps", "{}steps"), ("lr", "lr {:g}", "lr{:g}"))
# shown unless the purifier has guidance turned off (lambda 0: nothing for the gradient mode to choose)
GUIDANCE_FIELDS = (("guidance_scale", "lambda {:g}", "lam{:g}"), ("grad_mode", "{} grads", "{}"),
                   ("surrogate_beta", "softplus beta {:g}", "beta{:g}"))
BACKEND_FIELD = ("backend", "{} backend", "{}")


def purifier_parts(purifier: dict[str, Any], short: bool = False) -> list[str]:
    """['t* 0.1', 'dt 0.01', 'lambda 1', 'full grads', 'exact backend'] from a resolved purifier section."""
    fields = PURIFIER_FIELDS + (GUIDANCE_FIELDS if purifier.get("guidance_scale", 1) else ()) + (BACKEND_FIELD,)
    return [(fmt_short if short else fmt).format(purifier[key])
            for key, fmt, fmt_short in fields if purifier.get(key) is not None]


def purifier_label(purifier: dict[str, Any]) -> str:
    """'coup (t* 0.1, dt 0.01, lambda 1, full grads, exact backend)'; 'none (classifier only)' without a purifier."""
    if purifier["name"] == "none":
        return "none (classifier only)"
    return f"{purifier['name']} ({', '.join(purifier_parts(purifier))})"


def eps_text(eps: float) -> str:
    """'8-255' for 8/255, else '0.5' (4 significant digits)."""
    n = round(eps * 255)
    return f"{n}-255" if n > 0 and abs(eps * 255 - n) < 1e-6 else f"{eps:.4g}"


def attack_slug(attack: dict[str, Any]) -> str:
    """'pgd_eot-Linf-eps8-255-8x2' from a resolved attack entry (AutoAttack: its version instead of iterations)."""
    iterations = attack.get("iterations") or attack.get("n_iter")
    eot = attack.get("eot_samples") or attack.get("eot_iter") or 1
    parts = [attack["name"] + ("-transfer" if attack.get("target") == "classifier" else ""), attack.get("version"),
             attack.get("norm"), None if attack.get("eps") is None else f"eps{eps_text(attack['eps'])}",
             None if iterations is None else f"{iterations}x{eot}"]
    return "-".join(str(p) for p in parts if p)


def run_slug(resolved: dict[str, Any]) -> str:
    """'coup_t0.1_dt0.01_lam1_full_exact_pgd_eot-Linf-eps8-255-8x2': the defining values, for a folder name."""
    purifier = resolved["purifier"]
    parts = [purifier["name"], *([] if purifier["name"] == "none" else purifier_parts(purifier, short=True))]
    return "_".join(parts + [attack_slug(a) for a in resolved.get("attacks") or []])


# the values that define a purifier, in the order summary.md states them
DEFINING_FIELDS = (("t_star", "t* {:g}"), ("guidance_scale", "lambda {:g}"), ("dt", "dt {:g}"),
                   ("def_step", "{} steps"), ("eps", "eps {:.4g}"), ("steps", "{} steps"), ("lr", "lr {:g}"),
                   ("grad_mode", "grad_mode {}"), ("surrogate_beta", "surrogate softplus beta {:g}"),
                   ("backend", "backend {}"))


# the attack's view of a guidance term: nothing to state when the purifier has lambda 0
GUIDANCE_ONLY = frozenset({"grad_mode", "surrogate_beta"})


def defining_values(purifier: dict[str, Any]) -> str:
    """'t* 0.1, lambda 1, dt 0.01, grad_mode full, backend exact' (every field the purifier has; the guidance's
    gradient mode only when lambda != 0), or 'no purifier'."""
    unguided = purifier.get("guidance_scale", 1) == 0
    parts = [fmt.format(purifier[key]) for key, fmt in DEFINING_FIELDS
             if purifier.get(key) is not None and not (unguided and key in GUIDANCE_ONLY)]
    return ", ".join(parts) or "no purifier"


# class names of the bundled datasets, for figure labels (other datasets show the class number)
CLASS_NAMES = {
    "fashion-mnist": ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                      "Ankle boot"),
    "cifar10": ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
}


def class_name(dataset: str, label: int) -> str:
    """'Sneaker' for Fashion-MNIST label 7; the number itself for datasets without bundled names."""
    names = CLASS_NAMES.get(dataset, ())
    return names[label] if 0 <= label < len(names) else str(label)
