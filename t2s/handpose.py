"""Text -> hand pose -> glove maps: the two-stage conditioning of sign-language production (text to pose, pose to
video), for clips whose hands are coloured gloves (synthsign).

A *hand pose* is, per frame and per hand, the glove's centre (x, y in pixels: column, row) and a `2e + 1` square
crop of the glove's colour similarity around that centre (its shape; e = `crop_extent`). `glove_pose` reads it off
clips (the targets, read from the training clips as pose estimators read keypoints off real video); `draw_pose` draws
a pose back as one map per hand (the crop placed at the centre, bilinear), which the denoiser sees beside the noisy
frame; `HandPose` predicts it from the caption's token states. Drawing the pose read off a clip gives back the clip's
glove maps (up to float rounding where the centre is a pixel centre, as synthsign's gloves are).

Why: at the CPU budget the denoiser learns to paint a glove where a map says within a third of a pixel, but places
hands from the caption alone two or more pixels off, and the gloss recognizer reads at about a pixel (README, notes
on the tiny scale). The pose is a small regression that `fit_hand_pose` fits in seconds before the diffusion
training; during it the denoiser is taught with the clip's own pose (teacher forcing) and the pose keeps training on
its loss (`pose_loss`) at the config's `hand_pose_lr` (0: it stays as fitted). The fit's learning rate, 2e-2, is high
for AdamW: a fit that memorises the training clips' poses more closely reads better (BLEU-4 of clean drawings of the
pose on 62 seen captions: 44 at 3e-3, 61 at 2e-2, in the same 2,000 steps).

Public: `HandPose`, `crop_extent`, `glove_maps`, `glove_pose`, `draw_pose`, `pose_loss`, `fit_hand_pose`, `fit_key`.
Imports nothing from t2s.
"""
from __future__ import annotations

import hashlib
import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from diffusers.optimization import get_cosine_schedule_with_warmup
from torch import nn

GLOVE_TOLERANCE = 60.0  # RGB distance: a pixel within it is glove (the hand finder's default, metrics.find_hands)
POSE_XY_WEIGHT = 0.05  # pose_loss per squared pixel of centre error (a fresh head's ~8 px error: ~3)
POSE_CROP_WEIGHT = 10.0  # pose_loss per unit of the crops' mean squared error (a fresh head's ~0.05: ~0.5)
FIT_VERSION = 2  # bump when fit_hand_pose or HandPose change: cached fits (fit_key) are not reused


def crop_extent(image_size: int) -> int:
    """e: a pose crop is (2e + 1) pixels square, 0.1 of the image each side of the centre -- it covers a synthsign
    glove (at most 1.3 x its radius of 0.075 of the image)."""
    return max(1, math.ceil(0.1 * image_size))


def glove_maps(clips: torch.Tensor, colors: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """clips (b, 3, f, h, w) in [-1, 1] -> (soft, hard), each (b f, hands, h, w): per glove colour, each pixel's
    similarity exp(-(d / GLOVE_TOLERANCE)^2) (d = RGB distance) and whether d <= GLOVE_TOLERANCE."""
    b, _, f, h, w = clips.shape
    rgb = ((clips.float().clamp(-1, 1) + 1) * 127.5).permute(0, 2, 3, 4, 1).reshape(b * f, h, w, 1, 3)
    distance = (rgb - torch.tensor(colors, dtype=torch.float32, device=clips.device)).norm(dim=-1)
    soft = torch.exp(-(distance / GLOVE_TOLERANCE).square()).permute(0, 3, 1, 2)
    return soft, (distance <= GLOVE_TOLERANCE).float().permute(0, 3, 1, 2)


def glove_pose(clips: torch.Tensor, colors: Sequence[Sequence[int]], extent: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The pose of clips (b, 3, f, h, w): (xy (b f, hands, 2), crops (b f, hands, 2e+1, 2e+1)). A glove's centre is
    the centroid of its colour's pixels (the frame's centre where it has none); its crop, the soft similarity
    around that centre."""
    soft, hard = glove_maps(clips, colors)
    n, hands, h, w = soft.shape
    ys, xs = torch.meshgrid(torch.arange(h, device=soft.device, dtype=soft.dtype),
                            torch.arange(w, device=soft.device, dtype=soft.dtype), indexing="ij")
    count = hard.sum((2, 3))
    centre = torch.tensor([(w - 1) / 2, (h - 1) / 2], device=soft.device)
    xy = torch.stack([(hard * xs).sum((2, 3)), (hard * ys).sum((2, 3))], -1) / count.clamp_min(1)[..., None]
    xy = torch.where(count[..., None] > 0, xy, centre)
    offsets = torch.arange(-extent, extent + 1, device=soft.device, dtype=soft.dtype)
    oy, ox = torch.meshgrid(offsets, offsets, indexing="ij")
    px, py = xy[..., 0, None, None] + ox, xy[..., 1, None, None] + oy  # (n, hands, k, k) pixel coordinates
    grid = torch.stack([px / (w - 1) * 2 - 1, py / (h - 1) * 2 - 1], -1).flatten(0, 1)
    crops = F.grid_sample(soft.reshape(n * hands, 1, h, w), grid, align_corners=True)
    return xy, crops.reshape(n, hands, 2 * extent + 1, 2 * extent + 1)


def draw_pose(xy: torch.Tensor, crops: torch.Tensor, size: int) -> torch.Tensor:
    """xy (n, hands, 2), crops (n, hands, k, k) -> maps (n, hands, size, size): each crop placed at its centre
    (bilinear, so a centre between pixels moves the glove smoothly), zero elsewhere."""
    n, hands, k, _ = crops.shape
    extent = (k - 1) / 2
    pixels = torch.arange(size, device=xy.device, dtype=torch.float32)
    gx = (pixels[None, None, None, :] - xy[..., 0, None, None].float()) / extent
    gy = (pixels[None, None, :, None] - xy[..., 1, None, None].float()) / extent
    grid = torch.stack(torch.broadcast_tensors(gx, gy), -1).flatten(0, 1)  # (n hands, size, size, 2)
    maps = F.grid_sample(crops.float().reshape(n * hands, 1, k, k), grid, align_corners=True)
    return maps.reshape(n, hands, size, size)


def pose_loss(pred: tuple[torch.Tensor, torch.Tensor], target: tuple[torch.Tensor, torch.Tensor],
              keep: Optional[torch.Tensor] = None) -> torch.Tensor:
    """POSE_XY_WEIGHT x mean squared centre error (pixels^2) + POSE_CROP_WEIGHT x mean squared crop error, over the
    rows (frames) where `keep` (bool (n,); default all) holds; 0 where none does."""
    (xy, crops), (xy_t, crops_t) = pred, target
    per_row = (POSE_XY_WEIGHT * (xy.float() - xy_t).square().sum(-1).mean(-1)
               + POSE_CROP_WEIGHT * (crops.float() - crops_t).square().flatten(1).mean(-1))
    if keep is None:
        return per_row.mean()
    keep = keep.to(per_row.dtype)
    return (per_row * keep).sum() / keep.sum().clamp_min(1.0)


class HandPose(nn.Module):
    """Caption token states and their alignment distances (b, f, s: `model.alignment_distance`) -> each frame's pose.

    Each (token, frame) pair -- the token's state and where in its word the frame is -- goes through an MLP to a pose
    (per hand: centre and crop); a frame's pose is its tokens' poses weighted by softmax(-s d^2) (s learned), as
    `model.TextLayout` weights its maps (computed as the weighted features through the last, linear layer). Centres
    pass through tanh into the image."""

    def __init__(self, context_dim: int, image_size: int, hands: int = 2, hidden: int = 256):
        super().__init__()
        self.size, self.hands, self.extent = image_size, hands, crop_extent(image_size)
        k = 2 * self.extent + 1
        self.strength = nn.Parameter(torch.tensor(1.0))
        # the MLP's first layer on [token state, d], split: the state's part once per token, d's per (token, frame)
        self.token = nn.Linear(context_dim, hidden)
        self.phase = nn.Linear(1, hidden, bias=False)
        self.mlp = nn.Sequential(nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU())
        # the last layer is linear: applied once per frame to the tokens' weighted features (the same as weighting
        # the tokens' outputs)
        self.out = nn.Linear(hidden, hands * (2 + k * k))

    def forward(self, context: torch.Tensor, mask: Optional[torch.Tensor], distance: torch.Tensor):
        b, f, s = distance.shape
        k = 2 * self.extent + 1
        d = distance.clamp(-2.0, 2.0).to(context.dtype)
        features = self.mlp(self.token(context)[:, None] + self.phase(d[..., None])).float()  # (b, f, s, hidden)
        logits = -self.strength * distance.square()
        if mask is not None:
            logits = logits.masked_fill(~mask.bool()[:, None, :], float("-inf"))
        mixed = torch.einsum("bfs,bfsk->bfk", logits.softmax(dim=-1), features)
        out = self.out(mixed.to(self.out.weight.dtype)).float().reshape(b * f, self.hands, 2 + k * k)
        xy = (out[..., :2].tanh() + 1) * (self.size - 1) / 2
        return xy, out[..., 2:].reshape(b * f, self.hands, k, k)


def fit_key(head: HandPose, tensors: Sequence[torch.Tensor], steps: int, seed: int) -> str:
    """SHA-256 of everything `fit_hand_pose` depends on: the head's initial weights, its inputs and targets (`tensors`),
    the steps, the seed and FIT_VERSION; two runs whose fits would be identical (a variant that differs only after the
    pretraining, e.g. a fine-tuned text encoder, with the same seed) share one key."""
    digest = hashlib.sha256(f"{FIT_VERSION} {steps} {seed} {torch.__version__}".encode())
    for tensor in [*head.state_dict().values(), *tensors]:
        digest.update(str((tuple(tensor.shape), str(tensor.dtype))).encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def fit_hand_pose(head: HandPose, context: torch.Tensor, mask: torch.Tensor, distance: torch.Tensor,
                  target: tuple[torch.Tensor, torch.Tensor], steps: int, seed: int, batch_size: int = 32,
                  learning_rate: float = 2e-2, step_callback=None, weight_decay: float = 1e-2) -> float:
    """Fit `head` alone on fixed caption states: context (n, s, d), mask (n, s), distance (n, f, s) and the clips'
    pose target (xy (n f, hands, 2), crops (n f, hands, k, k)), `steps` AdamW steps of `batch_size` random clips
    (a `seed` generator) under a cosine schedule with 5% warm-up. A head frozen for the diffusion training (its
    parameters without requires_grad) is fitted all the same and left frozen. Returns the median centre error (pixels)
    over all clips after fitting."""
    n, frames = distance.shape[:2]
    xy_t = target[0].reshape(n, frames, *target[0].shape[1:])
    crops_t = target[1].reshape(n, frames, *target[1].shape[1:])
    parameters = list(head.parameters())
    frozen = [p for p in parameters if not p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=learning_rate, weight_decay=weight_decay)
    schedule = get_cosine_schedule_with_warmup(optimizer, num_warmup_steps=max(1, steps // 20), num_training_steps=steps)
    generator = torch.Generator().manual_seed(seed)
    head.train()
    head.requires_grad_(True)
    try:
        for step in range(steps):
            pick = torch.randint(0, n, (min(batch_size, n),), generator=generator).to(context.device)
            loss = pose_loss(head(context[pick], mask[pick], distance[pick]),
                             (xy_t[pick].flatten(0, 1), crops_t[pick].flatten(0, 1)))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            if step_callback is not None:
                step_callback(step)
    finally:
        optimizer.zero_grad(set_to_none=True)  # no gradient of the fit left for the first training step to add to
        for p in frozen:
            p.requires_grad_(False)
    with torch.no_grad():
        xy, _ = head(context, mask, distance)
    return float((xy - target[0]).norm(dim=-1).median())
