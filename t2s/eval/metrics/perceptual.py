"""Paired frame metrics of matched clips (``fake[i]`` against ``real[i]``): LPIPS, SSIM and PSNR.

Rules: clips ``(B, C, F, H, W)`` in ``[-1, 1]`` of equal shape; each frame is compared with its counterpart and the
values are averaged over frames and clips with equal weight. LPIPS reads [-1, 1] as it is (lpips' convention) and
refuses clips without a negative value ([0, 1] images); SSIM and PSNR rescale to ``[0, 1]`` with ``(x + 1) / 2``
and clamp. `load_lpips` returns ``(model | None, status)``; an absent torchvision backbone is downloaded into torch hub's
cache under `files.download_blocker`'s policy and kept only if it matches its pinned SHA-256. Imports `files`.
"""
from __future__ import annotations

import os
import re
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from t2s.eval.metrics.files import fetch_pinned, load_state_dict_file

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
# Full SHA-256 of torchvision's IMAGENET1K_V1 files, which a download must match. torchvision publishes only the first
# 8 hex digits (in the file name, checked by torch hub's check_hash=True); the full digests below are the ones pinned
# identically by several independent public projects (weights manifests and download scripts that verify
# download.pytorch.org's file: alexnet-owt-7be5be79.pth is 244,408,911 bytes), and each starts with torchvision's own
# prefix. None (squeeze): no full digest was found, so a download is verified against torchvision's prefix only.
LPIPS_BACKBONE_SHA256: dict[str, Optional[str]] = {
    "alex": "7be5be791159472b1fbf3c69796f7cb30dca7ad8466c2df70058c37116cdee02",
    "vgg": "397923af8e79cdbb6a7127f12361acd7a2f83e06b05044ddf496e83de57a5bf0",
    "squeeze": None,
}
LPIPS_DOWNLOAD_TIMEOUT_S = 60.0
HUB_SOURCE = "torch hub cache"  # the only lookup that is downloaded to when the file is absent


def _torchvision_backbone(net: str) -> tuple[Callable[[], nn.Module], str]:
    """Builder of a fresh torchvision backbone for lpips' ``net`` and the URL of its ImageNet weights in torchvision's
    weights API (``<Net>_Weights.IMAGENET1K_V1.url``, e.g. ``.../alexnet-owt-7be5be79.pth``)."""
    import torchvision.models as tvm

    if net not in _LPIPS_BACKBONES:
        raise ValueError(f"unknown LPIPS backbone {net!r}; choose from {sorted(_LPIPS_BACKBONES)}")
    builder, weights = (getattr(tvm, name) for name in _LPIPS_BACKBONES[net])
    return (lambda: builder(weights=None)), weights.IMAGENET1K_V1.url


def lpips_backbone_pin(net: str, url: str) -> Optional[str]:
    """The hash a downloaded backbone must match: the full pin of `LPIPS_BACKBONE_SHA256`, else the SHA-256 prefix in
    torchvision's file name (``alexnet-owt-<8 hex digits>.pth``), else None (then nothing is downloaded)."""
    found = re.search(r"-([0-9a-f]{8,})\.", os.path.basename(url))
    return LPIPS_BACKBONE_SHA256.get(net) or (found.group(1) if found else None)


def lpips_backbone_path(net: str = "alex", weights_dir=None) -> tuple[Path, str, str]:
    """Where `load_lpips` reads the backbone -> (path, source, url): ``weights_dir`` (a directory holding the
    torchvision file, or the file itself), else ``$T2S_LPIPS_BACKBONE`` (file), else torch hub's cache
    ``torch.hub.get_dir()/checkpoints/<file name>`` (source `HUB_SOURCE`, the only one downloaded to)."""
    url = _torchvision_backbone(net)[1]
    filename = os.path.basename(url)
    if weights_dir is not None:
        path = Path(weights_dir).expanduser()
        return (path / filename if path.is_dir() else path), "weights_dir", url
    if os.environ.get(LPIPS_ENV_VAR):
        return Path(os.environ[LPIPS_ENV_VAR]).expanduser(), LPIPS_ENV_VAR, url
    return Path(torch.hub.get_dir()) / "checkpoints" / filename, HUB_SOURCE, url


def lpips_how_to(url: str) -> str:
    """How to provide a backbone by hand."""
    filename = os.path.basename(url)
    return (f"set {LPIPS_ENV_VAR}=/path/to/{filename} or copy the file to {Path(torch.hub.get_dir()) / 'checkpoints'} "
            f"(download: {url})")


def load_lpips(net: str = "alex", weights_dir=None, device="cpu"):
    """LPIPS (Zhang et al. 2018, ``lpips`` v0.1) -> (model in eval mode | None, status).

    The linear calibration layers ship with the ``lpips`` package; the ImageNet backbone is read from the torchvision
    file `lpips_backbone_path` names: alex ``alexnet-owt-7be5be79.pth``, vgg ``vgg16-397923af.pth``, squeeze
    ``squeezenet1_1-b8a52dc0.pth``. When the torch hub cache lacks it (and no path was given), it is downloaded from
    torchvision's weights URL into that cache -- unless ``T2S_OFFLINE=1`` or no network answers
    (`files.download_blocker`) -- and kept only if its SHA-256 matches `lpips_backbone_pin` (a mismatch is deleted).
    Every failure is returned as the status, with its reason.
    """
    import lpips

    build_backbone, _ = _torchvision_backbone(net)
    path, source, url = lpips_backbone_path(net, weights_dir)
    if not path.is_file():
        error = ("a given path is never downloaded to" if source != HUB_SOURCE
                 else fetch_pinned(url, path, lpips_backbone_pin(net, url), LPIPS_DOWNLOAD_TIMEOUT_S))
        if error is not None:
            return None, f"LPIPS {net} backbone weights not found at {path} (from {source}; {error}): {lpips_how_to(url)}"
    backbone = build_backbone()
    error = load_state_dict_file(backbone, path, "cpu")
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


def _check_signed(fake: torch.Tensor, real: torch.Tensor) -> None:
    """LPIPS reads its inputs as [-1, 1] (lpips' ``normalize=False``): [0, 1] (or [0, 255]) images would be read as
    mid-grey and brighter and every distance would shift. Clips of which neither set has one negative value leave the
    darker half of [-1, 1] unused in every frame, which no real video does: they are refused, not scored."""
    smallest = min(float(fake.min()), float(real.min())) if fake.numel() else -1.0
    if smallest >= 0:
        raise ValueError(f"compute_lpips takes clips in [-1, 1], but no value of either set is negative (smallest "
                         f"{smallest:g}): [0, 1] images? rescale them with x * 2 - 1")


@torch.no_grad()
def compute_lpips(fake: torch.Tensor, real: torch.Tensor, model: nn.Module, batch_size: int = 64) -> float:
    """Mean LPIPS between matched clips (B, 3, F, H, W) in [-1, 1]: per frame, averaged over frames and
    clips. Frames whose shorter side is below ``LPIPS_MIN_SIDE`` are upsampled (bilinear) to it first. Clips
    without a negative value in either set ([0, 1] images) raise ``ValueError`` (`_check_signed`)."""
    _check_pair(fake, real)
    _check_signed(fake, real)
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
