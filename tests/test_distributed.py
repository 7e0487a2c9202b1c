"""Data-parallel training (accelerate, DDP) on this CPU: two processes with the gloo backend against one process
with the same global batch. The two-process side runs under torchrun, as a user would launch it; this file is also
the worker script of the gradient test (`__main__` at the bottom)."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import read_csv  # tests/ is on sys.path: pytest's rootdir, or this file's folder when run as a script

import t2s
from t2s.config import load_config
from t2s.engine.checkpoint import list_checkpoints, load_checkpoint
from t2s.engine.launch import free_port
from t2s.engine.step import EpochSampler
from t2s.engine.train import Trainer
from t2s.rundir import RunDir

ROOT = Path(__file__).resolve().parent.parent

# the gradient test: a trainable text encoder (DDP-wrapped too), accumulation over 2 micro-batches, caption dropout
GRAD_OVERRIDES = {"gradient_accumulation_steps": 2, "cond_drop_prob": 0.5, "max_steps": 2}
# the run test: a few dozen steps over three epochs, samples mid-run, checkpoints every epoch
# keep_optimizer_state: the checkpoints a two-process run writes are checked after it finished
RUN_OVERRIDES = {"max_steps": 30, "num_epochs": 3, "log_every": 2, "sample_every": 15, "save_every": 1,
                 "keep_optimizer_state": True}


def torchrun(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """Two processes on this CPU (gloo), rendezvous on a free local port."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), *args]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"torchrun failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


def first_step_gradients(cfg, run_dir: Path, steps: int) -> dict:
    """Train `steps` optimizer steps; the gradients the optimizer saw at the first one (after the all-reduce and
    clipping): every denoiser parameter and the text encoder's last layer. The denoiser's zero-initialized output
    layers would leave every other gradient zero at the first step, so all its weights get the same small
    perturbation first (same generator on every rank and in the single process)."""
    trainer = Trainer(cfg, run_dir, progress=False)
    trainer.run.make()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in trainer.engine.model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    named = {f"denoiser.{n}": p for n, p in trainer.engine.model.named_parameters()}
    text = trainer.engine.accelerator.unwrap_model(trainer.engine.text)
    layers = max(int(n.split(".")[2]) for n, _ in text.model.named_parameters() if n.startswith("encoder.layer."))
    named.update({f"text.{n}": p for n, p in text.model.named_parameters() if n.startswith(f"encoder.layer.{layers}.")})
    seen: dict = {}

    def record(_optimizer, _args, _kwargs):
        if not seen:
            seen.update({n: p.grad.detach().clone() for n, p in named.items() if p.grad is not None})

    trainer.engine.optimizer.optimizer.register_step_pre_hook(record)
    trainer.fit(stop_after=steps)
    return {"grads": seen, "world_size": trainer.engine.world_size, "text_wrapper": type(trainer.engine.text).__name__,
            "denoiser_wrapper": type(trainer.engine.denoiser).__name__}


# --------------------------------------------------------------------------------------------- sharding
@pytest.mark.parametrize("world_size", [2, 3])
def test_ranks_split_each_global_micro_batch_of_the_single_process_order(world_size):
    b, n, micro = 2, 50, 7  # 7 global micro-batches; resume position: after 3 of them
    length, start = micro * b * world_size, 3 * b * world_size
    one = EpochSampler(n, seed=5, epoch=2, length=length, start=start).indices
    ranks = [EpochSampler(n, 5, 2, length, start, batch_size=b, rank=r, world_size=world_size).indices
             for r in range(world_size)]
    assert all(len(r) == len(one) // world_size for r in ranks)
    for k in range(micro - 3):  # global micro-batch k = rank 0's k-th batch + rank 1's k-th batch + ...
        together = sum((r[k * b:(k + 1) * b] for r in ranks), [])
        assert together == one[k * b * world_size:(k + 1) * b * world_size]


# --------------------------------------------------------------------------------------------- acceptance
def test_two_processes_first_step_gradients_equal_one_process_with_the_global_batch(tmp_path):
    """Two processes x batch 1 and one process x batch 2 (both with accumulation 2): same samples, noise,
    timesteps and caption dropout, so the first optimizer step's gradients agree to float rounding."""
    synth = str(tmp_path / "synthsign")
    single = first_step_gradients(load_config("text_finetuned", "micro", {"data_dir": synth, "batch_size": 2, **GRAD_OVERRIDES}),
                                  tmp_path / "single", steps=2)
    overrides = {"data_dir": synth, "batch_size": 1, **GRAD_OVERRIDES}
    torchrun(__file__, str(tmp_path / "two"), json.dumps(overrides))
    ranks = [torch.load(tmp_path / "two" / f"grads_rank{r}.pt", weights_only=True) for r in (0, 1)]

    assert single["world_size"] == 1 and all(r["world_size"] == 2 for r in ranks)
    assert ranks[0]["denoiser_wrapper"] == ranks[0]["text_wrapper"] == "DistributedDataParallel"
    expected = single["grads"]
    assert any(k.startswith("text.") for k in expected) and len(expected) > 20
    for rank in ranks:
        assert rank["grads"].keys() == expected.keys()
        for name, grad in expected.items():
            assert grad.abs().sum() > 0, name
            torch.testing.assert_close(rank["grads"][name], grad, rtol=1e-4, atol=1e-7, msg=lambda m, n=name: f"{n}: {m}")
    for name in expected:  # the all-reduce leaves the same gradients on both ranks
        assert torch.equal(ranks[0]["grads"][name], ranks[1]["grads"][name]), name


def test_two_process_run_matches_one_process_and_writes_its_run_directory_once(tmp_path):
    """A micro run (30 steps) under `torchrun -m t2s train`: two processes x batch 1 against one process x batch 2.

    Tolerance: both runs see the same global batches, noise, timesteps and dropout, and the denoiser has no batch
    statistics (group norm), so they are the same computation up to float summation order (an all-reduce of two
    half-batch gradients against one batch mean; the measured gap is ~1e-7). Relative 1e-3 allows for that rounding
    growing over 30 Adam steps, and is far below what training moves the held-out loss (checked below)."""
    synth = str(tmp_path / "synthsign")
    one = t2s.train(load_config("baseline", "micro", {"data_dir": synth, "batch_size": 2, **RUN_OVERRIDES}),
                    tmp_path / "one", progress=False)
    assert one.status == "finished"
    two_dir = tmp_path / "two"
    params = [a for k, v in {"data_dir": synth, "batch_size": 1, **RUN_OVERRIDES}.items() for a in ("-p", f"{k}={v}")]
    proc = torchrun("-m", "t2s", "train", "--params", "params/baseline.yaml", "--scale", "micro", *params,
                    "--run-dir", str(two_dir), "--no-progress")
    assert proc.stdout.count(f"finished: {two_dir}") == 1  # one process speaks

    # the held-out loss and the logged (rank-mean) training loss of every step match the single process
    a, b = json.loads(RunDir(one.run_dir).summary.read_text()), json.loads(RunDir(two_dir).summary.read_text())
    for key in ("val_loss_raw", "val_loss_ema"):
        assert b[key] == pytest.approx(a[key], rel=1e-3), key
        assert abs(a[key] - a["val_loss_step0"]) > 10 * 1e-3 * a[key]  # training moved it far more than the tolerance
    one_rows, two_rows = read_csv(RunDir(one.run_dir).training_csv), read_csv(RunDir(two_dir).training_csv)
    for r1, r2 in zip(one_rows, two_rows):
        assert float(r2["loss"]) == pytest.approx(float(r1["loss"]), rel=1e-3), r1["step"]

    # written once, complete
    run = RunDir(two_dir)
    meta = json.loads(run.metadata.read_text())
    assert meta["status"] == "finished" and meta["world_size"] == 2 and meta["effective_batch_size"] == 2
    assert b["world_size"] == 2 and b["effective_batch_size"] == 2 and b["steps"] == 30
    assert [int(r["step"]) for r in two_rows] == list(range(1, 31))
    val_steps = [int(r["step"]) for r in read_csv(run.validation_csv)]
    assert val_steps == [int(r["step"]) for r in read_csv(RunDir(one.run_dir).validation_csv)] == [0, 10, 20, 30]
    mem_steps = [int(r["step"]) for r in read_csv(run.memory_csv)]
    assert mem_steps == sorted(set(mem_steps)) and mem_steps[-1] == 30
    assert len(list(run.tensorboard.glob("events.out.tfevents.*"))) == 1
    samples = json.loads((run.samples / "samples.json").read_text())
    assert sorted((s["step"], s["file"]) for s in samples) == sorted({(s["step"], s["file"]) for s in samples})
    assert {s["step"] for s in samples} == {15, 30} and all((run.samples / s["file"]).is_file() for s in samples)
    index = json.loads((run.checkpoints / "index.json").read_text())
    assert [e["step"] for e in index] == [20, 30] and sorted(p.name for p in run.checkpoints.iterdir()) == sorted(
        ["index.json"] + [e["file"] for e in index])
    for entry in index:
        assert hashlib.sha256((run.checkpoints / entry["file"]).read_bytes()).hexdigest() == entry["sha256"]
    last = load_checkpoint(run.checkpoints / index[-1]["file"])
    assert last["world_size"] == 2 and last["step"] == 30
    assert sorted(p.name for p in run.weights.iterdir()) == ["denoiser.safetensors", "denoiser_ema.safetensors"]
    assert not list(two_dir.rglob(".*.tmp"))  # no half-written file left behind


def test_resume_with_another_world_size_maps_the_position_by_global_samples(tmp_path):
    """A checkpoint written by 2 processes (batch 2 each: 4 clips per step) resumed by 1 process (2 per step):
    step and epoch are kept, 3 steps x 4 = 12 clips consumed -> 6 micro-batches of 2; a warning and a metadata note."""
    cfg = load_config("baseline", "micro", {"data_dir": str(tmp_path / "synthsign"), "max_steps": 20, "num_epochs": 3})
    t2s.train(cfg, tmp_path / "run", progress=False, stop_after=3)
    run = RunDir(tmp_path / "run")
    state = load_checkpoint(run.checkpoints / list_checkpoints(run)[-1]["file"])
    assert (state["world_size"], state["step"], state["micro"]) == (1, 3, 3)
    state["world_size"] = 2  # as if written by two processes
    trainer = Trainer(cfg, run.root, progress=False)
    with pytest.warns(RuntimeWarning, match="resumed with 1 processes from a checkpoint written by 2"):
        trainer.resume(run.checkpoints / "step_3.pt", state)
    assert (trainer.engine.step, trainer.engine.epoch, trainer.engine.micro) == (3, 0, 6)
    (change,) = json.loads(run.metadata.read_text())["world_size_changes"]
    assert change["from_effective_batch_size"] == 4 and change["to_effective_batch_size"] == 2
    assert change["samples_seen_again"] == 0 and change["step"] == 3
    assert not trainer.fit(stop_after=5).get("signal") and trainer.engine.step == 5  # and it trains on


# --------------------------------------------------------------------------------------------- the worker
if __name__ == "__main__":  # torchrun tests/test_distributed.py OUT_DIR OVERRIDES_JSON, on every rank
    out, overrides = Path(sys.argv[1]), json.loads(sys.argv[2])
    result = first_step_gradients(load_config("text_finetuned", "micro", overrides), out, steps=2)
    torch.save(result, out / f"grads_rank{int(os.environ['RANK'])}.pt")
    torch.distributed.destroy_process_group()
