"""DiffSmooth certification as a pipeline: the config file, its prerequisites, CERTIFY / PREDICT per image, report.

certify_diffsmooth.py is its command line. run() writes <output_dir>/<mode>_sigma<sigma>.tsv (Cohen's columns, one
flushed line per image; a rerun resumes), its sidecar .json (config hash, resolved config, seeds, package
versions, git hash), a Markdown table and a PNG plot. Paths in the YAML resolve against the config file.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
from scipy.stats import norm
from torch import nn

from classifiers import ClassifierConfig, build_classifier
from diffusion.backbone import VPBackbone
from runners.backbones import BackboneConfig, build_backbone, parse_backbone_model
from certification.certify import ABSTAIN, MODES, Mode, SmoothingSpec
from certification.report import (ResultRow, ResultsTSV, certify_table, elapsed_text, plot_certified_accuracy,
                                    predict_table, radius_grid)
from runners.diffsmooth import RELEASE_LOCAL_SEED, DiffSmooth, Vote
from utils.config import from_dict, read_yaml, require, to_dict
from utils.data import DATASETS, DataConfig, ImageSet, dataset_root, repeat_channels, subset_indices, to_image_set
from utils.files import atomic_write_text
from utils.cli import (apply_overrides, attempt, raise_problems)
from utils.progress import Progress
from utils.provenance import provenance

log = logging.getLogger("certify_diffsmooth")


@dataclass(frozen=True)
class SmoothingConfig:
    """YAML `smoothing:`: the certified noise sigma and DiffSmooth's local smoothing (m copies, sigma', vote)."""

    sigma: float = 0.25
    m: int = 5
    local_sigma: float = 0.25
    vote: Vote = "soft"
    local_seed: int = RELEASE_LOCAL_SEED
    clamp: bool = True

    def __post_init__(self) -> None:
        require(self.sigma > 0.0, f"smoothing.sigma must be > 0, got {self.sigma}")
        require(self.m >= 1, f"smoothing.m must be >= 1, got {self.m}")
        require(self.local_sigma >= 0.0, f"smoothing.local_sigma must be >= 0, got {self.local_sigma}")


@dataclass(frozen=True)
class CertifyConfig:
    """YAML `certify:`: Cohen's CERTIFY / PREDICT budget and noise seed, and which images (every skip-th, at most max)."""

    mode: Mode = "certify"
    N0: int = 100
    N: int = 10_000
    alpha: float = 0.001
    seed: int = 0
    skip: int = 1
    max_images: Optional[int] = None

    def __post_init__(self) -> None:
        require(self.N0 >= 1 and self.N >= 1, f"certify.N0 and certify.N must be >= 1, got {self.N0}, {self.N}")
        require(0.0 < self.alpha < 1.0, f"certify.alpha must lie in (0, 1), got {self.alpha}")
        require(self.skip >= 1, f"certify.skip must be >= 1, got {self.skip}")
        require(self.max_images is None or self.max_images >= 1, "certify.max_images must be >= 1 or null")


@dataclass(frozen=True)
class RunConfig:
    """YAML `run:`: settings that do not change any result (batching, device, threads, output folder)."""

    batch: int = 100
    device: str = "cpu"
    num_threads: Optional[int] = None
    output_dir: str = "../../results/diffsmooth"
    radius_step: float = 0.25

    def __post_init__(self) -> None:
        require(self.batch >= 1, f"run.batch must be >= 1, got {self.batch}")
        require(self.radius_step > 0.0, f"run.radius_step must be > 0, got {self.radius_step}")


@dataclass(frozen=True)
class DiffSmoothFile:
    """The DiffSmooth certification YAML."""

    data: DataConfig
    backbone: BackboneConfig
    classifier: ClassifierConfig
    smoothing: SmoothingConfig = SmoothingConfig()
    certify: CertifyConfig = CertifyConfig()
    run: RunConfig = RunConfig()


@dataclass(frozen=True)
class Outputs:
    """The files a certification run writes."""

    tsv: Path
    table: Path
    plot: Optional[Path]


SELECTION_KEYS = {"data": ("num_sub", "data_seed"), "certify": ("skip", "max_images")}


def load_config(path: Path, overrides: dict[str, Any]) -> DiffSmoothFile:
    """Read the YAML at path, apply dotted overrides, validate every section (unknown keys fail)."""
    file = from_dict(DiffSmoothFile, apply_overrides(read_yaml(path), overrides), str(path))
    parse_backbone_model(file.backbone)
    return file


def resolved_config(file: DiffSmoothFile) -> dict[str, Any]:
    """The config as plain data, with the backbone's model options completed by their defaults."""
    resolved = to_dict(file)
    resolved["backbone"]["model"] = to_dict(parse_backbone_model(file.backbone))
    return resolved


def hashed_config(resolved: dict[str, Any]) -> dict[str, Any]:
    """The part of the resolved config that determines each TSV row (not the run section or the image selection)."""
    kept = {name: dict(section) for name, section in resolved.items() if name != "run"}
    for section, keys in SELECTION_KEYS.items():
        for key in keys:
            kept[section].pop(key)
    return kept


def selected_indices(file: DiffSmoothFile, num_images: int) -> np.ndarray:
    """Dataset indices to certify: the RandomState(data_seed) subset, then every skip-th, then at most max_images."""
    indices = subset_indices(num_images, file.data.num_sub, file.data.data_seed)[:: file.certify.skip]
    return indices[: file.certify.max_images]


@dataclass(frozen=True)
class Prerequisites:
    """What a certification needs, loaded before any output exists: the dataset's arrays and both networks."""

    images: Any
    labels: np.ndarray
    classifier: nn.Module
    backbone: VPBackbone


def load_prerequisites(file: DiffSmoothFile, base_dir: Path) -> Prerequisites:
    """Data, classifier and backbone; every one that is missing or broken is named in one ConfigError."""
    problems: list[str] = []
    arrays = attempt("data", lambda: DATASETS.build(file.data.name, file.data, dataset_root(file.data, base_dir)),
                     problems)
    classifier = attempt("classifier", lambda: build_classifier(file.classifier, base_dir), problems)
    backbone = attempt("backbone", lambda: build_backbone(file.backbone, base_dir), problems)
    raise_problems(problems)
    return Prerequisites(arrays[0], arrays[1], classifier, backbone)


def load_selection(file: DiffSmoothFile, loaded: Prerequisites, done: set[int]) -> tuple[np.ndarray, Optional[ImageSet]]:
    """(all selected indices, the not-yet-finished images among them or None); only those images are decoded."""
    images, labels = loaded.images, loaded.labels
    indices = selected_indices(file, len(labels))
    pending = np.array([i for i in indices if int(i) not in done], dtype=np.int64)
    if not len(pending):
        return indices, None
    data = to_image_set(images, labels, pending, file.data.pad_to)
    if file.data.channels is not None:
        data = data._replace(x=repeat_channels(data.x, file.data.channels).contiguous())
    return indices, data


def build_model(file: DiffSmoothFile, loaded: Prerequisites, image_shape: Sequence[int]) -> tuple[DiffSmooth, int]:
    """(DiffSmooth in eval mode on the run device, number of classes)."""
    device = torch.device(file.run.device)
    classifier, backbone = loaded.classifier, loaded.backbone
    smoothing = file.smoothing
    model = DiffSmooth(backbone, classifier, smoothing.sigma, image_shape, m=smoothing.m,
                       local_sigma=smoothing.local_sigma, vote=smoothing.vote, local_seed=smoothing.local_seed,
                       clamp=smoothing.clamp).to(device).eval()
    with torch.inference_mode():
        num_classes = int(classifier(torch.zeros(1, *image_shape, device=device)).shape[-1])
    log.info("DiffSmooth: sigma %.3g denoised at %s; m %d, local sigma %.3g, %s vote, %d classes",
             smoothing.sigma, model.level.description, smoothing.m, smoothing.local_sigma, smoothing.vote,
             num_classes)
    return model, num_classes


def max_certifiable_radius(file: DiffSmoothFile) -> float:
    """sigma Phi^-1(alpha^(1/N)): the radius when all N estimation samples agree."""
    return float(file.smoothing.sigma * norm.ppf(file.certify.alpha ** (1.0 / file.certify.N)))


def run_info(file: DiffSmoothFile, config_path: Path, resolved: dict[str, Any]) -> dict[str, Any]:
    """What the sidecar records for this run: config file, resolved config, seeds, provenance."""
    seeds = {"data_seed": file.data.data_seed, "certify_seed": file.certify.seed,
             "local_seed": file.smoothing.local_seed, "classifier_seed": file.classifier.seed}
    return {"config_file": str(config_path), "resolved_config": resolved, "seeds": seeds, **provenance()}


def certify_images(model: DiffSmooth, data: ImageSet, spec: SmoothingSpec, mode: Mode, results: ResultsTSV,
                   device: torch.device) -> None:
    """Run CERTIFY or PREDICT on each image and append its row as soon as it is done (progress: utils.progress)."""
    progress = Progress(len(data.indices), {mode: 1.0}, log)
    for x, label, index in zip(data.x, data.y.tolist(), data.indices.tolist()):
        progress.start_batch(1)
        started = time.perf_counter()
        with torch.inference_mode():
            outcome = MODES[mode](model, x.to(device), index, spec)
        row = ResultRow(index, label, outcome.prediction, outcome.radius, int(outcome.prediction == label),
                        elapsed_text(time.perf_counter() - started))
        results.append(row)
        log.info("image %d: label %d, predict %d, radius %.4f (%s)", index, label, row.predict, row.radius, row.time)
        progress.finish_batch()
    progress.close()


def write_report(file: DiffSmoothFile, rows: list[ResultRow], tsv: Path) -> Outputs:
    """The Markdown table (and for CERTIFY the PNG plot) over the selected images' rows."""
    smoothing, settings = file.smoothing, file.certify
    title = (f"DiffSmooth {settings.mode} on {file.data.name}: sigma {smoothing.sigma:g}, m {smoothing.m}, "
             f"local sigma {smoothing.local_sigma:g}, N0 {settings.N0}, N {settings.N}, alpha {settings.alpha:g}")
    table = tsv.with_name(tsv.stem + "_table.md")
    if settings.mode == "predict":
        atomic_write_text(table, predict_table(rows, title))
        return Outputs(tsv, table, None)
    top = max_certifiable_radius(file)
    atomic_write_text(table, certify_table(rows, radius_grid(rows, top, file.run.radius_step), title))
    plot = tsv.with_suffix(".png")
    label = f"DiffSmooth, sigma={smoothing.sigma:g}, m={smoothing.m}, sigma'={smoothing.local_sigma:g}"
    plot_certified_accuracy(rows, top, label, f"{file.data.name}: {len(rows)} images, N={settings.N}", plot)
    return Outputs(tsv, table, plot)


def run(file: DiffSmoothFile, config_path: Path, output_dir: Path) -> Outputs:
    """Certify the selected images (resuming a previous run), then write the table and plot."""
    base_dir = config_path.resolve().parent
    if file.run.num_threads is not None:
        torch.set_num_threads(file.run.num_threads)
    resolved = resolved_config(file)
    loaded = load_prerequisites(file, base_dir)
    tsv = output_dir / f"{file.certify.mode}_sigma{file.smoothing.sigma:g}.tsv"
    results = ResultsTSV(tsv, hashed_config(resolved), run_info(file, config_path, resolved))
    indices, pending = load_selection(file, loaded, set(results.rows))
    remaining = 0 if pending is None else len(pending.indices)
    log.info("%d images selected, %d already in %s, %d to go", len(indices), len(indices) - remaining, tsv, remaining)
    if pending is not None:
        model, num_classes = build_model(file, loaded, tuple(pending.x.shape[1:]))
        spec = SmoothingSpec(file.smoothing.sigma, num_classes, file.certify.N0, file.certify.N, file.certify.alpha,
                             file.run.batch, file.certify.seed)
        certify_images(model, pending, spec, file.certify.mode, results, torch.device(file.run.device))
    rows = [results.rows[int(i)] for i in indices]
    outputs = write_report(file, rows, tsv)
    abstained = sum(r.predict == ABSTAIN for r in rows)
    log.info("%d images, %d correct, %d abstained; table %s", len(rows), sum(r.correct for r in rows), abstained,
             outputs.table)
    return outputs
