"""Exponential moving average of the denoiser's weights, with warmup.

Effective decay at optimizer step s (ema_warmup on): `min(ema_decay, (1 + s) / (10 + s))`, the formula of
diffusers' `EMAModel` with `use_ema_warmup=False` (its "inv_gamma" warmup is not used). Without warmup the decay
is `ema_decay` from the start. Updates run every `update_every` optimizer steps as one multi-tensor lerp on the
model's device; `swapped(model)` puts the shadow weights in for validation and sampling and restores the raw ones.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn


class EMA:
    def __init__(self, model: nn.Module, decay: float = 0.9999, update_every: int = 10, warmup: bool = True):
        self.decay, self.update_every, self.warmup = decay, update_every, warmup
        self.params = [p for p in model.parameters()]
        self.shadow = [p.detach().clone().float() for p in self.params]
        self.last_decay: float = 0.0

    def decay_at(self, step: int) -> float:
        return min(self.decay, (1 + step) / (10 + step)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, step: int) -> bool:
        """Fold the current weights in after optimizer step `step` (1-based); True when an update happened."""
        if step % self.update_every:
            return False
        self.last_decay = self.decay_at(step)
        current = [p.detach().float() if p.dtype != torch.float32 else p.detach() for p in self.params]
        torch._foreach_lerp_(self.shadow, current, 1.0 - self.last_decay)
        return True

    @contextmanager
    def swapped(self):
        """Within the block the model holds the EMA weights; the raw weights come back afterwards, untouched."""
        backup = [p.detach().clone() for p in self.params]
        with torch.no_grad():
            for p, s in zip(self.params, self.shadow):
                p.copy_(s)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, b in zip(self.params, backup):
                    p.copy_(b)

    def state_dict(self) -> dict:
        return {"shadow": [s.detach().cpu() for s in self.shadow], "last_decay": self.last_decay}

    def load_state_dict(self, state: dict) -> None:
        if len(state["shadow"]) != len(self.shadow):
            raise ValueError(f"EMA state has {len(state['shadow'])} tensors, the model {len(self.shadow)}")
        for s, saved in zip(self.shadow, state["shadow"]):
            s.copy_(saved.to(s.device))
        self.last_decay = float(state["last_decay"])
