"""One-shot GPU check: reference-vector correctness and the demo evaluation on the device, purification throughput,
input-gradient cost and memory, float32 / TF32 / torch.compile numerics, and GPU-hour projections of the papers'
attacks, into <out>/gpu_check.json and <out>/gpu_check.md (the table is also printed).

    python benchmarks/gpu_check.py --device cuda --out results/gpu_check
    python benchmarks/gpu_check.py --device cpu --tiny --out /tmp/gpucheck     (tiny networks, seconds on a CPU)

Sections run in the order correctness, throughput, gradient, projection, numerics; each is recorded on its own (an
error in one is written down and the next runs), and the files are rewritten after each. Once --budget_s seconds
have passed no further measurement starts: the rest is recorded as skipped. Full-size networks get random weights.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import logging
import math
import os
import platform
import shutil
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import eval_sde_adv  # noqa: E402
from attacks.accounting import PAPER_IMAGES  # noqa: E402
from attacks.registry import build_attack  # noqa: E402
from benchmarks.gpu_check_parts import (CONFIGS, DATA, FULL, TINY, Check, ddpm_tiny_unet, reference_config, cell,  # noqa: E402
                                        error_text, evaluation_seconds, free_memory, gradient, numerics_section,
                                        rel_err, throughput)
from ddpm import DDPMUNetConfig, load_ddpm_unet  # noqa: E402
from evaluation.experiment import load_experiment  # noqa: E402
from evaluation.overrides import switch_purifier  # noqa: E402
from evaluation.results import read_records  # noqa: E402
from evaluation.run_plan import attack_budget, evaluations_per_pass, reverse_steps  # noqa: E402
from guided_diffusion import UNetConfig, load_unet  # noqa: E402
from runners.backbones import BackboneConfig  # noqa: E402
from score_sde import NCSNppConfig, ScoreSDEBackbone, load_score_model  # noqa: E402
from utils.cli import parser, setup_logging  # noqa: E402
from utils.config import ConfigError, from_dict, read_yaml  # noqa: E402
from utils.devices import device_name, resolve_device  # noqa: E402
from utils.files import atomic_write_text  # noqa: E402
from utils.precision import numerics  # noqa: E402
from utils.provenance import provenance  # noqa: E402

log = logging.getLogger("gpu_check")
REFERENCE_TOLERANCE = 1e-5  # tests/data/README.md: max |ours - official| / max |official| of the tests
DEMO_TOLERANCE = 1e-3  # relative, on the float fields of the demo's per-image records (device vs CPU)
WALL_TIME_FIELDS = ("written_at", "seconds")  # record fields that differ between any two computations
DEMO_ARGS = ["--config", str(CONFIGS / "demo.yml"), "--set", "data.num_sub=4", "--set", "eval.adv_batch_size=4",
             "--set", "eval.save_examples=0", "--set", "attacks.0.iterations=1", "--set", "attacks.0.eot_samples=1",
             "--set", "attacks.0.eval_samples=2"]
TINY_DEMO_ARGS = ["--set", "purifier.dt=0.05"]  # tiny mode: 2 reverse steps instead of the demo's 10
METHODS = ("coup", "diffpure")


def _ncsnpp(folder: str, fir: bool) -> Callable[[torch.device, dict], dict[str, torch.Tensor]]:
    """The official Score-SDE reference: NCSN++ output on (x, labels) and the score on (x, t)."""
    def outputs(device: torch.device, cases: dict) -> dict[str, torch.Tensor]:
        model = from_dict(NCSNppConfig, {**read_yaml(CONFIGS / "tiny.yml")["backbone"]["model"], "fir": fir})
        net = load_score_model(model, DATA / folder / "checkpoint.pth").to(device)
        score = ScoreSDEBackbone(net, BackboneConfig(name="score_sde").sde())(cases["x"], cases["t"])
        return {"net_out": net(cases["x"], cases["labels"]), "score": score}
    return outputs


def _unet(folder: str) -> Callable[[torch.device, dict], dict[str, torch.Tensor]]:
    """An OpenAI reference UNet's output on (x, timesteps)."""
    def outputs(device: torch.device, cases: dict) -> dict[str, torch.Tensor]:
        net = load_unet(from_dict(UNetConfig, reference_config(folder)["config"]), DATA / folder / "model.pt").to(device)
        return {"out": net(cases["x"], cases["timesteps"])}
    return outputs


def _ddpm(device: torch.device, cases: dict) -> dict[str, torch.Tensor]:
    """SDEdit's DDPM reference output on (x, t)."""
    net = load_ddpm_unet(from_dict(DDPMUNetConfig, ddpm_tiny_unet()), DATA / "ddpm_celebahq_tiny" / "model.pt")
    return {"out": net.to(device)(cases["x"], cases["t"])}


# tests/data folder -> (device, its cases on the device) -> {stored output name: our output}
REFERENCES = {"ncsnpp_tiny": _ncsnpp("ncsnpp_tiny", False), "ncsnpp_tiny_fir": _ncsnpp("ncsnpp_tiny_fir", True),
              "adm_tiny": _unet("adm_tiny"), "improved_diffusion_tiny": _unet("improved_diffusion_tiny"),
              "ddpm_celebahq_tiny": _ddpm}


def reference_check(check: Check, folder: str) -> dict:
    """Max relative error of our outputs on the device vs the stored official ones, pass at the tests' tolerance."""
    cases = torch.load(DATA / folder / "cases.pt", weights_only=True)
    on_device = {k: v.to(check.device) if isinstance(v, torch.Tensor) else v for k, v in cases.items()}
    with torch.no_grad(), numerics("float32"):
        outputs = REFERENCES[folder](check.device, on_device)
    errors = {name: rel_err(value, cases[name]) for name, value in outputs.items()}
    return {"max_rel_err": errors, "tolerance": REFERENCE_TOLERANCE, "pass": max(errors.values()) <= REFERENCE_TOLERANCE}


def device_args(device: torch.device) -> list[str]:
    """The --set that holds eval_sde_adv on `device` (its default, auto, would take the GPU)."""
    return ["--set", f"eval.device={device}"]


def demo_run(check: Check, device: torch.device, folder: Path) -> Path:
    """eval_sde_adv on the demo config (4 images, one PGD step) on `device` into folder, emptied first (a run folder
    resumes only under the code that started it); the run folder. Its summary (printed to stdout) goes to the debug
    log: this script's output is its own table."""
    shutil.rmtree(folder, ignore_errors=True)
    extra = [*(["--set", f"data.data_dir={check.fmnist_dir}"] if check.fmnist_dir else []),
             *(TINY_DEMO_ARGS if check.tiny else [])]
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        code = eval_sde_adv.main([*DEMO_ARGS, *extra, "--output_dir", str(folder), *device_args(device)])
    log.debug("%s", printed.getvalue())
    if code != 0:
        raise RuntimeError(f"eval_sde_adv exited with {code} on {device} (its log says why)")
    return next(path.parent for path in sorted(folder.glob("*/results*.jsonl")))


def differences(a: Any, b: Any, where: str) -> Iterator[tuple[str, float]]:
    """(path, relative difference) of every float leaf of two records, and (path, inf) where other values differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b), key=str):
            yield from differences(a.get(key), b.get(key), f"{where}.{key}")
    elif isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and len(a) == len(b):
        for i, (u, v) in enumerate(zip(a, b)):
            yield from differences(u, v, f"{where}[{i}]")
    elif isinstance(a, float) and isinstance(b, (int, float)) and not isinstance(b, bool):
        both_nan, one_nan = math.isnan(a) and math.isnan(b), math.isnan(a) or math.isnan(b)
        yield where, 0.0 if both_nan else math.inf if one_nan else abs(a - b) / max(abs(a), abs(b), 1e-12)
    elif a != b:
        yield where, math.inf


def record_fields(record: Any) -> Optional[dict]:
    """An image record as a dict without its wall-time fields; None for a missing record."""
    if record is None:
        return None
    return {k: v for k, v in dataclasses.asdict(record).items() if k not in WALL_TIME_FIELDS}


def demo_comparison(check: Check) -> dict:
    """The demo evaluation on the device and on the CPU (both on the CPU in tiny mode), record by record."""
    devices = {"device": torch.device("cpu") if check.tiny else check.device, "cpu": torch.device("cpu")}
    runs = {tag: read_records(demo_run(check, device, check.out / f"demo_{tag}"))
            for tag, device in devices.items()}
    found = [d for i in sorted(set(runs["cpu"]) | set(runs["device"]))
             for d in differences(record_fields(runs["device"].get(i)), record_fields(runs["cpu"].get(i)), f"[{i}]")]
    mismatches = [where for where, diff in found if diff > DEMO_TOLERANCE]
    finite = [diff for _, diff in found if math.isfinite(diff)]
    return {"images": len(runs["device"]), "devices": {k: str(v) for k, v in devices.items()},
            "tolerance": DEMO_TOLERANCE,
            "max_rel_diff": max(finite, default=0.0), "mismatches": mismatches[:20], "n_mismatches": len(mismatches),
            "pass": not mismatches and len(runs["device"]) > 0}


def correctness(check: Check) -> dict:
    """Every reference network on the device, then the demo evaluation on the device vs on the CPU."""
    out: dict[str, Any] = {"references": {name: cell(check, lambda n=name: reference_check(check, n))
                                          for name in REFERENCES}}
    out["demo"] = cell(check, lambda: demo_comparison(check))
    return out


def pass_seconds(config: Any, seconds: dict[str, float]) -> tuple[float, float]:
    """(forward, forward-backward) seconds per image of the defended model from per-row evaluation times."""
    n_forward, n_gradient = evaluations_per_pass(config)
    steps, guided = reverse_steps(config), config.guidance_scale != 0.0
    per_eval = seconds["score_forward"] + (seconds["classifier_forward_backward"] if guided else 0.0)
    backward = steps * (seconds["score_forward_backward"] - seconds["score_forward"])
    second_order = steps * seconds["classifier_forward_backward"] if guided and config.grad_mode == "full" else 0.0
    return (n_forward * per_eval + seconds["classifier_forward"],
            n_gradient * per_eval + backward + second_order + seconds["classifier_forward_backward"])


def autoattack_counts(spec: Any) -> dict:
    """Per-image gradient and forward passes of pyautoattack's version, read off the adversary the project builds."""
    attack = build_attack(spec.name, spec.config)
    adversary = attack.adversary(torch.nn.Identity(), seed=0, device=torch.device("cpu"))
    apgd, targeted, fab, square = adversary.apgd, adversary.apgd_targeted, adversary.fab, adversary.square
    untargeted = (apgd.n_restarts * (apgd.n_iter + 1) * apgd.eot_iter, 1)
    per_attack = {"apgd-ce": untargeted, "apgd-dlr": untargeted,
                  "apgd-t": (targeted.n_target_classes * targeted.n_restarts * (targeted.n_iter + 1)
                             * targeted.eot_iter, 1 + targeted.n_target_classes * targeted.n_restarts),
                  "fab-t": (fab.n_target_classes * fab.n_restarts * fab.n_iter,
                            1 + fab.n_target_classes * fab.n_restarts * (fab.n_iter + 3)),
                  "square": (0, square.n_restarts * (square.n_queries + 1))}
    counts = {name: per_attack[name] for name in adversary.attacks_to_run}
    budget = attack_budget(spec.name, spec)
    return {"attacks": {k: {"gradient_passes": g, "forward_passes": f} for k, (g, f) in counts.items()},
            "gradient_passes": sum(g for g, _ in counts.values()),
            "forward_passes": sum(f for _, f in counts.values()) + 1 + len(counts) + budget.scoring,
            "repo_run_plan_gradient_passes": budget.gradient_passes}


def survivor_factor(method: str, budget: Any, config: Any) -> tuple[Optional[float], str]:
    """Measured score evaluations per image of docs/converged/<method run> over the cascade's upper bound at that
    run's own steps (every stage on every image), and where it came from."""
    for path in sorted((CONFIGS.parent / "docs" / "converged").glob("*/summary.json")):
        summary = json.loads(path.read_text())
        if summary.get("config", {}).get("purifier", {}).get("name") == method:
            run = load_experiment(CONFIGS / "converged.yml", {"purifier": summary["config"]["purifier"]}).purifier
            forward, grad = evaluations_per_pass(run)
            bound = budget.gradient_passes * grad + (1 + budget.scoring) * forward
            return summary["cost_per_image"]["cascade"]["score_evals"] / bound, str(path.relative_to(CONFIGS.parent))
    return None, "no docs/converged run of this method"


def projection_row(config: Any, seconds: dict[str, float], gradient_passes: int, forward_passes: int,
                   factor: float = 1.0) -> dict:
    """GPU-hours on PAPER_IMAGES images for the given passes per image, from pass_seconds."""
    forward_s, gradient_s = pass_seconds(config, seconds)
    per_image = factor * (gradient_passes * gradient_s + forward_passes * forward_s)
    return {"gpu_hours": PAPER_IMAGES * per_image / 3600, "seconds_per_image": per_image,
            "pass_seconds": {"forward": forward_s, "forward_backward": gradient_s},
            "evaluations_per_pass": evaluations_per_pass(config), "steps": reverse_steps(config),
            "backend": config.backend, "grad_mode": config.grad_mode, "gradient_passes": gradient_passes,
            "forward_passes": forward_passes, "survivor_factor": factor}


def projection(check: Check) -> dict:
    """GPU-hours on this device of AutoAttack standard / rand (configs/cifar10.yml) and of the converged cascade
    (configs/converged.yml at dt 0.001) on 512 CIFAR-10 images, COUP and DiffPure, from measured per-row times."""
    seconds = evaluation_seconds(check)
    cifar, converged = read_yaml(CONFIGS / "cifar10.yml"), read_yaml(CONFIGS / "converged.yml")
    out: dict[str, Any] = {"per_row_seconds": seconds, "batch": check.plan.eval_batch, "images": PAPER_IMAGES,
                           "assumptions": [
        "per-row times of the deep NCSN++ (score) and WRN-28-10 at the batch above (rows = images x EOT samples)",
        "a pass = n score evaluations (evaluation.run_plan.evaluations_per_pass), each with a guidance-classifier "
        "forward+backward when guided; the backward of a gradient pass adds steps x (score fwd+bwd - fwd), grad_mode "
        "full one more classifier fwd+bwd per step (its double backward), and the final classifier fwd(+bwd)",
        "AutoAttack: every image survives every attack (an upper bound: later attacks run on survivors only); "
        "counts read off pyautoattack's adversary as configs/cifar10.yml builds it; a few check forwards ignored",
        "cascade: every stage on every image, times the survivor factor measured in docs/converged (Fashion-MNIST "
        "demo models at 10 steps; CIFAR-10 survival may differ)", "no parallelism beyond one batch on one GPU"]}
    out["autoattack"] = {}
    for version in ("standard", "rand"):
        rows = {}
        for method in METHODS:
            experiment = load_experiment(CONFIGS / "cifar10.yml", {
                "purifier": switch_purifier(cifar["purifier"], method), "attacks.0.version": version})
            counts = autoattack_counts(experiment.attacks[0])
            rows[method] = {**projection_row(experiment.purifier, seconds, counts["gradient_passes"],
                                             counts["forward_passes"]), "counts": counts}
        out["autoattack"][version] = rows
    out["converged_cascade"] = {}
    for method in METHODS:
        experiment = load_experiment(CONFIGS / "converged.yml", {
            "purifier": {**switch_purifier(converged["purifier"], method), "dt": 0.001}})
        budget = attack_budget("cascade", experiment.attacks[0])
        factor, source = survivor_factor(method, budget, experiment.purifier)
        bound = projection_row(experiment.purifier, seconds, budget.gradient_passes, 1 + budget.scoring)
        out["converged_cascade"][method] = {"upper_bound": bound, "survivor_factor_source": source,
                                            "with_survivors": None if factor is None else projection_row(
                                                experiment.purifier, seconds, budget.gradient_passes,
                                                1 + budget.scoring, factor)}
    return out


SECTIONS: dict[str, Callable[[Check], dict]] = {"correctness": correctness, "throughput": throughput,
                                             "gradient": gradient, "projection": projection,
                                             "numerics": numerics_section}


def fmt(value: Any) -> str:
    """A number to 3 significant digits, None as n/a, anything else as text."""
    if value is None:
        return "n/a"
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def cell_value(result: dict, key: str, unit: str = "") -> str:
    """result[key] with its unit, or the cell's error or skip."""
    if "error" in result or "skipped" in result:
        return f"error: {result['error']}" if "error" in result else f"skipped ({result['skipped']})"
    return f"{fmt(result[key])}{unit}"


def per_batch_text(cells: dict[str, dict], key: str, unit: str = "") -> str:
    """'b1: 12.3 x; b16: ...' over a {batch: cell} dict."""
    return "; ".join(f"b{batch}: {cell_value(c, key, unit)}" for batch, c in cells.items())


def correctness_rows(section: dict) -> Iterator[tuple[str, str]]:
    """Reference errors with pass/fail, and the demo comparison."""
    for name, result in section["references"].items():
        verdict = "" if "pass" not in result else " (pass)" if result["pass"] else " (FAIL)"
        yield f"{name}: max rel err", cell_value({**result, "max": max(result.get("max_rel_err", {0: 0}).values())},
                                                 "max") + verdict
    demo = section["demo"]
    text = (cell_value(demo, "n_mismatches", f" mismatches of {demo.get('images')} images, max rel diff "
                       f"{fmt(demo.get('max_rel_diff'))}") + ("" if "pass" not in demo else
                                                             " (pass)" if demo["pass"] else " (FAIL)"))
    yield "demo evaluation: device vs cpu", text


def throughput_rows(section: dict) -> Iterator[tuple[str, str]]:
    """Evaluations/s and images/s per network, method and batch."""
    units = {"score_forward": ("evals_per_s", " evals/s"), "check_all_steps": ("images_per_s", " img/s")}
    for network in ("ncsnpp_deep", "adm256", "ddpm_celebahq", "improved_cifar10"):
        rows = section[network]
        if "error" in rows or "skipped" in rows:
            yield network, cell_value(rows, "")
            continue
        for kind, cells in rows.items():
            key, unit = units.get(kind, ("images_per_s", f" img/s at {section['steps']} steps"))
            yield f"{network} {kind}", cell_value(cells, key, unit) if kind == "check_all_steps" else \
                per_batch_text(cells, key, unit)
    wrn = section["wrn_70_16_forward"]
    yield "wrn-70-16 forward", cell_value(wrn, "") if "error" in wrn or "skipped" in wrn else \
        per_batch_text(wrn, "evals_per_s", " img/s")


def gradient_rows(section: dict) -> Iterator[tuple[str, str]]:
    """Seconds per image and peak memory per setting and batch."""
    for name, cells in section["rows"].items():
        yield f"{name}: s/image at {section['steps']} steps", per_batch_text(cells, "seconds_per_image")
        if any("peak_memory_gib" in c and c["peak_memory_gib"] is not None for c in cells.values()):
            yield f"{name}: peak GiB (projected to all steps)", "; ".join(
                f"b{b}: {cell_value(c, 'peak_memory_gib')} ({fmt(c.get('projected_peak_gib_all_steps'))})"
                for b, c in cells.items())
    yield "exact/detached/checkpoint b1, whole run", cell_value(section["check_all_steps"], "seconds_per_image",
                                                                " s/image")


def projection_rows(section: dict) -> Iterator[tuple[str, str]]:
    """GPU-hours of each projected evaluation."""
    for version, rows in section["autoattack"].items():
        for method, row in rows.items():
            yield f"AutoAttack {version}, {method}, {section['images']} images", \
                f"{fmt(row['gpu_hours'])} GPU-h ({row['gradient_passes']} grad + {row['forward_passes']} fwd passes)"
    for method, row in section["converged_cascade"].items():
        survivors = row["with_survivors"]
        yield f"converged cascade, {method}, {section['images']} images", \
            f"<= {fmt(row['upper_bound']['gpu_hours'])} GPU-h; with survivors " \
            f"{fmt(None if survivors is None else survivors['gpu_hours'])} GPU-h"


def numerics_rows(section: dict) -> Iterator[tuple[str, str]]:
    """TF32 and torch.compile against eager float32."""
    yield f"tf32 / float32 time (batch {section['batch']})", \
        f"{fmt(section['time_ratio_tf32_over_float32'])}x, max rel diff {fmt(section['max_rel_diff_tf32'])}"
    for name, result in section["compile"].items():
        yield f"torch.compile {name}", cell_value(result, "ratio_vs_eager", "x eager") + (
            "" if "ratio_vs_eager" not in result else
            f", compile {fmt(result['compile_s'])} s, max rel diff {fmt(result['max_rel_diff'])}")


SUMMARIES = {"correctness": correctness_rows, "throughput": throughput_rows, "gradient": gradient_rows,
             "projection": projection_rows, "numerics": numerics_rows}


def markdown(report: dict) -> str:
    """The table of every section's headline numbers, naming the device and torch version."""
    lines = [f"# GPU check: {report['device']}, torch {report['torch']} (CUDA {report['cuda']}), {report['mode']} "
             f"mode", "", "| section | measurement | value |", "|---|---|---|"]
    for name, section in report["sections"].items():
        if section["status"] == "ok":
            rows = list(SUMMARIES[name](section))
        else:
            rows = [("status", f"{section['status']}: {section.get('error') or section.get('reason')}")]
        lines += [f"| {name} | {label} | {value.replace('|', '/')} |" for label, value in rows]
    return "\n".join(lines) + "\n"


def run_section(check: Check, name: str) -> dict:
    """SECTIONS[name](check) with status 'ok', or its error and traceback, or 'skipped' once the budget is spent."""
    if check.time_left() <= 0:
        return {"status": "skipped", "reason": "the time budget (--budget_s) was spent"}
    log.info("section %s (%.0f s of the budget left)", name, check.time_left())
    start = time.monotonic()
    try:
        result = {"status": "ok", **SECTIONS[name](check)}
    except Exception as err:  # a failing section is recorded; the next one still runs
        log.error("section %s failed: %s", name, error_text(err))
        result = {"status": "error", "error": error_text(err), "traceback": traceback.format_exc(limit=-8)}
    finally:
        free_memory(check.device)
    return {**result, "seconds": time.monotonic() - start}


def host_name(device: torch.device) -> str:
    """The GPU's name (utils.devices.device_name), or the CPU's model name and core count."""
    if device.type == "cuda":
        return device_name(device)
    cpuinfo = Path("/proc/cpuinfo")
    names = [line.split(":", 1)[1].strip() for line in (cpuinfo.read_text().splitlines() if cpuinfo.is_file() else [])
             if line.startswith("model name")]
    return f"CPU {names[0] if names else platform.machine()} ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"


def write_report(report: dict, out: Path) -> str:
    """gpu_check.json and gpu_check.md in out (atomically); the markdown."""
    text = markdown(report)
    atomic_write_text(out / "gpu_check.json", json.dumps(report, indent=1, default=str) + "\n")
    atomic_write_text(out / "gpu_check.md", text)
    return text


def section_names(text: str) -> list[str]:
    """'a,b' -> ['a', 'b'], each a section name."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in SECTIONS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown section(s) {unknown}; valid: {', '.join(SECTIONS)}")
    return names


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    """The command line."""
    p = parser(__doc__)
    p.add_argument("--device", default="cuda", help="cuda, cuda:N, cpu or auto (utils.devices.resolve_device)")
    p.add_argument("--out", type=Path, default=Path("results/gpu_check"), help="folder of gpu_check.json / .md")
    p.add_argument("--tiny", action="store_true", help="tiny networks and sizes (seconds on a CPU)")
    p.add_argument("--sections", type=section_names, default=list(SECTIONS),
                   help=f"comma-separated subset of {','.join(SECTIONS)}")
    p.add_argument("--budget_s", type=float, default=420.0, help="start no measurement after this many seconds")
    p.add_argument("--fmnist_dir", help="Fashion-MNIST IDX folder of the demo evaluation (its data.data_dir; "
                                        "default: the config's, /usr/share/datasets/fashion-mnist)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's own choice)")
    args = p.parse_args(argv)
    try:
        args.device = resolve_device(args.device)
    except ConfigError as err:
        p.error(f"--device: {err}")
    return args


def main(argv: Optional[list[str]] = None) -> int:
    """Run the selected sections, rewriting the report after each; 0 unless a section failed."""
    args = parse_args(argv)
    setup_logging()
    if args.threads:
        torch.set_num_threads(args.threads)
    out = args.out.expanduser().resolve()
    check = Check(args.device, args.tiny, TINY if args.tiny else FULL, time.monotonic() + args.budget_s, out,
                  args.fmnist_dir)
    with numerics("float32"):  # the project's default numerics; the numerics section measures TF32 inside
        report = {"device": host_name(check.device), "device_type": check.device.type, "torch": torch.__version__,
                  "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
                  "mode": "tiny" if args.tiny else "full", "budget_s": args.budget_s,
                  "plan": dataclasses.asdict(check.plan), "provenance": provenance(), "sections": {}}
        for name in (n for n in SECTIONS if n in args.sections):
            report["sections"][name] = run_section(check, name)
            text = write_report(report, out)
    sys.stdout.write(text)  # the check's output is its table
    log.info("wrote %s and %s", out / "gpu_check.json", out / "gpu_check.md")
    return int(any(s["status"] == "error" for s in report["sections"].values()))


if __name__ == "__main__":
    sys.exit(main())
