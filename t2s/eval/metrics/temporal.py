"""Frame-to-frame statistics of a set of clips: temporal consistency (cosine of consecutive frames) and motion.

Rules: clips ``(B, C, F, H, W)`` in ``[-1, 1]`` with F >= 2, rescaled to ``[0, 1]`` with ``(x + 1) / 2`` and clamped;
one float over all frame pairs and clips. Imports nothing from t2s.
"""
from __future__ import annotations

import torch
from einops import rearrange


def _consecutive(clips: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, C, F, H, W) in [-1, 1], F >= 2 -> frames t and t+1 in [0, 1], each (B, F-1, C*H*W) float64."""
    if clips.ndim != 5 or clips.shape[2] < 2:
        raise ValueError(f"need clips (B, C, F, H, W) with F >= 2 frames, got {tuple(clips.shape)}")
    frames = rearrange(((clips.double() + 1) / 2).clamp(0, 1), "b c f h w -> b f (c h w)")
    return frames[:, :-1], frames[:, 1:]


def temporal_consistency(clips: torch.Tensor) -> float:
    """Mean cosine similarity between consecutive frames (pixel vectors in [0, 1]), over all frame pairs
    and clips. 1 for a frozen clip. Two all-black frames (both norms 0) count as 1, one black frame as 0.
    Pixel cosine is dominated by overall brightness, so read it next to ``motion_magnitude``."""
    a, b = _consecutive(clips)
    na, nb = a.norm(dim=-1), b.norm(dim=-1)
    cosine = (a * b).sum(-1) / (na * nb).clamp_min(1e-12)
    cosine = torch.where((na == 0) & (nb == 0), torch.ones_like(cosine), cosine)
    return float(cosine.mean())


def motion_magnitude(clips: torch.Tensor) -> float:
    """Mean absolute difference between consecutive frames, in [0, 1] pixel units (0 for a frozen clip)."""
    a, b = _consecutive(clips)
    return float((b - a).abs().mean())
