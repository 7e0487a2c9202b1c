"""Study orchestration: validation before any run, skip / force / resume, failure recording, GPU slots, and the
train notebook against the training contract (with a stand-in train() that writes a factory run)."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import nbformat
import papermill
import pytest
import torch
from papermill.exceptions import PapermillExecutionError
from runfactory import make_run

from t2s.config import PROJECT_ROOT, ConfigError
from t2s.eval import backtranslate
from t2s.rundir import RunDir
from t2s.study import ablate
from t2s.study.kernel import SUBPROCESS_CODE, execute_notebook
from t2s.study.runs import ANALYSIS_NOTEBOOK, TRAIN_NOTEBOOK

TESTS = Path(__file__).resolve().parent


class FakePapermill:
    """Stands in for papermill.execute_notebook: records each call and writes what train.ipynb would leave."""

    def __init__(self, fail: dict | None = None):
        self.calls = []
        self.fail = fail or {}  # variant -> the PapermillExecutionError its notebook raises
        self.lock = threading.Lock()

    def __call__(self, input_path, output_path, parameters=None, **kwargs):
        with self.lock:
            self.calls.append({"input": Path(input_path), "output": Path(output_path), "parameters": parameters, **kwargs})
        output = Path(output_path)
        output.write_text(json.dumps({"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
        if Path(input_path) == ANALYSIS_NOTEBOOK:
            return
        if parameters["variant"] in self.fail:
            make_run(output.parent, parameters["variant"], parameters["seed"], status="running", notebook=False)
            raise self.fail[parameters["variant"]]
        make_run(output.parent, parameters["variant"], parameters["seed"], notebook=False)

    def runs(self) -> list:
        return [c["output"].stem for c in self.calls if c["input"] == TRAIN_NOTEBOOK]


@pytest.fixture
def fake(monkeypatch):
    fake = FakePapermill()
    monkeypatch.setattr(papermill, "execute_notebook", fake)
    return fake


def study_args(tmp_path, **kwargs) -> dict:
    return {"executed_dir": tmp_path / "executed", "reports_dir": tmp_path / "reports", "build_report": False,
            "log": lambda line: None, **kwargs}


# ----------------------------------------------------------------------------------------------- validation first
@pytest.mark.parametrize("overrides, named", [
    (["learning_rat=1e-3"], "learning_rat"),  # a typo in a key
    ({"batch_size": 0}, "batch_size"),  # a value out of range
    (["use_ema=maybe"], "use_ema"),  # a value of the wrong type
])
def test_a_bad_override_fails_before_any_run(tmp_path, fake, overrides, named):
    with pytest.raises(ConfigError, match=named):
        ablate.run_study("s", overrides=overrides, **study_args(tmp_path))
    assert fake.calls == []
    assert not (tmp_path / "executed" / "s").exists()


def test_a_bad_variant_fails_before_any_run(tmp_path, fake):
    with pytest.raises(ConfigError, match="no_emma"):
        ablate.run_study("s", variants=("baseline", "no_emma"), **study_args(tmp_path))
    assert fake.calls == []


def test_a_bad_study_name_is_refused(tmp_path, fake):
    with pytest.raises(ConfigError, match="study name"):
        ablate.run_study("../elsewhere", **study_args(tmp_path))
    assert fake.calls == []


# ----------------------------------------------------------------------------------------------- running
def test_every_variant_and_seed_runs_the_train_notebook(tmp_path, fake):
    result = ablate.run_study("s", seeds=(0, 1), epochs=2, overrides=["learning_rate=3e-4"], **study_args(tmp_path))
    assert fake.runs() == ["baseline-seed0", "baseline-seed1", "text_finetuned-seed0", "text_finetuned-seed1",
                           "no_ema-seed0", "no_ema-seed1"]
    call = fake.calls[1]
    assert call["output"] == tmp_path / "executed" / "s" / "baseline-seed1.ipynb"
    assert call["parameters"] == {"variant": "baseline", "scale": "tiny", "study": "s", "seed": 1,
                                  "overrides": {"learning_rate": 3e-4, "num_epochs": 2},
                                  "executed_dir": str(tmp_path / "executed"), "params_dir": None, "weights_from": None}
    # no_ema shares the training of the baseline of its seed (t2s/study/derived.py)
    assert fake.calls[4]["parameters"]["weights_from"] == str(tmp_path / "executed" / "s" / "baseline-seed0")
    assert (call["kernel_name"], call["progress_bar"], call["cwd"]) == ("python3", False, str(PROJECT_ROOT))
    assert [r.status for r in result.runs] == ["finished"] * 6 and result.ok
    plan = json.loads((tmp_path / "executed" / "s" / "study.json").read_text())
    assert (plan["variants"], plan["seeds"]) == (["baseline", "text_finetuned", "no_ema"], [0, 1])


def test_finished_runs_are_skipped(tmp_path, fake):
    make_run(tmp_path / "executed" / "s", "baseline", 0)
    lines = []
    result = ablate.run_study("s", **study_args(tmp_path, log=lines.append))
    assert fake.runs() == ["text_finetuned-seed0", "no_ema-seed0"]
    assert [r.status for r in result.runs] == ["skipped", "finished", "finished"]
    assert "[1/3] baseline-seed0: skipped (already trained and evaluated; force reruns it)" in lines


def test_force_moves_the_old_run_aside_and_runs_again(tmp_path, fake):
    old = make_run(tmp_path / "executed" / "s", "baseline", 0)
    (old / "marker.txt").write_text("the old run")
    result = ablate.run_study("s", variants=("baseline",), force=True, **study_args(tmp_path))
    assert fake.runs() == ["baseline-seed0"] and result.runs[0].status == "finished"
    (moved,) = [p for p in (tmp_path / "executed" / "s" / ".trash").iterdir() if p.is_dir()]
    assert moved.name.startswith("baseline-seed0-")
    assert (moved / "marker.txt").read_text() == "the old run"  # moved whole, not deleted
    assert (moved / "summary.json").is_file() and moved.with_suffix(".ipynb").is_file()
    assert not (old / "marker.txt").exists()


def test_an_interrupted_run_is_run_again_in_place(tmp_path, fake):
    run = make_run(tmp_path / "executed" / "s", "baseline", 0, status="interrupted")
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "epoch_2.pt").write_bytes(b"checkpoint")
    lines = []
    ablate.run_study("s", variants=("baseline",), **study_args(tmp_path, log=lines.append))
    assert fake.runs() == ["baseline-seed0"]
    assert (run / "checkpoints" / "epoch_2.pt").is_file()  # left for train() to resume from
    assert not (tmp_path / "executed" / "s" / ".trash").exists()
    assert any("was interrupted: resumes from its newest intact checkpoint (1 written but not yet indexed are "
               "checked first)" in line for line in lines)


def test_the_resume_message_names_the_step_and_a_trained_run_is_evaluated_not_skipped(tmp_path, fake):
    """A run with an indexed checkpoint resumes "from optimizer step N"; a trained run without its evaluation rows is
    not complete: it is run again (the notebook evaluates it), never skipped as "finished"."""
    run = make_run(tmp_path / "executed" / "s", "baseline", 0, status="interrupted")
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "epoch_2.pt").write_bytes(b"checkpoint")
    (run / "checkpoints" / "index.json").write_text(json.dumps([{"file": "epoch_2.pt", "step": 20, "epoch": 2}]))
    trained = make_run(tmp_path / "executed" / "s", "text_finetuned", 0, evaluation=False)
    lines = []
    ablate.run_study("s", variants=("baseline", "text_finetuned"), **study_args(tmp_path, log=lines.append))
    assert "[1/2] baseline-seed0: was interrupted: resumes from optimizer step 20 (checkpoints/epoch_2.pt)" in lines
    assert "[2/2] text_finetuned-seed0: trained but not evaluated: evaluates it" in lines
    assert fake.runs() == ["baseline-seed0", "text_finetuned-seed0"] and RunDir(trained).complete  # run again


def test_a_failing_run_is_recorded_and_the_others_still_run(tmp_path, monkeypatch):
    error = PapermillExecutionError(cell_index=5, exec_count=4, source="result = train(config, run_dir)",
                                    ename="ValueError", evalue="loss is NaN",
                                    traceback=["\x1b[0;31mValueError\x1b[0m: loss is NaN", "  File train.py, line 3"])
    fake = FakePapermill(fail={"text_finetuned": error})
    monkeypatch.setattr(papermill, "execute_notebook", fake)
    lines = []
    result = ablate.run_study("s", **study_args(tmp_path, log=lines.append))

    assert fake.runs() == ["baseline-seed0", "text_finetuned-seed0", "no_ema-seed0"]
    assert [r.status for r in result.runs] == ["finished", "failed", "finished"]
    assert [r.name for r in result.failed] == ["text_finetuned-seed0"] and not result.ok
    failures = json.loads((tmp_path / "executed" / "s" / "failures.json").read_text())
    entry = failures["text_finetuned-seed0"]
    assert (entry["ename"], entry["evalue"], entry["cell_index"]) == ("ValueError", "loss is NaN", 5)
    assert entry["traceback"] == "ValueError: loss is NaN\n  File train.py, line 3"  # colour codes stripped
    assert entry["cell_source"] == "result = train(config, run_dir)"
    metadata = json.loads((tmp_path / "executed" / "s" / "text_finetuned-seed0" / "metadata.json").read_text())
    assert metadata["status"] == "failed" and metadata["notebook_error"]["evalue"] == "loss is NaN"
    assert any("text_finetuned-seed0: failed after" in line and "ValueError: loss is NaN (cell 5" in line
               for line in lines)

    # a rerun that succeeds takes the run off the failure list
    fake.fail.clear()
    ablate.run_study("s", **study_args(tmp_path))
    assert json.loads((tmp_path / "executed" / "s" / "failures.json").read_text()) == {}


def test_gpus_get_one_papermill_process_each(tmp_path, monkeypatch):
    running, peak, seen = [0], [0], []
    lock = threading.Lock()

    def fake_run(command, env, capture_output, text):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
            seen.append((env["CUDA_VISIBLE_DEVICES"], command))
        time.sleep(0.2)
        parameters = json.loads(command[5])
        make_run(Path(command[4]).parent, parameters["variant"], parameters["seed"])
        with lock:
            running[0] -= 1
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(subprocess, "run", fake_run)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    result = ablate.run_study("g", seeds=(0, 1), gpus="0,1", **study_args(tmp_path))
    assert [r.status for r in result.runs] == ["finished"] * 6
    assert peak[0] == 2  # both GPUs busy at once, never more than one run per GPU
    assert {gpu for gpu, _ in seen} == {"0", "1"}
    command = seen[0][1]  # python -c <execute_notebook(notebook, output, parameters)>: papermill as in this process
    assert command[1:4] == ["-c", SUBPROCESS_CODE, str(TRAIN_NOTEBOOK)]


def test_a_runs_papermill_process_does_not_load_the_model_libraries():
    """The papermill subprocess of each run imports what SUBPROCESS_CODE imports and nothing of torch, diffusers or
    transformers (only its kernel needs them: loading them there too cost each run about 6 s of CPU)."""
    imports = SUBPROCESS_CODE.split(";")[1].strip()  # "from t2s.study.kernel import execute_notebook"
    probe = f"import sys; {imports}; print(sorted({{'torch', 'diffusers', 'transformers'}} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert imports.startswith("from t2s.") and out.strip() == "[]"


def test_jobs_train_runs_at_once_on_the_cpus_and_shared_runs_wait_for_their_provider(tmp_path, monkeypatch):
    from t2s.engine import runtime

    running, peak, events = [0], [0], []
    lock = threading.Lock()
    monkeypatch.setattr(runtime, "usable_cpus", lambda: 4)
    monkeypatch.delenv(runtime.THREADS_ENV_VAR, raising=False)

    def fake_run(command, env, capture_output, text):
        parameters = json.loads(command[5])
        name = f"{parameters['variant']}-seed{parameters['seed']}"
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
            events.append(("start", name, env.get(runtime.THREADS_ENV_VAR), env.get("OMP_WAIT_POLICY")))
        time.sleep(0.2)
        make_run(Path(command[4]).parent, parameters["variant"], parameters["seed"])
        with lock:
            running[0] -= 1
            events.append(("end", name, None, None))
        return subprocess.CompletedProcess(command, 0, "", "")

    prepared = []

    def prepare_for(cfg, stop):  # the recognizer trained beside the runs: here it waits until the study stops it
        prepared.append((cfg.run_name, threading.current_thread().name))
        stop.wait(timeout=30)
        prepared.append(stop.is_set())

    monkeypatch.setattr(subprocess, "run", fake_run)
    monkeypatch.setattr(backtranslate, "prepare_for", prepare_for)  # the module the thread imports
    started = time.monotonic()
    result = ablate.run_study("c", seeds=(0, 1), jobs=2, **study_args(tmp_path))
    assert result.ok and peak[0] == 2
    # one recognizer for the four trained runs (they share data, split and settings), in a thread of this process,
    # stopped and joined when the study ends
    assert prepared == [("baseline-seed0", "t2s-recognizers"), True] and time.monotonic() - started < 20
    starts = [e for e in events if e[0] == "start"]
    assert {(threads, wait) for _, _, threads, wait in starts} == {("2", "PASSIVE")}  # 4 CPUs / 2 at once
    first_no_ema = next(i for i, e in enumerate(events) if e[:2] == ("start", "no_ema-seed0"))
    assert all(("end", f"{v}-seed{k}", None, None) in events[:first_no_ema]
               for v in ("baseline", "text_finetuned") for k in (0, 1))
    with pytest.raises(ConfigError, match="jobs is for runs on this machine's CPUs"):
        ablate.run_study("c", jobs=2, gpus="0", **study_args(tmp_path))
    with pytest.raises(ConfigError, match="jobs 0"):
        ablate.run_study("c", jobs=0, **study_args(tmp_path))


def test_gpus_that_this_machine_does_not_have_stop_before_any_run(tmp_path, fake, monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    with pytest.raises(ConfigError, match="--gpus 0: 0 not on this machine, which has no CUDA device"):
        ablate.run_study("g", gpus="0", **study_args(tmp_path))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ConfigError, match="--gpus 1,2,x: 2, x not on this machine, which has CUDA devices 0-1"):
        ablate.run_study("g", gpus="1,2,x", **study_args(tmp_path))
    assert fake.calls == []


def test_a_failing_gpu_run_reports_the_cell_error_from_its_notebook(tmp_path, monkeypatch):
    def fake_run(command, env, capture_output, text):
        nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 1"), nbformat.v4.new_code_cell("train()")])
        nb.cells[1].outputs = [nbformat.v4.new_output("error", ename="RuntimeError", evalue="CUDA out of memory",
                                                      traceback=["Traceback ...", "RuntimeError: CUDA out of memory"])]
        nbformat.write(nb, command[4])
        return subprocess.CompletedProcess(command, 1, "", "papermill.exceptions.PapermillExecutionError")

    monkeypatch.setattr(subprocess, "run", fake_run)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    result = ablate.run_study("g", variants=("baseline",), gpus=["3"], **study_args(tmp_path))
    assert result.runs[0].status == "failed"
    entry = json.loads((tmp_path / "executed" / "g" / "failures.json").read_text())["baseline-seed0"]
    assert (entry["ename"], entry["evalue"], entry["cell_index"]) == ("RuntimeError", "CUDA out of memory", 1)
    assert entry["traceback"].endswith("RuntimeError: CUDA out of memory")


def test_a_failing_report_is_recorded_not_raised(tmp_path, monkeypatch):
    fake = FakePapermill()

    def execute(input_path, output_path, parameters=None, **kwargs):
        if Path(input_path) == ANALYSIS_NOTEBOOK:
            raise PapermillExecutionError(3, 2, "notebook.show(...)", "KeyError", "'loss'", ["KeyError: 'loss'"])
        return fake(input_path, output_path, parameters, **kwargs)

    monkeypatch.setattr(papermill, "execute_notebook", execute)
    result = ablate.run_study("r", variants=("baseline",), **study_args(tmp_path, build_report=True))
    assert result.runs[0].status == "finished" and result.report is None
    assert "cell 3: KeyError: 'loss'" in result.report_error


# ----------------------------------------------------------------------------------------------- the train notebook
def test_train_notebook_parameters_cell_holds_every_default():
    nb = nbformat.read(str(TRAIN_NOTEBOOK), as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code[0].metadata.get("tags") == ["parameters"]
    defaults: dict = {}
    exec(code[0].source, defaults)
    assert {k: defaults[k] for k in ("variant", "scale", "study", "seed", "overrides", "executed_dir", "params_dir")} \
        == {"variant": "baseline", "scale": "tiny", "study": "default", "seed": 0, "overrides": {},
            "executed_dir": "executed", "params_dir": None}


FAKE_TRAIN = '''
import json, sys, types
from pathlib import Path
sys.path[:0] = [{root!r}, {tests!r}]
import runfactory

def train_or_derive(config, run_dir, weights_from=None, progress=True):
    """Stand-in for t2s.study.derived.train_or_derive: writes a finished run in the contract's format."""
    run_dir = Path(run_dir)
    runfactory.make_run(run_dir.parent, config.variant, config.seed, prompts=["<b>bold</b> caption"], notebook=False)
    summary = json.loads((run_dir / "summary.json").read_text())
    return types.SimpleNamespace(run_dir=run_dir, summary=summary, status="finished")

def evaluate_or_reuse(run_dir, progress=True):
    """Stand-in for t2s.study.derived.evaluate_or_reuse: the rows of logs/evaluation_metrics.json."""
    return [{{"weights": "raw", "ssim": 0.25, "fvd": None, "fvd_status": "I3D weights not found"}}]

def train_processes(config, run_dir, num_processes, progress=False):
    raise AssertionError("the notebook must not launch processes when num_processes is 1")

derived = types.ModuleType("t2s.study.derived")
derived.train_or_derive, derived.evaluate_or_reuse = train_or_derive, evaluate_or_reuse
sys.modules["t2s.study.derived"] = derived
launch = types.ModuleType("t2s.engine.launch")
launch.train_processes = train_processes
sys.modules["t2s.engine.launch"] = launch
'''


def test_train_notebook_runs_against_the_training_contract(tmp_path, monkeypatch, capfd):
    """A real kernel runs notebooks/train.ipynb as ablate runs it (`execute_notebook`); IPython's startup folder swaps
    in a stand-in train(). The kernel is reached over IPC, so it does not warn that it runs over TCP unencrypted."""
    startup = tmp_path / "ipython" / "profile_default" / "startup"
    startup.mkdir(parents=True)
    (startup / "00-fake-train.py").write_text(textwrap.dedent(FAKE_TRAIN.format(root=str(PROJECT_ROOT),
                                                                                tests=str(TESTS))))
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    output = tmp_path / "executed" / "s" / "no_ema-seed3.ipynb"
    output.parent.mkdir(parents=True)
    execute_notebook(TRAIN_NOTEBOOK, output, {"variant": "no_ema", "seed": 3, "study": "s",
                                                            "executed_dir": str(tmp_path / "executed"),
                                                            "overrides": {"num_epochs": 1}})
    assert "without encryption" not in capfd.readouterr().err  # the kernel's stderr is this process's
    assert json.loads((tmp_path / "executed" / "s" / "no_ema-seed3" / "config.json").read_text())["seed"] == 3
    nb = nbformat.read(str(output), as_version=4)
    outputs = [o for c in nb.cells for o in c.get("outputs", [])]
    html = "".join(o.get("data", {}).get("text/html", "") for o in outputs)
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "status: finished" in text
    assert "plotly.js v" in html  # embedded once, for the figures after it
    assert sum("application/vnd.plotly.v1+json" in o.get("data", {}) for o in outputs) == 2  # loss, validation
    assert "data:image/gif;base64," in html and "&lt;b&gt;bold&lt;/b&gt; caption" in html
    assert "final_loss" in html and "use_ema" in html  # the summary and config tables
    assert "I3D weights not found" in html and "0.25" in html  # the evaluation table, with the reason for a null


# ----------------------------------------------------------------------------------------------- concurrency
def test_a_run_locked_by_another_ablate_is_skipped_not_written(tmp_path, fake):
    """Two ablate calls on one study never write the same run directory at once: the lock is per run."""
    import fcntl
    import multiprocessing

    lock = tmp_path / "executed" / "c" / ".locks" / "baseline-seed0.lock"
    lock.parent.mkdir(parents=True)
    ready, release = multiprocessing.Event(), multiprocessing.Event()

    def hold():  # another process, as a second `python -m t2s ablate` would be
        with open(lock, "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            ready.set()
            release.wait(30)

    other = multiprocessing.get_context("fork").Process(target=hold)
    other.start()
    try:
        assert ready.wait(30)
        lines = []
        result = ablate.run_study("c", variants=("baseline", "no_ema"), **{**study_args(tmp_path), "log": lines.append})
    finally:
        release.set()
        other.join(30)
    status = {r.name: r.status for r in result.runs}
    assert status == {"baseline-seed0": "locked", "no_ema-seed0": "finished"}
    assert [Path(c["output"]).name for c in fake.calls] == ["no_ema-seed0.ipynb"]
    assert any("another ablate of this study is running it" in line for line in lines)
    assert result.ok  # a run left to the other ablate is not a failure of this one
    again = ablate.run_study("c", variants=("baseline",), **study_args(tmp_path))  # lock released: it runs now
    assert [r.status for r in again.runs] == ["finished"]
