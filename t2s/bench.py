"""`python -m t2s bench`: where the time of a training step goes on this device, and how t2s's denoiser compares
with diffusers' `UNet3DConditionModel` at a matched parameter count.

Read top to bottom: the machine and the clock (`PhaseTimer`: phases timed back to back, the whole step timed
too, the difference reported as the residual); peak memory; FLOP counting (`FlopCounterMode` on the meta device,
so counting costs no compute) and the dense-matmul peak it is compared with (MFU); the training harness (one
micro-batch of `Trainer.fit` with its optimizer step, phase by phase, for any denoiser); the held-out loss (the
engine's fixed-noise definition); sampling time; the diffusers model and its matched width; the wall-clock race;
the per-scale benchmark; the JSON and markdown writers; the command line.

Phases of one training step (gradient accumulation 1: every step runs every phase):
    data              next() of the training DataLoader (per-epoch loader as `Trainer.fit` builds it) + .to(device)
    text              caption dropout + the frozen text encoder's cached states (steady state: the cache is warm)
    forward_backward  noise and timesteps, the diffusion loss under autocast, backward
    grad_clip         clip_grad_norm_ over every parameter
    optimizer         AdamW step + zero_grad(set_to_none=True)
    ema               one EMA update (forced every step here; the config's `ema_update_every` amortizes it)
Bookkeeping between phases (the lr schedule's step) is deliberately left untimed: it shows up in the residual,
`residual = step total - sum(phases)`, which is reported next to the phases. On CUDA every phase boundary
synchronizes (in the benchmark only, never in the training loop).

The harness mirrors `Trainer` (optimizer groups, fused AdamW on CUDA only, cosine schedule with warmup, EMA with
warmup, seeded generators, the DataLoader and sampler of an epoch) without accelerate's wrappers, which on one
process and without mixed precision only forward the same calls. `HarnessOptions` applies candidate speed-ups
(bf16 autocast, channels_last, fused AdamW on CPU, torch.compile) to the harness only, to measure what a change to
train.py or model.py would buy.

Outputs: `reports/bench/bench.json` and `reports/bench/bench.md` (machine, load average at start and end, one
table per scale, the side-by-side comparison, the variants, the race, the goals with met / not met).

On a CPU shared with other work, run with `OMP_WAIT_POLICY=PASSIVE` in the environment (or `--threads 1`): torch's
OpenMP threads busy-wait by default, and one descheduled thread stalls every parallel region, which made a tiny step
3-15x slower here while another process ran. The benchmark warns when it starts in that situation.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import platform
import statistics
import sys
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import torch
from torch import nn

from .config import PROJECT_ROOT, Config, ConfigError, load_config
from .evaluate import proc_status_bytes
from .pipeline import TextToSignPipeline

PHASES = ("data", "text", "forward_backward", "grad_clip", "optimizer", "ema")
DEFAULT_OUT = PROJECT_ROOT / "reports" / "bench"
REFERENCE_SCALE = "full"
SAMPLING_TARGET_STEPS = 50
# Per-scale defaults: (measured steps, warm-up steps, sampling steps actually run). The reference scale is costly
# on a CPU (a step is tens of seconds), so it runs fewer steps and extrapolates sampling from a few DDIM steps.
SCALE_DEFAULTS = {"micro": (3, 1, 4), "tiny": (5, 1, 10), "small": (3, 1, 4), "full": (1, 1, 2)}
QUICK_DEFAULTS = (2, 1, 2)
REFERENCE_CLIPS = 48  # synthsign clips generated for the reference scale: enough for steady-state loading


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ============================================================================================ machine and clock
def load_average() -> Optional[list[float]]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def runnable_now() -> Optional[int]:
    """Runnable threads on the machine right now, this one included (/proc/loadavg's 4th field, 'running/total')."""
    try:
        return int(Path("/proc/loadavg").read_text().split()[3].split("/")[0])
    except (OSError, IndexError, ValueError):
        return None


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def oversubscription_warning(device: torch.device, runnable: Optional[int]) -> Optional[str]:
    """A note when other work competes for the cores while torch's OpenMP threads busy-wait (the default): a
    descheduled thread stalls every parallel region, and a step can take several times longer."""
    if device.type != "cpu" or runnable is None or runnable <= 1:
        return None
    if os.environ.get("OMP_WAIT_POLICY", "").upper() == "PASSIVE" or torch.get_num_threads() == 1:
        return None
    return (f"{runnable - 1} other runnable thread(s) on this machine while torch runs {torch.get_num_threads()} "
            f"busy-waiting OpenMP threads: timings can be inflated several-fold. Measure on an idle machine, or set "
            f"OMP_WAIT_POLICY=PASSIVE in the environment (before Python starts), or pass --threads 1.")


def machine_info(device: torch.device) -> dict:
    from importlib import metadata

    def version(name: str) -> Optional[str]:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    info = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "diffusers": version("diffusers"),
        "python": platform.python_version(),
        "host": platform.node(),
        "cpu_bf16": _cpu_bf16_supported(),
        "env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS")},
    }
    return info


def _cpu_bf16_supported() -> Optional[bool]:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return None


def make_sync(device: torch.device) -> Callable[[], None]:
    """A no-op on CPU; torch.cuda.synchronize on CUDA, so a phase's time is the work it launched."""
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


@dataclass
class StepTiming:
    """One step: the whole step's seconds and each phase's. The residual is the untimed rest (bookkeeping between
    phases, the timer's own overhead): `total == sum(phases) + residual` by construction, and `residual >= 0`
    because phases are disjoint intervals inside the step."""

    total: float
    phases: dict[str, float]

    @property
    def phase_sum(self) -> float:
        return sum(self.phases.values())

    @property
    def residual(self) -> float:
        return self.total - self.phase_sum


class PhaseTimer:
    """`start()`, then `with timer.phase(name): ...` for each phase, then `stop()` -> StepTiming.

    The step's total runs from `start` to `stop` on its own clock reading, independent of the phases; each phase is
    its own interval. Every boundary calls `sync` first (CUDA) so that asynchronous work is charged where it ran."""

    def __init__(self, sync: Callable[[], None] = lambda: None, clock: Callable[[], float] = time.perf_counter):
        self.sync, self.clock = sync, clock
        self._t0: Optional[float] = None
        self.phases: dict[str, float] = {}

    def start(self) -> None:
        self.phases = {}
        self.sync()
        self._t0 = self.clock()

    @contextmanager
    def phase(self, name: str):
        self.sync()
        begin = self.clock()
        try:
            yield
        finally:
            self.sync()
            self.phases[name] = self.phases.get(name, 0.0) + (self.clock() - begin)

    def stop(self) -> StepTiming:
        if self._t0 is None:
            raise RuntimeError("PhaseTimer.stop() without start()")
        self.sync()
        total = self.clock() - self._t0
        self._t0 = None
        return StepTiming(total, dict(self.phases))


def summarize_steps(timings: list[StepTiming], phases: tuple[str, ...] = PHASES) -> dict:
    """Per-phase mean ms and share of the mean step; the step's mean, min, max; the residual. The identity
    `sum(phase means) + residual mean == step mean` holds exactly (means are linear)."""
    if not timings:
        raise ValueError("no steps to summarize")
    n = len(timings)
    totals = [t.total for t in timings]
    step_mean = sum(totals) / n
    names = list(phases) + [p for t in timings for p in t.phases if p not in phases]
    names = list(dict.fromkeys(names))
    out_phases = {}
    for name in names:
        mean = sum(t.phases.get(name, 0.0) for t in timings) / n
        out_phases[name] = {"mean_ms": 1e3 * mean, "share": mean / step_mean if step_mean > 0 else None}
    residual = sum(t.residual for t in timings) / n
    return {
        "steps": n,
        "step_ms": {"mean": 1e3 * step_mean, "min": 1e3 * min(totals), "max": 1e3 * max(totals),
                    "median": 1e3 * statistics.median(totals), "all": [1e3 * x for x in totals]},
        "phases": out_phases,
        "phase_sum_ms": sum(p["mean_ms"] for p in out_phases.values()),
        "residual_ms": 1e3 * residual,
        "residual_share": residual / step_mean if step_mean > 0 else None,
    }


def amortized_shares(summary: dict, cfg: Config) -> dict:
    """Shares of an optimizer step at the config's settings: `gradient_accumulation_steps` micro-batches of
    data + text + forward_backward, then one clip + optimizer step, and an EMA update every `ema_update_every`
    steps (0 without EMA). The benchmark runs every phase every step; this says what a real run pays."""
    ms = {k: v["mean_ms"] for k, v in summary["phases"].items()}
    accum = cfg.gradient_accumulation_steps
    weights = {"data": accum, "text": accum, "forward_backward": accum, "grad_clip": 1.0, "optimizer": 1.0,
               "ema": (1.0 / cfg.ema_update_every) if cfg.use_ema else 0.0}
    cost = {k: ms.get(k, 0.0) * w for k, w in weights.items()}
    cost["residual"] = summary["residual_ms"]
    total = sum(cost.values())
    return {"optimizer_step_ms": total, "shares": {k: v / total for k, v in cost.items()},
            "gradient_accumulation_steps": accum, "ema_update_every": cfg.ema_update_every}


# ============================================================================================ memory
class PeakMemory:
    """Peak memory over a measured block. CUDA: max_memory_allocated after a reset. CPU: the process's peak
    resident set (VmHWM), reset through /proc/self/clear_refs where the kernel allows, else the lifetime peak
    (ru_maxrss), flagged as such. The CPU figure is the whole process (torch, the text encoder, the data cache);
    `increase_gb` is the rise over the resident set at the reset (after gc and malloc_trim)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.kind = "cuda_max_memory_allocated" if device.type == "cuda" else "cpu_rss_peak"
        self.resettable = device.type == "cuda"
        self.baseline = 0

    def reset(self) -> None:
        import gc

        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.baseline = torch.cuda.memory_allocated(self.device)
            return
        try:  # hand freed heap memory back to the OS, so the baseline is what is alive
            import ctypes

            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass
        self.baseline = self._rss()
        try:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")  # resets the peak resident set size (VmHWM) to the current RSS
            self.resettable = True
        except OSError:
            self.resettable = False

    def read_bytes(self) -> int:
        if self.device.type == "cuda":
            return int(torch.cuda.max_memory_allocated(self.device))
        peak = proc_status_bytes("VmHWM")
        if peak is not None:
            return peak
        import resource

        self.resettable = False
        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024

    @staticmethod
    def _rss() -> int:
        return proc_status_bytes("VmRSS") or 0

    def read(self) -> dict:
        peak = self.read_bytes()
        return {"peak_gb": peak / 1e9, "baseline_gb": self.baseline / 1e9, "increase_gb": (peak - self.baseline) / 1e9,
                "kind": self.kind,
                "scope": "measured steps" if self.resettable else "process lifetime (peak could not be reset)"}


# ============================================================================================ FLOPs and peak
def count_flops(fn: Callable[[], Any]) -> tuple[int, dict[str, int]]:
    """(total FLOPs, FLOPs per aten op) of running `fn` under torch.utils.flop_counter.FlopCounterMode. The counter
    counts matmuls, convolutions and attention (2 FLOPs per multiply-add), forward and backward alike."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    by_op = {str(k).replace("aten.", ""): int(v) for k, v in counter.get_flop_counts().get("Global", {}).items()}
    return int(counter.get_total_flops()), by_op


def training_step_flops(build_model: Callable[[], nn.Module], cfg: Config, context_len: int, context_dim: int,
                        batch_size: Optional[int] = None) -> tuple[int, dict[str, int]]:
    """Forward + backward FLOPs of one training step (the diffusion loss of one batch), counted on the meta device:
    shapes only, no arithmetic, so the reference scale counts in a second. On the meta device attention runs as
    explicit matmuls, which the counter sees; a CPU kernel for scaled_dot_product_attention would go uncounted."""
    from .diffusion import build_train_scheduler, diffusion_loss

    b = batch_size or cfg.batch_size
    scheduler = build_train_scheduler(cfg)
    with torch.device("meta"):
        model = build_model()
        model.train()
        clips = torch.empty(b, 3, cfg.num_frames, cfg.image_size, cfg.image_size)
        noise = torch.empty_like(clips)
        t = torch.zeros(b, dtype=torch.long)
        context = torch.empty(b, context_len, context_dim)
        mask = torch.ones(b, context_len, dtype=torch.bool)

        def step():
            loss = diffusion_loss(model, scheduler, clips, noise, t, context, mask)
            loss.backward()

        return count_flops(step)


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int = 2048, trials: int = 5,
                min_seconds: float = 0.2) -> dict:
    """The best FLOP/s of repeated dense (n x n) @ (n x n) matmuls in `dtype` on `device`, best of `trials`
    (each trial repeats the matmul until it has run `min_seconds`)."""
    sync = make_sync(device)
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    out = torch.empty(n, n, device=device, dtype=dtype)
    torch.mm(a, b, out=out)  # warm-up
    sync()
    best = math.inf
    reps = 1
    for _ in range(trials):
        while True:
            sync()
            t0 = time.perf_counter()
            for _ in range(reps):
                torch.mm(a, b, out=out)
            sync()
            dt = time.perf_counter() - t0
            if dt >= min_seconds or reps >= 1 << 14:
                break
            reps *= 2
        best = min(best, dt / reps)
    return {"flops_per_s": 2 * n**3 / best, "dtype": str(dtype).replace("torch.", ""), "n": n, "trials": trials,
            "best_seconds": best}


# ============================================================================================ the harness
@dataclass
class HarnessOptions:
    """Departures from the Trainer's settings, applied in the benchmark harness only: each measures what a
    setting is worth (None everywhere = exactly as Trainer)."""

    mixed_precision: Optional[str] = None  # None: the config's (resolve_mixed_precision), else 'no' or 'bf16'
    channels_last: Optional[bool] = None  # None: as Trainer (uses_channels_last: the config's channels_last)
    fused_adamw: Optional[bool] = None  # None: as Trainer (fused AdamW)
    compile: bool = False  # torch.compile the denoiser
    ema_update_every: int = 1  # the benchmark forces an EMA update every step, so each step measures one

    def label(self) -> str:
        parts = []
        if self.mixed_precision:
            parts.append(f"mp={self.mixed_precision}")
        if self.channels_last is not None:
            parts.append("channels_last" if self.channels_last else "contiguous")
        if self.fused_adamw is not None:
            parts.append(f"fused_adamw={self.fused_adamw}")
        if self.compile:
            parts.append("compile")
        return ", ".join(parts) or "as Trainer"


VARIANTS: dict[str, HarnessOptions] = {
    "fp32": HarnessOptions(mixed_precision="no"),
    "bf16": HarnessOptions(mixed_precision="bf16"),
    "channels_last": HarnessOptions(channels_last=True),
    "contiguous": HarnessOptions(channels_last=False),
    "unfused_adamw": HarnessOptions(fused_adamw=False),
    "fp32+contiguous": HarnessOptions(mixed_precision="no", channels_last=False),
    "fp32+contiguous+unfused": HarnessOptions(mixed_precision="no", channels_last=False, fused_adamw=False),
    "bf16+channels_last": HarnessOptions(mixed_precision="bf16", channels_last=True),
    "compile": HarnessOptions(compile=True),
}
DEFAULT_VARIANTS = ["fp32", "channels_last", "unfused_adamw"]
DEFAULT_VARIANT_SCALES = ("tiny",)  # cheap there; at the reference scale each variant costs minutes on a CPU


def _autocast_factory(device: torch.device, mixed_precision: str) -> Callable[[], Any]:
    if mixed_precision == "no":
        return nullcontext
    if mixed_precision == "bf16":
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    raise ConfigError(f"bench: mixed_precision {mixed_precision!r} is not measured; use 'no' or 'bf16'")


def total_training_steps(cfg: Config, train_len: int) -> int:
    """As Trainer: epochs x optimizer steps per epoch, capped by max_steps."""
    steps_per_epoch = max(1, (train_len // cfg.batch_size) // cfg.gradient_accumulation_steps)
    total = cfg.num_epochs * steps_per_epoch
    return min(total, cfg.max_steps) if cfg.max_steps else total


class TrainHarness:
    """One training step of `Trainer.fit` (one micro-batch and its optimizer step), phase by phase, for any
    denoiser with the interface `(noisy clip (b,c,f,h,w), timesteps (b,), context (b,s,d), mask (b,s))`."""

    def __init__(self, cfg: Config, model: nn.Module, text, train_set, device: torch.device,
                 options: Optional[HarnessOptions] = None):
        from diffusers.optimization import get_cosine_schedule_with_warmup

        from .diffusion import build_train_scheduler
        from .ema import EMA
        from .runtime import resolve_mixed_precision

        self.cfg, self.text, self.train_set, self.device = cfg, text, train_set, device
        self.options = options or HarnessOptions()
        self.model = model.to(device)
        from .model import to_channels_last
        from .runtime import uses_channels_last

        channels_last = self.options.channels_last
        if channels_last is None:
            channels_last = uses_channels_last(cfg, device)
        if channels_last:
            to_channels_last(self.model)
        self.channels_last = channels_last
        self.model.train()
        self.forward_model = torch.compile(self.model) if self.options.compile else self.model
        self.mixed_precision = self.options.mixed_precision or resolve_mixed_precision(cfg.mixed_precision)
        self.autocast = _autocast_factory(device, self.mixed_precision)
        decay = [p for p in self.model.parameters() if p.ndim >= 2]
        no_decay = [p for p in self.model.parameters() if p.ndim < 2]
        groups = [
            {"params": decay, "lr": cfg.learning_rate, "weight_decay": cfg.weight_decay},
            {"params": no_decay, "lr": cfg.learning_rate, "weight_decay": 0.0},
        ]
        self.params = decay + no_decay
        fused = self.options.fused_adamw if self.options.fused_adamw is not None else True  # as Trainer
        self.optimizer = torch.optim.AdamW(groups, lr=cfg.learning_rate, fused=fused)
        self.total_steps = total_training_steps(cfg, len(train_set))
        self.lr_schedule = get_cosine_schedule_with_warmup(
            self.optimizer, num_warmup_steps=min(cfg.warmup_steps, self.total_steps), num_training_steps=self.total_steps
        )
        self.ema = EMA(self.model, cfg.ema_decay, self.options.ema_update_every, cfg.ema_warmup) if cfg.use_ema else None
        self.noise_schedule = build_train_scheduler(cfg)
        self.generator = torch.Generator(device=device).manual_seed(cfg.seed)
        self.drop_generator = torch.Generator().manual_seed(cfg.seed + 1)
        self.batches = self._batches()
        self.step_count = 0
        self.context_lengths: list[int] = []
        self.last_loss: Optional[torch.Tensor] = None

    def _batches(self) -> Iterator:
        """Batches forever, one DataLoader per epoch with the epoch's seeded sampler, as `Trainer.fit` builds them."""
        from torch.utils.data import DataLoader

        from .train import EpochSampler

        cfg, epoch = self.cfg, 0
        per_epoch = (len(self.train_set) // cfg.batch_size) * cfg.batch_size
        if per_epoch < 1:
            raise ConfigError(f"bench: the training split has {len(self.train_set)} clips, fewer than one batch")
        while True:
            sampler = EpochSampler(len(self.train_set), cfg.seed, epoch, per_epoch)
            loader = DataLoader(self.train_set, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.num_workers,
                                pin_memory=self.device.type == "cuda", persistent_workers=False, drop_last=True)
            yield from loader
            epoch += 1

    def condition(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Trainer.condition(drop=True): each caption replaced by the null caption with cond_drop_prob."""
        if self.cfg.cond_drop_prob > 0:
            keep = torch.rand(len(captions), generator=self.drop_generator) >= self.cfg.cond_drop_prob
            captions = [c if k else "" for c, k in zip(captions, keep.tolist())]
        return self.text.encode(list(captions))

    def step(self, timer: Optional[PhaseTimer] = None, hooks: Optional[dict[str, Callable[[], None]]] = None) -> StepTiming:
        """One step; `hooks[phase]()` runs at the end of that phase, `hooks['bookkeeping']()` in the untimed gap
        (tests use them to check the accounting)."""
        from .diffusion import diffusion_loss

        cfg, timer, hooks = self.cfg, timer or PhaseTimer(make_sync(self.device)), hooks or {}
        run = lambda name: hooks[name]() if name in hooks else None  # noqa: E731
        timer.start()
        with timer.phase("data"):
            clips, captions, _signers = next(self.batches)
            clips = clips.to(self.device, non_blocking=True)
            run("data")
        with timer.phase("text"):
            context, mask = self.condition(list(captions))
            context = context.to(self.device)
            mask = mask.to(self.device)
            run("text")
        with timer.phase("forward_backward"):
            noise = torch.randn(clips.shape, generator=self.generator, device=self.device)
            t = torch.randint(0, cfg.num_train_timesteps, (clips.shape[0],), generator=self.generator, device=self.device)
            with self.autocast():
                loss = diffusion_loss(self.forward_model, self.noise_schedule, clips, noise, t, context, mask)
            loss.backward()
            run("forward_backward")
        with timer.phase("grad_clip"):
            torch.nn.utils.clip_grad_norm_(self.params, cfg.max_grad_norm)
            run("grad_clip")
        with timer.phase("optimizer"):
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            run("optimizer")
        # bookkeeping, untimed on purpose: it lands in the residual
        self.lr_schedule.step()
        self.step_count += 1
        self.context_lengths.append(int(context.shape[1]))
        self.last_loss = loss.detach()
        run("bookkeeping")
        with timer.phase("ema"):
            if self.ema is not None:
                self.ema.update(self.step_count)
            run("ema")
        return timer.stop()


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


# ============================================================================================ held-out loss
def held_out_loss(model: nn.Module, text, val_set, cfg: Config, device: torch.device,
                  autocast: Callable[[], Any] = nullcontext) -> float:
    """The engine's held-out loss (diffusion.held_out_loss, which the trainer's validation uses too)."""
    from .diffusion import build_train_scheduler, held_out_loss as engine_held_out_loss

    return engine_held_out_loss(model, text, build_train_scheduler(cfg), val_set, cfg, device, autocast=autocast)


# ============================================================================================ sampling
@torch.no_grad()
def time_sampling(model: nn.Module, text, cfg: Config, device: torch.device, steps: int,
                  target_steps: int = SAMPLING_TARGET_STEPS, prompt: str = "hello my name is anna") -> dict:
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
        "measured_s": total, "per_step_ms": [1e3 * x for x in per_step], "per_step_mean_ms": 1e3 * per_step_mean,
        "seconds_at_target": (total if not extrapolated else overhead + per_step[0] + per_step_mean * (target_steps - 1)),
        "extrapolated": extrapolated,
        "method": ("measured" if not extrapolated else
                   f"extrapolated linearly per step from {steps} DDIM steps (first step as measured, "
                   f"the other {target_steps - 1} at the mean of steps 2..{steps})" if steps > 1 else
                   f"extrapolated linearly from 1 DDIM step x {target_steps}"),
    }


# ============================================================================================ diffusers' model
class DiffusersDenoiser(nn.Module):
    """diffusers' UNet3DConditionModel behind t2s's denoiser interface. It has no cross-attention mask: padded
    caption tokens (zeros) are attended to (their keys are zero, so they take a share of attention, uninformative)."""

    def __init__(self, **unet_kwargs):
        super().__init__()
        from diffusers import UNet3DConditionModel

        self.unet = UNet3DConditionModel(**unet_kwargs)

    def forward(self, x, timesteps, context, context_mask=None):
        return self.unet(x, timesteps, encoder_hidden_states=context, return_dict=False)[0]


def diffusers_unet_kwargs(cfg: Config, context_dim: int, base: int, layers: int, heads: int, groups: int) -> dict:
    """UNet3DConditionModel arguments with t2s's layout: as many levels as channel_mult, channels base * mult,
    cross-attention blocks at the same resolutions as t2s's attention (the mid block always has it)."""
    res, down = cfg.image_size, []
    for _ in cfg.channel_mult:
        down.append("CrossAttnDownBlock3D" if res in cfg.attention_resolutions else "DownBlock3D")
        res //= 2
    up = [d.replace("Down", "Up") for d in reversed(down)]
    return {
        "in_channels": 3, "out_channels": 3, "sample_size": cfg.image_size,
        "down_block_types": tuple(down), "up_block_types": tuple(up),
        "block_out_channels": tuple(base * m for m in cfg.channel_mult),
        "layers_per_block": layers, "norm_num_groups": groups, "cross_attention_dim": context_dim,
        # diffusers' UNet3D reads attention_head_dim as the NUMBER of heads of its spatial transformers
        "attention_head_dim": heads,
    }


_PARAM_CACHE: dict[str, int] = {}


def count_parameters(build: Callable[[], nn.Module]) -> int:
    """Parameters of the model `build()` makes, built on the meta device (no memory, no initialization)."""
    with torch.device("meta"):
        return sum(p.numel() for p in build().parameters())


def diffusers_parameters(kwargs: dict) -> int:
    key = json.dumps(kwargs, sort_keys=True, default=list)
    if key not in _PARAM_CACHE:
        _PARAM_CACHE[key] = count_parameters(lambda: DiffusersDenoiser(**kwargs))
    return _PARAM_CACHE[key]


def match_diffusers(cfg: Config, context_dim: int, target: int, tolerance: float = 0.15) -> tuple[dict, int]:
    """The UNet3DConditionModel closest in parameter count to `target` with t2s's levels, attention resolutions
    and layers per level (num_res_blocks): the base width (steps of 4) closest to `target` with t2s's head count,
    else with 8, 4, 2, 1 heads, else other depths, taking the first within `tolerance` (else the closest seen). Group norm takes the largest of 32/16/8/4/2 groups that
    divides every width."""
    mults = cfg.channel_mult
    bases = list(range(4, 8 * cfg.model_channels + 1, 4))

    def candidate(base: int, layers: int, heads: int) -> Optional[tuple[dict, int]]:
        chans = [base * m for m in mults]
        groups = next((g for g in (32, 16, 8, 4, 2) if all(c % g == 0 for c in chans)), None)
        if groups is None or any(c % heads for c in chans):
            return None
        kwargs = diffusers_unet_kwargs(cfg, context_dim, base, layers, heads, groups)
        return kwargs, diffusers_parameters(kwargs)

    def closest(layers: int, heads: int) -> Optional[tuple[dict, int]]:
        valid = [b for b in bases if all((b * m) % heads == 0 for m in mults)]
        if not valid:
            return None
        lo, hi = 0, len(valid) - 1  # the parameter count grows with the width: bisect, then look at the neighbours
        while lo < hi:
            mid = (lo + hi) // 2
            found = candidate(valid[mid], layers, heads)
            if found is not None and found[1] < target:
                lo = mid + 1
            else:
                hi = mid
        around = [candidate(valid[i], layers, heads) for i in range(max(0, lo - 1), min(len(valid), lo + 2))]
        around = [c for c in around if c is not None]
        return min(around, key=lambda c: abs(c[1] / target - 1)) if around else None

    best = None
    for layers in dict.fromkeys((cfg.num_res_blocks, max(1, cfg.num_res_blocks - 1), cfg.num_res_blocks + 1)):
        for heads in dict.fromkeys((cfg.num_heads, 8, 4, 2, 1)):  # t2s's head count first
            found = closest(layers, heads)
            if found is None:
                continue
            if best is None or abs(found[1] / target - 1) < abs(best[1] / target - 1):
                best = found
            if abs(found[1] / target - 1) <= tolerance:
                return found
    if best is None:
        raise ConfigError(f"bench: no UNet3DConditionModel layout fits channel_mult {mults}")
    return best


# ============================================================================================ one model, one scale
def _mfu(flops: int, seconds: float, peak: float) -> dict:
    achieved = flops / seconds if seconds > 0 else None
    return {"achieved_flops_per_s": achieved, "mfu": achieved / peak if achieved and peak else None}


def bench_model(name: str, build: Callable[[], nn.Module], cfg: Config, text, train_set, device: torch.device,
                steps: int, warmup: int, peak: dict, options: Optional[HarnessOptions] = None,
                keep_model: bool = False) -> dict:
    """Parameters, phase-timed training steps, clips/s, peak memory, FLOPs per step and MFU of one denoiser."""
    options = options or HarnessOptions()
    torch.manual_seed(cfg.seed)
    model = build()
    n_params = sum(p.numel() for p in model.parameters())
    harness = TrainHarness(cfg, model, text, train_set, device, options)
    sync = make_sync(device)
    log(f"{name} @ {cfg.scale} ({options.label()}): {n_params / 1e6:.2f}M parameters, {warmup} warm-up + {steps} steps")
    warm = []
    for _ in range(warmup):
        warm.append(harness.step(PhaseTimer(sync)))
    memory = PeakMemory(device)
    memory.reset()
    timings, runnable = [], [runnable_now()]
    load_before = load_average()
    for i in range(steps):
        timings.append(harness.step(PhaseTimer(sync)))
        runnable.append(runnable_now())
        log(f"  step {i + 1}/{steps}: {timings[-1].total * 1e3:.0f} ms")
    mem = memory.read()
    summary = summarize_steps(timings)
    context_len = round(sum(harness.context_lengths) / len(harness.context_lengths))
    flops, by_op = training_step_flops(build, cfg, context_len, text.hidden_size)
    step_s = summary["step_ms"]["mean"] / 1e3
    fb_s = summary["phases"]["forward_backward"]["mean_ms"] / 1e3
    result = {
        "name": name,
        "options": asdict(options),
        "options_label": options.label(),
        "mixed_precision": harness.mixed_precision,
        "parameters": n_params,
        "warmup_steps": warmup,
        "warmup_step_ms": [1e3 * t.total for t in warm],
        **summary,
        "amortized": amortized_shares(summary, cfg),
        "clips_per_s": cfg.batch_size / step_s,
        "peak_memory": mem,
        "flops_per_step": flops,
        "flops_by_op": by_op,
        "flops_context_len": context_len,
        "matmul_peak_flops_per_s": peak["flops_per_s"],
        "matmul_peak_dtype": peak["dtype"],
        "step": _mfu(flops, step_s, peak["flops_per_s"]),
        "forward_backward": _mfu(flops, fb_s, peak["flops_per_s"]),
        "final_train_loss": float(harness.last_loss) if harness.last_loss is not None else None,
        # other work on the machine during the measured steps (this process's threads included in 'runnable')
        "load_during": {"before": load_before, "after": load_average(), "runnable_samples": runnable},
    }
    if keep_model:
        result["_model"] = harness.model
    del harness
    return result


def peak_for(device: torch.device, mixed_precision: str, peaks: dict) -> dict:
    """The matmul peak of the dtype the step computes in: bf16 under bf16 autocast, else float32."""
    key = "bf16" if mixed_precision == "bf16" else "fp32"
    return peaks[key]


def measure_peaks(device: torch.device, trials: int) -> dict:
    peaks = {"fp32": matmul_peak(device, torch.float32, trials=trials)}
    if device.type == "cuda" or _cpu_bf16_supported():
        peaks["bf16"] = matmul_peak(device, torch.bfloat16, trials=trials)
    else:
        peaks["bf16"] = {**peaks["fp32"], "note": "no bf16 matmul support on this CPU: the fp32 peak stands in"}
    return peaks


def _max_peaks(a: dict, b: dict) -> dict:
    return {k: (a[k] if a[k]["flops_per_s"] >= b[k]["flops_per_s"] else b[k]) for k in a}


def bench_scale(scale: str, cfg: Config, text, device: torch.device, steps: int, warmup: int, sampling_steps: int,
                sampling_target: int, compare_diffusers: bool, variants: list[str], peak_trials: int,
                variants_for_diffusers: bool = False) -> dict:
    from .data import build_datasets
    from .model import build_denoiser
    from .runtime import resolve_mixed_precision

    t_start = time.perf_counter()
    train_set, val_set, split = build_datasets(cfg)
    caches = warm_caches(text, [train_set])
    log(f"{scale}: {len(train_set)} training clips, caches warm in {caches['decode_s'] + caches['encode_s']:.1f} s")
    peaks_start = measure_peaks(device, peak_trials)
    context_dim = text.hidden_size
    build_ours = lambda: build_denoiser(cfg, context_dim)  # noqa: E731
    mp = resolve_mixed_precision(cfg.mixed_precision)
    models = {}
    models["t2s"] = bench_model("t2s", build_ours, cfg, text, train_set, device, steps, warmup,
                                peak_for(device, mp, peaks_start), keep_model=True)
    ours = models["t2s"].pop("_model")
    log(f"sampling one clip at {scale}: {sampling_steps} DDIM steps with guidance")
    sampling = time_sampling(ours, text, cfg, device, sampling_steps, sampling_target)
    del ours
    build_theirs = None
    if compare_diffusers:
        kwargs, n = match_diffusers(cfg, context_dim, models["t2s"]["parameters"])
        build_theirs = lambda: DiffusersDenoiser(**kwargs)  # noqa: E731
        models["diffusers"] = bench_model("diffusers UNet3DConditionModel", build_theirs, cfg, text,
                                          train_set, device, steps, warmup, peak_for(device, mp, peaks_start))
        models["diffusers"]["architecture"] = {k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()}
        models["diffusers"]["parameter_ratio"] = n / models["t2s"]["parameters"]
    variant_results, variant_diffusers = {}, {}
    for v in variants:
        options = VARIANTS[v]
        peak = peak_for(device, options.mixed_precision or mp, peaks_start)
        res = bench_model("t2s", build_ours, cfg, text, train_set, device, steps, warmup, peak, options)
        res["speedup_vs_t2s"] = models["t2s"]["step_ms"]["mean"] / res["step_ms"]["mean"]
        variant_results[v] = res
        if variants_for_diffusers and build_theirs is not None and not options.compile:
            theirs = bench_model("diffusers UNet3DConditionModel", build_theirs, cfg, text, train_set, device, steps,
                                 warmup, peak, options)
            variant_diffusers[v] = theirs
            res["t2s_speedup_vs_diffusers_same_options"] = theirs["step_ms"]["mean"] / res["step_ms"]["mean"]
    peaks_end = measure_peaks(device, peak_trials)
    peaks = _max_peaks(peaks_start, peaks_end)
    # MFU against the best peak seen in this scale's section (the peak is measured twice; load can only lower it)
    for res in list(models.values()) + list(variant_results.values()) + list(variant_diffusers.values()):
        peak = peak_for(device, res["mixed_precision"], peaks)
        res["matmul_peak_flops_per_s"] = peak["flops_per_s"]
        res["step"] = _mfu(res["flops_per_step"], res["step_ms"]["mean"] / 1e3, peak["flops_per_s"])
        res["forward_backward"] = _mfu(res["flops_per_step"], res["phases"]["forward_backward"]["mean_ms"] / 1e3,
                                       peak["flops_per_s"])
    if "diffusers" in models:
        models["diffusers"]["t2s_speedup"] = models["diffusers"]["step_ms"]["mean"] / models["t2s"]["step_ms"]["mean"]
        # noise from other work on the machine only ever adds time: the ratio of the fastest steps is the robust one
        models["diffusers"]["t2s_speedup_min"] = models["diffusers"]["step_ms"]["min"] / models["t2s"]["step_ms"]["min"]
    return {
        "scale": scale,
        "config": {k: getattr(cfg, k) for k in ("image_size", "num_frames", "batch_size", "model_channels", "channel_mult",
                                                "num_res_blocks", "attention_resolutions", "num_heads", "mixed_precision",
                                                "gradient_accumulation_steps", "ema_update_every", "num_inference_steps",
                                                "guidance_scale", "synthsign_num_clips", "num_workers")},
        "mixed_precision": mp,
        "train_clips": len(train_set),
        "cache_warmup": caches,
        "matmul_peak": {"start": peaks_start, "end": peaks_end, "used": peaks},
        "models": models,
        "variants": variant_results,
        "variants_diffusers": variant_diffusers,
        "sampling": sampling,
        "seconds": time.perf_counter() - t_start,
    }


# ============================================================================================ the race
def race(cfg: Config, contenders: dict[str, Callable[[], nn.Module]], text, train_set, val_set, device: torch.device,
         seconds: float) -> dict:
    """Train each contender for the same wall-clock budget of training steps on the same data (same order, noise,
    timesteps, caption dropout, optimizer, lr schedule, diffusion loss), then its held-out loss (raw weights).

    Steps are interleaved, always advancing the contender with the least training time so far, so that both see
    the same machine load; each stops at the first step that ends past the budget. Evaluation is not timed."""
    harnesses = {}
    for name, build in contenders.items():
        torch.manual_seed(cfg.seed)
        harnesses[name] = TrainHarness(cfg, build(), text, train_set, device)
    clock = {name: 0.0 for name in harnesses}
    losses: dict[str, list[float]] = {name: [] for name in harnesses}
    sync = make_sync(device)
    log(f"race at {cfg.scale}: {seconds:.0f} s of training each for {', '.join(harnesses)}")
    while True:
        running = [n for n in harnesses if clock[n] < seconds]
        if not running:
            break
        name = min(running, key=lambda n: clock[n])
        timing = harnesses[name].step(PhaseTimer(sync))
        clock[name] += timing.total
        losses[name].append(float(harnesses[name].last_loss))
    out = {"scale": cfg.scale, "budget_s": seconds, "contenders": {}}
    for name, h in harnesses.items():
        autocast = _autocast_factory(device, h.mixed_precision)
        val = held_out_loss(h.model, text, val_set, cfg, device, autocast)
        val_ema = None
        if h.ema is not None:
            with h.ema.swapped():
                val_ema = held_out_loss(h.model, text, val_set, cfg, device, autocast)
        tail = losses[name][-10:]
        out["contenders"][name] = {
            "parameters": sum(p.numel() for p in h.model.parameters()),
            "steps": h.step_count, "train_seconds": clock[name],
            "step_ms_mean": 1e3 * clock[name] / max(1, h.step_count),
            "held_out_loss": val, "held_out_loss_ema": val_ema,
            "train_loss_last10_mean": sum(tail) / len(tail) if tail else None,
        }
        log(f"  {name}: {h.step_count} steps in {clock[name]:.1f} s, held-out loss {val:.4f} (EMA weights "
            f"{_fmt(val_ema, '.4f')})")
    out["held_out_definition"] = (f"Trainer.held_out_loss: {min(len(val_set), cfg.val_max_clips)} validation clips x "
                                  f"{cfg.val_num_timesteps} fixed timesteps, fixed noise (VAL_NOISE_SEED); raw weights, "
                                  f"and the EMA weights (decay {cfg.ema_decay} with warmup, updated every step)")
    return out


# ============================================================================================ goals
def evaluate_goals(result: dict) -> list[dict]:
    """The issue's goals, each met / not met / null with a reason, from the measured numbers."""
    goals = []
    ref = result["scales"].get(REFERENCE_SCALE)
    on_cpu = result["machine"]["device"] == "cpu"

    def goal(name, value, threshold, met, reason=None):
        goals.append({"goal": name, "value": value, "threshold": threshold,
                      "met": None if value is None else bool(met), "reason": reason})

    if ref and "diffusers" in ref["models"]:
        v = ref["models"]["diffusers"]["t2s_speedup"]
        goal("reference scale: t2s step >= 2x faster than diffusers UNet3DConditionModel (matched parameters)",
             v, 2.0, v >= 2.0, None if on_cpu else "measured on CUDA, the goal is stated for CPU")
    else:
        goal("reference scale: t2s step >= 2x faster than diffusers", None, 2.0, None, "reference scale or diffusers not run")
    if ref:
        for name, r in ref.get("variants", {}).items():
            if r.get("t2s_speedup_vs_diffusers_same_options") is not None:
                v = r["t2s_speedup_vs_diffusers_same_options"]
                goal(f"reference scale, both models with harness variant '{name}': t2s >= 2x faster than diffusers",
                     v, 2.0, v >= 2.0)
        v = ref["models"]["t2s"]["step"]["mfu"]
        goal("reference scale: t2s step >= 50% of the measured matmul peak (MFU)", v, 0.5, v is not None and v >= 0.5)
        for name, r in ref.get("variants", {}).items():
            v = r["step"]["mfu"]
            goal(f"reference scale, harness variant '{name}': t2s MFU >= 50% (vs the {r['matmul_peak_dtype']} peak)",
                 v, 0.5, v is not None and v >= 0.5)
    else:
        goal("reference scale: t2s MFU >= 50%", None, 0.5, None, "reference scale not run")
    for scale, res in result["scales"].items():
        t2s = res["models"]["t2s"]
        ema = t2s["phases"]["ema"]["share"]
        goal(f"{scale}: EMA update < 2% of the step (one update per step)", ema, 0.02, ema < 0.02)
        ema_am = t2s["amortized"]["shares"]["ema"]
        goal(f"{scale}: EMA < 2% of an optimizer step at the config's accumulation and ema_update_every", ema_am, 0.02,
             ema_am < 0.02)
        dt = t2s["phases"]["data"]["share"] + t2s["phases"]["text"]["share"]
        goal(f"{scale}: data + text < 5% of the step (steady state)", dt, 0.05, dt < 0.05)
    r = result.get("race")
    if r and len(r["contenders"]) == 2:
        ours, theirs = r["contenders"]["t2s"]["held_out_loss"], r["contenders"]["diffusers"]["held_out_loss"]
        goal(f"race ({r['scale']}, {r['budget_s']:.0f} s each): t2s held-out loss < diffusers' (raw weights; value = "
             f"t2s - diffusers)", ours - theirs, 0.0, ours < theirs)
        ours, theirs = r["contenders"]["t2s"]["held_out_loss_ema"], r["contenders"]["diffusers"]["held_out_loss_ema"]
        if ours is not None and theirs is not None:
            goal(f"race ({r['scale']}, {r['budget_s']:.0f} s each): the same with EMA weights", ours - theirs, 0.0,
                 ours < theirs)
    else:
        goal("race: t2s held-out loss < diffusers'", None, 0.0, None, "race not run")
    return goals


# ============================================================================================ writers
def _fmt(x, spec=".1f", none="—"):
    if x is None:
        return none
    return format(x, spec)


def _si(x, unit="FLOP/s"):
    if x is None:
        return "—"
    for p, s in ((1e12, "T"), (1e9, "G"), (1e6, "M")):
        if abs(x) >= p:
            return f"{x / p:.1f} {s}{unit}"
    return f"{x:.0f} {unit}"


def to_markdown(result: dict) -> str:
    m, s = result["machine"], result["settings"]
    lines = [
        "# t2s benchmark",
        "",
        f"- when: {result['started_at']} ({result['duration_s']:.0f} s)",
        f"- machine: {m['gpu'] or m['cpu']}; {m['cores']} cores ({m['usable_cores']} usable, torch threads "
        f"{m['torch_threads']}); torch {m['torch']}; diffusers {m['diffusers']}; device {m['device']}",
        f"- load average (1, 5, 15 min): start {result['load_average']['start']}, end {result['load_average']['end']} "
        f"(runnable threads at start {result['load_average'].get('runnable_at_start')}, at end "
        f"{result['load_average'].get('runnable_at_end')}, this process included)",
        f"- environment: {json.dumps(m.get('env', {}))}",
        f"- settings: {json.dumps(s)}",
    ]
    if result.get("warning"):
        lines.append(f"- **warning**: {result['warning']}")
    lines.append("")
    for scale, res in result["scales"].items():
        c = res["config"]
        lines += [f"## {scale}: {c['image_size']}x{c['image_size']}, {c['num_frames']} frames, batch {c['batch_size']}, "
                  f"mixed precision {res['mixed_precision']}", ""]
        names = list(res["models"])
        header = "| phase | " + " | ".join(f"{res['models'][n]['name']} ms | share" for n in names) + " |"
        lines += [header, "|---|" + "---:|---:|" * len(names)]
        for phase in PHASES:
            row = f"| {phase} | " + " | ".join(
                f"{res['models'][n]['phases'][phase]['mean_ms']:.1f} | {100 * res['models'][n]['phases'][phase]['share']:.1f}%"
                for n in names) + " |"
            lines.append(row)
        lines.append("| residual (untimed) | " + " | ".join(
            f"{res['models'][n]['residual_ms']:.2f} | {100 * res['models'][n]['residual_share']:.2f}%" for n in names) + " |")
        lines.append("| **step (measured)** | " + " | ".join(
            f"**{res['models'][n]['step_ms']['mean']:.1f}** | 100%" for n in names) + " |")
        lines += ["", "| | " + " | ".join(res["models"][n]["name"] for n in names) + " |", "|---|" + "---:|" * len(names)]
        rows = [
            ("parameters", lambda r: f"{r['parameters'] / 1e6:.3f} M"),
            ("steps measured (+ warm-up)", lambda r: f"{r['steps']} (+{r['warmup_steps']})"),
            ("step ms mean / min / max", lambda r: f"{r['step_ms']['mean']:.0f} / {r['step_ms']['min']:.0f} / {r['step_ms']['max']:.0f}"),
            ("clips / s", lambda r: f"{r['clips_per_s']:.2f}"),
            ("peak memory (process)", lambda r: f"{r['peak_memory']['peak_gb']:.2f} GB ({r['peak_memory']['kind']})"),
            ("peak memory rise during the steps", lambda r: f"{r['peak_memory']['increase_gb']:.2f} GB"),
            ("FLOPs per step (fwd+bwd)", lambda r: _si(r["flops_per_step"], "FLOP")),
            ("achieved FLOP/s (whole step)", lambda r: _si(r["step"]["achieved_flops_per_s"])),
            ("matmul peak", lambda r: f"{_si(r['matmul_peak_flops_per_s'])} ({r['matmul_peak_dtype']})"),
            ("MFU (whole step)", lambda r: f"{100 * r['step']['mfu']:.1f}%"),
            ("MFU (forward+backward only)", lambda r: f"{100 * r['forward_backward']['mfu']:.1f}%"),
            ("load average 1 min before / after the steps; runnable threads sampled",
             lambda r: f"{_fmt((r['load_during']['before'] or [None])[0], '.2f')} / "
                       f"{_fmt((r['load_during']['after'] or [None])[0], '.2f')}; {r['load_during']['runnable_samples']}"),
            ("EMA + data + text at config (amortized share)", lambda r: f"{100 * (r['amortized']['shares']['ema'] + r['amortized']['shares']['data'] + r['amortized']['shares']['text']):.2f}%"),
        ]
        for label, fn in rows:
            lines.append(f"| {label} | " + " | ".join(fn(res["models"][n]) for n in names) + " |")
        if "diffusers" in res["models"]:
            d = res["models"]["diffusers"]
            lines += ["", f"diffusers UNet3DConditionModel at matched parameters ({100 * (d['parameter_ratio'] - 1):+.1f}%): "
                      f"`{json.dumps(d['architecture'])}`. t2s step speed-up over it: **{d['t2s_speedup']:.2f}x** "
                      f"(mean step; {d['t2s_speedup_min']:.2f}x from the fastest steps)."]
        sp = res["sampling"]
        lines += ["", f"Sampling one clip (DDIM, {sp['target_steps']} steps, guidance {sp['guidance_scale']}, t2s): "
                  f"**{sp['seconds_at_target']:.1f} s** ({sp['method']}; {sp['per_step_mean_ms']:.0f} ms per step)."]
        if res["variants"]:
            vd = res.get("variants_diffusers") or {}
            lines += ["", "Harness-only variants of the t2s step (proposals for train.py / model.py):", "",
                      "| variant | step ms | speed-up | forward_backward ms | optimizer ms | MFU (vs peak of its dtype) "
                      "| peak memory rise | diffusers step ms, same options | t2s speed-up over diffusers |",
                      "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
            base = res["models"]["t2s"]
            d = res["models"].get("diffusers")
            lines.append(f"| as Trainer | {base['step_ms']['mean']:.0f} | 1.00x | {base['phases']['forward_backward']['mean_ms']:.0f} "
                         f"| {base['phases']['optimizer']['mean_ms']:.1f} | {100 * base['step']['mfu']:.1f}% ({base['matmul_peak_dtype']}) "
                         f"| {base['peak_memory']['increase_gb']:.2f} GB | {_fmt(d and d['step_ms']['mean'], '.0f')} "
                         f"| {_fmt(d and d['t2s_speedup'], '.2f')}x |")
            for v, r in res["variants"].items():
                theirs = vd.get(v)
                lines.append(f"| {v} | {r['step_ms']['mean']:.0f} | {r['speedup_vs_t2s']:.2f}x | "
                             f"{r['phases']['forward_backward']['mean_ms']:.0f} | {r['phases']['optimizer']['mean_ms']:.1f} | "
                             f"{100 * r['step']['mfu']:.1f}% ({r['matmul_peak_dtype']}) | {r['peak_memory']['increase_gb']:.2f} GB "
                             f"| {_fmt(theirs and theirs['step_ms']['mean'], '.0f')} "
                             f"| {_fmt(r.get('t2s_speedup_vs_diffusers_same_options'), '.2f')}x |")
        lines.append("")
    r = result.get("race")
    if r:
        lines += [f"## Race: {r['budget_s']:.0f} s of training each at {r['scale']}, same data and optimizer", "",
                  "| model | parameters | steps | train s | ms / step | held-out loss | held-out loss, EMA weights "
                  "| train loss, last 10 steps |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for name, c in r["contenders"].items():
            lines.append(f"| {name} | {c['parameters'] / 1e6:.3f} M | {c['steps']} | {c['train_seconds']:.1f} | "
                         f"{c['step_ms_mean']:.0f} | {c['held_out_loss']:.4f} | {_fmt(c.get('held_out_loss_ema'), '.4f')} "
                         f"| {_fmt(c.get('train_loss_last10_mean'), '.4f')} |")
        lines += ["", f"Held-out loss: {r['held_out_definition']}.", ""]
    lines += ["## Goals", "", "| goal | value | threshold | met |", "|---|---:|---:|---|"]
    for g in result["goals"]:
        met = "—" if g["met"] is None else ("yes" if g["met"] else "**no**")
        if g["reason"]:
            met += f" ({g['reason']})"
        lines.append(f"| {g['goal']} | {_fmt(g['value'], '.4g')} | {g['threshold']} | {met} |")
    lines.append("")
    return "\n".join(lines)


def write_outputs(result: dict, out_dir: Path) -> tuple[Path, Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / "bench.json", out_dir / "bench.md"
    tmp = json_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2, default=str), encoding="utf-8")
    os.replace(tmp, json_path)
    tmp = md_path.with_suffix(".md.tmp")
    tmp.write_text(to_markdown(result), encoding="utf-8")
    os.replace(tmp, md_path)
    return json_path, md_path


# ============================================================================================ the benchmark
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
    previous_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _run_benchmark(scales, quick, steps, warmup, sampling_steps, sampling_target, race_seconds, race_scale,
                              compare_diffusers, variants, variant_scales, overrides, reference_clips, device, out_dir,
                              variants_for_diffusers)
    finally:
        torch.set_num_threads(previous_threads)


def _run_benchmark(scales, quick, steps, warmup, sampling_steps, sampling_target, race_seconds, race_scale,
                   compare_diffusers, variants, variant_scales, overrides, reference_clips, device, out_dir,
                   variants_for_diffusers) -> dict:
    from .text import build_text_encoder

    started = _dt.datetime.now().isoformat(timespec="seconds")
    t0 = time.perf_counter()
    load_start, runnable_start = load_average(), runnable_now()
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    scales = tuple(scales)
    if quick:  # one scale: tiny, unless a list other than the default was asked for
        scales = ("tiny",) if not scales or scales == ("tiny", REFERENCE_SCALE) else scales[:1]
        race_seconds = min(race_seconds, 5.0)
        variants = []
    variants = list(variants if variants is not None else DEFAULT_VARIANTS)
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ConfigError(f"bench: unknown variant(s) {unknown}; known: {', '.join(VARIANTS)}")
    variant_scales = tuple(variant_scales) if variant_scales is not None else DEFAULT_VARIANT_SCALES
    race_scale = race_scale or ("tiny" if "tiny" in scales or not scales else scales[0])
    overrides = list(overrides or [])
    log(f"device {dev}, load average {load_start}, scales {', '.join(scales)}")
    warning = oversubscription_warning(dev, runnable_start)
    if warning:
        log(f"WARNING: {warning}")

    def config_for(scale: str) -> Config:
        extra = [f"synthsign_num_clips={reference_clips}"] if scale == REFERENCE_SCALE else []
        return load_config("baseline", scale, extra + overrides)

    settings = {"scales": list(scales), "quick": quick, "race_seconds": race_seconds, "race_scale": race_scale,
                "variants": variants, "variant_scales": list(variant_scales), "overrides": overrides,
                "reference_clips": reference_clips, "sampling_target_steps": sampling_target,
                "variants_for_diffusers": variants_for_diffusers, "torch_threads": torch.get_num_threads()}
    first_cfg = config_for(scales[0] if scales else race_scale)
    text = build_text_encoder(first_cfg, dev)
    result: dict[str, Any] = {"started_at": started, "machine": machine_info(dev), "settings": settings, "scales": {},
                              "warning": warning}
    for scale in scales:
        cfg = config_for(scale)
        n_steps, n_warm, n_sample = QUICK_DEFAULTS if quick else SCALE_DEFAULTS.get(scale, (3, 1, 4))
        n_steps = steps or n_steps
        n_warm = n_warm if warmup is None else warmup
        n_sample = sampling_steps or n_sample
        result["scales"][scale] = bench_scale(
            scale, cfg, text, dev, n_steps, n_warm, min(n_sample, sampling_target), sampling_target,
            compare_diffusers, variants if scale in variant_scales else [], peak_trials=3 if quick else 5,
            variants_for_diffusers=variants_for_diffusers)
        result["settings"][f"{scale}_steps"] = {"steps": n_steps, "warmup": n_warm, "sampling_steps": n_sample}
    if race_seconds and race_seconds > 0 and compare_diffusers:
        from .data import build_datasets
        from .model import build_denoiser

        cfg = config_for(race_scale)
        train_set, val_set, _ = build_datasets(cfg)
        warm_caches(text, [train_set, val_set])
        kwargs, _n = match_diffusers(cfg, text.hidden_size, count_parameters(lambda: build_denoiser(cfg, text.hidden_size)))
        result["race"] = race(cfg, {"t2s": lambda: build_denoiser(cfg, text.hidden_size),
                                    "diffusers": lambda: DiffusersDenoiser(**kwargs)},
                              text, train_set, val_set, dev, race_seconds)
        result["race"]["diffusers_architecture"] = {k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()}
    result["load_average"] = {"start": load_start, "end": load_average(), "runnable_at_start": runnable_start,
                              "runnable_at_end": runnable_now()}
    result["duration_s"] = time.perf_counter() - t0
    result["goals"] = evaluate_goals(result)
    if out_dir is not None:
        json_path, md_path = write_outputs(result, Path(out_dir))
        log(f"wrote {json_path} and {md_path} in {result['duration_s']:.0f} s")
    return result


# ============================================================================================ command line
def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The `bench` options, for `python -m t2s bench` (cli.py) or `python -m t2s.bench`."""
    parser.add_argument("--quick", action="store_true", help="smoke test: tiny only, few steps, 5 s race, no variants")
    parser.add_argument("--scales", default=f"tiny,{REFERENCE_SCALE}",
                        help=f"comma-separated params/scales names (default tiny,{REFERENCE_SCALE})")
    parser.add_argument("--steps", type=int, help="measured steps per model (default per scale: "
                        + ", ".join(f"{k} {v[0]}" for k, v in SCALE_DEFAULTS.items()) + ")")
    parser.add_argument("--warmup", type=int, help="warm-up steps per model, not measured (default 1)")
    parser.add_argument("--sampling-steps", type=int,
                        help="DDIM steps actually run when timing sampling; the time is extrapolated linearly per step "
                             "to --sampling-target-steps (default per scale: "
                             + ", ".join(f"{k} {v[2]}" for k, v in SCALE_DEFAULTS.items()) + ")")
    parser.add_argument("--sampling-target-steps", type=int, default=SAMPLING_TARGET_STEPS,
                        help=f"DDIM steps the sampling time is reported for (default {SAMPLING_TARGET_STEPS})")
    parser.add_argument("--race-seconds", type=float, default=60.0,
                        help="wall-clock training budget per model in the t2s-vs-diffusers race (default 60; 0 skips)")
    parser.add_argument("--race-scale", help="scale of the race (default tiny)")
    parser.add_argument("--no-diffusers", action="store_true", help="skip diffusers' UNet3DConditionModel (and the race)")
    parser.add_argument("--variants",
                        help="comma-separated harness-only speed-ups of the t2s step to measure, or 'none' (default "
                             f"{','.join(DEFAULT_VARIANTS)}; known: {', '.join(VARIANTS)})")
    parser.add_argument("--variants-for-diffusers", action="store_true",
                        help="also run diffusers' model under each variant (the side-by-side at equal options)")
    parser.add_argument("--variant-scales", help=f"scales at which to run --variants (default {','.join(DEFAULT_VARIANT_SCALES)})")
    parser.add_argument("--reference-clips", type=int, default=REFERENCE_CLIPS,
                        help=f"synthsign clips generated at the reference scale (default {REFERENCE_CLIPS})")
    parser.add_argument("-p", "--param", action="append", metavar="KEY=VALUE", help="config override for every scale")
    parser.add_argument("--data-dir", help="override data_dir (where synthsign caches live)")
    parser.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's, one per core)")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="output folder (default reports/bench)")
    return parser


def _split(text: Optional[str]) -> list[str]:
    return [s.strip() for s in (text or "").split(",") if s.strip()]


def run_from_args(args: argparse.Namespace) -> int:
    overrides = list(args.param or [])
    if args.data_dir:
        overrides.append(f"data_dir={args.data_dir}")
    result = run_benchmark(
        scales=tuple(_split(args.scales)), quick=args.quick, steps=args.steps, warmup=args.warmup,
        sampling_steps=args.sampling_steps, sampling_target=args.sampling_target_steps,
        race_seconds=args.race_seconds, race_scale=args.race_scale, compare_diffusers=not args.no_diffusers,
        variants=None if args.variants is None else [v for v in _split(args.variants) if v != "none"], variant_scales=tuple(_split(args.variant_scales)) if args.variant_scales else None,
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


if __name__ == "__main__":
    raise SystemExit(main())
