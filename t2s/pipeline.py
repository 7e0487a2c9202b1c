"""Text -> clips: a denoiser, a text encoder and a DDIM scheduler composed into one batched sampler (diffusers'
pipeline idea: the model knows nothing of noise, the scheduler nothing of text; the loop below joins them).

    pipe = TextToSignPipeline.from_run("executed/mystudy/baseline-seed0")   # EMA weights of the finished run
    clips = pipe(captions, seeds=range(len(captions)), batch_size=8)        # (n, 3, F, H, W) in [-1, 1]

Every sampler of the kit goes through it: the trainer's samples, `generate` (`python -m t2s generate`), the
evaluation and the benchmark's sampling time.

Each clip depends on its caption and its seed only, never on the other clips of its batch:
* its caption is encoded on its own (`text.encode([caption])`), not padded with the batch's other captions inside the
  encoder (the states are padded afterwards, for the denoiser, with masked tokens);
* ONE CPU `torch.Generator` seeded with the clip's seed draws its initial noise and then, with eta > 0, the noise of
  each stochastic DDIM step, in that order -- diffusers' per-sample generators: `randn_tensor` and
  `DDIMScheduler.step(..., generator=[...])` draw element i of a batch from generator i.
So clip i sampled in any batch equals clip i sampled alone with seed i up to float rounding (batched matrix products
may round differently). The step: DDIM on the training schedule (`diffusion.build_sample_scheduler`), classifier-free
guidance in one forward pass over [unconditional; conditional] halves, eps = eps_null + s * (eps_text - eps_null),
eta capped at `diffusion.MAX_ETA`, output clamped to [-1, 1].

`load_run_models` reads a run directory (config, its final safetensors weights or else its latest good checkpoint
loaded with weights_only=True, the text encoder, the denoiser with its raw or EMA weights); `generate` writes clips of a run as GIFs (`write_gif`).
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import torch
from diffusers import DDIMScheduler
from diffusers.utils.torch_utils import randn_tensor

from t2s.config import Config, load_config_file
from t2s.data.video import to_frames
from t2s.data.video import write_gif as video_write_gif
from t2s.diffusion import MAX_ETA, build_sample_scheduler
from t2s.engine.checkpoint import load_run_weights
from t2s.engine.runtime import resolve_mixed_precision, run_autocast
from t2s.model import build_denoiser
from t2s.rundir import RunDir, atomic_write_json
from t2s.text import TextEncoder, pad_to

# what a bare pipeline samples with when neither the call nor a config says otherwise
DEFAULT_SAMPLING = {"num_inference_steps": 50, "guidance_scale": 7.5, "eta": 0.0}


def check_prompts(prompts: Sequence[str]) -> None:
    """A ValueError naming an empty prompt: the empty caption is the null caption, the unconditional input of
    classifier-free guidance, not something to sign."""
    for i, prompt in enumerate(prompts):
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"prompt {i} is empty ({prompt!r}): give a caption to sign (the empty caption is the null "
                             f"caption that guidance contrasts with)")


class TextToSignPipeline:
    """Batched text-to-clip sampling with classifier-free guidance (see the module docstring)."""

    def __init__(self, denoiser, text_encoder, scheduler: DDIMScheduler, clip_shape: tuple[int, int, int, int],
                 sampling: Optional[dict] = None, precision: str = "no"):
        self.denoiser, self.text, self.scheduler = denoiser, text_encoder, scheduler
        self.clip_shape = tuple(clip_shape)  # (channels, frames, height, width)
        self.sampling = {**DEFAULT_SAMPLING, **(sampling or {})}  # the call's defaults
        self.precision = precision  # the denoiser's autocast: 'no', 'bf16' or 'fp16' (fp16 on CUDA only)

    @classmethod
    def from_config(cls, denoiser, text_encoder, cfg: Config) -> "TextToSignPipeline":
        """The pipeline a run's config describes: its DDIM scheduler, clip size, steps, guidance scale and eta, and
        the denoiser in the run's mixed precision (`mixed_precision`, as training ran its forward passes)."""
        return cls(denoiser, text_encoder, build_sample_scheduler(cfg), (3, cfg.num_frames, cfg.image_size, cfg.image_size),
                   {"num_inference_steps": cfg.num_inference_steps, "guidance_scale": cfg.guidance_scale, "eta": cfg.eta},
                   precision=resolve_mixed_precision(cfg.mixed_precision))

    @classmethod
    def from_run(cls, run_dir: Union[str, Path], weights: str = "ema", device: Optional[str] = None) -> "TextToSignPipeline":
        """The pipeline of a run directory's final weights (else its latest good checkpoint), with its EMA (or raw) weights on `device`."""
        cfg, denoiser, text = load_run_models(run_dir, weights, device)
        return cls.from_config(denoiser, text, cfg)

    @property
    def device(self) -> torch.device:
        return next(self.denoiser.parameters()).device

    def autocast(self) -> Callable:
        """The denoiser's autocast factory on the pipeline's device: `precision` as `runtime.run_autocast` reads it
        (fp16 on CUDA only; bf16 halves an evaluation batch's forward on a CPU with native bf16, measured)."""
        return run_autocast(self.device, self.precision)

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
        num_inference_steps: Optional[int] = None,
        guidance_scale: Optional[float] = None,
        eta: Optional[float] = None,
        batch_size: int = 8,
        callback: Optional[Callable[[int], None]] = None,
        step_callback: Optional[Callable[[int], None]] = None,
    ) -> torch.Tensor:
        """Clips (n, c, f, h, w) in [-1, 1] for `prompts`, clip i from `seeds[i]` (default: seed i), sampled in
        batches of at most `batch_size` clips. Steps, guidance scale and eta default to the pipeline's (the run's
        config). `callback(k)` runs after each batch with its size k; `step_callback(i)` after each DDIM step i."""
        prompts = list(prompts)
        check_prompts(prompts)
        seeds = list(range(len(prompts))) if seeds is None else [int(s) for s in seeds]
        if len(seeds) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        given = {"num_inference_steps": num_inference_steps, "guidance_scale": guidance_scale, "eta": eta}
        sampling = {k: self.sampling[k] if v is None else v for k, v in given.items()}
        clips = []
        for start in range(0, len(prompts), batch_size):
            chunk = slice(start, start + batch_size)
            clips.append(self._sample(prompts[chunk], seeds[chunk], step_callback=step_callback, **sampling))
            if callback is not None:
                callback(len(clips[-1]))
        if not clips:
            return torch.empty(0, *self.clip_shape)
        return torch.cat(clips)

    def _sample(self, prompts: list[str], seeds: list[int], num_inference_steps: int, guidance_scale: float,
                eta: float, step_callback: Optional[Callable[[int], None]] = None) -> torch.Tensor:
        device, b = self.device, len(prompts)
        context, mask = self.encode(prompts)
        null_context, null_mask = self.text.null(b)
        length = max(context.shape[1], null_context.shape[1])
        context, mask = pad_to(context, mask, length)
        null_context, null_mask = pad_to(null_context, null_mask, length)
        both_context, both_mask = torch.cat([null_context, context]), torch.cat([null_mask, mask])
        # one CPU generator per clip: its initial noise first, then its DDIM step noise (eta > 0)
        generators = [torch.Generator().manual_seed(s) for s in seeds]
        x = randn_tensor((b, *self.clip_shape), generator=generators, device=torch.device("cpu")).to(device)
        # DDIM's step takes sqrt(1 - alpha_prev - std^2), exactly sqrt(0) at the first step with zero terminal SNR and
        # eta 1; float rounding made that sqrt(-tiny) = NaN for the cosine and scaled_linear schedules. A hair below 1
        # keeps it positive and changes the sampler by nothing measurable.
        eta = min(eta, MAX_ETA)
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        autocast = self.autocast()
        for i, t in enumerate(self.scheduler.timesteps):
            with autocast():  # the denoiser only: guidance and the DDIM step stay in float32
                if guidance_scale == 1.0:
                    out = self.denoiser(x, t.expand(b), context, mask).float()
                else:  # 'b c f h w -> (2 b) c f h w': unconditional half first, then the conditional half
                    both = self.denoiser(torch.cat([x, x]), t.expand(2 * b), both_context, both_mask).float()
            if guidance_scale != 1.0:
                out_null, out_text = both.chunk(2)
                out = out_null + guidance_scale * (out_text - out_null)
            x = self.scheduler.step(out, t, x, eta=eta, generator=generators).prev_sample
            if step_callback is not None:
                step_callback(i)
        return x.clamp(-1, 1)


# --------------------------------------------------------------------------------------------- a run's models
def load_run_models(run_dir: Union[str, Path], weights: str = "ema", device: Optional[str] = None):
    """(config, denoiser, text encoder) of a run, in eval mode on `device` (default: CUDA when available), with the
    EMA (`weights="ema"`) or raw weights in the denoiser: a finished run's final safetensors weights, else its latest
    good checkpoint (`checkpoint.load_run_weights`). The text encoder is frozen, with the run's fine-tuned weights
    when the run trained it (their EMA with `weights="ema"`: the EMA averages every trained parameter)."""
    run = RunDir(run_dir)
    if not run.config.exists():
        raise FileNotFoundError(f"{run.root} is not a run directory (no config.json)")
    if weights not in ("ema", "raw"):
        raise ValueError(f"weights must be 'ema' or 'raw', not {weights!r}")
    cfg = load_config_file(run.config)
    state = load_run_weights(run)
    if not state:
        raise FileNotFoundError(f"{run.root} holds no final weights ({run.weights.name}/) and {run.checkpoints} no "
                                f"usable checkpoint to generate from")
    if weights == "ema" and state["ema"] is None:
        raise ValueError(f"{run.root} was trained without EMA (use_ema false): use weights='raw'")
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    text = TextEncoder(cfg.text_encoder, cfg.max_text_length, True)
    text_state = state["text_encoder_ema"] if weights == "ema" and state["text_encoder_ema"] else state["text_encoder"]
    if text_state is not None:
        text.model.load_state_dict(text_state)
    denoiser = build_denoiser(cfg, text.hidden_size, text.special_token_counts)
    denoiser.load_state_dict(state["model"] if weights == "raw" else state["ema"])
    return cfg, denoiser.to(dev).eval(), text.to(dev).eval()


def write_gif(path: Path, clip: torch.Tensor, fps: int = 8) -> Path:
    """Write a (c, f, h, w) clip in [-1, 1] as a looping GIF, atomically (`t2s.data.video.write_gif`)."""
    video_write_gif(Path(path), to_frames(clip), duration_ms=int(1000 / fps))
    return Path(path)


def generate(run_dir: Union[str, Path], prompts: list[str], weights: str = "ema", seed: int = 0,
             out_dir: Optional[Union[str, Path]] = None, num_inference_steps: Optional[int] = None,
             guidance_scale: Optional[float] = None, device: Optional[str] = None) -> list[dict]:
    """Clips for prompts from a run (clip i from seed `seed + i`), written as GIFs to out_dir (default
    <run_dir>/generated/) with an index `<weights>_seed<seed>.json` ({prompt, file}, and `tokens` / `kept` for a prompt
    longer than the text encoder reads, which is cut with a warning); returns [{prompt, gif_path, clip}]. An empty
    prompt is a ValueError, before anything loads."""
    check_prompts(prompts)
    pipe = TextToSignPipeline.from_run(run_dir, weights, device)
    cut = {c["caption"]: c for c in pipe.text.cut_captions(prompts)}
    for entry in cut.values():
        warnings.warn(f"the prompt {entry['caption'][:60]!r}... has {entry['tokens']} tokens; the text encoder reads the "
                      f"first {entry['kept']} (max_text_length), the rest is cut", stacklevel=2)
    clips = pipe(prompts, seeds=range(seed, seed + len(prompts)), num_inference_steps=num_inference_steps,
                 guidance_scale=guidance_scale)
    out = Path(out_dir) if out_dir else Path(run_dir) / "generated"
    results, index = [], []
    for i, (prompt, clip) in enumerate(zip(prompts, clips)):
        path = write_gif(out / f"{weights}_seed{seed}_{i:03d}.gif", clip)
        results.append({"prompt": prompt, "gif_path": path, "clip": clip.cpu()})
        index.append({"prompt": prompt, "file": path.name,
                      **({k: cut[prompt][k] for k in ("tokens", "kept")} if prompt in cut else {})})
    atomic_write_json(out / f"{weights}_seed{seed}.json", index)
    return results
