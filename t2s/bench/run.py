"""The benchmark run: per scale, the engine's step for t2s's denoiser and diffusers' UNet at matched parameters,
sampling time, and the step variants; then the race; then the goals; written as bench.json and bench.md."""
from __future__ import annotations

import datetime as _dt
import time
from pathlib import Path
from typing import Any, Optional

import torch

from t2s.bench.defaults import (
    DEFAULT_OUT,
    DEFAULT_STEP_VARIANTS,
    DEFAULT_VARIANT_SCALES,
    QUICK_DEFAULTS,
    REFERENCE_CLIPS,
    SAMPLING_TARGET_STEPS,
    SCALE_DEFAULTS,
    STEP_VARIANTS,
)
from t2s.bench.diffusers_model import DiffusersDenoiser, match_diffusers, parameters_on_meta
from t2s.bench.flops import best_peaks, measure_peaks, mfu, peak_for
from t2s.bench.goals import REFERENCE_SCALE, evaluate_goals
from t2s.bench.report import write_outputs
from t2s.bench.step import StepOptions, bench_model, race, time_sampling, warm_caches
from t2s.bench.timing import load_average, log, machine_info, oversubscription_warning, runnable_now
from t2s.config import Config, ConfigError, load_config
from t2s.data.splits import build_datasets
from t2s.engine.runtime import resolve_mixed_precision, torch_threads
from t2s.model import build_denoiser
from t2s.text import build_text_encoder

CONFIG_KEYS = ("image_size", "num_frames", "batch_size", "model_channels", "channel_mult", "num_res_blocks",
               "attention_resolutions", "num_heads", "mixed_precision", "gradient_accumulation_steps", "ema_update_every",
               "num_inference_steps", "guidance_scale", "synthsign_num_clips", "num_workers")


def _architecture(kwargs: dict) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()}


def _step_variants(cfg, text, datasets, device, steps, warmup, peaks, models, builders, variants, with_diffusers):
    """Each step variant of t2s's engine step (and of diffusers' with the same options, when asked)."""
    mp = resolve_mixed_precision(cfg.mixed_precision)
    ours, theirs = {}, {}
    for v in variants:
        options = StepOptions(**STEP_VARIANTS[v])
        peak = peak_for(options.mixed_precision or mp, peaks)
        ours[v], _ = bench_model("t2s", builders["t2s"], cfg, text, datasets, device, steps, warmup, peak, options)
        ours[v]["speedup_vs_t2s"] = models["t2s"]["step_ms"]["mean"] / ours[v]["step_ms"]["mean"]
        if with_diffusers and "diffusers" in builders and not options.compile:
            theirs[v], _ = bench_model("diffusers UNet3DConditionModel", builders["diffusers"], cfg, text, datasets,
                                       device, steps, warmup, peak, options)
            ours[v]["t2s_speedup_vs_diffusers_same_options"] = theirs[v]["step_ms"]["mean"] / ours[v]["step_ms"]["mean"]
    return ours, theirs


def _rate_against(results: list[dict], peaks: dict) -> None:
    """MFU against the best peak seen in the scale's section (measured before and after: load can only lower it)."""
    for res in results:
        peak = peak_for(res["mixed_precision"], peaks)
        res["matmul_peak_flops_per_s"] = peak["flops_per_s"]
        res["step"] = mfu(res["flops_per_step"], res["step_ms"]["mean"] / 1e3, peak["flops_per_s"])
        res["forward_backward"] = mfu(res["flops_per_step"], res["phases"]["forward_backward"]["mean_ms"] / 1e3,
                                      peak["flops_per_s"])


def bench_scale(scale: str, cfg: Config, text, device: torch.device, steps: int, warmup: int, sampling_steps: int,
                sampling_target: int, compare_diffusers: bool, variants: list[str], peak_trials: int,
                variants_for_diffusers: bool = False) -> dict:
    t_start = time.perf_counter()
    datasets = build_datasets(cfg)
    caches = warm_caches(text, [datasets[0]])
    log(f"{scale}: {len(datasets[0])} training clips, caches warm in {caches['decode_s'] + caches['encode_s']:.1f} s")
    peaks_start = measure_peaks(device, peak_trials)
    mp = resolve_mixed_precision(cfg.mixed_precision)
    builders = {"t2s": lambda: build_denoiser(cfg, text.hidden_size, text.special_token_counts)}
    models = {}
    models["t2s"], engine = bench_model("t2s", builders["t2s"], cfg, text, datasets, device, steps, warmup,
                                        peak_for(mp, peaks_start))
    log(f"sampling one clip at {scale}: {sampling_steps} DDIM steps with guidance")
    sampling = time_sampling(engine.model, text, cfg, device, sampling_steps, sampling_target)
    if sampling["precision"] != "no":  # what sampling in the run's mixed precision buys, in this same run
        log(f"sampling one clip at {scale} in float32: {sampling_steps} DDIM steps with guidance")
        sampling["float32"] = time_sampling(engine.model, text, cfg, device, sampling_steps, sampling_target,
                                            precision="no")
    del engine
    if compare_diffusers:
        kwargs, n = match_diffusers(cfg, text.hidden_size, models["t2s"]["parameters"])
        builders["diffusers"] = lambda: DiffusersDenoiser(**kwargs)
        models["diffusers"], _ = bench_model("diffusers UNet3DConditionModel", builders["diffusers"], cfg, text,
                                             datasets, device, steps, warmup, peak_for(mp, peaks_start))
        models["diffusers"]["architecture"] = _architecture(kwargs)
        models["diffusers"]["parameter_ratio"] = n / models["t2s"]["parameters"]
    ours, theirs = _step_variants(cfg, text, datasets, device, steps, warmup, peaks_start, models, builders, variants,
                                  variants_for_diffusers)
    peaks_end = measure_peaks(device, peak_trials)
    peaks = best_peaks(peaks_start, peaks_end)
    _rate_against(list(models.values()) + list(ours.values()) + list(theirs.values()), peaks)
    if "diffusers" in models:
        models["diffusers"]["t2s_speedup"] = models["diffusers"]["step_ms"]["mean"] / models["t2s"]["step_ms"]["mean"]
        # noise from other work on the machine only ever adds time: the ratio of the fastest steps is the robust one
        models["diffusers"]["t2s_speedup_min"] = models["diffusers"]["step_ms"]["min"] / models["t2s"]["step_ms"]["min"]
        models["diffusers"]["t2s_speedup_median"] = (models["diffusers"]["step_ms"]["median"]
                                                     / models["t2s"]["step_ms"]["median"])
    return {
        "scale": scale, "config": {k: getattr(cfg, k) for k in CONFIG_KEYS}, "mixed_precision": mp,
        "train_clips": len(datasets[0]), "cache_warmup": caches,
        "matmul_peak": {"start": peaks_start, "end": peaks_end, "used": peaks},
        "models": models, "variants": ours, "variants_diffusers": theirs, "sampling": sampling,
        "seconds": time.perf_counter() - t_start,
    }


def run_benchmark(
    scales: tuple[str, ...] = ("tiny", REFERENCE_SCALE),
    quick: bool = False,
    steps: Optional[int] = None,
    warmup: Optional[int] = None,
    sampling_steps: Optional[int] = None,
    sampling_target: int = SAMPLING_TARGET_STEPS,
    race_seconds: float = 60.0,
    race_scale: Optional[str] = None,
    compare_diffusers: bool = True,
    variants: Optional[list[str]] = None,
    variant_scales: Optional[tuple[str, ...]] = None,
    overrides: Optional[list[str]] = None,
    reference_clips: int = REFERENCE_CLIPS,
    device: Optional[str] = None,
    out_dir: Optional[Path] = DEFAULT_OUT,
    threads: Optional[int] = None,
    variants_for_diffusers: bool = False,
) -> dict:
    """The whole benchmark; writes bench.json and bench.md into `out_dir` (unless None) and returns the result.

    quick: the first scale only (tiny unless given), 2 steps + 1 warm-up, 2 sampling steps, a 5 s race, no variants.
    Per-scale defaults of steps / warm-up / sampling steps: SCALE_DEFAULTS. At the reference scale the synthsign set
    is generated with `reference_clips` clips (loading cost per batch does not depend on the set's size).
    `threads` sets torch's intra-op threads for the run (restored afterwards)."""
    scales = tuple(scales)
    if quick:  # one scale: tiny, unless a list other than the default was asked for
        scales = ("tiny",) if not scales or scales == ("tiny", REFERENCE_SCALE) else scales[:1]
        race_seconds, variants = min(race_seconds, 5.0), []
    variants = list(variants if variants is not None else DEFAULT_STEP_VARIANTS)
    unknown = [v for v in variants if v not in STEP_VARIANTS]
    if unknown:
        raise ConfigError(f"bench: unknown variant(s) {unknown}; known: {', '.join(STEP_VARIANTS)}")
    plan = {"scales": list(scales), "quick": quick, "race_seconds": race_seconds,
            "race_scale": race_scale or ("tiny" if "tiny" in scales or not scales else scales[0]),
            "variants": variants, "overrides": list(overrides or []), "reference_clips": reference_clips,
            "variant_scales": list(variant_scales if variant_scales is not None else DEFAULT_VARIANT_SCALES),
            "sampling_target_steps": sampling_target, "variants_for_diffusers": variants_for_diffusers}
    with torch_threads(threads):
        return _run(plan, steps, warmup, sampling_steps, compare_diffusers, device, out_dir)


def _config_for(scale: str, plan: dict) -> Config:
    extra = [f"synthsign_num_clips={plan['reference_clips']}"] if scale == REFERENCE_SCALE else []
    return load_config("baseline", scale, extra + plan["overrides"])


def _run(plan: dict, steps, warmup, sampling_steps, compare_diffusers: bool, device: Optional[str],
         out_dir: Optional[Path]) -> dict:
    started, t0 = _dt.datetime.now().isoformat(timespec="seconds"), time.perf_counter()
    load_start, runnable_start = load_average(), runnable_now()
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    log(f"device {dev}, load average {load_start}, scales {', '.join(plan['scales'])}")
    warning = oversubscription_warning(dev, runnable_start)
    if warning:
        log(f"WARNING: {warning}")
    text = build_text_encoder(_config_for((plan["scales"] or [plan["race_scale"]])[0], plan), dev)
    result: dict[str, Any] = {"started_at": started, "machine": machine_info(dev), "warning": warning, "scales": {},
                              "settings": {**plan, "torch_threads": torch.get_num_threads()}}
    for scale in plan["scales"]:
        n_steps, n_warm, n_sample = QUICK_DEFAULTS if plan["quick"] else SCALE_DEFAULTS.get(scale, (3, 1, 4))
        n_steps, n_warm, n_sample = steps or n_steps, n_warm if warmup is None else warmup, sampling_steps or n_sample
        result["scales"][scale] = bench_scale(
            scale, _config_for(scale, plan), text, dev, n_steps, n_warm, min(n_sample, plan["sampling_target_steps"]),
            plan["sampling_target_steps"], compare_diffusers,
            plan["variants"] if scale in plan["variant_scales"] else [], peak_trials=3 if plan["quick"] else 5,
            variants_for_diffusers=plan["variants_for_diffusers"])
        result["settings"][f"{scale}_steps"] = {"steps": n_steps, "warmup": n_warm, "sampling_steps": n_sample}
    if plan["race_seconds"] and plan["race_seconds"] > 0 and compare_diffusers:
        result["race"] = _race(_config_for(plan["race_scale"], plan), text, dev, plan["race_seconds"])
    result["load_average"] = {"start": load_start, "end": load_average(), "runnable_at_start": runnable_start,
                              "runnable_at_end": runnable_now()}
    result["duration_s"] = time.perf_counter() - t0
    result["goals"] = evaluate_goals(result)
    if out_dir is not None:
        json_path, md_path = write_outputs(result, Path(out_dir))
        log(f"wrote {json_path} and {md_path} in {result['duration_s']:.0f} s")
    return result


def _race(cfg: Config, text, device: torch.device, seconds: float) -> dict:
    """t2s's denoiser against diffusers' UNet at matched parameters, `seconds` of training each."""
    datasets = build_datasets(cfg)
    warm_caches(text, list(datasets[:2]))
    ours = lambda: build_denoiser(cfg, text.hidden_size, text.special_token_counts)  # noqa: E731
    kwargs, _ = match_diffusers(cfg, text.hidden_size, parameters_on_meta(ours))
    out = race(cfg, {"t2s": ours, "diffusers": lambda: DiffusersDenoiser(**kwargs)}, text, datasets, device, seconds)
    out["diffusers_architecture"] = _architecture(kwargs)
    return out
