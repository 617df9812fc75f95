"""One batch of the evaluation: clean predictions, every configured attack, and the per-image records.

Batches are fixed slices of the subset order (so resuming and sharding never change a batch), batch b
attacks with seed derive(eval.seed, b), and the clean forward of image i uses the noise seed
derive(eval.seed, i): a batch's results depend only on the config and the batch number.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from attacks.accounting import measured
from attacks.common import AttackOutput, score_samples
from attacks.registry import Attack, build_attack
from attacks.traces import encode_history
from runners.defended import DefendedClassifier
from runners.noise import NoiseSource
from runners.purifiers import IdentityPurifier
from utils.experiment import AttackSpec, Experiment
from utils.seeds import derive_seeds

# keys mixed into the derived seeds, distinct from the attacks' stage tags (attacks.common.STAGE_*)
CLEAN_NOISE_KEY, BATCH_SEED_KEY = 1000, 1001
SEED_BITS = 31  # batch seeds < 2^31, accepted by every library's seeding


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


def batch_seed(seed: int, number: int) -> int:
    """The attack seed of batch `number`: a hash of (eval.seed, number), < 2^31."""
    return int(derive_seeds(seed, number, BATCH_SEED_KEY)) % (1 << SEED_BITS)


def clean_noise_seeds(seed: int, indices: torch.Tensor) -> torch.Tensor:
    """(B,) purification noise seeds of the clean forward: a hash of (eval.seed, dataset index)."""
    return derive_seeds(seed, indices, CLEAN_NOISE_KEY)


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


def make_models(defended: DefendedClassifier, classifier: nn.Module, device: torch.device) -> Models:
    """Models on `device`; the bare classifier is wrapped with the identity purifier (BPDA then works on it too)."""
    bare = DefendedClassifier(IdentityPurifier(), classifier).eval()
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
    """Clean predictions (B,) of both models and the per-image min / max of the purified images."""
    purified = models.defended.purifier(x, seeds.to(x.device))
    defended = models.defended.classifier(purified).argmax(dim=-1)
    bare = models.classifier(x).argmax(dim=-1)
    flat = purified.flatten(1)
    return {"defended": defended, "classifier": bare, "min": flat.min(dim=1).values, "max": flat.max(dim=1).values}


def _scores(output: AttackOutput, b: int) -> dict[str, Any]:
    """Image b's predictions and correctness under each scoring rule."""
    return {"predictions": {rule: int(p[b]) for rule, p in output.predictions.items()},
            "correct": {rule: bool(c[b]) for rule, c in output.correct.items()}}


def run_attack(run: AttackRun, models: Models, x: torch.Tensor, y: torch.Tensor, indices: torch.Tensor, seed: int,
               evaluate_classifier: bool) -> dict[str, AttackOutput]:
    """{'defended': output scored on the defended model, 'classifier': on the bare one (when asked)}."""
    if run.spec.target == "classifier":
        source = run.attack.run(models.classifier, x, y, indices, seed)
        predictions, correct = score_samples(models.defended, source.x_adv, y, indices, seed,
                                             run.spec.config.eval_samples)
        outputs = {"defended": AttackOutput(source.x_adv, predictions, correct, source.flags)}
        return {**outputs, "classifier": source} if evaluate_classifier else outputs
    outputs = {"defended": run.attack.run(models.defended, x, y, indices, seed)}
    if evaluate_classifier:
        outputs["classifier"] = run.attack.run(models.classifier, x, y, indices, seed)
    return outputs


def evaluate_batch(models: Models, runs: list[AttackRun], x: torch.Tensor, y: torch.Tensor, indices: torch.Tensor,
                   batch: Batch, eval_seed: int, evaluate_classifier: bool
                   ) -> tuple[list[dict[str, Any]], dict[str, dict[str, AttackOutput]]]:
    """Records (one per image) of batch x (B, C, H, W) in [0, 1] with labels y (B,) and dataset indices (B,),
    and the attack outputs by attack key and model."""
    seed = batch_seed(eval_seed, batch.number)
    noise_seeds = clean_noise_seeds(eval_seed, indices)
    for model in (models.defended, models.classifier):
        reseed_unseeded_noise(model, seed)
    clean = clean_outcomes(models, x, noise_seeds)
    results, costs = {}, {}
    for run in runs:
        with measured(models.defended) as cost:
            results[run.key] = run_attack(run, models, x, y, indices, seed, evaluate_classifier)
        costs[run.key] = cost.per_image(x.shape[0])
    records = [image_record(b, batch, seed, noise_seeds, y, indices, clean, results) for b in range(x.shape[0])]
    seconds = {key: cost.pop("seconds") for key, cost in costs.items()}
    for record in records:  # network evaluations per attack are deterministic; wall seconds sit apart (as written_at)
        record["seconds"] = seconds
        for key, cost in costs.items():
            record["attacks"][key]["cost"] = cost
    return records, results


@torch.no_grad()
def example_images(models: Models, x: torch.Tensor, y: torch.Tensor, indices: torch.Tensor, eval_seed: int,
                   results: dict[str, dict[str, AttackOutput]], count: int) -> dict[str, Any]:
    """The first `count` images: clean, purified clean, and per attack x_adv and purified x_adv (all in [0, 1])."""
    keep = slice(0, count)
    seeds = clean_noise_seeds(eval_seed, indices[keep]).to(x.device)
    purify = models.defended.purifier
    attacks = {key: {"x_adv": out["defended"].x_adv[keep].cpu(),
                     "purified": purify(out["defended"].x_adv[keep], seeds).cpu()} for key, out in results.items()}
    return {"x": x[keep].cpu(), "y": y[keep].cpu(), "indices": indices[keep].cpu(),
            "purified": purify(x[keep], seeds).cpu(), "attacks": attacks}


def image_record(b: int, batch: Batch, seed: int, noise_seeds: torch.Tensor, y: torch.Tensor, indices: torch.Tensor,
                 clean: dict[str, torch.Tensor], results: dict[str, dict[str, AttackOutput]]) -> dict[str, Any]:
    """Image b's JSON record: index, label, seeds, clean predictions, purified range, per-attack scores and flags."""
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
    return {
        "index": int(indices[b]), "batch": batch.number, "label": label,
        "seeds": {"batch": seed, "clean_noise": int(noise_seeds[b])},
        "clean": {model: {"prediction": int(clean[model][b]), "correct": int(clean[model][b]) == label}
                  for model in ("defended", "classifier")},
        "purified_range": [float(clean["min"][b]), float(clean["max"][b])],
        "attacks": attacks,
    }

