"""Evaluate a purification defense under attack: clean and robust accuracy per image, resumable, shardable.

    python eval_sde_adv.py --config configs/cifar10.yml --seed 121 --data_seed 0 --attack_version standard
    torchrun --nproc_per_node 4 eval_sde_adv.py --config configs/cifar10.yml ...   (rank r runs batches r, r+4, ...)

Results go to <eval.output_dir>/<config stem>_<purifier>_seed<S>_data<D>_<hash>/: config.yaml, results*.jsonl
(one line per image, appended per batch; rerunning the same command resumes), summary.json and summary.md.
"""
from __future__ import annotations

import argparse
import copy
import logging
import sys
from pathlib import Path
from typing import Any, Optional

from tqdm import tqdm

from experiments.common import write_json as atomic_write_json
from experiments.gradient_audit import audit_images, flat_row
from utils.config import ConfigError, read_yaml
from utils.data import ImageSet, load_images
from utils.checkpoints import atomic_save
from utils.distributed import Shard, barrier, start_shard, stop_shard
from utils.evaluate import (Batch, attack_runs, batch_seed, evaluate_batch, example_images, make_models,
                            pending_batches, plan_batches)
from utils.experiment import Experiment, build_models, dump_yaml, load_experiment, set_override
from utils.overrides import attack_field_overrides, parse_assignments, select_attacks, switch_purifier
from utils.results import (ResultWriter, RunDirError, claim_run_dir, config_hash, ordered_records, read_records,
                           run_name, shard_file)
from utils.summary import RunInfo, build_summary, write_summary

log = logging.getLogger("eval_sde_adv")

# options that set one config key
KEY_OPTIONS = {"seed": "eval.seed", "data_seed": "data.data_seed", "num_sub": "data.num_sub",
               "adv_batch_size": "eval.adv_batch_size", "t_star": "purifier.t_star",
               "guidance_scale": "purifier.guidance_scale", "grad_mode": "purifier.grad_mode",
               "backend": "purifier.backend", "output_dir": "eval.output_dir"}
# options that set a field of every selected attack whose config has it
ATTACK_OPTIONS = {"attack_version": "version", "lp_norm": "norm", "adv_eps": "eps"}


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    """The command line; every option maps onto a config key (see --dry-run for the result)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="experiment YAML (paths inside resolve against its folder)")
    p.add_argument("--seed", type=int, help="eval.seed: attack and purification-noise seed")
    p.add_argument("--data_seed", type=int, help="data.data_seed: which images form the subset")
    p.add_argument("--num_sub", type=int, help="data.num_sub: number of images")
    p.add_argument("--adv_batch_size", type=int, help="eval.adv_batch_size")
    p.add_argument("--attack", action="append", metavar="NAME",
                   help="run only the config's attacks named NAME (its defaults if it has none); repeatable")
    p.add_argument("--attack_version", choices=("standard", "rand"), help="version of the AutoAttack entries")
    p.add_argument("--lp_norm", choices=("Linf", "L2"), help="norm of every attack")
    p.add_argument("--adv_eps", type=float, help="eps of every attack")
    t_group = p.add_mutually_exclusive_group()
    t_group.add_argument("--t", type=int, help="diffusion steps out of 1000 as in the papers (100 -> t_star 0.1)")
    t_group.add_argument("--t_star", type=float, help="purifier.t_star in (0, 1]")
    p.add_argument("--guidance_scale", type=float, help="purifier.guidance_scale (lambda)")
    p.add_argument("--purifier", help="switch the method: coup | reverse_only | diffpure | none | aid")
    p.add_argument("--grad_mode", help="purifier.grad_mode")
    p.add_argument("--backend", help="purifier.backend: exact | torchsde")
    p.add_argument("--output_dir", type=lambda s: str(Path(s).expanduser().resolve()),
                   help="eval.output_dir (relative to the working directory here, to the config file in YAML)")
    p.add_argument("--evaluate_classifier", action="store_true", help="also attack the bare classifier")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any dotted override, value parsed as YAML (applied before the options above); repeatable")
    p.add_argument("--gradient_audit", type=int, default=0, metavar="N",
                   help="also audit the attack gradient on the first N images (experiments.gradient_audit) into "
                        "the run folder's gradient_audit.json; does not change the results or the config hash")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and exit (loads no model)")
    return p.parse_args(argv)


def collect_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The dotted overrides of the command line, in order: --set, --purifier, --attack, key options, attack fields."""
    raw = read_yaml(args.config)
    overrides: dict[str, Any] = {}

    def put(key: str, value: Any) -> None:
        set_override(raw, key, copy.deepcopy(value))
        overrides[key] = value

    for key, value in parse_assignments(args.set).items():
        put(key, value)
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
    return overrides


def output_root(experiment: Experiment) -> Path:
    """eval.output_dir, resolved against the config file's folder."""
    path = Path(experiment.file.eval.output_dir).expanduser()
    return path if path.is_absolute() else experiment.base_dir / path


def open_run(experiment: Experiment, config_path: Path, shard: Shard) -> tuple[Path, str]:
    """The run folder and config hash; rank 0 creates it, every rank checks it belongs to this config."""
    resolved = experiment.to_dict()
    digest = config_hash(resolved)
    run_dir = output_root(experiment) / run_name(config_path, resolved, digest)
    if shard.rank == 0:
        claim_run_dir(run_dir, resolved, digest, write=True)
    barrier(shard)
    claim_run_dir(run_dir, resolved, digest, write=False)
    return run_dir, digest


def run_batches(experiment: Experiment, images: ImageSet, batches: list[Batch], run_dir: Path, shard: Shard) -> None:
    """Evaluate this rank's batches that still miss a result, appending each to this rank's JSONL file."""
    eval_config = experiment.file.eval
    indices = images.indices.tolist()
    done = set(read_records(run_dir))
    todo = pending_batches(batches, indices, done, shard.rank, shard.world_size)
    log.info("%s: %d images in %d batches; %d done before, rank %d/%d runs %d batch(es)", run_dir, len(indices),
             len(batches), len(done & set(indices)), shard.rank, shard.world_size, len(todo))
    models = make_models(*build_models(experiment), shard.device)
    runs = attack_runs(experiment)
    writer = ResultWriter(shard_file(run_dir, shard.rank, shard.world_size))
    for batch in tqdm(todo, desc=f"batches (rank {shard.rank})", disable=None):
        part = slice(batch.start, batch.stop)
        x, y = images.x[part].to(shard.device), images.y[part].to(shard.device)
        records, outputs = evaluate_batch(models, runs, x, y, images.indices[part], batch, eval_config.seed,
                                          eval_config.evaluate_classifier)
        if batch.number == 0 and eval_config.save_examples > 0:
            atomic_save(example_images(models, x, y, images.indices[part], eval_config.seed, outputs,
                                       eval_config.save_examples), run_dir / "examples.pt")
        writer.append(records)


def write_gradient_audit(experiment: Experiment, images: ImageSet, run_dir: Path, n_images: int) -> None:
    """The gradient audit of the first n_images images (noise seeds from eval.seed) into run_dir/gradient_audit.json."""
    model, _ = build_models(experiment)
    n = min(n_images, len(images.indices))
    records = audit_images(model, images.x[:n], images.y[:n], images.indices[:n], experiment.file.eval.seed)
    atomic_write_json(run_dir / "gradient_audit.json", {"images": records, "rows": [flat_row(r) for r in records]})
    log.info("gradient audit of %d image(s) written to %s", n, run_dir / "gradient_audit.json")


def evaluate(experiment: Experiment, config_path: Path, shard: Shard, audit: int = 0) -> Optional[str]:
    """Run this shard's pending batches, then (rank 0) write the summary (and the gradient audit of `audit` images);
    returns the summary's Markdown on rank 0."""
    run_dir, digest = open_run(experiment, config_path, shard)
    images = load_images(experiment.file.data, experiment.base_dir)
    batches = plan_batches(len(images.indices), experiment.file.eval.adv_batch_size)
    run_batches(experiment, images, batches, run_dir, shard)
    barrier(shard)
    if shard.rank != 0:
        return None
    records = ordered_records(read_records(run_dir), images.indices.tolist())
    seed = experiment.file.eval.seed
    info = RunInfo(run_dir.name, str(config_path), digest, {b.number: batch_seed(seed, b.number) for b in batches},
                   shard.world_size)
    markdown = write_summary(run_dir, build_summary(experiment, records, info))
    log.info("summary written to %s", run_dir)
    if audit > 0:
        write_gradient_audit(experiment, images, run_dir, audit)
    return markdown


def main(argv: Optional[list[str]] = None) -> int:
    """CLI entry: 0 on success, 2 on a configuration or results-folder error (one line on stderr)."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    try:
        experiment = load_experiment(args.config, collect_overrides(args))
    except (ConfigError, KeyError) as err:  # registries report unknown names as KeyError
        log.error("%s", err.args[0] if err.args else err)
        return 2
    if args.dry_run:
        sys.stdout.write(dump_yaml(experiment))
        return 0
    shard = start_shard()
    try:
        markdown = evaluate(experiment, Path(args.config), shard, args.gradient_audit)
    except (ConfigError, FileNotFoundError, RunDirError) as err:
        log.error("%s", err)
        return 2
    finally:
        stop_shard(shard)
    if markdown is not None:
        sys.stdout.write(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
