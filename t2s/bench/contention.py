"""Sharing the cores: one training alone against two at once on this machine.

`python -m t2s bench --contention` runs the engine's training step (`t2s.engine.step.Engine.train_step`, the baseline at
the tiny scale by default) for a fixed number of steps in worker processes (`WORKER_CODE`
--worker`), each timing its own steps after a warm-up:

* alone: one worker with the threads `t2s.engine.runtime.size_threads` gives it (the CPUs this process may use);
* together, shared: two workers started at once, each with its share (`T2S_THREADS` = usable CPUs // 2) and
  `OMP_WAIT_POLICY=PASSIVE`, as `ablate --jobs 2` starts them;
* each started on its own: two workers started at once with the user's environment as it is (no `T2S_THREADS`, no
  OpenMP setting): what two `python -m t2s run` in two shells, or a notebook kernel beside a study, get from the
  kit's defaults (`t2s.engine.runtime.size_threads`: each kit process that computes registers and takes its share
  of the CPUs among those computing, re-checked every 2 s);
* together, spinning: two workers started at once, each on every usable CPU with OpenMP's spinning waits
  (OMP_WAIT_POLICY=ACTIVE, the default of OpenMP without the kit's): the case the kit's default avoids.

The slowdown of a pair is its wall time (start of both to the end of the later) over the single worker's wall time:
sharing two cores should cost about 2x (each job gets half); the goal is at most 2.4x. Timings are wall-clock on a
shared machine: a description of this hardware at that moment, never asserted in tests.
"""
from __future__ import annotations

import subprocess
import time

import torch

from t2s.bench.step import endless_batches
from t2s.bench.timing import start_worker, worker_result
from t2s.config import load_config
from t2s.engine.runtime import THREADS_ENV_VAR, computing, rebalance_threads, share_cpus_env, usable_cpus
from t2s.engine.step import Engine

CONTENTION_GOAL = 2.4  # a pair of runs on shared cores may take at most this many times one run alone


def worker(scale: str, steps: int, warmup: int) -> dict:
    """Train `warmup` + `steps` engine steps of the baseline at `scale` on the CPU; the measured steps' seconds."""
    with computing() as threads:
        return _timed_steps(scale, steps, warmup, threads)


def _timed_steps(scale: str, steps: int, warmup: int, threads: int) -> dict:
    engine = Engine(load_config("baseline", scale), cpu=True)
    batches = endless_batches(engine)
    for _ in range(warmup):
        engine.train_step(batches)
        rebalance_threads()  # as the trainer does after every step
    start = time.perf_counter()
    for _ in range(steps):
        engine.train_step(batches)
        rebalance_threads()
    return {"seconds": time.perf_counter() - start, "steps": steps, "threads": threads,
            "torch_threads": torch.get_num_threads()}


# a worker process: one timed training (`worker`), its JSON on the last line of its output
WORKER_CODE = ("import json, sys; from t2s.bench.contention import worker; "
               "print(json.dumps(worker(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))))")


def _start(scale: str, steps: int, warmup: int, env: dict) -> subprocess.Popen:
    """A worker with this environment changed by `env` (a None value removes the variable)."""
    return start_worker(WORKER_CODE, [scale, steps, warmup], env)


def _finish(process: subprocess.Popen) -> dict:
    return worker_result(process, "contention")


def _together(scale: str, steps: int, warmup: int, env: dict) -> dict:
    start = time.perf_counter()
    processes = [_start(scale, steps, warmup, env) for _ in range(2)]
    workers = [_finish(p) for p in processes]
    return {"wall_s": time.perf_counter() - start, "workers": workers, "env": env}


CASES = ("shared", "own", "unshared")


def measure_contention(scale: str = "tiny", steps: int = 20, warmup: int = 3, unshared: bool = True) -> dict:
    """The cases of the module docstring; slowdowns are pair wall time / single wall time. The workers inherit this
    process's environment less `T2S_THREADS` and `OMP_WAIT_POLICY`, so that "alone" and "each started on its own" see
    what a user's fresh shell gives the kit."""
    cpus = usable_cpus()
    base_env = {THREADS_ENV_VAR: None, "OMP_WAIT_POLICY": None}  # None: removed from the worker's environment
    start = time.perf_counter()
    alone = _finish(_start(scale, steps, warmup, base_env))
    alone_wall = time.perf_counter() - start
    shared_env = share_cpus_env(2)  # as ablate --jobs 2 starts its runs
    result = {"scale": scale, "steps": steps, "warmup": warmup, "usable_cpus": cpus,
              "alone": {"wall_s": alone_wall, "workers": [alone], "env": base_env},
              "shared": _together(scale, steps, warmup, shared_env),
              "own": _together(scale, steps, warmup, base_env), "goal": CONTENTION_GOAL}
    if unshared:
        result["unshared"] = _together(scale, steps, warmup, {THREADS_ENV_VAR: str(cpus), "OMP_WAIT_POLICY": "ACTIVE"})
    for case in CASES:
        if case in result:
            result[case]["slowdown"] = result[case]["wall_s"] / alone_wall
            result[case]["step_slowdown"] = (max(w["seconds"] for w in result[case]["workers"]) / alone["seconds"])
    return result


def to_markdown(result: dict) -> str:
    """The contention section of bench.md."""
    lines = [f"## Two trainings at once ({result['scale']}, {result['steps']} steps after {result['warmup']} warm-up, "
             f"{result['usable_cpus']} usable CPUs)", "",
             "| case | threads per run | wall (s) | slowdown vs alone | measured steps, slowest run (s) |",
             "| --- | --- | --- | --- | --- |"]
    alone = result["alone"]
    lines.append(f"| one run alone | {alone['workers'][0]['torch_threads']} | {alone['wall_s']:.1f} | 1.00x | "
                 f"{alone['workers'][0]['seconds']:.1f} |")
    for case, label in (("shared", "two at once, shared as ablate starts them (T2S_THREADS, passive wait)"),
                        ("own", "two at once, each started on its own (the kit's defaults)"),
                        ("unshared", "two at once, each on every CPU, spinning waits (OMP_WAIT_POLICY=ACTIVE)")):
        if case in result:
            r = result[case]
            threads = ", ".join(str(w["torch_threads"]) for w in r["workers"])
            lines.append(f"| {label} | {threads} | {r['wall_s']:.1f} | {r['slowdown']:.2f}x | "
                         f"{max(w['seconds'] for w in r['workers']):.1f} |")
    for case, what in (("shared", "started by ablate"), ("own", "each started on its own")):
        if case in result:
            met = result[case]["slowdown"] <= result["goal"]
            lines.append(f"{'' if case != 'shared' else chr(10)}Goal: two runs {what} within {result['goal']}x of one "
                         f"alone: {'met' if met else 'NOT met'} ({result[case]['slowdown']:.2f}x).")
    return "\n".join(lines) + "\n"
