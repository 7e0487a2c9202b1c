"""The training loop.

Read top to bottom: the epoch's data order (`EpochSampler`, `epoch_loader`), the optimizer (`build_optimizer`), the
`Engine` (setup of data, text encoder, denoiser, optimizer, schedule and EMA, then ONE optimizer step:
`train_step` = `gradient_accumulation_steps` micro-batches of `micro_step`), the `Trainer` (a run of such steps in
epochs, with validation, samples, checkpoints, resume, the out-of-memory fallback and stop signals), and `train()`,
which runs one variant into a run directory. accelerate places the models, runs mixed precision and accumulates
gradients; the loop itself stays visible. The benchmark (`t2s.bench`) times this same `train_step`, phase by phase,
through its optional `timer` (a no-op here).

Reproducibility: the shuffle order of epoch e comes from (seed, e); noise, timesteps and caption dropout come from
generators whose states are checkpointed; an epoch holds exactly `steps_per_epoch * accumulation` micro-batches;
so an interrupted run resumed from its checkpoint follows the same trajectory as an uninterrupted one.

Data parallel (`accelerate launch -m t2s.train` or `torchrun -m t2s.train`, see `t2s.launch`): every process runs
this same code on its slice of each global micro-batch (batch_size x world_size, in the single-process order); noise,
timesteps and caption dropout are drawn for the global micro-batch, so N processes with batch b compute what one
process with batch N*b would. DDP all-reduces the gradients; only the main process writes the run directory.

Size: ~590 lines, over the ~500 target on purpose: the step (`Engine`) and the loop that drives it (`Trainer`) stay
in one file so that the loop reads top to bottom with its step. Checkpoint contents and files (`t2s.checkpoint`),
devices, precision and RNG (`t2s.runtime`), the run's logs and summary (`t2s.runlog`) and the launcher and command
line (`t2s.launch`) live beside it. `t2s.train.train_processes` (the notebook's and README's name) resolves lazily
to `t2s.launch.train_processes`: launch imports this module, so the import graph keeps one direction.
"""
from __future__ import annotations

import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Union

import torch
from accelerate import PartialState
from accelerate.utils import DistributedDataParallelKwargs, set_seed
from diffusers.optimization import get_cosine_schedule_with_warmup
from torch import nn
from torch.utils.data import DataLoader, Sampler
from tqdm.auto import tqdm

from .checkpoint import (
    checkpoint_state, find_resume_point, list_checkpoints, load_checkpoint, load_checkpoint_state, restore,
    save_checkpoint,
)
from .config import Config, ConfigError, from_dict
from .counting import count_parameters
from .data import build_datasets
from .diffusion import VAL_NOISE_SEED, build_train_scheduler, diffusion_loss, held_out_loss  # noqa: F401 (VAL_NOISE_SEED)
from .ema import EMA
from .model import build_denoiser, to_channels_last
from .pipeline import TextToSignPipeline
from .rundir import RunDir, atomic_write_json, read_json, truncate_rows_after
from .runlog import LogWindow, RunLog, check_finite, record_start, summarize
from . import share
from .runtime import StopSignals, eval_mode, make_accelerator, now, size_threads, use_cpu, uses_channels_last
from .text import TextEncoder, build_text_encoder


@dataclass
class RunResult:
    run_dir: Path
    summary: dict
    status: str


# --------------------------------------------------------------------------------------------- data order
class EpochSampler(Sampler):
    """Indices of one epoch: a permutation from (seed, epoch), cut to `length` samples, starting at `start`.

    Data parallel: `length` and `start` count global samples and the order is the same on every rank. Each global
    micro-batch of `batch_size * world_size` samples is cut into `world_size` slices and rank r takes the r-th, so
    the ranks together see exactly what one process with batch_size * world_size would.
    """

    def __init__(self, n: int, seed: int, epoch: int, length: int, start: int = 0, shuffle: bool = True,
                 batch_size: int = 1, rank: int = 0, world_size: int = 1):
        g = torch.Generator().manual_seed(seed * 100_003 + epoch)
        order = torch.randperm(n, generator=g) if shuffle else torch.arange(n)
        indices = order[:length][start:]
        if world_size > 1:  # (global micro-batches, ranks, batch_size) -> this rank's slice of each
            indices = indices.view(-1, world_size, batch_size)[:, rank].reshape(-1)
        self.indices = indices.tolist()

    def __iter__(self):
        return iter(self.indices)

    def __len__(self):
        return len(self.indices)


def steps_per_epoch(num_clips: int, cfg: Config, world_size: int = 1) -> int:
    """Optimizer steps in an epoch: whole global micro-batches, grouped by gradient_accumulation_steps."""
    return num_clips // (cfg.batch_size * world_size) // cfg.gradient_accumulation_steps


def epoch_loader(dataset, cfg: Config, epoch: int, micro: int, *, rank: int = 0, world_size: int = 1,
                 pin_memory: bool = False) -> DataLoader:
    """The micro-batches (clips (b, 3, F, H, W), captions, signers) of epoch `epoch` from micro-batch `micro` on:
    `steps_per_epoch * gradient_accumulation_steps` micro-batches in the epoch's seeded order, this rank's slice."""
    global_batch = cfg.batch_size * world_size  # one micro-batch over all ranks
    per_epoch = steps_per_epoch(len(dataset), cfg, world_size) * cfg.gradient_accumulation_steps
    sampler = EpochSampler(len(dataset), cfg.seed, epoch, per_epoch * global_batch, micro * global_batch,
                           batch_size=cfg.batch_size, rank=rank, world_size=world_size)
    return DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.num_workers,
                      pin_memory=pin_memory, persistent_workers=False, drop_last=True)


# --------------------------------------------------------------------------------------------- optimizer
def build_optimizer(cfg: Config, denoiser: nn.Module, text: TextEncoder, fused: bool = True) -> torch.optim.AdamW:
    """AdamW over the denoiser (no weight decay on biases and norms) and, when trainable, the text encoder at its own
    learning rate. `fused`: one kernel for the whole update, on CUDA and CPU."""
    decay = [p for p in denoiser.parameters() if p.ndim >= 2]
    no_decay = [p for p in denoiser.parameters() if p.ndim < 2]
    groups = [
        {"params": decay, "lr": cfg.learning_rate, "weight_decay": cfg.weight_decay, "name": "denoiser"},
        {"params": no_decay, "lr": cfg.learning_rate, "weight_decay": 0.0, "name": "denoiser_no_decay"},
    ]
    text_params = text.trainable_parameters()
    if text_params:
        groups.append({"params": text_params, "lr": cfg.text_encoder_lr, "weight_decay": cfg.weight_decay, "name": "text_encoder"})
    return torch.optim.AdamW(groups, lr=cfg.learning_rate, fused=fused)


class _NoTimer:
    """The phase timer of training: no clock, no synchronization (the benchmark passes its `PhaseTimer`)."""

    def phase(self, name: str):
        return nullcontext()


NO_TIMER = _NoTimer()


# --------------------------------------------------------------------------------------------- one optimizer step
class Engine:
    """The objects of a training run and one optimizer step on them: what `Trainer` loops over and the benchmark
    times. `denoiser`, `text` and `datasets` default to those the config describes (the benchmark passes diffusers'
    UNet, or a text encoder and data whose caches are warm); `fused_adamw` as `build_optimizer`."""

    def __init__(self, cfg: Config, cpu: bool = False, *, denoiser: Optional[nn.Module] = None,
                 text: Optional[TextEncoder] = None, datasets: Optional[tuple] = None, fused_adamw: bool = True):
        self.cfg = cfg
        self.accelerator = make_accelerator(cfg, cpu)
        self.device = self.accelerator.device
        # data parallel: rank r of world_size processes takes the r-th slice of every global micro-batch
        self.rank, self.world_size = self.accelerator.process_index, self.accelerator.num_processes
        self.is_main = self.accelerator.is_main_process  # the only process that writes the run directory
        set_seed(cfg.seed)
        if datasets is None:  # the main process first: it may generate the synthsign cache the others then read
            with self.accelerator.main_process_first():
                datasets = build_datasets(cfg)
        self.train_set, self.val_set, self.split = datasets
        self.steps_per_epoch = steps_per_epoch(len(self.train_set), cfg, self.world_size)
        if self.steps_per_epoch < 1:
            raise ConfigError(
                f"the training split has {len(self.train_set)} clips: fewer than one optimizer step of "
                f"batch_size {cfg.batch_size} x gradient_accumulation_steps {cfg.gradient_accumulation_steps}"
                f" x {self.world_size} processes")
        self.total_steps = min(cfg.num_epochs * self.steps_per_epoch, cfg.max_steps or float("inf"))
        # models: the cross-attention width is the text encoder's hidden size
        self.text = text if text is not None else build_text_encoder(cfg)
        denoiser = denoiser if denoiser is not None else build_denoiser(cfg, self.text.hidden_size)
        if uses_channels_last(cfg, self.device):
            to_channels_last(denoiser)
        self.noise_schedule = build_train_scheduler(cfg)
        optimizer = build_optimizer(cfg, denoiser, self.text, fused=fused_adamw)
        self.lr_schedule = get_cosine_schedule_with_warmup(
            optimizer, num_warmup_steps=min(cfg.warmup_steps, self.total_steps), num_training_steps=self.total_steps)
        self.denoiser, self.optimizer = self.accelerator.prepare(denoiser, optimizer)
        self._prepare_text()
        self.model = self.accelerator.unwrap_model(self.denoiser)
        self.ema = EMA(self.model, cfg.ema_decay, cfg.ema_update_every, cfg.ema_warmup) if cfg.use_ema else None
        self.generator = torch.Generator(device=self.device).manual_seed(cfg.seed)  # noise and timesteps
        self.drop_generator = torch.Generator().manual_seed(cfg.seed + 1)  # caption dropout
        self.step, self.epoch, self.micro = 0, 0, 0  # optimizer steps done; current epoch; micro-batches done in it
        self.train_seconds = 0.0
        self.oom_hook = None  # tests: a callable(engine) -> bool that injects an out-of-memory error

    def _prepare_text(self) -> None:
        """A trainable text encoder is wrapped (DDP across processes) like the denoiser; a frozen one only moved."""
        trainable = bool(self.text.trainable_parameters())
        if trainable:  # it holds parameters the loss never reaches (BERT's pooler), which DDP must be told to skip
            self.accelerator.ddp_handler = DistributedDataParallelKwargs(find_unused_parameters=True)
            self.text = self.accelerator.prepare(self.text)
            self.accelerator.ddp_handler = None
        else:  # DDP refuses a module without trainable parameters
            self.text = self.text.to(self.device)
        self.trained_models = [self.denoiser] + ([self.text] if trainable else [])  # their gradients are all-reduced

    @property
    def global_batch_size(self) -> int:
        """Clips per optimizer step over all processes: batch_size x gradient_accumulation_steps x world_size."""
        return self.cfg.effective_batch_size * self.world_size

    def parameter_counts(self) -> dict:
        text = self.accelerator.unwrap_model(self.text)
        n_den, n_text = count_parameters(self.model), count_parameters(text.model)
        return {"denoiser": n_den, "text_encoder": n_text, "text_encoder_trainable": count_parameters(text.model, True),
                "total": n_den + n_text}

    def epoch_loader(self) -> DataLoader:
        """This rank's micro-batches of the current epoch from the current position on."""
        return epoch_loader(self.train_set, self.cfg, self.epoch, self.micro, rank=self.rank, world_size=self.world_size,
                            pin_memory=self.device.type == "cuda")

    def condition(self, captions: list[str], drop: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Token states for captions; with `drop`, each caption is replaced by the null caption with cond_drop_prob.

        The dropout mask is drawn for the global micro-batch and this rank keeps its slice, so any world size draws
        the same numbers. The call goes through the prepared module (DDP all-reduces a trainable encoder's grads)."""
        if drop and self.cfg.cond_drop_prob > 0:
            b = len(captions)
            keep = torch.rand(b * self.world_size, generator=self.drop_generator) >= self.cfg.cond_drop_prob
            keep = keep[self.rank * b:(self.rank + 1) * b]
            captions = [c if k else "" for c, k in zip(captions, keep.tolist())]
        return self.text(captions)

    def train_step(self, batches: Iterator, timer=NO_TIMER) -> dict:
        """One optimizer step: `gradient_accumulation_steps` micro-batches from `batches`, then the learning-rate
        schedule and the EMA update. Returns the step's record (its loss stays on the device until a log point).
        `timer.phase(name)` brackets data, text, forward_backward, grad_clip, optimizer and ema."""
        step_loss = torch.zeros((), device=self.device)
        for _ in range(self.cfg.gradient_accumulation_steps):
            with timer.phase("data"):
                clips, captions, _signers = next(batches)
                clips = clips.to(self.device, non_blocking=True)
            grad_norm = self.micro_step(clips, list(captions), step_loss, timer)
            self.micro += 1
        lr = self.lr_schedule.get_last_lr()[0]
        self.lr_schedule.step()
        self.step += 1
        with timer.phase("ema"):
            updated = self.ema is not None and self.ema.update(self.step)
        return {"epoch": self.epoch, "step": self.step, "loss": step_loss, "lr": lr,
                "grad_norm": grad_norm.detach() if torch.is_tensor(grad_norm) else grad_norm,
                # per optimizer step, comparable across ema_update_every
                "ema_decay": self.ema.last_step_decay if updated else None}

    def micro_step(self, clips: torch.Tensor, captions: list[str], step_loss: torch.Tensor, timer=NO_TIMER):
        """Forward + backward of one micro-batch (b c f h w); at an accumulation boundary, clip and step."""
        cfg, acc = self.cfg, self.accelerator
        if self.oom_hook is not None and self.oom_hook(self):
            raise torch.OutOfMemoryError("injected out-of-memory error (test hook)")
        grad_norm = None
        with acc.accumulate(*self.trained_models):  # no gradient all-reduce until the last micro-batch of a step
            with timer.phase("text"):
                context, mask = self.condition(captions, drop=True)
            with timer.phase("forward_backward"):
                # noise and timesteps of the global micro-batch (b x world_size), this rank's slice: every world size
                # draws the same numbers for the same sample
                b, mine = clips.shape[0], slice(self.rank * clips.shape[0], (self.rank + 1) * clips.shape[0])
                noise = torch.randn((b * self.world_size, *clips.shape[1:]), generator=self.generator, device=self.device)[mine]
                t = torch.randint(0, cfg.num_train_timesteps, (b * self.world_size,), generator=self.generator, device=self.device)[mine]
                with acc.autocast():
                    loss = diffusion_loss(self.denoiser, self.noise_schedule, clips, noise, t, context, mask,
                                          cfg.motion_loss_weight)
                acc.backward(loss)
                step_loss += loss.detach() / cfg.gradient_accumulation_steps
            if acc.sync_gradients:
                with timer.phase("grad_clip"):
                    params = [p for g in self.optimizer.param_groups for p in g["params"]]
                    grad_norm = acc.clip_grad_norm_(params, cfg.max_grad_norm)
            with timer.phase("optimizer"):
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
        return grad_norm

    def held_out_loss(self) -> float:
        """The fixed-timestep, fixed-noise validation loss (diffusion.held_out_loss) of the weights in the model now."""
        text = self.accelerator.unwrap_model(self.text)
        return held_out_loss(self.model, text, self.noise_schedule, self.val_set, self.cfg, self.device,
                             autocast=self.accelerator.autocast)

    def state_dict(self) -> dict:
        return checkpoint_state(self)

    def load_state_dict(self, state: dict) -> None:
        load_checkpoint_state(self, state)

    def set_micro_batch(self, batch_size: int, accumulation: int) -> None:
        """Change micro-batch and accumulation keeping their product (the effective batch) and the position."""
        cfg = self.cfg
        assert batch_size * accumulation == cfg.effective_batch_size
        self.micro = self.micro * cfg.batch_size // batch_size
        self.cfg = cfg.replace(batch_size=batch_size, gradient_accumulation_steps=accumulation)
        self.accelerator.gradient_accumulation_steps = accumulation
        self.accelerator.step = 0


# --------------------------------------------------------------------------------------------- the run
class Trainer(Engine):
    """One run of the engine's steps into a run directory: `fit()` is the loop (epochs of optimizer steps, logs at
    log points, samples, validation and checkpoints at epoch ends), with resume, the out-of-memory fallback and stop
    signals. Built by `train()`; tests drive it directly too."""

    def __init__(self, cfg: Config, run_dir: Union[str, Path], progress: bool = True, cpu: bool = False):
        super().__init__(cfg, cpu)
        self.run, self.progress = RunDir(run_dir), progress
        self.log = RunLog(self.run, self.is_main, self.device)
        self.window = LogWindow()
        self.signals = StopSignals(lambda name: print(
            f"\n{name} received: finishing optimizer step {self.step + 1}, then writing a checkpoint."))
        self.oom_events: list[dict] = []

    # ------------------------------------------------------------------ the loop
    def fit(self, stop_after: Optional[int] = None) -> dict:
        """Train to total_steps (or `stop_after` steps, or a stop signal); the final validation row, or
        {stopped_at, signal} when stopped early with a checkpoint."""
        self.log.open(self.step)
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
            return {"stopped_at": self.step, "signal": self.signals.requested}
        if not self.is_main:
            return {}
        last = self.log.last_validation()
        final_val = last if last is not None and int(last["step"]) == self.step else self.validate()
        if self.step % self.cfg.sample_every:
            self.samples()
        self.log.close()
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
                self.ema.swapped() if self.ema else nullcontext():
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
    as a pre-emption would; `train` again resumes it.

    Under `accelerate launch` or `torchrun` every process calls this; they train data parallel and only the main
    process writes the run directory. Every process returns once the run directory is complete.
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
        run.update_metadata(status="finished", end_time=now())
    state.wait_for_everyone()  # the others return once the run directory is complete
    return RunResult(run.root, read_json(run.summary, {}), "finished")


def __getattr__(name: str):
    """`t2s.train.train_processes`: the notebook's and README's name for `t2s.launch.train_processes`."""
    if name == "train_processes":
        from .launch import train_processes  # launch imports this module: resolved on first use

        return train_processes
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if __name__ == "__main__":  # python -m t2s.train: the command line of t2s.launch
    from t2s.launch import main

    raise SystemExit(main())
