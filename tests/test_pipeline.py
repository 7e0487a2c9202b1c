"""t2s.pipeline: batched sampling gives each clip from its own seed, as sampling it alone and as the engine's
`generate_clips` would. A micro denoiser with random (non-zero) weights and the packaged text encoder; no training."""
import pytest
import torch

from t2s.config import load_config
from t2s.model import build_denoiser
from t2s.pipeline import TextToSignPipeline
from t2s.text import build_text_encoder
from t2s.train import generate_clips

CAPTIONS = ["hello my name is anna", "thank you very much", "where is the train station", "school drink",
            "good morning teacher"]
STEPS = 3


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


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


def test_a_clip_sampled_alone_equals_the_engines_generate_clips_bit_for_bit(setting, text):
    cfg, denoiser = setting
    pipe = TextToSignPipeline.from_config(denoiser, text, cfg)
    for i in (0, 3):
        alone = run(pipe, cfg, [CAPTIONS[i]], [i], 1)
        engine = generate_clips(denoiser, text, cfg, [CAPTIONS[i]], seed=i, num_inference_steps=STEPS)
        assert alone.shape == (1, 3, cfg.num_frames, cfg.image_size, cfg.image_size)
        assert torch.equal(alone, engine)


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


def test_the_step_noise_comes_from_each_clips_own_generator(text):
    """With eta > 0 the engine's multi-prompt call draws every clip's step noise from one shared generator, so clip 1
    of that call differs from clip 1 sampled alone; the pipeline's per-clip generators keep them equal."""
    cfg = load_config("baseline", "micro", {"eta": 1.0, "guidance_scale": 2.0})
    denoiser = model(cfg, text)
    pipe = TextToSignPipeline.from_config(denoiser, text, cfg)
    shared = generate_clips(denoiser, text, cfg, CAPTIONS[:2], seed=0, num_inference_steps=STEPS)
    alone = generate_clips(denoiser, text, cfg, [CAPTIONS[1]], seed=1, num_inference_steps=STEPS)
    assert (shared[1] - alone[0]).abs().max() > 1e-3
    torch.testing.assert_close(run(pipe, cfg, CAPTIONS[:2], [0, 1], 2)[1], alone[0], rtol=0, atol=1e-5)


def test_bad_arguments_are_refused(setting, text):
    cfg, denoiser = setting
    pipe = TextToSignPipeline.from_config(denoiser, text, cfg)
    with pytest.raises(ValueError, match="seeds"):
        pipe(CAPTIONS[:2], seeds=[0])
    with pytest.raises(ValueError, match="batch_size"):
        pipe(CAPTIONS[:2], batch_size=0)
