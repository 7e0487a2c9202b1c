"""What a training run writes as it goes (main process only), and its summary: the per-step CSV rows and TensorBoard
scalars, flushed once per log window (the losses stay on the device in between: one host-device sync per window);
the validation rows; the sample GIFs and their index; progress.json (what the run is doing now, which `ablate`
shows live); summary.json.

File names and columns come from `t2s.rundir`; the trainer decides when to write, this module how.
"""
from __future__ import annotations

import csv
import math
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Optional

import pandas as pd
import torch
from torch.utils.tensorboard import SummaryWriter

from t2s.ema import EMA, horizon_steps, retained_mass
from t2s.engine.checkpoint import list_checkpoints
from t2s.engine.runtime import machine_facts, memory_gb, now
from t2s.pipeline import write_gif
from t2s.rundir import (
    MEMORY_COLUMNS,
    TRAINING_COLUMNS,
    VALIDATION_COLUMNS,
    RunDir,
    append_rows,
    atomic_write_json,
    read_json,
)


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the run stopped and its last good checkpoint is intact."""


def check_finite(losses: list[float], pending: list[dict], run: RunDir) -> None:
    """Raise NonFiniteLossError naming the first optimizer step whose loss is NaN or infinite."""
    for p, value in zip(pending, losses):
        if not math.isfinite(value):
            good = list_checkpoints(run)
            where = (f"the last good checkpoint, {run.checkpoints / good[-1]['file']}, is intact" if good
                     else "no checkpoint had been written yet")
            raise NonFiniteLossError(
                f"the training loss became {value} at optimizer step {p['step']} (epoch {p['epoch'] + 1}); the run "
                f"stopped and {where}. Try a lower learning_rate, mixed_precision 'no' or a smaller max_grad_norm."
            )


class LogWindow:
    """The optimizer steps since the last log point: their records (losses still on the device) and wall time."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.records: list[dict] = []
        self.start = time.perf_counter()

    def add(self, record: dict) -> None:
        self.records.append(record)

    def take(self) -> tuple[list[dict], float]:
        """(the records, seconds since the window opened); a new window opens."""
        records, seconds = self.records, time.perf_counter() - self.start
        self.reset()
        return records, seconds


def record_start(run: RunDir, meta: dict, resumed_from: Optional[Path], trainer) -> None:
    """metadata.json at the start of a run: status, times, machine, versions, parameters, split and step plan, and the
    training captions longer than the text encoder reads (`captions_cut`, with a warning: it reads their start)."""
    text = trainer.accelerator.unwrap_model(trainer.text)
    cut = text.cut_captions(r.caption for r in trainer.train_set.records)
    if cut:
        warnings.warn(f"{len(cut)} training captions are longer than the text encoder's {text.max_length} tokens "
                      f"(max_text_length) and are cut (the longest: {max(c['tokens'] for c in cut)} tokens); "
                      f"metadata.json's captions_cut lists them", stacklevel=2)
    run.update_metadata(captions_cut=cut,
        status="running", error=None, start_time=meta.get("start_time") or now(), end_time=None,
        resumed_from=str(resumed_from) if resumed_from else None, **machine_facts(trainer.device),
        parameters=trainer.parameter_counts(), split=trainer.split, steps_per_epoch=trainer.steps_per_epoch,
        total_steps=trainer.total_steps, effective_batch_size=trainer.global_batch_size,
        world_size=trainer.world_size, mixed_precision=trainer.accelerator.mixed_precision,
        torch_threads=torch.get_num_threads(),
    )


class RunLog:
    """The writers of one run directory during training; every method is a no-op off the main process."""

    def __init__(self, run: RunDir, is_main: bool, device: torch.device, tensorboard: bool = True,
                 trackers: Optional[Callable[[dict, int], None]] = None):
        """`tensorboard`: write the run's tensorboard/ folder; `trackers`: a callable(values, step) that logs the same
        scalars elsewhere (accelerate's `Accelerator.log` over its trackers: MLflow, W&B, Aim)."""
        self.run, self.is_main, self.device = run, is_main, device
        self.tensorboard, self.trackers = tensorboard, trackers
        self.writer: Optional[SummaryWriter] = None
        self.last_progress: Optional[dict] = None

    def scalars(self, values: dict, step: int) -> None:
        """Scalars {tag: value} at `step` to TensorBoard and the other trackers (None values are skipped)."""
        values = {k: float(v) for k, v in values.items() if v is not None}
        if self.writer:
            for tag, value in values.items():
                self.writer.add_scalar(tag, value, step)
        if self.trackers is not None and self.is_main and values:
            self.trackers(values, step)

    def progress(self, phase: str, step: int, total_steps: int, **fields) -> None:
        """progress.json: `phase` at optimizer step `step` of `total_steps` (loss, rate in steps/s, clips_per_s, epoch
        from the last log window)."""
        if self.is_main:
            self.last_progress = dict(fields, phase=phase, step=step, total_steps=total_steps)
            self.run.write_progress(phase, step, total_steps, "step", **fields)

    @contextmanager
    def phase(self, phase: str, step: int, total_steps: int):
        """progress.json says `phase` (validating, sampling) while the block runs, then what it said before."""
        before = self.last_progress
        self.progress(phase, step, total_steps, **{k: v for k, v in (before or {}).items()
                                                   if k not in ("phase", "step", "total_steps")})
        try:
            yield
        finally:
            if before is not None:
                self.progress(**before)

    def open(self, step: int) -> None:
        """TensorBoard events from `step` on (a resumed run drops the events logged after its checkpoint)."""
        if self.is_main and self.tensorboard:
            self.writer = SummaryWriter(str(self.run.tensorboard), purge_step=step if step else None)

    def close(self) -> None:
        if self.writer:
            self.writer.close()

    def training_rows(self, pending: list[dict], losses: list[float], clips_per_step: int, seconds: float) -> Optional[float]:
        """One CSV row and TensorBoard scalars per optimizer step of the window, one memory row; returns clips/s."""
        if not self.is_main:
            return None
        step_time = seconds / max(1, len(pending))
        clips_per_s = clips_per_step / step_time if step_time > 0 else None
        mem = memory_gb(self.device)
        norms = [float(p["grad_norm"]) if p["grad_norm"] is not None else None for p in pending]
        stamp, rows = now(), []
        for p, value, norm in zip(pending, losses, norms):
            rows.append({**p, "loss": value, "grad_norm": norm, "step_time_s": step_time, "clips_per_s": clips_per_s,
                         "peak_memory_gb": mem["peak_gb"], "timestamp": stamp})
            self.scalars({"train/loss": value, "train/lr": p["lr"], "train/grad_norm": norm,
                          "train/ema_decay": p["ema_decay"]}, p["step"])
        self.scalars({"perf/clips_per_s": clips_per_s or 0.0, "perf/peak_memory_gb": mem["peak_gb"]}, pending[-1]["step"])
        append_rows(self.run.training_csv, TRAINING_COLUMNS, rows)
        append_rows(self.run.memory_csv, MEMORY_COLUMNS,
                    [{"step": pending[-1]["step"], "device": str(self.device), **mem, "timestamp": stamp}])
        return clips_per_s

    def validation_row(self, epoch: int, step: int, raw: float, ema: Optional[float]) -> dict:
        row = {"epoch": epoch, "step": step, "val_loss_raw": raw, "val_loss_ema": ema, "timestamp": now()}
        append_rows(self.run.validation_csv, VALIDATION_COLUMNS, [row])
        self.scalars({"val/loss_raw": raw, "val/loss_ema": ema}, step)
        return row

    def last_validation(self) -> Optional[dict]:
        """The last row of the validation CSV, numbers as floats; None when there is none."""
        try:
            with open(self.run.validation_csv, newline="", encoding="utf-8") as fh:
                row = list(csv.DictReader(fh))[-1]
        except (OSError, IndexError):
            return None
        return {k: (float(v) if v not in ("", None) and k != "timestamp" else (None if v == "" else v)) for k, v in row.items()}

    def samples(self, step: int, prompts: list[str], clips: torch.Tensor, weights: str) -> list[dict]:
        """samples/step<S>_<i>.gif for each prompt's clip, and their entries in samples.json (replacing the step's)."""
        index_path = self.run.samples_json
        index = [e for e in (read_json(index_path, []) or []) if e.get("step") != step]
        new = []
        for i, (prompt, clip) in enumerate(zip(prompts, clips)):
            path = self.run.sample_gif(step, i)
            name = path.name
            write_gif(path, clip)
            new.append({"file": name, "prompt": prompt, "step": step, "weights": weights})
            if self.writer:
                self.writer.add_images(f"samples/{i}", (clip.permute(1, 0, 2, 3).float().cpu() + 1) / 2, step)
        atomic_write_json(index_path, index + new)
        return new


# --------------------------------------------------------------------------------------------- summary.json
def summarize(run: RunDir, final_val: dict, *, epochs: int, train_seconds: float, clips_per_step: int,
              world_size: int, use_ema: bool, denoiser_parameters: int, ema: Optional[EMA], step: int) -> dict:
    """summary.json: steps, losses, time, memory, throughput, validation losses raw and EMA, and the EMA's horizon."""
    df = pd.read_csv(run.training_csv)
    mem = pd.read_csv(run.memory_csv) if run.memory_csv.exists() else None
    val = pd.read_csv(run.validation_csv)
    steps = int(df["step"].max())
    return {
        "steps": steps,
        "epochs": epochs,
        "final_loss": float(df["loss"].iloc[-1]),
        "min_loss": float(df["loss"].min()),
        "mean_loss": float(df["loss"].mean()),
        "train_time_hours": train_seconds / 3600,
        "peak_memory_gb": float(mem["peak_gb"].max()) if mem is not None else None,
        "mean_memory_gb": float(mem["allocated_gb"].mean()) if mem is not None else None,
        "clips_per_s": steps * clips_per_step / train_seconds if train_seconds else None,
        "world_size": world_size,
        "effective_batch_size": clips_per_step,  # batch_size x gradient_accumulation_steps x world_size
        "val_loss_step0": float(val["val_loss_raw"].iloc[0]),
        "val_loss_raw": final_val["val_loss_raw"],
        "val_loss_ema": final_val["val_loss_ema"] if use_ema else None,
        "num_parameters_millions": denoiser_parameters / 1e6,
        **ema_summary(ema, step),
    }


def ema_summary(ema: Optional[EMA], step: int) -> dict:
    """What the EMA weights average: its update count, its per-step decay and horizon (configured, and where the
    warm-up had brought them by the end), and the share of its mass on the weights of the first half of training."""
    keys = ("ema_updates", "ema_update_every", "ema_decay_per_step", "ema_decay_per_update", "ema_horizon_steps",
            "ema_final_decay_per_step", "ema_final_horizon_steps", "ema_mass_first_half")
    if ema is None:
        return dict.fromkeys(keys)
    last = ema.updates * ema.update_every  # the last optimizer step folded in
    final = ema.last_step_decay if ema.updates else None
    half = step // 2 // ema.update_every * ema.update_every  # the last update in the first half
    return dict(zip(keys, (
        ema.updates, ema.update_every, ema.decay, ema.decay ** ema.update_every, horizon_steps(ema.decay),
        final, horizon_steps(final) if final is not None else None,
        retained_mass(half, last, ema.decay, ema.warmup) if ema.updates else None,
    )))
