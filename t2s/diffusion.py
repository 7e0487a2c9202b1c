"""Noise schedules and sampling with classifier-free guidance, on diffusers' schedulers.

Training noise comes from `DDPMScheduler.add_noise`; sampling from `DDIMScheduler.step` (eta). The denoiser
predicts epsilon or v (`prediction_type`); the training target follows it.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
from diffusers import DDIMScheduler, DDPMScheduler

_BETA_SCHEDULES = {"linear": "linear", "scaled_linear": "scaled_linear", "cosine": "squaredcos_cap_v2"}


def build_train_scheduler(cfg) -> DDPMScheduler:
    return DDPMScheduler(
        num_train_timesteps=cfg.num_train_timesteps,
        beta_schedule=_BETA_SCHEDULES[cfg.beta_schedule],
        prediction_type=cfg.prediction_type,
        clip_sample=True,
        clip_sample_range=1.0,
    )


def build_sample_scheduler(cfg) -> DDIMScheduler:
    return DDIMScheduler.from_config(build_train_scheduler(cfg).config)


def training_target(scheduler: DDPMScheduler, clean: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """What the denoiser should output for (clean, noise, t): epsilon, or v = alpha_t * eps - sigma_t * x0."""
    if scheduler.config.prediction_type == "epsilon":
        return noise
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
