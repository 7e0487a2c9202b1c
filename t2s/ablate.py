"""Run a study: every variant × seed through notebooks/train.ipynb with papermill, then the HTML report.

    result = run_study("my-study", variants=("baseline", "no_ema"), seeds=(0, 1), scale="tiny")

Every config is validated before anything runs, so a typo in an override fails at once with the key named.
Each run executes notebooks/train.ipynb into executed/<study>/<variant>-seed<k>.ipynb, next to its run folder.
A run whose metadata says "finished" is skipped; force=True moves it into executed/<study>/.trash/ (nothing is
deleted) and runs it afresh. An interrupted or failed run is simply run again: train() resumes it from its latest
checkpoint. A failing run is recorded in executed/<study>/failures.json with the failing cell's traceback (and in its
metadata.json) and does not stop the others. With gpus=["0", "1"], one papermill process per GPU, each seeing only
its own (CUDA_VISIBLE_DEVICES), the rest queued; without, one run after another.

executor="slurm" submits each run as a Slurm job through submitit (papermill runs inside the job, through the same
run_planned() as here), waits for the jobs and collects them into the same executed/<study>/ layout; the job ids go
into study.json. executor="local" takes the same path through submitit's LocalExecutor on this machine, one job at a
time (two trainings would only share the CPU cores). executor="default" is the in-process path above.

Then build_report() executes notebooks/analysis.ipynb into executed/<study>/analysis.ipynb and exports it, without
code, to reports/<study>.html: self-contained (plotly.js and the GIFs embedded), so it opens offline.
"""
from __future__ import annotations

import math
import os
import queue
import re
import shlex
import shutil
import subprocess
import sys
import threading
import time
import traceback
from contextlib import contextmanager
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import jinja2
import nbformat
import papermill
import yaml
from nbconvert import HTMLExporter
from nbconvert.preprocessors import TagRemovePreprocessor
from papermill.exceptions import PapermillExecutionError

from t2s.config import PARAMS_DIR, PROJECT_ROOT, ConfigError, load_config, parse_override
from t2s.rundir import FAILURES_FILE, STUDY_FILE, RunDir, atomic_write_json, read_json

TRAIN_NOTEBOOK = PROJECT_ROOT / "notebooks" / "train.ipynb"
ANALYSIS_NOTEBOOK = PROJECT_ROOT / "notebooks" / "analysis.ipynb"
EXECUTED_DIR = PROJECT_ROOT / "executed"
REPORTS_DIR = PROJECT_ROOT / "reports"
DEFAULT_VARIANTS = ("baseline", "text_finetuned", "no_ema")
EXECUTORS = ("default", "local", "slurm")  # in this process / submitit's LocalExecutor / Slurm jobs through submitit
KERNEL = "python3"
STUDY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _print(line: str) -> None:
    print(line, flush=True)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


def _shown(path: Path) -> str:
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


@dataclass
class StudyResult:
    study: str
    folder: Path
    runs: list = field(default_factory=list)
    report: Optional[Path] = None
    report_error: Optional[str] = None

    @property
    def failed(self) -> list:
        return [r for r in self.runs if r.status not in ("finished", "skipped", "locked")]

    @property
    def ok(self) -> bool:
        return not self.failed and self.report_error is None


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


def _for_notebook(path: Path) -> str:
    """A path to hand to a notebook: relative to the project root (its working directory) when inside it."""
    return _shown(path)


def plan_study(study: str, variants: Sequence[str], seeds: Sequence[int], scale: str, overrides: dict,
               executed_dir: Path, params_dir: Optional[Path] = None) -> list:
    """One RunPlan per variant × seed; every config is loaded (and so validated) here, before anything runs."""
    study_dir = Path(executed_dir) / check_study_name(study)
    if not variants or not seeds:
        raise ConfigError("a study needs at least one variant and one seed")
    plans, names = [], set()
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
                          "executed_dir": _for_notebook(executed_dir),
                          "params_dir": _for_notebook(params_dir) if params_dir else None}
            plans.append(RunPlan(variant, seed, config.run_name, study_dir / config.run_name,
                                 study_dir / f"{config.run_name}.ipynb", parameters))
    return plans


def run_status(run_dir: Path) -> Optional[str]:
    """The status in a run's metadata.json, None when there is none."""
    return read_json(RunDir(run_dir).metadata, {}).get("status")


def _update_study_file(study_dir: Path, study: str, plans: list, scale: str, overrides: dict) -> None:
    """study.json: the variants and seeds asked for (merged with earlier calls), so a report can tell what is missing."""
    path = study_dir / STUDY_FILE
    old = read_json(path, {})
    variants = list(dict.fromkeys(old.get("variants", []) + [p.name.rsplit("-seed", 1)[0] for p in plans]))
    seeds = sorted(set(old.get("seeds", [])) | {p.seed for p in plans})
    content = {"study": study, "variants": variants, "seeds": seeds, "scale": scale, "overrides": overrides,
               "updated": _now()}
    if isinstance(old.get("jobs"), dict):  # the submitit jobs of earlier calls (_record_jobs) stay listed
        content["jobs"] = old["jobs"]
    atomic_write_json(path, content)


def _record_jobs(study_dir: Path, jobs: dict) -> None:
    """study.json "jobs": run name -> {executor, job_id, submitted, stdout, stderr, [status]}, merged per run, so a
    person can look the jobs up (squeue / sacct -j <job_id>) and read their logs."""
    path = study_dir / STUDY_FILE
    content = read_json(path, {})
    recorded = content.get("jobs") if isinstance(content.get("jobs"), dict) else {}
    for name, entry in jobs.items():
        earlier = recorded.get(name, {})
        same_job = earlier.get("job_id") == entry.get("job_id")  # a later status of the same job, or a new job
        recorded[name] = {**earlier, **entry} if same_job else dict(entry)
    content["jobs"] = recorded
    atomic_write_json(path, content)


def _move_aside(plan: RunPlan) -> Optional[Path]:
    """Move a run's folder and notebook into <study>/.trash/<name>-<timestamp>[.ipynb]; returns the new folder."""
    trash = plan.run_dir.parent / ".trash"
    stamp = datetime.now().strftime("%Y%m%dT%H%M%S")
    moved = None
    if plan.run_dir.exists():
        trash.mkdir(exist_ok=True)
        moved = trash / f"{plan.name}-{stamp}"
        shutil.move(str(plan.run_dir), str(moved))
    if plan.notebook.exists():
        trash.mkdir(exist_ok=True)
        shutil.move(str(plan.notebook), str(trash / f"{plan.name}-{stamp}.ipynb"))
    return moved


# ----------------------------------------------------------------------------------------------- failures
class FailureLog:
    """executed/<study>/failures.json: run name -> the failing cell's error; safe to update from several threads and
    from several processes (cluster jobs of one study finish at once): each update holds a file lock."""

    def __init__(self, study_dir: Path):
        self.path = Path(study_dir) / FAILURES_FILE
        self.lock = threading.Lock()

    def _update(self, change: Callable[[dict], None]) -> None:
        import fcntl

        lock_file = self.path.parent / ".locks" / "failures.json.lock"
        lock_file.parent.mkdir(parents=True, exist_ok=True)
        with self.lock, open(lock_file, "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)  # released when the file closes
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


def _error(plan: RunPlan, ename: str, evalue: str, traceback_text: str, cell_index=None, cell_source=None) -> dict:
    return {"run": plan.name, "variant": plan.variant, "seed": plan.seed, "notebook": _shown(plan.notebook),
            "ename": ename, "evalue": ANSI.sub("", str(evalue)), "traceback": ANSI.sub("", traceback_text),
            "cell_index": cell_index, "cell_source": cell_source, "time": _now()}


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


# ----------------------------------------------------------------------------------------------- executing
def execute_in_process(plan: RunPlan) -> None:
    """Run train.ipynb for one plan with papermill in this process (its kernel is a child process)."""
    papermill.execute_notebook(str(TRAIN_NOTEBOOK), str(plan.notebook), parameters=plan.parameters,
                               kernel_name=KERNEL, progress_bar=False, cwd=str(PROJECT_ROOT))


def execute_on_gpu(plan: RunPlan, gpu: str) -> None:
    """Run train.ipynb in a `python -m papermill` subprocess that sees only GPU `gpu`."""
    command = [sys.executable, "-m", "papermill", str(TRAIN_NOTEBOOK), str(plan.notebook),
               "-y", yaml.safe_dump(plan.parameters), "-k", KERNEL, "--cwd", str(PROJECT_ROOT), "--no-progress-bar"]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": str(gpu)}
    process = subprocess.run(command, env=env, capture_output=True, text=True)
    if process.returncode != 0:
        found = error_from_notebook(plan.notebook)
        tail = "\n".join((process.stderr or "").strip().splitlines()[-30:])
        if found:
            raise NotebookFailed(_error(plan, found["ename"], found["evalue"], found["traceback"],
                                        found["cell_index"], found["cell_source"]))
        raise NotebookFailed(_error(plan, "PapermillFailed", f"papermill exited with code {process.returncode}", tail))


def lock_path(plan: RunPlan) -> Path:
    return plan.run_dir.parent / ".locks" / f"{plan.name}.lock"


@contextmanager
def run_lock(plan: RunPlan):
    """An exclusive, non-blocking lock per run (fcntl.flock; released by the OS if the process dies): two ablate
    calls on the same study never write the same run directory at once. Yields whether the lock was taken."""
    import fcntl

    path = lock_path(plan)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _run_one(plan: RunPlan, gpu: Optional[str], failures: FailureLog) -> RunOutcome:
    failures.clear(plan.name)
    started = time.monotonic()
    error = None
    try:
        if gpu is None:
            execute_in_process(plan)
        else:
            execute_on_gpu(plan, gpu)
    except PapermillExecutionError as exc:
        error = _error(plan, exc.ename, exc.evalue, "\n".join(exc.traceback or []), exc.cell_index, exc.source)
    except NotebookFailed as exc:
        error = exc.error
    except Exception as exc:  # noqa: BLE001 - a dead kernel or a papermill problem fails this run, not the study
        error = _error(plan, type(exc).__name__, str(exc), traceback.format_exc())
    seconds = time.monotonic() - started
    if error:
        failures.record(plan, error)
        return RunOutcome(plan.name, plan.variant, plan.seed, "failed", plan.notebook, seconds, error)
    status = run_status(plan.run_dir) or "finished"
    return RunOutcome(plan.name, plan.variant, plan.seed, status, plan.notebook, seconds)


def _outcome_line(tag: str, outcome: RunOutcome, notebook: Path) -> str:
    if outcome.error:
        e = outcome.error
        where = f" (cell {e['cell_index']} of {_shown(notebook)})" if e.get("cell_index") is not None else ""
        return f"{tag}: failed after {_duration(outcome.seconds)}: {e['ename']}: {e['evalue']}{where}"
    return f"{tag}: {outcome.status} in {_duration(outcome.seconds)}"


def run_planned(plan: RunPlan, index: int, total: int, forced: bool = False, gpu: Optional[str] = None,
                log: Callable[[str], None] = _print) -> RunOutcome:
    """One run as every executor runs it (in this process, or inside a submitit job): take the run's lock (a run that
    another ablate holds is skipped as "locked"), skip it if it finished meanwhile (unless forced), execute
    train.ipynb (train() resumes an unfinished run), record a failure in failures.json, log the outcome."""
    tag = f"[{index}/{total}] {plan.name}"
    with run_lock(plan) as held:
        if not held:
            log(f"{tag}: skipped: another ablate of this study is running it (lock {_shown(lock_path(plan))})")
            return RunOutcome(plan.name, plan.variant, plan.seed, "locked", plan.notebook)
        if run_status(plan.run_dir) == "finished" and not forced:
            log(f"{tag}: skipped (finished meanwhile by another ablate)")
            return RunOutcome(plan.name, plan.variant, plan.seed, "skipped", plan.notebook)
        on = f" on GPU {gpu}" if gpu is not None else ""
        log(f"{tag}: started{on} at {datetime.now():%H:%M:%S}")
        outcome = _run_one(plan, gpu, FailureLog(plan.run_dir.parent))
        log(_outcome_line(tag, outcome, plan.notebook))
        return outcome


# ------------------------------------------------------------------------------------------ submitit (local, slurm)
class RunJob:
    """What a submitit job runs: run_planned() for one plan. Module-level and stateless, so it pickles by reference;
    the job's process imports t2s (PYTHONPATH is set for it) and papermill starts the kernel from there.

    `environment` is set in the job before papermill starts the kernel (None unsets a variable): the local executor
    passes this process's CUDA_VISIBLE_DEVICES, which submitit's LocalExecutor would otherwise replace.
    `checkpoint` makes the job requeueable: on a Slurm timeout or preemption submitit requeues it with the same
    arguments (at most max_num_timeout times) and train() resumes the run from its latest checkpoint."""

    def __call__(self, plan: RunPlan, index: int, total: int, forced: bool = False,
                 environment: Optional[dict] = None) -> RunOutcome:
        for key, value in (environment or {}).items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        return run_planned(plan, index, total, forced)

    def checkpoint(self, *args, **kwargs):
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self, *args, **kwargs)


@dataclass
class SlurmOptions:
    """What each Slurm job asks for (one job per variant × seed): one node, one task."""

    partition: Optional[str] = None  # None: the cluster's default partition
    gpus_per_job: int = 1
    timeout_min: int = 240  # the job's time limit (#SBATCH --time), minutes
    cpus_per_job: Optional[int] = None  # None: the partition's default
    mem_gb: Optional[float] = None  # None: the partition's default
    sbatch: dict = field(default_factory=dict)  # further #SBATCH flags, e.g. {"account": "lab", "qos": "high"}

    def __post_init__(self):
        checks = [("gpus_per_job", self.gpus_per_job, 0), ("timeout_min", self.timeout_min, 1),
                  ("cpus_per_job", self.cpus_per_job, 1)]
        for name, value, least in checks:
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < least):
                raise ConfigError(f"slurm option {name}={value!r}: an integer ≥ {least}")
        if self.mem_gb is not None and not (isinstance(self.mem_gb, (int, float)) and self.mem_gb > 0):
            raise ConfigError(f"slurm option mem_gb={self.mem_gb!r}: a positive number of GB")
        if self.partition is not None and not re.fullmatch(r"[A-Za-z0-9_.,-]+", self.partition):
            raise ConfigError(f"slurm option partition={self.partition!r}: not a partition name")


def parse_time_minutes(text: str) -> int:
    """A job time limit in minutes: hours as a number ("4", "0.5") or Slurm's [D-]HH:MM[:SS] ("1-00:00:00", "2:30")."""
    text = str(text).strip()
    match = re.fullmatch(r"(?:(\d+)-)?(\d+):(\d{1,2})(?::(\d{1,2}))?", text)
    try:
        if match:
            days, hours, minutes, seconds = (int(g or 0) for g in match.groups())
            total = days * 24 * 60 + hours * 60 + minutes + seconds / 60
        else:
            total = float(text) * 60
    except ValueError:
        total = float("nan")
    if not math.isfinite(total) or total <= 0:
        raise ConfigError(f"--time {text!r}: hours (4, 0.5) or [D-]HH:MM[:SS] (1-00:00:00, 2:30), more than zero")
    return max(1, math.ceil(total - 1e-9))


def parse_mem_gb(text: str) -> float:
    """Memory per job in GB: "32", "32G", "32GB", "500M", "1T" (a plain number is GB)."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([MGT]?)B?", str(text).strip(), flags=re.IGNORECASE)
    value = float(match[1]) * {"M": 1 / 1024, "": 1, "G": 1, "T": 1024}[match[2].upper()] if match else 0.0
    if value <= 0:
        raise ConfigError(f"--mem {text!r}: an amount like 32G, 500M or 32 (GB), more than zero")
    return value


def parse_sbatch(items: Sequence[str]) -> dict:
    """`--sbatch KEY=VALUE` items as a dict of further #SBATCH flags ("account=lab" -> {"account": "lab"})."""
    result = {}
    for item in items or ():
        key, sep, value = str(item).partition("=")
        key = key.strip().lstrip("-")
        if not sep or not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]*", key):
            raise ConfigError(f"--sbatch {item!r}: give KEY=VALUE, e.g. --sbatch account=mylab")
        result[key] = value.strip()
    return result


LOCAL_TIMEOUT_MIN = 7 * 24 * 60  # submitit's LocalExecutor kills a job after timeout_min (its default is 2 minutes)


class SubmissionError(ConfigError):
    """A job could not be submitted (sbatch refused it: a partition, account or limit the cluster does not accept);
    the message has sbatch's reason. A ConfigError, so the command line prints it without a traceback."""


def _pythonpath_with_project() -> str:
    """PYTHONPATH with the folder that holds the t2s package first, so a job's fresh python process imports it."""
    rest = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != str(PROJECT_ROOT)]
    return os.pathsep.join([str(PROJECT_ROOT)] + rest)


def executor_parameters(kind: str, study: str, slurm: Optional[SlurmOptions] = None) -> dict:
    """The parameters given to submitit.AutoExecutor.update_parameters for each job of a study."""
    if kind == "local":
        return {"name": f"t2s-{study}", "timeout_min": LOCAL_TIMEOUT_MIN, "nodes": 1, "tasks_per_node": 1}
    if kind != "slurm":
        raise ConfigError(f"executor {kind!r}: submitit runs 'local' or 'slurm'")
    slurm = slurm or SlurmOptions()
    parameters = {
        "name": f"t2s-{study}", "timeout_min": slurm.timeout_min, "nodes": 1, "tasks_per_node": 1,
        "gpus_per_node": slurm.gpus_per_job, "cpus_per_task": slurm.cpus_per_job, "mem_gb": slurm.mem_gb,
        "slurm_partition": slurm.partition,
        # the job's python imports t2s from this checkout, whatever the cluster exports into the job's environment
        "slurm_setup": [f"export PYTHONPATH={shlex.quote(str(PROJECT_ROOT))}${{PYTHONPATH:+:$PYTHONPATH}}"],
        "slurm_additional_parameters": dict(slurm.sbatch) or None,
    }
    return {key: value for key, value in parameters.items() if value is not None}


def check_slurm_available() -> None:
    """Refuse --executor slurm where there is no Slurm client: nothing is planned on disk or submitted before this."""
    missing = [tool for tool in ("sbatch", "srun") if shutil.which(tool) is None]
    if missing:
        raise ConfigError(f"--executor slurm: {' and '.join(missing)} not found on PATH, so no job can be submitted "
                          "(run ablate on a Slurm login node, or load the cluster's slurm module; --executor local "
                          "tries the same path on this machine). Nothing was submitted.")


def make_executor(kind: str, folder: Union[str, Path], study: str, slurm: Optional[SlurmOptions] = None):
    """A submitit.AutoExecutor for `kind` ("local" or "slurm", forced, not guessed from the environment), with the
    study's job parameters; its pickles and logs go to `folder` (<job id>_0_log.out, .err)."""
    import submitit

    if kind == "slurm":
        check_slurm_available()
    executor = submitit.AutoExecutor(folder=Path(folder), cluster=kind)
    executor.update_parameters(**executor_parameters(kind, study, slurm))
    return executor


def _job_log_tail(job, lines: int = 30) -> str:
    try:
        text = Path(job.paths.stderr).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.strip().splitlines()[-lines:])


def _collect(job, plan: RunPlan) -> RunOutcome:
    """The outcome a finished job returned; a job that ended without one (timed out, cancelled, killed for memory,
    could not start) is a failed run, recorded in failures.json with the job's log."""
    try:
        outcome = job.result()
    except Exception as exc:  # noqa: BLE001 - submitit's UncompletedJobError / FailedJobError, or an unreadable result
        text = ANSI.sub("", str(exc)).strip()
        first = next((line for line in text.splitlines() if line.strip()), type(exc).__name__)
        tail = _job_log_tail(job)
        error = _error(plan, type(exc).__name__, f"job {job.job_id}: {first}",
                       text + (f"\n\nend of the job's stderr ({job.paths.stderr}):\n{tail}" if tail else ""))
        FailureLog(plan.run_dir.parent).record(plan, error)
        outcome = RunOutcome(plan.name, plan.variant, plan.seed, "failed", plan.notebook, error=error)
    outcome.job_id = str(job.job_id)
    return outcome


def _report_command(study: str, executed_dir: Path, reports_dir: Path) -> str:
    command = f"python -m t2s report --study {study}"
    if executed_dir != EXECUTED_DIR.resolve():
        command += f" --executed-dir {shlex.quote(_shown(executed_dir))}"
    if reports_dir != REPORTS_DIR.resolve():
        command += f" --reports-dir {shlex.quote(_shown(reports_dir))}"
    return command


def _run_with_submitit(kind: str, todo: list, total: int, forced: set, study_dir: Path, folder: Path,
                       slurm: Optional[SlurmOptions], report_command: str, log: Callable[[str], None],
                       poll_seconds: Optional[float] = None) -> dict:
    """Submit each (index, plan) of `todo` as a submitit job, wait for them (a tqdm bar over finished jobs) and
    collect their outcomes. Local: one job at a time; Slurm: all at once, the scheduler queues them."""
    from tqdm.auto import tqdm

    executor = make_executor(kind, folder, study_dir.name, slurm)
    parallel = 1 if kind == "local" else max(1, len(todo))
    poll = poll_seconds if poll_seconds is not None else (0.5 if kind == "local" else 15.0)
    environment = {"CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES")} if kind == "local" else None
    waiting, running, outcomes = list(todo), {}, {}
    bar = tqdm(total=len(todo), desc=f"study {study_dir.name}: {kind} jobs finished", unit="job", disable=None)

    def say(line: str) -> None:
        with tqdm.external_write_mode():
            log(line)

    try:
        while waiting or running:
            while waiting and len(running) < parallel:
                i, plan = waiting.pop(0)
                executor.update_parameters(name=f"t2s-{study_dir.name}-{plan.name}")
                saved = os.environ.get("PYTHONPATH")
                os.environ["PYTHONPATH"] = _pythonpath_with_project()  # a local job inherits this process's env
                try:
                    job = executor.submit(RunJob(), plan, i, total, plan.name in forced, environment)
                except Exception as exc:  # noqa: BLE001 - sbatch refused it (partition, account, limits...)
                    bar.close()
                    text = ANSI.sub("", str(exc)).strip() or type(exc).__name__
                    before = (f"; the {len(running)} jobs submitted before keep running (ids in "
                              f"{_shown(study_dir / 'study.json')}); build the report when they end: {report_command}"
                              if running else "")
                    raise SubmissionError(f"{plan.name}: submitting the {kind} job failed: {text}{before}") from exc
                finally:
                    if saved is None:
                        os.environ.pop("PYTHONPATH", None)
                    else:
                        os.environ["PYTHONPATH"] = saved
                running[job] = (i, plan)
                _record_jobs(study_dir, {plan.name: {
                    "executor": kind, "job_id": str(job.job_id), "submitted": _now(),
                    "stdout": _shown(job.paths.stdout), "stderr": _shown(job.paths.stderr)}})
                say(f"[{i}/{total}] {plan.name}: submitted as {kind} job {job.job_id} (log {_shown(job.paths.stdout)})")
            done = [job for job in running if job.done()]
            for job in done:
                i, plan = running.pop(job)
                outcome = _collect(job, plan)
                outcomes[plan.name] = outcome
                _record_jobs(study_dir, {plan.name: {"job_id": outcome.job_id, "status": outcome.status,
                                                     "ended": _now()}})
                say(_outcome_line(f"[{i}/{total}] {plan.name}", outcome, plan.notebook) + f" (job {outcome.job_id})")
                bar.update(1)
            if not done and running:
                time.sleep(poll)
    except KeyboardInterrupt:
        bar.close()
        ids = " ".join(str(job.job_id) for job in running)
        if kind == "slurm":
            log(f"interrupted: the {len(running)} submitted jobs keep running on the cluster (job ids in "
                f"{_shown(study_dir / 'study.json')}; check them with `squeue -j {ids.replace(' ', ',')}` or "
                f"`sacct -j {ids.replace(' ', ',')}`, stop them with `scancel {ids}`).")
        else:
            for job in running:
                job.cancel(check=False)
            log(f"interrupted: the local job{'s' if len(running) != 1 else ''} {ids} stopped; {len(waiting)} runs "
                "were not submitted. Run the same ablate again to resume: finished runs are skipped, an unfinished "
                "one resumes from its latest checkpoint.")
        log(f"build the report when you want it (unfinished runs are marked as such): {report_command}")
        raise
    bar.close()
    return outcomes

def run_study(
    study: str,
    variants: Sequence[str] = DEFAULT_VARIANTS,
    seeds: Sequence[int] = (0,),
    scale: str = "tiny",
    overrides: Union[dict, Sequence[str], None] = None,
    epochs: Optional[int] = None,
    data_dir: Optional[Union[str, Path]] = None,
    force: bool = False,
    gpus: Union[Sequence[str], str, None] = None,
    executed_dir: Union[str, Path] = EXECUTED_DIR,
    reports_dir: Union[str, Path] = REPORTS_DIR,
    build_report: bool = True,
    params_dir: Optional[Union[str, Path]] = None,
    log: Callable[[str], None] = _print,
    executor: str = "default",
    slurm: Optional[SlurmOptions] = None,
    submitit_folder: Optional[Union[str, Path]] = None,
    poll_seconds: Optional[float] = None,
) -> StudyResult:
    """Train every variant × seed (validated first; finished runs skipped unless force), then build the report.

    executor: "default" runs here (one after another, or one per GPU with `gpus`); "local" and "slurm" submit each
    run as a submitit job (`slurm`: the SlurmOptions of each job; `submitit_folder`: where submitit keeps the jobs'
    pickles and logs, default executed/<study>/.submitit/), wait for them and collect the outcomes.
    """
    _check_executor_options(executor, slurm, submitit_folder, gpus)
    executed_dir, reports_dir = Path(executed_dir).resolve(), Path(reports_dir).resolve()
    overrides = normalize_overrides(overrides, epochs, data_dir)
    plans = plan_study(study, list(variants), list(seeds), scale, overrides, executed_dir,
                       Path(params_dir).resolve() if params_dir else None)
    if isinstance(gpus, str):
        gpus = [g.strip() for g in gpus.split(",") if g.strip()]
    gpus = list(gpus or [])
    if executor == "slurm":
        check_slurm_available()  # before anything is written, moved aside or submitted
        if slurm is not None and slurm.gpus_per_job > 1:  # the job's run trains data parallel on its GPUs
            for plan in plans:
                plan.parameters["num_processes"] = slurm.gpus_per_job

    study_dir = executed_dir / study
    study_dir.mkdir(parents=True, exist_ok=True)
    _update_study_file(study_dir, study, plans, scale, overrides)
    if executor == "slurm":
        where = "as Slurm jobs through submitit"
    elif executor == "local":
        where = "as local submitit jobs, one after another"
    else:
        where = f"on GPUs {', '.join(gpus)}, one run per GPU" if gpus else "one run after another"
    log(f"study {study}: {len(plans)} runs ({len(variants)} variants × {len(seeds)} seeds), scale {scale}, {where}")

    outcomes, todo = _skip_or_prepare(plans, force, FailureLog(study_dir), log)
    forced = {p.name for p in plans} if force else set()
    if executor != "default":
        folder = Path(submitit_folder).resolve() if submitit_folder else study_dir / ".submitit"
        outcomes.update(_run_with_submitit(executor, todo, len(plans), forced, study_dir, folder, slurm,
                                           _report_command(study, executed_dir, reports_dir), log, poll_seconds))
    else:
        outcomes.update(_run_here(todo, len(plans), forced, gpus, log))

    result = StudyResult(study, study_dir, [outcomes[p.name] for p in plans])
    counts = {s: sum(r.status == s for r in result.runs) for s in dict.fromkeys(r.status for r in result.runs)}
    log(f"study {study}: " + ", ".join(f"{n} {s}" for s, n in counts.items()))
    if result.failed:
        log(f"failures recorded in {_shown(study_dir / FAILURES_FILE)}")
    if build_report:
        try:
            result.report = _build_study_report(study, executed_dir, reports_dir, log=log)
        except ReportError as exc:
            result.report_error = str(exc)
            log(f"report: failed: {exc}")
    return result


def _check_executor_options(executor: str, slurm, submitit_folder, gpus) -> None:
    """Each option belongs to an executor: a misplaced one is an error naming it, before anything is written."""
    if executor not in EXECUTORS:
        raise ConfigError(f"executor {executor!r}: one of {', '.join(EXECUTORS)}")
    if slurm is not None and executor != "slurm":
        raise ConfigError(f"Slurm options are for executor 'slurm', not {executor!r}")
    if submitit_folder is not None and executor == "default":
        raise ConfigError("submitit_folder is for executor 'local' or 'slurm', not 'default'")
    if gpus and executor != "default":
        raise ConfigError(f"gpus are for executor 'default'; with {executor!r} "
                          + ("each job gets the GPUs of SlurmOptions.gpus_per_job" if executor == "slurm" else
                             "each job sees this machine's GPUs (CUDA_VISIBLE_DEVICES), one job at a time"))


def _skip_or_prepare(plans: list, force: bool, failures: "FailureLog", log) -> tuple[dict, list]:
    """Finished runs are skipped (outcome 'skipped'); with force they and any unfinished run are moved aside; an
    unfinished run is otherwise resumed. Returns (outcomes so far, [(index, plan)] to run)."""
    outcomes, todo = {}, []
    for i, plan in enumerate(plans, 1):
        status = run_status(plan.run_dir)
        if status == "finished" and not force:
            outcomes[plan.name] = RunOutcome(plan.name, plan.variant, plan.seed, "skipped", plan.notebook)
            log(f"[{i}/{len(plans)}] {plan.name}: skipped (already finished; force reruns it)")
            continue
        if force and (plan.run_dir.exists() or plan.notebook.exists()):
            moved = _move_aside(plan)
            failures.clear(plan.name)
            if moved:
                log(f"[{i}/{len(plans)}] {plan.name}: previous run moved to {_shown(moved)}")
        elif status is not None:
            log(f"[{i}/{len(plans)}] {plan.name}: was {status}; train() resumes it from its latest checkpoint")
        todo.append((i, plan))
    return outcomes, todo


def _run_here(todo: list, total: int, forced: set, gpus: list, log) -> dict:
    """Run the plans in this process's notebooks: one after another, or one per GPU (the rest queued)."""
    def run(i: int, plan: RunPlan, gpu: Optional[str]) -> RunOutcome:
        return run_planned(plan, i, total, plan.name in forced, gpu, log)

    if not gpus:
        return {plan.name: run(i, plan, None) for i, plan in todo}
    free = queue.Queue()
    for gpu in gpus:
        free.put(gpu)

    def on_free_gpu(i: int, plan: RunPlan) -> RunOutcome:
        gpu = free.get()
        try:
            return run(i, plan, gpu)
        finally:
            free.put(gpu)

    with ThreadPoolExecutor(max_workers=len(gpus)) as pool:
        return {outcome.name: outcome for outcome in pool.map(lambda item: on_free_gpu(*item), todo)}


# ----------------------------------------------------------------------------------------------- the report
class ReportError(RuntimeError):
    """The analysis notebook failed; the message names the cell and the error."""


# The lab template without what it would load from a CDN (require.js, MathJax, mermaid): the report opens offline.
# plotly.js is embedded once by report.init_notebook(); the figures and GIFs are inline.
_OFFLINE_TEMPLATE = """{%- extends 'index.html.j2' -%}
{%- block html_head_js -%}{%- endblock html_head_js -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
{%- block jupyter_widgets -%}{%- endblock jupyter_widgets -%}
"""


def export_html(notebook: Union[str, Path], html_path: Union[str, Path], title: str) -> Path:
    """An executed notebook as a code-free, self-contained HTML page.

    Left out: code, prompts, cells tagged "interactive" (widgets need a kernel), stderr (warnings, progress bars),
    and saved widget state (it would pull the widget manager from a CDN).
    """
    nb = nbformat.read(str(notebook), as_version=4)
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = [o for o in cell.outputs if not (o.output_type == "stream" and o.get("name") == "stderr")]
    exporter = HTMLExporter(template_name="lab")
    exporter.extra_loaders = [jinja2.DictLoader({"t2s_offline.html.j2": _OFFLINE_TEMPLATE})]
    exporter.template_file = "t2s_offline.html.j2"
    exporter.exclude_input = True
    exporter.exclude_input_prompt = True
    exporter.exclude_output_prompt = True
    exporter.register_preprocessor(TagRemovePreprocessor(remove_cell_tags={"interactive"}), enabled=True)
    body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": title}})
    html_path = Path(html_path)
    html_path.parent.mkdir(parents=True, exist_ok=True)
    html_path.write_text(body, encoding="utf-8")
    return html_path


def build_report(study: str, executed_dir: Union[str, Path] = EXECUTED_DIR, reports_dir: Union[str, Path] = REPORTS_DIR,
                 log: Callable[[str], None] = _print) -> Path:
    """Execute notebooks/analysis.ipynb for a study into executed/<study>/analysis.ipynb; export reports/<study>.html."""
    executed_dir, reports_dir = Path(executed_dir).resolve(), Path(reports_dir).resolve()
    study_dir = executed_dir / check_study_name(study)
    study_dir.mkdir(parents=True, exist_ok=True)
    notebook = study_dir / "analysis.ipynb"
    # interactive=False: no ipywidgets headless (nbclient can wait forever on an Output widget); the HTML drops them anyway
    parameters = {"study": study, "executed_dir": _for_notebook(executed_dir), "reports_dir": _for_notebook(reports_dir),
                  "interactive": False}
    try:
        papermill.execute_notebook(str(ANALYSIS_NOTEBOOK), str(notebook), parameters=parameters, kernel_name=KERNEL,
                                   progress_bar=False, cwd=str(PROJECT_ROOT))
    except PapermillExecutionError as exc:
        raise ReportError(f"{_shown(notebook)}, cell {exc.cell_index}: {exc.ename}: {exc.evalue}") from exc
    html_path = export_html(notebook, reports_dir / f"{study}.html", title=f"t2s study {study}")
    log(f"report: {_shown(html_path)}")
    return html_path


def _build_study_report(*args, **kwargs) -> Path:
    """build_report, for run_study (whose `build_report` flag hides the function's name)."""
    return build_report(*args, **kwargs)
