"""EMA: diffusers' update-count warm-up, `update_every` as a cost knob only, the closed form of each weight's mass,
and a resumed EMA that continues the same trajectory."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import t2s.ema


def retained(a: int, t: int, d: float, warmup: bool) -> float:
    """Closed form of the mass kept after optimizer step t by the weights folded in at step a or before.

    With warm-up, beta(s) = s / (9 + s) for 2 <= s < c = ceil(9d / (1 - d)), d from c on, 0 at s = 1, so
    prod_{s=a+1}^{t} beta(s) = prod_{i=1}^{9} (a + i) / (b + i) * d**(t - b), b = min(t, max(a, c - 1)), and 0 for
    a = 0 (the first step is copied). Without warm-up: d**(t - a)."""
    if not warmup:
        return d ** (t - a)
    if a == 0:
        return 0.0 if t >= 1 else 1.0
    c = math.ceil(9 * d / (1 - d))
    b = min(t, max(a, c - 1))
    return math.prod((a + i) / (b + i) for i in range(1, 10)) * d ** (t - b)


def closed_form_weights(n: int, u: int, d: float, warmup: bool) -> list[float]:
    """[mass of the initial weights, mass of the weights folded in at update 1, ..., at update n] after n updates."""
    t = n * u
    out = [retained(0, t, d, warmup)]
    for m in range(1, n + 1):
        out.append((retained(m * u, t, d, warmup) - retained((m - 1) * u, t, d, warmup)))
    return out


class Tracer(nn.Module):
    """One parameter vector with a slot per update: it holds e_m at the m-th update, so the EMA's shadow is the
    vector of masses of the initial weights (slot 0) and of each update's weights."""

    def __init__(self, n: int):
        super().__init__()
        self.p = nn.Parameter(torch.zeros(n + 1, dtype=torch.float64))
        with torch.no_grad():
            self.p[0] = 1.0


def run_tracer(n: int, u: int, d: float, warmup: bool, ema=None, model=None, start_step: int = 1):
    model = model or Tracer(n)
    ema = ema or t2s.ema.EMA(model, d, u, warmup)
    for step in range(start_step, n * u + 1):
        with torch.no_grad():
            model.p.fill_(7.0)  # weights between updates never enter the EMA
            if step % u == 0:
                model.p.zero_()
                model.p[step // u] = 1.0
        ema.update(step)
    return ema, model


# d = 0.99 reaches the end of its warm-up (step c = 891) inside 100 updates of 10 steps and 1000 updates of 1
@pytest.mark.parametrize("update_every,n", [(1, 1000), (10, 100), (10, 3)])
@pytest.mark.parametrize("warmup", [True, False])
def test_mass_of_the_initial_and_each_update_weights_equals_the_closed_form(update_every, n, warmup):
    d = 0.99
    ema, _ = run_tracer(n, update_every, d, warmup)
    assert ema.updates == n
    got = ema.shadow[0].double()
    want = torch.tensor(closed_form_weights(n, update_every, d, warmup), dtype=torch.float64)
    assert got[0].item() == pytest.approx(want[0].item(), rel=1e-5, abs=1e-30)  # the initial weights
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-7)
    assert got.sum().item() == pytest.approx(1.0, abs=1e-5)


def test_update_every_is_a_cost_knob_the_mass_over_time_matches_an_update_every_step():
    """Mass on the weights up to step a (a multiple of 10) is the same with update_every 10 as with 1."""
    d, steps = 0.99, 1000
    every_step, _ = run_tracer(steps, 1, d, True)
    every_ten, _ = run_tracer(steps // 10, 10, d, True)
    per_step = every_step.shadow[0].double()
    per_ten = every_ten.shadow[0].double()
    for a in (10, 100, 500, 890, 900, 990):
        assert per_ten[: a // 10 + 1].sum().item() == pytest.approx(per_step[: a + 1].sum().item(), rel=1e-4, abs=1e-9)
    # after the warm-up, one update every 10 steps decays by d**10: the per-step decay is d
    assert every_ten.last_decay == pytest.approx(d ** 10, rel=1e-12)
    assert every_ten.last_step_decay == pytest.approx(d, rel=1e-12)


def test_every_step_updates_match_diffusers_ema_model():
    """update_every 1 is diffusers' EMAModel (default warm-up (1 + j) / (10 + j), its first update copies)."""
    from diffusers.training_utils import EMAModel

    torch.manual_seed(0)
    model = nn.Linear(3, 2).double()
    ours = t2s.ema.EMA(model, decay=0.9, update_every=1, warmup=True)
    theirs = EMAModel(model.parameters(), decay=0.9)
    for step in range(1, 40):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        ours.update(step)
        theirs.step(model.parameters())
        assert ours.last_decay == pytest.approx(theirs.cur_decay_value, abs=1e-15), step
        for s, t in zip(ours.shadow, theirs.shadow_params):
            torch.testing.assert_close(s.double(), t, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("update_every", [1, 10])
def test_a_resumed_ema_continues_the_same_trajectory(update_every):
    n, d = 40, 0.99
    straight, _ = run_tracer(n, update_every, d, True)
    half, model = run_tracer(n // 2, update_every, d, True, model=Tracer(n))
    state = half.state_dict()
    assert state["updates"] == n // 2
    resumed = t2s.ema.EMA(model, d, update_every, True)
    resumed.load_state_dict(state)
    run_tracer(n, update_every, d, True, ema=resumed, model=model, start_step=(n // 2) * update_every + 1)
    assert resumed.updates == straight.updates == n
    assert torch.equal(resumed.shadow[0], straight.shadow[0])


def test_a_state_without_an_update_count_derives_it_from_the_step():
    ema, model = run_tracer(5, 10, 0.99, True)
    state = ema.state_dict()
    del state["updates"]
    fresh = t2s.ema.EMA(model, 0.99, 10, True)
    fresh.load_state_dict(state, step=57)  # saved after step 57: updates at 10, 20, 30, 40, 50
    assert fresh.updates == 5
    with pytest.raises(ValueError, match="no update count"):
        t2s.ema.EMA(model, 0.99, 10, True).load_state_dict(state)


def test_copy_to_and_copy_shadow_put_the_ema_weights_into_a_model():
    torch.manual_seed(0)
    model, other = nn.Linear(3, 2), nn.Linear(3, 2)
    ema = t2s.ema.EMA(model, decay=0.5, update_every=1)
    ema.update(1)
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(2)  # the shadow is now half way between the two weight sets
    raw = [p.detach().clone() for p in model.parameters()]
    with ema.swapped():
        assert all(torch.equal(p, s) for p, s in zip(model.parameters(), ema.shadow))
    assert all(torch.equal(p, r) for p, r in zip(model.parameters(), raw))  # swapped gives the raw weights back
    ema.copy_to(other)
    assert all(torch.equal(p, s) for p, s in zip(other.parameters(), ema.shadow))
    saved = ema.state_dict()
    fresh = t2s.ema.copy_shadow(saved["shadow"], nn.Linear(3, 2))
    assert all(torch.equal(p, s) for p, s in zip(fresh.parameters(), ema.shadow))
    with pytest.raises(ValueError, match="2 tensors, the model 4 parameters"):
        t2s.ema.copy_shadow(saved["shadow"], nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 1)))
