"""`python -m t2s bench`: where the time of a training step goes on this device, and how t2s's denoiser compares
with diffusers' `UNet3DConditionModel` at a matched parameter count.

The benchmark drives the engine: it times `t2s.engine.Engine.train_step` itself (the optimizer groups of
`build_optimizer`, caption-dropout conditioning, the epoch loader, accelerate's autocast and accumulation), phase by
phase, for t2s's denoiser and for diffusers' UNet behind the same interface. The package, read in order:
`timing` (the machine, `PhaseTimer`, the summary and amortized shares), `flops` (FlopCounterMode on the meta device,
the matmul peak, MFU), `diffusers_model` (the matched UNet), `step` (the engine's step measured, sampling time, the
race), `goals` (the goals table, as data), `report` (bench.json and bench.md), `run` (the whole run), `contention` (one
training alone against two at once, `--contention`), and below, the command line.

Phases of one engine step (the config with gradient_accumulation_steps 1 and ema_update_every 1, so every step runs
every phase):
    data              next() of the engine's epoch loader + .to(device)
    text              caption dropout + the frozen text encoder's cached states (steady state: the cache is warm)
    forward_backward  noise and timesteps, the diffusion loss under autocast, backward
    grad_clip         clip_grad_norm_ over every parameter
    optimizer         AdamW step + zero_grad(set_to_none=True)
    ema               one EMA update
Bookkeeping between phases (the lr schedule's step, the step count) is deliberately left untimed: it shows up in the
residual, `residual = step total - sum(phases)`, reported next to the phases. `amortized_shares` weighs the phases
back to the config's accumulation and EMA interval. Step variants (`--variants`) depart from the config as a change
to the engine or the model would (precision, memory format, fused AdamW, torch.compile).

Outputs: `reports/bench/bench.json` and `reports/bench/bench.md`.

On a CPU shared with other work, run with `OMP_WAIT_POLICY=PASSIVE` in the environment (or `--threads 1`): torch's
OpenMP threads busy-wait by default, and one descheduled thread stalls every parallel region. The benchmark warns
when it starts in that situation.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

from ..config import ConfigError
from ..rundir import atomic_write_bytes, atomic_write_json
from ..arguments import device_argument, non_negative_float, non_negative_int, positive_int
from .contention import measure_contention
from .contention import to_markdown as contention_markdown
from .diffusers_model import DiffusersDenoiser, diffusers_unet_kwargs, match_diffusers, parameters_on_meta
from .flops import count_flops, matmul_peak, measure_peaks, mfu, training_step_flops
from .goals import GOALS, REFERENCE_SCALE, evaluate_goals
from .report import to_markdown, write_outputs
from .run import DEFAULT_OUT, REFERENCE_CLIPS, SCALE_DEFAULTS, bench_scale, run_benchmark
from .step import (
    DEFAULT_STEP_VARIANTS, DEFAULT_VARIANT_SCALES, SAMPLING_TARGET_STEPS, STEP_VARIANTS, StepOptions, bench_model,
    endless_batches, make_engine, race, time_sampling, timed_step, warm_caches,
)
from .timing import PHASES, PhaseTimer, StepTiming, amortized_shares, machine_info, make_sync, summarize_steps

__all__ = [
    "DiffusersDenoiser", "diffusers_unet_kwargs", "match_diffusers", "parameters_on_meta", "count_flops", "matmul_peak",
    "measure_peaks", "mfu", "training_step_flops", "GOALS", "REFERENCE_SCALE", "evaluate_goals", "to_markdown",
    "write_outputs", "DEFAULT_OUT", "REFERENCE_CLIPS", "SCALE_DEFAULTS", "bench_scale", "run_benchmark",
    "DEFAULT_STEP_VARIANTS", "DEFAULT_VARIANT_SCALES", "SAMPLING_TARGET_STEPS", "STEP_VARIANTS", "StepOptions",
    "bench_model", "endless_batches", "make_engine", "race", "time_sampling", "timed_step", "warm_caches", "PHASES",
    "PhaseTimer", "StepTiming", "amortized_shares", "machine_info", "make_sync", "summarize_steps",
    "add_arguments", "run_from_args", "main",
]


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The `bench` options, for `python -m t2s bench` (cli.py) or `python -m t2s.bench`."""
    parser.add_argument("--quick", action="store_true", help="smoke test: tiny only, few steps, 5 s race, no variants")
    parser.add_argument("--scales", default=f"tiny,{REFERENCE_SCALE}",
                        help=f"comma-separated params/scales names (default tiny,{REFERENCE_SCALE})")
    parser.add_argument("--steps", type=positive_int, help="measured steps per model (default per scale: "
                        + ", ".join(f"{k} {v[0]}" for k, v in SCALE_DEFAULTS.items()) + ")")
    parser.add_argument("--warmup", type=non_negative_int, help="warm-up steps per model, not measured (default 1)")
    parser.add_argument("--sampling-steps", type=positive_int,
                        help="DDIM steps actually run when timing sampling; the time is extrapolated linearly per step "
                             "to --sampling-target-steps (default per scale: "
                             + ", ".join(f"{k} {v[2]}" for k, v in SCALE_DEFAULTS.items()) + ")")
    parser.add_argument("--sampling-target-steps", type=positive_int, default=SAMPLING_TARGET_STEPS,
                        help=f"DDIM steps the sampling time is reported for (default {SAMPLING_TARGET_STEPS})")
    parser.add_argument("--race-seconds", type=non_negative_float, default=60.0,
                        help="wall-clock training budget per model in the t2s-vs-diffusers race (default 60; 0 skips)")
    parser.add_argument("--race-scale", help="scale of the race (default tiny)")
    parser.add_argument("--no-diffusers", action="store_true", help="skip diffusers' UNet3DConditionModel (and the race)")
    parser.add_argument("--variants",
                        help="comma-separated step variants of the t2s engine step to measure, or 'none' (default "
                             f"{','.join(DEFAULT_STEP_VARIANTS)}; known: {', '.join(STEP_VARIANTS)})")
    parser.add_argument("--variants-for-diffusers", action="store_true",
                        help="also run diffusers' model under each variant (the side-by-side at equal options)")
    parser.add_argument("--variant-scales", help=f"scales at which to run --variants (default {','.join(DEFAULT_VARIANT_SCALES)})")
    parser.add_argument("--reference-clips", type=positive_int, default=REFERENCE_CLIPS,
                        help=f"synthsign clips generated at the reference scale (default {REFERENCE_CLIPS})")
    parser.add_argument("-p", "--param", action="append", metavar="KEY=VALUE", help="config override for every scale")
    parser.add_argument("--data-dir", help="override data_dir (where synthsign caches live)")
    parser.add_argument("--device", type=device_argument, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--threads", type=positive_int, help="torch intra-op threads (default: torch's, one per core)")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="output folder (default reports/bench)")
    parser.add_argument("--contention", action="store_true",
                        help="only measure one tiny training alone against two at once (shared and unshared cores); "
                             "writes contention.json and contention.md to --out")
    return parser


def _split(text: Optional[str]) -> list[str]:
    return [s.strip() for s in (text or "").split(",") if s.strip()]


def run_contention(args: argparse.Namespace) -> int:
    result = measure_contention(steps=args.steps or 20, warmup=args.warmup or 3)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "contention.json", result)
    text = contention_markdown(result)
    atomic_write_bytes(out / "contention.md", text.encode("utf-8"))
    print(text)
    return 0


def run_from_args(args: argparse.Namespace) -> int:
    if args.contention:
        return run_contention(args)
    overrides = list(args.param or [])
    if args.data_dir:
        overrides.append(f"data_dir={args.data_dir}")
    result = run_benchmark(
        scales=tuple(_split(args.scales)), quick=args.quick, steps=args.steps, warmup=args.warmup,
        sampling_steps=args.sampling_steps, sampling_target=args.sampling_target_steps,
        race_seconds=args.race_seconds, race_scale=args.race_scale, compare_diffusers=not args.no_diffusers,
        variants=None if args.variants is None else [v for v in _split(args.variants) if v != "none"],
        variant_scales=tuple(_split(args.variant_scales)) if args.variant_scales else None,
        overrides=overrides, reference_clips=args.reference_clips, device=args.device, out_dir=Path(args.out),
        threads=args.threads, variants_for_diffusers=args.variants_for_diffusers,
    )
    print(to_markdown(result))
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    parser = add_arguments(argparse.ArgumentParser(prog="python -m t2s bench", description=__doc__.split("\n")[0]))
    args = parser.parse_args(argv)
    try:
        return run_from_args(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
