"""The measured work: the engine's own training step (`t2s.engine.step.Engine.train_step`, phase by phase through a
`PhaseTimer`), for t2s's denoiser or any other with its interface; one clip's sampling time through the pipeline;
and the race, each contender trained by its own engine for the same wall-clock budget.

The benchmark's engine is the training engine on the config with `gradient_accumulation_steps: 1` and
`ema_update_every: 1`, so that each step is one micro-batch with its optimizer step and runs every phase
(`amortized_shares` weighs them back to the config's settings). `StepOptions` depart from the config in the ways a
change to the engine or the model would (precision, memory format, fused AdamW, torch.compile): the benchmark
measures what each is worth.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Callable, Iterator, Optional

import torch
from torch import nn

from t2s.bench.defaults import SAMPLING_TARGET_STEPS
from t2s.bench.flops import mfu, training_step_flops
from t2s.bench.timing import (
    PhaseTimer,
    StepTiming,
    amortized_shares,
    load_average,
    log,
    make_sync,
    runnable_now,
    summarize_steps,
)
from t2s.config import Config
from t2s.engine.runtime import PeakMemory, proc_status_bytes
from t2s.engine.step import Engine
from t2s.model import count_parameters
from t2s.pipeline import TextToSignPipeline


@dataclass(frozen=True)
class StepOptions:
    """Departures from the config for a measured step (None or default everywhere: exactly the config's engine)."""

    mixed_precision: Optional[str] = None  # 'no' or 'bf16'; None: the config's (resolve_mixed_precision)
    channels_last: Optional[bool] = None  # None: the config's (uses_channels_last)
    fused_adamw: bool = True  # as build_optimizer
    compile: bool = False  # torch.compile the denoiser

    def label(self) -> str:
        parts = [f"mp={self.mixed_precision}"] if self.mixed_precision else []
        if self.channels_last is not None:
            parts.append("channels_last" if self.channels_last else "contiguous")
        if not self.fused_adamw:
            parts.append("fused_adamw=False")
        if self.compile:
            parts.append("compile")
        return ", ".join(parts) or "as the engine"




def make_engine(cfg: Config, build: Callable[[], nn.Module], text, datasets: tuple, device: torch.device,
                options: StepOptions = StepOptions()) -> Engine:
    """The training engine for the denoiser `build()` makes (seeded as the trainer seeds its own), with `options`."""
    overrides = {"gradient_accumulation_steps": 1, "ema_update_every": 1}
    if options.mixed_precision:
        overrides["mixed_precision"] = options.mixed_precision
    if options.channels_last is not None:
        overrides["channels_last"] = options.channels_last
    torch.manual_seed(cfg.seed)
    denoiser = build()
    if options.compile:
        denoiser = torch.compile(denoiser)
    return Engine(cfg.replace(**overrides), cpu=device.type == "cpu", denoiser=denoiser, text=text, datasets=datasets,
                  fused_adamw=options.fused_adamw)


def endless_batches(engine: Engine) -> Iterator:
    """The engine's micro-batches, epoch after epoch, in the order its training loop reads them."""
    while True:
        yield from engine.epoch_loader()
        engine.epoch, engine.micro = engine.epoch + 1, 0


def timed_step(engine: Engine, batches: Iterator, timer: PhaseTimer) -> tuple[StepTiming, dict]:
    """One engine step under `timer`: (its timing, the step's record)."""
    timer.start()
    record = engine.train_step(batches, timer)
    return timer.stop(), record


def warm_caches(text, datasets: list, extra_captions: tuple[str, ...] = ("",)) -> dict:
    """Decode every clip once (the dataset's LRU cache) and encode every caption once (the frozen encoder's cache):
    what a run has after its first epoch. Returns seconds spent, for the record."""
    t0 = time.perf_counter()
    captions = set(extra_captions)
    for ds in datasets:
        for i in range(len(ds)):
            ds.frames(i)
            captions.add(ds.item_info(i)[0])
    t1 = time.perf_counter()
    ordered = sorted(captions)
    for start in range(0, len(ordered), 64):
        text.encode(ordered[start:start + 64])
    return {"decode_s": t1 - t0, "encode_s": time.perf_counter() - t1, "captions": len(ordered)}


def mean_caption_tokens(text, dataset) -> int:
    """The mean token count of the dataset's captions, each encoded alone (the context length FLOPs are counted at;
    a batch pads its captions to the longest, a little more)."""
    lengths = [text.encode([dataset.item_info(i)[0]])[0].shape[1] for i in range(len(dataset))]
    return round(sum(lengths) / len(lengths))


def _memory_now(device: torch.device) -> int:
    """Bytes in use now: CUDA allocated memory, else the process's resident set."""
    if device.type == "cuda":
        return int(torch.cuda.memory_allocated(device))
    return proc_status_bytes("VmRSS") or 0


def bench_model(name: str, build: Callable[[], nn.Module], cfg: Config, text, datasets: tuple, device: torch.device,
                steps: int, warmup: int, peak: dict, options: StepOptions = StepOptions()) -> tuple[dict, Engine]:
    """Parameters, phase-timed engine steps, clips/s, peak memory, FLOPs per step and MFU of one denoiser; and the
    engine it trained (its model for sampling)."""
    engine = make_engine(cfg, build, text, datasets, device, options)
    n_params, batches, sync = count_parameters(engine.model), endless_batches(engine), make_sync(device)
    log(f"{name} @ {cfg.scale} ({options.label()}): {n_params / 1e6:.2f}M parameters, {warmup} warm-up + {steps} steps")
    warm = [timed_step(engine, batches, PhaseTimer(sync))[0] for _ in range(warmup)]
    baseline, timings, runnable, load_before = _memory_now(device), [], [runnable_now()], load_average()
    with PeakMemory(device) as peak_memory:
        for i in range(steps):
            timing, record = timed_step(engine, batches, PhaseTimer(sync))
            timings.append(timing)
            runnable.append(runnable_now())
            log(f"  step {i + 1}/{steps}: {timing.total * 1e3:.0f} ms")
    summary = summarize_steps(timings)
    context_len = mean_caption_tokens(text, datasets[0])
    flops, by_op = training_step_flops(build, cfg, context_len, text.hidden_size)
    step_s = summary["step_ms"]["mean"] / 1e3
    fb_s = summary["phases"]["forward_backward"]["mean_ms"] / 1e3
    memory = {"peak_gb": peak_memory.peak_gb, "baseline_gb": baseline / 1e9,
              "increase_gb": peak_memory.peak_gb - baseline / 1e9,
              "kind": "cuda_max_memory_allocated" if device.type == "cuda" else "cpu_rss_peak"}
    result = {
        "name": name, "options": asdict(options), "options_label": options.label(),
        "mixed_precision": engine.accelerator.mixed_precision, "parameters": n_params,
        "warmup_steps": warmup, "warmup_step_ms": [1e3 * t.total for t in warm],
        **summary,
        "amortized": amortized_shares(summary, cfg),
        "clips_per_s": cfg.batch_size / step_s,
        "peak_memory": memory,
        "flops_per_step": flops, "flops_by_op": by_op, "flops_context_len": context_len,
        "matmul_peak_flops_per_s": peak["flops_per_s"], "matmul_peak_dtype": peak["dtype"],
        "step": mfu(flops, step_s, peak["flops_per_s"]),
        "forward_backward": mfu(flops, fb_s, peak["flops_per_s"]),
        "final_train_loss": float(record["loss"]) if steps else None,
        # other work on the machine during the measured steps (this process's threads included in 'runnable')
        "load_during": {"before": load_before, "after": load_average(), "runnable_samples": runnable},
    }
    return result, engine


@torch.no_grad()
def time_sampling(model: nn.Module, text, cfg: Config, device: torch.device, steps: int,
                  target_steps: int = SAMPLING_TARGET_STEPS, prompt: str = "hello my name is anna",
                  precision: Optional[str] = None) -> dict:
    """Seconds to sample one clip through `TextToSignPipeline` with DDIM and classifier-free guidance (the config's
    guidance scale; a scale of 1 is raised to 2 so that guidance, i.e. the doubled batch, is on). Runs `steps` DDIM
    steps, times each (the first from the call's start: it includes encoding the caption and drawing the noise), and
    extrapolates linearly per step to `target_steps` (the first step, a warm-up, is excluded from the per-step mean
    when more than one ran)."""
    sync = make_sync(device)
    guidance = cfg.guidance_scale if cfg.guidance_scale != 1.0 else 2.0
    was_training = model.training
    model.eval()
    pipe = TextToSignPipeline.from_config(model, text, cfg)
    if precision is not None:  # else the run's mixed precision, as evaluation samples
        pipe.precision = precision
    marks: list[float] = []

    def mark(_step: int) -> None:
        sync()
        marks.append(time.perf_counter())

    sync()
    t0 = time.perf_counter()
    pipe([prompt], seeds=[0], num_inference_steps=steps, guidance_scale=guidance, step_callback=mark)
    sync()
    total = time.perf_counter() - t0
    model.train(was_training)
    per_step = [b - a for a, b in zip([t0] + marks, marks)]
    steady = per_step[1:] if len(per_step) > 1 else per_step
    per_step_mean = sum(steady) / len(steady)
    overhead = max(0.0, total - sum(per_step))
    extrapolated = steps != target_steps
    return {
        "steps_run": steps, "target_steps": target_steps, "guidance_scale": guidance, "batch_per_step": 2,
        "precision": pipe.precision,
        "measured_s": total, "per_step_ms": [1e3 * x for x in per_step], "per_step_mean_ms": 1e3 * per_step_mean,
        "seconds_at_target": (total if not extrapolated else overhead + per_step[0] + per_step_mean * (target_steps - 1)),
        "extrapolated": extrapolated,
        "method": ("measured" if not extrapolated else
                   f"extrapolated linearly per step from {steps} DDIM steps (first step as measured, "
                   f"the other {target_steps - 1} at the mean of steps 2..{steps})" if steps > 1 else
                   f"extrapolated linearly from 1 DDIM step x {target_steps}"),
    }


def race(cfg: Config, contenders: dict[str, Callable[[], nn.Module]], text, datasets: tuple, device: torch.device,
         seconds: float) -> dict:
    """Train each contender with its own engine for the same wall-clock budget of steps on the same data (same
    order, noise, timesteps, caption dropout, optimizer, lr schedule, diffusion loss), then its held-out loss with
    the raw and the EMA weights (`Engine.held_out_loss`, the trainer's validation).

    Steps are interleaved, always advancing the contender with the least training time so far, so that both see
    the same machine load; each stops at the first step that ends past the budget. Evaluation is not timed."""
    engines = {name: make_engine(cfg, build, text, datasets, device) for name, build in contenders.items()}
    batches = {name: endless_batches(engine) for name, engine in engines.items()}
    clock = {name: 0.0 for name in engines}
    losses: dict[str, list[float]] = {name: [] for name in engines}
    sync = make_sync(device)
    log(f"race at {cfg.scale}: {seconds:.0f} s of training each for {', '.join(engines)}")
    while any(clock[n] < seconds for n in engines):
        name = min((n for n in engines if clock[n] < seconds), key=lambda n: clock[n])
        timing, record = timed_step(engines[name], batches[name], PhaseTimer(sync))
        clock[name] += timing.total
        losses[name].append(float(record["loss"]))
    out = {"scale": cfg.scale, "budget_s": seconds, "contenders": {}}
    for name, engine in engines.items():
        val, val_ema = engine.held_out_loss(), None
        if engine.ema is not None:
            with engine.ema.swapped():
                val_ema = engine.held_out_loss()
        tail = losses[name][-10:]
        out["contenders"][name] = {
            "parameters": count_parameters(engine.model), "steps": engine.step, "train_seconds": clock[name],
            "step_ms_mean": 1e3 * clock[name] / max(1, engine.step), "held_out_loss": val, "held_out_loss_ema": val_ema,
            "train_loss_last10_mean": sum(tail) / len(tail) if tail else None,
        }
        log(f"  {name}: {engine.step} steps in {clock[name]:.1f} s, held-out loss {val:.4f}"
            + (f" (EMA weights {val_ema:.4f})" if val_ema is not None else ""))
    out["held_out_definition"] = (f"Engine.held_out_loss: {min(len(datasets[1]), cfg.val_max_clips)} validation clips x "
                                  f"{cfg.val_num_timesteps} fixed timesteps, fixed noise (VAL_NOISE_SEED); raw weights, "
                                  f"and the EMA weights (decay {cfg.ema_decay} with warmup, updated every step)")
    return out
