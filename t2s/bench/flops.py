"""FLOPs and the peak they are compared with: `FlopCounterMode` on the meta device (counting costs no compute), the
dense-matmul peak of a dtype on this device, and model FLOP utilization (MFU = achieved FLOP/s / that peak)."""
from __future__ import annotations

import math
import time
from typing import Any, Callable, Optional

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from t2s.bench.timing import make_sync
from t2s.config import Config
from t2s.diffusion import build_train_scheduler, diffusion_loss
from t2s.engine.runtime import cpu_has_native_bf16


def count_flops(fn: Callable[[], Any]) -> tuple[int, dict[str, int]]:
    """(total FLOPs, FLOPs per aten op) of running `fn` under torch.utils.flop_counter.FlopCounterMode. The counter
    counts matmuls, convolutions and attention (2 FLOPs per multiply-add), forward and backward alike."""
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    by_op = {str(k).replace("aten.", ""): int(v) for k, v in counter.get_flop_counts().get("Global", {}).items()}
    return int(counter.get_total_flops()), by_op


def training_step_flops(build_model: Callable[[], nn.Module], cfg: Config, context_len: int, context_dim: int,
                        batch_size: Optional[int] = None) -> tuple[int, dict[str, int]]:
    """Forward + backward FLOPs of one training step (the diffusion loss of one batch), counted on the meta device:
    shapes only, no arithmetic, so the reference scale counts in a second. On the meta device attention runs as
    explicit matmuls, which the counter sees; a CPU kernel for scaled_dot_product_attention would go uncounted."""
    b = batch_size or cfg.batch_size
    scheduler = build_train_scheduler(cfg)
    with torch.device("meta"):
        model = build_model()
        model.train()
        clips = torch.empty(b, 3, cfg.num_frames, cfg.image_size, cfg.image_size)
        noise = torch.empty_like(clips)
        t = torch.zeros(b, dtype=torch.long)
        context = torch.empty(b, context_len, context_dim)
        mask = torch.ones(b, context_len, dtype=torch.bool)

        def step():
            loss = diffusion_loss(model, scheduler, clips, noise, t, context, mask)
            loss.backward()

        return count_flops(step)


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int = 2048, trials: int = 5,
                min_seconds: float = 0.2) -> dict:
    """The best FLOP/s of repeated dense (n x n) @ (n x n) matmuls in `dtype` on `device`, best of `trials`
    (each trial repeats the matmul until it has run `min_seconds`)."""
    sync = make_sync(device)
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    out = torch.empty(n, n, device=device, dtype=dtype)
    torch.mm(a, b, out=out)  # warm-up
    sync()
    best = math.inf
    reps = 1
    for _ in range(trials):
        while True:
            sync()
            t0 = time.perf_counter()
            for _ in range(reps):
                torch.mm(a, b, out=out)
            sync()
            dt = time.perf_counter() - t0
            if dt >= min_seconds or reps >= 1 << 14:
                break
            reps *= 2
        best = min(best, dt / reps)
    return {"flops_per_s": 2 * n**3 / best, "dtype": str(dtype).replace("torch.", ""), "n": n, "trials": trials,
            "best_seconds": best}


def measure_peaks(device: torch.device, trials: int) -> dict:
    """The fp32 and bf16 matmul peaks (without native bf16 on this CPU, the fp32 peak stands in for bf16)."""
    peaks = {"fp32": matmul_peak(device, torch.float32, trials=trials)}
    if device.type == "cuda" or cpu_has_native_bf16():
        peaks["bf16"] = matmul_peak(device, torch.bfloat16, trials=trials)
    else:
        peaks["bf16"] = {**peaks["fp32"], "note": "no bf16 matmul support on this CPU: the fp32 peak stands in"}
    return peaks


def best_peaks(a: dict, b: dict) -> dict:
    """Per dtype, the higher of two peak measurements (load on the machine can only lower a peak)."""
    return {k: (a[k] if a[k]["flops_per_s"] >= b[k]["flops_per_s"] else b[k]) for k in a}


def peak_for(mixed_precision: str, peaks: dict) -> dict:
    """The matmul peak of the dtype the step computes in: bf16 under bf16 autocast, else float32."""
    return peaks["bf16" if mixed_precision == "bf16" else "fp32"]


def mfu(flops: int, seconds: float, peak: float) -> dict:
    achieved = flops / seconds if seconds > 0 else None
    return {"achieved_flops_per_s": achieved, "mfu": achieved / peak if achieved and peak else None}
