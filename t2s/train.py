"""The training loop and the run directory it writes.

Read top to bottom: setup (data, text encoder, denoiser, optimizer, schedule, EMA), resume, the loop (one
optimizer step = `gradient_accumulation_steps` micro-batches), validation, checkpoints, samples, the summary.
accelerate places the models, runs mixed precision and accumulates gradients; the loop itself stays visible.

Reproducibility: the shuffle order of epoch e comes from (seed, e); noise, timesteps and caption dropout come from
one generator whose state is checkpointed; an epoch holds exactly `steps_per_epoch * accumulation` micro-batches;
so an interrupted run resumed from its checkpoint follows the same trajectory as an uninterrupted one.

Data parallel (`accelerate launch -m t2s.train` or `torchrun -m t2s.train`, see `main`): every process runs this same
code on its slice of each global micro-batch (batch_size x world_size, in the single-process order); noise,
timesteps and caption dropout are drawn for the global micro-batch, so N processes with batch b compute what one
process with batch N*b would. DDP all-reduces the gradients; only the main process writes the run directory.
"""
from __future__ import annotations

import datetime as _dt
import math
import os
import platform
import random
import subprocess
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from .config import PROJECT_ROOT, Config, ConfigError, from_dict
from .checkpoint import (  # noqa: F401 (RESUMABLE_CHANGES, load_verified: re-exported)
    RESUMABLE_CHANGES, check_resumable, find_resume_point, latest_good_checkpoint, list_checkpoints, load_checkpoint,
    load_verified, save_checkpoint,
)
from .diffusion import VAL_NOISE_SEED, build_train_scheduler, diffusion_loss, held_out_loss  # noqa: F401 (VAL_NOISE_SEED)
from .ema import EMA
from .model import build_denoiser, to_channels_last
from .pipeline import TextToSignPipeline, write_gif
from .rundir import (
    MEMORY_COLUMNS, TRAINING_COLUMNS, VALIDATION_COLUMNS, RunDir, append_rows, atomic_write_json, read_json,
    truncate_rows_after,
)
from .text import build_text_encoder

class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the run stopped and its last good checkpoint is intact."""


@dataclass
class RunResult:
    run_dir: Path
    summary: dict
    status: str


def now() -> str:
    return _dt.datetime.now().isoformat(timespec="seconds")


# --------------------------------------------------------------------------------------------- small helpers
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


def cpu_has_native_bf16() -> bool:
    """Whether oneDNN runs bf16 natively on this CPU (avx512_bf16 or AMX); emulated bf16 would be slower than fp32."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_mixed_precision(choice: str) -> str:
    """`mixed_precision: auto` -> bf16 on a CUDA GPU with bf16, and on a CPU with native bf16 (reference step on the
    benchmark's CPU: 20.6 s fp32 -> 9.8 s bf16 with channels-last; see the README's Performance); else no."""
    if choice != "auto":
        return choice
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "no"
    return "bf16" if cpu_has_native_bf16() else "no"


def uses_channels_last(cfg, device: torch.device) -> bool:
    """Whether training keeps the convolution weights channels-last (`channels_last`: auto, true, false). auto: on
    CUDA, and on a CPU when training in bf16 (oneDNN's NHWC bf16 convolutions: the reference step 20.6 s -> 9.8 s on
    the benchmark's CPU, where fp32 or the tiny scale's small convolutions gained nothing; see the README)."""
    if cfg.channels_last != "auto":
        return bool(cfg.channels_last)
    return device.type == "cuda" or resolve_mixed_precision(cfg.mixed_precision) == "bf16"


@contextmanager
def eval_mode(*modules: torch.nn.Module):
    """Every submodule in eval mode within the block, then each back in its own previous mode (a module's flag alone
    does not say its children's: a Hugging Face model loads in eval mode inside a module left in training mode)."""
    saved = [(m, m.training) for module in modules for m in module.modules()]
    for module in modules:
        module.eval()
    try:
        yield
    finally:
        for m, mode in saved:
            m.training = mode


def use_cpu(cpu: bool = False) -> bool:
    """accelerate starts several CPU processes (gloo) only when told to use the CPU: a multi-process launch on a
    machine without CUDA (torchrun, notebook_launcher, the tests) counts as `cpu`."""
    if cpu or os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes"):  # accelerate launch --cpu
        return True
    return not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1


def git_commit() -> Optional[str]:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def package_versions() -> dict:
    from importlib import metadata

    names = ["torch", "diffusers", "transformers", "accelerate", "numpy", "papermill", "plotly", "pandas", "lpips"]
    out = {}
    for n in names:
        try:
            out[n] = metadata.version(n)
        except metadata.PackageNotFoundError:
            out[n] = None
    return out


def memory_gb(device: torch.device) -> dict:
    import psutil

    rss = psutil.Process().memory_info().rss / 1e9
    if device.type == "cuda":
        return {
            "allocated_gb": torch.cuda.memory_allocated(device) / 1e9,
            "reserved_gb": torch.cuda.memory_reserved(device) / 1e9,
            "peak_gb": torch.cuda.max_memory_allocated(device) / 1e9,
            "rss_gb": rss,
        }
    return {"allocated_gb": rss, "reserved_gb": rss, "peak_gb": rss, "rss_gb": rss}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def rng_state() -> dict:
    np_state = np.random.get_state()
    return {
        "python": list(random.getstate()[1]),
        "python_pos": random.getstate()[2],
        "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict) -> None:
    random.setstate((3, tuple(state["python"]), state["python_pos"]))
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
    torch.set_rng_state(state["torch"])
    if torch.cuda.is_available() and state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])


# --------------------------------------------------------------------------------------------- the run
class Trainer:
    """Holds one run's objects; `fit()` is the loop. Built by `train()`; tests drive it directly too."""

    def __init__(self, cfg: Config, run_dir: Union[str, Path], progress: bool = True, cpu: bool = False):
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs, set_seed

        from .data import build_datasets

        self.cfg, self.run, self.progress = cfg, RunDir(run_dir), progress
        # accelerate keeps one process-wide state and refuses a second Accelerator with another mixed precision; each
        # run (several in one notebook or test process) sets its own. The process group (PartialState) is kept.
        from accelerate.state import AcceleratorState

        AcceleratorState._reset_state(reset_partial_state=False)
        self.accelerator = Accelerator(
            mixed_precision=resolve_mixed_precision(cfg.mixed_precision),
            gradient_accumulation_steps=cfg.gradient_accumulation_steps,
            cpu=use_cpu(cpu),
        )
        self.device = self.accelerator.device
        # data parallel: rank r of world_size processes takes the r-th slice of every global micro-batch
        self.rank, self.world_size = self.accelerator.process_index, self.accelerator.num_processes
        self.is_main = self.accelerator.is_main_process  # the only process that writes the run directory
        set_seed(cfg.seed)

        # data (the main process first: it may generate the synthsign cache the others then read)
        with self.accelerator.main_process_first():
            self.train_set, self.val_set, self.split = build_datasets(cfg)
        micro_per_epoch = len(self.train_set) // (cfg.batch_size * self.world_size)
        self.steps_per_epoch = micro_per_epoch // cfg.gradient_accumulation_steps
        if self.steps_per_epoch < 1:
            raise ConfigError(
                f"the training split has {len(self.train_set)} clips: fewer than one optimizer step of "
                f"batch_size {cfg.batch_size} x gradient_accumulation_steps {cfg.gradient_accumulation_steps}"
                f" x {self.world_size} processes"
            )
        self.total_steps = cfg.num_epochs * self.steps_per_epoch
        if cfg.max_steps:
            self.total_steps = min(self.total_steps, cfg.max_steps)

        # models: the cross-attention width is the text encoder's hidden size
        self.text = build_text_encoder(cfg)
        self.denoiser = build_denoiser(cfg, self.text.hidden_size)
        if uses_channels_last(cfg, self.device):
            to_channels_last(self.denoiser)
        self.noise_schedule = build_train_scheduler(cfg)

        # optimizer: denoiser (no weight decay on biases and norms), text encoder at its own rate when trainable
        decay = [p for p in self.denoiser.parameters() if p.ndim >= 2]
        no_decay = [p for p in self.denoiser.parameters() if p.ndim < 2]
        groups = [
            {"params": decay, "lr": cfg.learning_rate, "weight_decay": cfg.weight_decay, "name": "denoiser"},
            {"params": no_decay, "lr": cfg.learning_rate, "weight_decay": 0.0, "name": "denoiser_no_decay"},
        ]
        text_params = self.text.trainable_parameters()
        if text_params:
            groups.append({"params": text_params, "lr": cfg.text_encoder_lr, "weight_decay": cfg.weight_decay, "name": "text_encoder"})
        self.optimizer = torch.optim.AdamW(groups, lr=cfg.learning_rate, fused=True)  # one kernel, on CUDA and CPU
        from diffusers.optimization import get_cosine_schedule_with_warmup

        self.lr_schedule = get_cosine_schedule_with_warmup(
            self.optimizer, num_warmup_steps=min(cfg.warmup_steps, self.total_steps), num_training_steps=self.total_steps
        )
        self.denoiser, self.optimizer = self.accelerator.prepare(self.denoiser, self.optimizer)
        if text_params:  # trainable: wrapped (DDP across processes) like the denoiser
            # it holds parameters the loss never reaches (BERT's pooler), which DDP must be told to skip
            self.accelerator.ddp_handler = DistributedDataParallelKwargs(find_unused_parameters=True)
            self.text = self.accelerator.prepare(self.text)
            self.accelerator.ddp_handler = None
        else:  # frozen: only moved (DDP refuses a module without trainable parameters)
            self.text = self.text.to(self.device)
        self.trained_models = [self.denoiser] + ([self.text] if text_params else [])  # their gradients are all-reduced
        self.model = self.accelerator.unwrap_model(self.denoiser)
        self.ema = EMA(self.model, cfg.ema_decay, cfg.ema_update_every, cfg.ema_warmup) if cfg.use_ema else None
        self.generator = torch.Generator(device=self.device).manual_seed(cfg.seed)
        self.drop_generator = torch.Generator().manual_seed(cfg.seed + 1)
        self.step, self.epoch, self.micro = 0, 0, 0  # optimizer steps done; current epoch; micro-batches done in it
        self.train_seconds = 0.0
        self.writer = None
        self.stop_requested: Optional[str] = None  # the signal's name once SIGINT/SIGTERM arrived
        self.oom_hook = None  # tests: a callable(trainer) -> bool that injects an out-of-memory error
        self.oom_events: list[dict] = []

    @property
    def global_batch_size(self) -> int:
        """Clips per optimizer step over all processes: batch_size x gradient_accumulation_steps x world_size."""
        return self.cfg.effective_batch_size * self.world_size

    # ------------------------------------------------------------------ parameter counts
    def parameter_counts(self) -> dict:
        text = self.accelerator.unwrap_model(self.text)
        n_den = sum(p.numel() for p in self.model.parameters())
        n_text = sum(p.numel() for p in text.model.parameters())
        n_train = sum(p.numel() for p in text.trainable_parameters())
        return {"denoiser": n_den, "text_encoder": n_text, "text_encoder_trainable": n_train, "total": n_den + n_text}

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        text = self.accelerator.unwrap_model(self.text)
        scaler = self.accelerator.scaler
        return {
            "model": self.model.state_dict(),
            "text_encoder": text.model.state_dict() if not self.cfg.freeze_text_encoder else None,
            "ema": self.ema.state_dict() if self.ema else None,
            "optimizer": self.optimizer.state_dict(),
            "lr_schedule": self.lr_schedule.state_dict(),
            "grad_scaler": scaler.state_dict() if scaler is not None else None,
            "step": self.step,
            "epoch": self.epoch,
            "micro": self.micro,
            "train_seconds": self.train_seconds,
            "generator": self.generator.get_state(),
            "drop_generator": self.drop_generator.get_state(),
            "rng": rng_state(),
            "config": self.cfg.to_dict(),
            "world_size": self.world_size,  # a resume with another world size maps the position (map_world_size)
        }

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        if state.get("text_encoder") is not None:
            self.accelerator.unwrap_model(self.text).model.load_state_dict(state["text_encoder"])
        if self.ema and state.get("ema"):
            self.ema.load_state_dict(state["ema"], step=state["step"])  # the step: for states saved without a count
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_schedule.load_state_dict(state["lr_schedule"])
        if self.accelerator.scaler is not None and state.get("grad_scaler"):
            self.accelerator.scaler.load_state_dict(state["grad_scaler"])
        self.step, self.epoch, self.micro = state["step"], state["epoch"], state["micro"]
        self.train_seconds = state.get("train_seconds", 0.0)
        self.generator.set_state(state["generator"])
        self.drop_generator.set_state(state["drop_generator"])
        set_rng_state(state["rng"])

    def resume(self, path: Path, state: Optional[dict] = None) -> None:
        state = state if state is not None else load_checkpoint(path)
        saved = state["config"]
        same_effective = saved["batch_size"] * saved["gradient_accumulation_steps"] == self.cfg.effective_batch_size
        if same_effective and saved["batch_size"] != self.cfg.batch_size:  # an out-of-memory fallback happened
            self.set_micro_batch(saved["batch_size"], saved["gradient_accumulation_steps"])
        check_resumable(saved, self.cfg, path)
        self.load_state_dict(state)
        saved_world = int(state.get("world_size", 1))
        if saved_world != self.world_size:
            self.map_world_size(saved_world)
        if self.is_main:
            for csv_path in (self.run.training_csv, self.run.validation_csv, self.run.memory_csv):
                truncate_rows_after(csv_path, self.step)
            print(f"Resumed from {path} at optimizer step {self.step} (epoch {self.epoch + 1}).")

    def map_world_size(self, saved_world: int) -> None:
        """Resume a checkpoint written by another number of processes. The optimizer step count and the epoch are
        kept; the position within the epoch's (world-size independent) sample order is mapped by global samples
        consumed, rounded down to a whole optimizer step of the new global batch (a few samples may be seen twice).
        The effective batch changes with the world size (the learning rate is not rescaled), so the run no longer
        follows the trajectory of an uninterrupted one; a warning says so and metadata.json records it."""
        import warnings

        cfg = self.cfg
        consumed = self.micro * cfg.batch_size * saved_world  # global samples of this epoch already trained on
        per_step = cfg.batch_size * cfg.gradient_accumulation_steps * self.world_size
        self.micro = consumed // per_step * cfg.gradient_accumulation_steps
        restart = self.micro * cfg.batch_size * self.world_size
        seen_again = consumed - restart
        if self.micro >= self.steps_per_epoch * cfg.gradient_accumulation_steps:  # the new, shorter epoch is over
            self.epoch, self.micro, restart, seen_again = self.epoch + 1, 0, 0, 0
        change = {
            "step": self.step, "epoch": self.epoch, "from_world_size": saved_world, "to_world_size": self.world_size,
            "from_effective_batch_size": cfg.effective_batch_size * saved_world,
            "to_effective_batch_size": cfg.effective_batch_size * self.world_size,
            "samples_seen_again": seen_again,
        }
        note = (
            f"resumed with {self.world_size} processes from a checkpoint written by {saved_world}: optimizer step "
            f"{self.step} and epoch {self.epoch + 1} kept, the position in the epoch mapped by global samples consumed "
            f"({consumed} -> restart at sample {restart}); the effective batch changes from "
            f"{change['from_effective_batch_size']} to {change['to_effective_batch_size']} (learning rate not rescaled) "
            f"and the schedule runs to {self.total_steps} steps, so the run no longer matches an uninterrupted one"
        )
        if self.is_main:
            warnings.warn(note, RuntimeWarning, stacklevel=2)
            changes = self.run.read_metadata().get("world_size_changes") or []
            self.run.update_metadata(world_size_changes=changes + [{**change, "note": note}])

    def checkpoint(self, name: Optional[str] = None) -> Optional[Path]:
        """Written by the main process only (the weights, EMA and optimizer state are the same on every rank)."""
        if not self.is_main:
            return None
        name = name or f"epoch_{self.epoch}.pt"
        return save_checkpoint(self.run, name, self.state_dict(), self.cfg.keep_checkpoints)

    def checkpoint_if_new(self) -> None:
        """A checkpoint for the current step unless one exists: epoch_N.pt at an epoch's end, else step_S.pt."""
        if not self.is_main:
            return
        ckpts = list_checkpoints(self.run)
        if not ckpts or ckpts[-1]["step"] != self.step:
            self.checkpoint(f"epoch_{self.epoch}.pt" if self.micro == 0 else f"step_{self.step}.pt")

    # ------------------------------------------------------------------ text conditioning
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

    # ------------------------------------------------------------------ validation: fixed timesteps, fixed noise
    def held_out_loss(self) -> float:
        """The fixed-timestep, fixed-noise validation loss (diffusion.held_out_loss) of the weights in the model now."""
        text = self.accelerator.unwrap_model(self.text)
        return held_out_loss(self.model, text, self.noise_schedule, self.val_set, self.cfg, self.device,
                             autocast=self.accelerator.autocast)

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
        row = {"epoch": self.epoch, "step": self.step, "val_loss_raw": raw, "val_loss_ema": ema, "timestamp": now()}
        append_rows(self.run.validation_csv, VALIDATION_COLUMNS, [row])
        if self.writer:
            self.writer.add_scalar("val/loss_raw", raw, self.step)
            if ema is not None:
                self.writer.add_scalar("val/loss_ema", ema, self.step)
        return row

    # ------------------------------------------------------------------ samples
    @torch.no_grad()
    def samples(self) -> list[dict]:
        """Clips for the sample prompts through the pipeline (clip i from seed i, EMA weights when kept), written as
        GIFs (main process only). Sampling never touches training: the models go to eval mode (no text-encoder
        dropout) and back, and the global RNG streams are forked, so a run trains the same whatever `sample_every`."""
        if not self.is_main:
            return []
        cfg = self.cfg
        weights = "ema" if self.ema else "raw"
        text = self.accelerator.unwrap_model(self.text)
        devices = [self.device] if self.device.type == "cuda" else []
        with eval_mode(self.model, text), torch.random.fork_rng(devices=devices), \
                self.ema.swapped() if self.ema else nullcontext():
            pipe = TextToSignPipeline.from_config(self.model, text, cfg)
            clips = pipe(cfg.sample_prompts, seeds=range(len(cfg.sample_prompts)), batch_size=cfg.eval_batch_size)
        index_path = self.run.samples / "samples.json"
        index = [e for e in (read_json(index_path, []) or []) if e.get("step") != self.step]
        new = []
        for i, (prompt, clip) in enumerate(zip(cfg.sample_prompts, clips)):
            name = f"step{self.step:06d}_{i}.gif"
            write_gif(self.run.samples / name, clip)
            new.append({"file": name, "prompt": prompt, "step": self.step, "weights": weights})
            if self.writer:
                self.writer.add_images(f"samples/{i}", (clip.permute(1, 0, 2, 3).float().cpu() + 1) / 2, self.step)
        atomic_write_json(index_path, index + new)
        return new

    # ------------------------------------------------------------------ the loop
    def micro_step(self, clips: torch.Tensor, captions: list[str], step_loss: torch.Tensor):
        """Forward + backward of one micro-batch (b c f h w); at an accumulation boundary, clip and step."""
        cfg, acc = self.cfg, self.accelerator
        if self.oom_hook is not None and self.oom_hook(self):
            raise torch.OutOfMemoryError("injected out-of-memory error (test hook)")
        grad_norm = None
        with acc.accumulate(*self.trained_models):  # no gradient all-reduce until the last micro-batch of a step
            context, mask = self.condition(captions, drop=True)
            # noise and timesteps of the global micro-batch (b x world_size), this rank's slice: every world size
            # draws the same numbers for the same sample
            b, mine = clips.shape[0], slice(self.rank * clips.shape[0], (self.rank + 1) * clips.shape[0])
            noise = torch.randn((b * self.world_size, *clips.shape[1:]), generator=self.generator, device=self.device)[mine]
            t = torch.randint(0, cfg.num_train_timesteps, (b * self.world_size,), generator=self.generator, device=self.device)[mine]
            with acc.autocast():
                loss = diffusion_loss(self.denoiser, self.noise_schedule, clips, noise, t, context, mask)
            acc.backward(loss)
            step_loss += loss.detach() / cfg.gradient_accumulation_steps
            if acc.sync_gradients:
                params = [p for g in self.optimizer.param_groups for p in g["params"]]
                grad_norm = acc.clip_grad_norm_(params, cfg.max_grad_norm)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        return grad_norm

    def halve_micro_batch(self, error: BaseException) -> None:
        """Out of memory: halve the micro-batch, double accumulation (same effective batch), redo the current step."""
        cfg = self.cfg
        if self.world_size > 1:  # the other ranks are already waiting in the all-reduce: no way to redo the step
            raise RuntimeError(
                f"out of memory on rank {self.rank} at optimizer step {self.step + 1} ({error}); with several "
                f"processes the micro-batch is not halved automatically: resume with a smaller batch_size and a larger "
                f"gradient_accumulation_steps (same product), or -p gradient_checkpointing=true."
            ) from error
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
        event = {"step": self.step, "batch_size": self.cfg.batch_size,
                 "gradient_accumulation_steps": self.cfg.gradient_accumulation_steps, "error": str(error).splitlines()[0]}
        self.oom_events.append(event)
        self.run.update_metadata(oom_fallbacks=self.oom_events)
        atomic_write_json(self.run.config, self.cfg.to_dict())
        print(f"Out of memory at optimizer step {self.step + 1}: continuing with batch_size {self.cfg.batch_size} x "
              f"gradient_accumulation_steps {self.cfg.gradient_accumulation_steps} (same effective batch "
              f"{self.cfg.effective_batch_size}).")
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def set_micro_batch(self, batch_size: int, accumulation: int) -> None:
        """Change micro-batch and accumulation keeping their product (the effective batch) and the position."""
        cfg = self.cfg
        assert batch_size * accumulation == cfg.effective_batch_size
        self.micro = self.micro * cfg.batch_size // batch_size
        self.cfg = cfg.replace(batch_size=batch_size, gradient_accumulation_steps=accumulation)
        self.accelerator.gradient_accumulation_steps = accumulation
        self.accelerator.step = 0

    def _install_signal_handlers(self):
        """SIGINT/SIGTERM: finish the current optimizer step, write a checkpoint, stop. A second signal aborts."""
        import signal
        import threading

        if threading.current_thread() is not threading.main_thread():
            return {}

        def request_stop(signum, _frame):
            if self.stop_requested:
                raise KeyboardInterrupt
            self.stop_requested = signal.Signals(signum).name
            print(f"\n{self.stop_requested} received: finishing optimizer step {self.step + 1}, then writing a checkpoint.")

        return {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}

    def stop_now(self, log_point: bool) -> bool:
        """Whether a signal asks to stop after this optimizer step. One process: at once. Several: the ranks agree
        at log points (one all-reduce where the losses are read anyway), so that all stop after the same step."""
        if self.world_size == 1:
            return bool(self.stop_requested)
        if not log_point:
            return False
        asked = torch.tensor([1.0 if self.stop_requested else 0.0], device=self.device)
        if self.accelerator.reduce(asked, "sum").item() == 0:
            return False
        self.stop_requested = self.stop_requested or "a signal to another rank"
        return True

    def fit(self, stop_after: Optional[int] = None) -> dict:
        from torch.utils.tensorboard import SummaryWriter
        from tqdm.auto import tqdm

        if self.is_main:  # every file of the run directory comes from the main process
            self.writer = SummaryWriter(str(self.run.tensorboard), purge_step=self.step if self.step else None)
        if self.step == 0 and self.is_main and not self.run.validation_csv.exists():
            self.validate()  # the step-0 held-out loss, the reference the curve is read against
        bar = tqdm(total=self.total_steps, initial=self.step, disable=not (self.progress and self.is_main),
                   desc=self.cfg.run_name, unit="step")
        old_handlers = self._install_signal_handlers()
        try:
            stopped = self._loop(bar, stop_after)
        finally:
            import signal

            for sig, handler in old_handlers.items():
                signal.signal(sig, handler)
            bar.close()
        if stopped:
            if self.writer:
                self.writer.close()
            return {"stopped_at": self.step, "signal": self.stop_requested}
        if not self.is_main:
            return {}
        final_val = self.validate() if self._last_val_step() != self.step else self._last_val_row()
        if self.step % self.cfg.sample_every:
            self.samples()
        self.writer.close()
        return final_val

    def _loop(self, bar, stop_after: Optional[int]) -> bool:
        """Epochs of micro-batches until total_steps; True when stopped early (stop_after or a signal)."""
        pending: list[dict] = []  # per-step device tensors, read every log_every steps (no sync inside a step)
        window_start, window_steps = time.perf_counter(), 0
        stopped = False
        self.denoiser.train()
        while self.step < self.total_steps and not stopped:
            cfg, acc = self.cfg, self.accelerator  # the micro-batch may change on out-of-memory
            micro_per_epoch = self.steps_per_epoch * cfg.gradient_accumulation_steps
            global_batch = cfg.batch_size * self.world_size  # one micro-batch over all ranks
            sampler = EpochSampler(len(self.train_set), cfg.seed, self.epoch, micro_per_epoch * global_batch,
                                   self.micro * global_batch, batch_size=cfg.batch_size, rank=self.rank,
                                   world_size=self.world_size)
            loader = DataLoader(
                self.train_set, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.num_workers,
                pin_memory=self.device.type == "cuda", persistent_workers=False, drop_last=True,
            )
            step_loss = torch.zeros((), device=self.device)
            t0 = time.perf_counter()
            oom = None
            for clips, captions, _signers in loader:
                clips = clips.to(self.device, non_blocking=True)
                try:
                    grad_norm = self.micro_step(clips, list(captions), step_loss)
                except torch.OutOfMemoryError as exc:
                    oom = exc
                    break
                self.micro += 1
                if not acc.sync_gradients:
                    continue
                # ---- one optimizer step done
                lr = self.lr_schedule.get_last_lr()[0]
                self.lr_schedule.step()
                self.step += 1
                ema_decay = None
                if self.ema and self.ema.update(self.step):
                    ema_decay = self.ema.last_step_decay  # per optimizer step, comparable across update_every
                pending.append({"epoch": self.epoch, "step": self.step, "loss": step_loss.clone(), "lr": lr,
                                "grad_norm": grad_norm.detach() if torch.is_tensor(grad_norm) else grad_norm,
                                "ema_decay": ema_decay})
                step_loss.zero_()
                window_steps += 1
                bar.update(1)
                log_point = self.step % cfg.log_every == 0 or self.step >= self.total_steps
                if log_point:
                    self.train_seconds += time.perf_counter() - t0
                    t0 = time.perf_counter()
                    self.flush_logs(pending, time.perf_counter() - window_start, window_steps, bar)
                    pending, window_start, window_steps = [], time.perf_counter(), 0
                if self.step % cfg.sample_every == 0:
                    self.samples()
                if self.step >= self.total_steps or (stop_after is not None and self.step >= stop_after) or self.stop_now(log_point):
                    stopped = self.step < self.total_steps
                    break
            self.train_seconds += time.perf_counter() - t0
            self.flush_logs(pending, time.perf_counter() - window_start, window_steps, bar)
            pending, window_start, window_steps = [], time.perf_counter(), 0
            if oom is not None:
                self.halve_micro_batch(oom)
                continue
            if self.micro >= micro_per_epoch:  # a whole epoch done
                self.epoch, self.micro = self.epoch + 1, 0
                self.validate()
                if self.epoch % cfg.save_every == 0:
                    self.checkpoint(f"epoch_{self.epoch}.pt")
            if stopped or self.step >= self.total_steps:
                self.checkpoint_if_new()
        return stopped

    def _last_val_row(self) -> dict:
        import csv

        with open(self.run.validation_csv, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        row = rows[-1]
        return {k: (float(v) if v not in ("", None) and k != "timestamp" else (None if v == "" else v)) for k, v in row.items()}

    def _last_val_step(self) -> int:
        try:
            return int(self._last_val_row()["step"])
        except (OSError, IndexError, KeyError):
            return -1

    def flush_logs(self, pending: list[dict], seconds: float, steps: int, bar) -> None:
        """Read the per-step losses (one host-device sync per log window), check them, write CSV/TensorBoard rows.

        Several processes: the logged loss is the mean over ranks (one all-reduce per log window, on every rank);
        the gradient norm is already global (taken after the all-reduce); the main process writes."""
        if not pending:
            return
        losses = torch.stack([p["loss"] for p in pending]).float()
        if self.world_size > 1:
            losses = self.accelerator.reduce(losses, "mean")
        losses = losses.cpu().tolist()
        norms = [float(p["grad_norm"]) if p["grad_norm"] is not None else None for p in pending]
        for p, value in zip(pending, losses):
            if not math.isfinite(value):
                good = list_checkpoints(self.run)
                where = f"the last good checkpoint, {self.run.checkpoints / good[-1]['file']}, is intact" if good else "no checkpoint had been written yet"
                raise NonFiniteLossError(
                    f"the training loss became {value} at optimizer step {p['step']} (epoch {p['epoch'] + 1}); the run "
                    f"stopped and {where}. Try a lower learning_rate, mixed_precision 'no' or a smaller max_grad_norm."
                )
        if not self.is_main:
            return
        step_time = seconds / max(1, steps)
        clips_per_s = self.global_batch_size / step_time if step_time > 0 else None
        mem = memory_gb(self.device)
        rows = []
        stamp = now()
        for p, value, norm in zip(pending, losses, norms):
            rows.append({**p, "loss": value, "grad_norm": norm, "step_time_s": step_time, "clips_per_s": clips_per_s,
                         "peak_memory_gb": mem["peak_gb"], "timestamp": stamp})
            self.writer.add_scalar("train/loss", value, p["step"])
            self.writer.add_scalar("train/lr", p["lr"], p["step"])
            if norm is not None:
                self.writer.add_scalar("train/grad_norm", norm, p["step"])
            if p["ema_decay"] is not None:
                self.writer.add_scalar("train/ema_decay", p["ema_decay"], p["step"])
        self.writer.add_scalar("perf/clips_per_s", clips_per_s or 0.0, pending[-1]["step"])
        self.writer.add_scalar("perf/peak_memory_gb", mem["peak_gb"], pending[-1]["step"])
        append_rows(self.run.training_csv, TRAINING_COLUMNS, rows)
        append_rows(self.run.memory_csv, MEMORY_COLUMNS, [{"step": pending[-1]["step"], "device": str(self.device), **mem, "timestamp": stamp}])
        bar.set_postfix(loss=f"{losses[-1]:.4f}", lr=f"{pending[-1]['lr']:.2e}", clips_s=f"{clips_per_s or 0:.1f}")


# --------------------------------------------------------------------------------------------- public API
def _summary(trainer: Trainer, final_val: dict) -> dict:
    import pandas as pd

    df = pd.read_csv(trainer.run.training_csv)
    mem = pd.read_csv(trainer.run.memory_csv) if trainer.run.memory_csv.exists() else None
    val = pd.read_csv(trainer.run.validation_csv)
    hours = trainer.train_seconds / 3600
    steps = int(df["step"].max())
    return {
        "steps": steps,
        "epochs": trainer.epoch + (trainer.micro > 0),
        "final_loss": float(df["loss"].iloc[-1]),
        "min_loss": float(df["loss"].min()),
        "mean_loss": float(df["loss"].mean()),
        "train_time_hours": hours,
        "peak_memory_gb": float(mem["peak_gb"].max()) if mem is not None else None,
        "mean_memory_gb": float(mem["allocated_gb"].mean()) if mem is not None else None,
        "clips_per_s": steps * trainer.global_batch_size / trainer.train_seconds if trainer.train_seconds else None,
        "world_size": trainer.world_size,
        "effective_batch_size": trainer.global_batch_size,  # batch_size x gradient_accumulation_steps x world_size
        "val_loss_step0": float(val["val_loss_raw"].iloc[0]),
        "val_loss_raw": final_val["val_loss_raw"],
        "val_loss_ema": final_val["val_loss_ema"] if trainer.cfg.use_ema else None,
        "num_parameters_millions": trainer.parameter_counts()["denoiser"] / 1e6,
        **_ema_summary(trainer),
    }


def _ema_summary(trainer: Trainer) -> dict:
    """What the EMA weights average: its update count, its per-step decay and horizon (configured, and where the
    warm-up had brought them by the end), and the share of its mass on the weights of the first half of training."""
    from .ema import horizon_steps, retained_mass

    keys = ("ema_updates", "ema_update_every", "ema_decay_per_step", "ema_decay_per_update", "ema_horizon_steps",
            "ema_final_decay_per_step", "ema_final_horizon_steps", "ema_mass_first_half")
    ema = trainer.ema
    if ema is None:
        return dict.fromkeys(keys)
    last = ema.updates * ema.update_every  # the last optimizer step folded in
    final = ema.last_step_decay if ema.updates else None
    half = trainer.step // 2 // ema.update_every * ema.update_every  # the last update in the first half
    return dict(zip(keys, (
        ema.updates, ema.update_every, ema.decay, ema.decay ** ema.update_every, horizon_steps(ema.decay),
        final, horizon_steps(final) if final is not None else None,
        retained_mass(half, last, ema.decay, ema.warmup) if ema.updates else None,
    )))


def train(config: Config, run_dir: Union[str, Path], progress: bool = True, stop_after: Optional[int] = None) -> RunResult:
    """Train one variant into `run_dir`; an unfinished run there is resumed from its latest checkpoint.

    `stop_after` ends the run after that many optimizer steps with a resumable checkpoint (status "interrupted"),
    as a pre-emption would; `train` again resumes it.

    Under `accelerate launch` or `torchrun` every process calls this; they train data parallel and only the main
    process writes the run directory. Every process returns once the run directory is complete.
    """
    from accelerate import PartialState

    if not isinstance(config, Config):
        config = from_dict(dict(config))
    state = PartialState(cpu=use_cpu())  # joins the process group of a multi-process launch (a no-op alone)
    main = state.is_main_process
    run = RunDir(run_dir)
    resume = find_resume_point(run, config)  # every process reads the same files...
    resume_path = resume[0] if resume else None
    meta = run.read_metadata()
    state.wait_for_everyone()  # ...before the main process writes any
    if main:
        run.make()
        atomic_write_json(run.config, config.to_dict())
    trainer = Trainer(config, run_dir, progress=progress)
    if main:
        run.update_metadata(
            status="running", error=None,
            start_time=meta.get("start_time") or now(), end_time=None, resumed_from=str(resume_path) if resume_path else None,
            git_commit=git_commit(), host=platform.node(), device_name=device_name(trainer.device),
            torch_version=torch.__version__, cuda_version=torch.version.cuda, packages=package_versions(),
            parameters=trainer.parameter_counts(), split=trainer.split, steps_per_epoch=trainer.steps_per_epoch,
            total_steps=trainer.total_steps, effective_batch_size=trainer.global_batch_size,
            world_size=trainer.world_size, mixed_precision=trainer.accelerator.mixed_precision,
        )
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
        atomic_write_json(run.summary, _summary(trainer, final_val))
        run.update_metadata(status="finished", end_time=now())
    state.wait_for_everyone()  # the others return once the run directory is complete
    return RunResult(run.root, read_json(run.summary, {}), "finished")


# --------------------------------------------------------------------------------------------- several processes
def free_port() -> int:
    """A TCP port free on this machine now, for a local process group's rendezvous."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_processes(config: Config, run_dir: Union[str, Path], num_processes: int = 1, progress: bool = True) -> RunResult:
    """`train` on `num_processes` local processes (one per GPU; CPU processes with gloo where there is no CUDA)
    through accelerate's `notebook_launcher`, from a notebook or any Python session; 1 calls `train` here.

    The processes are forked: nothing in this session may have created an accelerate `Accelerator` before (a run
    trained here in this kernel does), and CUDA must not be initialized yet."""
    if num_processes <= 1:
        return train(config, run_dir, progress=progress)
    from accelerate import notebook_launcher

    notebook_launcher(_train_launched, args=(config, run_dir, progress), num_processes=num_processes,
                      use_port=str(free_port()))
    run = RunDir(run_dir)
    return RunResult(run.root, read_json(run.summary, {}) or {}, run.status or "failed")


def _train_launched(config: Config, run_dir: Union[str, Path], progress: bool) -> None:
    """One process of `train_processes`. A forked process cannot draw in a notebook: transformers' weight-loading
    bar is switched off (`progress` decides the training bar's)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    train(config, run_dir, progress=progress)


def main(argv: Optional[list[str]] = None) -> int:
    """`python -m t2s.train --params FILE [--scale S] [-p key=value ...] [--run-dir DIR]`; the same command runs data
    parallel under `accelerate launch -m t2s.train ...` or `torchrun -m t2s.train ...` (one process per GPU)."""
    import argparse
    import sys

    from .config import load_config
    from .data import DataError

    parser = argparse.ArgumentParser(
        prog="python -m t2s.train",
        description="Train one variant into a run directory; under accelerate launch or torchrun, on every process.",
    )
    parser.add_argument("--params", required=True, metavar="FILE",
                        help="the variant's YAML file (params/baseline.yaml) or its name (baseline)")
    parser.add_argument("--scale", default="tiny", metavar="S",
                        help="params/scales/<S>.yaml or a YAML path, merged under --params (default tiny; 'none': no scale file)")
    parser.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key (repeatable), read as YAML")
    parser.add_argument("--run-dir", metavar="DIR", help="default: executed/<study>/<variant>-seed<seed>")
    parser.add_argument("--study", default="default", help="the study folder of the default run directory")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    loud = int(os.environ.get("RANK", "0")) == 0  # one error message for all processes
    try:
        params = Path(args.params)
        if (params.suffix in (".yaml", ".yml") or len(params.parts) > 1) and not params.is_file():
            raise ConfigError(f"--params: params file not found: {params}")
        scale = None if args.scale.lower() == "none" else args.scale
        cfg = load_config(args.params, scale, args.param)
        run_dir = Path(args.run_dir) if args.run_dir else PROJECT_ROOT / "executed" / args.study / cfg.run_name
        result = train(cfg, run_dir, progress=not args.no_progress)
    except (ConfigError, DataError, FileNotFoundError) as exc:
        if loud:
            print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    if loud:
        print(f"{result.status}: {result.run_dir}")
    return 0


if __name__ == "__main__":  # python -m t2s.train: run the package's copy of this module (t2s imports it first)
    from t2s.train import main as _main

    raise SystemExit(_main())
