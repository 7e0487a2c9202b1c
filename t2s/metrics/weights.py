"""Whether the pretrained networks of FVD and LPIPS can be loaded, for `python -m t2s doctor`.

Rules: looks up the files exactly as `load_i3d` and `load_lpips` do, downloads nothing and never raises: every
problem becomes a line of the report. Imports `video_features` and `perceptual`; nothing imports it but `__init__`.
"""
from __future__ import annotations

from .perceptual import load_lpips
from .video_features import load_i3d


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
