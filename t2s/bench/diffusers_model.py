"""diffusers' `UNet3DConditionModel` behind t2s's denoiser interface, at the parameter count of t2s's denoiser: the
model the benchmark's step and race compare with."""
from __future__ import annotations

import json
from typing import Callable, Optional

import torch
from diffusers import UNet3DConditionModel
from torch import nn

from t2s.config import Config, ConfigError
from t2s.model import count_parameters


class DiffusersDenoiser(nn.Module):
    """diffusers' UNet3DConditionModel behind t2s's denoiser interface. It has no cross-attention mask: padded
    caption tokens (zeros) are attended to (their keys are zero, so they take a share of attention, uninformative)."""

    def __init__(self, **unet_kwargs):
        super().__init__()
        self.unet = UNet3DConditionModel(**unet_kwargs)

    def forward(self, x, timesteps, context, context_mask=None):
        return self.unet(x, timesteps, encoder_hidden_states=context, return_dict=False)[0]


def diffusers_unet_kwargs(cfg: Config, context_dim: int, base: int, layers: int, heads: int, groups: int) -> dict:
    """UNet3DConditionModel arguments with t2s's layout: as many levels as channel_mult, channels base * mult,
    cross-attention blocks at the same resolutions as t2s's attention (the mid block always has it)."""
    res, down = cfg.image_size, []
    for _ in cfg.channel_mult:
        down.append("CrossAttnDownBlock3D" if res in cfg.attention_resolutions else "DownBlock3D")
        res //= 2
    up = [d.replace("Down", "Up") for d in reversed(down)]
    return {
        "in_channels": 3, "out_channels": 3, "sample_size": cfg.image_size,
        "down_block_types": tuple(down), "up_block_types": tuple(up),
        "block_out_channels": tuple(base * m for m in cfg.channel_mult),
        "layers_per_block": layers, "norm_num_groups": groups, "cross_attention_dim": context_dim,
        # diffusers' UNet3D reads attention_head_dim as the NUMBER of heads of its spatial transformers
        "attention_head_dim": heads,
    }


_PARAM_CACHE: dict[str, int] = {}


def parameters_on_meta(build: Callable[[], nn.Module]) -> int:
    """Parameters of the model `build()` makes, built on the meta device (no memory, no initialization)."""
    with torch.device("meta"):
        return count_parameters(build())


def diffusers_parameters(kwargs: dict) -> int:
    key = json.dumps(kwargs, sort_keys=True, default=list)
    if key not in _PARAM_CACHE:
        _PARAM_CACHE[key] = parameters_on_meta(lambda: DiffusersDenoiser(**kwargs))
    return _PARAM_CACHE[key]


def match_diffusers(cfg: Config, context_dim: int, target: int, tolerance: float = 0.15) -> tuple[dict, int]:
    """The UNet3DConditionModel closest in parameter count to `target` with t2s's levels, attention resolutions
    and layers per level (num_res_blocks): the base width (steps of 4) closest to `target` with t2s's head count,
    else with 8, 4, 2, 1 heads, else other depths, taking the first within `tolerance` (else the closest seen). Group norm takes the largest of 32/16/8/4/2 groups that
    divides every width."""
    mults = cfg.channel_mult
    bases = list(range(4, 8 * cfg.model_channels + 1, 4))

    def candidate(base: int, layers: int, heads: int) -> Optional[tuple[dict, int]]:
        chans = [base * m for m in mults]
        groups = next((g for g in (32, 16, 8, 4, 2) if all(c % g == 0 for c in chans)), None)
        if groups is None or any(c % heads for c in chans):
            return None
        kwargs = diffusers_unet_kwargs(cfg, context_dim, base, layers, heads, groups)
        return kwargs, diffusers_parameters(kwargs)

    def closest(layers: int, heads: int) -> Optional[tuple[dict, int]]:
        valid = [b for b in bases if all((b * m) % heads == 0 for m in mults)]
        if not valid:
            return None
        lo, hi = 0, len(valid) - 1  # the parameter count grows with the width: bisect, then look at the neighbours
        while lo < hi:
            mid = (lo + hi) // 2
            found = candidate(valid[mid], layers, heads)
            if found is not None and found[1] < target:
                lo = mid + 1
            else:
                hi = mid
        around = [candidate(valid[i], layers, heads) for i in range(max(0, lo - 1), min(len(valid), lo + 2))]
        around = [c for c in around if c is not None]
        return min(around, key=lambda c: abs(c[1] / target - 1)) if around else None

    best = None
    for layers in dict.fromkeys((cfg.num_res_blocks, max(1, cfg.num_res_blocks - 1), cfg.num_res_blocks + 1)):
        for heads in dict.fromkeys((cfg.num_heads, 8, 4, 2, 1)):  # t2s's head count first
            found = closest(layers, heads)
            if found is None:
                continue
            if best is None or abs(found[1] / target - 1) < abs(best[1] / target - 1):
                best = found
            if abs(found[1] / target - 1) <= tolerance:
                return found
    if best is None:
        raise ConfigError(f"bench: no UNet3DConditionModel layout fits channel_mult {mults}")
    return best
