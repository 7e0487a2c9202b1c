"""Noise schedules and sampling with classifier-free guidance, on diffusers' schedulers.

Training noise comes from `DDPMScheduler.add_noise`; sampling from `DDIMScheduler.step` (eta). The denoiser
predicts epsilon or v (`prediction_type`); the training target follows it.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Optional

import torch
from diffusers import DDIMScheduler, DDPMScheduler

MAX_ETA = 1.0 - 1e-4  # see sample()
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


def diffusion_loss(denoiser, scheduler, clean, noise, t, context, mask) -> torch.Tensor:
    """Mean squared error of the denoiser's prediction on clean clips (b c f h w) noised to timesteps t (b,)."""
    noisy = scheduler.add_noise(clean, noise, t)
    pred = denoiser(noisy, t, context, mask)
    return torch.nn.functional.mse_loss(pred.float(), training_target(scheduler, clean, noise, t).float())


@torch.no_grad()
def sample(
    denoiser,
    scheduler: DDIMScheduler,
    context: torch.Tensor,
    mask: torch.Tensor,
    null_context: torch.Tensor,
    null_mask: torch.Tensor,
    shape: tuple[int, ...],
    num_inference_steps: int = 50,
    guidance_scale: float = 7.5,
    eta: float = 0.0,
    generator: Optional[torch.Generator] = None,
    progress: Optional[Callable] = None,
    initial_noise: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """DDIM sampling with classifier-free guidance: eps = eps_null + s * (eps_text - eps_null).

    context (b, s, d) and null_context (b, s', d) are padded to a common length; returns clips (b, c, f, h, w) in [-1, 1].
    """
    from .text import pad_to

    device = context.device
    length = max(context.shape[1], null_context.shape[1])
    context, mask = pad_to(context, mask, length)
    null_context, null_mask = pad_to(null_context, null_mask, length)
    both_ctx = torch.cat([null_context, context])
    both_mask = torch.cat([null_mask, mask])
    if initial_noise is None:
        initial_noise = torch.randn(shape, generator=generator, device="cpu" if generator is None else generator.device)
    x = initial_noise.to(device)
    # DDIM's step takes sqrt(1 - alpha_prev - std^2), which is exactly sqrt(0) at the first step with zero terminal SNR
    # and eta 1; float rounding made that sqrt(-tiny) = NaN for the cosine and scaled_linear schedules. A hair below 1
    # keeps it positive and changes the sampler by nothing measurable.
    eta = min(eta, MAX_ETA)
    scheduler.set_timesteps(num_inference_steps, device=device)
    steps = scheduler.timesteps
    for t in progress(steps) if progress else steps:
        if guidance_scale == 1.0:
            out = denoiser(x, t.expand(x.shape[0]), context, mask)
        else:
            out_null, out_text = denoiser(torch.cat([x, x]), t.expand(2 * x.shape[0]), both_ctx, both_mask).chunk(2)
            out = out_null + guidance_scale * (out_text - out_null)
        x = scheduler.step(out, t, x, eta=eta, generator=generator).prev_sample
    return x.clamp(-1, 1)


@torch.no_grad()
def held_out_loss(denoiser, text, noise_schedule, val_set, cfg, device, autocast=None) -> float:
    """The engine's held-out diffusion loss: mean MSE over the first `val_max_clips` validation clips, each noised
    to the `val_num_timesteps` fixed timesteps (k + 0.5) * T / val_num_timesteps with noise from one generator
    seeded `VAL_NOISE_SEED`, batches of min(16, 2 * batch_size) clips, captions never dropped.

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
    try:
        for start in range(0, n, bs):
            items = [val_set[i] for i in range(start, min(n, start + bs))]
            clips = torch.stack([it[0] for it in items]).to(device)  # (b, c, f, h, w)
            ctx, mask = text.encode([it[1] for it in items])
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
