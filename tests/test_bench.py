"""The benchmark's accounting (on the engine's own step, with a fake clock), FLOP counts, matched diffusers model, goals
table and outputs (never its timings)."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from t2s import cli
from t2s.bench.diffusers_model import DiffusersDenoiser, match_diffusers
from t2s.bench.flops import count_flops, training_step_flops
from t2s.bench.goals import GOALS, evaluate_goals
from t2s.bench.step import endless_batches, make_engine, time_sampling, timed_step
from t2s.bench.timing import PHASES, PhaseTimer, StepTiming, amortized_shares, summarize_steps
from t2s.config import load_config
from t2s.model import build_denoiser

HIDDEN = 384  # all-MiniLM-L6-v2's hidden size, the cross-attention width


@pytest.fixture(scope="module")
def micro_cfg(synth_dir):
    return load_config("baseline", "micro", {"data_dir": synth_dir})


@pytest.fixture(scope="module")
def text(micro_cfg):
    from t2s.text import build_text_encoder

    return build_text_encoder(micro_cfg)


@pytest.fixture(scope="module")
def datasets(micro_cfg):
    from t2s.data.splits import build_datasets

    return build_datasets(micro_cfg)  # (train, validation, split)


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
    am = amortized_shares(summary, cfg)
    expected_ms = 8 * (10 + 10 + 800) + 20 + 100 + 50 / 10 + summary["residual_ms"]
    assert am["optimizer_step_ms"] == pytest.approx(expected_ms)
    assert am["shares"]["ema"] == pytest.approx(5 / expected_ms)
    assert sum(am["shares"].values()) == pytest.approx(1.0)


class Tick:
    """A clock that advances by one second on every reading."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        self.now += 1.0
        return self.now


def test_the_engine_step_brackets_each_phase_once_per_micro_batch(micro_cfg, text, datasets, single_thread):
    """The benchmark's PhaseTimer around the engine's own step, on a clock that ticks once per reading: every phase
    entry is one interval of one tick, so the phases show the step's structure, and the gaps between them (the
    bookkeeping: lr schedule, step count) are the residual = total - phases."""
    from t2s.engine.step import Engine

    engine = make_engine(micro_cfg, lambda: build_denoiser(micro_cfg, HIDDEN), text, datasets, torch.device("cpu"))
    timing, record = timed_step(engine, endless_batches(engine), PhaseTimer(clock=Tick()))
    assert timing.phases == {phase: 1.0 for phase in PHASES}  # one micro-batch: each phase once, in order
    assert timing.total == 13.0  # start, 6 phases x 2 readings, stop: 14 readings
    assert timing.residual == 7.0 and timing.phase_sum + timing.residual == timing.total
    assert record["step"] == engine.step == 1 and record["ema_decay"] is not None  # EMA updated every step
    # two micro-batches per optimizer step: data, text, forward_backward (and the optimizer call, a no-op until the
    # boundary) twice; gradient clipping and the EMA once, at the boundary
    two = Engine(micro_cfg.replace(gradient_accumulation_steps=2), cpu=True, text=text, datasets=datasets)
    timing, record = timed_step(two, endless_batches(two), PhaseTimer(clock=Tick()))
    assert timing.phases == {"data": 2.0, "text": 2.0, "forward_backward": 2.0, "grad_clip": 1.0, "optimizer": 2.0,
                             "ema": 1.0}
    assert two.micro == 2 and two.step == 1
    summary = summarize_steps([timing, StepTiming(20.0, dict(timing.phases))])
    assert summary["phase_sum_ms"] + summary["residual_ms"] == pytest.approx(summary["step_ms"]["mean"])


def test_the_benchmark_times_the_trainers_own_step(micro_cfg, text, datasets, tmp_path, single_thread):
    """The same weights through a Trainer's step and the benchmark's engine step: the same data, optimizer groups,
    conditioning, loss and updated weights, bit for bit."""
    from t2s.engine.train import Trainer

    trainer = Trainer(micro_cfg, tmp_path / "run", progress=False, cpu=True)
    engine = make_engine(micro_cfg, lambda: build_denoiser(micro_cfg, HIDDEN), text, datasets, torch.device("cpu"))
    engine.model.load_state_dict(trainer.engine.model.state_dict())
    for a, b in zip(engine.ema.shadow, trainer.engine.ema.shadow):  # the shadow: a copy of the same initial weights
        a.copy_(b)
    ours = trainer.engine.train_step(iter(trainer.engine.epoch_loader()))
    _, theirs = timed_step(engine, endless_batches(engine), PhaseTimer())
    assert [g["name"] for g in engine.optimizer.param_groups] == [g["name"] for g in trainer.engine.optimizer.param_groups]
    assert float(theirs["loss"]) == float(ours["loss"]) and theirs["lr"] == ours["lr"]
    for key, value in trainer.engine.model.state_dict().items():
        assert torch.equal(engine.model.state_dict()[key], value), key


def test_goals_come_from_the_table_and_say_why_a_value_is_missing():
    shares = {"ema": {"share": 0.01}, "data": {"share": 0.01}, "text": {"share": 0.05}}
    result = {"machine": {"device": "cpu"}, "scales": {"tiny": {
        "models": {"t2s": {"phases": shares, "amortized": {"shares": {"ema": 0.001}}}}, "variants": {}}}}
    rows = {r["goal"]: r for r in evaluate_goals(result)}
    assert len(rows) == len([g for g in GOALS if g["missing"] or g["scope"] == "scales"])
    assert rows["tiny: EMA update < 2% of the step (one update per step)"]["met"] is True
    data_text = rows["tiny: data + text < 5% of the step (steady state)"]
    assert data_text["value"] == pytest.approx(0.06) and data_text["met"] is False and data_text["threshold"] == 0.05
    race = rows["race: t2s held-out loss < diffusers'"]
    assert race["value"] is None and race["met"] is None and race["reason"] == "race not run"
    # the reference scale, run on a GPU: its CPU goal is measured but flagged
    result["machine"]["device"] = "cuda:0"
    result["scales"]["full"] = {"models": {"t2s": {"phases": shares, "amortized": {"shares": {"ema": 0.0}},
                                                   "step": {"mfu": 0.6}},
                                           "diffusers": {"t2s_speedup": 3.5, "t2s_speedup_median": 2.9}},
                                "sampling": {"seconds_at_target": 90.0}, "variants": {}}
    rows = {r["goal"]: r for r in evaluate_goals(result)}
    speedup = rows["reference scale: t2s step >= 3x faster than diffusers UNet3DConditionModel (matched parameters; "
                   "median steps)"]
    assert speedup["value"] == 2.9 and speedup["met"] is False  # the median steps' ratio, not the mean's
    assert speedup["reason"] == "measured on cuda, the goal is stated for cpu"
    sampling = rows["reference scale: one clip (DDIM 50 steps, classifier-free guidance) samples in <= 90 s"]
    assert sampling["value"] == 90.0 and sampling["met"] is True
    assert rows["reference scale: t2s step >= 50% of the measured matmul peak (MFU)"]["met"] is True


# ------------------------------------------------------------------------------------------ FLOPs
def test_flop_count_of_a_linear_matches_the_hand_count():
    n, d_in, d_out = 8, 32, 16
    layer = nn.Linear(d_in, d_out)
    x = torch.randn(n, d_in, requires_grad=True)
    forward, _ = count_flops(lambda: layer(x))
    assert forward == 2 * n * d_in * d_out
    total, by_op = count_flops(lambda: layer(x).sum().backward())
    assert total == 3 * 2 * n * d_in * d_out  # forward, grad of the input, grad of the weight
    assert set(by_op) == {"addmm", "mm"}


def test_flop_count_of_a_conv2d_matches_the_hand_count():
    n, c_in, c_out, k, hw = 2, 3, 8, 3, 10
    conv = nn.Conv2d(c_in, c_out, k, padding=1)
    x = torch.randn(n, c_in, hw, hw, requires_grad=True)
    hand = 2 * n * c_out * hw * hw * c_in * k * k
    forward, _ = count_flops(lambda: conv(x))
    assert forward == hand
    total, _ = count_flops(lambda: conv(x).sum().backward())
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
    flops, _ = training_step_flops(ChannelMix, cfg, context_len=5, context_dim=HIDDEN)
    # forward 2*N*3*3; backward only the weight's gradient (the noisy clip needs no gradient)
    assert flops == 2 * (2 * pixels * 3 * 3)


def test_meta_flop_count_of_the_denoiser_includes_attention():
    cfg = load_config("baseline", "micro")
    flops, by_op = training_step_flops(lambda: build_denoiser(cfg, HIDDEN), cfg, 7, HIDDEN)
    assert flops == sum(by_op.values()) > 0
    assert by_op.get("bmm", 0) > 0  # attention's QK^T and AV, forward and backward
    assert by_op["convolution_backward"] == pytest.approx(2 * by_op["convolution"], rel=0.2)


# ------------------------------------------------------------------------------------------ diffusers
@pytest.mark.parametrize("scale", ["micro", "tiny"])
def test_matched_diffusers_model_is_within_15_percent_of_ours(scale):
    cfg = load_config("baseline", scale)
    ours = sum(p.numel() for p in build_denoiser(cfg, HIDDEN).parameters())
    kwargs, counted = match_diffusers(cfg, HIDDEN, ours)
    theirs = sum(p.numel() for p in DiffusersDenoiser(**kwargs).parameters())  # a real model, not meta
    assert theirs == counted
    assert abs(theirs / ours - 1) <= 0.15, (theirs, ours, kwargs)
    assert kwargs["cross_attention_dim"] == HIDDEN and len(kwargs["block_out_channels"]) == len(cfg.channel_mult)


def test_diffusers_denoiser_takes_the_t2s_interface():
    cfg = load_config("baseline", "micro")
    kwargs, _ = match_diffusers(cfg, HIDDEN, 383_059)
    model = DiffusersDenoiser(**kwargs)
    x = torch.randn(2, 3, cfg.num_frames, cfg.image_size, cfg.image_size)
    out = model(x, torch.tensor([3, 500]), torch.randn(2, 6, HIDDEN), torch.ones(2, 6, dtype=torch.bool))
    assert out.shape == x.shape


# ------------------------------------------------------------------------------------------ sampling
def test_sampling_time_extrapolates_per_step(micro_cfg, text, single_thread):
    model = build_denoiser(micro_cfg, HIDDEN)
    out = time_sampling(model, text, micro_cfg, torch.device("cpu"), steps=3, target_steps=10)
    first, *rest = out["per_step_ms"]
    assert out["extrapolated"] and len(out["per_step_ms"]) == 3
    overhead = out["measured_s"] - sum(out["per_step_ms"]) / 1e3
    assert out["seconds_at_target"] == pytest.approx(overhead + (first + 9 * sum(rest) / len(rest)) / 1e3)
    exact = time_sampling(model, text, micro_cfg, torch.device("cpu"), steps=2, target_steps=2)
    assert not exact["extrapolated"] and exact["seconds_at_target"] == exact["measured_s"]
    assert out["precision"] == micro_cfg.mixed_precision == "no"  # the run's precision unless told otherwise
    bf16 = time_sampling(model, text, micro_cfg, torch.device("cpu"), steps=1, target_steps=1, precision="bf16")
    assert bf16["precision"] == "bf16"


# ------------------------------------------------------------------------------------------ the whole run
def test_quick_run_on_micro_writes_json_and_markdown(synth_dir, tmp_path):
    out = tmp_path / "bench"
    code = cli.main(["bench", "--quick", "--scales", "micro", "--data-dir", synth_dir, "--out", str(out),
                       "--race-seconds", "1", "--threads", "1", "-p", "mixed_precision=bf16"])
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
    # bf16 sampling, and the same sampling in float32 beside it (what the run's precision buys, from one run)
    assert micro["sampling"]["precision"] == "bf16" and micro["sampling"]["float32"]["precision"] == "no"
    assert micro["matmul_peak"]["used"]["fp32"]["flops_per_s"] > 0
    race = result["race"]["contenders"]
    assert set(race) == {"t2s", "diffusers"}
    assert all(c["steps"] >= 1 and c["held_out_loss"] > 0 and c["held_out_loss_ema"] > 0 for c in race.values())
    assert {g["goal"] for g in result["goals"]} and all("met" in g for g in result["goals"])
    md = (out / "bench.md").read_text()
    for needle in ("# t2s benchmark", "load average", "| forward_backward |", "residual", "MFU", "Race", "## Goals",
                   result["machine"]["cpu"], "the denoiser in bf16 autocast). In float32: "):
        assert needle in md


# --- contention: one training alone against two at once ------------------------------------------------------------

def test_contention_slowdowns_are_pair_wall_over_single_wall(monkeypatch):
    from t2s.bench import contention

    # alone 10 s, shared pair 21 s, each started on its own 23 s, spinning pair 70 s
    clock = iter([0.0, 10.0, 100.0, 121.0, 150.0, 173.0, 200.0, 270.0])
    monkeypatch.setattr(contention.time, "perf_counter", lambda: next(clock))
    started = []

    def start(scale, steps, warmup, env):
        started.append(env)
        return env

    monkeypatch.setattr(contention, "_start", start)
    monkeypatch.setattr(contention, "_finish", lambda env: {"seconds": 8.0 if not env["T2S_THREADS"] else 9.0,
                                                            "steps": 5, "threads": 1, "torch_threads": 1})
    from t2s.engine import runtime

    monkeypatch.setattr(contention, "usable_cpus", lambda: 2)
    monkeypatch.setattr(runtime, "usable_cpus", lambda: 2)  # the shared pair's env: runtime.share_cpus_env(2)
    monkeypatch.delenv(runtime.THREADS_ENV_VAR, raising=False)
    result = contention.measure_contention("micro", steps=5, warmup=1)
    # alone and each-on-its-own: the user's environment without T2S_THREADS or OMP_WAIT_POLICY (None removes them)
    assert [e["T2S_THREADS"] for e in started] == [None, "1", "1", None, None, "2", "2"]
    assert [e["OMP_WAIT_POLICY"] for e in started] == [None, "PASSIVE", "PASSIVE", None, None, "ACTIVE", "ACTIVE"]
    assert result["shared"]["slowdown"] == pytest.approx(2.1) and result["unshared"]["slowdown"] == pytest.approx(7.0)
    assert result["own"]["slowdown"] == pytest.approx(2.3)
    assert result["shared"]["step_slowdown"] == pytest.approx(9.0 / 8.0)
    text = contention.to_markdown(result)
    assert "| two at once, shared as ablate starts them (T2S_THREADS, passive wait) | 1, 1 | 21.0 | 2.10x |" in text
    assert "Goal: two runs started by ablate within 2.4x of one alone: met (2.10x)" in text
    assert "Goal: two runs each started on its own within 2.4x of one alone: met (2.30x)" in text


def test_a_contention_worker_trains_engine_steps():
    from t2s.bench import contention

    out = contention.worker("micro", steps=2, warmup=1)
    assert out["steps"] == 2 and out["seconds"] > 0 and out["torch_threads"] == out["threads"] >= 1


def test_the_study_profile_puts_each_runs_phases_and_the_study_wall_time_in_bench_md(tmp_path):
    """bench --profile reads a study that ran: each run's logs/phases.json, its notebook's cell times, the study's
    phases.json; it writes profile-<label>.* and the profile's section of bench.md, keeping the step benchmark."""
    import json

    from runfactory import make_run

    from t2s.cli import main

    study = tmp_path / "executed" / "s"
    for variant in ("baseline", "text_finetuned"):
        make_run(study, variant, 0)
    (study / "phases.json").write_text(json.dumps({"runs": 600.0, "report": 15.0, "wall": 615.0, "jobs": 2}))
    out = tmp_path / "bench"
    out.mkdir()
    (out / "bench.md").write_text("# t2s benchmark\n\nthe step tables\n")
    assert main(["bench", "--profile", str(study), "--label", "avx2-fp32", "--out", str(out)]) == 0
    result = json.loads((out / "profile-avx2-fp32.json").read_text())
    assert [r["run"] for r in result["runs"]] == ["baseline-seed0", "text_finetuned-seed0"]
    assert result["runs"][0]["steps"] == 60.0 and result["sum_over_runs"]["steps"] == 120.0  # the factory's phases
    md = (out / "bench.md").read_text()
    assert md.startswith("# t2s benchmark\n\nthe step tables") and "## Quickstart phase profile: avx2-fp32" in md
    assert "| steps | 60.0 | 60.0 | 120.0 |" in md and "total **10.2 min**" in md
    assert main(["bench", "--profile", str(study), "--label", "avx2-fp32", "--out", str(out)]) == 0
    assert (out / "bench.md").read_text().count("## Quickstart phase profile: avx2-fp32") == 1  # replaced, not added
    with pytest.raises(SystemExit, match="holds no run directory"):
        main(["bench", "--profile", str(tmp_path), "--out", str(out)])


def test_the_study_estimate_extrapolates_a_timed_slice_as_it_says():
    """The estimate's arithmetic: a trained run = setup + steps x step + validations x weight sets x held-out loss +
    its evaluation + the fixed part; the study = rounds of jobs + derived runs + the report (micro, one worker)."""
    import math

    from t2s.bench import estimate

    result = estimate.estimate_study([], steps=1, jobs=1, scale="micro")
    w, parts = result["workers"][0], result["per_trained_run"]
    assert parts["steps"] == pytest.approx(w["total_steps"] * w["step_s"])
    assert parts["validation"] == pytest.approx((1 + (result["validations_per_run"] - 1) * 2) * w["validation_s"])
    assert estimate.validation_points(300, 45, 4) == 3  # step 0, epoch 4 (180), the last step
    assert estimate.validation_points(300, 45, 7) == 2  # the quickstart: step 0 and the last step (epoch 7 ends past it)
    assert estimate.validation_points(25, 10, 1) == 4 and estimate.validation_points(20, 10, 1) == 3
    assert parts["evaluation sampling"] == pytest.approx(2 * math.ceil(w["eval_num_clips"] / w["eval_batch_size"])
                                                         * w["eval_batch_s"])
    assert (result["trained_runs"], result["derived_runs"], result["rounds"]) == (4, 2, 4)  # no_ema is derived
    assert result["study_s"] == pytest.approx(4 * sum(parts.values()) + 2 * estimate.DERIVED_RUN_S + estimate.REPORT_S)
    assert "Quickstart estimate: x" in estimate.to_markdown(result, "x")
