"""Mutation check: put each deliberate bug into a fresh copy of the repository and run the tests that should
catch it; print which tests fail (kill) each mutation. Exit 1 if a mutation survives or does not apply.

    python benchmarks/mutations.py [--only NAME ...] [--list] [--baseline]

Each mutation is a text patch (old -> new, exactly once) of one named file. Not part of the test suite
(it runs the relevant test files once per mutation: about 5 minutes on 2 CPU cores).
"""
from __future__ import annotations

import argparse
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("mutations")
SKIPPED = {".venv", ".git", "__pycache__", ".pytest_cache"}
SKIPPED_AT_ROOT = {"results", "data"}  # run outputs and datasets, not code


def skip(folder: str, names: list[str]) -> set[str]:
    """copytree's ignore: caches and the venv everywhere, results/ and data/ at the top only."""
    top = SKIPPED_AT_ROOT if Path(folder) == ROOT else set()
    return {name for name in names if name in SKIPPED | top}


@dataclass(frozen=True)
class Mutation:
    """A deliberate bug: replace `old` by `new` (exactly once) in `path`, then run `tests` (pytest arguments)."""

    name: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]


GUIDANCE_TESTS = ("tests/test_formulas.py", "tests/test_purifiers.py")
MUTATIONS = (
    Mutation("diffpure forward noise uses the continuous alpha(t*)^2, not the discrete alpha_bar",
             "runners/purifiers.py",
             "self.alpha_bar = schedule.alpha_bar(schedule.step_of(config.t_star))",
             "self.alpha_bar = float(backbone.sde.marginal_mean_coeff(torch.tensor(config.t_star))) ** 2",
             GUIDANCE_TESTS),
    Mutation("guidance sign flipped", "runners/guidance.py",
             "return score + self.guidance_scale * grad", "return score - self.guidance_scale * grad", GUIDANCE_TESTS),
    Mutation("COUP output clamp dropped", "runners/purifiers.py",
             "return to_image_space(x_t.clamp(-1.0, 1.0) if clamp else x_t)", "return to_image_space(x_t)",
             GUIDANCE_TESTS),
    Mutation("exact solver's backward skips the last step", "runners/solvers.py",
             "for k in reversed(range(len(ctx.states))):", "for k in reversed(range(len(ctx.states) - 1)):",
             (*GUIDANCE_TESTS, "tests/test_solvers.py")),
    Mutation("PGD Linf projection removed", "attacks/pgd.py",
             "return delta.clamp(-eps, eps)", "return delta", ("tests/test_attacks.py",)),
    Mutation("resume treats a batch missing its last image as done", "evaluation/evaluate.py",
             "not all(i in done for i in indices[b.start:b.stop])",
             "not all(i in done for i in indices[b.start:b.stop - 1])",
             ("tests/test_eval.py", "-k", "batches_are_fixed or hand_written or sigkill or torchrun")),
    Mutation("guidance term doubled", "runners/guidance.py",
             "return score + self.guidance_scale * grad", "return score + 2.0 * self.guidance_scale * grad",
             GUIDANCE_TESTS),
    Mutation("chain factor 1/2 of the [0,1] -> [-1,1] map dropped", "runners/guidance.py",
             "    return grad, labels\n", "    return 2.0 * grad, labels\n", GUIDANCE_TESTS),
    Mutation("surrogate backward differentiates the exact ReLU classifier", "runners/guidance.py",
             'smooth, _ = _guidance_gradient(surrogate, x, True, labels, "given")',
             'smooth, _ = _guidance_gradient(classifier, x, True, labels, "given")', ("tests/test_surrogate.py",)),
    Mutation("surrogate changes the forward value, not only the backward", "runners/guidance.py",
             "return grad + (smooth - smooth.detach())", "return smooth", ("tests/test_surrogate.py",)),
    Mutation("label mode 'input' re-picks the argmax at every x_t", "runners/guidance.py",
             'LABEL_RULES.register("input")(LabelRule(path=_input_prediction, step=lambda logits, fixed: fixed))',
             'LABEL_RULES.register("input")(LabelRule(path=_input_prediction, '
             'step=lambda logits, fixed: logits.argmax(dim=1)))', GUIDANCE_TESTS),
    Mutation("exact solver never step-checkpoints (memory grows with the steps)", "runners/solvers.py",
             "if checkpoint and torch.is_grad_enabled() and x_start.requires_grad:",
             "if False and checkpoint and torch.is_grad_enabled() and x_start.requires_grad:",
             ("tests/test_memory.py", "tests/test_solvers.py")),
    Mutation("clean purification noise seeded by batch position, not dataset index", "evaluation/evaluate.py",
             "noise_seeds = clean_noise_seeds(eval_seed, indices)",
             "noise_seeds = clean_noise_seeds(eval_seed, torch.arange(len(indices)))",
             ("tests/test_eval.py", "-k", "noise_dependent or batch_size_changes or sigkill or torchrun")),
)


def mutated_copy(mutation: Mutation, workdir: Path) -> Path:
    """A copy of the repository (without its .venv) with `mutation` applied; raises if `old` is not found once."""
    copy = workdir / "repo"
    shutil.copytree(ROOT, copy, ignore=skip)
    target = copy / mutation.path
    text = target.read_text()
    if text.count(mutation.old) != 1:
        raise ValueError(f"{mutation.name}: the patch text occurs {text.count(mutation.old)} times in {mutation.path}")
    target.write_text(text.replace(mutation.old, mutation.new))
    return copy


def failing_tests(copy: Path, tests: tuple[str, ...]) -> list[str]:
    """Run pytest on `tests` in the mutated copy with this interpreter's environment (run scripts find its python
    on PATH); the failed or erroring tests (file::name)."""
    env = {**os.environ, "VENV": sys.prefix, "PATH": f"{Path(sys.prefix) / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(["bash", "run_tests.sh", "-q", "-rfE", "-p", "no:cacheprovider", *tests], cwd=copy,
                          env=env, capture_output=True, text=True)
    ids = re.findall(r"^(?:FAILED|ERROR) (\S+)", done.stdout, flags=re.MULTILINE)
    return sorted({re.sub(r"\[.*\]$", "", test_id) for test_id in ids})  # parametrised cases as one test


def baseline_failures(mutations: list[Mutation]) -> list[str]:
    """Tests that already fail on an unpatched copy (they would make every mutation look killed)."""
    with tempfile.TemporaryDirectory(prefix="mutation_") as workdir:
        copy = Path(workdir) / "repo"
        shutil.copytree(ROOT, copy, ignore=skip)
        return [t for tests in dict.fromkeys(m.tests for m in mutations) for t in failing_tests(copy, tests)]


def check(mutation: Mutation) -> list[str]:
    """The tests that kill `mutation` (empty: it survives)."""
    with tempfile.TemporaryDirectory(prefix="mutation_") as workdir:
        return failing_tests(mutated_copy(mutation, Path(workdir)), mutation.tests)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", default=None, help="substrings of the mutation names to run")
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    parser.add_argument("--baseline", action="store_true", help="first check that the unpatched code passes")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    chosen = [m for m in MUTATIONS if args.only is None or any(s in m.name for s in args.only)]
    if args.list:
        log.info("\n".join(f"{m.name} ({m.path})" for m in chosen))
        return 0
    if args.baseline and (broken := baseline_failures(chosen)):
        log.error("these tests fail without any mutation: %s", ", ".join(broken))
        return 2
    survived = []
    log.info("| mutation | file | killed by |\n|---|---|---|")
    for mutation in chosen:
        killers = check(mutation)
        survived += [] if killers else [mutation.name]
        log.info("| %s | `%s` | %s |", mutation.name, mutation.path,
                 ", ".join(f"`{k}`" for k in killers) or "**SURVIVED**")
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())
