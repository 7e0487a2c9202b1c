"""Live progress of a study: one line per running run (its phase, step of total, loss, clips/s, time left) and the
study's runs done of all, read from what each run writes (`progress.json`, see `t2s.rundir`), never from a
notebook's output.

    with StudyProgress("quickstart", total=6) as live:
        live.started("baseline-seed0", "[1/6] baseline-seed0", run_dir)
        ...                                    # the run trains somewhere: here, in a subprocess, in a Slurm job
        live.ended("baseline-seed0")

A thread polls the run directories, so runs in this process, in papermill subprocesses (`--jobs`, `--gpus`) and in
submitit jobs (local, Slurm: their folders on a shared disk) show the same way. On a terminal (stderr is a TTY):
tqdm bars redrawn every second, the study's bar first, then one per running run. Otherwise (a log file, a pipe):
every `every_s` seconds in which a run's line changed, the study's count and one plain line per running run.
Imports rundir and `runs`; `executors` and `ablate` build on it.
"""
from __future__ import annotations

import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from tqdm import tqdm

from t2s.rundir import RunDir, finite_number
from t2s.study.runs import duration_text, say

# A progress.json written before its run was started here (by an earlier, interrupted attempt) is not shown; the slack
# allows for clocks that differ a little between the machine that polls and the one (a Slurm node) that writes.
CLOCK_SLACK_S = 5.0
STALE_S = 120.0  # a line whose file is older than this says how old it is (a long validation, or a stuck run)
RUNNING_PHASES = ("training", "evaluating")  # the phases whose rate gives a time left
POLL_S = 1.0  # how often the run directories are read (a Slurm study: 5 seconds, on a shared file system)
EVERY_S = 60.0  # without a terminal: at most one block of lines per minute (when a line changed)


@dataclass
class RunProgress:
    """One run's progress.json, read."""

    phase: str  # validating, training, sampling, trained, evaluating, evaluated
    done: int
    total: int
    unit: str  # "step" or "clip"
    rate: Optional[float] = None  # units per second, lately
    loss: Optional[float] = None
    clips_per_s: Optional[float] = None
    epoch: Optional[int] = None
    weights: Optional[str] = None
    time: float = 0.0  # when it was written (seconds since the epoch)

    @property
    def seconds_left(self) -> Optional[float]:
        """The units left at the recent rate; None where there is no rate, or the phase is not a running one."""
        if self.phase not in RUNNING_PHASES or not self.rate or not self.total:
            return None
        return max(0.0, (self.total - self.done) / self.rate)


def read_progress(run_dir: Path, since: Optional[float] = None) -> Optional[RunProgress]:
    """A run's progress.json, or None when it has none, it cannot be read, or it was written before `since`."""
    record = RunDir(run_dir).read_progress()
    if record is None:
        return None
    try:
        progress = RunProgress(
            phase=str(record["phase"]), done=int(record["done"]), total=int(record["total"]), unit=str(record["unit"]),
            rate=finite_number(record.get("rate")), loss=finite_number(record.get("loss")),
            clips_per_s=finite_number(record.get("clips_per_s")),
            epoch=int(record["epoch"]) if record.get("epoch") is not None else None,
            weights=record.get("weights"), time=float(record["time"]))
    except (KeyError, TypeError, ValueError):
        return None
    return None if since is not None and progress.time < since else progress


def describe(progress: Optional[RunProgress], waiting: str = "starting", now: Optional[float] = None) -> str:
    """What a run is doing, in one line: "training step 120/300 (40%), loss 0.1234, 12.5 clips/s, 1m25s left";
    `waiting` when there is no progress yet."""
    if progress is None:
        return waiting
    p = progress
    share = f" ({100 * p.done / p.total:.0f}%)" if p.total else ""
    if p.phase == "training":
        parts = [f"training step {p.done}/{p.total}{share}"]
    elif p.phase in ("validating", "sampling"):
        parts = [f"{p.phase} at step {p.done}/{p.total}"]
    elif p.phase == "trained":
        parts = [f"trained ({p.done}/{p.total} steps), evaluation next"]
    elif p.phase == "evaluating" and not p.total:
        parts = ["evaluating: loading the data and metric models"]
    elif p.phase == "evaluating":
        parts = [f"evaluating clip {p.done}/{p.total}{share}" + (f" with the {p.weights} weights" if p.weights else "")]
    elif p.phase == "evaluated":
        parts = [f"evaluated ({p.total} clips)"]
    else:  # a phase this version does not know: shown as written
        parts = [f"{p.phase} {p.done}/{p.total} {p.unit}s"]
    if p.unit == "step" and p.loss is not None and p.phase not in ("trained",):
        parts.append(f"loss {p.loss:.4f}")
    if p.phase == "training" and p.clips_per_s:
        parts.append(f"{p.clips_per_s:.1f} clips/s")
    elif p.phase == "evaluating" and p.rate:
        parts.append(f"{p.rate:.2f} clips/s")
    if p.seconds_left is not None:
        parts.append(f"{duration_text(p.seconds_left)} left")
    age = (time.time() if now is None else now) - p.time
    if age > STALE_S:
        parts.append(f"(written {duration_text(age)} ago)")
    return ", ".join(parts)


def _terminal() -> bool:
    """Whether the bars go to a terminal they can be drawn on: stderr is one, with a width (not a 0-column pty)."""
    try:
        return sys.stderr.isatty() and os.get_terminal_size(sys.stderr.fileno()).columns > 0
    except (OSError, ValueError, AttributeError):
        return False


class _RunBar(tqdm):
    """A tqdm bar whose format has one more field, {line}: the run's line as `describe` says it."""

    line = ""

    @property
    def format_dict(self):
        return {**super().format_dict, "line": self.line}


@dataclass
class _Live:
    tag: str  # "[2/6] baseline-seed0", as the study's other lines name the run
    run_dir: Path
    since: float
    waiting: str
    bar: Optional[_RunBar] = None
    printed: Optional[str] = None  # the line last printed (without a terminal)


class StudyProgress:
    """The live display of one ablate call: `started` / `ended` per run, `say` for every other line (so that a line
    never tears a bar). A context manager: the polling thread runs inside the `with`, the bars close at its end."""

    BAR_FORMAT = "{desc} |{bar:16}| {line}"

    def __init__(self, study: str, total: int, done: int = 0, log: Callable[[str], None] = say, *,
                 show: bool = True, tty: Optional[bool] = None, poll_s: Optional[float] = None,
                 every_s: Optional[float] = None):
        self.study, self.total, self.done, self.log, self.show = study, total, done, log, show
        self.poll_s = POLL_S if poll_s is None else poll_s
        self.every_s = EVERY_S if every_s is None else every_s
        self.tty = show and (_terminal() if tty is None else tty)
        self.live: dict[str, _Live] = {}
        self.lock = threading.RLock()
        self.stopping = threading.Event()
        self.thread: Optional[threading.Thread] = None
        self.printed_at = time.monotonic()
        self.overall = (tqdm(total=total, initial=done, desc=f"study {study}", unit="run", dynamic_ncols=True,
                             bar_format="{desc}: {n_fmt}/{total_fmt} runs done |{bar:16}| {elapsed}")
                        if self.tty else None)

    def __enter__(self) -> "StudyProgress":
        if self.show:
            self.thread = threading.Thread(target=self._loop, name="t2s-progress", daemon=True)
            self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopping.set()
        if self.thread is not None:
            self.thread.join()
        with self.lock:
            for live in self.live.values():
                if live.bar is not None:
                    live.bar.close()
            self.live.clear()
            if self.overall is not None:
                self.overall.close()

    def say(self, line: str) -> None:
        """A line of the study's log, printed above the bars on a terminal."""
        if self.tty:
            with tqdm.external_write_mode():
                self.log(line)
        else:
            self.log(line)

    def started(self, name: str, tag: str, run_dir: Path, waiting: str = "starting") -> None:
        """Run `name` started (or was submitted): its line shows `waiting` until it writes a progress.json."""
        with self.lock:
            bar = (_RunBar(total=1, desc=tag, bar_format=self.BAR_FORMAT, leave=False, dynamic_ncols=True)
                   if self.tty else None)
            self.live[name] = _Live(tag, Path(run_dir), time.time() - CLOCK_SLACK_S, waiting, bar)
            self._draw(self.live[name])

    def ended(self, name: str) -> None:
        """Run `name` ended (finished, failed or skipped): its line goes, the study's count goes up."""
        with self.lock:
            live = self.live.pop(name, None)
            if live is not None and live.bar is not None:
                live.bar.close()
            self.done += 1
            if self.overall is not None:
                self.overall.update(1)

    def line(self, name: str) -> str:
        """The line of running run `name`: "[2/6] baseline-seed0: training step 120/300 (40%), loss ..."."""
        live = self.live[name]
        return f"{live.tag}: {describe(read_progress(live.run_dir, live.since), live.waiting)}"

    def poll(self) -> None:
        """One round: the bars redrawn (terminal), or, every `every_s` seconds in which a line changed, the study's
        count and each running run's line printed."""
        with self.lock:
            if self.tty:
                for live in self.live.values():
                    self._draw(live)
                return
            if time.monotonic() - self.printed_at < self.every_s:
                return
            lines = {name: self.line(name) for name in self.live}
            if all(lines[name] == self.live[name].printed for name in lines):
                return
            self.printed_at = time.monotonic()
            self.log(f"study {self.study}: {self.done}/{self.total} runs done, {len(lines)} running")
            for name, text in lines.items():
                self.live[name].printed = text
                self.log(f"  {text}")

    def _draw(self, live: _Live) -> None:
        if live.bar is None:
            return
        progress = read_progress(live.run_dir, live.since)
        live.bar.total = max(1, progress.total) if progress else 1
        live.bar.n = min(progress.done, live.bar.total) if progress else 0
        live.bar.line = describe(progress, live.waiting)
        live.bar.refresh()

    def _loop(self) -> None:
        while not self.stopping.wait(self.poll_s):
            try:
                self.poll()
            except Exception as exc:  # noqa: BLE001 - the display never stops a study
                self.say(f"live progress stopped: {type(exc).__name__}: {exc}")
                return
