"""The benchmark's accounting, FLOP counts, matched diffusers model, held-out loss and outputs (never its timings)."""
from __future__ import annotations

import json
import time

import pytest
import torch
from torch import nn

from t2s import bench
from t2s.bench import PHASES, PhaseTimer, StepTiming, TrainHarness, summarize_steps
from t2s.config import load_config
from t2s.model import build_denoiser

HIDDEN = 384  # all-MiniLM-L6-v2's hidden size, the cross-attention width


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("synthsign"))


@pytest.fixture(scope="module")
def micro_cfg(synth_dir):
    return load_config("baseline", "micro", {"data_dir": synth_dir})


@pytest.fixture(scope="module")
def text(micro_cfg):
    from t2s.text import build_text_encoder

    return build_text_encoder(micro_cfg)


@pytest.fixture(scope="module")
def datasets(micro_cfg):
    from t2s.data import build_datasets

    train_set, val_set, _ = build_datasets(micro_cfg)
    return train_set, val_set


@pytest.fixture
def single_thread():
    """One torch thread: on a shared 2-core machine two spinning OpenMP threads can be 10x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ------------------------------------------------------------------------------------------ accounting
class FakeClock:
    """A clock that advances by a scripted amount on each reading."""

    def __init__(self, steps):
        self.now, self.steps = 0.0, list(steps)

    def __call__(self):
        self.now += self.steps.pop(0)
        return self.now


def test_phase_timer_charges_each_interval_to_its_phase_and_the_gaps_to_the_residual():
    # readings: start | data begin, end | text begin, end | (gap) | ema begin, end | stop
    clock = FakeClock([0.0, 1.0, 2.0, 0.5, 3.0, 4.0, 0.25, 0.5])
    timer = PhaseTimer(clock=clock)
    timer.start()
    with timer.phase("data"):
        pass
    with timer.phase("text"):
        pass
    with timer.phase("ema"):
        pass
    timing = timer.stop()
    assert timing.phases == {"data": 2.0, "text": 3.0, "ema": 0.25}
    assert timing.total == pytest.approx(1.0 + 2.0 + 0.5 + 3.0 + 4.0 + 0.25 + 0.5)
    assert timing.residual == pytest.approx(1.0 + 0.5 + 4.0 + 0.5)  # the gaps between and around the phases
    assert timing.phase_sum + timing.residual == pytest.approx(timing.total)


def test_summary_identity_phase_means_plus_residual_equal_the_step_mean():
    timings = [
        StepTiming(1.0, {"data": 0.1, "text": 0.05, "forward_backward": 0.7, "grad_clip": 0.02, "optimizer": 0.08, "ema": 0.01}),
        StepTiming(2.0, {"data": 0.2, "text": 0.05, "forward_backward": 1.5, "grad_clip": 0.02, "optimizer": 0.08, "ema": 0.05}),
    ]
    s = summarize_steps(timings)
    assert s["step_ms"]["mean"] == pytest.approx(1500.0)
    assert s["phases"]["forward_backward"]["mean_ms"] == pytest.approx(1100.0)
    assert s["phases"]["forward_backward"]["share"] == pytest.approx(1100.0 / 1500.0)
    assert s["residual_ms"] == pytest.approx(1e3 * ((1.0 - 0.96) + (2.0 - 1.9)) / 2)
    assert s["phase_sum_ms"] + s["residual_ms"] == pytest.approx(s["step_ms"]["mean"], abs=1e-9)
    assert sum(p["share"] for p in s["phases"].values()) + s["residual_share"] == pytest.approx(1.0)


def test_amortized_shares_weight_phases_by_accumulation_and_ema_interval():
    summary = summarize_steps([StepTiming(1.0, {"data": 0.01, "text": 0.01, "forward_backward": 0.8, "grad_clip": 0.02,
                                                "optimizer": 0.1, "ema": 0.05})])
    cfg = load_config("baseline", "full")  # accumulation 8, EMA every 10 steps
    am = bench.amortized_shares(summary, cfg)
    expected_ms = 8 * (10 + 10 + 800) + 20 + 100 + 50 / 10 + summary["residual_ms"]
    assert am["optimizer_step_ms"] == pytest.approx(expected_ms)
    assert am["shares"]["ema"] == pytest.approx(5 / expected_ms)
    assert sum(am["shares"].values()) == pytest.approx(1.0)


def test_harness_step_phases_add_up_and_work_is_charged_where_it_runs(micro_cfg, text, datasets, single_thread):
    train_set, _ = datasets
    torch.manual_seed(0)
    harness = TrainHarness(micro_cfg, build_denoiser(micro_cfg, HIDDEN), text, train_set, torch.device("cpu"))
    harness.step()  # warm-up
    plain = harness.step()
    assert set(plain.phases) == set(PHASES)
    assert plain.residual >= 0 and plain.phase_sum <= plain.total
    assert plain.phase_sum + plain.residual == pytest.approx(plain.total, abs=1e-12)
    # a pause inside a phase is charged to that phase; a pause in the untimed bookkeeping to the residual
    slept = harness.step(hooks={"ema": lambda: time.sleep(0.05), "bookkeeping": lambda: time.sleep(0.08)})
    assert slept.phases["ema"] >= 0.05
    assert slept.residual >= 0.08
    assert slept.phase_sum + slept.residual == pytest.approx(slept.total, abs=1e-12)
    s = summarize_steps([plain, slept])
    assert s["phase_sum_ms"] + s["residual_ms"] == pytest.approx(s["step_ms"]["mean"], abs=1e-6)
    assert harness.step_count == 3 and harness.optimizer.param_groups[0]["lr"] > 0


# ------------------------------------------------------------------------------------------ FLOPs
def test_flop_count_of_a_linear_matches_the_hand_count():
    n, d_in, d_out = 8, 32, 16
    layer = nn.Linear(d_in, d_out)
    x = torch.randn(n, d_in, requires_grad=True)
    forward, _ = bench.count_flops(lambda: layer(x))
    assert forward == 2 * n * d_in * d_out
    total, by_op = bench.count_flops(lambda: layer(x).sum().backward())
    assert total == 3 * 2 * n * d_in * d_out  # forward, grad of the input, grad of the weight
    assert set(by_op) == {"addmm", "mm"}


def test_flop_count_of_a_conv2d_matches_the_hand_count():
    n, c_in, c_out, k, hw = 2, 3, 8, 3, 10
    conv = nn.Conv2d(c_in, c_out, k, padding=1)
    x = torch.randn(n, c_in, hw, hw, requires_grad=True)
    hand = 2 * n * c_out * hw * hw * c_in * k * k
    forward, _ = bench.count_flops(lambda: conv(x))
    assert forward == hand
    total, _ = bench.count_flops(lambda: conv(x).sum().backward())
    assert total == 3 * hand


class ChannelMix(nn.Module):
    """A one-layer 'denoiser': a Linear across the 3 colour channels of every pixel."""

    def __init__(self):
        super().__init__()
        self.mix = nn.Linear(3, 3)

    def forward(self, x, t, context, mask=None):
        return self.mix(x.movedim(1, -1)).movedim(-1, 1)


def test_training_step_flops_on_meta_count_the_step_of_one_layer():
    cfg = load_config("baseline", "micro")
    pixels = cfg.batch_size * cfg.num_frames * cfg.image_size * cfg.image_size
    flops, _ = bench.training_step_flops(ChannelMix, cfg, context_len=5, context_dim=HIDDEN)
    # forward 2*N*3*3; backward only the weight's gradient (the noisy clip needs no gradient)
    assert flops == 2 * (2 * pixels * 3 * 3)


def test_meta_flop_count_of_the_denoiser_includes_attention():
    cfg = load_config("baseline", "micro")
    flops, by_op = bench.training_step_flops(lambda: build_denoiser(cfg, HIDDEN), cfg, 7, HIDDEN)
    assert flops == sum(by_op.values()) > 0
    assert by_op.get("bmm", 0) > 0  # attention's QK^T and AV, forward and backward
    assert by_op["convolution_backward"] == pytest.approx(2 * by_op["convolution"], rel=0.2)


# ------------------------------------------------------------------------------------------ diffusers
@pytest.mark.parametrize("scale", ["micro", "tiny"])
def test_matched_diffusers_model_is_within_15_percent_of_ours(scale):
    cfg = load_config("baseline", scale)
    ours = sum(p.numel() for p in build_denoiser(cfg, HIDDEN).parameters())
    kwargs, counted = bench.match_diffusers(cfg, HIDDEN, ours)
    theirs = sum(p.numel() for p in bench.DiffusersDenoiser(**kwargs).parameters())  # a real model, not meta
    assert theirs == counted
    assert abs(theirs / ours - 1) <= 0.15, (theirs, ours, kwargs)
    assert kwargs["cross_attention_dim"] == HIDDEN and len(kwargs["block_out_channels"]) == len(cfg.channel_mult)


def test_diffusers_denoiser_takes_the_t2s_interface():
    cfg = load_config("baseline", "micro")
    kwargs, _ = bench.match_diffusers(cfg, HIDDEN, 383_059)
    model = bench.DiffusersDenoiser(**kwargs)
    x = torch.randn(2, 3, cfg.num_frames, cfg.image_size, cfg.image_size)
    out = model(x, torch.tensor([3, 500]), torch.randn(2, 6, HIDDEN), torch.ones(2, 6, dtype=torch.bool))
    assert out.shape == x.shape


# ------------------------------------------------------------------------------------------ held-out loss, sampling
def test_held_out_loss_is_the_trainers(micro_cfg, text, tmp_path, single_thread):
    from t2s.train import Trainer

    # several validation batches (9 clips in batches of 2 * batch_size) and timesteps, so order and grouping count
    cfg = micro_cfg.replace(split_mode="random", train_ratio=0.6, val_max_clips=9, val_num_timesteps=3)
    trainer = Trainer(cfg, tmp_path / "run", progress=False, cpu=True)
    assert len(trainer.val_set) >= 9
    with torch.no_grad():  # move the weights away from their (zero-output) initialization
        for p in trainer.model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    expected = trainer.held_out_loss()
    ours = bench.held_out_loss(trainer.model, text, trainer.val_set, cfg, trainer.device)
    assert ours == pytest.approx(expected, rel=1e-5)


def test_sampling_time_extrapolates_per_step(micro_cfg, text, single_thread):
    model = build_denoiser(micro_cfg, HIDDEN)
    out = bench.time_sampling(model, text, micro_cfg, torch.device("cpu"), steps=3, target_steps=10)
    first, *rest = out["per_step_ms"]
    assert out["extrapolated"] and len(out["per_step_ms"]) == 3
    overhead = out["measured_s"] - sum(out["per_step_ms"]) / 1e3
    assert out["seconds_at_target"] == pytest.approx(overhead + (first + 9 * sum(rest) / len(rest)) / 1e3)
    exact = bench.time_sampling(model, text, micro_cfg, torch.device("cpu"), steps=2, target_steps=2)
    assert not exact["extrapolated"] and exact["seconds_at_target"] == exact["measured_s"]


# ------------------------------------------------------------------------------------------ the whole run
def test_quick_run_on_micro_writes_json_and_markdown(synth_dir, tmp_path):
    out = tmp_path / "bench"
    code = bench.main(["--quick", "--scales", "micro", "--data-dir", synth_dir, "--out", str(out),
                       "--race-seconds", "1", "--threads", "1"])
    assert code == 0
    result = json.loads((out / "bench.json").read_text())
    assert {"machine", "load_average", "settings", "scales", "race", "goals", "duration_s"} <= set(result)
    assert {"cpu", "cores", "torch", "device"} <= set(result["machine"])
    assert {"start", "end"} <= set(result["load_average"]) and len(result["load_average"]["start"]) == 3
    micro = result["scales"]["micro"]
    ours, theirs = micro["models"]["t2s"], micro["models"]["diffusers"]
    for model in (ours, theirs):
        assert set(PHASES) <= set(model["phases"])
        assert model["phase_sum_ms"] + model["residual_ms"] == pytest.approx(model["step_ms"]["mean"], abs=1e-6)
        assert model["clips_per_s"] > 0 and model["peak_memory"]["peak_gb"] > 0
        assert model["flops_per_step"] > 0 and 0 < model["step"]["mfu"]
    assert abs(theirs["parameter_ratio"] - 1) <= 0.15 and theirs["t2s_speedup"] > 0
    assert micro["sampling"]["target_steps"] == 50 and micro["sampling"]["extrapolated"]
    assert micro["matmul_peak"]["used"]["fp32"]["flops_per_s"] > 0
    race = result["race"]["contenders"]
    assert set(race) == {"t2s", "diffusers"}
    assert all(c["steps"] >= 1 and c["held_out_loss"] > 0 and c["held_out_loss_ema"] > 0 for c in race.values())
    assert {g["goal"] for g in result["goals"]} and all("met" in g for g in result["goals"])
    md = (out / "bench.md").read_text()
    for needle in ("# t2s benchmark", "load average", "| forward_backward |", "residual", "MFU", "Race", "## Goals",
                   result["machine"]["cpu"]):
        assert needle in md
