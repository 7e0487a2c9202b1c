"""The machine and the clock: load and oversubscription, the machine's description, and the phase accounting of a
training step (`PhaseTimer`: phases timed back to back, the whole step timed too, the difference reported as the
residual), its summary over steps and its amortized shares at a config's settings.

On CUDA every phase boundary synchronizes (`make_sync`; in the benchmark only, never in the training loop).
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

from t2s.config import Config
from t2s.engine.runtime import cpu_has_native_bf16, package_version

# the phases of one micro-batch and its optimizer step, as `t2s.engine.step.Engine.train_step` brackets them
PHASES = ("data", "text", "forward_backward", "grad_clip", "optimizer", "ema")


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------- the machine
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


def start_worker(code: str, args: list, env: dict) -> "subprocess.Popen":
    """`python -c code *args` with this environment changed by `env` (a None value removes the variable); the worker
    prints its result as JSON on its last line (`worker_result`)."""
    environment = {k: v for k, v in {**os.environ, **env}.items() if v is not None}
    return subprocess.Popen([sys.executable, "-c", code, *map(str, args)], env=environment, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def worker_result(process: "subprocess.Popen", what: str) -> dict:
    """The JSON on a finished worker's last line, or a RuntimeError with the end of its error output."""
    out, err = process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"{what} worker failed ({process.returncode}): {err.strip()[-2000:]}")
    return json.loads(out.strip().splitlines()[-1])


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
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "diffusers": package_version("diffusers"),
        "python": platform.python_version(),
        "host": platform.node(),
        "cpu_bf16": cpu_has_native_bf16(),
        "env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS")},
    }


def make_sync(device: torch.device) -> Callable[[], None]:
    """A no-op on CPU; torch.cuda.synchronize on CUDA, so a phase's time is the work it launched."""
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


# --------------------------------------------------------------------------------------------- the clock
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
    """`start()`, then `with timer.phase(name): ...` for each phase, then `stop()` -> StepTiming. A phase entered
    several times in a step (one per micro-batch) is charged the sum of its intervals.

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
    names = list(dict.fromkeys(list(phases) + [p for t in timings for p in t.phases if p not in phases]))
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
