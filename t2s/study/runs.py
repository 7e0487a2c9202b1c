"""One run of a study, as every executor runs it: where things are, the plan of each run (its config validated
first), its lock, train.ipynb executed through papermill (here or on one GPU), and its failure record.

Rules: a run is planned before anything runs, so a bad override fails at once; a run is executed only under its lock
(`run_lock`); a failing notebook is recorded in executed/<study>/failures.json and in its metadata.json, never
raised, so the other runs go on. Imports config, rundir and `derived`; `executors`, `export` and `ablate` build on it.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import nbformat
from papermill.exceptions import PapermillExecutionError

from t2s.config import PARAMS_DIR, PROJECT_ROOT, Config, ConfigError, load_config, parse_override
from t2s.engine.checkpoint import list_checkpoints
from t2s.engine.runtime import share_cpus_env
from t2s.rundir import FAILURES_FILE, STUDY_FILE, RunDir, atomic_write_json, exclusive_lock, read_json
from t2s.study.derived import find_provider
from t2s.study.kernel import SUBPROCESS_CODE, execute_notebook

TRAIN_NOTEBOOK = PROJECT_ROOT / "notebooks" / "train.ipynb"
ANALYSIS_NOTEBOOK = PROJECT_ROOT / "notebooks" / "analysis.ipynb"
EXECUTED_DIR = PROJECT_ROOT / "executed"
REPORTS_DIR = PROJECT_ROOT / "reports"
STUDY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def say(line: str) -> None:
    print(line, flush=True)


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def duration_text(seconds: float) -> str:
    minutes, seconds = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


def shown_path(path: Path) -> str:
    """A path as a person reads it: relative to the project root when inside it."""
    path = Path(path).resolve()
    return path.relative_to(PROJECT_ROOT).as_posix() if path.is_relative_to(PROJECT_ROOT) else str(path)


def check_study_name(study: str) -> str:
    if not isinstance(study, str) or not STUDY_NAME.fullmatch(study):
        raise ConfigError(f"study name {study!r}: use letters, digits, '_', '-' and '.', starting with a letter or digit")
    return study


# ----------------------------------------------------------------------------------------------- planning
@dataclass
class RunPlan:
    variant: str  # as given: a params name or a YAML path
    seed: int
    name: str  # <variant>-seed<k>
    run_dir: Path
    notebook: Path
    parameters: dict  # what papermill injects into train.ipynb
    config: Optional[Config] = field(default=None, repr=False, compare=False)  # as validated by plan_study


@dataclass
class RunOutcome:
    name: str
    variant: str
    seed: int
    status: str  # "finished", "skipped", "failed", or the status train() left in metadata.json
    notebook: Path
    seconds: float = 0.0
    error: Optional[dict] = None  # ename, evalue, traceback, cell_index, ... (as in failures.json)
    job_id: Optional[str] = None  # the submitit job that ran it (executor "local" or "slurm")



def normalize_overrides(overrides: Union[dict, Sequence[str], None], epochs: Optional[int] = None,
                        data_dir: Optional[Union[str, Path]] = None) -> dict:
    """Overrides as a dict: `key=value` strings are parsed like the command line; epochs and data_dir added."""
    if overrides is None:
        result = {}
    elif isinstance(overrides, dict):
        result = dict(overrides)
    else:
        result = dict(parse_override(text) for text in overrides)
    if epochs is not None:
        result["num_epochs"] = epochs
    if data_dir is not None:
        result["data_dir"] = str(data_dir)
    if "seed" in result:
        raise ConfigError("override 'seed': give seeds to the study (seeds=..., --seeds) instead")
    return result


def notebook_path(path: Path) -> str:
    """A path to hand to a notebook: relative to the project root (its working directory) when inside it."""
    return shown_path(path)


def plan_study(study: str, variants: Sequence[str], seeds: Sequence[int], scale: str, overrides: dict,
               executed_dir: Path, params_dir: Optional[Path] = None, share: bool = True) -> list:
    """One RunPlan per variant × seed; every config is loaded (and so validated) here, before anything runs.

    With `share`, a run whose training another planned run already does (`t2s.study.derived.shares_training`: e.g. no_ema
    and baseline of one seed) gets that run's folder as its notebook's `weights_from` and is planned after it."""
    study_dir = Path(executed_dir) / check_study_name(study)
    if not variants or not seeds:
        raise ConfigError("a study needs at least one variant and one seed")
    plans, names, configs = [], set(), []
    for variant in variants:
        for seed in seeds:
            if isinstance(seed, bool) or not isinstance(seed, int):
                raise ConfigError(f"seed {seed!r}: seeds are integers")
            config = load_config(variant, scale, {**overrides, "seed": seed}, params_dir=params_dir or PARAMS_DIR)
            if config.run_name in names:
                raise ConfigError(f"run {config.run_name} is asked for twice (variants {list(variants)})")
            names.add(config.run_name)
            typed = {key: getattr(config, key) for key in overrides}  # as validated: "3e-4" from YAML is 0.0003
            parameters = {"variant": variant, "scale": scale, "study": study, "seed": seed, "overrides": typed,
                          "executed_dir": notebook_path(executed_dir),
                          "params_dir": notebook_path(params_dir) if params_dir else None, "weights_from": None}
            plans.append(RunPlan(variant, seed, config.run_name, study_dir / config.run_name,
                                 study_dir / f"{config.run_name}.ipynb", parameters, config))
            configs.append(config)
    if not share:
        return plans
    providers = [c.to_dict() for c in configs]
    consumers = []
    for plan, config in zip(plans, configs):
        found = find_provider(config, providers)
        if found is not None:
            plan.parameters["weights_from"] = notebook_path(plans[found].run_dir)
            consumers.append(plan)
    return [p for p in plans if p not in consumers] + consumers  # each provider trains before its consumers


def run_status(run_dir: Path) -> Optional[str]:
    """The status in a run's metadata.json, None when there is none."""
    return read_json(RunDir(run_dir).metadata, {}).get("status")


def resume_point(plan: "RunPlan") -> str:
    """What running an incomplete run again does, in words: evaluate it (trained), resume it from its newest intact
    checkpoint, or start it (no checkpoint). Read only: the resume itself checks and indexes the files
    (`t2s.engine.checkpoint.reconcile_checkpoints`)."""
    run = RunDir(plan.run_dir)
    status = run.status
    if status == "finished":
        return "trained but not evaluated: evaluates it"
    indexed = list_checkpoints(run)
    unindexed = [p for p in run.checkpoints.glob("*.pt") if p.name not in {e["file"] for e in indexed}] \
        if run.checkpoints.is_dir() else []
    if unindexed:
        return (f"was {status or 'started'}: resumes from its newest intact checkpoint ({len(unindexed)} written "
                f"but not yet indexed are checked first)")
    if indexed:
        newest = indexed[-1]
        return f"was {status or 'started'}: resumes from optimizer step {newest['step']} (checkpoints/{newest['file']})"
    return f"was {status or 'started'} before its first checkpoint: starts it again from step 0"


def mark_interrupted(plan: "RunPlan", why: str) -> None:
    """metadata.json of a run stopped by a signal says so ("interrupted"), unless the run itself already said it
    finished or was interrupted."""
    run = RunDir(plan.run_dir)
    meta = run.read_metadata()
    if meta and meta.get("status") in (None, "running"):
        run.update_metadata(status="interrupted", error=why, end_time=utc_now())


def update_study_file(study_dir: Path, study: str, plans: list, scale: str, overrides: dict) -> None:
    """study.json: the variants and seeds asked for (merged with earlier calls), so a report can tell what is missing."""
    path = study_dir / STUDY_FILE
    old = read_json(path, {})
    variants = list(dict.fromkeys(old.get("variants", []) + [p.name.rsplit("-seed", 1)[0] for p in plans]))
    seeds = sorted(set(old.get("seeds", [])) | {p.seed for p in plans})
    content = {"study": study, "variants": variants, "seeds": seeds, "scale": scale, "overrides": overrides,
               "updated": utc_now()}
    if isinstance(old.get("jobs"), dict):  # the submitit jobs of earlier calls (_record_jobs) stay listed
        content["jobs"] = old["jobs"]
    atomic_write_json(path, content)



# ----------------------------------------------------------------------------------------------- failures
class FailureLog:
    """executed/<study>/failures.json: run name -> the failing cell's error; safe to update from several threads and
    from several processes (cluster jobs of one study finish at once): each update holds a file lock."""

    def __init__(self, study_dir: Path):
        self.path = Path(study_dir) / FAILURES_FILE
        self.lock = threading.Lock()

    def _update(self, change: Callable[[dict], None]) -> None:
        with self.lock, exclusive_lock(self.path.parent / ".locks" / "failures.json.lock"):
            failures = read_json(self.path, {})
            change(failures)
            if failures or self.path.exists():
                atomic_write_json(self.path, failures)

    def clear(self, name: str) -> None:
        self._update(lambda failures: failures.pop(name, None))

    def record(self, plan: RunPlan, error: dict) -> None:
        self._update(lambda failures: failures.__setitem__(plan.name, error))
        metadata_path = RunDir(plan.run_dir).metadata
        metadata = read_json(metadata_path, None)
        if isinstance(metadata, dict):  # train() got as far as writing metadata: note the notebook's error there too
            metadata["notebook_error"] = error
            if metadata.get("status") in (None, "running"):  # the kernel died under train(): it could not say so
                metadata["status"] = "failed"
                metadata["error"] = metadata.get("error") or f"{error['ename']}: {error['evalue']}"
            atomic_write_json(metadata_path, metadata)


def error_record(plan: RunPlan, ename: str, evalue: str, traceback_text: str, cell_index=None, cell_source=None) -> dict:
    return {"run": plan.name, "variant": plan.variant, "seed": plan.seed, "notebook": shown_path(plan.notebook),
            "ename": ename, "evalue": ANSI.sub("", str(evalue)), "traceback": ANSI.sub("", traceback_text),
            "cell_index": cell_index, "cell_source": cell_source, "time": utc_now()}


def error_from_notebook(notebook: Path) -> Optional[dict]:
    """The first error output of an executed notebook: (ename, evalue, traceback text, cell index, source)."""
    try:
        nb = nbformat.read(str(notebook), as_version=4)
    except Exception:  # noqa: BLE001 - a missing or half-written notebook has no error to report
        return None
    for index, cell in enumerate(nb.cells):
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                return {"ename": output.get("ename", ""), "evalue": output.get("evalue", ""),
                        "traceback": "\n".join(output.get("traceback", [])), "cell_index": index,
                        "cell_source": cell.get("source", "")}
    return None


class NotebookFailed(Exception):
    def __init__(self, error: dict):
        super().__init__(f"{error['ename']}: {error['evalue']}")
        self.error = error


class RunInterrupted(Exception):
    """The run's notebook was stopped by a signal (Ctrl-C, SIGTERM): an interruption, not a failure."""


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


# ----------------------------------------------------------------------------------------------- executing
def pythonpath_with_project() -> str:
    """PYTHONPATH with the folder that holds the t2s package first, so a fresh python process imports it."""
    rest = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != str(PROJECT_ROOT)]
    return os.pathsep.join([str(PROJECT_ROOT)] + rest)


def execute_in_process(plan: RunPlan) -> None:
    """Run train.ipynb for one plan with papermill in this process (its kernel is a child process)."""
    execute_notebook(TRAIN_NOTEBOOK, plan.notebook, plan.parameters)


def execute_in_subprocess(plan: RunPlan, gpu: Optional[str], jobs_at_once: int = 1) -> None:
    """Run train.ipynb through papermill in a python subprocess (that sees only GPU `gpu`, when given);
    `jobs_at_once` such subprocesses share this machine's CPUs (`share_cpus_env`)."""
    command = [sys.executable, "-c", SUBPROCESS_CODE, str(TRAIN_NOTEBOOK), str(plan.notebook),
               json.dumps(plan.parameters)]
    env = {**os.environ, **({"CUDA_VISIBLE_DEVICES": str(gpu)} if gpu is not None else {}),
           **share_cpus_env(jobs_at_once), "PYTHONPATH": pythonpath_with_project()}
    process = subprocess.run(command, env=env, capture_output=True, text=True)
    if process.returncode != 0:
        found = error_from_notebook(plan.notebook)
        if -process.returncode in STOP_SIGNALS or (found and found["ename"] == "KeyboardInterrupt"):
            raise RunInterrupted(f"papermill stopped by signal {-process.returncode}")
        tail = "\n".join((process.stderr or "").strip().splitlines()[-30:])
        if found:
            raise NotebookFailed(error_record(plan, found["ename"], found["evalue"], found["traceback"],
                                        found["cell_index"], found["cell_source"]))
        raise NotebookFailed(error_record(plan, "PapermillFailed", f"papermill exited with code {process.returncode}", tail))


def lock_path(plan: RunPlan) -> Path:
    return plan.run_dir.parent / ".locks" / f"{plan.name}.lock"


def run_lock(plan: RunPlan):
    """An exclusive, non-blocking lock per run (`rundir.exclusive_lock`; released by the OS if the process dies): two
    ablate calls on the same study never write the same run directory at once. Yields whether the lock was taken."""
    return exclusive_lock(lock_path(plan), blocking=False)


def _run_one(plan: RunPlan, gpu: Optional[str], failures: FailureLog, jobs_at_once: int = 1) -> RunOutcome:
    failures.clear(plan.name)
    started = time.monotonic()
    error = None
    try:
        if gpu is None and jobs_at_once == 1:
            execute_in_process(plan)
        else:
            execute_in_subprocess(plan, gpu, jobs_at_once)
    except KeyboardInterrupt:  # Ctrl-C in this process: the study stops, the run is interrupted (resumed next time)
        mark_interrupted(plan, "KeyboardInterrupt: the study was interrupted")
        raise
    except RunInterrupted as exc:
        mark_interrupted(plan, f"interrupted: {exc}")
        return RunOutcome(plan.name, plan.variant, plan.seed, "interrupted", plan.notebook, time.monotonic() - started)
    except PapermillExecutionError as exc:
        if exc.ename == "KeyboardInterrupt":
            mark_interrupted(plan, "KeyboardInterrupt in the notebook")
            return RunOutcome(plan.name, plan.variant, plan.seed, "interrupted", plan.notebook,
                              time.monotonic() - started)
        error = error_record(plan, exc.ename, exc.evalue, "\n".join(exc.traceback or []), exc.cell_index, exc.source)
    except NotebookFailed as exc:
        error = exc.error
    except Exception as exc:  # noqa: BLE001 - a dead kernel or a papermill problem fails this run, not the study
        error = error_record(plan, type(exc).__name__, str(exc), traceback.format_exc())
    seconds = time.monotonic() - started
    if error:
        failures.record(plan, error)
        return RunOutcome(plan.name, plan.variant, plan.seed, "failed", plan.notebook, seconds, error)
    status = run_status(plan.run_dir) or "finished"
    return RunOutcome(plan.name, plan.variant, plan.seed, status, plan.notebook, seconds)


def outcome_line(tag: str, outcome: RunOutcome, notebook: Path) -> str:
    if outcome.error:
        e = outcome.error
        where = f" (cell {e['cell_index']} of {shown_path(notebook)})" if e.get("cell_index") is not None else ""
        return f"{tag}: failed after {duration_text(outcome.seconds)}: {e['ename']}: {e['evalue']}{where}"
    return f"{tag}: {outcome.status} in {duration_text(outcome.seconds)}"


def run_planned(plan: RunPlan, index: int, total: int, forced: bool = False, gpu: Optional[str] = None,
                log: Callable[[str], None] = say, jobs_at_once: int = 1) -> RunOutcome:
    """One run as every executor runs it (in this process, or inside a submitit job): take the run's lock (a run that
    another ablate holds is skipped as "locked"), skip it if it finished meanwhile (unless forced), execute
    train.ipynb (train() resumes an unfinished run), record a failure in failures.json, log the outcome."""
    tag = f"[{index}/{total}] {plan.name}"
    with run_lock(plan) as held:
        if not held:
            log(f"{tag}: skipped: another ablate of this study is running it (lock {shown_path(lock_path(plan))})")
            return RunOutcome(plan.name, plan.variant, plan.seed, "locked", plan.notebook)
        if RunDir(plan.run_dir).complete and not forced:
            log(f"{tag}: skipped (completed meanwhile by another ablate)")
            return RunOutcome(plan.name, plan.variant, plan.seed, "skipped", plan.notebook)
        on = f" on GPU {gpu}" if gpu is not None else ""
        log(f"{tag}: started{on} at {datetime.now():%H:%M:%S}")
        outcome = _run_one(plan, gpu, FailureLog(plan.run_dir.parent), jobs_at_once)
        log(outcome_line(tag, outcome, plan.notebook))
        return outcome
