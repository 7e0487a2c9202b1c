"""Weights files: their SHA-256, a download kept only when it matches a pinned hash, a strict state-dict load, and
telling a TorchScript archive from a `torch.save` file.

Rules: a file is fetched only against a pinned hash and moved into place only when it matches it (a mismatch is
deleted); every helper returns the reason it failed instead of raising, so a loader can report a metric as
unavailable. Imports nothing from t2s: `video_features` and `perceptual` build on it.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.request
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Optional

import torch
from torch import nn


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
