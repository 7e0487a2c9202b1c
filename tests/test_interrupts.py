"""Studies that survive Ctrl-C: a run interrupted at any moment, and the study run again, end exactly where an
uninterrupted one ends (the same weights, the same evaluation rows), with no orphan file left behind."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from t2s.config import PROJECT_ROOT, load_config
from t2s.engine import checkpoint
from t2s.engine.train import train
from t2s.rundir import RunDir

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# the evaluation columns that time or measure the machine, not the model
MACHINE_COLUMNS = {"timestamp", "inference_time_ms", "inference_memory_gb"}


def final_tensors(run_dir: Path) -> dict:
    """{file: {tensor name: tensor}} of a finished run's weights/ folder."""
    return {p.name: load_file(p) for p in sorted(RunDir(run_dir).weights.glob("*.safetensors"))}


def evaluation_rows(run_dir: Path) -> list:
    rows = json.loads(RunDir(run_dir).evaluation_json.read_text(encoding="utf-8"))
    return [{k: v for k, v in row.items() if k not in MACHINE_COLUMNS} for row in rows]


def assert_same_run(a: Path, b: Path) -> None:
    ta, tb = final_tensors(a), final_tensors(b)
    assert ta.keys() == tb.keys() and ta, (a.name, sorted(ta), sorted(tb))
    for name in ta:
        assert ta[name].keys() == tb[name].keys()
        assert all(torch.equal(ta[name][k], tb[name][k]) for k in ta[name]), (a.name, name)
    assert evaluation_rows(a) == evaluation_rows(b), a.name


def leftovers(study: Path) -> list:
    """What an interrupted study could leave behind: checkpoint folders of finished runs, unfinished writes, runs
    moved aside, failure records."""
    found = [p for p in study.rglob("*") if p.name.endswith(".tmp") or p.name == "checkpoints" or p.name == ".trash"]
    failures = study / "failures.json"
    if failures.is_file() and json.loads(failures.read_text()):
        found.append(failures)
    return sorted(found)


def test_a_second_interrupt_between_a_checkpoint_and_its_index_loses_nothing(tmp_path, monkeypatch, capsys):
    """The second Ctrl-C lands after a checkpoint file is written and before the index names it: the run stops
    "interrupted"; run again, it indexes the complete file, resumes from it, and ends with the uninterrupted run's
    weights and no checkpoint file left over."""
    cfg = load_config("baseline", "micro", {"data_dir": str(tmp_path / "synthsign"), "max_steps": 30, "num_epochs": 3,
                                            "save_every": 1})  # 10 steps an epoch: checkpoints at steps 10, 20, 30
    straight = train(cfg, tmp_path / "straight", progress=False)
    real_write = checkpoint.atomic_write_json

    def interrupted_index(path, data, durable=True):
        if Path(path).name == "index.json" and any(e["step"] == 20 for e in data):
            raise KeyboardInterrupt  # epoch_2.pt (step 20) is on disk, its index entry is not
        return real_write(path, data, durable)

    monkeypatch.setattr(checkpoint, "atomic_write_json", interrupted_index)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "cut", progress=False)
    monkeypatch.setattr(checkpoint, "atomic_write_json", real_write)
    run = RunDir(tmp_path / "cut")
    assert run.status == "interrupted"
    assert (run.checkpoints / "epoch_2.pt").is_file()  # written, not indexed
    assert [e["step"] for e in checkpoint.list_checkpoints(run)] == [10]
    run.weights.mkdir()
    killed_mid_write = [run.root / ".progress.json.k1ll3d.tmp", run.logs / ".training_metrics.csv.k1ll3d.tmp",
                        run.weights / ".text_encoder.safetensors.k1ll3d.tmp", run.checkpoints / ".step_25.pt.k1ll3d.tmp"]
    for path in killed_mid_write:  # what a process killed inside an atomic write leaves
        path.write_text("half")
    capsys.readouterr()
    resumed = train(cfg, run.root, progress=False)
    said = capsys.readouterr().out
    assert all(f"removed the unfinished write {p.relative_to(run.root)}" in said for p in killed_mid_write), said
    assert resumed.status == "finished" and not run.checkpoints.exists()
    assert not any(path.exists() for path in killed_mid_write)
    a, b = final_tensors(straight.run_dir), final_tensors(run.root)
    assert all(torch.equal(a[f][k], b[f][k]) for f in a for k in a[f])
    meta = run.read_metadata()
    assert meta["resumed_from"].endswith("epoch_2.pt")  # from the file the interrupt left unindexed


def _ablate(executed: Path, study: str, synth: str) -> list:
    return [sys.executable, "-m", "t2s", "ablate", "--scale", "micro", "--variants", "baseline", "text_finetuned",
            "--seeds", "0", "--study", study, "--executed-dir", str(executed), "--no-report",
            "-p", f"data_dir={synth}", "-p", "max_steps=6", "-p", "bt_train_frames=400", "-p", "bt_epochs=2"]


def _interrupt_when(command: list, moment, timeout: float = 240.0, expect: tuple = (0, 1, 130)) -> int:
    """Start `command` in its own process group; when `moment()` is true, send SIGINT twice (Ctrl-C, then Ctrl-C
    again a moment later), as a terminal does to its foreground group; the exit code: 130 (stopped by the Ctrl-C) or
    0/1 where the command ended on its own between the moment and the signal (`expect`: the codes allowed)."""
    process = subprocess.Popen(command, cwd=PROJECT_ROOT, start_new_session=True, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + timeout
    while not moment() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert process.poll() is None, "the study ended before the moment came:\n" + process.stdout.read()
    try:  # how the command treated SIGINT when it was sent (masks in hex: bit 1 is SIGINT), for a failure's message
        signals = [ln for ln in Path(f"/proc/{process.pid}/status").read_text().splitlines() if ln.startswith("Sig")]
    except OSError:
        signals = []
    os.killpg(process.pid, signal.SIGINT)
    time.sleep(0.3)
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGINT)
    out, _ = process.communicate(timeout=timeout)
    assert process.returncode in expect, f"exit {process.returncode}; at the first SIGINT {signals}:\n{out}"
    return process.returncode


def _phase(study: Path, phase: str, done: int = 0) -> bool:
    for progress in study.glob("*/progress.json"):
        try:
            record = json.loads(progress.read_text())
        except (OSError, ValueError):
            continue
        if record.get("phase") == phase and (record.get("done") or 0) >= done:
            return True
    return False


@pytest.mark.usefixtures("no_metric_weights")
def test_a_study_interrupted_twice_at_each_moment_and_run_again_equals_the_uninterrupted_study(tmp_path):
    """Ctrl-C twice during the imports, during training, and during the evaluation, the same command run again after
    each: the study then holds what an uninterrupted one holds (equal final weights and evaluation rows), every run
    "finished", no failure recorded, no checkpoint or unfinished write left."""
    synth = str(tmp_path / "synthsign")
    executed = tmp_path / "executed"
    reference = subprocess.run(_ablate(executed, "straight", synth), cwd=PROJECT_ROOT, capture_output=True, text=True)
    assert reference.returncode == 0, reference.stdout + reference.stderr
    study = executed / "cut"
    command = _ablate(executed, "cut", synth)
    started = time.monotonic()
    _interrupt_when(command, lambda: time.monotonic() - started > 1.0, expect=(130,))  # python is still importing
    _interrupt_when(command, lambda: _phase(study, "training", done=2))
    statuses = {p.parent.name: json.loads(p.read_text()).get("status") for p in study.glob("*/metadata.json")}
    assert statuses and set(statuses.values()) <= {"interrupted", "finished"}, statuses  # never "failed"
    _interrupt_when(command, lambda: _phase(study, "evaluating"))
    again = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True)
    assert again.returncode == 0, again.stdout + again.stderr
    for name in ("baseline-seed0", "text_finetuned-seed0"):
        assert RunDir(study / name).complete
        assert_same_run(executed / "straight" / name, study / name)
    assert leftovers(study) == []
