"""Live progress: what a run writes as it goes (progress.json), how it reads, and how ablate shows it (a line per
running run and the study's count; tqdm bars on a terminal, plain periodic lines otherwise)."""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import papermill
import pytest
import torch
from conftest import read_csv
from runfactory import make_run

import t2s
from t2s.config import load_config
from t2s.eval.evaluate import evaluate_run
from t2s.rundir import PROGRESS_KEYS, RunDir
from t2s.study import ablate, progress
from t2s.study import runs as study_runs
from t2s.study.progress import RunProgress, StudyProgress, describe, read_progress

pytestmark = pytest.mark.usefixtures("no_network", "one_torch_thread")


# --- what a run writes ---------------------------------------------------------------------------------------------

def test_a_micro_run_writes_its_step_total_and_loss_at_every_log_point_and_says_each_phase(
        synth_dir, tmp_path, monkeypatch, no_metric_weights):
    cfg = load_config("baseline", "micro", {"data_dir": synth_dir})  # 8 steps, a log point every 2
    run_dir = tmp_path / "baseline-seed0"
    assert t2s.train(cfg, run_dir, progress=False, stop_after=4).status == "interrupted"
    stopped = read_progress(run_dir)  # what a poller sees of a run stopped (or still training) at step 4
    rows = read_csv(RunDir(run_dir).training_csv)
    assert (stopped.phase, stopped.done, stopped.total, stopped.unit) == ("training", 4, 8, "step")
    assert stopped.loss == pytest.approx(float(rows[3]["loss"]))  # the last logged step's loss
    assert stopped.clips_per_s == pytest.approx(float(rows[3]["clips_per_s"]))
    assert stopped.rate > 0 and stopped.seconds_left == pytest.approx(4 / stopped.rate)
    assert sorted(json.loads(RunDir(run_dir).progress.read_text())) == sorted(PROGRESS_KEYS)

    written = []
    original = RunDir.write_progress

    def spy(self, phase, done, total, unit, **fields):
        written.append((phase, done, total, fields.get("loss")))
        original(self, phase, done, total, unit, **fields)

    monkeypatch.setattr(RunDir, "write_progress", spy)
    assert t2s.train(cfg, run_dir, progress=False).status == "finished"  # resumed at step 4
    rows = read_csv(RunDir(run_dir).training_csv)
    loss = {int(r["step"]): float(r["loss"]) for r in rows}
    training = [(done, seen) for phase, done, _, seen in written if phase == "training" and seen is not None]
    assert [done for done, _ in training][:2] == [6, 8]  # each log point, with that step's loss
    assert all(seen == pytest.approx(loss[done]) for done, seen in training)
    assert written[0][:3] == ("training", 4, 8)  # the resumed run replaces the stale record at once
    phases = [phase for phase, *_ in written]
    assert "validating" in phases and "sampling" in phases  # the epoch's end, the final samples
    assert phases[phases.index("validating") + 1] == "training"  # then back to what it was doing
    assert written[-1][:3] == ("trained", 8, 8)

    written.clear()
    evaluate_run(run_dir, progress=False)
    assert written[0][:3] == ("evaluating", 0, 0)  # loading the data and metric models: nothing to count yet
    assert [done for phase, done, *_ in written if phase == "evaluating"][-1] == 4  # 2 clips x raw and EMA
    assert written[-1][:3] == ("evaluated", 4, 4)
    assert describe(read_progress(run_dir)) == "evaluated (4 clips)"


def test_the_run_factory_writes_progress_as_a_real_run_leaves_it(tmp_path):
    running = read_progress(make_run(tmp_path, "baseline", 0, status="running", steps=100, log_every=10))
    rows = read_csv(tmp_path / "baseline-seed0" / "logs" / "training_metrics.csv")
    assert (running.phase, running.done, running.total) == ("training", 100, 100)
    assert running.loss == pytest.approx(float(rows[-1]["loss"]))
    evaluated = read_progress(make_run(tmp_path, "text_finetuned", 0))
    assert (evaluated.phase, evaluated.done, evaluated.total, evaluated.unit) == ("evaluated", 16, 16, "clip")


def test_an_unreadable_or_stale_progress_file_reads_as_none(tmp_path):
    run = RunDir(tmp_path / "run")
    assert read_progress(run.root) is None  # none yet
    run.root.mkdir()
    run.progress.write_text("{half a fi")
    assert read_progress(run.root) is None
    run.progress.write_text(json.dumps({"phase": "training"}))  # keys missing
    assert read_progress(run.root) is None
    run.write_progress("training", 3, 10, "step", loss=0.5)
    assert read_progress(run.root).done == 3
    assert read_progress(run.root, since=time.time() + 60) is None  # written before the run was started here
    with pytest.raises(ValueError, match="no key"):
        run.write_progress("training", 3, 10, "step", lost=0.5)


# --- how it reads --------------------------------------------------------------------------------------------------

def progress_of(phase="training", done=120, total=300, unit="step", **fields) -> RunProgress:
    return RunProgress(phase, done, total, unit, **{"time": 1000.0, **fields})


@pytest.mark.parametrize("record, line", [
    (progress_of(rate=2.0, loss=0.123456, clips_per_s=12.46),
     "training step 120/300 (40%), loss 0.1235, 12.5 clips/s, 1m30s left"),
    (progress_of(), "training step 120/300 (40%)"),  # the first log point not reached yet: no loss, no rate
    (progress_of("validating", loss=0.5, rate=2.0), "validating at step 120/300, loss 0.5000"),
    (progress_of("sampling", 300, 300), "sampling at step 300/300"),
    (progress_of("trained", 300, 300), "trained (300/300 steps), evaluation next"),
    (progress_of("evaluating", 0, 0, "clip"), "evaluating: loading the data and metric models"),
    (progress_of("evaluating", 6, 16, "clip", rate=0.5, weights="ema"),
     "evaluating clip 6/16 (38%) with the ema weights, 0.50 clips/s, 20s left"),
    (progress_of("evaluated", 16, 16, "clip", rate=0.5), "evaluated (16 clips)"),
    (None, "starting"),
])
def test_a_runs_progress_reads_as_one_line(record, line):
    assert describe(record, now=1010.0) == line


def test_a_line_whose_file_stopped_changing_says_how_old_it_is():
    assert describe(progress_of(rate=2.0), now=1000.0 + 600) == "training step 120/300 (40%), 1m30s left, " \
                                                               "(written 10m00s ago)"


# --- how ablate shows it -------------------------------------------------------------------------------------------

def test_without_a_terminal_each_running_run_is_a_plain_line_printed_when_it_changed(tmp_path):
    lines = []
    live = StudyProgress("demo", total=3, done=1, log=lines.append, tty=False, every_s=0)
    run = RunDir(tmp_path / "baseline-seed0")
    run.write_progress("training", 1, 100, "step")  # an earlier attempt's, an hour ago: not this run's progress
    run.progress.write_text(json.dumps({**json.loads(run.progress.read_text()), "time": time.time() - 3600}))
    live.started("baseline-seed0", "[2/3] baseline-seed0", run.root)
    live.poll()
    assert lines == ["study demo: 1/3 runs done, 1 running", "  [2/3] baseline-seed0: starting"]
    live.poll()
    assert len(lines) == 2  # nothing changed, nothing printed
    run.write_progress("training", 40, 100, "step", loss=0.25, rate=4.0, clips_per_s=16.0)
    live.poll()
    assert lines[2:] == ["study demo: 1/3 runs done, 1 running",
                         "  [2/3] baseline-seed0: training step 40/100 (40%), loss 0.2500, 16.0 clips/s, 15s left"]
    live.ended("baseline-seed0")
    live.poll()
    assert len(lines) == 4 and live.done == 2 and not live.live


def test_without_a_terminal_lines_wait_for_the_period(tmp_path):
    lines = []
    live = StudyProgress("demo", total=1, log=lines.append, tty=False, every_s=3600)
    live.started("a", "[1/1] a", tmp_path / "a")
    live.poll()
    assert lines == []  # not before an hour (the period) has passed


def test_on_a_terminal_each_running_run_is_a_bar_at_its_step(tmp_path, capsys):
    live = StudyProgress("demo", total=2, log=print, tty=True)
    with live:
        live.started("a", "[1/2] a on GPU 0", tmp_path / "a")
        RunDir(tmp_path / "a").write_progress("training", 30, 120, "step", loss=0.5, rate=1.0, clips_per_s=4.0)
        live.poll()
        bar = live.live["a"].bar
        assert (bar.n, bar.total) == (30, 120)
        assert str(bar).startswith("[1/2] a on GPU 0 |")
        assert str(bar).endswith("| training step 30/120 (25%), loss 0.5000, 4.0 clips/s, 1m30s left")
        live.say("[1/2] a: finished in 2m00s")
        live.ended("a")
        assert live.overall.n == 1
    out, err = capsys.readouterr()
    assert out == "[1/2] a: finished in 2m00s\n"  # the study's own lines go to stdout, the bars to stderr
    assert "study demo" in err


class ProgressWritingPapermill:
    """Stands in for papermill: the run writes progress.json, trains a while (the poller reads it), then finishes."""

    def __init__(self):
        self.lock = threading.Lock()

    def __call__(self, input_path, output_path, parameters=None, **kwargs):
        output = Path(output_path)
        output.write_text(json.dumps({"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
        run = RunDir(output.with_suffix(""))
        run.write_progress("training", 5, 10, "step", loss=0.75, rate=5.0, clips_per_s=20.0)
        time.sleep(0.6)
        make_run(output.parent, parameters["variant"], parameters["seed"], notebook=False)


@pytest.mark.parametrize("jobs, gpus, on", [(1, None, ""), (2, None, ""), (1, "0,1", " on GPU 0")])
def test_ablate_prints_each_running_runs_progress_from_its_folder(tmp_path, monkeypatch, jobs, gpus, on):
    """In this process (jobs 1), side by side on the CPUs (jobs 2) and one per GPU: the subprocesses of the last two
    run here in threads, with the stand-in papermill, as the threads that wait for them do."""
    monkeypatch.setattr(papermill, "execute_notebook", ProgressWritingPapermill())
    monkeypatch.setattr(progress, "EVERY_S", 0.0)
    monkeypatch.setattr(progress, "POLL_S", 0.05)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(study_runs, "execute_in_subprocess",
                        lambda plan, gpu, at_once: study_runs.execute_in_process(plan))
    lines = []
    result = ablate.run_study("live", variants=("baseline", "text_finetuned"), seeds=(0,), jobs=jobs, gpus=gpus,
                              scale="micro", executed_dir=tmp_path / "executed", reports_dir=tmp_path / "reports",
                              build_report=False, log=lines.append)
    assert result.ok
    shown = [line for line in lines if "training step" in line]
    assert f"  [1/2] baseline-seed0{on}: training step 5/10 (50%), loss 0.7500, 20.0 clips/s, 1s left" in shown
    assert any(line.startswith("  [2/2] text_finetuned-seed0") and "training step 5/10" in line for line in shown)
    assert any(line.startswith("study live: 0/2 runs done") for line in lines)
