"""Text -> clips: a denoiser, a text encoder and a DDIM scheduler composed into one batched sampler (diffusers'
pipeline idea: the model knows nothing of noise, the scheduler nothing of text; the loop below joins them).

    pipe = TextToSignPipeline.from_config(denoiser, text, cfg)
    clips = pipe(captions, seeds=range(len(captions)), batch_size=8)   # (n, 3, F, H, W) in [-1, 1]

Each clip depends on its caption and its seed only, never on the other clips of its batch:
* its caption is encoded on its own (`text.encode([caption])`), not padded with the batch's other captions inside the
  encoder (the states are padded afterwards, for the denoiser, with masked tokens);
* its initial noise and its stochastic DDIM noise (eta > 0) come from its own CPU `torch.Generator`s seeded with its
  seed -- diffusers' per-sample generators: `randn_tensor` and `DDIMScheduler.step(..., generator=[...])` draw
  element i of a batch from generator i.
So clip i sampled in any batch equals clip i sampled alone with seed i up to float rounding (batched matrix products
may round differently), and a batch of one reproduces `t2s.train.generate_clips([caption], seed=i)` exactly:
the math mirrors it (and `t2s.diffusion.sample`) step for step -- the same scheduler (`build_sample_scheduler`),
classifier-free guidance in one forward pass over [unconditional; conditional] halves,
eps = eps_null + s * (eps_text - eps_null), eta capped at `diffusion.MAX_ETA`, output clamped to [-1, 1] -- including
its seeding: the initial noise and the step noise each come from a fresh generator seeded with the clip's seed.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
from diffusers import DDIMScheduler
from diffusers.utils.torch_utils import randn_tensor

from .diffusion import MAX_ETA, build_sample_scheduler
from .text import pad_to


class TextToSignPipeline:
    """Batched text-to-clip sampling with classifier-free guidance (see the module docstring)."""

    def __init__(self, denoiser, text_encoder, scheduler: DDIMScheduler, clip_shape: tuple[int, int, int, int]):
        self.denoiser, self.text, self.scheduler = denoiser, text_encoder, scheduler
        self.clip_shape = tuple(clip_shape)  # (channels, frames, height, width)

    @classmethod
    def from_config(cls, denoiser, text_encoder, cfg) -> "TextToSignPipeline":
        """The pipeline a run's config describes: its DDIM scheduler and clip size."""
        return cls(denoiser, text_encoder, build_sample_scheduler(cfg), (3, cfg.num_frames, cfg.image_size, cfg.image_size))

    @property
    def device(self) -> torch.device:
        return next(self.denoiser.parameters()).device

    def encode(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token states (b, L, D) and mask (b, L) of prompts, each encoded alone, then right-padded to a common L."""
        encoded = [self.text.encode([p]) for p in prompts]
        length = max(states.shape[1] for states, _ in encoded)
        padded = [pad_to(states, mask, length) for states, mask in encoded]
        return torch.cat([s for s, _ in padded]), torch.cat([m for _, m in padded])

    @torch.no_grad()
    def __call__(
        self,
        prompts: Sequence[str],
        seeds: Optional[Sequence[int]] = None,
        num_inference_steps: int = 50,
        guidance_scale: float = 7.5,
        eta: float = 0.0,
        batch_size: int = 8,
        callback: Optional[Callable[[int], None]] = None,
    ) -> torch.Tensor:
        """Clips (n, c, f, h, w) in [-1, 1] for `prompts`, clip i from `seeds[i]` (default: seed i), sampled in
        batches of at most `batch_size` clips; `callback(k)` is called after each batch with its size k."""
        prompts = list(prompts)
        seeds = list(range(len(prompts))) if seeds is None else [int(s) for s in seeds]
        if len(seeds) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        clips = []
        for start in range(0, len(prompts), batch_size):
            chunk = slice(start, start + batch_size)
            clips.append(self._sample(prompts[chunk], seeds[chunk], num_inference_steps, guidance_scale, eta))
            if callback is not None:
                callback(len(clips[-1]))
        if not clips:
            return torch.empty(0, *self.clip_shape)
        return torch.cat(clips)

    def _sample(self, prompts: list[str], seeds: list[int], steps: int, guidance_scale: float, eta: float) -> torch.Tensor:
        device, b = self.device, len(prompts)
        context, mask = self.encode(prompts)
        null_context, null_mask = self.text.null(b)
        length = max(context.shape[1], null_context.shape[1])
        context, mask = pad_to(context, mask, length)
        null_context, null_mask = pad_to(null_context, null_mask, length)
        both_context, both_mask = torch.cat([null_context, context]), torch.cat([null_mask, mask])
        # one CPU generator per clip for the initial noise, another (same seed) for the DDIM step noise
        noise_generators = [torch.Generator().manual_seed(s) for s in seeds]
        step_generators = [torch.Generator().manual_seed(s) for s in seeds]
        x = randn_tensor((b, *self.clip_shape), generator=noise_generators, device=torch.device("cpu")).to(device)
        eta = min(eta, MAX_ETA)  # see diffusion.sample: eta 1 can take sqrt of a rounding-negative at the first step
        self.scheduler.set_timesteps(steps, device=device)
        for t in self.scheduler.timesteps:
            if guidance_scale == 1.0:
                out = self.denoiser(x, t.expand(b), context, mask)
            else:  # 'b c f h w -> (2 b) c f h w': unconditional half first, then the conditional half
                out_null, out_text = self.denoiser(torch.cat([x, x]), t.expand(2 * b), both_context, both_mask).chunk(2)
                out = out_null + guidance_scale * (out_text - out_null)
            x = self.scheduler.step(out, t, x, eta=eta, generator=step_generators).prev_sample
        return x.clamp(-1, 1)
