"""Where and how the engine runs: the device and accelerate's process state, the mixed-precision and memory-format
policy, the autocast factory, torch's threads, RNG state capture and restore, the stop signals, and the facts a run
records about its machine (device name, memory, git commit, package versions).

Rules: `mixed_precision: auto` is bf16 where the hardware runs it natively (a CUDA GPU with bf16, a CPU with
avx512_bf16 or AMX), else full precision; channels-last weights follow it (`uses_channels_last`). The README's
Performance section holds the measurements behind both.
"""
from __future__ import annotations

import datetime as _dt
import getpass
import os
import platform
import random
import signal
import subprocess
import tempfile
import threading
import time
from contextlib import contextmanager, nullcontext
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import numpy as np
import psutil
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState

from t2s.config import PROJECT_ROOT, Config
from t2s.engine.trackers import accelerate_trackers

RECORDED_PACKAGES = ("torch", "diffusers", "transformers", "accelerate", "numpy", "papermill", "plotly", "pandas", "lpips")


def now() -> str:
    return _dt.datetime.now().isoformat(timespec="seconds")


# --------------------------------------------------------------------------------------------- devices, precision
def cpu_has_native_bf16() -> bool:
    """Whether oneDNN runs bf16 natively on this CPU (avx512_bf16 or AMX); emulated bf16 would be slower than fp32."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_mixed_precision(choice: str) -> str:
    """`mixed_precision: auto` -> bf16 on a CUDA GPU with bf16, and on a CPU with native bf16; else no."""
    if choice != "auto":
        return choice
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "no"
    return "bf16" if cpu_has_native_bf16() else "no"


def uses_channels_last(cfg: Config, device: torch.device) -> bool:
    """Whether training keeps the convolution weights channels-last (`channels_last`: auto, true, false). auto: on
    CUDA, and on a CPU when training in bf16 (oneDNN's NHWC bf16 convolutions; fp32 on a CPU gains nothing)."""
    if cfg.channels_last != "auto":
        return bool(cfg.channels_last)
    return device.type == "cuda" or resolve_mixed_precision(cfg.mixed_precision) == "bf16"


def autocast_factory(device: torch.device, mixed_precision: str) -> Callable[[], Any]:
    """A zero-argument context-manager factory for forward passes in `mixed_precision` ('no', 'bf16', 'fp16')."""
    if mixed_precision == "no":
        return nullcontext
    if mixed_precision in ("bf16", "fp16"):
        dtype = torch.bfloat16 if mixed_precision == "bf16" else torch.float16
        return lambda: torch.autocast(device.type, dtype=dtype)
    raise ValueError(f"mixed_precision must be 'no', 'bf16' or 'fp16', not {mixed_precision!r}")


def run_autocast(device: torch.device, mixed_precision: str) -> Callable[[], Any]:
    """The autocast factory of a run's forward passes outside training (held-out loss, sampling): its resolved
    `mixed_precision`, with fp16 on CUDA only, as training's validation runs it."""
    precision = resolve_mixed_precision(mixed_precision)
    return autocast_factory(device, "no" if precision == "fp16" and device.type != "cuda" else precision)


def use_cpu(cpu: bool = False) -> bool:
    """accelerate starts several CPU processes (gloo) only when told to use the CPU: a multi-process launch on a
    machine without CUDA (torchrun, notebook_launcher, the tests) counts as `cpu`."""
    if cpu or os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes"):  # accelerate launch --cpu
        return True
    return not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1


def make_accelerator(cfg: Config, cpu: bool = False) -> Accelerator:
    """accelerate's Accelerator for one run: its mixed precision, gradient accumulation and device. accelerate keeps
    one process-wide state and refuses a second Accelerator with another mixed precision; each run (several in one
    notebook or test process) sets its own. The process group (PartialState) is kept."""
    AcceleratorState._reset_state(reset_partial_state=False)
    return Accelerator(
        mixed_precision=resolve_mixed_precision(cfg.mixed_precision),
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        cpu=use_cpu(cpu),
        log_with=accelerate_trackers(cfg) or None,
    )


@contextmanager
def eval_mode(*modules: torch.nn.Module) -> Iterator[None]:
    """Every submodule in eval mode within the block, then each back in its own previous mode (a module's flag alone
    does not say its children's: a Hugging Face model loads in eval mode inside a module left in training mode)."""
    saved = [(m, m.training) for module in modules for m in module.modules()]
    for module in modules:
        module.eval()
    try:
        yield
    finally:
        for m, mode in saved:
            m.training = mode


# ablate sets this for the jobs it runs at once on one machine: each job's share of the usable CPUs
THREADS_ENV_VAR = "T2S_THREADS"


def cgroup_cpu_limit(root: str = "/sys/fs/cgroup") -> Optional[float]:
    """The CPU quota of this process's cgroup in CPUs (quota / period; cgroup v2 cpu.max or v1 cfs files), None when
    there is none or it cannot be read."""
    try:
        with open(os.path.join(root, "cpu.max"), encoding="ascii") as fh:
            quota, period = fh.read().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        with open(os.path.join(root, "cpu", "cpu.cfs_quota_us"), encoding="ascii") as fh:
            quota = int(fh.read())
        with open(os.path.join(root, "cpu", "cpu.cfs_period_us"), encoding="ascii") as fh:
            period = int(fh.read())
        return None if quota <= 0 else quota / period
    except (OSError, ValueError):
        return None


def usable_cpus() -> int:
    """The CPUs this process may use: its affinity mask (taskset, Slurm's binding), capped by its cgroup's CPU quota
    (containers, Slurm), at least 1."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cpus = os.cpu_count() or 1
    limit = cgroup_cpu_limit()
    if limit is not None:
        cpus = min(cpus, max(1, int(limit)))
    return max(1, cpus)


def thread_count(jobs_at_once: int = 1) -> int:
    """torch threads for one of `jobs_at_once` jobs sharing this machine's usable CPUs; `T2S_THREADS`, when set (by
    ablate for its jobs), wins."""
    given = os.environ.get(THREADS_ENV_VAR, "").strip()
    if given:
        try:
            return max(1, int(given))
        except ValueError:
            raise ValueError(f"{THREADS_ENV_VAR}={given!r} is not a whole number of threads") from None
    return max(1, usable_cpus() // max(1, jobs_at_once))


def share_cpus_env(jobs_at_once: int) -> dict:
    """Environment for one of `jobs_at_once` jobs on this machine: its share of the usable CPUs as torch threads
    (`runtime.THREADS_ENV_VAR`) and, when shared, OpenMP threads that sleep instead of spinning while they wait
    (spinning threads of one job steal the cores another job computes on)."""
    if jobs_at_once <= 1:
        return {}
    return {THREADS_ENV_VAR: str(thread_count(jobs_at_once)), "OMP_WAIT_POLICY": "PASSIVE"}


# Kit processes computing on this machine (training or evaluating) register in RUNNING_DIR for as long as they
# compute; each sizes its torch threads to its share of the usable CPUs among them and re-checks the share every
# REBALANCE_S seconds while it trains or samples: two runs started in two shells, or a notebook kernel beside a study,
# then split the cores instead of each taking all of them and stealing the other's (OpenMP threads that spin while
# they wait on a core another process holds): python -m t2s bench --contention, "each started on its own". A share
# given explicitly (T2S_THREADS: ablate's jobs; a multi-process launch) is kept, and counted by the others.
RUNNING_DIR = Path(os.environ.get("T2S_COMPUTING_DIR") or Path(tempfile.gettempdir()) / f"t2s-computing-{getpass.getuser()}")
REBALANCE_S = 2.0
_computing = {"depth": 0, "path": None, "jobs": 1, "checked": 0.0}


def kit_processes() -> int:
    """The kit processes computing on this machine now (this one included when it computes); stale entries (a
    process that died without leaving) are removed."""
    count = 0
    try:
        entries = list(RUNNING_DIR.iterdir())
    except OSError:
        return max(1, _computing["depth"] > 0)
    for entry in entries:
        try:
            alive = psutil.pid_exists(int(entry.name))
        except ValueError:
            continue
        if alive:
            count += 1
        else:
            entry.unlink(missing_ok=True)
    return max(1, count)


def _share(jobs_at_once: int) -> int:
    if os.environ.get(THREADS_ENV_VAR, "").strip() or jobs_at_once > 1:
        return thread_count(jobs_at_once)
    return max(1, usable_cpus() // kit_processes())


def size_threads(jobs_at_once: int = 1) -> int:
    """This process computes from now until `release_threads()`: register it (RUNNING_DIR) and set torch's intra-op
    threads to its share of the usable CPUs (affinity, cgroup quota): `T2S_THREADS` when set (ablate's jobs), the
    launch's share for `jobs_at_once` local processes, else the usable CPUs divided among the kit processes computing
    now. torch's own default counts the machine's cores, not the ones this process may use. Returns the threads."""
    if _computing["depth"] == 0:
        try:
            RUNNING_DIR.mkdir(parents=True, exist_ok=True)
            path = RUNNING_DIR / str(os.getpid())
            path.touch()
            _computing["path"] = path
        except OSError:  # no temporary folder to share: size by this process alone
            _computing["path"] = None
    _computing["depth"] += 1
    _computing["jobs"] = jobs_at_once
    _computing["checked"] = time.monotonic()
    n = _share(jobs_at_once)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


def rebalance_threads() -> int:
    """While computing: every REBALANCE_S seconds, the threads resized to this process's share now (other kit
    processes started or ended). Cheap between checks; a no-op outside `size_threads` ... `release_threads`."""
    if _computing["depth"] == 0 or time.monotonic() - _computing["checked"] < REBALANCE_S:
        return torch.get_num_threads()
    _computing["checked"] = time.monotonic()
    n = _share(_computing["jobs"])
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


@contextmanager
def computing(jobs_at_once: int = 1) -> Iterator[int]:
    """`size_threads` for the block (its value is the threads), `release_threads` after it."""
    threads = size_threads(jobs_at_once)
    try:
        yield threads
    finally:
        release_threads()


def release_threads() -> None:
    """This process no longer computes (the matching `size_threads`): it leaves the register."""
    _computing["depth"] = max(0, _computing["depth"] - 1)
    if _computing["depth"] == 0 and _computing["path"] is not None:
        _computing["path"].unlink(missing_ok=True)
        _computing["path"] = None


@contextmanager
def torch_threads(n: Optional[int]) -> Iterator[None]:
    """torch's intra-op threads set to `n` within the block (None: unchanged), restored afterwards."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# --------------------------------------------------------------------------------------------- RNG state
def rng_state() -> dict:
    """The global Python, NumPy, torch CPU and CUDA generators' states, as tensors and plain values."""
    np_state = np.random.get_state()
    return {
        "python": list(random.getstate()[1]),
        "python_pos": random.getstate()[2],
        "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict) -> None:
    random.setstate((3, tuple(state["python"]), state["python_pos"]))
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
    torch.set_rng_state(state["torch"])
    if torch.cuda.is_available() and state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])


# --------------------------------------------------------------------------------------------- stop signals
class StopSignals:
    """SIGINT/SIGTERM within the block set `requested` to the signal's name (the loop finishes its optimizer step,
    checkpoints and stops); a second signal raises KeyboardInterrupt. Only in the main thread; the previous handlers
    come back afterwards."""

    def __init__(self, on_request: Callable[[str], None] = lambda name: None):
        self.requested: Optional[str] = None
        self.on_request = on_request

    def _handle(self, signum, _frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name
        self.on_request(self.requested)

    @contextmanager
    def installed(self) -> Iterator["StopSignals"]:
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield self
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


# --------------------------------------------------------------------------------------------- the machine
def memory_gb(device: torch.device) -> dict:
    """allocated, reserved and peak memory of the device (CPU: the process's resident set for all three) and RSS."""
    rss = psutil.Process().memory_info().rss / 1e9
    if device.type == "cuda":
        return {
            "allocated_gb": torch.cuda.memory_allocated(device) / 1e9,
            "reserved_gb": torch.cuda.memory_reserved(device) / 1e9,
            "peak_gb": torch.cuda.max_memory_allocated(device) / 1e9,
            "rss_gb": rss,
        }
    return {"allocated_gb": rss, "reserved_gb": rss, "peak_gb": rss, "rss_gb": rss}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def git_commit() -> Optional[str]:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def machine_facts(device: torch.device) -> dict:
    """What metadata.json records of the machine a run trains on."""
    return {"git_commit": git_commit(), "host": platform.node(), "device_name": device_name(device),
            "torch_version": torch.__version__, "cuda_version": torch.version.cuda, "packages": package_versions()}


def package_version(name: str) -> Optional[str]:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def package_versions(names: tuple[str, ...] = RECORDED_PACKAGES) -> dict:
    return {n: package_version(n) for n in names}


def proc_status_bytes(field: str) -> Optional[int]:
    """A memory line of /proc/self/status ("VmHWM": peak resident set, "VmRSS": current) in bytes; None off Linux."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith(f"{field}:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


class PeakMemory:
    """Peak memory (GB) of the block: CUDA `max_memory_allocated`; on CPU the process's peak resident set size, reset
    before the block on Linux through /proc/self/clear_refs, else sampled every 10 ms (psutil)."""

    def __init__(self, device: torch.device):
        self.device, self.peak_gb = device, None
        self._thread, self._stop, self._max = None, threading.Event(), 0

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            return self
        self._hwm = False
        try:
            with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
                fh.write("5")  # Linux: reset the peak RSS (VmHWM) to the current RSS
            self._hwm = proc_status_bytes("VmHWM") is not None
        except OSError:
            pass
        if not self._hwm:
            process = psutil.Process()

            def poll():
                while not self._stop.is_set():
                    self._max = max(self._max, process.memory_info().rss)
                    self._stop.wait(0.01)

            self._thread = threading.Thread(target=poll, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_gb = torch.cuda.max_memory_allocated(self.device) / 1e9
        elif self._hwm:
            self.peak_gb = (proc_status_bytes("VmHWM") or 0) / 1e9
        else:
            self._stop.set()
            self._thread.join()
            self.peak_gb = self._max / 1e9
        return False


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)

