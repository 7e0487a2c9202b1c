"""The reliability suite: a micro run killed (SIGKILL, no warning) at random steps, resumed each time, ends with
exactly the weights of an uninterrupted run of the same seed; a tiny run at its default precision stopped by SIGTERM
and resumed ends bit for bit where the uninterrupted one does."""
from __future__ import annotations

import csv
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

import t2s
from t2s.config import load_config
from t2s.engine.checkpoint import latest_good_checkpoint, load_run_weights
from t2s.rundir import RunDir

ROOT = Path(__file__).resolve().parent.parent
OVERRIDES = {"max_steps": 30, "num_epochs": 5, "save_every": 1, "log_every": 1, "keep_checkpoints": 2}


def logged_steps(run_dir: Path) -> int:
    path = RunDir(run_dir).training_csv
    if not path.exists():
        return 0
    with open(path, newline="", encoding="utf-8") as fh:
        return len(list(csv.DictReader(fh)))


def launch(run_dir: Path, synth_dir: str) -> subprocess.Popen:
    code = (
        "import sys, t2s; cfg = t2s.load_config('baseline', 'micro', dict(data_dir=sys.argv[2], **%r)); "
        "t2s.train(cfg, sys.argv[1], progress=False)" % OVERRIDES
    )
    return subprocess.Popen([sys.executable, "-c", code, str(run_dir), synth_dir], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def test_killed_at_random_steps_resumes_to_the_uninterrupted_weights(tmp_path):
    synth_dir = str(tmp_path / "synthsign")
    cfg = load_config("baseline", "micro", {"data_dir": synth_dir, **OVERRIDES})
    assert t2s.train(cfg, tmp_path / "straight", progress=False).status == "finished"

    rng = random.Random(1234)
    kill_after = sorted(rng.sample(range(2, 29), 5))  # five kill points, in logged optimizer steps
    run_dir = tmp_path / "killed"
    kills = 0
    for target in kill_after:
        proc = launch(run_dir, synth_dir)
        deadline = time.time() + 180
        while logged_steps(run_dir) < target and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
        assert proc.returncode in (-signal.SIGKILL, 0), proc.stderr.read()
    assert kills >= 5, f"only {kills} of the runs were killed before they finished"
    final = launch(run_dir, synth_dir)
    assert final.wait(timeout=300) == 0, final.stderr.read()

    meta = json.loads(RunDir(run_dir).metadata.read_text())
    assert meta["status"] == "finished"
    a, b = load_run_weights(RunDir(tmp_path / "straight")), load_run_weights(RunDir(run_dir))  # the final weights
    assert a["step"] == b["step"] == 30
    for key in a["model"]:
        torch.testing.assert_close(b["model"][key], a["model"][key], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(b["ema"][key], a["ema"][key], rtol=1e-5, atol=1e-6)
    with open(RunDir(run_dir).training_csv, newline="", encoding="utf-8") as fh:
        assert [int(r["step"]) for r in csv.DictReader(fh)] == list(range(1, 31))


# the tiny scale's model, data and precision; fewer validation clips and sampling steps (neither touches training)
TINY_OVERRIDES = {"max_steps": 16, "log_every": 1, "val_max_clips": 4, "num_inference_steps": 2}


def test_tiny_run_stopped_by_sigterm_resumes_bit_identical(tmp_path, monkeypatch):
    """Tiny defaults (bf16 autocast where the CPU has native bf16): SIGTERM inside step 8 of 16, resume in a fresh
    trainer (new text encoder, empty caption cache), and the losses, weights and EMA equal the straight run's bit for
    bit. The resumed run's captions are first encoded in other company than in the straight run (after step 8, and
    without the step-0 validation), so a caption's cached states must not depend on the captions beside it."""
    from t2s.engine.runtime import resolve_mixed_precision
    from t2s.engine.step import Engine

    cfg = load_config("baseline", "tiny", {"data_dir": str(tmp_path / "synthsign"), **TINY_OVERRIDES})
    straight = t2s.train(cfg, tmp_path / "straight", progress=False)
    original = Engine.micro_step

    def sigterm_in_step_8(self, *args):
        out = original(self, *args)
        if self.step == 7 and self.accelerator.sync_gradients:
            os.kill(os.getpid(), signal.SIGTERM)  # the trainer finishes optimizer step 8, checkpoints, stops
        return out

    monkeypatch.setattr(Engine, "micro_step", sigterm_in_step_8)
    assert t2s.train(cfg, tmp_path / "resumed", progress=False).status == "interrupted"
    monkeypatch.setattr(Engine, "micro_step", original)
    meta = json.loads(RunDir(tmp_path / "resumed").metadata.read_text())
    assert "SIGTERM" in meta["error"] and latest_good_checkpoint(RunDir(tmp_path / "resumed"))[1]["step"] == 8
    resumed = t2s.train(cfg, tmp_path / "resumed", progress=False)
    assert resumed.status == "finished"
    assert meta["mixed_precision"] == resolve_mixed_precision("auto")  # the tiny scale's own precision

    def losses(run_dir):
        with open(RunDir(run_dir).training_csv, newline="", encoding="utf-8") as fh:
            return [(r["step"], r["loss"]) for r in csv.DictReader(fh)]

    assert losses(resumed.run_dir) == losses(straight.run_dir)
    a, b = load_run_weights(RunDir(straight.run_dir)), load_run_weights(RunDir(resumed.run_dir))  # the final weights
    assert a["step"] == b["step"] == 16
    for key in a["model"]:
        assert torch.equal(b["model"][key], a["model"][key]), key
        assert torch.equal(b["ema"][key], a["ema"][key]), key
    assert json.loads(RunDir(resumed.run_dir).summary.read_text())["ema_updates"] == 16
