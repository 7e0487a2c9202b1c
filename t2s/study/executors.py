"""Runs of a study as submitit jobs: on this machine (LocalExecutor, one job at a time) or on a Slurm cluster.

Each job runs `t2s.study.runs.run_planned` for one plan, exactly as the in-process executor does; this module submits
the jobs, records their ids and logs in study.json ("jobs"), waits for them and collects their outcomes (a job that
ended without one is a failed run). Rules: nothing is submitted to Slurm where there is no Slurm client; a refused
submission stops the study with sbatch's reason; on an interrupt, Slurm jobs keep running (their ids are said) and
local ones are cancelled. submitit is imported only where a job is made (`make_executor`, `RunJob.checkpoint`).
Imports config, rundir, `runs` and `progress`; `ablate` builds on it.
"""
from __future__ import annotations

import math
import os
import re
import shlex
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

from t2s.config import PROJECT_ROOT, ConfigError
from t2s.rundir import STUDY_FILE, atomic_write_json, read_json
from t2s.study.progress import StudyProgress
from t2s.study.runs import (
    ANSI,
    FailureLog,
    RunOutcome,
    RunPlan,
    error_record,
    outcome_line,
    pythonpath_with_project,
    run_planned,
    shown_path,
    utc_now,
)


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
        error = error_record(plan, type(exc).__name__, f"job {job.job_id}: {first}",
                       text + (f"\n\nend of the job's stderr ({job.paths.stderr}):\n{tail}" if tail else ""))
        FailureLog(plan.run_dir.parent).record(plan, error)
        outcome = RunOutcome(plan.name, plan.variant, plan.seed, "failed", plan.notebook, error=error)
    outcome.job_id = str(job.job_id)
    return outcome


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


@contextmanager
def _project_on_pythonpath():
    """PYTHONPATH with the project first while a job is submitted: a local job inherits this process's environment."""
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = pythonpath_with_project()
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved


class _JobQueue:
    """The submitit jobs of one ablate call: submitted while there is room (local: one at a time; Slurm: all at once,
    the scheduler queues them), collected as they finish; `live` shows each job's run from its run directory."""

    def __init__(self, kind: str, todo: list, total: int, forced: set, study_dir: Path, executor,
                 report_command: str, live: StudyProgress):
        self.kind, self.total, self.forced, self.study_dir, self.executor = kind, total, forced, study_dir, executor
        self.report_command, self.live, self.log = report_command, live, live.say
        self.parallel = 1 if kind == "local" else max(1, len(todo))
        self.environment = {"CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES")} if kind == "local" else None
        self.waiting, self.running, self.outcomes = list(todo), {}, {}

    def say(self, line: str) -> None:
        self.live.say(line)

    def submit_while_room(self) -> None:
        while self.waiting and len(self.running) < self.parallel:
            i, plan = self.waiting.pop(0)
            self.executor.update_parameters(name=f"t2s-{self.study_dir.name}-{plan.name}")
            with _project_on_pythonpath():
                try:
                    job = self.executor.submit(RunJob(), plan, i, self.total, plan.name in self.forced,
                                               self.environment)
                except Exception as exc:  # noqa: BLE001 - sbatch refused it (partition, account, limits...)
                    raise self._refused(plan, exc) from exc
            self.running[job] = (i, plan)
            _record_jobs(self.study_dir, {plan.name: {
                "executor": self.kind, "job_id": str(job.job_id), "submitted": utc_now(),
                "stdout": shown_path(job.paths.stdout), "stderr": shown_path(job.paths.stderr)}})
            self.say(f"[{i}/{self.total}] {plan.name}: submitted as {self.kind} job {job.job_id} "
                     f"(log {shown_path(job.paths.stdout)})")
            self.live.started(plan.name, f"[{i}/{self.total}] {plan.name} (job {job.job_id})", plan.run_dir,
                              waiting="queued or starting")

    def _refused(self, plan: RunPlan, exc: Exception) -> SubmissionError:
        text = ANSI.sub("", str(exc)).strip() or type(exc).__name__
        before = (f"; the {len(self.running)} jobs submitted before keep running (ids in "
                  f"{shown_path(self.study_dir / 'study.json')}); build the report when they end: {self.report_command}"
                  if self.running else "")
        return SubmissionError(f"{plan.name}: submitting the {self.kind} job failed: {text}{before}")

    def collect_finished(self) -> bool:
        """Collect every finished job; whether any was."""
        done = [job for job in self.running if job.done()]
        for job in done:
            i, plan = self.running.pop(job)
            outcome = _collect(job, plan)
            self.outcomes[plan.name] = outcome
            _record_jobs(self.study_dir, {plan.name: {"job_id": outcome.job_id, "status": outcome.status,
                                                      "ended": utc_now()}})
            self.live.ended(plan.name)
            self.say(outcome_line(f"[{i}/{self.total}] {plan.name}", outcome, plan.notebook)
                     + f" (job {outcome.job_id})")
        return bool(done)

    def interrupted(self) -> None:
        """Ctrl-C: Slurm jobs keep running (how to follow or stop them is said); local jobs are cancelled."""
        ids = " ".join(str(job.job_id) for job in self.running)
        if self.kind == "slurm":
            self.log(f"interrupted: the {len(self.running)} submitted jobs keep running on the cluster (job ids in "
                     f"{shown_path(self.study_dir / 'study.json')}; check them with `squeue -j {ids.replace(' ', ',')}` "
                     f"or `sacct -j {ids.replace(' ', ',')}`, stop them with `scancel {ids}`).")
        else:
            for job in self.running:
                job.cancel(check=False)
            self.log(f"interrupted: the local job{'s' if len(self.running) != 1 else ''} {ids} stopped; "
                     f"{len(self.waiting)} runs were not submitted. Run the same ablate again to resume: finished runs "
                     "are skipped, an unfinished one resumes from its latest checkpoint.")
        self.log(f"build the report when you want it (unfinished runs are marked as such): {self.report_command}")


def run_with_submitit(kind: str, todo: list, total: int, forced: set, study_dir: Path, folder: Path,
                      slurm: Optional[SlurmOptions], report_command: str, live: StudyProgress,
                      poll_seconds: Optional[float] = None) -> dict:
    """Submit each (index, plan) of `todo` as a submitit job, wait for them (`live` shows each job's run, read from
    its run directory, and the study's runs done; its `say` prints the lines) and collect their outcomes ->
    {run name: RunOutcome}. Local: one job at a time; Slurm: all at once, the scheduler queues them."""
    queue = _JobQueue(kind, todo, total, forced, study_dir, make_executor(kind, folder, study_dir.name, slurm),
                      report_command, live)
    poll = poll_seconds if poll_seconds is not None else (0.5 if kind == "local" else 15.0)
    try:
        while queue.waiting or queue.running:
            queue.submit_while_room()
            if not queue.collect_finished() and queue.running:
                time.sleep(poll)
    except KeyboardInterrupt:
        queue.interrupted()
        raise
    return queue.outcomes
