"""Fixtures and helpers shared by the test modules, each defined once here.

Fixtures: `synth_dir` (a module's own synthsign cache folder), `one_torch_thread` (one torch thread for a whole
module: request it with `pytestmark = pytest.mark.usefixtures("one_torch_thread")`), `single_thread` (the same for
one test), `offline` (autouse: T2S_OFFLINE=1), `no_network` (any urlopen fails loudly), `no_metric_weights` (an evaluation finds no metric weights,
whatever the machine holds), `torchscript_file` and `alexnet_file` (stand-ins for the I3D and AlexNet weights
files, with made-up weights). Helper: `read_csv` (a CSV file's rows as dicts;
`from conftest import read_csv`). Run directories with made-up numbers come from `runfactory.py`.
"""
from __future__ import annotations

import csv
import os
import tempfile
import urllib.request
import warnings
from pathlib import Path

# The suite's kit processes (this one and the runs it starts) share the CPUs among themselves only, not with kit
# processes elsewhere on the machine (t2s.engine.runtime.RUNNING_DIR): set before t2s is imported, inherited by every
# subprocess.
os.environ["T2S_COMPUTING_DIR"] = tempfile.mkdtemp(prefix="t2s-computing-tests-")

import pytest  # noqa: E402
import torch  # noqa: E402
import torchvision  # noqa: E402
from torch import nn  # noqa: E402

from t2s.engine.runtime import torch_threads  # noqa: E402


def read_csv(path: Path) -> list[dict]:
    """The rows of a CSV file (a run's logs/*.csv) as dicts of strings."""
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def refuse_network(*args, **kwargs):
    raise OSError("network disabled in tests")


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """Downloads are on by default; no test may make one from the internet: T2S_OFFLINE=1 in every test (the download
    tests of test_metric_weights unset it and serve their files from 127.0.0.1)."""
    monkeypatch.setenv("T2S_OFFLINE", "1")


@pytest.fixture
def no_network(monkeypatch):
    """No test may reach the network: any urlopen call fails loudly."""
    monkeypatch.setattr(urllib.request, "urlopen", refuse_network)


@pytest.fixture
def no_metric_weights(monkeypatch, tmp_path, no_network):
    """Every metric-weights lookup points at paths that do not exist, away from the user's caches: the metrics that
    need them are null with their reason (tests whose subject is not the metrics' numbers)."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("T2S_I3D_WEIGHTS", str(tmp_path / "absent" / "i3d.pt"))
    monkeypatch.setenv("T2S_LPIPS_BACKBONE", str(tmp_path / "absent" / "alexnet-owt-7be5be79.pth"))
    monkeypatch.setenv("T2S_OFFLINE", "1")


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory) -> str:
    """A synthsign data folder (`data_dir`) for one test module: its clips are generated on first use."""
    return str(tmp_path_factory.mktemp("synthsign"))


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread while a module runs: with other processes on the 2 cores, two OpenMP threads that wait on
    each other make the micro model's convolutions tens of times slower; one thread costs little here."""
    with torch_threads(1):
        yield


@pytest.fixture
def single_thread():
    """One torch thread for one test (see `one_torch_thread`)."""
    with torch_threads(1):
        yield


# --- stand-ins for the metric networks' weights files (test_metrics, test_metric_weights) ---------------------
class TinyTorchscriptI3D(nn.Module):
    """Stands in for StyleGAN-V's `i3d_torchscript.pt`: its call signature, and it refuses the inputs the real one
    would misread (not uint8 in [0, 255], not asked to rescale / resize / return the pre-softmax features)."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(6, 400)

    def forward(self, x: torch.Tensor, rescale: bool = False, resize: bool = False,
                return_features: bool = False) -> torch.Tensor:
        assert x.dtype == torch.uint8, "StyleGAN-V feeds uint8 videos"
        assert rescale and resize, "the detector must map [0, 255] to [-1, 1] and resize to 224 itself"
        v = x.float() / 127.5 - 1
        v = nn.functional.interpolate(v, size=(v.shape[2], 224, 224), mode="trilinear", align_corners=False)
        summary = torch.cat([v.mean(dim=(2, 3, 4)), (v[:, :, 1:] - v[:, :, :-1]).abs().mean(dim=(2, 3, 4))], dim=1)
        logits = self.proj(summary)
        return logits if return_features else logits.softmax(dim=1)


@pytest.fixture(scope="module")
def torchscript_file(tmp_path_factory):
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.script is deprecated; the published file is TorchScript
        scripted = torch.jit.script(TinyTorchscriptI3D())
    path = tmp_path_factory.mktemp("torchscript") / "i3d_torchscript.pt"
    scripted.save(str(path))
    return path


@pytest.fixture(scope="module")
def alexnet_file(tmp_path_factory):
    torch.manual_seed(0)
    backbone = torchvision.models.alexnet()
    path = tmp_path_factory.mktemp("lpips") / "alexnet-owt-7be5be79.pth"
    torch.save(backbone.state_dict(), path)
    return path, backbone
