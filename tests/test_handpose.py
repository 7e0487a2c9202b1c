"""Text -> hand pose -> glove maps (t2s.handpose) and the denoiser's hand_pose option: the pose read off a synthsign
clip is the renderer's keypoints and draws back its glove maps; the pose head fits a pose; the denoiser is taught
with the clip's pose (its null captions with their own prediction) and its pose loss (of the captioned clips) reaches
the head; config checks."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from t2s import handpose, synthsign
from t2s.config import ConfigError, load_config
from t2s.model import VideoUNet, alignment_distance

COLORS = list(synthsign.HAND_COLORS.values())


def _clip(caption: str = "hello my name is anna", size: int = 32, frames: int = 8, signer: int = 1):
    pixels, keypoints = synthsign.render_clip(caption, signer, frames, size, seed=3)
    return torch.tensor(pixels).float().permute(3, 0, 1, 2)[None] / 127.5 - 1, torch.tensor(keypoints)


@pytest.mark.parametrize("size", [16, 32, 64, 96])
def test_the_crop_covers_a_synthsign_glove(size):
    assert handpose.crop_extent(size) >= synthsign.hand_stamps(size)[0]


@pytest.mark.parametrize("size", [32, 64])
def test_the_pose_read_off_a_clip_is_its_keypoints_and_draws_back_its_gloves(size):
    clip, keypoints = _clip(size=size)
    xy, crops = handpose.glove_pose(clip, COLORS, handpose.crop_extent(size))
    assert torch.equal(xy, keypoints)  # a glove's pixel centroid is its keypoint (synthsign's gloves are symmetric)
    soft, hard = handpose.glove_maps(clip, COLORS)
    assert hard.sum() > 0
    drawn = handpose.draw_pose(xy, crops, size)
    assert (drawn - soft).abs().max() < 1e-3
    moved = handpose.draw_pose(xy + torch.tensor([1.0, 0.0]), crops, size)  # one pixel to the right
    assert (moved[..., 1:] - soft[..., :-1]).abs().max() < 1e-3


def test_a_frame_without_a_glove_gets_the_centre_and_an_empty_crop():
    clip, _ = _clip()
    blank = torch.zeros_like(clip)  # mid grey: far from both gloves
    xy, crops = handpose.glove_pose(blank, COLORS, 4)
    assert torch.equal(xy, torch.full_like(xy, 15.5)) and crops.max() < 1e-3


def test_fitting_the_pose_head_learns_each_captions_pose_and_is_deterministic():
    clips = [_clip(c) for c in ("hello my name is anna", "good morning", "where is the train station")]
    target = handpose.glove_pose(torch.cat([c for c, _ in clips]), COLORS, 4)
    context = torch.randn(3, 7, 12, generator=torch.Generator().manual_seed(0))
    mask = torch.tensor([[True] * 7, [True] * 4 + [False] * 3, [True] * 7])
    distance = alignment_distance(mask, (3, 7), 8, (1, 1), "cpu")

    def fit(steps: int):
        torch.manual_seed(0)
        head = handpose.HandPose(12, 32)
        with torch.no_grad():
            before = (head(context, mask, distance)[0] - target[0]).norm(dim=-1).median()
        return head, before, handpose.fit_hand_pose(head, context, mask, distance, target, steps, seed=0)

    head, before, error = fit(300)
    assert all(p.grad is None for p in head.parameters())  # nothing left for the first diffusion step to add to
    assert before > 4.0 > 1.5 > error  # pixels
    again, _, error_again = fit(300)
    assert error_again == error and all(torch.equal(a, b) for a, b in zip(head.parameters(), again.parameters()))


def _unet(**options) -> VideoUNet:
    torch.manual_seed(0)
    return VideoUNet(context_dim=12, image_size=16, model_channels=8, channel_mult=(1, 2), num_res_blocks=1,
                     attention_resolutions=(8,), num_heads=2, hand_pose=True, **options)


def test_the_denoiser_is_taught_with_the_clips_pose_and_the_null_caption_with_its_own():
    unet = _unet()
    clip, _ = _clip(size=16, frames=4)
    clips = clip.repeat(2, 1, 1, 1, 1)
    target = handpose.glove_pose(clips, COLORS, unet.hand_pose.extent)
    context = torch.randn(2, 4, 12)
    mask = torch.tensor([[True] * 4, [True, True, False, False]])  # a caption of 2 words; the null caption
    seen = []
    unet.stem.register_forward_hook(lambda module, args, out: seen.append(args[0][:, -2:].detach()))
    out, error = unet(torch.randn_like(clips), torch.tensor([5, 5]), context, mask, pose_target=target)
    assert out.shape == clips.shape and error.ndim == 0 and error > 0
    distance = alignment_distance(mask, (2, 4), 4, (1, 1), "cpu")
    with torch.no_grad():
        predicted = handpose.draw_pose(*unet.hand_pose(context, mask, distance), 16)
    taught = handpose.draw_pose(*target, 16)
    assert torch.allclose(seen[0][:4], taught[:4]) and torch.allclose(seen[0][4:], predicted[4:], atol=1e-6)
    # the pose loss is the captioned clip's alone: the null caption says nothing of its clip's pose
    with torch.no_grad():
        xy, crops = unet.hand_pose(context, mask, distance)
    assert torch.allclose(error, handpose.pose_loss((xy[:4], crops[:4]), (target[0][:4], target[1][:4])))
    assert not torch.allclose(error, handpose.pose_loss((xy, crops), target))
    error.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in unet.hand_pose.parameters())
    # sampling: no target, the caption's own prediction for every clip; the plain output
    seen.clear()
    with torch.no_grad():
        plain = unet(torch.randn_like(clips), torch.tensor([5, 5]), context, mask)
    assert torch.is_tensor(plain) and torch.allclose(seen[0], predicted, atol=1e-6)


def test_the_glove_layer_draws_each_hands_colour_where_its_map_is():
    unet = _unet()
    x, t = torch.randn(1, 3, 4, 16, 16), torch.tensor([5])
    context, mask = torch.randn(1, 4, 12), torch.ones(1, 4, dtype=torch.bool)
    k = 2 * unet.hand_pose.extent + 1
    pose = (torch.tensor([[4.0, 5.0], [11.0, 9.0]]).expand(4, 2, 2), torch.ones(4, 2, k, k))  # two solid squares
    unet.hand_pose.forward = lambda *args: pose
    colours = torch.tensor([[1.0, -1.0, 0.5], [-1.0, 0.5, 1.0]])
    covered = handpose.draw_pose(*pose, 16).sum(1) > 0  # (f, h, w)
    with torch.no_grad():
        unet.glove_colors.copy_(colours)
        plain = unet(x, t, context, mask)  # the UNet's output layer starts at 0: the gloves on a blank frame
        expected = torch.einsum("fkhw,kc->cfhw", handpose.draw_pose(*pose, 16), colours)
        assert torch.allclose(plain[0], expected) and covered.any() and (~covered).any()
        torch.nn.init.normal_(unet.out[-1].weight)  # now the UNet draws something: the gloves stay on top of it
        out = unet(x, t, context, mask)
    assert torch.allclose(out[0][:, covered], expected[:, covered]) and (out[0][:, ~covered] != 0).all()


def test_hand_pose_needs_synthsign_x0_prediction_and_its_pretraining_needs_hand_pose():
    sample = {"prediction_type": "sample"}
    with pytest.raises(ConfigError, match="'hand_pose' is true but dataset is 'folder'"):
        load_config("baseline", "micro", {"hand_pose": True, "dataset": "folder", "data_dir": "x", **sample})
    with pytest.raises(ConfigError, match="'hand_pose_pretrain_steps' is 5 but hand_pose is false"):
        load_config("baseline", "micro", {"hand_pose": False, "hand_pose_pretrain_steps": 5})
    with pytest.raises(ConfigError, match="'hand_pose' is true but prediction_type is 'v_prediction'"):
        load_config("baseline", "micro", {"hand_pose": True, "prediction_type": "v_prediction"})
    with pytest.raises(ConfigError, match="hand_pose_pretrain_steps"):
        load_config("baseline", "micro", {"hand_pose": True, "hand_pose_pretrain_steps": -1, **sample})
    with pytest.raises(ConfigError, match="'hand_pose_lr' is 0.0 but hand_pose is false"):
        load_config("baseline", "micro", {"hand_pose": False, "hand_pose_lr": 0.0})
    with pytest.raises(ConfigError, match=r"key 'hand_pose_lr' has value -0.001; allowed range: \[0.0, inf\]"):
        load_config("baseline", "micro", {"hand_pose": True, "hand_pose_lr": -1e-3, **sample})


@pytest.mark.parametrize("lr", [None, 1e-4])
def test_hand_pose_lr_puts_the_pose_in_its_own_optimizer_group(lr):
    from t2s.engine import Engine

    engine = Engine(load_config("baseline", "micro", {"hand_pose": True, "hand_pose_lr": lr,
                                                      "prediction_type": "sample"}), cpu=True)
    groups = {g["name"]: g for g in engine.optimizer.param_groups}
    head = {id(p) for p in engine.model.hand_pose.parameters()}
    if lr is None:  # with the denoiser, at its learning rate
        assert "hand_pose" not in groups
        assert head <= {id(p) for g in groups.values() for p in g["params"]}
    else:
        assert groups["hand_pose"]["initial_lr"] == lr and {id(p) for p in groups["hand_pose"]["params"]} == head
        assert not head & {id(p) for p in groups["denoiser"]["params"] + groups["denoiser_no_decay"]["params"]}


@pytest.mark.parametrize("variant", ["baseline", "text_finetuned"])
def test_hand_pose_lr_0_keeps_the_fitted_pose_while_the_rest_trains(variant):
    from t2s.engine import Engine

    options = {"hand_pose": True, "hand_pose_pretrain_steps": 10, "hand_pose_lr": 0.0, "prediction_type": "sample",
               "max_steps": 3, "warmup_steps": 0}
    engine = Engine(load_config(variant, "micro", options), cpu=True)
    initial = {k: v.clone() for k, v in engine.model.hand_pose.state_dict().items()}
    engine.pretrain_hand_pose()
    head = {k: v.clone() for k, v in engine.model.hand_pose.state_dict().items()}
    assert any(not torch.equal(initial[k], v) for k, v in head.items())  # the frozen head was fitted all the same
    # out of the optimizer (so out of the gradient clipping's norm) and out of the backward
    assert not any(p.requires_grad for p in engine.model.hand_pose.parameters())
    assert "hand_pose" not in [g["name"] for g in engine.optimizer.param_groups]
    in_optimizer = {id(p) for g in engine.optimizer.param_groups for p in g["params"]}
    assert not in_optimizer & {id(p) for p in engine.model.hand_pose.parameters()}
    unet = engine.model.stem.weight.detach().clone()
    text = [p.detach().clone() for p in engine.text.trainable_parameters()]
    batches = iter(engine.epoch_loader())
    for _ in range(3):
        engine.train_step(batches)
    assert all(torch.equal(v, engine.model.hand_pose.state_dict()[k]) for k, v in head.items())
    assert all(p.grad is None for p in engine.model.hand_pose.parameters())
    assert not torch.equal(unet, engine.model.stem.weight)
    # a trainable text encoder still learns (from the diffusion and the pose loss; BERT's pooler is never reached)
    assert (variant == "text_finetuned") == bool(text)
    assert (variant == "text_finetuned") == any(
        not torch.equal(before, after) for before, after in zip(text, engine.text.trainable_parameters()))


def test_a_run_with_hand_pose_fits_it_first_and_records_it(tmp_path):
    from t2s.train import train

    from t2s.engine import Engine

    cfg = load_config("baseline", "micro", {"hand_pose": True, "hand_pose_pretrain_steps": 30,
                                            "prediction_type": "sample"})
    glove_colors = Engine(cfg, cpu=True).model.glove_colors  # the glove layer starts at the data's glove colours
    assert torch.equal(glove_colors, torch.tensor(COLORS) / 127.5 - 1)
    result = train(cfg, tmp_path / "run", progress=False)
    assert result.status == "finished"
    record = json.loads((tmp_path / "run" / "metadata.json").read_text())["hand_pose_pretraining"]
    assert record["steps"] == 30 and np.isfinite(record["median_error_px"]) and record["seconds"] >= 0


def test_a_variant_differing_only_after_the_fit_takes_it_from_the_cache_and_a_bad_file_is_refitted(tmp_path):
    from t2s.engine import Engine

    options = {"hand_pose": True, "hand_pose_pretrain_steps": 20, "prediction_type": "sample",
               "data_dir": str(tmp_path / "data")}
    first = Engine(load_config("baseline", "micro", options), cpu=True).pretrain_hand_pose()
    assert first["cached"] is None
    tuned = Engine(load_config("text_finetuned", "micro", options), cpu=True)  # a trainable encoder, same seed
    assert not tuned.text.frozen
    second = tuned.pretrain_hand_pose()
    assert second["cached"] and second["median_error_px"] == first["median_error_px"]
    (path,) = (tmp_path / "data" / "hand_pose").glob("hand-pose-*.pt")
    assert second["cached"] == str(path)
    path.write_bytes(b"not a checkpoint")
    third = Engine(load_config("baseline", "micro", options), cpu=True).pretrain_hand_pose()
    assert third["cached"] is None and third["median_error_px"] == first["median_error_px"]
    other_seed = Engine(load_config("baseline", "micro", {**options, "seed": 1}), cpu=True).pretrain_hand_pose()
    assert other_seed["cached"] is None and len(list(path.parent.glob("*.pt"))) == 2
