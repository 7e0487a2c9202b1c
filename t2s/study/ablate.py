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

The study's rooms (`t2s.study`), each importing only those before it:
    runs       paths and names, planning, locks, one run through train.ipynb, failures.json
    derived    a run derived from another's training (a variant that differs only after training)
    progress   the live display: each running run's progress.json as a line, the study's runs done
    executors  submitit jobs (local, Slurm): SlurmOptions, job parameters, submission, collection, study.json jobs
    export     the analysis notebook executed and exported to HTML
    ablate     run_study: validate, skip or move aside, run here or as jobs, then the report
"""
from __future__ import annotations

import dataclasses
import importlib
import queue
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import torch

from t2s.config import DEFAULT_VARIANTS, PROJECT_ROOT, ConfigError
from t2s.rundir import FAILURES_FILE, STUDY_PHASES_FILE, RunDir, atomic_write_json
from t2s.engine.runtime import computing, torch_threads
from t2s.study import export
from t2s.study.executors import SlurmOptions, check_slurm_available, run_with_submitit
from t2s.study.export import ReportError, report_command
from t2s.study.progress import StudyProgress
from t2s.study.runs import (
    EXECUTED_DIR,
    REPORTS_DIR,
    FailureLog,
    RunOutcome,
    RunPlan,
    normalize_overrides,
    plan_study,
    resume_point,
    run_planned,
    run_status,
    say,
    shown_path,
    update_study_file,
)

EXECUTORS = ("default", "local", "slurm")  # in this process / submitit's LocalExecutor / Slurm jobs through submitit


# ----------------------------------------------------------------------------------------------- a study
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
    log: Callable[[str], None] = say,
    executor: str = "default",
    slurm: Optional[SlurmOptions] = None,
    submitit_folder: Optional[Union[str, Path]] = None,
    poll_seconds: Optional[float] = None,
    share: bool = True,
    jobs: int = 1,
    progress: bool = True,
) -> StudyResult:
    """Train every variant × seed (validated first; finished runs skipped unless force), then build the report.

    executor: "default" runs here (one after another, or one per GPU with `gpus`); "local" and "slurm" submit each
    run as a submitit job (`slurm`: the SlurmOptions of each job; `submitit_folder`: where submitit keeps the jobs'
    pickles and logs, default executed/<study>/.submitit/), wait for them and collect the outcomes.
    share: a run whose training another run of the study does (`t2s.study.derived`: no_ema and baseline of one seed) is
    derived from that run after it finishes instead of trained again; False trains every run.
    jobs: without GPUs, how many runs train at once on this machine's CPUs, each with its share of them (a small
    model uses one thread about as well as two: two tiny runs at once take about as long as one).
    progress: show each running run's progress.json (`t2s.study.progress`) and the study's runs done, live.
    """
    _check_executor_options(executor, slurm, submitit_folder, gpus, jobs)
    executed_dir, reports_dir = Path(executed_dir).resolve(), Path(reports_dir).resolve()
    overrides = normalize_overrides(overrides, epochs, data_dir)
    plans = plan_study(study, list(variants), list(seeds), scale, overrides, executed_dir,
                       Path(params_dir).resolve() if params_dir else None, share=share)
    gpus = _check_gpus_exist(_gpu_list(gpus))
    if executor == "slurm":
        _prepare_slurm(plans, slurm)

    study_dir = executed_dir / study
    study_dir.mkdir(parents=True, exist_ok=True)
    update_study_file(study_dir, study, plans, scale, overrides)
    log(f"study {study}: {len(plans)} runs ({len(variants)} variants × {len(seeds)} seeds), scale {scale}, "
        f"{_where(executor, gpus, jobs)}")

    started, (outcomes, todo) = time.perf_counter(), _skip_or_prepare(plans, force, FailureLog(study_dir), log)
    with StudyProgress(study, len(plans), len(plans) - len(todo), log, show=progress,
                       poll_s=5.0 if executor == "slurm" else None) as live:
        outcomes.update(_run_todo(todo, plans, force, live, executor, gpus, jobs, slurm, submitit_folder, poll_seconds,
                                  report_command(study, executed_dir, reports_dir)))
    result, ran = StudyResult(study, study_dir, [outcomes[p.name] for p in plans]), time.perf_counter() - started
    _summarize(result, log)
    if build_report:
        _report(result, executed_dir, reports_dir, log)
    _record_times(study_dir, started, ran, build_report, len(todo), jobs, executor)
    return result


def _record_times(study_dir: Path, started: float, ran: float, reported: bool, runs: int, jobs: int,
                  executor: str) -> None:
    """executed/<study>/phases.json: this ablate's wall seconds (the bench's study profile reads it)."""
    atomic_write_json(study_dir / STUDY_PHASES_FILE, {
        "runs": round(ran, 3), "report": round(time.perf_counter() - started - ran, 3) if reported else None,
        "wall": round(time.perf_counter() - started, 3), "runs_done_here": runs, "jobs": jobs, "executor": executor,
        "finished": datetime.now().isoformat(timespec="seconds")})


def _run_todo(todo: list, plans: list, force: bool, live: StudyProgress, executor: str, gpus: list, jobs: int,
              slurm: Optional[SlurmOptions], submitit_folder, poll_seconds: Optional[float], command: str) -> dict:
    """The runs of `todo` here (`_run_here`) or as submitit jobs (`run_with_submitit`), each shown by `live`;
    {run name: RunOutcome}."""
    forced = {p.name for p in plans} if force else set()
    if executor == "default":
        return _run_here(todo, len(plans), forced, gpus, live, jobs)
    study_dir = plans[0].run_dir.parent
    folder = Path(submitit_folder).resolve() if submitit_folder else study_dir / ".submitit"
    return run_with_submitit(executor, todo, len(plans), forced, study_dir, folder, slurm, command, live, poll_seconds)


def _report(result: StudyResult, executed_dir: Path, reports_dir: Path, log: Callable[[str], None]) -> None:
    """Build the study's report into `result` (its path, or the error that stopped it: the runs stay)."""
    try:
        result.report = export.build_report(result.study, executed_dir, reports_dir, log=log)
    except ReportError as exc:
        result.report_error = str(exc)
        log(f"report: failed: {exc}")


def _gpu_list(gpus: Union[Sequence[str], str, None]) -> list:
    """GPU ids as a list: "0,1" or ["0", "1"] -> ["0", "1"]; None -> []."""
    if isinstance(gpus, str):
        gpus = [g.strip() for g in gpus.split(",") if g.strip()]
    return list(gpus or [])


def _where(executor: str, gpus: list, jobs: int = 1) -> str:
    """Where the runs go, as the study's first line says it."""
    if executor == "slurm":
        return "as Slurm jobs through submitit"
    if executor == "local":
        return "as local submitit jobs, one after another"
    if gpus:
        return f"on GPUs {', '.join(gpus)}, one run per GPU"
    return f"{jobs} runs at once on this machine's CPUs" if jobs > 1 else "one run after another"


def _summarize(result: StudyResult, log: Callable[[str], None]) -> None:
    """The study's counts per status, and where its failures are recorded."""
    counts = {s: sum(r.status == s for r in result.runs) for s in dict.fromkeys(r.status for r in result.runs)}
    log(f"study {result.study}: " + ", ".join(f"{n} {s}" for s, n in counts.items()))
    if result.failed:
        log(f"failures recorded in {shown_path(result.folder / FAILURES_FILE)}")


def _check_gpus_exist(gpus: list) -> list:
    """`gpus`, once every id in it is a CUDA device of this machine; else a ConfigError says which are not."""
    if not gpus:
        return gpus
    count = torch.cuda.device_count()
    missing = [g for g in gpus if not g.isdigit() or int(g) >= count]
    if missing:
        have = f"CUDA devices 0-{count - 1}" if count else "no CUDA device"
        raise ConfigError(f"--gpus {','.join(gpus)}: {', '.join(missing)} not on this machine, which has {have}; "
                          "leave --gpus out to train on the CPU")
    return gpus


def _prepare_slurm(plans: list, slurm: Optional[SlurmOptions]) -> None:
    check_slurm_available()  # before anything is written, moved aside or submitted
    if slurm is not None and slurm.gpus_per_job > 1:  # the job's run trains data parallel on its GPUs
        for plan in plans:
            plan.parameters["num_processes"] = slurm.gpus_per_job


def _check_executor_options(executor: str, slurm, submitit_folder, gpus, jobs: int = 1) -> None:
    """Each option belongs to an executor: a misplaced one is an error naming it, before anything is written."""
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ConfigError(f"jobs {jobs!r}: a positive whole number of runs at once")
    if jobs > 1 and (gpus or executor != "default"):
        raise ConfigError("jobs is for runs on this machine's CPUs (executor 'default' without gpus); with gpus one "
                          "run goes to each GPU, with a submitit executor to each job")
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
        if RunDir(plan.run_dir).complete and not force:
            outcomes[plan.name] = RunOutcome(plan.name, plan.variant, plan.seed, "skipped", plan.notebook)
            log(f"[{i}/{len(plans)}] {plan.name}: skipped (already trained and evaluated; force reruns it)")
            continue
        if force and (plan.run_dir.exists() or plan.notebook.exists()):
            moved = _move_aside(plan)
            failures.clear(plan.name)
            if moved:
                log(f"[{i}/{len(plans)}] {plan.name}: previous run moved to {shown_path(moved)}")
        elif status is not None:
            log(f"[{i}/{len(plans)}] {plan.name}: {resume_point(plan)}")
        todo.append((i, plan))
    return outcomes, todo


def _run_here(todo: list, total: int, forced: set, gpus: list, live: StudyProgress, jobs: int = 1) -> dict:
    """Run the plans' notebooks here: one after another in this process, one per GPU, or `jobs` at once on the CPUs
    (each in a papermill subprocess with its share of the CPUs). Runs that share another's training (`weights_from`)
    start once every other run has ended, so their provider has finished. `live` shows each run while it runs."""
    slots = list(gpus) or [None] * max(1, jobs)
    first = [item for item in todo if not item[1].parameters.get("weights_from")]
    later = [item for item in todo if item[1].parameters.get("weights_from")]
    beside = _recognizers_beside([plan for _, plan in first], live.say) if not gpus and len(first) > 1 < jobs else None
    try:
        outcomes = _run_waves((first, later), slots, total, forced, gpus, live)
    finally:
        if beside is not None:  # done long before the runs evaluate; stopped within a second on an interrupt
            beside.stop.set()
            beside.join()
    return outcomes


def _run_waves(waves: tuple, slots: list, total: int, forced: set, gpus: list, live: StudyProgress) -> dict:
    """Each wave of (index, plan) after the previous one, its runs on the free `slots` (`_run_here`)."""
    outcomes = {}
    for wave in waves:
        at_once = min(len(slots), len(wave)) or 1  # the notebooks running together share this machine's CPUs

        def run(i: int, plan: RunPlan, slot: Optional[str], at_once=at_once) -> RunOutcome:
            live.started(plan.name, f"[{i}/{total}] {plan.name}" + (f" on GPU {slot}" if slot is not None else ""),
                         plan.run_dir)
            try:
                return run_planned(plan, i, total, plan.name in forced, slot, live.say, jobs_at_once=at_once)
            finally:
                live.ended(plan.name)

        if at_once == 1 and not gpus:
            outcomes.update({plan.name: run(i, plan, None) for i, plan in wave})
            continue
        free = queue.Queue()
        for slot in slots[:at_once]:
            free.put(slot)

        def on_free_slot(i: int, plan: RunPlan, run=run) -> RunOutcome:
            slot = free.get()
            try:
                return run(i, plan, slot)
            finally:
                free.put(slot)

        with ThreadPoolExecutor(max_workers=at_once) as pool:
            outcomes.update({o.name: o for o in pool.map(lambda item: on_free_slot(*item), wave)})
    return outcomes


def _recognizers_beside(plans: list, say: Callable[[str], None]) -> threading.Thread:
    """Train the back-translation recognizers that these runs' evaluations read with in a thread of this process,
    beside the runs' training (one torch thread; this process counts among those computing: `runtime.computing`), so that
    the runs find them cached instead of each training the same one at the same moment (the quickstart's two first
    runs did: 36 s each). A run that gets there first waits for it (`backtranslate.load_or_train` locks it). Nothing
    depends on this: a recognizer it could not make is made, or its absence explained, by the run's evaluation."""
    configs = {}
    for plan in plans:  # one per data set, split and recognizer setting (the runs of a study usually share one)
        cfg = plan.config
        if cfg is None or cfg.dataset != "synthsign":
            continue
        if cfg.data_dir and not Path(cfg.data_dir).is_absolute():  # the notebooks run in the project root
            cfg = dataclasses.replace(cfg, data_dir=str(PROJECT_ROOT / cfg.data_dir))
        keys = ("data_dir", "synthsign_num_clips", "synthsign_num_signers", "image_size", "num_frames",
                "sample_prompts", "split_mode", "train_ratio", "split_seed", "bt_train_frames", "bt_epochs", "bt_seed")
        configs.setdefault(repr([getattr(cfg, k) for k in keys]), cfg)

    stop = threading.Event()

    def prepare() -> None:
        # imported here, in this thread: the recognizer's libraries (scipy, sacrebleu, jiwer) stay out of the main
        # thread's imports, where a Ctrl-C inside one of their extension modules' start-up code was swallowed or
        # turned the clean exit 130 into a death by SIGINT (tests/test_interrupts.py)
        backtranslate = importlib.import_module("t2s.eval.backtranslate")
        with computing(), torch_threads(1):  # one thread: the runs have the CPUs' shares (T2S_THREADS)
            for cfg in configs.values():
                try:
                    backtranslate.prepare_for(cfg, stop)
                except Exception as exc:  # noqa: BLE001 - the runs' own evaluations try again and say why
                    if not stop.is_set():
                        say(f"the back-translation recognizer was not prepared beside the runs: "
                            f"{type(exc).__name__}: {exc}")

    thread = threading.Thread(target=prepare, name="t2s-recognizers", daemon=True)
    thread.stop = stop
    thread.start()
    return thread


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
