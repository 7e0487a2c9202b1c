"""The denoiser's conditioning paths: the pooled caption embedding, the frame-position embedding, the pixels'
coordinate channels, the aligned cross-attention and the text layout maps."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from t2s.config import load_config
from t2s.model import SPECIAL_TOKEN_DISTANCE, TextLayout, VideoUNet, alignment_distance, coordinate_channels
from t2s.text import build_text_encoder


def _unet(random_weights: bool = True, **options) -> VideoUNet:
    """A small UNet with every weight random (the zero-initialized output layers would make any output 0), or as
    initialized with `random_weights=False`."""
    torch.manual_seed(0)
    unet = VideoUNet(context_dim=12, image_size=8, model_channels=8, channel_mult=(1, 2), num_res_blocks=1,
                     attention_resolutions=(4,), num_heads=2, **options).eval()
    if random_weights:
        with torch.no_grad():
            for p in unet.parameters():
                p.normal_(0.0, 0.2)
    return unet


def test_pooled_text_ignores_padding_tokens_and_depends_on_the_caption():
    unet = _unet(pooled_text=True)
    x, t = torch.randn(2, 3, 4, 8, 8), torch.tensor([10, 500])
    context = torch.randn(2, 3, 12)
    padded = torch.cat([context, torch.randn(2, 2, 12) * 100], dim=1)  # two padding tokens of large values
    mask = torch.tensor([[True] * 3 + [False] * 2] * 2)
    with torch.no_grad():
        plain = unet(x, t, context, torch.ones(2, 3, dtype=torch.bool))
        assert torch.allclose(unet(x, t, padded, mask), plain, atol=1e-5)
        # the pooled path alone carries the caption: with cross-attention's output zeroed, the output still changes
        for module in unet.modules():
            if hasattr(module, "cross_attn"):
                torch.nn.init.zeros_(module.cross_attn.to_out.weight)
                torch.nn.init.zeros_(module.cross_attn.to_out.bias)
        a = unet(x, t, context, None)
        b = unet(x, t, context + 1.0, None)
    assert not torch.allclose(a, b)
    assert "text_mlp.0.weight" in unet.state_dict() and "text_mlp.0.weight" not in _unet().state_dict()


def test_frame_position_is_relative_and_tells_frames_apart():
    unet = _unet(frame_position=True)
    assert "frame_mlp.0.weight" in unet.state_dict() and "frame_mlp.0.weight" not in _unet().state_dict()
    captured = []
    unet.down[0].res[0].register_forward_pre_hook(lambda module, args: captured.append(args[1].clone()))
    with torch.no_grad():
        for frames in (4, 7):
            unet(torch.zeros(1, 3, frames, 8, 8), torch.tensor([3]), torch.zeros(1, 2, 12), None)
    four, seven = captured  # the per-frame embeddings (frames, emb)
    assert torch.allclose(four[0], seven[0]) and torch.allclose(four[-1], seven[-1])  # first and last frame
    assert not torch.allclose(four[0], four[1]) and not torch.allclose(four[1], four[2])


def test_coordinate_channels_give_each_pixel_its_column_and_row():
    grid = coordinate_channels(2, 3, 5, "cpu", torch.float32)
    assert grid.shape == (2, 2, 3, 5)
    assert grid[0, 0, 1].tolist() == [-1.0, -0.5, 0.0, 0.5, 1.0]  # column, along a row
    assert grid[1, 1, :, 4].tolist() == [-1.0, 0.0, 1.0]  # row, down a column


def test_spatial_position_feeds_the_coordinates_to_the_first_convolution():
    unet = _unet(spatial_position=True)
    assert unet.stem.in_channels == 5 and _unet().stem.in_channels == 3
    x, t, context = torch.randn(1, 3, 2, 8, 8), torch.tensor([7]), torch.randn(1, 2, 12)
    with torch.no_grad():
        with_coordinates = unet(x, t, context, None)
        unet.stem.weight[:, 3:] = 0.0  # the coordinate channels' weights: the output must change without them
        without = unet(x, t, context, None)
    assert with_coordinates.shape == x.shape
    assert not torch.allclose(with_coordinates, without)


def test_alignment_distance_spreads_the_words_evenly_over_the_clip():
    # [CLS] w0 w1 w2 w3 [SEP] pad pad, and the null caption [CLS] [SEP]: 8 frames
    mask = torch.tensor([[1, 1, 1, 1, 1, 1, 0, 0], [1, 1, 0, 0, 0, 0, 0, 0]]).bool()
    distance = alignment_distance(mask, tuple(mask.shape), 8, (1, 1), "cpu")
    assert distance.shape == (2, 8, 8)
    words = distance[0, :, 1:5]
    assert words.abs().argmin(dim=1).tolist() == [0, 0, 1, 1, 2, 2, 3, 3]  # two frames per word, in order
    assert words[0].tolist() == [-0.25, -1.25, -2.25, -3.25]  # in word spacings
    assert (distance[0, :, [0, 5]] == SPECIAL_TOKEN_DISTANCE).all()
    assert (distance[1] == 0).all()  # no words: no preference


def test_the_special_token_counts_come_from_the_tokenizer():
    assert build_text_encoder(load_config("baseline", "micro")).special_token_counts == (1, 1)  # [CLS] ... [SEP]


def test_aligned_cross_attention_makes_each_frame_read_its_own_word():
    unet = _unet(aligned_cross_attention=True)
    assert "mid.attn.0.align_strength" in unet.state_dict()
    block = unet.mid.attn[0]
    with torch.no_grad():
        block.align_strength.fill_(200.0)  # a strong preference: each frame attends to its nearest word only
    seen = []
    block.cross_attn.register_forward_hook(lambda module, args, out: seen.append(out))
    context = torch.randn(1, 4, 12)  # [CLS] w0 w1 [SEP]
    mask = torch.ones(1, 4, dtype=torch.bool)
    with torch.no_grad():
        unet(torch.randn(1, 3, 4, 8, 8), torch.tensor([5]), context, mask)
        out = seen[0]  # (frames, tokens, ch): frames 0-1 read w0, frames 2-3 read w1
        value = block.cross_attn.to_out(block.cross_attn.to_kv(context[0])[:, block.cross_attn.to_q.out_features:])
    for frame, word in enumerate([1, 1, 2, 2]):
        assert torch.allclose(out[frame], value[word].expand_as(out[frame]), atol=1e-4)


def test_text_layout_gives_each_frame_the_map_of_its_own_word():
    torch.manual_seed(0)
    layout = TextLayout(context_dim=12, channels=2, grid=4)
    with torch.no_grad():
        for p in layout.mlp.parameters():
            p.normal_(0.0, 0.5)
        layout.strength.fill_(200.0)  # each frame reads its nearest word only
    context = torch.randn(1, 5, 12)  # [CLS] w0 w1 [SEP] pad
    mask = torch.tensor([[True, True, True, True, False]])
    distance = alignment_distance(mask, (1, 5), 4, (1, 1), "cpu")  # frames 0-1 on w0, 2-3 on w1
    with torch.no_grad():
        maps = layout(context, mask, distance, 8)
        padded = layout(torch.cat([context[:, :4], 100 * torch.randn(1, 1, 12)], dim=1), mask, distance, 8)
        pairs = torch.cat([context[0, [1, 1, 2, 2]], distance[0, torch.arange(4), [1, 1, 2, 2]][:, None]], dim=1)
        own = layout.mlp(pairs).reshape(4, 2, 4, 4)
    assert maps.shape == (4, 2, 8, 8)  # (b f, channels, size, size): upsampled from the 4 x 4 grid
    assert torch.allclose(maps, torch.nn.functional.interpolate(own, size=(8, 8), mode="bilinear"), atol=1e-5)
    assert not torch.allclose(maps[0], maps[2])  # the two words give different maps
    assert torch.allclose(padded, maps, atol=1e-5)  # padding is never read


def test_text_layout_reaches_the_first_convolution_and_starts_at_zero():
    unet = _unet(text_layout_channels=3, spatial_position=True)
    assert unet.stem.in_channels == 3 + 2 + 3
    assert unet.text_layout.grid == 4  # half the image size
    fresh = _unet(random_weights=False, text_layout_channels=3)
    x, t, mask = torch.randn(1, 3, 2, 8, 8), torch.tensor([7]), torch.ones(1, 4, dtype=torch.bool)
    with torch.no_grad():
        assert (fresh.text_layout(torch.randn(1, 4, 12), mask, torch.zeros(1, 2, 4), 8) == 0).all()
        a = unet(x, t, torch.randn(1, 4, 12), mask)
        b = unet(x, t, torch.randn(1, 4, 12), mask)
        for module in unet.modules():  # with every attention's output zeroed, only the layout carries the caption
            if hasattr(module, "cross_attn"):
                torch.nn.init.zeros_(module.cross_attn.to_out.weight)
                torch.nn.init.zeros_(module.cross_attn.to_out.bias)
        c = unet(x, t, torch.randn(1, 4, 12), mask)
        d = unet(x, t, torch.randn(1, 4, 12), mask)
    assert not torch.allclose(a, b) and not torch.allclose(c, d)


def test_motion_weights_favour_moving_pixels_and_leave_a_static_clip_alone():
    from t2s.diffusion import motion_weights

    static = torch.rand(1, 3, 1, 6, 6).expand(2, 3, 5, 6, 6).clone()
    assert torch.allclose(motion_weights(static, 10.0), torch.ones(2, 1, 5, 6, 6), atol=1e-3)
    moving = static.clone()
    moving[0, :, 2, 1, 1] += 1.0  # one pixel of one frame of the first clip changes
    weights = motion_weights(moving, 10.0)
    assert weights[0, 0, 2, 1, 1] > 10 * weights[0, 0, 2, 4, 4]
    assert weights[0].mean().item() == pytest.approx(11.0)  # 1 + strength on average
    assert torch.allclose(weights[1], torch.ones(1, 5, 6, 6), atol=1e-3)  # the other clip is unaffected


def test_the_motion_weighted_loss_is_the_plain_loss_at_zero_strength_and_on_static_clips():
    from diffusers import DDPMScheduler

    from t2s.diffusion import diffusion_loss

    scheduler = DDPMScheduler(num_train_timesteps=10, prediction_type="sample")
    unet = _unet()
    clean = torch.rand(1, 3, 1, 8, 8).expand(2, 3, 4, 8, 8).clone()
    noise, t, context = torch.randn(2, 3, 4, 8, 8), torch.tensor([2, 7]), torch.randn(2, 3, 12)
    with torch.no_grad():
        plain = diffusion_loss(unet, scheduler, clean, noise, t, context, None)
        assert diffusion_loss(unet, scheduler, clean, noise, t, context, None, 10.0) == pytest.approx(plain.item(), rel=1e-3)
        clean[:, :, 1:, 2:4, 2:4] = 1.0  # a moving patch
        weighted = diffusion_loss(unet, scheduler, clean, noise, t, context, None, 10.0)
        assert weighted != pytest.approx(diffusion_loss(unet, scheduler, clean, noise, t, context, None).item())


def test_the_temporal_conv_as_a_conv2d_is_the_conv3d():
    """`model.temporal_conv` runs a (3, 1, 1) Conv3d's weights as a (3, 1) Conv2d (faster on the CPU): the same
    outputs and gradients as the Conv3d, for a strided view (the ResBlock's layout) and a channels-last one."""
    from t2s.model import temporal_conv

    torch.manual_seed(0)
    conv = nn.Conv3d(6, 6, (3, 1, 1), padding=(1, 0, 0))
    for layout in (torch.contiguous_format, torch.channels_last):
        x = torch.randn(2 * 5, 6, 4, 3).to(memory_format=layout).requires_grad_()
        t = x.unflatten(0, (-1, 5)).transpose(1, 2)  # (b, c, f, h, w) as ResBlock.forward views it
        ours = temporal_conv(conv, t)
        grads = torch.autograd.grad(ours.square().sum(), [x, conv.weight, conv.bias])
        reference = conv(t)
        expected = torch.autograd.grad(reference.square().sum(), [x, conv.weight, conv.bias])
        torch.testing.assert_close(ours, reference)
        for a, b in zip(grads, expected):
            torch.testing.assert_close(a, b)
