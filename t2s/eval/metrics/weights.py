"""Whether the pretrained networks of FVD and LPIPS can be loaded, or will be downloaded, for `python -m t2s doctor`.

Rules: looks up the files exactly as `load_i3d` and `load_lpips` do and applies the same download policy
(`files.download_blocker`: ``T2S_OFFLINE=1``, else a quick probe of the weights' host), but downloads nothing and
never raises: every problem becomes a line of the report. Imports `files`, `video_features` and `perceptual`; nothing
imports it but `__init__`.
"""
from __future__ import annotations

from typing import Optional

from t2s.eval.metrics.files import download_blocker, hash_matches, sha256_file
from t2s.eval.metrics.perceptual import HUB_SOURCE, load_lpips, lpips_backbone_path, lpips_backbone_pin, lpips_how_to
from t2s.eval.metrics.video_features import (
    I3D_DOWNLOAD_SOURCE,
    I3D_TORCHSCRIPT_SHA256,
    I3D_WEIGHTS_URL,
    i3d_how_to,
    i3d_weights_path,
    load_i3d,
)


def _absent(url: str, pin: Optional[str], how_to: str) -> str:
    """The line for a file that is absent where a download would put it: what the first use will do."""
    if pin is None:
        return f"absent; not downloaded (no pinned SHA-256 for {url}): {how_to}"
    blocker = download_blocker(url)
    if blocker is None:
        kind = "sha256" if len(pin) == 64 else "the sha256 prefix"
        return f"absent; will be downloaded from {url} on first use (verified against {kind} {pin})"
    return f"absent; {blocker}: {how_to}"


def _given_but_absent(path, source: str, how_to: str) -> str:
    return f"absent: {path} (from {source}) does not exist, and a given path is never downloaded to: {how_to}"


def _i3d_status() -> str:
    path, source = i3d_weights_path()
    if not path.is_file():
        if source != I3D_DOWNLOAD_SOURCE:
            return _given_but_absent(path, source, i3d_how_to())
        return _absent(I3D_WEIGHTS_URL, I3D_TORCHSCRIPT_SHA256, i3d_how_to())
    extractor, message = load_i3d(path, allow_download=False)
    if extractor is None:
        return message
    return f"ok: {extractor.path} ({extractor.name}, sha256 {extractor.sha256[:12]}...)"


def _lpips_status(net: str = "alex") -> str:
    path, source, url = lpips_backbone_path(net)
    pin = lpips_backbone_pin(net, url)
    if not path.is_file():
        if source != HUB_SOURCE:
            return _given_but_absent(path, source, lpips_how_to(url))
        return _absent(url, pin, lpips_how_to(url))
    model, message = load_lpips(net)
    if model is None:
        return message
    digest = sha256_file(path)
    pinned = "" if pin is not None and hash_matches(digest, pin) else ", not the pinned torchvision file"
    return f"ok: {path} (sha256 {digest[:12]}...{pinned})"


def weights_status() -> dict[str, str]:
    """Whether the pretrained networks of FVD and LPIPS can be loaded, without downloading anything.

    Returns {"I3D (FVD)": ..., "AlexNet (LPIPS)": ...}, each exactly one of: "ok: <path> (... sha256 ...)" (found and
    loads); "absent; will be downloaded from <url> on first use (verified against sha256 <pin>)"; "absent; downloads
    are off (T2S_OFFLINE=1): <how to provide the file>"; "absent; no network answered within 3 s (...): <how to>";
    "absent: <path> (from <variable>) does not exist ..." (a given path); or the loader's reason the file is unusable.
    """
    status = {}
    try:
        status["I3D (FVD)"] = _i3d_status()
    except Exception as error:  # the doctor reports, it does not crash
        status["I3D (FVD)"] = f"I3D could not be checked ({type(error).__name__}: {error})"
    try:
        status["AlexNet (LPIPS)"] = _lpips_status()
    except ImportError as error:
        status["AlexNet (LPIPS)"] = f"the lpips package is not installed ({error}): pip install lpips"
    except Exception as error:
        status["AlexNet (LPIPS)"] = f"LPIPS could not be checked ({type(error).__name__}: {error})"
    return status
