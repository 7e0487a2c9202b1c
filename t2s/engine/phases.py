"""Where a run's wall time goes: `<run>/logs/phases.json`, {phase: seconds} summed over every time the phase ran.

    with phase_timer(run, "validation"):
        ...

Training writes setup (data, models, text encoder), steps, validation, sampling and checkpoints; evaluation writes
eval_setup (data and metric models), recognizer (trained or loaded, reading the real clips), eval_sampling,
fvd_sampling, metrics, held_out_loss and eval_writing. A resumed run adds to the same file. `python -m t2s bench
--profile STUDY` reads these files with the executed notebooks' cell times (`t2s.bench.profile`). Only the main
process writes; the file is small and rewritten atomically at the end of each phase.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Optional

from t2s.rundir import RunDir, atomic_write_json, read_json


def add_phase_time(run: Optional[RunDir], name: str, seconds: float) -> None:
    """Add `seconds` to phase `name` of the run's phases.json (nothing without a run)."""
    if run is None or not run.logs.is_dir():
        return
    phases = read_json(run.phases, {})
    phases[name] = round(float(phases.get(name, 0.0)) + seconds, 3)
    atomic_write_json(run.phases, phases)


@contextmanager
def phase_timer(run: Optional[RunDir], name: str):
    """Time the block's wall seconds into phase `name` of `run` (also when the block raises)."""
    start = time.perf_counter()
    try:
        yield
    finally:
        add_phase_time(run, name, time.perf_counter() - start)
