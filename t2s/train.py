"""The training loop: `Trainer` runs the engine's optimizer steps (`t2s.engine.Engine`) into a run directory, in
epochs, with log points, validation, samples, checkpoints, resume, the out-of-memory fallback and stop signals; and
`train()` runs one variant into a run directory (resuming an unfinished one, or deriving it from a run whose training
it shares, `t2s.share`).

Reproducibility: an interrupted run resumed from its checkpoint follows the same trajectory as an uninterrupted one
(the engine's data order and generators are position-determined and checkpointed).

Data parallel (`accelerate launch -m t2s.train` or `torchrun -m t2s.train`, see `t2s.launch`, which owns the
multi-process launcher `train_processes` and this command line): every process runs `train`; only the main process
writes the run directory.

Imports: config, engine, checkpoint, pipeline (the samples), rundir, runlog, share, runtime. Imported by launch,
ablate and the command line.
"""
from __future__ import annotations

import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import torch
from accelerate import PartialState
from tqdm.auto import tqdm

from . import share
from .checkpoint import (find_resume_point, list_checkpoints, load_checkpoint, prune_checkpoints, restore,
                         save_checkpoint, write_final_weights)
from .config import Config, from_dict
from .engine import Engine
from .pipeline import TextToSignPipeline
from .rundir import RunDir, atomic_write_json, read_json, truncate_rows_after
from .runlog import LogWindow, RunLog, check_finite, record_start, summarize
from .runtime import StopSignals, eval_mode, finish_trackers, now, size_threads, start_trackers, use_cpu


@dataclass
class RunResult:
    run_dir: Path
    summary: dict
    status: str


# --------------------------------------------------------------------------------------------- the run
class Trainer(Engine):
    """One run of the engine's steps into a run directory: `fit()` is the loop (epochs of optimizer steps, logs at
    log points, samples, validation and checkpoints at epoch ends), with resume, the out-of-memory fallback and stop
    signals. Built by `train()`; tests drive it directly too."""

    def __init__(self, cfg: Config, run_dir: Union[str, Path], progress: bool = True, cpu: bool = False):
        super().__init__(cfg, cpu)
        self.run, self.progress = RunDir(run_dir), progress
        self.log = RunLog(self.run, self.is_main, self.device, tensorboard="tensorboard" in cfg.trackers,
                          trackers=self.accelerator.log if self.accelerator.log_with else None)
        self.window = LogWindow()
        self.signals = StopSignals(lambda name: print(
            f"\n{name} received: finishing optimizer step {self.step + 1}, then writing a checkpoint."))
        self.oom_events: list[dict] = []

    # ------------------------------------------------------------------ the loop
    def fit(self, stop_after: Optional[int] = None) -> dict:
        """Train to total_steps (or `stop_after` steps, or a stop signal); the final validation row, or
        {stopped_at, signal} when stopped early with a checkpoint."""
        self.log.open(self.step)
        start_trackers(self.accelerator, self.cfg, self.run)
        self.log.progress("training", self.step, self.total_steps, epoch=self.epoch)
        if self.step == 0 and self.is_main and not self.run.validation_csv.exists():
            self.validate()  # the step-0 held-out loss, the reference the curve is read against
        bar = tqdm(total=self.total_steps, initial=self.step, disable=not (self.progress and self.is_main),
                   desc=self.cfg.run_name, unit="step")
        try:
            with self.signals.installed():
                stopped = self._epochs(bar, stop_after)
        finally:
            bar.close()
        if stopped:
            self.log.close()
            finish_trackers(self.accelerator)
            return {"stopped_at": self.step, "signal": self.signals.requested}
        if not self.is_main:
            return {}
        last = self.log.last_validation()
        final_val = last if last is not None and int(last["step"]) == self.step else self.validate()
        if self.step % self.cfg.sample_every:
            self.samples()
        self.log.progress("trained", self.step, self.total_steps, epoch=self.epoch)
        self.log.close()
        finish_trackers(self.accelerator)
        return final_val

    def _epochs(self, bar, stop_after: Optional[int]) -> bool:
        """Epochs until total_steps; validation (and a checkpoint every save_every) at each epoch's end. True when
        stopped early (stop_after or a signal)."""
        stopped = False
        self.denoiser.train()
        self.window.reset()
        while self.step < self.total_steps and not stopped:
            micro_per_epoch = self.steps_per_epoch * self.cfg.gradient_accumulation_steps
            stopped, oom = self._epoch(bar, stop_after)
            if oom is not None:
                self.halve_micro_batch(oom)
                continue
            if self.micro >= micro_per_epoch:  # a whole epoch done
                self.epoch, self.micro = self.epoch + 1, 0
                self.validate()
                if self.epoch % self.cfg.save_every == 0:
                    self.checkpoint(f"epoch_{self.epoch}.pt")
            if stopped or self.step >= self.total_steps:
                self.checkpoint_if_new()
        return stopped

    def _epoch(self, bar, stop_after: Optional[int]) -> tuple[bool, Optional[torch.OutOfMemoryError]]:
        """The optimizer steps left in this epoch, logs flushed at log points and samples drawn every sample_every
        steps; (stopped early, the out-of-memory error that ended it or None)."""
        cfg = self.cfg
        batches = iter(self.epoch_loader())
        t0 = time.perf_counter()
        stopped, oom = False, None
        for _ in range(self.steps_per_epoch - self.micro // cfg.gradient_accumulation_steps):
            try:
                self.window.add(self.train_step(batches))
            except torch.OutOfMemoryError as exc:
                oom = exc
                break
            bar.update(1)
            log_point = self.step % cfg.log_every == 0 or self.step >= self.total_steps
            if log_point:
                self.train_seconds += time.perf_counter() - t0
                t0 = time.perf_counter()
                self.flush_logs(bar)
            if self.step % cfg.sample_every == 0:
                self.samples()
            if self.step >= self.total_steps or (stop_after is not None and self.step >= stop_after) or self.stop_now(log_point):
                stopped = self.step < self.total_steps
                break
        self.train_seconds += time.perf_counter() - t0
        self.flush_logs(bar)
        return stopped, oom

    def flush_logs(self, bar) -> None:
        """Read the window's losses (one host-device sync per log window), check them, write the rows.

        Several processes: the logged loss is the mean over ranks (one all-reduce per log window, on every rank);
        the gradient norm is already global (taken after the all-reduce); the main process writes."""
        pending, seconds = self.window.take()
        if not pending:
            return
        losses = torch.stack([p["loss"] for p in pending]).float()
        if self.world_size > 1:
            losses = self.accelerator.reduce(losses, "mean")
        losses = losses.cpu().tolist()
        check_finite(losses, pending, self.run)
        clips_per_s = self.log.training_rows(pending, losses, self.global_batch_size, seconds)
        self.log.progress("training", self.step, self.total_steps, loss=losses[-1], clips_per_s=clips_per_s,
                          rate=len(pending) / seconds if seconds > 0 else None, epoch=self.epoch)
        if self.is_main:
            bar.set_postfix(loss=f"{losses[-1]:.4f}", lr=f"{pending[-1]['lr']:.2e}", clips_s=f"{clips_per_s or 0:.1f}")

    def stop_now(self, log_point: bool) -> bool:
        """Whether a signal asks to stop after this optimizer step. One process: at once. Several: the ranks agree
        at log points (one all-reduce where the losses are read anyway), so that all stop after the same step."""
        if self.world_size == 1:
            return bool(self.signals.requested)
        if not log_point:
            return False
        asked = torch.tensor([1.0 if self.signals.requested else 0.0], device=self.device)
        if self.accelerator.reduce(asked, "sum").item() == 0:
            return False
        self.signals.requested = self.signals.requested or "a signal to another rank"
        return True

    # ------------------------------------------------------------------ validation and samples
    def validate(self) -> dict:
        """The held-out loss of the raw and EMA weights, one CSV row. Main process only: the weights are the same
        on every rank, and the others meet it again at the next gradient all-reduce."""
        if not self.is_main:
            return {}
        with self.log.phase("validating", self.step, self.total_steps):
            raw = self.held_out_loss()
            ema = None
            if self.ema:
                with self.ema.swapped():
                    ema = self.held_out_loss()
        return self.log.validation_row(self.epoch, self.step, raw, ema)

    @torch.no_grad()
    def samples(self) -> list[dict]:
        """Clips for the sample prompts through the pipeline (clip i from seed i, EMA weights when kept), written as
        GIFs (main process only). Sampling never touches training: the models go to eval mode and back (each
        submodule to its own mode) and the global RNG streams are forked, so a run trains the same whatever
        `sample_every`."""
        if not self.is_main:
            return []
        cfg, text = self.cfg, self.accelerator.unwrap_model(self.text)
        devices = [self.device] if self.device.type == "cuda" else []
        with eval_mode(self.model, text), torch.random.fork_rng(devices=devices), \
                self.ema.swapped() if self.ema else nullcontext(), \
                self.log.phase("sampling", self.step, self.total_steps):
            pipe = TextToSignPipeline.from_config(self.model, text, cfg)
            clips = pipe(cfg.sample_prompts, seeds=range(len(cfg.sample_prompts)), batch_size=cfg.eval_batch_size)
        return self.log.samples(self.step, cfg.sample_prompts, clips, "ema" if self.ema else "raw")

    # ------------------------------------------------------------------ checkpoints and resume
    def checkpoint(self, name: Optional[str] = None) -> Optional[Path]:
        """Written by the main process only (the weights, EMA and optimizer state are the same on every rank)."""
        if not self.is_main:
            return None
        return save_checkpoint(self.run, name or f"epoch_{self.epoch}.pt", self.state_dict(), self.cfg.keep_checkpoints)

    def checkpoint_if_new(self) -> None:
        """A checkpoint for the current step unless one exists: epoch_N.pt at an epoch's end, else step_S.pt."""
        if not self.is_main:
            return
        ckpts = list_checkpoints(self.run)
        if not ckpts or ckpts[-1]["step"] != self.step:
            self.checkpoint(f"epoch_{self.epoch}.pt" if self.micro == 0 else f"step_{self.step}.pt")

    def finish(self) -> None:
        """The run is finished: its final weights as safetensors (`checkpoint.write_final_weights`), metadata.json's
        status "finished" with their SHA-256, and only then the optimizer-state checkpoints pruned, unless
        `keep_optimizer_state` (main process only)."""
        if not self.is_main:
            return
        digests = write_final_weights(self.run, self.state_dict())
        self.run.update_metadata(status="finished", end_time=now(), final_weights=digests)
        if not self.cfg.keep_optimizer_state:
            prune_checkpoints(self.run)

    def resume(self, path: Path, state: Optional[dict] = None) -> None:
        """Continue from a checkpoint (`checkpoint.restore`); rows logged after its step are dropped."""
        change = restore(self, state if state is not None else load_checkpoint(path), path)
        if change and self.is_main:  # another world size: the run no longer follows an uninterrupted one
            warnings.warn(change["note"], RuntimeWarning, stacklevel=2)
            changes = self.run.read_metadata().get("world_size_changes") or []
            self.run.update_metadata(world_size_changes=changes + [change])
        if self.is_main:
            for csv_path in (self.run.training_csv, self.run.validation_csv, self.run.memory_csv):
                truncate_rows_after(csv_path, self.step)
            print(f"Resumed from {path} at optimizer step {self.step} (epoch {self.epoch + 1}).")

    def halve_micro_batch(self, error: BaseException) -> None:
        """Out of memory: halve the micro-batch, double accumulation (same effective batch), redo the current step."""
        cfg = self.cfg
        if self.world_size > 1:  # the other ranks are already waiting in the all-reduce: no way to redo the step
            raise RuntimeError(
                f"out of memory on rank {self.rank} at optimizer step {self.step + 1} ({error}); with several "
                f"processes the micro-batch is not halved automatically: resume with a smaller batch_size and a larger "
                f"gradient_accumulation_steps (same product), or -p gradient_checkpointing=true.") from error
        if cfg.batch_size == 1:
            raise RuntimeError(
                f"out of memory at optimizer step {self.step + 1} with batch_size 1 ({error}). Try fewer frames "
                f"(-p num_frames=8), a smaller image_size, -p gradient_checkpointing=true, or mixed_precision bf16/fp16."
            ) from error
        gas = cfg.gradient_accumulation_steps
        self.micro -= self.micro % gas  # micro-batches of the unfinished optimizer step: discarded, then redone
        for p in list(self.model.parameters()) + self.accelerator.unwrap_model(self.text).trainable_parameters():
            p.grad = None
        self.set_micro_batch(cfg.batch_size // 2, gas * 2)
        self.oom_events.append({"step": self.step, "batch_size": self.cfg.batch_size, "error": str(error).splitlines()[0],
                                "gradient_accumulation_steps": self.cfg.gradient_accumulation_steps})
        self.run.update_metadata(oom_fallbacks=self.oom_events)
        atomic_write_json(self.run.config, self.cfg.to_dict())
        print(f"Out of memory at optimizer step {self.step + 1}: continuing with batch_size {self.cfg.batch_size} x "
              f"gradient_accumulation_steps {self.cfg.gradient_accumulation_steps} (same effective batch "
              f"{self.cfg.effective_batch_size}).")
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


# --------------------------------------------------------------------------------------------- public API
def train(config: Config, run_dir: Union[str, Path], progress: bool = True, stop_after: Optional[int] = None,
          weights_from: Optional[Union[str, Path]] = None) -> RunResult:
    """Train one variant into `run_dir`; an unfinished run there is resumed from its latest checkpoint.

    `weights_from`: a finished run whose training this config shares (`t2s.share`: it differs only in keys that do
    not change training, e.g. `use_ema` false where that run kept an EMA); `run_dir` is then derived from it instead
    of trained, and says so in metadata.json. If that run cannot be shared (unfinished, another training config),
    the reason is printed and this run trains itself.

    `stop_after` ends the run after that many optimizer steps with a resumable checkpoint (status "interrupted"),
    as a pre-emption would; `train` again resumes it. Under `accelerate launch` or `torchrun` every process calls
    this (data parallel; the main process writes the run directory); each returns once the directory is complete.
    """
    if not isinstance(config, Config):
        config = from_dict(dict(config))
    shared = share.take_shared(config, RunDir(run_dir), RunDir(weights_from)) if weights_from is not None else None
    if shared is not None:
        return RunResult(RunDir(run_dir).root, shared, "finished")
    state = PartialState(cpu=use_cpu())  # joins the process group of a multi-process launch (a no-op alone)
    # the CPUs this process may use (affinity, cgroup quota, ablate's share), split among a launch's local processes
    size_threads(state.num_processes if state.device.type == "cpu" else 1)
    main, run = state.is_main_process, RunDir(run_dir)
    resume = find_resume_point(run, config)  # every process reads the same files...
    meta = run.read_metadata()
    state.wait_for_everyone()  # ...before the main process writes any
    if main:
        run.make()
        atomic_write_json(run.config, config.to_dict())
    trainer = Trainer(config, run_dir, progress=progress)
    if main:
        record_start(run, meta, resume[0] if resume else None, trainer)
    if resume:
        trainer.resume(*resume)
    elif main:  # a fresh start (perhaps after a crash before the first checkpoint): no rows from an earlier attempt
        for csv_path in (run.training_csv, run.validation_csv, run.memory_csv):
            csv_path.unlink(missing_ok=True)
    try:
        final_val = trainer.fit(stop_after=stop_after)
    except BaseException as exc:
        if main:
            status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
            run.update_metadata(status=status, error=f"{type(exc).__name__}: {exc}", end_time=now())
        raise
    if "stopped_at" in final_val:
        if main:
            why = f"{final_val['signal']} received" if final_val.get("signal") else "stopped on request"
            run.update_metadata(status="interrupted", error=why, end_time=now())
            print(f"{why}: checkpoint written at optimizer step {final_val['stopped_at']} in {run.checkpoints}; "
                  f"run the same command again to resume.")
        state.wait_for_everyone()
        return RunResult(run.root, {}, "interrupted")
    if main:
        atomic_write_json(run.summary, summarize(
            run, final_val, epochs=trainer.epoch + (trainer.micro > 0), train_seconds=trainer.train_seconds,
            clips_per_step=trainer.global_batch_size, world_size=trainer.world_size, use_ema=config.use_ema,
            denoiser_parameters=trainer.parameter_counts()["denoiser"], ema=trainer.ema, step=trainer.step))
        trainer.finish()
    state.wait_for_everyone()  # the others return once the run directory is complete
    return RunResult(run.root, read_json(run.summary, {}), "finished")


if __name__ == "__main__":  # python -m t2s.train: the command line of t2s.launch
    from t2s.launch import main

    raise SystemExit(main())
