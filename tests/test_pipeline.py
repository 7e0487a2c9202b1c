"""t2s.pipeline: batched sampling gives each clip from its own seed, as sampling it alone would, with one generator per
clip that draws the initial noise and then the DDIM step noise. A micro denoiser with random (non-zero) weights and the
packaged text encoder; no training."""
import pytest
import torch

from t2s.config import load_config
from t2s.model import build_denoiser
from t2s.pipeline import TextToSignPipeline
from t2s.text import build_text_encoder, pad_to

CAPTIONS = ["hello my name is anna", "thank you very much", "where is the train station", "school drink",
            "good morning teacher"]
STEPS = 3


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def text():
    return build_text_encoder(load_config("baseline", "micro")).eval()


def model(cfg, text):
    torch.manual_seed(0)
    denoiser = build_denoiser(cfg, text.hidden_size).eval()
    with torch.no_grad():  # every weight random and non-zero: a zero-initialised output layer would hide differences
        for p in denoiser.parameters():
            p.normal_(0.0, 0.05)
    return denoiser


@pytest.fixture(scope="module", params=[1.0, 0.0], ids=["eta1-stochastic", "eta0-deterministic"])
def setting(request, text):
    cfg = load_config("baseline", "micro", {"eta": request.param, "guidance_scale": 2.0})
    return cfg, model(cfg, text)


def run(pipe, cfg, prompts, seeds, batch_size):
    return pipe(prompts, seeds=seeds, num_inference_steps=STEPS, guidance_scale=cfg.guidance_scale, eta=cfg.eta,
                batch_size=batch_size)


def by_hand(denoiser, text, cfg, caption, seed, steps=STEPS):
    """The sampler written out for one clip: ONE generator seeded `seed` draws the initial noise, then each DDIM
    step's noise; guidance over [unconditional; conditional]."""
    from t2s.diffusion import build_sample_scheduler

    scheduler = build_sample_scheduler(cfg)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((1, 3, cfg.num_frames, cfg.image_size, cfg.image_size), generator=g)
    ctx, mask = text.encode([caption])
    null, null_mask = text.null(1)
    length = max(ctx.shape[1], null.shape[1])
    (ctx, mask), (null, null_mask) = pad_to(ctx, mask, length), pad_to(null, null_mask, length)
    scheduler.set_timesteps(steps)
    with torch.no_grad():
        for t in scheduler.timesteps:
            out_null, out_text = denoiser(torch.cat([x, x]), t.expand(2), torch.cat([null, ctx]),
                                          torch.cat([null_mask, mask])).chunk(2)
            out = out_null + cfg.guidance_scale * (out_text - out_null)
            x = scheduler.step(out, t, x, eta=min(cfg.eta, 1 - 1e-4), generator=g).prev_sample
    return x.clamp(-1, 1)


def test_a_clip_sampled_alone_equals_the_sampler_written_out_bit_for_bit(setting, text):
    cfg, denoiser = setting
    pipe = TextToSignPipeline.from_config(denoiser, text, cfg)
    for i in (0, 3):
        alone = run(pipe, cfg, [CAPTIONS[i]], [i], 1)
        assert alone.shape == (1, 3, cfg.num_frames, cfg.image_size, cfg.image_size)
        assert torch.equal(alone, by_hand(denoiser, text, cfg, CAPTIONS[i], i))


def test_clip_i_of_a_batch_equals_clip_i_sampled_alone_with_seed_i(setting, text):
    cfg, denoiser = setting
    pipe = TextToSignPipeline.from_config(denoiser, text, cfg)
    seeds = list(range(len(CAPTIONS)))
    batched = run(pipe, cfg, CAPTIONS, seeds, 3)  # batches of 3 and 2
    alone = torch.cat([run(pipe, cfg, [c], [s], 1) for c, s in zip(CAPTIONS, seeds)])
    assert batched.shape == alone.shape == (5, 3, cfg.num_frames, cfg.image_size, cfg.image_size)
    torch.testing.assert_close(batched, alone, rtol=0, atol=1e-5)
    # the clips are not all alike, so the comparison above has something to compare
    assert (batched[0] - batched[1]).abs().max() > 1e-2
    # nor does a clip depend on its neighbours: another order and batch size gives the same clips
    order = [4, 2, 0, 3, 1]
    shuffled = run(pipe, cfg, [CAPTIONS[k] for k in order], [seeds[k] for k in order], 2)
    torch.testing.assert_close(shuffled, batched[order], rtol=0, atol=1e-5)


def test_the_seed_decides_the_clip(setting, text):
    cfg, denoiser = setting
    pipe = TextToSignPipeline.from_config(denoiser, text, cfg)
    a, b = run(pipe, cfg, [CAPTIONS[0]] * 2, [0, 1], 2)
    assert (a - b).abs().max() > 1e-2
    assert torch.equal(run(pipe, cfg, [CAPTIONS[0]], [1], 1)[0], run(pipe, cfg, [CAPTIONS[0]], [1], 1)[0])


def test_the_first_step_noise_is_not_a_copy_of_the_initial_noise(text):
    """With eta > 0 the step noise continues the clip's generator after its initial noise. Drawing it from a second
    generator seeded alike (the flaw this replaced) would make the first step's noise equal the initial noise; the
    clips of the two schemes differ, and the pipeline's is the one-generator clip."""
    from t2s.diffusion import build_sample_scheduler

    cfg = load_config("baseline", "micro", {"eta": 1.0, "guidance_scale": 1.0})
    denoiser = model(cfg, text)
    pipe = TextToSignPipeline.from_config(denoiser, text, cfg)
    ours = run(pipe, cfg, [CAPTIONS[0]], [7], 1)
    shape = (1, 3, cfg.num_frames, cfg.image_size, cfg.image_size)
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(7))
    flawed, scheduler = noise, build_sample_scheduler(cfg)
    scheduler.set_timesteps(STEPS)
    ctx, mask = text.encode([CAPTIONS[0]])
    step_generator = torch.Generator().manual_seed(7)  # the old scheme: a second generator, same seed
    with torch.no_grad():
        for t in scheduler.timesteps:
            flawed = scheduler.step(denoiser(flawed, t.expand(1), ctx, mask), t, flawed, eta=1 - 1e-4,
                                    generator=step_generator).prev_sample
    assert (ours - flawed.clamp(-1, 1)).abs().max() > 1e-3
    torch.testing.assert_close(run(pipe, cfg, CAPTIONS[:2], [7, 8], 2)[0], ours[0], rtol=0, atol=1e-5)


def test_call_defaults_come_from_the_config(text):
    cfg = load_config("baseline", "micro", {"eta": 0.5, "guidance_scale": 3.0, "num_inference_steps": 2})
    denoiser = model(cfg, text)
    pipe = TextToSignPipeline.from_config(denoiser, text, cfg)
    assert pipe.sampling == {"num_inference_steps": 2, "guidance_scale": 3.0, "eta": 0.5}
    steps = []
    default = pipe([CAPTIONS[0]], step_callback=steps.append)
    assert steps == [0, 1]
    assert torch.equal(default, pipe([CAPTIONS[0]], num_inference_steps=2, guidance_scale=3.0, eta=0.5))


def test_bad_arguments_are_refused(setting, text):
    cfg, denoiser = setting
    pipe = TextToSignPipeline.from_config(denoiser, text, cfg)
    with pytest.raises(ValueError, match="seeds"):
        pipe(CAPTIONS[:2], seeds=[0])
    with pytest.raises(ValueError, match="batch_size"):
        pipe(CAPTIONS[:2], batch_size=0)


@pytest.mark.parametrize("mixed_precision, expected", [("bf16", torch.bfloat16), ("fp16", torch.float32),
                                                       ("no", torch.float32)])
def test_the_denoiser_samples_in_the_runs_mixed_precision_and_the_clips_stay_float32(text, mixed_precision, expected):
    """bf16 autocast on the CPU as training ran it; fp16 autocast is for CUDA only (as training's validation)."""
    cfg = load_config("baseline", "micro", {"mixed_precision": mixed_precision, "guidance_scale": 2.0})
    denoiser = model(cfg, text)
    seen = []
    handle = denoiser.out.register_forward_hook(lambda module, args, out: seen.append(out.dtype))  # the last conv
    pipe = TextToSignPipeline.from_config(denoiser, text, cfg)
    assert pipe.precision == mixed_precision
    clips = run(pipe, cfg, CAPTIONS[:2], [0, 1], batch_size=2)
    handle.remove()
    assert set(seen) == {expected} and len(seen) == STEPS
    assert clips.dtype == torch.float32 and torch.isfinite(clips).all()
    if mixed_precision == "bf16":  # close to the float32 sampler, not equal to it
        full = run(TextToSignPipeline(denoiser, text, pipe.scheduler, pipe.clip_shape, pipe.sampling), cfg,
                   CAPTIONS[:2], [0, 1], batch_size=2)
        assert not torch.equal(clips, full) and (clips - full).abs().mean() < 0.05
