"""The `bench` command: its options and what each of its modes runs (`python -m t2s bench --help`). The command
line (`t2s.cli`) adds these options to its parser and calls `run_bench`; each mode imports its module when it runs,
so that `--help` and a bad option answer without torch."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from t2s.arguments import device_argument, label, non_negative_float, non_negative_int, positive_int
from t2s.bench.defaults import (
    DEFAULT_OUT,
    DEFAULT_STEP_VARIANTS,
    DEFAULT_VARIANT_SCALES,
    REFERENCE_CLIPS,
    SAMPLING_TARGET_STEPS,
    SCALE_DEFAULTS,
    STEP_VARIANTS,
)
from t2s.bench.goals import REFERENCE_SCALE
from t2s.rundir import atomic_write_bytes, atomic_write_json


def add_options(sp) -> None:
    """The `bench` command's options, on its sub-parser."""
    sp.add_argument("--quick", action="store_true", help="smoke test: tiny only, few steps, 5 s race, no variants")
    sp.add_argument("--scales", default=f"tiny,{REFERENCE_SCALE}",
                    help=f"comma-separated params/scales names (default tiny,{REFERENCE_SCALE})")
    sp.add_argument("--steps", type=positive_int, help="measured steps per model (default per scale: "
                    + ", ".join(f"{k} {v[0]}" for k, v in SCALE_DEFAULTS.items()) + ")")
    sp.add_argument("--warmup", type=non_negative_int, help="warm-up steps per model, not measured (default 1)")
    sp.add_argument("--sampling-steps", type=positive_int,
                    help="DDIM steps actually run when timing sampling; the time is extrapolated linearly per step "
                         "to --sampling-target-steps (default per scale: "
                         + ", ".join(f"{k} {v[2]}" for k, v in SCALE_DEFAULTS.items()) + ")")
    sp.add_argument("--sampling-target-steps", type=positive_int, default=SAMPLING_TARGET_STEPS,
                    help=f"DDIM steps the sampling time is reported for (default {SAMPLING_TARGET_STEPS})")
    sp.add_argument("--race-seconds", type=non_negative_float, default=60.0,
                    help="wall-clock training budget per model in the t2s-vs-diffusers race (default 60; 0 skips)")
    sp.add_argument("--race-scale", help="scale of the race (default tiny)")
    sp.add_argument("--no-diffusers", action="store_true", help="skip diffusers' UNet3DConditionModel (and the race)")
    sp.add_argument("--variants",
                    help="comma-separated step variants of the t2s engine step to measure, or 'none' (default "
                         f"{','.join(DEFAULT_STEP_VARIANTS)}; known: {', '.join(STEP_VARIANTS)})")
    sp.add_argument("--variants-for-diffusers", action="store_true",
                    help="also run diffusers' model under each variant (the side-by-side at equal options)")
    sp.add_argument("--variant-scales",
                    help=f"scales at which to run --variants (default {','.join(DEFAULT_VARIANT_SCALES)})")
    sp.add_argument("--reference-clips", type=positive_int, default=REFERENCE_CLIPS,
                    help=f"synthsign clips generated at the reference scale (default {REFERENCE_CLIPS})")
    sp.add_argument("-p", "--param", action="append", metavar="KEY=VALUE", help="config override for every scale")
    sp.add_argument("--data-dir", help="override data_dir (where synthsign caches live)")
    sp.add_argument("--device", type=device_argument, help="cpu or cuda (default: cuda when available)")
    sp.add_argument("--threads", type=positive_int, help="torch intra-op threads (default: torch's, one per core)")
    sp.add_argument("--out", default=str(DEFAULT_OUT), help="output folder (default reports/bench)")
    sp.add_argument("--startup", action="store_true",
                    help="only time how fast the command line answers (--help, a bad key's error, import t2s); writes "
                         "startup.json and startup.md to --out")
    sp.add_argument("--profile", metavar="STUDY",
                    help="only profile a study that ran (a name under executed/ or a folder): wall time by phase per "
                         "run and for the study, from its notebooks and logs/phases.json; writes profile-<label>.* to "
                         "--out and its section of bench.md")
    sp.add_argument("--study-estimate", action="store_true",
                    help="only estimate the quickstart's wall time here from a timed slice (its runs' workers at once: "
                         "setup, --steps steps (default 8), a held-out loss, an evaluation batch), extrapolated as "
                         "t2s/bench/estimate.py says; -p applies to it (e.g. -p mixed_precision=no); writes "
                         "study-estimate-<label>.* to --out and its section of bench.md")
    sp.add_argument("--label", default="native", type=label,
                    help="what the profiled study or the estimate ran on, e.g. native or avx2-fp32 (default native)")
    sp.add_argument("--contention", action="store_true",
                    help="only measure one tiny training alone against two at once (shared and unshared cores); "
                         "writes contention.json and contention.md to --out")


def _write(out: Path, stem: str, result: dict, text: str, sections: bool = False) -> int:
    """A mode's result as <out>/<stem>.json and its markdown as <stem>.md (`sections`: and its section of bench.md,
    `report.refresh_sections`), the markdown printed."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / f"{stem}.json", result)
    atomic_write_bytes(out / f"{stem}.md", text.encode("utf-8"))
    if sections:
        from t2s.bench.report import refresh_sections

        refresh_sections(out)
    print(text)
    return 0


def run_bench(args) -> int:
    """What `bench` runs for the parsed `args`: --startup, --profile, --study-estimate, --contention, or the benchmark
    itself (its step, sampling, FLOP utilization and diffusers' UNet3D)."""
    out = Path(args.out)
    if args.startup:
        from t2s.bench.startup import measure_startup, to_markdown

        result = measure_startup()
        return _write(out, "startup", result, to_markdown(result))
    if args.profile:  # a study's wall time by phase
        from t2s.bench.profile import study_profile, to_markdown
        from t2s.study.runs import EXECUTED_DIR

        folder = Path(args.profile) if Path(args.profile).is_dir() else EXECUTED_DIR / args.profile
        try:
            result = study_profile(folder, args.label)
        except FileNotFoundError as exc:
            raise SystemExit(f"bench --profile: {exc}")
        return _write(out, f"profile-{args.label}", result, to_markdown(result), sections=True)
    if args.study_estimate:  # the quickstart's wall time here from a timed slice
        from t2s.bench.estimate import estimate_study, to_markdown

        result = estimate_study(list(args.param or []), steps=args.steps or 8)
        return _write(out, f"study-estimate-{args.label}", result, to_markdown(result, args.label), sections=True)
    if args.contention:
        from t2s.bench.contention import measure_contention, to_markdown

        result = measure_contention(steps=args.steps or 20, warmup=args.warmup or 3)
        return _write(out, "contention", result, to_markdown(result))
    from t2s.bench.report import to_markdown
    from t2s.bench.run import run_benchmark

    overrides = list(args.param or [])
    if args.data_dir:
        overrides.append(f"data_dir={args.data_dir}")
    result = run_benchmark(
        scales=tuple(_split(args.scales)), quick=args.quick, steps=args.steps, warmup=args.warmup,
        sampling_steps=args.sampling_steps, sampling_target=args.sampling_target_steps,
        race_seconds=args.race_seconds, race_scale=args.race_scale, compare_diffusers=not args.no_diffusers,
        variants=None if args.variants is None else [v for v in _split(args.variants) if v != "none"],
        variant_scales=tuple(_split(args.variant_scales)) if args.variant_scales else None,
        overrides=overrides, reference_clips=args.reference_clips, device=args.device, out_dir=out,
        threads=args.threads, variants_for_diffusers=args.variants_for_diffusers,
    )
    print(to_markdown(result))
    return 0


def _split(text: Optional[str]) -> list[str]:
    return [s.strip() for s in (text or "").split(",") if s.strip()]
