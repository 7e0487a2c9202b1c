"""Weights files: their SHA-256, when a download may happen (`download_blocker`), a download kept only when it
matches a pinned hash (`fetch_pinned`), a strict state-dict load, and telling a TorchScript archive from a
`torch.save` file.

Rules: downloads are on unless ``T2S_OFFLINE=1`` (the old opt-in ``T2S_ALLOW_DOWNLOAD=0`` also reads as offline) or
no network answers a quick probe within ``PROBE_TIMEOUT_S`` seconds. A file is fetched only against a pinned hash
(a full SHA-256, or the hash prefix torchvision puts in its file names) and moved into place only when it matches it
(a mismatch is deleted); every helper returns the reason it failed instead of raising, so a loader can report a
metric as unavailable. Imports nothing from t2s: `video_features` and `perceptual` build on it.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import threading
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from t2s.rundir import umask


def sha256_file(path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


OFFLINE_ENV_VAR = "T2S_OFFLINE"
LEGACY_DOWNLOAD_ENV_VAR = "T2S_ALLOW_DOWNLOAD"  # the former opt-in: downloads are now on by default; "0" means offline
PROBE_TIMEOUT_S = 3.0  # how long the reachability probe waits for the weights' host before calling the machine offline


def offline_reason() -> Optional[str]:
    """Why downloads are switched off by the environment (``T2S_OFFLINE=1``, or the legacy ``T2S_ALLOW_DOWNLOAD=0``),
    or None when they are not."""
    if os.environ.get(OFFLINE_ENV_VAR, "").strip().lower() in ("1", "true", "yes", "on"):
        return f"downloads are off ({OFFLINE_ENV_VAR}=1)"
    if os.environ.get(LEGACY_DOWNLOAD_ENV_VAR, "").strip() == "0":
        return f"downloads are off ({LEGACY_DOWNLOAD_ENV_VAR}=0)"
    return None


def _ask_host(root: str, timeout: float, outcome: list) -> None:
    """HEAD `root`; appends None when any HTTP answer came (an error status is an answer too), else the error."""
    try:
        with urllib.request.urlopen(urllib.request.Request(root, method="HEAD"), timeout=timeout):
            pass
        outcome.append(None)
    except urllib.error.HTTPError:
        outcome.append(None)
    except Exception as error:  # DNS, refused connection, timeout, TLS: no usable network
        outcome.append(f"{type(error).__name__}: {error}")


def _probe(url: str, timeout: float) -> Optional[str]:
    """None when the host of `url` answers a HEAD request within `timeout` seconds, else why not. The request runs in
    a daemon thread that is waited on for `timeout` at most: a hanging DNS lookup cannot stall the caller."""
    parts = urllib.parse.urlsplit(url)
    outcome: list = []
    thread = threading.Thread(target=_ask_host, args=(f"{parts.scheme}://{parts.netloc}/", timeout, outcome),
                              daemon=True)
    thread.start()
    thread.join(timeout)
    if outcome and outcome[0] is None:
        return None
    detail = outcome[0] if outcome else "no answer"
    return f"no network answered within {timeout:g} s ({parts.netloc}: {detail})"


def download_blocker(url: str, timeout: float = PROBE_TIMEOUT_S) -> Optional[str]:
    """The download policy: None when `url` may be downloaded now, else why not -- "downloads are off (T2S_OFFLINE=1)"
    (no request is made) or "no network answered within 3 s (<host>: ...)" (a HEAD to the host's root, `_probe`)."""
    return offline_reason() or _probe(url, timeout)


def hash_matches(digest: str, pin: str) -> bool:
    """Whether a file's hex SHA-256 `digest` matches `pin`: equal to a full 64-digit pin, or starting with a shorter
    one (torchvision's file names carry the first 8 hex digits of the file's SHA-256, which torch hub's
    ``check_hash=True`` verifies)."""
    return digest == pin if len(pin) == 64 else digest.startswith(pin)


def fetch_pinned(url: str, dest: Path, sha256: Optional[str], timeout: float) -> Optional[str]:
    """Download url to dest under the policy: None on success, else why not (no pin, offline, no network, a transfer
    error, or a hash mismatch -- then the file was deleted). Nothing is requested without a pin."""
    if sha256 is None:
        return f"no pinned SHA-256 for {url}, so it is not downloaded"
    return download_blocker(url) or _download(url, dest, timeout, sha256)


def _download(url: str, dest: Path, timeout: float, sha256: str) -> Optional[str]:
    """Fetch url to dest atomically (via a .part file) if its SHA-256 matches the pin `sha256` (`hash_matches`; the
    caller, `fetch_pinned`, refuses to fetch without one); None on success, else why not. A file whose hash differs
    is deleted, never moved into place."""
    part = None
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        with urllib.request.urlopen(url, timeout=timeout) as response:
            with tempfile.NamedTemporaryFile(dir=dest.parent, delete=False, suffix=".part") as tmp:
                part = tmp.name
                shutil.copyfileobj(response, tmp)
        got = sha256_file(part)
        if not hash_matches(got, sha256):
            os.remove(part)
            pinned = f"the pinned {sha256}" if len(sha256) == 64 else f"one starting with the pinned prefix {sha256}"
            return f"the file downloaded from {url} has SHA-256 {got}, not {pinned}; it was deleted"
        os.chmod(part, 0o666 & ~umask())  # an ordinary file, as the user's umask makes them (the .part was private)
        os.replace(part, dest)
        return None
    except Exception as error:  # network, HTTP or filesystem error: all mean "not available"
        if part is not None and os.path.exists(part):
            os.remove(part)
        return f"{type(error).__name__}: {error}"


def load_state_dict_file(model: nn.Module, path: Path, device) -> str | None:
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
