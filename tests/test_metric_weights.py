"""The metric networks' download policy (issue 15, point 5): AlexNet for LPIPS and the TorchScript I3D are fetched
when absent, verified against their pinned SHA-256, cached and used, unless T2S_OFFLINE=1 or no network answers; the
doctor says which will happen. Every file is served from 127.0.0.1 by a local `http.server` in a thread, with the
pinned URLs and hashes monkeypatched to it: nothing here reaches the internet.
"""
from __future__ import annotations

import functools
import hashlib
import http.server
import os
import socket
import threading
import time

import pytest
import torch

from t2s.eval import evaluate
from t2s.eval.compare import compare_clips, distribution_unavailable
from t2s.eval.metrics import files, perceptual, video_features, weights
from t2s.eval.metrics.files import PROBE_TIMEOUT_S, sha256_file
from t2s.eval.metrics.perceptual import LPIPS_BACKBONE_SHA256, load_lpips
from t2s.eval.metrics.video_features import I3D_TORCHSCRIPT_SHA256, TORCHSCRIPT_REFERENCE, load_i3d
from t2s.eval.metrics.weights import weights_status

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves the test's folder and records every request as (method, path)."""

    def log_message(self, format, *args):  # called once per answered request
        self.server.requests.append((self.command, self.path))


@pytest.fixture
def server(tmp_path):
    """(folder served, base URL, requests answered so far)."""
    root = tmp_path / "served"
    root.mkdir()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Handler, directory=str(root)))
    httpd.requests = []
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}", httpd.requests
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def torchscript_bytes(torchscript_file):
    """The bytes of test_metrics' small TorchScript archive standing in for the I3D file."""
    return torchscript_file.read_bytes()


def _point_at(monkeypatch, tmp_path, base, alex_name="alexnet-owt-00000000.pth", i3d_name="i3d_torchscript.pt"):
    """Downloads on, every pinned URL on `base`, the caches (HOME, torch hub) under tmp_path, no path given."""
    monkeypatch.delenv("T2S_OFFLINE", raising=False)
    for name in ("T2S_ALLOW_DOWNLOAD", "T2S_I3D_WEIGHTS", "T2S_LPIPS_BACKBONE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    original = perceptual._torchvision_backbone
    monkeypatch.setattr(perceptual, "_torchvision_backbone", lambda net: (original(net)[0], f"{base}/{alex_name}"))
    for module in (video_features, weights):
        monkeypatch.setattr(module, "I3D_WEIGHTS_URL", f"{base}/{i3d_name}")
    return tmp_path / "hub" / "checkpoints" / alex_name, tmp_path / "home" / ".cache" / "t2s" / "i3d_torchscript.pt"


def _gets(requests, name):
    return [r for r in requests if r == ("GET", f"/{name}")]


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- (a) downloaded, verified, cached, used; not fetched again ---------------------------------------------------

def test_lpips_backbone_is_downloaded_verified_cached_and_not_fetched_again(server, alexnet_file, tmp_path, monkeypatch):
    root, base, requests = server
    source, backbone = alexnet_file
    digest = sha256_file(source)
    name = f"alexnet-owt-{digest[:8]}.pth"
    os.link(source, root / name)
    cached, _ = _point_at(monkeypatch, tmp_path, base, alex_name=name)
    monkeypatch.setitem(LPIPS_BACKBONE_SHA256, "alex", digest)
    model, status = load_lpips("alex")
    assert model is not None, status
    assert status == f"ok: LPIPS alex with backbone from {cached}"
    assert sha256_file(cached) == digest and len(_gets(requests, name)) == 1
    assert torch.equal(model.net.slice1[0].weight, backbone.features[0].weight)  # the served weights, not others
    assert not list(cached.parent.glob("*.part"))
    model, status = load_lpips("alex")
    assert model is not None and len(_gets(requests, name)) == 1  # the cached file: nothing fetched again
    line = weights_status()["AlexNet (LPIPS)"]
    assert line == f"ok: {cached} (sha256 {digest[:12]}...)"


def test_the_torchscript_i3d_is_downloaded_verified_cached_and_not_fetched_again(server, torchscript_bytes, tmp_path,
                                                                                  monkeypatch):
    root, base, requests = server
    (root / "i3d_torchscript.pt").write_bytes(torchscript_bytes)
    _, cached = _point_at(monkeypatch, tmp_path, base)
    digest = hashlib.sha256(torchscript_bytes).hexdigest()
    monkeypatch.setattr(video_features, "I3D_TORCHSCRIPT_SHA256", digest)
    extractor, status = load_i3d()
    assert extractor is not None, status
    assert extractor.kind == "torchscript" and extractor.path == cached and extractor.sha256 == digest
    assert extractor.name == TORCHSCRIPT_REFERENCE and cached.read_bytes() == torchscript_bytes
    assert load_i3d()[0] is not None and len(_gets(requests, "i3d_torchscript.pt")) == 1


# --- (b) a wrong hash: deleted, null with both hashes ------------------------------------------------------------

def test_a_backbone_whose_sha256_differs_from_the_pin_is_deleted_and_lpips_is_null(server, tmp_path, monkeypatch):
    root, base, requests = server
    payload = b"not the pinned alexnet"
    got = hashlib.sha256(payload).hexdigest()
    (root / "alexnet-owt-00000000.pth").write_bytes(payload)
    cached, _ = _point_at(monkeypatch, tmp_path, base)
    monkeypatch.setitem(LPIPS_BACKBONE_SHA256, "alex", "ab" * 32)
    model, status = load_lpips("alex")
    assert model is None and len(_gets(requests, "alexnet-owt-00000000.pth")) == 1
    assert f"has SHA-256 {got}, not the pinned {'ab' * 32}; it was deleted" in status
    assert not cached.exists() and not list(cached.parent.glob("*"))
    monkeypatch.setitem(LPIPS_BACKBONE_SHA256, "alex", None)  # then torchvision's prefix in the name is the pin
    model, status = load_lpips("alex")
    assert model is None and f"has SHA-256 {got}, not one starting with the pinned prefix 00000000" in status
    assert not list(cached.parent.glob("*"))


def test_an_i3d_whose_sha256_differs_from_the_pin_is_deleted_and_fvd_is_null(server, tmp_path, monkeypatch):
    root, base, requests = server
    (root / "i3d_torchscript.pt").write_bytes(b"something else")
    _, cached = _point_at(monkeypatch, tmp_path, base)
    extractor, status = load_i3d()
    got = hashlib.sha256(b"something else").hexdigest()
    assert extractor is None and len(_gets(requests, "i3d_torchscript.pt")) == 1
    assert f"has SHA-256 {got}, not the pinned {I3D_TORCHSCRIPT_SHA256}; it was deleted" in status
    assert not list(cached.parent.glob("*"))


# --- (c) offline: no request --------------------------------------------------------------------------------------

@pytest.mark.parametrize("variable, value", [("T2S_OFFLINE", "1"), ("T2S_ALLOW_DOWNLOAD", "0")])
def test_offline_no_request_is_made_and_the_reason_says_so(server, tmp_path, monkeypatch, variable, value):
    root, base, requests = server
    (root / "alexnet-owt-00000000.pth").write_bytes(b"x")
    (root / "i3d_torchscript.pt").write_bytes(b"x")
    _point_at(monkeypatch, tmp_path, base)
    monkeypatch.setenv(variable, value)
    extractor, i3d_status = load_i3d()
    model, lpips_status = load_lpips("alex")
    assert extractor is None and model is None and requests == []
    for status in (i3d_status, lpips_status):
        assert f"downloads are off ({variable}={value})" in status
    lines = weights_status()
    assert lines["I3D (FVD)"].startswith(f"absent; downloads are off ({variable}={value}): set T2S_I3D_WEIGHTS=")
    assert lines["AlexNet (LPIPS)"].startswith(f"absent; downloads are off ({variable}={value}): set T2S_LPIPS_BACKBONE=")
    assert requests == []


def test_an_offline_evaluation_records_null_with_the_reason(tmp_path, monkeypatch):
    _point_at(monkeypatch, tmp_path, f"http://127.0.0.1:{_closed_port()}")
    monkeypatch.setenv("T2S_OFFLINE", "1")
    extractor, i3d_status, lpips_model, lpips_status = evaluate._load_metric_models("cpu", None, None)
    assert extractor is None and lpips_model is None
    clips = torch.rand(2, 3, 4, 16, 16) * 2 - 1
    row = {**distribution_unavailable(i3d_status), **compare_clips(clips, clips, None, None, lpips_model, lpips_status)}
    assert row["fvd"] is None and row["kvd"] is None and row["lpips"] is None
    assert row["fvd_status"] == i3d_status and "downloads are off (T2S_OFFLINE=1)" in row["fvd_status"]
    assert row["lpips_status"] == lpips_status and "downloads are off (T2S_OFFLINE=1)" in row["lpips_status"]


# --- (d) no network: a fast failure --------------------------------------------------------------------------------

def test_an_unreachable_host_fails_fast_with_the_no_network_reason(tmp_path, monkeypatch):
    port = _closed_port()
    _point_at(monkeypatch, tmp_path, f"http://127.0.0.1:{port}")
    start = time.monotonic()
    extractor, i3d_status = load_i3d()
    model, lpips_status = load_lpips("alex")
    assert time.monotonic() - start < 2 * PROBE_TIMEOUT_S
    assert extractor is None and model is None
    for status in (i3d_status, lpips_status):
        assert f"no network answered within 3 s (127.0.0.1:{port}: URLError" in status
    lines = weights_status()
    assert lines["I3D (FVD)"].startswith(f"absent; no network answered within 3 s (127.0.0.1:{port}: ")
    assert ": set T2S_LPIPS_BACKBONE=" in lines["AlexNet (LPIPS)"]


def test_a_host_that_never_answers_is_given_up_after_the_timeout(monkeypatch):
    monkeypatch.delenv("T2S_OFFLINE")
    with socket.socket() as silent:  # accepts connections (the backlog) but never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/file.pth"
        start = time.monotonic()
        reason = files.download_blocker(url, timeout=0.5)
        elapsed = time.monotonic() - start
    assert reason is not None and reason.startswith("no network answered within 0.5 s (127.0.0.1:")
    assert 0.4 < elapsed < 2.0


# --- (e) the doctor's lines ---------------------------------------------------------------------------------------

def test_the_doctor_says_what_the_first_use_will_do_without_downloading(server, tmp_path, monkeypatch):
    root, base, requests = server
    name = "alexnet-owt-00000000.pth"
    cached, i3d_cached = _point_at(monkeypatch, tmp_path, base, alex_name=name)
    lines = weights_status()
    assert lines["I3D (FVD)"] == (f"absent; will be downloaded from {base}/i3d_torchscript.pt on first use (verified "
                                  f"against sha256 {I3D_TORCHSCRIPT_SHA256})")
    assert lines["AlexNet (LPIPS)"] == (f"absent; will be downloaded from {base}/{name} on first use (verified against "
                                        f"sha256 {LPIPS_BACKBONE_SHA256['alex']})")
    assert {method for method, _ in requests} == {"HEAD"}  # the probes only: nothing downloaded
    assert not cached.exists() and not i3d_cached.exists()
    monkeypatch.setitem(LPIPS_BACKBONE_SHA256, "alex", None)
    assert weights_status()["AlexNet (LPIPS)"].endswith("(verified against the sha256 prefix 00000000)")
