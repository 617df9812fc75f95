"""Which gradient an attack followed, in words for summaries: exact (backprop through the discretised solver) or the
torchsde adjoint, which is approximate; the audit's measured fidelity of the adjoint is quoted for the run's dt."""
from __future__ import annotations

from typing import Any

# adjoint vs exact input gradient on the demo models (experiments.gradient_audit, README "Gradient audit"):
# dt -> (purifier, median cosine, median norm ratio, images)
ADJOINT_FIDELITY: dict[float, tuple[str, float, float, int]] = {}


def gradient_statement(purifier: dict[str, Any]) -> str:
    """One sentence naming the attack's gradient path of a resolved purifier config."""
    backend = purifier.get("backend")
    if backend is None:
        return "gradient: exact (no diffusion solver in the defense)"
    guidance = f", guidance term {'differentiated' if purifier.get('grad_mode') == 'full' else 'detached'}"
    if backend == "exact":
        return f"gradient: exact (backprop through the discretised solver, dt {purifier['dt']}){guidance}"
    measured = ADJOINT_FIDELITY.get(float(purifier["dt"]))
    figure = (f"; the audit measured cosine {measured[1]:.2f}, norm ratio {measured[2]:.2f} to the exact gradient "
              f"at this dt ({measured[0]}, {measured[3]} images)" if measured else
              "; not audited at this dt: run python -m experiments.gradient_audit")
    return f"gradient: torchsde adjoint, APPROXIMATE (dt {purifier['dt']}){guidance}{figure}"
