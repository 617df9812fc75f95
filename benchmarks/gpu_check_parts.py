"""The measuring parts of benchmarks/gpu_check.py: each mode's plan, timing and peak memory, the networks (real
sizes with random weights, or the tiny reference networks of tests/data), and the throughput, gradient and
numerics sections. Every section takes a Check (device, mode, deadline) and returns a JSON-ready dict."""
from __future__ import annotations

import dataclasses
import functools
import gc
import json
import logging
import statistics
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional

import torch
import torch.nn.functional as F
from torch import nn

from attacks.accounting import measured
from classifiers.wide_resnet import wide_resnet
from ddpm import DDPMUNet
from diffusion.backbone import VPBackbone
from guided_diffusion import IMPROVED_CIFAR10_UNCOND, DiscreteSchedule, GuidedDiffusionBackbone, UNetModel
from runners.backbones import BackboneConfig, build_backbone, parse_backbone_model
from runners.defended import DefendedClassifier
from runners.purifiers import PRESETS, DiffusionPurifier, PurifierConfig
from score_sde import NCSNpp, ScoreSDEBackbone
from utils.cli import one_line
from utils.config import from_dict, read_yaml
from utils.devices import synchronize
from utils.precision import numerics

log = logging.getLogger("gpu_check")
ROOT = Path(__file__).resolve().parents[1]
CONFIGS, DATA = ROOT / "configs", ROOT / "tests" / "data"
GIB = float(1 << 30)
SEED = 0
T_STAR = 0.1  # the papers' t* on CIFAR-10; dt = T_STAR / plan.steps
COMPILE_RESERVE_S = 120.0  # a torch.compile of the deep NCSN++ starts only with this much of the budget left


@dataclass(frozen=True)
class Plan:
    """One mode's sizes: the purification's steps, the steps a timed call runs (times scale linearly to `steps`),
    batch sizes, timed repeats (median) and the torch.compile variants."""

    steps: int
    timed_steps: int
    timed_steps_large: int  # for the 256x256 networks
    batches: tuple[int, ...]
    large_batches: tuple[int, ...]
    gradient_batches: tuple[int, ...]
    eval_batch: int  # per-evaluation timings (numerics, projection): eval.adv_batch_size of configs/cifar10.yml
    repeats: int
    compile_variants: Mapping[str, Mapping[str, str]]


FULL = Plan(100, 10, 2, (1, 16, 64, 256), (1, 4), (1, 8, 32, 64), 64, 3,
            {"default": {"mode": "default"}, "reduce-overhead": {"mode": "reduce-overhead"}})
TINY = Plan(4, 2, 2, (1, 2), (1, 2), (1, 2), 2, 1, {"default (backend eager: tiny mode)": {"backend": "eager"}})


@dataclass(frozen=True)
class Check:
    """What every section gets: the device, the networks and sizes, the time (time.monotonic) after which no cell
    starts, the output folder, and the demo evaluation's Fashion-MNIST folder (None: the config's)."""

    device: torch.device
    tiny: bool  # the tiny reference networks instead of the full-size ones
    plan: Plan
    deadline: float
    out: Path
    fmnist_dir: Optional[str] = None

    def time_left(self) -> float:
        """Seconds of the budget left."""
        return self.deadline - time.monotonic()


def error_text(err: BaseException) -> str:
    """'TypeName: one-line message'."""
    return f"{type(err).__name__}: {one_line(err)}"


def free_memory(device: torch.device) -> None:
    """Drop unreachable tensors and hand cached CUDA blocks back (after a cell, an OOM above all)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def cell(check: Check, measure: Callable[[], dict], reserve_s: float = 0.0) -> dict:
    """measure(), or {'skipped': why} with less than reserve_s of the budget left, or {'error': 'OOM' | text}."""
    if check.time_left() <= reserve_s:
        return {"skipped": f"budget: {check.time_left():.0f} s left, this needs {reserve_s:.0f} s"}
    try:
        return measure()
    except torch.cuda.OutOfMemoryError:
        return {"error": "OOM"}
    except Exception as err:  # one failing measurement must not cost the others: record it and go on
        log.warning("measurement failed: %s", error_text(err))
        return {"error": error_text(err)}
    finally:
        free_memory(check.device)


def per_batch(check: Check, batches: tuple[int, ...], measure: Callable[[int], dict]) -> dict[str, dict]:
    """{str(batch): cell(measure(batch))} for each batch size."""
    return {str(b): cell(check, functools.partial(measure, b)) for b in batches}


def median_seconds(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int = 1) -> float:
    """Median wall time of `repeats` calls of fn after `warmup` untimed ones, CUDA synchronised around each."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def timed_peak(fn: Callable[[], object], device: torch.device) -> tuple[float, Optional[float], Optional[float]]:
    """(seconds, GiB allocated before, peak GiB allocated during) of one call of fn; memory None off CUDA."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device) / GIB if device.type == "cuda" else None
    seconds = median_seconds(fn, device, repeats=1, warmup=0)
    peak = torch.cuda.max_memory_allocated(device) / GIB if device.type == "cuda" else None
    return seconds, before, peak


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b| (both moved to the CPU)."""
    a, b = a.detach().float().cpu(), b.detach().float().cpu()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Initialise modules that draw from the global CPU RNG from `seed`, leaving the caller's RNG state untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def images(batch: int, size: int, device: torch.device) -> torch.Tensor:
    """(batch, 3, size, size) uniform images in [0, 1] from a seeded generator."""
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(SEED + 1)).to(device)


@dataclass(frozen=True)
class Network:
    """A score network of the check: its YAML `backbone:` at full size (random weights) and the tiny reference
    network of tests/data standing in for it, with the image size of each."""

    full: Callable[[], dict]
    tiny: Callable[[], dict]
    full_size: int
    large: bool = False


def reference_config(folder: str) -> dict:
    """tests/data/<folder>/config.json."""
    return json.loads((DATA / folder / "config.json").read_text())


def ddpm_tiny_unet() -> dict:
    """The tiny DDPM's UNet options (SDEdit's config layout, as tests/test_ddpm.py reads them)."""
    config = reference_config("ddpm_celebahq_tiny")["config"]
    keys = ("in_channels", "out_ch", "ch", "ch_mult", "num_res_blocks", "attn_resolutions", "dropout",
            "resamp_with_conv")
    return {**{k: config["model"][k] for k in keys}, "image_size": config["data"]["image_size"]}


def _backbone(config_file: str) -> dict:
    """The YAML `backbone:` of configs/<config_file> without its checkpoint (the full-size networks get random weights)."""
    return {k: v for k, v in read_yaml(CONFIGS / config_file)["backbone"].items() if k != "checkpoint"}


def _tiny(full: dict, folder: str, checkpoint: str, unet: dict) -> dict:
    """The full-size section with the UNet options and checkpoint of the reference network tests/data/<folder>."""
    return {**full, "checkpoint": f"tests/data/{folder}/{checkpoint}", "model": {**full.get("model", {}), "unet": unet}}


IMPROVED = {"name": "guided_diffusion", "model": dataclasses.asdict(IMPROVED_CIFAR10_UNCOND)}  # no YAML config
NETWORKS: dict[str, Network] = {
    "ncsnpp_deep": Network(lambda: _backbone("cifar10.yml"), lambda: read_yaml(CONFIGS / "tiny.yml")["backbone"], 32),
    "adm256": Network(lambda: _backbone("imagenet_coup.yml"), lambda: _tiny(
        _backbone("imagenet_coup.yml"), "adm_tiny", "model.pt", reference_config("adm_tiny")["config"]), 256, large=True),
    "ddpm_celebahq": Network(lambda: _backbone("celebahq_diffpure.yml"), lambda: _tiny(
        _backbone("celebahq_diffpure.yml"), "ddpm_celebahq_tiny", "model.pt", ddpm_tiny_unet()), 256, large=True),
    "improved_cifar10": Network(lambda: IMPROVED, lambda: _tiny(
        IMPROVED, "improved_diffusion_tiny", "model.pt", reference_config("improved_diffusion_tiny")["config"]), 32),
}


def _discrete(net_class: type[nn.Module], model: Any, sde: Any) -> VPBackbone:
    """An ADM / improved-diffusion / DDPM UNet (model.unet) with random weights on its schedule (model.schedule)."""
    with seeded(SEED):
        net = net_class(model.unet)
    return GuidedDiffusionBackbone(net, DiscreteSchedule.from_config(model.schedule), sde)


# backbone registry name -> (typed model options, VP-SDE) -> the adapter around a randomly initialised network
RANDOM_BACKBONES: dict[str, Callable[[Any, Any], VPBackbone]] = {
    "score_sde": lambda model, sde: ScoreSDEBackbone(NCSNpp(model, torch.Generator().manual_seed(SEED)), sde),
    "guided_diffusion": functools.partial(_discrete, UNetModel),
    "ddpm": functools.partial(_discrete, DDPMUNet),
}


def build_network(check: Check, name: str) -> VPBackbone:
    """NETWORKS[name] on the device, frozen, eval mode: tiny mode loads the reference checkpoint through the backbone
    registry; full mode parses the YAML through the registry and builds the network with random weights."""
    network = NETWORKS[name]
    if check.tiny:
        backbone = build_backbone(from_dict(BackboneConfig, network.tiny(), "backbone"), ROOT)
    else:
        config = from_dict(BackboneConfig, network.full(), "backbone")
        backbone = RANDOM_BACKBONES[config.name](parse_backbone_model(config), config.sde())
    return backbone.eval().requires_grad_(False).to(check.device)


def image_size(check: Check, name: str) -> int:
    """The input size of NETWORKS[name] in this mode (the tiny references are all 32x32)."""
    return 32 if check.tiny else NETWORKS[name].full_size


# (depth, widen factor) of each classifier: full size, tiny stand-in
CLASSIFIERS = {"wrn-28-10": {False: (28, 10), True: (10, 1)}, "wrn-70-16": {False: (70, 16), True: (16, 2)}}


def build_classifier(check: Check, name: str) -> nn.Module:
    """A WideResNet for 32x32 CIFAR-10 images with random weights from SEED, frozen, on the device."""
    depth, width = CLASSIFIERS[name][check.tiny]
    return wide_resnet(depth, width, num_classes=10, seed=SEED).eval().requires_grad_(False).to(check.device)


def grid_purifier(check: Check, backbone: VPBackbone, method: str, steps_run: int,
                  classifier: Optional[nn.Module] = None, **settings: Any) -> DiffusionPurifier:
    """`method` on the plan's grid (t_star 0.1, dt = t_star / plan.steps) cut to its first steps_run steps."""
    steps, dt = check.plan.steps, T_STAR / check.plan.steps
    t_end = PurifierConfig().t_end if steps_run >= steps else T_STAR - steps_run * dt
    config = PurifierConfig(name=method, t_star=T_STAR, dt=dt, t_end=t_end, **settings)
    purifier = DiffusionPurifier(backbone, config, classifier if PRESETS[method].guided else None)
    if purifier.grid.n_steps != min(steps_run, steps):
        raise RuntimeError(f"grid of {purifier.grid.n_steps} steps, expected {steps_run}")
    return purifier


def purification_cell(check: Check, purifier: DiffusionPurifier, x: torch.Tensor) -> dict:
    """Images/s of purifying x (B, C, H, W) in [0, 1], scaled from purifier.grid.n_steps to plan.steps steps."""
    def run() -> None:
        with torch.no_grad():
            purifier(x)

    with measured(DefendedClassifier(purifier, nn.Identity())) as cost:  # the counted call is the warm-up
        run()
    seconds = median_seconds(run, check.device, check.plan.repeats, warmup=0)
    per_step = seconds / purifier.grid.n_steps
    return {"batch": x.shape[0], "steps_timed": purifier.grid.n_steps, "seconds_per_step": per_step,
            "images_per_s": x.shape[0] / (per_step * check.plan.steps),
            "score_evals_per_s": cost.score_rows / seconds, "score_evals_per_call": cost.score_rows,
            "classifier_evals_per_call": cost.classifier_rows}


def row_seconds(check: Check, forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                backward: bool) -> float:
    """Seconds per row of forward(x) (no grad), or of forward plus the input gradient of its sum."""
    def run() -> None:
        if backward:
            x_in = x.clone().requires_grad_(True)
            torch.autograd.grad(forward(x_in).sum(), x_in)
        else:
            with torch.no_grad():
                forward(x)

    return median_seconds(run, check.device, check.plan.repeats) / x.shape[0]


def score_forward(backbone: VPBackbone) -> Callable[[torch.Tensor], torch.Tensor]:
    """x in [0, 1] -> the score at t = t_star / 2 of 2x - 1 (one score-network evaluation per row)."""
    return lambda x: backbone(x * 2 - 1, torch.full((x.shape[0],), T_STAR / 2, device=x.device))


def forward_cell(check: Check, forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> dict:
    """Evaluations per second of forward on the rows of x."""
    seconds = row_seconds(check, forward, x, backward=False)
    return {"batch": x.shape[0], "seconds_per_call": seconds * x.shape[0], "evals_per_s": 1.0 / seconds}


def network_rows(check: Check, name: str, classifier: Optional[nn.Module] = None,
                 methods: tuple[str, ...] = ("diffpure",)) -> dict:
    """Score-network evaluations/s and each method's purification images/s of NETWORKS[name], per batch."""
    backbone, size = build_network(check, name), image_size(check, name)
    large = NETWORKS[name].large
    batches = check.plan.large_batches if large else check.plan.batches
    timed = check.plan.timed_steps_large if large else check.plan.timed_steps
    rows = {"score_forward": per_batch(check, batches, lambda b: forward_cell(
        check, score_forward(backbone), images(b, size, check.device)))}
    for method in methods:
        rows[method] = per_batch(check, batches, lambda b, m=method: purification_cell(
            check, grid_purifier(check, backbone, m, timed, classifier), images(b, size, check.device)))
    if not large:  # the linear scaling checked once: a whole purification at the second batch size
        rows["check_all_steps"] = cell(check, lambda: purification_cell(check, grid_purifier(
            check, backbone, methods[0], check.plan.steps, classifier), images(batches[1], size, check.device)))
    return rows


def classifier_rows(check: Check, name: str) -> dict[str, dict]:
    """Forwards per second of classifier `name` on 32x32 images, per batch."""
    classifier = build_classifier(check, name)
    return per_batch(check, check.plan.batches, lambda b: forward_cell(check, classifier, images(b, 32, check.device)))


def throughput(check: Check) -> dict:
    """Purification images/s and score-network evaluations/s per network and batch; WRN-70-16 forwards/s."""
    plan = check.plan
    out: dict[str, Any] = {
        "steps": plan.steps, "t_star": T_STAR, "dt": T_STAR / plan.steps, "repeats": plan.repeats,
        "assumption": f"a timed call runs the first steps_timed steps of the grid (exact backend, no gradient; "
                      f"warm-up excluded, median of {plan.repeats}); images_per_s = batch / (seconds_per_step x "
                      f"{plan.steps}); check_all_steps times a whole {plan.steps}-step purification once; "
                      f"the 256x256 rows show DiffPure at {plan.steps} steps (configs/celebahq_diffpure.yml's "
                      f"ancestral method takes 500 steps of the same cost)"}
    guidance = build_classifier(check, "wrn-28-10")
    out["ncsnpp_deep"] = cell(check, lambda: network_rows(check, "ncsnpp_deep", guidance, ("coup", "diffpure")))
    out["wrn_70_16_forward"] = cell(check, lambda: classifier_rows(check, "wrn-70-16"))
    for name in ("adm256", "ddpm_celebahq", "improved_cifar10"):
        out[name] = cell(check, functools.partial(network_rows, check, name))
    return out


@dataclass(frozen=True)
class GradientSetting:
    """How the defended model's input gradient is computed: solver backend, guidance gradient, checkpointing."""

    backend: str
    grad_mode: str
    checkpoint: bool = True
    graph_half: bool = False  # purifier.graph_steps = n_steps // 2

    def fields(self, n_steps: int) -> dict[str, Any]:
        """The PurifierConfig fields of this setting for an n_steps grid."""
        fields = {"backend": self.backend, "grad_mode": self.grad_mode, "checkpoint": self.checkpoint}
        return {**fields, "graph_steps": n_steps // 2} if self.graph_half else fields

    @property
    def keeps_graphs(self) -> bool:
        """Whether memory grows with the steps (some steps keep their graph)."""
        return not self.checkpoint or self.graph_half


GRADIENT_SETTINGS = {
    "exact/full/checkpoint": GradientSetting("exact", "full"),
    "exact/detached/checkpoint": GradientSetting("exact", "detached"),
    "torchsde/detached (adjoint)": GradientSetting("torchsde", "detached"),
    "torchsde/full (adjoint)": GradientSetting("torchsde", "full"),
    "exact/full/plain": GradientSetting("exact", "full", checkpoint=False),
    "exact/detached/plain": GradientSetting("exact", "detached", checkpoint=False),
}
GRAPH_STEPS_SETTING = ("exact/full/graph_steps=n//2", GradientSetting("exact", "full", graph_half=True))


def gradient_settings() -> dict[str, GradientSetting]:
    """GRADIENT_SETTINGS, plus graph_steps = n // 2 where PurifierConfig has that field."""
    has_graph_steps = "graph_steps" in {f.name for f in dataclasses.fields(PurifierConfig)}
    return {**GRADIENT_SETTINGS, **dict([GRAPH_STEPS_SETTING] if has_graph_steps else [])}


def gradient_cell(check: Check, backbone: VPBackbone, classifier: nn.Module, setting: GradientSetting,
                  batch: int, steps_run: int) -> dict:
    """Seconds per image and peak memory of one input gradient of cross-entropy through COUP + classifier; the
    warm-up is a one-step gradient of the same setting; times and graph-keeping memory scale to plan.steps."""
    x, y = images(batch, 32, check.device), torch.zeros(batch, dtype=torch.long, device=check.device)

    def gradient(steps: int) -> Callable[[], object]:
        purifier = grid_purifier(check, backbone, "coup", steps, classifier, **setting.fields(steps))
        defended = DefendedClassifier(purifier, classifier)

        def run() -> None:
            x_in = x.clone().requires_grad_(True)
            torch.autograd.grad(F.cross_entropy(defended(x_in), y), x_in)

        return run

    gradient(1)()
    seconds, before, peak = timed_peak(gradient(steps_run), check.device)
    scale = check.plan.steps / steps_run
    out = {"batch": batch, "steps_timed": steps_run, "seconds_per_image": seconds * scale / batch,
           "peak_memory_gib": peak, "memory_before_gib": before}
    if peak is not None:
        total = torch.cuda.get_device_properties(check.device).total_memory / GIB
        projected = before + (peak - before) * (scale if setting.keeps_graphs else 1.0)
        out.update(projected_peak_gib_all_steps=projected, fits_all_steps=projected < total, device_memory_gib=total)
    return out


def setting_rows(check: Check, backbone: VPBackbone, classifier: nn.Module, setting: GradientSetting) -> dict:
    """gradient_cell per batch size; after an OOM the larger batches are not tried."""
    rows: dict[str, dict] = {}
    for batch in check.plan.gradient_batches:
        if any(row.get("error") == "OOM" for row in rows.values()):
            rows[str(batch)] = {"error": "OOM", "skipped": "OOM at a smaller batch"}
            continue
        rows[str(batch)] = cell(check, functools.partial(gradient_cell, check, backbone, classifier, setting, batch,
                                                         check.plan.timed_steps))
    return rows


def gradient(check: Check) -> dict:
    """Input-gradient seconds per image and peak GPU memory of the defended model (COUP, deep NCSN++, WRN-28-10)."""
    plan = check.plan
    backbone, classifier = build_network(check, "ncsnpp_deep"), build_classifier(check, "wrn-28-10")
    settings = gradient_settings()
    out: dict[str, Any] = {
        "steps": plan.steps, "dt": T_STAR / plan.steps, "loss": "cross-entropy of the defended logits",
        "graph_steps": "measured" if GRAPH_STEPS_SETTING[0] in settings else
                       "not measured: PurifierConfig has no graph_steps field",
        "assumption": f"each timed gradient runs steps_timed of the {plan.steps} steps once (after a one-step "
                      f"warm-up); seconds scale linearly to {plan.steps} steps; peak memory is measured at "
                      f"steps_timed; projected_peak_gib_all_steps scales the memory above the resident linearly "
                      f"for settings that keep step graphs (plain, graph_steps) and keeps it for checkpointed "
                      f"and adjoint ones (flat in steps)",
        "settings": {name: dataclasses.asdict(s) for name, s in settings.items()}}
    out["rows"] = {name: setting_rows(check, backbone, classifier, s) for name, s in settings.items()}
    out["check_all_steps"] = cell(check, lambda: gradient_cell(
        check, backbone, classifier, GRADIENT_SETTINGS["exact/detached/checkpoint"], 1, plan.steps))
    return out


def compile_cell(check: Check, module: nn.Module, x: torch.Tensor, t: torch.Tensor, reference: torch.Tensor,
                 eager_s: float, options: Mapping[str, str]) -> dict:
    """torch.compile(module, **options) at float32: compile seconds (first call minus an eager call), seconds per
    call, ratio to eager, and the max relative difference to the eager output (first call and a replay)."""
    if options.get("mode") == "reduce-overhead" and check.device.type != "cuda":
        return {"skipped": "CUDA graphs need a CUDA device"}
    torch.compiler.reset()
    compiled = torch.compile(module, **options)
    with torch.no_grad(), numerics("float32"):
        synchronize(check.device)
        start = time.perf_counter()
        first = compiled(x, t).clone()
        synchronize(check.device)
        first_s = time.perf_counter() - start
        seconds = median_seconds(lambda: compiled(x, t), check.device, check.plan.repeats, warmup=2)
        replay = compiled(x, t).clone()
    return {"options": dict(options), "compile_s": first_s - eager_s, "seconds_per_call": seconds,
            "ratio_vs_eager": seconds / eager_s, "max_rel_diff": max(rel_err(first, reference),
                                                                       rel_err(replay, reference))}


def numerics_section(check: Check) -> dict:
    """Float32 vs TF32 (utils.precision contexts) and torch.compile of the deep NCSN++ forward at eval_batch."""
    plan = check.plan
    backbone = build_network(check, "ncsnpp_deep")
    x = images(plan.eval_batch, image_size(check, "ncsnpp_deep"), check.device) * 2 - 1
    t = torch.full((plan.eval_batch,), T_STAR / 2, device=check.device)
    outputs, seconds, flags = {}, {}, {}
    with torch.no_grad():
        for precision in ("float32", "tf32"):
            with numerics(precision) as flags[precision]:
                outputs[precision] = backbone(x, t)
                seconds[precision] = median_seconds(lambda: backbone(x, t), check.device, plan.repeats)
    out: dict[str, Any] = {
        "batch": plan.eval_batch, "seconds_float32": seconds["float32"], "seconds_tf32": seconds["tf32"],
        "time_ratio_tf32_over_float32": seconds["tf32"] / seconds["float32"],
        "max_rel_diff_tf32": rel_err(outputs["tf32"], outputs["float32"]), "flags": flags,
        "note": "measured options only: the project's default stays full float32 and eager"}
    reserve = 0.0 if check.tiny else COMPILE_RESERVE_S
    out["compile"] = {name: cell(check, functools.partial(compile_cell, check, backbone, x, t, outputs["float32"],
                                                          seconds["float32"], options), reserve_s=reserve)
                      for name, options in plan.compile_variants.items()}
    return out


def evaluation_seconds(check: Check) -> dict[str, float]:
    """Seconds per row at eval_batch: deep NCSN++ score forward and forward+input-gradient, WRN-28-10 likewise."""
    x = images(check.plan.eval_batch, 32, check.device)
    score, classifier = score_forward(build_network(check, "ncsnpp_deep")), build_classifier(check, "wrn-28-10")
    return {"score_forward": row_seconds(check, score, x, backward=False),
            "score_forward_backward": row_seconds(check, score, x, backward=True),
            "classifier_forward": row_seconds(check, classifier, x, backward=False),
            "classifier_forward_backward": row_seconds(check, classifier, x, backward=True)}
