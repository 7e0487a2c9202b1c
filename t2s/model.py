"""The video denoiser: a space-time factorized 3D UNet with cross-attention to the caption's token states.

Video tensors are `(batch, channels, frames, height, width)`. Spatial layers see frames folded into the batch
(`'b c f h w -> (b f) c h w'`); temporal layers see pixels folded into the batch (`'b c f h w -> (b h w) f c'`).
The model knows nothing of noise schedules (diffusers' habit): it maps (noisy clip, timestep, text) to a prediction.
"""
from __future__ import annotations

import functools
import math
from typing import Optional

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.checkpoint import checkpoint


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (batch,) timesteps -> (batch, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def coordinate_channels(n: int, h: int, w: int, device, dtype) -> torch.Tensor:
    """(n, 2, h, w): each pixel's column and row, scaled to [-1, 1] (pixel centres at -1 and 1 on the borders)."""
    ys = torch.linspace(-1.0, 1.0, h, device=device, dtype=dtype)
    xs = torch.linspace(-1.0, 1.0, w, device=device, dtype=dtype)
    grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=0)  # (2, h, w): [0] = column, [1] = row
    return grid.expand(n, -1, -1, -1)


SPECIAL_TOKEN_DISTANCE = 2.0  # a special token's alignment distance from every frame, in word spacings


def alignment_distance(mask: Optional[torch.Tensor], shape: tuple[int, int], frames: int, specials: tuple[int, int],
                       device) -> torch.Tensor:
    """(b, frames, s): how far each caption token is from each frame, in word spacings, when the caption's words are
    spread evenly over the clip in their order (frame f at relative time (f + 0.5) / frames, word j of n at
    (j + 0.5) / n; the distance is n times the difference). The `specials` = (leading, trailing) special tokens of
    every caption (BERT's [CLS] and [SEP]: (1, 1)) sit at `SPECIAL_TOKEN_DISTANCE` from every frame; a caption
    without words (the null caption) is at distance 0 everywhere. Padding (mask False) gets any value."""
    b, s = shape
    valid = torch.ones(b, s, device=device) if mask is None else mask.to(device=device, dtype=torch.float32)
    lead, trail = specials
    position = valid.cumsum(1) - 1.0 - lead  # the word index j of each token (negative for the leading specials)
    words = caption_words(mask, shape, specials, device)[:, None]  # n
    is_word = (position >= 0) & (position < words) & (valid > 0)
    frame_time = (torch.arange(frames, device=device, dtype=torch.float32) + 0.5) / frames
    distance = frame_time[None, :, None] * words[:, :, None] - (position[:, None, :] + 0.5)  # (b, frames, s)
    distance = torch.where(is_word[:, None, :], distance, torch.full_like(distance, SPECIAL_TOKEN_DISTANCE))
    return torch.where(words[:, :, None] > 0, distance, torch.zeros_like(distance))


def caption_words(mask: Optional[torch.Tensor], shape: tuple[int, int], specials: tuple[int, int], device) -> torch.Tensor:
    """(b,) float: how many word tokens each caption has (its valid tokens less the special ones; 0: the null caption)."""
    valid = torch.ones(shape, device=device) if mask is None else mask.to(device=device, dtype=torch.float32)
    return (valid.sum(1) - sum(specials)).clamp_min(0.0)


class TextLayout(nn.Module):
    """Per frame, a spatial map of the words signed then: `channels` maps of `grid` x `grid` cells, upsampled to the
    frame and given to the first convolution beside the noisy pixels.

    Each caption token's state and its signed distance d from the frame (`alignment_distance`, in word spacings: where
    in its word the frame is) go through an MLP to `channels` x `grid` x `grid` values; a frame's map is the tokens'
    maps weighted by softmax(-s * d^2) over the caption's tokens (s learned, starting at 1). Where a hand is drawn is
    a product of which word is signed and which pixel is drawn; cross-attention adds the same word vector at every
    pixel of a frame, which the convolutions must then turn into a place. Here a word's place is read off directly:
    the map is linear in the pixel for each word. Zero-initialised output: a new model starts without it."""

    def __init__(self, context_dim: int, channels: int, grid: int, hidden: int = 128):
        super().__init__()
        self.channels, self.grid = channels, grid
        self.strength = nn.Parameter(torch.tensor(1.0))
        self.mlp = nn.Sequential(nn.Linear(context_dim + 1, hidden), nn.SiLU(),
                                 zero(nn.Linear(hidden, channels * grid * grid)))

    def forward(self, context: torch.Tensor, mask: Optional[torch.Tensor], distance: torch.Tensor, size: int):
        # context (b, s, d), mask (b, s) or None, distance (b, f, s) -> (b f, channels, size, size)
        b, f, s = distance.shape
        d = distance.clamp(-SPECIAL_TOKEN_DISTANCE, SPECIAL_TOKEN_DISTANCE).to(context.dtype)
        pairs = torch.cat([context[:, None].expand(b, f, s, -1), d[..., None]], dim=-1)  # (b, f, s, d + 1)
        maps = self.mlp(pairs)  # (b, f, s, channels * grid^2)
        logits = -self.strength * distance.square()
        if mask is not None:
            logits = logits.masked_fill(~mask.bool()[:, None, :], float("-inf"))
        weights = logits.softmax(dim=-1).to(maps.dtype)  # (b, f, s)
        layout = torch.einsum("bfs,bfsk->bfk", weights, maps).reshape(b * f, self.channels, self.grid, self.grid)
        return F.interpolate(layout, size=(size, size), mode="bilinear", align_corners=False)


def embedding_mlp(d_in: int, d_out: int) -> nn.Sequential:
    """Linear - SiLU - Linear: how a timestep (or caption, or frame position) embedding is projected."""
    return nn.Sequential(nn.Linear(d_in, d_out), nn.SiLU(), nn.Linear(d_out, d_out))


def group_norm(channels: int) -> nn.GroupNorm:
    groups = min(32, channels // 4)
    while channels % groups:  # e.g. 144 channels (96 + 48 at a skip concatenation): 24 groups, not 32
        groups -= 1
    return nn.GroupNorm(groups, channels, eps=1e-6)


def zero(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


SHORT_KEYS = 64  # CPU attention over at most this many keys takes PyTorch's math path (see Attention.forward)


class Attention(nn.Module):
    """Multi-head attention through F.scaled_dot_product_attention. x (N, L, C), context (N, S, Cc) or None."""

    def __init__(self, dim: int, heads: int, context_dim: Optional[int] = None):
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_kv = nn.Linear(context_dim or dim, 2 * dim, bias=False)
        self.to_out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, context: Optional[torch.Tensor] = None, mask: Optional[torch.Tensor] = None,
                bias: Optional[torch.Tensor] = None):
        """bias: (N, heads, 1, S) added to the attention logits (masked keys stay excluded)."""
        q = self.to_q(x)
        k, v = self.to_kv(x if context is None else context).chunk(2, dim=-1)
        q, k, v = (rearrange(a, "n l (h d) -> n h l d", h=self.heads) for a in (q, k, v))
        attn_mask = None if mask is None else mask[:, None, None, :]  # (N, 1, 1, S): True = attend
        if bias is not None:
            bias = bias.to(q.dtype)
            attn_mask = bias if attn_mask is None else bias.masked_fill(~attn_mask, float("-inf"))
        if q.device.type == "cpu" and k.shape[-2] <= SHORT_KEYS:
            # on CPU the flash kernel is slow for short sequences (temporal attention over 16 frames: forward +
            # backward 69 ms flash vs 11 ms math; 64 keys: 13 vs 7 ms); the math path is fast and small there
            with sdpa_kernel(SDPBackend.MATH):
                out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.to_out(rearrange(out, "n h l d -> n l (h d)"))


class ResBlock(nn.Module):
    """Spatial conv block with timestep conditioning, then a temporal conv across frames.

    The temporal layers start at PyTorch's default initialization, not at zero: zero-initialized temporal layers (the
    habit of models that inflate a pretrained image UNet) learn slowly from scratch, and tiny-scale samples then
    changed signer partway through a clip."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int):
        super().__init__()
        self.norm1 = group_norm(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * out_ch)
        self.norm2 = group_norm(out_ch)
        self.conv2 = zero(nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()
        self.temporal_norm = group_norm(out_ch)
        self.temporal_conv = nn.Conv3d(out_ch, out_ch, (3, 1, 1), padding=(1, 0, 0))  # across frames only

    def forward(self, x: torch.Tensor, emb: torch.Tensor, frames: int) -> torch.Tensor:
        # x: (b f) c h w ; emb: (b f) e
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        x = self.skip(x) + self.conv2(F.silu(h))
        # (b f) c h w -> b c f h w as a view: with channels-last weights the activations are (b f) h w c in memory,
        # which is b f h w c, i.e. channels_last_3d of b c f h w, so the temporal conv runs with no copy either way
        t = F.silu(self.temporal_norm(x)).unflatten(0, (-1, frames)).transpose(1, 2)
        return x + temporal_conv(self.temporal_conv, t).transpose(1, 2).flatten(0, 1)


def temporal_conv(conv: nn.Conv3d, t: torch.Tensor) -> torch.Tensor:
    """`conv` (a (3, 1, 1) Conv3d across frames) applied to t (b, c, f, h, w). A channels-last view runs the Conv3d
    itself (no copy, see ResBlock.forward); otherwise the same weights run as a (3, 1) Conv2d over (b, c, f, h·w):
    the same sums, and on the CPU 1.7-2.3x faster forward and backward than PyTorch's Conv3d, whose (3, 1, 1) kernel
    takes a slow path (python -m t2s bench, tiny, fp32 on AVX2; docs/benchmark.md)."""
    if t.is_contiguous(memory_format=torch.channels_last_3d) and not t.is_contiguous():
        return conv(t)
    h, w = t.shape[-2:]
    out = F.conv2d(t.flatten(3).contiguous(), conv.weight.squeeze(-1), conv.bias, padding=(conv.padding[0], 0))
    return out.unflatten(3, (h, w))


class SpaceTimeTransformer(nn.Module):
    """Spatial self-attention, cross-attention to the caption, temporal self-attention, feed-forward."""

    def __init__(self, ch: int, heads: int, context_dim: int, max_frames: int = 64, temporal: bool = True,
                 aligned: bool = False):
        super().__init__()
        # per head, how strongly a frame's cross-attention prefers the caption tokens at its own relative position
        # (learned; `alignment_distance` gives the distances)
        self.align_strength = nn.Parameter(torch.full((heads,), 1.0)) if aligned else None
        self.norm_in = group_norm(ch)
        self.proj_in = nn.Linear(ch, ch)
        self.norm1, self.self_attn = nn.LayerNorm(ch), Attention(ch, heads)
        self.norm2, self.cross_attn = nn.LayerNorm(ch), Attention(ch, heads, context_dim)
        self.temporal = temporal
        if temporal:
            self.frame_pos = nn.Parameter(torch.zeros(max_frames, ch))
            self.norm3, self.temporal_attn = nn.LayerNorm(ch), Attention(ch, heads)
        self.norm4 = nn.LayerNorm(ch)
        self.ff = nn.Sequential(nn.Linear(ch, 4 * ch), nn.GELU(), nn.Linear(4 * ch, ch))
        self.proj_out = zero(nn.Linear(ch, ch))

    def forward(self, x, context, context_mask, distance, frames: int):
        # x: (b f) c h w ; context: (b f) s d ; context_mask, distance: (b f) s or None
        h, w = x.shape[-2:]
        y = self.proj_in(rearrange(self.norm_in(x), "n c h w -> n (h w) c"))
        y = y + self.self_attn(self.norm1(y))
        bias = None
        if self.align_strength is not None and distance is not None:
            bias = -self.align_strength[None, :, None, None] * distance[:, None, None, :].square()
        y = y + self.cross_attn(self.norm2(y), context, context_mask, bias)
        if self.temporal:
            tokens = y.shape[1]
            y = rearrange(y, "(b f) l c -> (b l) f c", f=frames)
            y = y + self.temporal_attn(self.norm3(y + self.frame_pos[:frames]))
            y = rearrange(y, "(b l) f c -> (b f) l c", l=tokens)
        y = y + self.ff(self.norm4(y))
        return x + rearrange(self.proj_out(y), "n (h w) c -> n c h w", h=h, w=w)


class Downsample(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=1)

    def forward(self, x):
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Level(nn.Module):
    """The blocks of one resolution: res blocks, each optionally followed by a space-time transformer."""

    def __init__(self, chans: list[tuple[int, int]], emb_dim: int, attn: bool, heads: int, context_dim: int,
                 max_frames: int, aligned: bool = False):
        super().__init__()
        self.res = nn.ModuleList(ResBlock(i, o, emb_dim) for i, o in chans)
        self.attn = nn.ModuleList(
            SpaceTimeTransformer(o, heads, context_dim, max_frames, aligned=aligned) if attn else nn.Identity()
            for _, o in chans
        )


class VideoUNet(nn.Module):
    """(noisy clip (b, c, f, h, w), timesteps (b,), text states (b, s, d), text mask (b, s)) -> (b, c, f, h, w)."""

    def __init__(
        self,
        context_dim: int,
        image_size: int = 64,
        in_channels: int = 3,
        model_channels: int = 64,
        channel_mult: tuple[int, ...] = (1, 2, 4),
        num_res_blocks: int = 2,
        attention_resolutions: tuple[int, ...] = (16, 8),
        num_heads: int = 4,
        max_frames: int = 64,
        gradient_checkpointing: bool = False,
        pooled_text: bool = False,
        frame_position: bool = False,
        spatial_position: bool = False,
        aligned_cross_attention: bool = False,
        caption_special_tokens: tuple[int, int] = (1, 1),
        text_layout_channels: int = 0,
    ):
        super().__init__()
        self.gradient_checkpointing = gradient_checkpointing
        emb_dim = 4 * model_channels
        self.model_channels = model_channels
        self.time_mlp = embedding_mlp(model_channels, emb_dim)
        # the caption's masked mean token state, projected and added to the timestep embedding (Imagen, SD-XL): every
        # res block at every resolution sees the caption, not only the cross-attention levels
        self.text_mlp = embedding_mlp(context_dim, emb_dim) if pooled_text else None
        # each frame's relative position in the clip (0 = first, 1 = last), embedded like a timestep and added to
        # that frame's embedding: without it a frame's cross-attention cannot tell which word of the caption is being
        # signed now (spatial layers see one frame; only the temporal attention knew the frame index)
        self.frame_mlp = embedding_mlp(model_channels, emb_dim) if frame_position else None
        # column and row channels beside the noisy frame (CoordConv, Liu et al. 2018): a convolution cannot tell where
        # in the frame it is, so "draw the hand where the caption puts it" is otherwise learned from border effects
        self.spatial_position = spatial_position
        # per frame, spatial maps of the words signed then (TextLayout), beside the noisy frame
        self.text_layout = (TextLayout(context_dim, text_layout_channels, max(1, image_size // 2))
                            if text_layout_channels else None)
        self.stem = nn.Conv2d(in_channels + (2 if spatial_position else 0) + text_layout_channels, model_channels, 3,
                              padding=1)

        self.aligned_cross_attention = aligned_cross_attention
        self.caption_special_tokens = tuple(caption_special_tokens)
        level = functools.partial(Level, emb_dim=emb_dim, heads=num_heads, context_dim=context_dim,
                                  max_frames=max_frames, aligned=aligned_cross_attention)
        ch = self._build_levels([model_channels * m for m in channel_mult], num_res_blocks, image_size,
                                tuple(attention_resolutions), level)
        self.out = nn.Sequential(group_norm(ch), nn.SiLU(), zero(nn.Conv2d(ch, in_channels, 3, padding=1)))

    def _build_levels(self, chans: list[int], num_res_blocks: int, image_size: int, attention_resolutions: tuple,
                      level) -> int:
        """The down levels, the middle and the up levels (with their skips); returns the last level's channels."""
        self.down, self.downsample = nn.ModuleList(), nn.ModuleList()
        ch = self.model_channels  # the stem's output
        skips, res = [ch], image_size
        for i, out in enumerate(chans):
            pairs = []
            for _ in range(num_res_blocks):
                pairs.append((ch, out))
                ch = out
                skips.append(ch)
            self.down.append(level(pairs, attn=res in attention_resolutions))
            if i < len(chans) - 1:
                self.downsample.append(Downsample(ch))
                skips.append(ch)
                res //= 2
        self.mid = level([(ch, ch), (ch, ch)], attn=True)
        self.mid.attn[1] = nn.Identity()  # res - attn - res
        self.up, self.upsample = nn.ModuleList(), nn.ModuleList()
        for i, out in reversed(list(enumerate(chans))):
            pairs = []
            for _ in range(num_res_blocks + 1):
                pairs.append((ch + skips.pop(), out))
                ch = out
            self.up.append(level(pairs, attn=res in attention_resolutions))
            if i > 0:
                self.upsample.append(Upsample(ch))
                res *= 2
        return ch

    def _block(self, fn, *args):
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(fn, *args, use_reentrant=False)
        return fn(*args)

    def _level(self, level: Level, x, emb, ctx, frames, skips=None, push=None):
        for res, attn in zip(level.res, level.attn):
            if skips is not None:
                x = torch.cat([x, skips.pop()], dim=1)
            x = self._block(res, x, emb, frames)
            if not isinstance(attn, nn.Identity):
                x = self._block(attn, x, *ctx, frames)
            if push is not None:
                push.append(x)
        return x

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor,
                context_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The prediction (b, c, f, h, w): epsilon, v or the clean clip, as the training target says."""
        b, _, frames, h, w = x.shape
        if timesteps.ndim == 0:
            timesteps = timesteps.expand(b)
        emb = self.time_mlp(timestep_embedding(timesteps, self.model_channels).to(x.dtype))
        if self.text_mlp is not None:
            weights = (torch.ones(context.shape[:2], device=context.device) if context_mask is None
                       else context_mask.to(context.dtype))
            pooled = (context * weights[..., None]).sum(1) / weights.sum(1, keepdim=True).clamp_min(1.0)
            emb = emb + self.text_mlp(pooled.to(emb.dtype))
        emb = emb.repeat_interleave(frames, dim=0)  # (b f) e
        if self.frame_mlp is not None:
            where = torch.arange(frames, device=x.device, dtype=torch.float32) * (1000.0 / max(frames - 1, 1))
            emb = emb + self.frame_mlp(timestep_embedding(where, self.model_channels).to(emb.dtype)).repeat(b, 1)
        mask = None if context_mask is None else context_mask.repeat_interleave(frames, dim=0)
        distance = None
        if self.aligned_cross_attention or self.text_layout is not None:
            distance = alignment_distance(context_mask, context.shape[:2], frames, self.caption_special_tokens,
                                          context.device)  # (b, f, s)
        ctx = (context.repeat_interleave(frames, dim=0), mask,  # (b f) s d, (b f) s, (b f) s
               distance.flatten(0, 1) if self.aligned_cross_attention else None)

        x = rearrange(x, "b c f h w -> (b f) c h w")
        if self.spatial_position:
            x = torch.cat([x, coordinate_channels(x.shape[0], h, w, x.device, x.dtype)], dim=1)
        if self.text_layout is not None:
            x = torch.cat([x, self.text_layout(context, context_mask, distance, h).to(x.dtype)], dim=1)
        x = self.stem(x)
        skips = [x]
        for i, level in enumerate(self.down):
            x = self._level(level, x, emb, ctx, frames, push=skips)
            if i < len(self.downsample):
                x = self.downsample[i](x)
                skips.append(x)
        x = self._level(self.mid, x, emb, ctx, frames)
        for i, level in enumerate(self.up):
            x = self._level(level, x, emb, ctx, frames, skips=skips)
            if i < len(self.upsample):
                x = self.upsample[i](x)
        x = self.out(x)
        return rearrange(x, "(b f) c h w -> b c f h w", f=frames)


def build_denoiser(cfg, context_dim: int, caption_special_tokens: tuple[int, int] = (1, 1)) -> VideoUNet:
    """The denoiser for a Config; the cross-attention width is the text encoder's hidden size and the caption's
    (leading, trailing) special tokens its `special_token_counts` (derived)."""
    return VideoUNet(
        context_dim=context_dim,
        image_size=cfg.image_size,
        model_channels=cfg.model_channels,
        channel_mult=tuple(cfg.channel_mult),
        num_res_blocks=cfg.num_res_blocks,
        attention_resolutions=tuple(cfg.attention_resolutions),
        num_heads=cfg.num_heads,
        max_frames=max(64, cfg.num_frames),
        gradient_checkpointing=cfg.gradient_checkpointing,
        pooled_text=cfg.pooled_text_conditioning,
        frame_position=cfg.frame_position_embedding,
        spatial_position=cfg.spatial_position_channels,
        aligned_cross_attention=cfg.aligned_cross_attention,
        caption_special_tokens=caption_special_tokens,
        text_layout_channels=cfg.text_layout_channels,
    )


def to_channels_last(model: nn.Module) -> nn.Module:
    """Convolution weights in channels-last layout (4-D: NHWC, 5-D: NDHWC), in place; oneDNN and cuDNN then run the
    convolutions in that layout and hand it on to the ops that follow. `model.to(memory_format=...)` would refuse
    a model with 5-D weights (diffusers' Conv3d)."""
    formats = {4: torch.channels_last, 5: torch.channels_last_3d}
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim in formats:
                p.data = p.data.contiguous(memory_format=formats[p.ndim])
    return model


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters of any network (shared tensors counted once); only those with requires_grad if
    trainable_only."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
