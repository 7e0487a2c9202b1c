"""Noise schedules, training targets and the held-out loss, on diffusers' schedulers.

Training noise comes from `DDPMScheduler.add_noise`; sampling (`t2s.pipeline`) from `DDIMScheduler.step` (eta). The
denoiser predicts epsilon or v (`prediction_type`); the training target follows it.
"""
from __future__ import annotations

import contextlib

import torch
from diffusers import DDIMScheduler, DDPMScheduler

MAX_ETA = 1.0 - 1e-4  # the largest DDIM eta sampled with (see t2s.pipeline)
VAL_NOISE_SEED = 20240611  # fixed noise for the held-out loss: identical across variants and seeds
_BETA_SCHEDULES = {"linear": "linear", "scaled_linear": "scaled_linear", "cosine": "squaredcos_cap_v2"}


def build_train_scheduler(cfg) -> DDPMScheduler:
    """Training noise. With `zero_terminal_snr` the betas are rescaled so that the last timestep is pure noise
    (Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps are Flawed"): otherwise the model learns that
    x_T still carries the clip's mean colour, and samples from pure noise come out grey. It needs v-prediction."""
    return DDPMScheduler(
        num_train_timesteps=cfg.num_train_timesteps,
        beta_schedule=_BETA_SCHEDULES[cfg.beta_schedule],
        prediction_type=cfg.prediction_type,
        rescale_betas_zero_snr=cfg.zero_terminal_snr,
        clip_sample=True,
        clip_sample_range=1.0,
    )


def build_sample_scheduler(cfg) -> DDIMScheduler:
    """DDIM on the training schedule; "trailing" timestep spacing so that sampling starts at the last timestep."""
    return DDIMScheduler.from_config(build_train_scheduler(cfg).config, timestep_spacing="trailing")


def training_target(scheduler: DDPMScheduler, clean: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """What the denoiser should output for (clean, noise, t): epsilon, v = alpha_t * eps - sigma_t * x0, or x0."""
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "sample":
        return clean
    return scheduler.get_velocity(clean, noise, t)


def motion_weights(clean: torch.Tensor, strength: float) -> torch.Tensor:
    """Per-pixel loss weights (b 1 f h w) that favour what moves: 1 + strength * m / mean(m), m = the pixel's distance
    from its clip's temporal mean (averaged over channels), normalised per clip. Static background and body get ~1,
    the small moving hands much more; the weights' mean is 1 + strength. A clip that hardly moves (mean motion below
    1e-3 of the [-1, 1] pixel range, e.g. float rounding of a still clip) keeps weights near 1."""
    motion = (clean - clean.mean(dim=2, keepdim=True)).abs().mean(dim=1, keepdim=True)
    scale = motion.mean(dim=(2, 3, 4), keepdim=True).clamp_min(1e-3)
    return 1.0 + strength * motion / scale


def diffusion_loss(denoiser, scheduler, clean, noise, t, context, mask, motion_weight: float = 0.0) -> torch.Tensor:
    """Mean squared error of the denoiser's prediction on clean clips (b c f h w) noised to timesteps t (b,); with
    `motion_weight` > 0 each pixel's error is weighted by `motion_weights` (normalised so the weights average 1)."""
    noisy = scheduler.add_noise(clean, noise, t)
    pred = denoiser(noisy, t, context, mask)
    target = training_target(scheduler, clean, noise, t).float()
    if motion_weight <= 0:
        return torch.nn.functional.mse_loss(pred.float(), target)
    weights = motion_weights(clean.float(), motion_weight)
    return ((pred.float() - target) ** 2 * weights).mean() / weights.mean()


@torch.no_grad()
def held_out_loss(denoiser, text, noise_schedule, val_set, cfg, device, autocast=None,
                  other_captions: bool = False) -> float:
    """The engine's held-out diffusion loss: mean MSE over the first `val_max_clips` validation clips, each noised
    to the `val_num_timesteps` fixed timesteps (k + 0.5) * T / val_num_timesteps with noise from one generator
    seeded `VAL_NOISE_SEED`, batches of min(16, 2 * batch_size) clips, captions never dropped.

    `other_captions`: each clip is conditioned on the next clip's caption instead of its own (the last on the first's;
    same clips, noise and timesteps), so the difference to the plain loss is what the caption is worth to the model.

    Used by the trainer's validation, the evaluation and the benchmark, so their numbers agree.
    `autocast`: a zero-argument context-manager factory wrapped around each forward pass (None: full precision).
    The denoiser is in eval mode meanwhile and gets its previous mode back.
    """
    n = min(len(val_set), cfg.val_max_clips)
    T = cfg.num_train_timesteps
    timesteps = [int((k + 0.5) * T / cfg.val_num_timesteps) for k in range(cfg.val_num_timesteps)]
    g = torch.Generator().manual_seed(VAL_NOISE_SEED)
    was_training = denoiser.training
    denoiser.eval()
    total, count = 0.0, 0
    bs = max(1, min(16, 2 * cfg.batch_size))
    # the next clip's caption for each clip (read once here: the batches below see only their own clips)
    swapped = [val_set[(i + 1) % n][1] for i in range(n)] if other_captions else None
    try:
        for start in range(0, n, bs):
            items = [val_set[i] for i in range(start, min(n, start + bs))]
            clips = torch.stack([it[0] for it in items]).to(device)  # (b, c, f, h, w)
            captions = [it[1] for it in items] if swapped is None else swapped[start : start + len(items)]
            ctx, mask = text.encode(captions)
            for t in timesteps:
                noise = torch.randn(clips.shape, generator=g).to(device)
                tt = torch.full((clips.shape[0],), t, device=device, dtype=torch.long)
                with autocast() if autocast is not None else contextlib.nullcontext():
                    loss = diffusion_loss(denoiser, noise_schedule, clips, noise, tt, ctx, mask)
                total += loss.item() * clips.shape[0]
                count += clips.shape[0]
    finally:
        denoiser.train(was_training)
    return total / count
