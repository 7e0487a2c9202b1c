"""The training engine: the epoch's data order (`EpochSampler`, `epoch_loader`), the optimizer (`build_optimizer`) and
the `Engine`: setup of data, text encoder, denoiser, optimizer, schedule and EMA, then ONE optimizer step
(`train_step` = `gradient_accumulation_steps` micro-batches of `micro_step`). accelerate places the models, runs mixed
precision and accumulates gradients; the step itself stays visible. The trainer (`t2s.engine.train.Trainer`) loops over these
steps; the benchmark (`t2s.bench`) times this same `train_step`, phase by phase, through its optional `timer` (a no-op
in training).

Reproducibility: the shuffle order of epoch e comes from (seed, e); noise, timesteps and caption dropout come from
generators whose states are checkpointed (`t2s.engine.checkpoint`); an epoch holds exactly `steps_per_epoch * accumulation`
micro-batches.

Data parallel: every process runs this same code on its slice of each global micro-batch (batch_size x world_size, in
the single-process order); noise, timesteps and caption dropout are drawn for the global micro-batch, so N processes
with batch b compute what one process with batch N*b would. DDP all-reduces the gradients.

Imports: config, data, text, model, diffusion, ema, checkpoint state, runtime. Imported by train and bench.
"""
from __future__ import annotations

from contextlib import nullcontext
from typing import Iterator, Optional

import torch
from accelerate.utils import DistributedDataParallelKwargs, set_seed
from diffusers.optimization import get_cosine_schedule_with_warmup
from torch import nn
from torch.utils.data import DataLoader, Sampler

from t2s.config import Config, ConfigError
from t2s.data.splits import build_datasets, development_set
from t2s.diffusion import build_train_scheduler, diffusion_loss, held_out_loss
from t2s.ema import EMA
from t2s.engine.checkpoint import checkpoint_state, load_checkpoint_state
from t2s.engine.runtime import make_accelerator, uses_channels_last
from t2s.model import build_denoiser, count_parameters, to_channels_last
from t2s.text import TextEncoder, build_text_encoder


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
    """AdamW over the denoiser's trainable parameters (no weight decay on biases and norms) and, when trainable, the
    text encoder at its own learning rate. `fused`: one kernel for the whole update, on CUDA and CPU."""
    rest = [p for p in denoiser.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in rest if p.ndim >= 2], "lr": cfg.learning_rate, "weight_decay": cfg.weight_decay,
         "name": "denoiser"},
        {"params": [p for p in rest if p.ndim < 2], "lr": cfg.learning_rate, "weight_decay": 0.0,
         "name": "denoiser_no_decay"},
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
        # the held-out loss reads the development part of the validation split; the test part is the evaluation's
        self.dev_set, parts = development_set(cfg, self.train_set, self.val_set)
        self.split = {**self.split, **parts}
        self.steps_per_epoch = steps_per_epoch(len(self.train_set), cfg, self.world_size)
        if self.steps_per_epoch < 1:
            raise ConfigError(
                f"the training split has {len(self.train_set)} clips: fewer than one optimizer step of "
                f"batch_size {cfg.batch_size} x gradient_accumulation_steps {cfg.gradient_accumulation_steps}"
                f" x {self.world_size} processes")
        self.total_steps = min(cfg.num_epochs * self.steps_per_epoch, cfg.max_steps or float("inf"))
        # models: the cross-attention width is the text encoder's hidden size
        self.text = text if text is not None else build_text_encoder(cfg)
        denoiser = denoiser if denoiser is not None else build_denoiser(cfg, self.text.hidden_size, self.text.special_token_counts)
        if uses_channels_last(cfg, self.device):
            to_channels_last(denoiser)
        self.noise_schedule = build_train_scheduler(cfg)
        optimizer = build_optimizer(cfg, denoiser, self.text, fused=fused_adamw)
        self.lr_schedule = get_cosine_schedule_with_warmup(
            optimizer, num_warmup_steps=min(cfg.warmup_steps, self.total_steps), num_training_steps=self.total_steps)
        self.denoiser, self.optimizer = self.accelerator.prepare(denoiser, optimizer)
        self._prepare_text()
        self.model = self.accelerator.unwrap_model(self.denoiser)
        # the EMA averages every trained parameter: the denoiser's and, when it trains, the text encoder's
        trained_text = self.accelerator.unwrap_model(self.text).model if self.text_is_trained else None
        self.ema = (EMA(self.model, cfg.ema_decay, cfg.ema_update_every, cfg.ema_warmup, text_encoder=trained_text)
                    if cfg.use_ema else None)
        self.generator = torch.Generator(device=self.device).manual_seed(cfg.seed)  # noise and timesteps
        self.drop_generator = torch.Generator().manual_seed(cfg.seed + 1)  # caption dropout
        self.step, self.epoch, self.micro = 0, 0, 0  # optimizer steps done; current epoch; micro-batches done in it
        self.train_seconds = 0.0
        self.oom_hook = None  # tests: a callable(engine) -> bool that injects an out-of-memory error

    def _prepare_text(self) -> None:
        """A trainable text encoder is wrapped (DDP across processes) like the denoiser; a frozen one only moved."""
        trainable = self.text_is_trained = bool(self.text.trainable_parameters())
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
        """The fixed-timestep, fixed-noise validation loss (diffusion.held_out_loss) of the weights in the model now,
        on the development part's validation clips."""
        text = self.accelerator.unwrap_model(self.text)
        return held_out_loss(self.model, text, self.noise_schedule, self.dev_set, self.cfg, self.device,
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
