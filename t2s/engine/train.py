"""The training loop, read top to bottom: `Trainer.fit` runs the engine's optimizer steps (`t2s.engine.step.Engine`)
into a run directory, epoch by epoch, with log points, samples, validation and checkpoints; `train()` runs one variant
into a run directory (resuming an unfinished one).

    fit:  validate at step 0 -> for each epoch: its optimizer steps (logs every log_every, samples every
          sample_every, a stop request ends it) -> validate, checkpoint every save_every -> final validation, samples

The rare paths are named helpers the loop calls: `halve_micro_batch` (out of memory: the same effective batch in
smaller micro-batches), `agree_to_stop` (a signal; several processes stop after the same step).

Reproducibility: an interrupted run resumed from its checkpoint follows the same trajectory as an uninterrupted one
(the engine's data order and generators are position-determined and checkpointed). Data parallel (`accelerate launch
-m t2s train` or `torchrun -m t2s train`; from Python `t2s.engine.launch.train_processes`): every process runs
`train`; only the main process writes the run directory.
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

from t2s.config import Config, check_trackers, from_dict
from t2s.engine.checkpoint import (
    find_resume_point,
    list_checkpoints,
    load_checkpoint,
    prune_checkpoints,
    restore,
    save_checkpoint,
    write_final_weights,
)
from t2s.engine.logs import LogWindow, RunLog, check_finite, record_start, summarize
from t2s.engine.phases import add_phase_time, phase_timer
from t2s.engine.runtime import StopSignals, computing, eval_mode, now, rebalance_threads, use_cpu
from t2s.engine.trackers import finish_trackers, log_samples, start_trackers
from t2s.engine.step import Engine
from t2s.pipeline import TextToSignPipeline
from t2s.rundir import RunDir, atomic_write_json, read_json, truncate_rows_after


@dataclass
class RunResult:
    run_dir: Path
    summary: dict
    status: str


class Trainer:
    """One run of an `Engine`'s optimizer steps into a run directory. Built by `train()`; tests drive it directly."""

    def __init__(self, cfg: Config, run_dir: Union[str, Path], progress: bool = True, cpu: bool = False):
        self.engine = e = Engine(cfg, cpu)
        self.run, self.progress = RunDir(run_dir), progress
        self.log = RunLog(self.run, e.is_main, e.device, tensorboard="tensorboard" in cfg.trackers,
                          trackers=e.accelerator.log if e.accelerator.log_with else None)
        self.window = LogWindow()
        self.signals = StopSignals(lambda name: print(
            f"\n{name} received: finishing optimizer step {e.step + 1}, then writing a checkpoint."))
        self.oom_events: list[dict] = []
        self.step_seconds = 0.0  # wall time in optimizer steps since the last flush into logs/phases.json

    # ------------------------------------------------------------------ the loop
    def fit(self, stop_after: Optional[int] = None) -> dict:
        """Train to total_steps (or `stop_after` steps, or a stop signal): the final validation row, or
        {stopped_at, signal} when it stopped early with a checkpoint."""
        e = self.engine
        self.log.open(e.step)
        start_trackers(e.accelerator, e.cfg, self.run)
        self.log.progress("training", e.step, e.total_steps, epoch=e.epoch)
        if e.step == 0 and e.is_main and not self.run.validation_csv.exists():
            self.validate()  # the step-0 held-out loss, the reference the curve is read against
        bar = tqdm(total=e.total_steps, initial=e.step, disable=not (self.progress and e.is_main),
                   desc=e.cfg.run_name, unit="step")
        stopped = False
        try:
            with self.signals.installed():
                e.denoiser.train()
                self.window.reset()
                while e.step < e.total_steps and not stopped:
                    epoch_length = e.steps_per_epoch * e.cfg.gradient_accumulation_steps  # micro-batches
                    stopped, out_of_memory = self.train_epoch(bar, stop_after)
                    if out_of_memory is not None:
                        self.halve_micro_batch(out_of_memory)  # and redo the step
                        continue
                    if e.micro >= epoch_length:  # a whole epoch done
                        e.epoch, e.micro = e.epoch + 1, 0
                        if e.epoch % e.cfg.validate_every == 0:
                            self.validate()
                        if e.epoch % e.cfg.save_every == 0:
                            self.checkpoint(f"epoch_{e.epoch}.pt")
                    if stopped or e.step >= e.total_steps:
                        self.checkpoint_if_new()
        finally:
            bar.close()
        if stopped:
            self.log.close()
            finish_trackers(e.accelerator)
            return {"stopped_at": e.step, "signal": self.signals.requested}
        if not e.is_main:
            return {}
        last = self.log.last_validation()
        final_val = last if last is not None and int(last["step"]) == e.step else self.validate()
        if e.step % e.cfg.sample_every:
            self.samples()
        self.log.progress("trained", e.step, e.total_steps, epoch=e.epoch)
        self.log.close()
        log_samples(e.accelerator, self.run)
        finish_trackers(e.accelerator)
        return final_val

    def train_epoch(self, bar, stop_after: Optional[int]) -> tuple[bool, Optional[torch.OutOfMemoryError]]:
        """The optimizer steps left in this epoch, logs flushed at log points and samples drawn every sample_every
        steps: (stopped early, the out-of-memory error that ended the epoch or None)."""
        e, cfg = self.engine, self.engine.cfg
        batches = iter(e.epoch_loader())
        t0 = time.perf_counter()
        stopped, out_of_memory = False, None
        for _ in range(e.steps_per_epoch - e.micro // cfg.gradient_accumulation_steps):
            try:
                begin = time.perf_counter()
                self.window.add(e.train_step(batches))
                self.step_seconds += time.perf_counter() - begin
                rebalance_threads()  # other kit processes started or ended here: this one's share of the CPUs
            except torch.OutOfMemoryError as exc:
                out_of_memory = exc
                break
            bar.update(1)
            log_point = e.step % cfg.log_every == 0 or e.step >= e.total_steps
            if log_point:
                e.train_seconds += time.perf_counter() - t0
                t0 = time.perf_counter()
                self.flush_logs(bar)
            if e.step % cfg.sample_every == 0:
                self.samples()
            asked = stop_after is not None and e.step >= stop_after
            if e.step >= e.total_steps or asked or self.agree_to_stop(log_point):
                stopped = e.step < e.total_steps
                break
        e.train_seconds += time.perf_counter() - t0
        self.flush_logs(bar)
        return stopped, out_of_memory

    def flush_logs(self, bar) -> None:
        """Read the window's losses (one host-device sync per log window), check them, write the rows (and the steps'
        wall time into logs/phases.json).

        Several processes: the logged loss is the mean over ranks (one all-reduce per log window, on every rank);
        the gradient norm is already global (taken after the all-reduce); the main process writes."""
        e = self.engine
        pending, seconds = self.window.take()
        if not pending:
            return
        losses = torch.stack([p["loss"] for p in pending]).float()
        if e.world_size > 1:
            losses = e.accelerator.reduce(losses, "mean")
        losses = losses.cpu().tolist()
        check_finite(losses, pending, self.run)
        clips_per_s = self.log.training_rows(pending, losses, e.global_batch_size, seconds)
        self.log.progress("training", e.step, e.total_steps, loss=losses[-1], clips_per_s=clips_per_s,
                          rate=len(pending) / seconds if seconds > 0 else None, epoch=e.epoch)
        if e.is_main:
            bar.set_postfix(loss=f"{losses[-1]:.4f}", lr=f"{pending[-1]['lr']:.2e}", clips_s=f"{clips_per_s or 0:.1f}")
            add_phase_time(self.run, "steps", self.step_seconds)
            self.step_seconds = 0.0

    # ------------------------------------------------------------------ the rare paths
    def agree_to_stop(self, log_point: bool) -> bool:
        """Whether a signal asks to stop after this optimizer step. One process: at once. Several: the ranks agree
        at log points (one all-reduce where the losses are read anyway), so that all stop after the same step."""
        e = self.engine
        if e.world_size == 1:
            return bool(self.signals.requested)
        if not log_point:
            return False
        asked = torch.tensor([1.0 if self.signals.requested else 0.0], device=e.device)
        if e.accelerator.reduce(asked, "sum").item() == 0:
            return False
        self.signals.requested = self.signals.requested or "a signal to another rank"
        return True

    def halve_micro_batch(self, error: BaseException) -> None:
        """Out of memory: halve the micro-batch, double accumulation (same effective batch), redo the current step."""
        e, cfg = self.engine, self.engine.cfg
        if e.world_size > 1:  # the other ranks are already waiting in the all-reduce: no way to redo the step
            raise RuntimeError(
                f"out of memory on rank {e.rank} at optimizer step {e.step + 1} ({error}); with several processes the "
                f"micro-batch is not halved automatically: resume with a smaller batch_size and a larger "
                f"gradient_accumulation_steps (same product), or -p gradient_checkpointing=true.") from error
        if cfg.batch_size == 1:
            raise RuntimeError(
                f"out of memory at optimizer step {e.step + 1} with batch_size 1 ({error}). Try fewer frames "
                f"(-p num_frames=8), a smaller image_size, -p gradient_checkpointing=true, or mixed_precision bf16/fp16."
            ) from error
        gas = cfg.gradient_accumulation_steps
        e.micro -= e.micro % gas  # micro-batches of the unfinished optimizer step: discarded, then redone
        for p in list(e.model.parameters()) + e.accelerator.unwrap_model(e.text).trainable_parameters():
            p.grad = None
        e.set_micro_batch(cfg.batch_size // 2, gas * 2)
        self.oom_events.append({"step": e.step, "batch_size": e.cfg.batch_size, "error": str(error).splitlines()[0],
                                "gradient_accumulation_steps": e.cfg.gradient_accumulation_steps})
        self.run.update_metadata(oom_fallbacks=self.oom_events)
        atomic_write_json(self.run.config, e.cfg.to_dict())
        print(f"Out of memory at optimizer step {e.step + 1}: continuing with batch_size {e.cfg.batch_size} x "
              f"gradient_accumulation_steps {e.cfg.gradient_accumulation_steps} (same effective batch "
              f"{e.cfg.effective_batch_size}).")
        if e.device.type == "cuda":
            torch.cuda.empty_cache()

    # ------------------------------------------------------------------ validation and samples
    def validate(self) -> dict:
        """The held-out loss of the raw and EMA weights, one CSV row. Main process only: the weights are the same
        on every rank, and the others meet it again at the next gradient all-reduce."""
        e = self.engine
        if not e.is_main:
            return {}
        with self.log.phase("validating", e.step, e.total_steps), phase_timer(self.run, "validation"):
            raw = e.held_out_loss()
            ema = None
            if e.ema and e.ema.matches():
                ema = raw  # the EMA still equals the weights (step 0): the same loss, not computed twice
            elif e.ema:
                with e.ema.swapped():
                    ema = e.held_out_loss()
        return self.log.validation_row(e.epoch, e.step, raw, ema)

    @torch.no_grad()
    def samples(self) -> list[dict]:
        """Clips for the sample prompts through the pipeline (clip i from seed i, EMA weights when kept), written as
        GIFs (main process only). Sampling never touches training: the models go to eval mode and back (each
        submodule to its own mode) and the global RNG streams are forked, so a run trains the same whatever
        `sample_every`."""
        e = self.engine
        if not e.is_main:
            return []
        cfg, text = e.cfg, e.accelerator.unwrap_model(e.text)
        devices = [e.device] if e.device.type == "cuda" else []
        with eval_mode(e.model, text), torch.random.fork_rng(devices=devices), \
                e.ema.swapped() if e.ema else nullcontext(), \
                self.log.phase("sampling", e.step, e.total_steps), phase_timer(self.run, "sampling"):
            pipe = TextToSignPipeline.from_config(e.model, text, cfg)
            clips = pipe(cfg.sample_prompts, seeds=range(len(cfg.sample_prompts)), batch_size=cfg.eval_batch_size)
        return self.log.samples(e.step, cfg.sample_prompts, clips, "ema" if e.ema else "raw")

    # ------------------------------------------------------------------ checkpoints, resume, the end
    def checkpoint(self, name: str) -> Optional[Path]:
        """Written by the main process only (the weights, EMA and optimizer state are the same on every rank)."""
        e = self.engine
        if not e.is_main:
            return None
        with phase_timer(self.run, "checkpoints"):
            return save_checkpoint(self.run, name, e.state_dict(), e.cfg.keep_checkpoints)

    def checkpoint_if_new(self) -> None:
        """A checkpoint for the current step unless one exists: epoch_N.pt at an epoch's end, else step_S.pt."""
        e = self.engine
        if not e.is_main:
            return
        ckpts = list_checkpoints(self.run)
        if not ckpts or ckpts[-1]["step"] != e.step:
            self.checkpoint(f"epoch_{e.epoch}.pt" if e.micro == 0 else f"step_{e.step}.pt")

    def resume(self, path: Path, state: Optional[dict] = None) -> None:
        """Continue from a checkpoint (`checkpoint.restore`); rows logged after its step are dropped."""
        e = self.engine
        change = restore(e, state if state is not None else load_checkpoint(path), path)
        if change and e.is_main:  # another world size: the run no longer follows an uninterrupted one
            warnings.warn(change["note"], RuntimeWarning, stacklevel=2)
            changes = self.run.read_metadata().get("world_size_changes") or []
            self.run.update_metadata(world_size_changes=changes + [change])
        if e.is_main:
            for csv_path in (self.run.training_csv, self.run.validation_csv, self.run.memory_csv):
                truncate_rows_after(csv_path, e.step)
            print(f"Resumed from {path} at optimizer step {e.step} (epoch {e.epoch + 1}).")

    def finish(self) -> None:
        """The run is finished: its final weights as safetensors (`checkpoint.write_final_weights`), metadata.json's
        status "finished" with their SHA-256, and only then the optimizer-state checkpoints pruned, unless
        `keep_optimizer_state` (main process only)."""
        e = self.engine
        if not e.is_main:
            return
        with phase_timer(self.run, "checkpoints"):
            digests = write_final_weights(self.run, e.state_dict())
        self.run.update_metadata(status="finished", end_time=now(), final_weights=digests)
        if not e.cfg.keep_optimizer_state:
            prune_checkpoints(self.run)


# --------------------------------------------------------------------------------------------- public API
def train(config: Config, run_dir: Union[str, Path], progress: bool = True,
          stop_after: Optional[int] = None) -> RunResult:
    """Train one variant into `run_dir`; an unfinished run there is resumed from its latest checkpoint.

    `stop_after` ends the run after that many optimizer steps with a resumable checkpoint (status "interrupted"),
    as a pre-emption would; `train` again resumes it. Under `accelerate launch` or `torchrun` every process calls
    this (data parallel; the main process writes the run directory); each returns once the directory is complete.
    A variant that differs from a finished run only after training is derived from it instead
    (`t2s.study.derived.train_or_derive`).
    """
    if not isinstance(config, Config):
        config = from_dict(dict(config))
    check_trackers(config)  # before the run directory is made
    started = time.perf_counter()
    state = PartialState(cpu=use_cpu())  # joins the process group of a multi-process launch (a no-op alone)
    # the CPUs this process may use (affinity, cgroup quota, ablate's share), split among a launch's local processes
    # or the kit processes computing here (released when training ends)
    with computing(state.num_processes if state.device.type == "cpu" else 1):
        return _train(config, run_dir, progress, stop_after, state, started)


def _train(config: Config, run_dir: Union[str, Path], progress: bool, stop_after: Optional[int], state: PartialState,
           started: float) -> RunResult:
    """`train` once the process has its threads."""
    main, run = state.is_main_process, RunDir(run_dir)
    resume = find_resume_point(run, config)  # every process reads the same files...
    meta = run.read_metadata()
    state.wait_for_everyone()  # ...before the main process writes any
    if main:
        run.make()
        atomic_write_json(run.config, config.to_dict())
    trainer = Trainer(config, run_dir, progress=progress)
    engine = trainer.engine
    if main:
        record_start(run, meta, resume[0] if resume else None, engine)
    if resume:
        trainer.resume(*resume)
    elif main:  # a fresh start (perhaps after a crash before the first checkpoint): no rows from an earlier attempt
        for csv_path in (run.training_csv, run.validation_csv, run.memory_csv):
            csv_path.unlink(missing_ok=True)
    if main:  # data (rendered or read from the cache), the models and the text encoder, a checkpoint to resume
        add_phase_time(run, "setup", time.perf_counter() - started)
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
            run, final_val, epochs=engine.epoch + (engine.micro > 0), train_seconds=engine.train_seconds,
            clips_per_step=engine.global_batch_size, world_size=engine.world_size, use_ema=config.use_ema,
            denoiser_parameters=engine.parameter_counts()["denoiser"], ema=engine.ema, step=engine.step))
        trainer.finish()
    state.wait_for_everyone()  # the others return once the run directory is complete
    return RunResult(run.root, read_json(run.summary, {}), "finished")
