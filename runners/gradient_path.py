"""Which gradient an attack followed, in words for summaries: per purifier kind, how the defended model's backward
treats the purifier (exact, the torchsde adjoint, which is approximate, or BPDA's identity); the attack may override
it (attacks.registry: straight-through attacks, transfer attacks crafted on the bare classifier)."""
from __future__ import annotations

from typing import Any, Callable

# adjoint vs exact input gradient on the Fashion-MNIST demo models, by audited purifier (COUP for a guided purifier,
# reverse-only for an unguided one) and dt: median (cosine, norm ratio) over the 4 images of
# docs/gradient_audit/<purifier>_dt<dt> (experiments.gradient_audit; tests/test_summary.py checks them)
ADJOINT_FIDELITY: dict[tuple[str, float], tuple[float, float]] = {
    ("coup", 0.01): (0.0213, 65.6), ("coup", 0.002): (0.157, 7.62), ("coup", 0.001): (0.478, 1.97),
    ("reverse_only", 0.01): (0.00919, 63.0), ("reverse_only", 0.002): (0.154, 7.11),
    ("reverse_only", 0.001): (0.48, 1.96)}
STRAIGHT_THROUGH = ("gradient: BPDA, the purifier's backward replaced by the identity (straight-through), not the "
                    "defense's gradient")
TRANSFER = ("gradient: none of the defense's (transfer: crafted on the bare classifier, the purifier never "
            "differentiated)")

# what the attack's backward sees of the guidance term, by grad_mode
GUIDANCE_PATHS: dict[str, str] = {
    "full": "differentiated",
    "detached": "detached",
    "surrogate": ("through a SURROGATE (softplus beta {surrogate_beta:g} for the classifier's ReLU in the backward "
                  "only; the forward is exact)"),
}
GradientText = Callable[[dict[str, Any]], str]


def adjoint_figure(dt: float, guided: bool) -> str:
    """The audit's measured adjoint fidelity at dt for a guided (COUP) or unguided (reverse-only) purifier, naming
    where it was measured, or how to measure it."""
    audited = "coup" if guided else "reverse_only"
    if (audited, dt) not in ADJOINT_FIDELITY:
        return "not audited at this dt: run python -m experiments.gradient_audit (or eval_sde_adv.py --gradient_audit N)"
    cosine, ratio = ADJOINT_FIDELITY[audited, dt]
    return (f"the gradient audit at this dt measured cosine {cosine:.2g} and {ratio:.2g}x the norm of the exact "
            f"gradient on the Fashion-MNIST demo models (median of 4 images, {audited}), not on this model")


def diffusion_gradient(purifier: dict[str, Any]) -> str:
    """COUP / DiffPure / reverse-only: exact backprop through the solver, or the torchsde adjoint (approximate)."""
    guided = purifier.get("guidance_scale") not in (None, 0, 0.0)
    mode = str(purifier.get("grad_mode"))
    guidance = f", guidance term {GUIDANCE_PATHS.get(mode, mode).format(**purifier)}" if guided else ""
    if purifier["backend"] == "exact":
        return f"gradient: exact (backprop through the discretised solver, dt {purifier['dt']}){guidance}"
    return (f"gradient: torchsde adjoint, APPROXIMATE (dt {purifier['dt']}){guidance}; "
            f"{adjoint_figure(float(purifier['dt']), guided)}")


def unrolled(what: str, **by_grad_mode: str) -> GradientText:
    """A purifier differentiated by backprop through `what` (formatted with its config), unless its grad_mode is
    one of by_grad_mode's keys (e.g. bpda=STRAIGHT_THROUGH)."""
    return lambda purifier: by_grad_mode.get(str(purifier.get("grad_mode")),
                                             f"gradient: exact (backprop through {what.format(**purifier)})")


def no_purifier(purifier: dict[str, Any]) -> str:
    """No defense: the attack differentiates the classifier itself."""
    return "gradient: exact (no purifier: the classifier's own gradient)"
