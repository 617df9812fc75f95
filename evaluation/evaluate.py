"""One batch of the evaluation: clean predictions, every configured attack, and the per-image records.

Batches are fixed slices of the subset order (so resuming and sharding never change a batch). Every batch is
attacked with the same run seed derive(eval.seed, ATTACK_RUN), from which the attacks derive each image's noise
by (seed, dataset index, stage), and the clean forward of image i uses the noise seed derive(eval.seed, i,
CLEAN_NOISE): an image's record depends on the config and its dataset index, not on the batch size or sharding
(AutoAttack excepted: it draws its own noise per batch).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Optional

import torch
from torch import nn

from attacks.accounting import measured
from attacks.common import AttackOutput, score_samples
from attacks.registry import Attack, build_attack
from attacks.traces import encode_history
from runners.defended import DefendedClassifier, in_chunks
from runners.noise import NoiseSource
from runners.purifiers import IdentityPurifier
from evaluation.experiment import AttackSpec, Experiment
from evaluation.results import ImageRecord
from utils.seeds import ATTACK_SEED_BITS, SeedStage, derive_seeds

# progress hook of a batch: (attack key, iteration done, iterations), see utils.progress.Progress.step
StageCallback = Callable[[str, int, int], None]


@dataclass(frozen=True)
class Batch:
    """Batch `number`: positions [start, stop) of the subset order."""

    number: int
    start: int
    stop: int


@dataclass(frozen=True)
class Models:
    """The defended model and the bare classifier, both DefendedClassifiers (the latter with no purifier)."""

    defended: DefendedClassifier
    classifier: DefendedClassifier


@dataclass(frozen=True)
class AttackRun:
    """A configured attack under its unique result key."""

    key: str
    spec: AttackSpec
    attack: Attack


def plan_batches(n_images: int, batch_size: int) -> list[Batch]:
    """Consecutive batches of `batch_size` over n_images positions (the last may be smaller)."""
    return [Batch(b, start, min(start + batch_size, n_images))
            for b, start in enumerate(range(0, n_images, batch_size))]


def pending_batches(batches: list[Batch], indices: list[int], done: set[int], rank: int = 0,
                    world_size: int = 1) -> list[Batch]:
    """Rank r's batches (numbers r, r + N, ...) that still have an image without a record."""
    return [b for b in batches if b.number % world_size == rank
            and not all(i in done for i in indices[b.start:b.stop])]


def attack_seed(seed: int) -> int:
    """The attack seed of every batch: a hash of (eval.seed, ATTACK_RUN), < 2^31 (never the batch number)."""
    return int(derive_seeds(seed, SeedStage.ATTACK_RUN)) % (1 << ATTACK_SEED_BITS)


def clean_noise_seeds(seed: int, indices: torch.Tensor) -> torch.Tensor:
    """(B,) purification noise seeds of the clean forward: a hash of (eval.seed, dataset index)."""
    return derive_seeds(seed, indices, SeedStage.CLEAN_NOISE)


def attack_key(spec: AttackSpec) -> str:
    """'pgd_eot' for an adaptive attack, 'pgd_eot_transfer' for one crafted on the bare classifier."""
    return spec.name if spec.target == "defended" else f"{spec.name}_transfer"


def attack_keys(specs: tuple[AttackSpec, ...]) -> list[str]:
    """A unique result key per attack: attack_key(spec), repeats suffixed _2, _3, ..."""
    keys, seen = [], {}
    for spec in specs:
        base = attack_key(spec)
        seen[base] = seen.get(base, 0) + 1
        keys.append(base if seen[base] == 1 else f"{base}_{seen[base]}")
    return keys


def attack_runs(experiment: Experiment) -> list[AttackRun]:
    """The experiment's attacks, built, each under its unique key."""
    return [AttackRun(key, spec, build_attack(spec.name, spec.config))
            for key, spec in zip(attack_keys(experiment.attacks), experiment.attacks)]


def make_models(defended: DefendedClassifier, classifier: nn.Module, device: torch.device,
                max_batch: Optional[int] = None) -> Models:
    """Models on `device`, each forward in chunks of at most max_batch rows (eval.max_batch); the bare classifier is
    wrapped with the identity purifier (BPDA then works on it too)."""
    defended.max_batch = max_batch
    bare = DefendedClassifier(IdentityPurifier(), classifier, max_batch).eval()
    return Models(defended.to(device), bare.to(device))


def reseed_unseeded_noise(model: nn.Module, seed: int) -> None:
    """Restart the fresh-per-call purification noise of `model` (calls without noise_seeds) from `seed`.

    AutoAttack calls model(x) without noise seeds; reseeding per batch makes those draws depend on the
    batch alone, not on the batches this process ran before. Fixed noise is left as it is.
    """
    for module in model.modules():
        noise = getattr(module, "noise", None)
        if isinstance(noise, NoiseSource) and not noise.fixed:
            module.noise = NoiseSource(seed)


@torch.no_grad()
def clean_outcomes(models: Models, x: torch.Tensor, seeds: torch.Tensor) -> dict[str, Any]:
    """Clean predictions (B,) of both models, the defended logits (B, K), and the per-image min / max / sum of the
    purified images (the sum is a checksum of the purification noise)."""
    purified = in_chunks(models.defended.purifier, x, seeds, models.defended.max_batch)
    logits = models.defended.classifier(purified)
    bare = models.classifier(x).argmax(dim=-1)
    flat = purified.flatten(1)
    return {"defended": logits.argmax(dim=-1), "classifier": bare, "logits": logits, "min": flat.min(dim=1).values,
            "max": flat.max(dim=1).values, "sum": flat.double().sum(dim=1)}


def logit_margin(logits: torch.Tensor, label: int) -> float:
    """logits[label] - max of the other logits, for one image's logits (K,): > 0 iff the prediction is correct."""
    others = torch.cat([logits[:label], logits[label + 1:]])
    return float(logits[label] - others.max())


def _scores(output: AttackOutput, b: int) -> dict[str, Any]:
    """Image b's predictions and correctness under each scoring rule."""
    return {"predictions": {rule: int(p[b]) for rule, p in output.predictions.items()},
            "correct": {rule: bool(c[b]) for rule, c in output.correct.items()}}


def run_attack(run: AttackRun, models: Models, x: torch.Tensor, y: torch.Tensor, indices: torch.Tensor, seed: int,
               on_step: Optional[StageCallback] = None) -> dict[str, AttackOutput]:
    """{'defended': output scored on the defended model}, and for a transfer attack 'classifier': its output on the
    bare classifier it was crafted on."""
    callback = None if on_step is None else partial(on_step, run.key)
    if run.spec.target == "classifier":
        source = run.attack.run(models.classifier, x, y, indices, seed, callback)
        predictions, correct = score_samples(models.defended, source.x_adv, y, indices, seed,
                                             run.spec.config.eval_samples)
        return {"defended": AttackOutput(source.x_adv, predictions, correct, source.flags), "classifier": source}
    return {"defended": run.attack.run(models.defended, x, y, indices, seed, callback)}


def classifier_output(run: AttackRun, models: Models, outputs: dict[str, AttackOutput], x: torch.Tensor,
                      y: torch.Tensor, indices: torch.Tensor, seed: int) -> AttackOutput:
    """The attack's output on the bare classifier (eval.evaluate_classifier): a transfer attack's own source, else
    the same attack run on the classifier (not part of the defended attack's cost)."""
    source = outputs.get("classifier")
    return source if source is not None else run.attack.run(models.classifier, x, y, indices, seed)


def evaluate_batch(models: Models, runs: list[AttackRun], x: torch.Tensor, y: torch.Tensor, indices: torch.Tensor,
                   batch: Batch, eval_seed: int, evaluate_classifier: bool, on_step: Optional[StageCallback] = None
                   ) -> tuple[list[ImageRecord], dict[str, dict[str, AttackOutput]]]:
    """Records (one per image) of batch x (B, C, H, W) in [0, 1] with labels y (B,) and dataset indices (B,),
    and the attack outputs by attack key and model; on_step(key, i, n) after each attack iteration."""
    seed = attack_seed(eval_seed)
    noise_seeds = clean_noise_seeds(eval_seed, indices)
    for model in (models.defended, models.classifier):
        reseed_unseeded_noise(model, seed)
    clean = clean_outcomes(models, x, noise_seeds)
    results, costs = {}, {}
    for run in runs:
        with measured(models.defended) as cost:
            outputs = run_attack(run, models, x, y, indices, seed, on_step)
        costs[run.key] = cost.per_image(x.shape[0])
        results[run.key] = {"defended": outputs["defended"]}
        if evaluate_classifier:
            results[run.key]["classifier"] = classifier_output(run, models, outputs, x, y, indices, seed)
    # network evaluations per attack are deterministic and sit in `attacks`; wall seconds sit apart (as written_at)
    seconds = {key: cost.pop("seconds") for key, cost in costs.items()}
    records = [dataclasses.replace(image_record(b, batch, seed, noise_seeds, y, indices, clean, results, costs),
                                   seconds=seconds) for b in range(x.shape[0])]
    return records, results


@torch.no_grad()
def example_images(models: Models, x: torch.Tensor, y: torch.Tensor, indices: torch.Tensor, eval_seed: int,
                   results: dict[str, dict[str, AttackOutput]], count: int) -> dict[str, Any]:
    """The first `count` images: clean, purified clean, and per attack x_adv and purified x_adv (all in [0, 1]),
    each purified image with the classifier's prediction (count,)."""
    keep = slice(0, count)
    seeds = clean_noise_seeds(eval_seed, indices[keep])
    purify, classify = models.defended.purifier, models.defended.classifier
    attacks = {}
    for key, out in results.items():
        purified = purify(out["defended"].x_adv[keep], seeds)
        attacks[key] = {"x_adv": out["defended"].x_adv[keep].cpu(), "purified": purified.cpu(),
                        "predicted": classify(purified).argmax(dim=-1).cpu()}
    clean = purify(x[keep], seeds)
    return {"x": x[keep].cpu(), "y": y[keep].cpu(), "indices": indices[keep].cpu(), "purified": clean.cpu(),
            "predicted": classify(clean).argmax(dim=-1).cpu(), "attacks": attacks}


def image_record(b: int, batch: Batch, seed: int, noise_seeds: torch.Tensor, y: torch.Tensor, indices: torch.Tensor,
                 clean: dict[str, torch.Tensor], results: dict[str, dict[str, AttackOutput]],
                 costs: Optional[dict[str, dict[str, float]]] = None) -> ImageRecord:
    """Image b's JSON record: index, label, seeds, clean predictions, purified range and sum, the defended model's
    clean logit margin, per-attack scores, flags, traces, details and network evaluations per image (costs)."""
    label = int(y[b])
    attacks = {}
    for key, outputs in results.items():
        attacks[key] = {model: _scores(output, b) for model, output in outputs.items()}
        attacks[key]["flags"] = outputs["defended"].flags
        defended = outputs["defended"]
        if defended.history:
            attacks[key]["history"] = encode_history(defended.history, b)
        if defended.extra:
            attacks[key]["extra"] = defended.extra[b]
        if costs is not None and key in costs:
            attacks[key]["cost"] = costs[key]
    return ImageRecord(
        index=int(indices[b]), batch=batch.number, label=label,
        seeds={"attack": seed, "clean_noise": int(noise_seeds[b])},
        clean={model: {"prediction": int(clean[model][b]), "correct": int(clean[model][b]) == label}
               for model in ("defended", "classifier")},
        purified_range=(float(clean["min"][b]), float(clean["max"][b])),
        purified_sum=float(clean["sum"][b]), clean_margin=logit_margin(clean["logits"][b], label),
        attacks=attacks,
    )

