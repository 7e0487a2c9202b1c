"""Exponential moving average of the denoiser's weights: diffusers' `EMAModel` warm-up, counted in updates.

The rule, per optimizer step s = 1, 2, ... (`ema_decay` = d):

    beta(s) = 0                      s = 1   (the first step is copied: the random initial weights get no mass)
    beta(s) = min(d, s / (9 + s))    s >= 2  (diffusers' (1 + j) / (10 + j), j = s - 1 steps before this one)
    beta(s) = d                              with `ema_warmup` off (a plain EMA that starts at the initial weights)

With `update_every` = u = 1 this is diffusers' `EMAModel.get_decay` on its update count (`EMAModel(decay=d)` stepped
after every optimizer step, `use_ema_warmup=False`). An update every u steps folds in the weights once for the u
steps since the previous update, with the product of their per-step decays:

    D_k = prod_{s=(k-1)u+1}^{ku} beta(s)        for the k-th update (k = 1, 2, ...; it runs after step k*u)

so u is a cost knob only: the EMA's mass over time is the one of an update every step, with each block of u steps'
mass placed on the weights at the block's end (the sum of the u per-step weights telescopes to 1 - D_k). After the
warm-up, D_k = d**u: the effective per-step decay is d, the horizon 1 / (1 - d) optimizer steps whatever u is. The
decay depends only on the update count k (checkpointed), never on how the steps were counted elsewhere.

Closed form: after N updates (T = N*u steps), the weights folded in at step a or before (a = m*u) keep the mass

    R(a, T) = prod_{s=a+1}^{T} beta(s) = prod_{i=1}^{9} (a + i) / (b + i) * d**(T - b)        (1 <= a <= T)

with c = ceil(9d / (1 - d)) the first step whose warm-up value s / (9 + s) reaches d and b = min(T, max(a, c - 1))
the last warm-up step in the range (the d-power is 1 while T < c). The initial weights keep R(0, T) = 0 with warm-up (the first update copies) and d**T without it; the
weights folded in at update m keep (1 - D_m) * R(m*u, T).

What is averaged: every parameter of the denoiser and, when a run trains its text encoder, every trainable parameter
of the encoder (`text_encoder`): the EMA weights are a whole model, so a fine-tuned run's EMA denoiser is used with
the encoder averaged over the same steps, never with the raw encoder it was not averaged with. The shadow holds the
denoiser's tensors first (`denoiser_tensors` of them, in `model.parameters()` order), then the encoder's trainable
ones (in `named_parameters()` order).

Updates run as one multi-tensor lerp on the model's device. `EMA.swapped()` puts the shadow weights in for
validation and sampling and restores the raw ones; `EMA.copy_to(model)` and `copy_shadow(state["shadow"], model)`
copy them (live, or from a saved state) into a model for good, as the pipeline loads a run's EMA weights.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Optional

import torch
from torch import nn


def step_decay(step: int, decay: float, warmup: bool = True) -> float:
    """beta(step): the decay attributed to optimizer step `step` (1-based); see the module's docstring."""
    if not warmup:
        return decay
    if step <= 1:  # diffusers: decay 0 at its first update, which copies the weights
        return 0.0
    return min(decay, step / (9 + step))


def update_decay(k: int, decay: float, update_every: int, warmup: bool = True) -> float:
    """D_k: the decay of the k-th EMA update (1-based), the product of beta over the u steps it covers."""
    out = 1.0
    for s in range((k - 1) * update_every + 1, k * update_every + 1):
        out *= step_decay(s, decay, warmup)
    return out


def retained_mass(a: int, t: int, decay: float, warmup: bool = True) -> float:
    """R(a, t): the share of the EMA's mass, after the update at optimizer step t, on the weights folded in at step
    a or before (both multiples of update_every; a = 0: the initial weights). The product the updates apply."""
    out = 1.0
    for s in range(a + 1, t + 1):
        out *= step_decay(s, decay, warmup)
    return out


def horizon_steps(decay: float) -> float:
    """The EMA's time constant after warm-up, in optimizer steps: 1 / (1 - ema_decay) (the weights of that many
    steps ago keep d ** (1 / (1 - d)) ~ 1/e of the mass they entered with)."""
    return 1.0 / (1.0 - decay)


@torch.no_grad()
def copy_shadow(shadow: list[torch.Tensor], model: nn.Module) -> nn.Module:
    """Copy EMA shadow tensors (one per parameter, in `model.parameters()` order) into the model's parameters."""
    params = list(model.parameters())
    if len(shadow) != len(params):
        raise ValueError(f"EMA shadow has {len(shadow)} tensors, the model {len(params)} parameters")
    for p, s in zip(params, shadow):
        p.copy_(s)
    return model


TEXT_PREFIX = "text_encoder."  # the EMA's name of a text encoder parameter: this prefix, then its own name


def split_shadow(state: dict, denoiser_names: Optional[list[str]] = None) -> tuple[dict, dict]:
    """A saved EMA state as ({denoiser parameter name: averaged tensor}, {text encoder parameter name: averaged
    tensor}); the second is empty when the encoder was not averaged. A state saved before the names were kept holds
    the denoiser's parameters only, named by `denoiser_names` (its state dict's keys, in parameters() order)."""
    names = state.get("names")
    if names is None:
        if denoiser_names is None or len(denoiser_names) != len(state["shadow"]):
            raise ValueError("this EMA state holds no parameter names and no matching denoiser names were given")
        names = denoiser_names
    denoiser, text = {}, {}
    for name, tensor in zip(names, state["shadow"]):
        if name.startswith(TEXT_PREFIX):
            text[name[len(TEXT_PREFIX):]] = tensor
        else:
            denoiser[name] = tensor
    return denoiser, text


class EMA:
    def __init__(self, model: nn.Module, decay: float = 0.9999, update_every: int = 10, warmup: bool = True,
                 text_encoder: Optional[nn.Module] = None):
        """The EMA of every parameter of `model` (the denoiser) and of the trainable parameters of `text_encoder`."""
        self.decay, self.update_every, self.warmup = decay, update_every, warmup
        named = list(model.named_parameters())
        if text_encoder is not None:
            named += [(f"{TEXT_PREFIX}{n}", p) for n, p in text_encoder.named_parameters() if p.requires_grad]
        self.names = [n for n, _ in named]  # saved with the state: what each shadow tensor is the average of
        self.params = [p for _, p in named]
        self.denoiser_tensors = sum(1 for _ in model.parameters())
        self.shadow = [p.detach().clone().float() for p in self.params]
        self.updates = 0  # k: EMA updates made so far; the warm-up is computed from it
        self.last_decay: float = 0.0  # D_k of the latest update (per update)

    @property
    def last_step_decay(self) -> float:
        """The latest update's decay per optimizer step, D_k ** (1/u): reaches `ema_decay` after the warm-up."""
        return self.last_decay ** (1.0 / self.update_every)

    @torch.no_grad()
    def update(self, step: int) -> bool:
        """Fold the current weights in after optimizer step `step` (1-based) when it closes a block of
        `update_every` steps; True when an update happened. The decay comes from the update count, not `step`."""
        if step % self.update_every:
            return False
        self.updates += 1
        self.last_decay = update_decay(self.updates, self.decay, self.update_every, self.warmup)
        current = [p.detach().float() if p.dtype != torch.float32 else p.detach() for p in self.params]
        torch._foreach_lerp_(self.shadow, current, 1.0 - self.last_decay)
        return True

    @torch.no_grad()
    def matches(self) -> bool:
        """Whether the EMA weights equal the current weights exactly (before the first update, or a warm-up's first
        update at decay 0): evaluating both would give the same numbers twice."""
        return all(torch.equal(s, p.detach().float()) for s, p in zip(self.shadow, self.params))

    @property
    def text_shadow(self) -> list[torch.Tensor]:
        """The shadows of the text encoder's trainable parameters (empty when it is not averaged)."""
        return self.shadow[self.denoiser_tensors:]

    @torch.no_grad()
    def copy_to(self, model: Optional[nn.Module] = None) -> None:
        """Put the EMA weights into `model` (a denoiser; default: every module the EMA follows), replacing its
        weights."""
        if model is not None:
            copy_shadow(self.shadow[:self.denoiser_tensors], model)
            return
        for p, s in zip(self.params, self.shadow):
            p.copy_(s)

    @contextmanager
    def swapped(self):
        """Within the block the model holds the EMA weights; the raw weights come back afterwards, untouched."""
        backup = [p.detach().clone() for p in self.params]
        self.copy_to()
        try:
            yield
        finally:
            with torch.no_grad():
                for p, b in zip(self.params, backup):
                    p.copy_(b)

    def state_dict(self) -> dict:
        return {"shadow": [s.detach().cpu() for s in self.shadow], "last_decay": self.last_decay,
                "updates": self.updates, "denoiser_tensors": self.denoiser_tensors, "names": self.names}

    def load_state_dict(self, state: dict, step: Optional[int] = None) -> None:
        """`step`: the optimizer step the state was saved at, used only for a state without an update count."""
        if len(state["shadow"]) != len(self.shadow):
            raise ValueError(f"EMA state has {len(state['shadow'])} tensors, the model {len(self.shadow)}")
        for s, saved in zip(self.shadow, state["shadow"]):
            s.copy_(saved.to(s.device))
        self.last_decay = float(state["last_decay"])
        if "updates" in state:
            self.updates = int(state["updates"])
        elif step is not None:
            # a state saved without its count: the trainer updates after every multiple of update_every, so
            # step // update_every updates were made; its shadow followed the older step-based warm-up
            self.updates = int(step) // self.update_every
        else:
            raise ValueError("EMA state has no update count ('updates'): pass the optimizer step it was saved at")
