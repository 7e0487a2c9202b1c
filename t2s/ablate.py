"""Run a study: every variant × seed through notebooks/train.ipynb with papermill, then the HTML report.

    result = run_study("my-study", variants=("baseline", "no_ema"), seeds=(0, 1), scale="tiny")

Every config is validated before anything runs, so a typo in an override fails at once with the key named.
Each run executes notebooks/train.ipynb into executed/<study>/<variant>-seed<k>.ipynb, next to its run folder.
A run whose metadata says "finished" is skipped; force=True moves it into executed/<study>/.trash/ (nothing is
deleted) and runs it afresh. An interrupted or failed run is simply run again: train() resumes it from its latest
checkpoint. A failing run is recorded in executed/<study>/failures.json with the failing cell's traceback (and in its
metadata.json) and does not stop the others. With gpus=["0", "1"], one papermill process per GPU, each seeing only
its own (CUDA_VISIBLE_DEVICES), the rest queued; without, one run after another.

Then build_report() executes notebooks/analysis.ipynb into executed/<study>/analysis.ipynb and exports it, without
code, to reports/<study>.html: self-contained (plotly.js and the GIFs embedded), so it opens offline.
"""
from __future__ import annotations

import os
import queue
import re
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
from t2s.rundir import atomic_write_json, read_json

TRAIN_NOTEBOOK = PROJECT_ROOT / "notebooks" / "train.ipynb"
ANALYSIS_NOTEBOOK = PROJECT_ROOT / "notebooks" / "analysis.ipynb"
EXECUTED_DIR = PROJECT_ROOT / "executed"
REPORTS_DIR = PROJECT_ROOT / "reports"
DEFAULT_VARIANTS = ("baseline", "text_finetuned", "no_ema")
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
    return read_json(Path(run_dir) / "metadata.json", {}).get("status")


def _update_study_file(study_dir: Path, study: str, plans: list, scale: str, overrides: dict) -> None:
    """study.json: the variants and seeds asked for (merged with earlier calls), so a report can tell what is missing."""
    path = study_dir / "study.json"
    old = read_json(path, {})
    variants = list(dict.fromkeys(old.get("variants", []) + [p.name.rsplit("-seed", 1)[0] for p in plans]))
    seeds = sorted(set(old.get("seeds", [])) | {p.seed for p in plans})
    atomic_write_json(path, {"study": study, "variants": variants, "seeds": seeds, "scale": scale,
                       "overrides": overrides, "updated": _now()})


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
    """executed/<study>/failures.json: run name -> the failing cell's error; safe to update from several threads."""

    def __init__(self, study_dir: Path):
        self.path = Path(study_dir) / "failures.json"
        self.lock = threading.Lock()

    def _update(self, change: Callable[[dict], None]) -> None:
        with self.lock:
            failures = read_json(self.path, {})
            change(failures)
            if failures or self.path.exists():
                atomic_write_json(self.path, failures)

    def clear(self, name: str) -> None:
        self._update(lambda failures: failures.pop(name, None))

    def record(self, plan: RunPlan, error: dict) -> None:
        self._update(lambda failures: failures.__setitem__(plan.name, error))
        metadata_path = plan.run_dir / "metadata.json"
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
) -> StudyResult:
    """Train every variant × seed (validated first; finished runs skipped unless force), then build the report."""
    executed_dir, reports_dir = Path(executed_dir).resolve(), Path(reports_dir).resolve()
    overrides = normalize_overrides(overrides, epochs, data_dir)
    plans = plan_study(study, list(variants), list(seeds), scale, overrides, executed_dir,
                       Path(params_dir).resolve() if params_dir else None)
    if isinstance(gpus, str):
        gpus = [g.strip() for g in gpus.split(",") if g.strip()]
    gpus = list(gpus or [])

    study_dir = executed_dir / study
    study_dir.mkdir(parents=True, exist_ok=True)
    _update_study_file(study_dir, study, plans, scale, overrides)
    failures = FailureLog(study_dir)
    where = f"on GPUs {', '.join(gpus)}, one run per GPU" if gpus else "one run after another"
    log(f"study {study}: {len(plans)} runs ({len(variants)} variants × {len(seeds)} seeds), scale {scale}, {where}")

    outcomes: dict = {}
    todo = []
    forced = {p.name for p in plans} if force else set()
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

    def run(i: int, plan: RunPlan, gpu: Optional[str]) -> RunOutcome:
        with run_lock(plan) as held:
            if not held:
                log(f"[{i}/{len(plans)}] {plan.name}: skipped: another ablate of this study is running it "
                    f"(lock {_shown(lock_path(plan))})")
                return RunOutcome(plan.name, plan.variant, plan.seed, "locked", plan.notebook)
            if run_status(plan.run_dir) == "finished" and plan.name not in forced:
                log(f"[{i}/{len(plans)}] {plan.name}: skipped (finished meanwhile by another ablate)")
                return RunOutcome(plan.name, plan.variant, plan.seed, "skipped", plan.notebook)
            return run_unlocked(i, plan, gpu)

    def run_unlocked(i: int, plan: RunPlan, gpu: Optional[str]) -> RunOutcome:
        on = f" on GPU {gpu}" if gpu is not None else ""
        log(f"[{i}/{len(plans)}] {plan.name}: started{on} at {datetime.now():%H:%M:%S}")
        outcome = _run_one(plan, gpu, failures)
        if outcome.error:
            e = outcome.error
            log(f"[{i}/{len(plans)}] {plan.name}: failed after {_duration(outcome.seconds)}: {e['ename']}: "
                f"{e['evalue']} (cell {e['cell_index']} of {_shown(plan.notebook)})")
        else:
            log(f"[{i}/{len(plans)}] {plan.name}: {outcome.status} in {_duration(outcome.seconds)}")
        return outcome

    if not gpus:
        for i, plan in todo:
            outcomes[plan.name] = run(i, plan, None)
    else:
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
            for outcome in pool.map(lambda item: on_free_gpu(*item), todo):
                outcomes[outcome.name] = outcome

    result = StudyResult(study, study_dir, [outcomes[p.name] for p in plans])
    counts = {s: sum(r.status == s for r in result.runs) for s in dict.fromkeys(r.status for r in result.runs)}
    log(f"study {study}: " + ", ".join(f"{n} {s}" for s, n in counts.items()))
    if result.failed:
        log(f"failures recorded in {_shown(study_dir / 'failures.json')}")
    if build_report:
        try:
            result.report = _build_study_report(study, executed_dir, reports_dir, log=log)
        except ReportError as exc:
            result.report_error = str(exc)
            log(f"report: failed: {exc}")
    return result


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
