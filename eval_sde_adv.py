"""Evaluate a purification defense under attack: clean and robust accuracy per image, resumable, shardable.

    python eval_sde_adv.py --config configs/cifar10.yml --seed 121 --data_seed 0 --attack_version standard
    torchrun --nproc_per_node 4 eval_sde_adv.py --config configs/cifar10.yml ...   (rank r runs batches r, r+4, ...)

Results go to <eval.output_dir>/<config stem>_<method, t*, dt, lambda, grads, backend, attacks>_seed<S>_data<D>_<hash>/:
config.yaml, results*.jsonl (one line per image, appended per batch; rerunning the same command reuses them, --fresh
recomputes), summary.json and summary.md. Relative paths in the config: its folder first, then the repository root.
Progress: a bar on a terminal, else a log line every --progress_interval seconds with the time left.
"""
from __future__ import annotations

import argparse
import copy
import logging
import sys
import time
from pathlib import Path
from typing import Any, Optional, get_args

import torch

from attacks.registry import ATTACKS
from experiments.gradient_audit import AUDIT_FILE, audit_images, read_audit, write_audit
from runners.aid import AIDGradMode
from runners.defended import PURIFIERS, DefendedClassifier
from runners.guidance import GradMode
from runners.purifiers import Backend
from utils.cli import add_spine, dry_run_text, parse_assignments, parser, run_main, set_override, setup_logging
from utils.config import ConfigError, read_yaml
from utils.data import ImageSet
from utils.checkpoints import atomic_save
from utils.devices import deterministic, device_name
from utils.distributed import Shard, barrier, start_shard, stop_shard
from utils.paths import output_folder
from utils.precision import numerics
from utils.progress import DEFAULT_INTERVAL, Progress
from evaluation.reuse import clear_run, reuse_text, row_origin
from evaluation.run_plan import (AttackBudget, attack_budget, attack_weights, describe_size, estimate_line,
                                 evaluations_per_pass, seconds_per_image)
from evaluation.evaluate import (AttackRun, Batch, Models, attack_runs, attack_seed, clean_noise_seeds, evaluate_batch,
                                 example_images, make_models, pending_batches, plan_batches)
from evaluation.experiment import Experiment, load_experiment, load_prerequisites
from evaluation.overrides import attack_field_overrides, select_attacks, switch_purifier
from evaluation.results import (ResultWriter, claim_run_dir, config_hash, ordered_records, read_records,
                                run_name, shard_file)
from evaluation.summary import RunInfo, build_summary, write_summary

log = logging.getLogger("eval_sde_adv")

# options that set one config key
KEY_OPTIONS = {"seed": "eval.seed", "data_seed": "data.data_seed", "num_sub": "data.num_sub",
               "adv_batch_size": "eval.adv_batch_size", "t_star": "purifier.t_star",
               "guidance_scale": "purifier.guidance_scale", "grad_mode": "purifier.grad_mode",
               "backend": "purifier.backend", "output_dir": "eval.output_dir"}
TIMING_IMAGES = 8  # images of the first batch timed for the run's estimate
GRAD_MODES = tuple(dict.fromkeys(get_args(GradMode) + get_args(AIDGradMode)))  # every purifier's grad_mode values
# options that set a field of every selected attack whose config has it
ATTACK_OPTIONS = {"attack_version": "version", "lp_norm": "norm", "adv_eps": "eps"}


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    """The command line; every option maps onto a config key (see --dry-run for the result)."""
    p = parser(__doc__)
    add_spine(p, "experiment YAML (relative paths inside: its folder first, then the repository root)")
    p.add_argument("--seed", type=int, help="eval.seed: attack and purification-noise seed")
    p.add_argument("--data_seed", type=int, help="data.data_seed: which images form the subset")
    p.add_argument("--num_sub", type=int, help="data.num_sub: number of images")
    p.add_argument("--adv_batch_size", type=int, help="eval.adv_batch_size")
    p.add_argument("--attack", action="append", choices=ATTACKS.names(),
                   help="run only the config's attacks of this name (its defaults if it has none); repeatable")
    p.add_argument("--attack_version", choices=("standard", "rand"), help="version of the AutoAttack entries")
    p.add_argument("--lp_norm", choices=("Linf", "L2"), help="norm of every attack")
    p.add_argument("--adv_eps", type=float, help="eps of every attack")
    t_group = p.add_mutually_exclusive_group()
    t_group.add_argument("--t", type=int, help="diffusion steps out of 1000 as in the papers (100 -> t_star 0.1)")
    t_group.add_argument("--t_star", type=float, help="purifier.t_star in (0, 1]")
    p.add_argument("--guidance_scale", type=float, help="purifier.guidance_scale (lambda)")
    p.add_argument("--purifier", choices=PURIFIERS.names(), help="switch the method")
    p.add_argument("--grad_mode", choices=GRAD_MODES,
                   help="purifier.grad_mode (diffusion purifiers: detached | full | surrogate; aid: exact | create_graph | bpda)")
    p.add_argument("--backend", choices=get_args(Backend), help="purifier.backend")
    p.add_argument("--output_dir", type=lambda s: str(Path(s).expanduser().resolve()),
                   help="eval.output_dir (here relative to the working directory; in the YAML by the config path rule)")
    p.add_argument("--evaluate_classifier", action="store_true", help="also attack the bare classifier")
    p.add_argument("--fresh", action="store_true",
                   help="recompute: delete this run's earlier results (inside its run folder only) before starting")
    p.add_argument("--progress_interval", type=float, default=DEFAULT_INTERVAL,
                   help="seconds between progress lines when stderr is not a terminal (a bar is shown otherwise)")
    p.add_argument("--gradient_audit", type=int, default=0, metavar="N",
                   help="also audit the attack gradient on the first N images (experiments.gradient_audit) into "
                        "the run folder's gradient_audit.json / .csv; does not change the results or the config hash")
    return p.parse_args(argv)


def collect_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The dotted overrides of the command line, in order: --purifier, --attack, key options, attack fields, --set."""
    raw = read_yaml(args.config)
    overrides: dict[str, Any] = {}

    def put(key: str, value: Any) -> None:
        set_override(raw, key, copy.deepcopy(value))
        overrides.pop(key, None)
        overrides[key] = value

    if args.purifier is not None:
        put("purifier", switch_purifier(raw.get("purifier", {}), args.purifier))
    if args.attack:
        put("attacks", select_attacks(raw.get("attacks") or [], args.attack))
    for option, key in KEY_OPTIONS.items():
        if getattr(args, option) is not None:
            put(key, getattr(args, option))
    if args.t is not None:
        put("purifier.t_star", args.t / 1000.0)
    if args.evaluate_classifier:
        put("eval.evaluate_classifier", True)
    for option, field in ATTACK_OPTIONS.items():
        if getattr(args, option) is not None:
            for key, value in attack_field_overrides(raw.get("attacks") or [], field, getattr(args, option),
                                                     f"--{option}").items():
                put(key, value)
    for key, value in parse_assignments(args.set).items():
        put(key, value)
    return overrides


def output_root(experiment: Experiment) -> Path:
    """eval.output_dir by the config path rule (utils.paths.output_folder), absolute."""
    return output_folder(experiment.file.eval.output_dir, experiment.base_dir)


def open_run(experiment: Experiment, config_path: Path, shard: Shard) -> tuple[Path, str]:
    """The run folder and config hash; rank 0 creates it, every rank checks it belongs to this config."""
    resolved = experiment.to_dict()
    digest = config_hash(resolved)
    run_dir = output_root(experiment) / run_name(config_path, resolved, digest)
    if shard.rank == 0:
        claim_run_dir(run_dir, resolved, digest, experiment.base_dir, write=True)
    barrier(shard)
    claim_run_dir(run_dir, resolved, digest, experiment.base_dir, write=False)
    return run_dir, digest


def log_reuse(run_dir: Path, images: ImageSet, done: dict[int, dict[str, Any]], started_ns: int) -> None:
    """Say which images come from earlier runs, when they were made, and how to recompute them."""
    earlier = [done[i] for i in images.indices.tolist() if i in done]
    text = reuse_text(row_origin(earlier, started_ns), run_dir)
    if text:
        log.info("%s", text)


def log_flags(outputs: dict[str, dict[str, Any]]) -> None:
    """The sanity-check messages each attack raised on its first batch, once per run."""
    for key, by_model in outputs.items():
        for check, message in by_model["defended"].flags.items():
            if message:
                log.info("%s sanity check %s: %s", key, check, message)


def plan_run(models: Models, runs: list[AttackRun], images: ImageSet, todo: list[Batch], experiment: Experiment,
             device: torch.device) -> list[AttackBudget]:
    """Log the run's size and a time estimate from timing (up to TIMING_IMAGES of) the first pending batch."""
    budgets = [attack_budget(run.key, run.spec) for run in runs]
    n_todo = sum(b.stop - b.start for b in todo)
    log.info("%s", describe_size(len(images.indices), n_todo, budgets, evaluations_per_pass(experiment.purifier)))
    if todo:
        part = slice(todo[0].start, min(todo[0].stop, todo[0].start + TIMING_IMAGES))
        x, y = images.x[part].to(device), images.y[part].to(device)
        seeds = clean_noise_seeds(experiment.file.eval.seed, images.indices[part])
        log.info("%s", estimate_line(n_todo, budgets, seconds_per_image(models.defended, x, y, seeds)))
    return budgets


def run_batches(experiment: Experiment, images: ImageSet, models: Models, batches: list[Batch], run_dir: Path,
                shard: Shard, interval: float = DEFAULT_INTERVAL) -> None:
    """Evaluate this rank's batches that still miss a result, appending each to this rank's JSONL file."""
    eval_config = experiment.file.eval
    indices = images.indices.tolist()
    done = read_records(run_dir)
    todo = pending_batches(batches, indices, set(done), shard.rank, shard.world_size)
    log.info("%s: %d images in %d batches; %d done before, rank %d/%d runs %d batch(es)", run_dir, len(indices),
             len(batches), len(set(done) & set(indices)), shard.rank, shard.world_size, len(todo))
    log_reuse(run_dir, images, done, time.time_ns())
    if not todo:
        return
    runs = attack_runs(experiment)
    budgets = plan_run(models, runs, images, todo, experiment, shard.device)
    progress = Progress(sum(b.stop - b.start for b in todo), attack_weights(budgets), log, interval)
    writer = ResultWriter(shard_file(run_dir, shard.rank, shard.world_size))
    for number, batch in enumerate(todo):
        part = slice(batch.start, batch.stop)
        x, y = images.x[part].to(shard.device), images.y[part].to(shard.device)
        progress.start_batch(batch.stop - batch.start)
        records, outputs = evaluate_batch(models, runs, x, y, images.indices[part], batch, eval_config.seed,
                                          eval_config.evaluate_classifier, progress.step)
        if number == 0:
            log_flags(outputs)
        if batch.number == 0 and eval_config.save_examples > 0:
            atomic_save(example_images(models, x, y, images.indices[part], eval_config.seed, outputs,
                                       eval_config.save_examples), run_dir / "examples.pt")
        writer.append(records)
        progress.finish_batch()
    progress.close()


def check_attacks(runs: list[AttackRun], models: Models, evaluate_classifier: bool = False) -> None:
    """Every attack's check of each model it will attack (the bare classifier too under eval.evaluate_classifier),
    before the run folder exists or any batch runs."""
    for attack_run in runs:
        attack_run.attack.check_model(models.defended if attack_run.spec.target == "defended" else models.classifier)
        if evaluate_classifier and attack_run.spec.target == "defended":
            try:
                attack_run.attack.check_model(models.classifier)
            except ValueError as err:
                raise ConfigError(f"eval.evaluate_classifier also runs {attack_run.key} on the bare classifier, which "
                                  f"it cannot attack ({err}); set eval.evaluate_classifier: false") from None


def write_gradient_audit(model: DefendedClassifier, images: ImageSet, run_dir: Path, n_images: int,
                         experiment: Experiment) -> list[dict[str, Any]]:
    """The gradient audit of the first n_images images (noise seeds from eval.seed) into run_dir/gradient_audit.json
    and .csv, the files experiments.gradient_audit writes (so experiments.audit_table reads a run folder too)."""
    n = min(n_images, len(images.indices))
    device = next(model.parameters()).device
    records = audit_images(model, images.x[:n].to(device), images.y[:n].to(device), images.indices[:n],
                           experiment.file.eval.seed)
    write_audit(run_dir, records, {"run": run_dir.name, "config": experiment.to_dict()})
    log.info("gradient audit of %d image(s) written to %s", n, run_dir / AUDIT_FILE)
    return records


def evaluate(experiment: Experiment, config_path: Path, shard: Shard, fresh: bool = False,
             interval: float = DEFAULT_INTERVAL, audit: int = 0) -> Optional[str]:
    """Run this shard's pending batches, then (rank 0) the gradient audit of `audit` images and the summary (which
    quotes the run folder's audit, this one or an earlier one); returns the summary's Markdown on rank 0.

    Every prerequisite (data, checkpoints) is loaded before the run folder is made; fresh: rank 0 first deletes the
    run folder's earlier results (evaluation.reuse.clear_run).
    """
    started_ns = time.time_ns()
    images, defended, classifier = load_prerequisites(experiment)
    models = make_models(defended, classifier, shard.device, experiment.file.eval.max_batch)
    check_attacks(attack_runs(experiment), models, experiment.file.eval.evaluate_classifier)
    run_dir, digest = open_run(experiment, config_path, shard)
    if fresh and shard.rank == 0:
        log.info("--fresh: removed %d earlier result file(s) from %s", len(clear_run(run_dir)), run_dir)
    barrier(shard)
    batches = plan_batches(len(images.indices), experiment.file.eval.adv_batch_size)
    run_batches(experiment, images, models, batches, run_dir, shard, interval)
    barrier(shard)
    if shard.rank != 0:
        return None
    records = ordered_records(read_records(run_dir), images.indices.tolist())
    info = RunInfo(run_dir.name, str(config_path), digest, attack_seed(experiment.file.eval.seed), shard.world_size,
                   started_ns, device_name(shard.device))
    audited = (write_gradient_audit(models.defended, images, run_dir, audit, experiment) if audit > 0
               else read_audit(run_dir))
    markdown = write_summary(run_dir, build_summary(experiment, records, info, audited))
    log.info("summary written to %s", run_dir)
    return markdown


def run(args: argparse.Namespace) -> int:
    """Load and validate the config, then (unless --dry-run) evaluate it; prints the summary's Markdown."""
    experiment = load_experiment(args.config, collect_overrides(args))
    if args.dry_run:
        resolved = experiment.to_dict()
        run_dir = output_root(experiment).resolve() / run_name(args.config, resolved, config_hash(resolved))
        sys.stdout.write(dry_run_text(resolved, run_dir))
        return 0
    eval_config = experiment.file.eval
    shard = start_shard(eval_config.device)
    try:
        # full float32 unless eval.precision allows TF32; deterministic GPU kernels when eval.deterministic
        with numerics(eval_config.precision), deterministic(eval_config.deterministic):
            markdown = evaluate(experiment, Path(args.config), shard, args.fresh, args.progress_interval,
                                args.gradient_audit)
    finally:
        stop_shard(shard)
    if markdown is not None:
        sys.stdout.write(markdown)
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    """CLI entry: 0 on success, 2 and one line on a user error, 130 and one line on Ctrl-C."""
    args = parse_args(argv)
    setup_logging()
    return run_main(lambda: run(args), log)


if __name__ == "__main__":
    sys.exit(main())
