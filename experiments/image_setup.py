"""Image experiments' shared setup: the experiment YAML, models, data, per-method purifiers, attacks, path recording."""
from __future__ import annotations

import argparse
import dataclasses
import functools
import logging
import sys
from dataclasses import dataclass
from typing import Any, Iterator, Optional, Sequence

import torch
from torch import nn

from attacks.common import AttackOutput
from attacks.registry import ATTACKS, Attack, build_attack
from classifiers import build_classifier
from experiments.common import REPO_ROOT, run_metadata
from runners.backbones import build_backbone
from runners.defended import DefendedClassifier, PurifierContext, build_purifier, parse_purifier_config
from runners.purifiers import DIFFUSION_METHODS, Purifier, PurifierConfig, resolve_purifier_config
from utils.config import ConfigError, to_dict
from utils.data import ImageSet, load_images
from evaluation.experiment import Experiment, load_experiment
from utils.cli import add_spine, command_overrides, dry_run_text, parse_assignments
from utils.progress import Progress
from utils.seeds import SeedStage, derive_seeds

log = logging.getLogger(__name__)
DEFAULT_CONFIG = REPO_ROOT / "configs" / "demo.yml"


def add_model_arguments(parser: argparse.ArgumentParser, num_images: int) -> None:
    """--config, --set, --dry-run (utils.cli), --num-images, --batch-size."""
    add_spine(parser, "experiment YAML (data, classifier, backbone, purifier; default configs/demo.yml)", DEFAULT_CONFIG)
    parser.add_argument("--num-images", type=int, default=None,
                        help=f"first N images of the config's data subset (default {num_images}, or all if fewer)")
    parser.set_defaults(default_num_images=num_images)
    parser.add_argument("--batch-size", type=int, default=None,
                        help="images per batch (default: the config's eval.adv_batch_size)")


def add_attack_arguments(parser: argparse.ArgumentParser) -> None:
    """--attack and --attack-param (over the config's first entry of that name, over the registry defaults)."""
    parser.add_argument("--attack", default="pgd_eot",
                        help="attack registry name (default pgd_eot); its parameters start from the config's first "
                             "`attacks:` entry of that name")
    parser.add_argument("--attack-param", action="append", default=[], metavar="KEY=VALUE",
                        help="override one attack parameter, e.g. --attack-param iterations=20 (repeatable)")


@dataclass
class ImageSetup:
    """The loaded experiment: its classifier, images and a shared (lazily loaded) backbone."""

    experiment: Experiment
    classifier: nn.Module
    guidance_classifier: Optional[nn.Module]
    images: ImageSet
    batch_size: int

    @functools.cached_property
    def backbone(self) -> nn.Module:
        """The config's diffusion backbone, loaded once and shared by every purifier."""
        file = self.experiment.file
        if file.backbone is None:
            raise ConfigError(f"{self.experiment.base_dir}: diffusion purifiers need a `backbone:` section")
        return build_backbone(file.backbone, self.experiment.base_dir)

    def purifier_config(self, method: str, **fields: Any) -> PurifierConfig:
        """The config's purifier settings (dt, backend, ...) as diffusion `method`, preset fields reset, `fields` set.

        COUP keeps the config's guidance_scale when the config is COUP; unguided methods take guidance_scale 0.
        """
        base = self.experiment.purifier if isinstance(self.experiment.purifier, PurifierConfig) else PurifierConfig()
        guidance = base.guidance_scale if method == "coup" and base.name == "coup" else None
        presets = {"guidance_scale": guidance, "forward_noise": None, "clamp_output": None}
        return dataclasses.replace(base, **{**presets, **fields, "name": method})

    def coup_config(self, t_star: Optional[float] = None, guidance_scale: Optional[float] = None) -> PurifierConfig:
        """COUP's resolved settings (see purifier_config), with t_star and guidance_scale set where not None."""
        return resolve_purifier_config(self.purifier_config("coup", **given_fields(
            t_star=t_star, guidance_scale=guidance_scale)))

    def purifier(self, method: str, **fields: Any) -> Purifier:
        """Purifier `method` ('none', 'reverse_only', 'diffpure', 'coup', or the config's own) with fields replaced."""
        config = (self.purifier_config(method, **fields) if method in DIFFUSION_METHODS
                  else _named_config(self.experiment, method))
        context = PurifierContext(lambda: self.backbone, self.classifier, self.guidance_classifier,
                                  self.experiment.base_dir)
        return build_purifier(config, context)

    def defended(self, method: str, **fields: Any) -> DefendedClassifier:
        """purifier(method) then the classifier, in eval mode."""
        return DefendedClassifier(self.purifier(method, **fields), self.classifier).eval()

    def batches(self) -> Iterator[slice]:
        """Consecutive slices of the images of at most batch_size."""
        n = self.images.x.shape[0]
        return (slice(i, min(i + self.batch_size, n)) for i in range(0, n, self.batch_size))


def _named_config(experiment: Experiment, method: str) -> Any:
    """The purifier section for a non-diffusion method: 'none', or the config's own purifier if it has that name."""
    if method == "none":
        return parse_purifier_config({"name": "none"})
    if getattr(experiment.purifier, "name", None) == method:
        return experiment.purifier
    raise ConfigError(f"method '{method}' needs its own `purifier:` section; use --config with purifier.name: {method}")


def load_setup(args: argparse.Namespace) -> ImageSetup:
    """Read --config with --set overrides; load the classifiers and the first --num-images images.

    With --dry-run the resolved config is printed and the program exits.
    """
    experiment = load_experiment(args.config, command_overrides(args, {}))
    if args.dry_run:
        sys.stdout.write(dry_run_text(experiment.to_dict(), args.out.resolve()))
        raise SystemExit(0)
    file, base = experiment.file, experiment.base_dir
    classifier = build_classifier(file.classifier, base)
    guidance = build_classifier(file.guidance_classifier, base) if file.guidance_classifier else None
    images = load_images(file.data, base)
    available = images.x.shape[0]
    count = min(args.default_num_images, available) if args.num_images is None else args.num_images
    if not 1 <= count <= available:
        raise ValueError(f"--num-images must lie in [1, {available}] (the config's data.num_sub), got {count}; "
                         f"for more images add --set data.num_sub={count}")
    images = ImageSet(*(part[:count] for part in images))
    batch_size = args.batch_size or file.eval.adv_batch_size
    if batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
    return ImageSetup(experiment, classifier, guidance, images, batch_size)


def attack_parameters(experiment: Experiment, name: str, overrides: list[str]) -> dict[str, Any]:
    """Registry defaults <- the config's first adaptive `attacks:` entry named `name` <- overrides."""
    ATTACKS.get(name)  # an unknown name fails here with the list of valid ones
    adaptive = (spec for spec in experiment.attacks
                if spec.name == name and getattr(spec, "target", "defended") == "defended")
    from_config = next((to_dict(spec.config) for spec in adaptive), {})
    return {**from_config, **parse_assignments(overrides)}


def make_attack(setup: ImageSetup, args: argparse.Namespace) -> tuple[Attack, dict[str, Any]]:
    """The attack named by --attack with its resolved parameters."""
    params = attack_parameters(setup.experiment, args.attack, args.attack_param)
    return build_attack(args.attack, params), params


def attack_images(setup: ImageSetup, attack: Attack, model: nn.Module) -> list[AttackOutput]:
    """Run the attack on every batch with the config's attack seed (eval.seed), showing progress (utils.progress)."""
    images, seed = setup.images, setup.experiment.file.eval.seed
    progress = Progress(len(images.indices), {attack.name: 1.0}, log)
    outputs = []
    for part in setup.batches():
        progress.start_batch(part.stop - part.start)
        outputs.append(attack.run(model, images.x[part], images.y[part], images.indices[part], seed,
                                  functools.partial(progress.step, attack.name)))
        progress.finish_batch()
    progress.close()
    return outputs


def defense_seeds(seed: int, indices: torch.Tensor, key: int = 0) -> torch.Tensor:
    """(B,) purification noise seeds per image: a hash of (seed, dataset index, SeedStage.DEFENSE, key)."""
    return derive_seeds(seed, indices, SeedStage.DEFENSE, key)


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, noise_seeds: torch.Tensor, batch_size: int) -> torch.Tensor:
    """(N,) labels of one seeded stochastic forward of a defended model per image, in batches."""
    return torch.cat([model(x[i:i + batch_size], noise_seeds=noise_seeds[i:i + batch_size]).argmax(dim=1)
                      for i in range(0, x.shape[0], batch_size)])


def given_fields(**fields: Any) -> dict[str, Any]:
    """The keyword arguments that are not None (options given on the command line)."""
    return {k: v for k, v in fields.items() if v is not None}


def method_fields(method: str, t_star: float, guidance_scale: float) -> dict[str, float]:
    """Purifier fields for comparing methods at one t*: t_star for diffusion methods, lambda for COUP only."""
    if method not in DIFFUSION_METHODS:
        return {}
    return {"t_star": t_star, **({"guidance_scale": guidance_scale} if method == "coup" else {})}


def seeds_record(setup: ImageSetup, seed: int) -> dict[str, Any]:
    """The seeds of a run, written next to its results: data subset, defense noise, attack."""
    return {"data_seed": setup.experiment.file.data.data_seed, "defense_seed": seed,
            "attack_seed": setup.experiment.file.eval.seed,
            "dataset_indices": setup.images.indices.tolist()}


def config_record(setup: ImageSetup) -> dict[str, Any]:
    """The resolved experiment config as plain data, plus the config file it came from."""
    return {"config_dir": str(setup.experiment.base_dir), **setup.experiment.to_dict()}


def image_metadata(setup: ImageSetup, argv: Sequence[str], seed: int, **extra_seeds: Any) -> dict[str, Any]:
    """run_metadata of an image experiment: provenance, the seeds (seeds_record, extra_seeds) and the config."""
    return run_metadata(argv, seeds={**seeds_record(setup, seed), **extra_seeds}, config=config_record(setup))
