"""Which gradient an attack followed, in words for summaries: exact (backprop through the discretised solver) or the
torchsde adjoint, which is approximate; the audit's measured fidelity of the adjoint is quoted for the run's dt."""
from __future__ import annotations

from typing import Any

# adjoint vs exact input gradient on the demo models (experiments.gradient_audit, README "Gradient audit"), by dt
ADJOINT_FIDELITY: dict[float, str] = {
    0.01: "cosine 0.02 and 66x the norm of the exact gradient (median of 4 demo images, COUP)",
    0.002: "cosine 0.16 and 7.6x the norm of the exact gradient (median of 4 demo images, COUP)",
    0.001: "cosine 0.48 and 2.0x the norm of the exact gradient (median of 4 demo images, COUP)",
}


# what the attack's backward sees of the guidance term, by grad_mode
GUIDANCE_PATHS: dict[str, str] = {
    "full": "differentiated",
    "detached": "detached",
    "surrogate": ("through a SURROGATE (softplus beta {surrogate_beta:g} for the classifier's ReLU in the backward "
                  "only; the forward is exact)"),
}


def gradient_statement(purifier: dict[str, Any]) -> str:
    """One sentence naming the attack's gradient path of a resolved purifier config."""
    backend = purifier.get("backend")
    if backend is None:
        return "gradient: exact (no diffusion solver in the defense)"
    guided = purifier.get("guidance_scale") not in (None, 0, 0.0)
    mode = str(purifier.get("grad_mode"))
    guidance = f", guidance term {GUIDANCE_PATHS.get(mode, mode).format(**purifier)}" if guided else ""
    if backend == "exact":
        return f"gradient: exact (backprop through the discretised solver, dt {purifier['dt']}){guidance}"
    measured = ADJOINT_FIDELITY.get(float(purifier["dt"]))
    figure = (f"; the gradient audit at this dt: {measured}" if measured else
              "; not audited at this dt: run python -m experiments.gradient_audit")
    return f"gradient: torchsde adjoint, APPROXIMATE (dt {purifier['dt']}){guidance}{figure}"
