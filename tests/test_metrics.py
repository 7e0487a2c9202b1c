"""Tests for t2s.metrics: every fixture (clips, weights files, images) is made here; nothing is downloaded."""
import hashlib
import io
import math
import urllib.request

import numpy as np
import pytest
import torch
import torchvision
from scipy import signal
from torch import nn

from t2s.eval import metrics
from t2s.eval.metrics.distances import (
    compute_fvd,
    feature_statistics,
    frechet_distance,
    kernel_distance,
    kernel_distance_std,
)
from t2s.eval.metrics.files import is_torchscript_archive
from t2s.eval.metrics.hands import (
    dtw,
    dtw_from_cost,
    dtw_joint_error,
    find_hands,
    hand_detection_rate,
)
from t2s.eval.metrics.perceptual import (
    LPIPS_BACKBONE_SHA256,
    compute_lpips,
    load_lpips,
    lpips_backbone_path,
    psnr,
    ssim,
)
from t2s.eval.metrics.temporal import motion_magnitude, temporal_consistency
from t2s.eval.metrics.video_features import (
    I3D,
    I3D_STATE_DICT_SHA256,
    I3D_TORCHSCRIPT_SHA256,
    I3D_TORCHSCRIPT_URL,
    STATE_DICT_OTHER,
    TORCHSCRIPT_OTHER,
    TORCHSCRIPT_REFERENCE,
    i3d_features,
    load_i3d,
)
from t2s.model import count_parameters
from t2s.synthsign import signer as synthsign

HAND_COLORS = {"left": (255, 0, 200), "right": (0, 200, 255)}


def random_clips(*shape, seed=0):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1


pytestmark = pytest.mark.usefixtures("no_network")


# --- Fréchet distance ---------------------------------------------------------------------------------------

def test_frechet_distance_of_diagonal_gaussians_matches_closed_form():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    s1, s2 = rng.uniform(0.1, 3, size=5), rng.uniform(0.1, 3, size=5)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
    assert frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(expected, rel=1e-9)


def _psd_sqrt(a):
    w, v = np.linalg.eigh(a)
    return v @ np.diag(np.sqrt(np.clip(w, 0, None))) @ v.T


def test_frechet_distance_of_full_covariances_matches_eigendecomposition():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(6, 6)), rng.normal(size=(6, 6))
    sigma1, sigma2 = a @ a.T + 0.1 * np.eye(6), b @ b.T + 0.1 * np.eye(6)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    # Tr sqrt(S1 S2) = Tr sqrt(S1^1/2 S2 S1^1/2), a symmetric PSD matrix: eigh only, no sqrtm.
    r1 = _psd_sqrt(sigma1)
    tr_covmean = np.trace(_psd_sqrt(r1 @ sigma2 @ r1))
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(sigma1 + sigma2) - 2 * tr_covmean
    assert frechet_distance(mu1, sigma1, mu2, sigma2) == pytest.approx(expected, rel=1e-8)


def test_frechet_distance_of_identical_statistics_is_zero_even_when_singular():
    features = np.random.default_rng(2).normal(size=(3, 10))  # 3 samples in 10-d: rank-2 covariance
    mu, sigma = feature_statistics(features)
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-6
    assert frechet_distance(mu, sigma, mu + 1.0, sigma) == pytest.approx(10.0, abs=1e-5)


def test_feature_statistics_are_unbiased_float64_and_need_two_samples():
    x = torch.tensor([[1.0, 2.0], [3.0, 6.0]])
    mu, sigma = feature_statistics(x)
    assert mu.dtype == np.float64 and np.allclose(mu, [2.0, 4.0])
    assert np.allclose(sigma, [[2.0, 4.0], [4.0, 8.0]])
    with pytest.raises(ValueError):
        feature_statistics(x[:1])


# --- I3D / FVD --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def i3d_weights(tmp_path_factory):
    """A random I3D state dict with He-initialised convs (default init makes all features nearly equal)."""
    torch.manual_seed(0)
    model = I3D()
    for module in model.modules():
        if isinstance(module, nn.Conv3d):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    path = tmp_path_factory.mktemp("i3d") / "i3d.pt"
    torch.save(model.state_dict(), path)
    return path, model.state_dict()


@pytest.fixture(scope="module")
def i3d_model(i3d_weights):
    extractor, status = load_i3d(i3d_weights[0], allow_download=False)
    assert extractor is not None, status
    return extractor


def test_load_i3d_from_argument_loads_every_tensor(i3d_weights, i3d_model):
    path, state = i3d_weights
    assert i3d_model.kind == "state_dict" and isinstance(i3d_model.model, I3D) and not i3d_model.model.training
    loaded = i3d_model.model.state_dict()
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[k], state[k]) for k in state)
    # what the evaluation row records: the file's hash, and that it is not the pinned piergiaj file
    assert i3d_model.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert i3d_model.name == STATE_DICT_OTHER and i3d_model.path == path


def test_load_i3d_from_env_var(i3d_weights, monkeypatch):
    monkeypatch.setenv("T2S_I3D_WEIGHTS", str(i3d_weights[0]))
    model, status = load_i3d(allow_download=False)
    assert model is not None and status.startswith("ok") and str(i3d_weights[0]) in status


def test_i3d_features_are_the_eval_mode_logits_of_the_preprocessed_clips(i3d_weights):
    """BatchNorm from its running statistics, no dropout: a clip's features do not depend on its batch mates. A
    network left in training mode (batch statistics, dropout 0.5) gives other numbers, different with every batch."""
    model = I3D()
    model.load_state_dict(i3d_weights[1])
    model.train()  # i3d_features puts it in eval mode itself
    clips = random_clips(2, 3, 8, 32, 32)
    one_at_a_time = i3d_features(clips, model, batch_size=1)
    with torch.no_grad():
        together = model.eval()(metrics.video_features._i3d_preprocess(clips))
    assert one_at_a_time.shape == (2, 400) and one_at_a_time.dtype == torch.float32
    torch.testing.assert_close(one_at_a_time, together, rtol=1e-4, atol=1e-4)


def test_i3d_preprocess_resizes_bilinearly_to_224_in_the_signed_range_and_loops_short_clips():
    """A 2x2 two-frame clip by hand. Bilinear, align_corners=False: output pixel i of 224 samples the 2-pixel input
    at (i + 0.5) / 112 - 0.5 (clamped to [0, 1]); pixel 111 lies w = 55.5 / 112 of the way from input 0 to input 1.
    Values stay in [-1, 1] (not rescaled to [0, 1] or [0, 255]); the 2 frames are looped 0, 1, 0, 1, ... to 9."""
    a, b, c, d = -1.0, 1.0, 0.5, -0.5  # frame 0 of the red channel: [[a, b], [c, d]]; frame 1 is its negative
    clip = torch.zeros(1, 3, 2, 2, 2)
    clip[0, 0, 0] = torch.tensor([[a, b], [c, d]])
    clip[0, 0, 1] = -clip[0, 0, 0]
    clip[0, 1] = 0.25
    out = metrics.video_features._i3d_preprocess(clip)
    assert out.shape == (1, 3, 9, 224, 224)
    red, w = out[0, 0, 0], 55.5 / 112
    assert (red[0, 0], red[0, 223], red[223, 0], red[223, 223]) == (a, b, c, d)  # the corners are the input pixels
    assert red[0, 111].item() == pytest.approx(a + w * (b - a), abs=1e-6)
    assert red[111, 0].item() == pytest.approx(a + w * (c - a), abs=1e-6)
    expected_centre = (1 - w) ** 2 * a + (1 - w) * w * (b + c) + w**2 * d
    assert red[111, 111].item() == pytest.approx(expected_centre, abs=1e-6)
    assert out.min() == -1.0 and out.max() == 1.0
    assert out[0, 0, :, 0, 0].tolist() == [a, -a] * 4 + [a]  # frames 0, 1, 0, 1, 0, 1, 0, 1, 0
    assert torch.allclose(out[0, 1], torch.tensor(0.25)) and torch.all(out[0, 2] == 0.0)  # channels kept in order
    long_clip = random_clips(1, 3, 10, 4, 4)
    assert metrics.video_features._i3d_preprocess(long_clip).shape == (1, 3, 10, 224, 224)  # used whole
    with pytest.raises(ValueError, match="RGB"):
        metrics.video_features._i3d_preprocess(random_clips(1, 1, 9, 4, 4))


class MeanColour(nn.Module):
    """A stand-in feature network with features known by hand: the mean of each channel, (B, 3, T, H, W) -> (B, 3)."""

    def __init__(self):
        super().__init__()
        self.unused = nn.Parameter(torch.zeros(()))  # i3d_features takes the device from the parameters

    def forward(self, x):
        return x.mean(dim=(2, 3, 4))


def one_colour_clips(colours: np.ndarray) -> torch.Tensor:
    """(N, 3) colours -> (N, 3, 9, 8, 8) clips, each frame of clip n filled with colour n."""
    return torch.tensor(colours, dtype=torch.float32)[:, :, None, None, None].expand(-1, 3, 9, 8, 8)


def test_fvd_is_the_frechet_distance_of_the_two_sets_of_features_by_hand():
    """Clips of one colour each: their features are their colours (resizing and looping keep a constant frame). Same
    covariance, means c apart: FVD = |c|^2. Features scaled by 1/2: FVD = |mu|^2 / 4 + Tr(S) / 4, S the unbiased
    covariance (a biased one, or the wrong statistic, gives other numbers)."""
    colours = np.array([[-0.5, 0.2, 0.1], [0.3, -0.4, 0.6], [0.0, 0.5, -0.7], [0.8, -0.1, -0.2]])
    offset = np.array([0.1, -0.2, 0.3])
    fvd = compute_fvd(one_colour_clips(colours), one_colour_clips(colours + offset), MeanColour())
    assert fvd == pytest.approx(0.14, rel=1e-4)
    trace = ((colours - colours.mean(0)) ** 2).sum() / (len(colours) - 1)
    expected = (colours.mean(0) ** 2).sum() / 4 + trace / 4
    fvd = compute_fvd(one_colour_clips(colours), one_colour_clips(colours / 2), MeanColour())
    assert fvd == pytest.approx(expected, rel=1e-4)


def test_load_i3d_rejects_mismatched_state_dict(i3d_weights, tmp_path):
    state = dict(i3d_weights[1])
    del state["logits.conv3d.bias"]
    bad = tmp_path / "bad.pt"
    torch.save(state, bad)
    model, status = load_i3d(bad, allow_download=False)
    assert model is None and "does not match" in status and "logits.conv3d.bias" in status


def test_load_i3d_rejects_a_file_that_is_not_a_state_dict(tmp_path):
    bad = tmp_path / "model.pt"
    bad.write_bytes(b"not a checkpoint")
    model, status = load_i3d(bad, allow_download=False)
    assert model is None and str(bad) in status


def test_load_i3d_missing_file_gives_reason(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("T2S_I3D_WEIGHTS", raising=False)
    model, status = load_i3d(tmp_path / "absent.pt")
    assert model is None and "absent.pt" in status and "T2S_I3D_WEIGHTS" in status
    model, status = load_i3d()  # default cache paths; the download is refused: T2S_OFFLINE=1 (conftest's `offline`)
    assert model is None
    assert "I3D weights not found" in status and I3D_TORCHSCRIPT_URL in status
    assert "downloads are off (T2S_OFFLINE=1)" in status
    monkeypatch.delenv("T2S_OFFLINE")
    model, status = load_i3d()  # downloads on: the no_network fixture makes the probe fail
    assert model is None and "no network answered within 3 s (www.dropbox.com: OSError: network disabled" in status
    assert not list((tmp_path / ".cache" / "t2s").glob("*"))  # no partial file left behind


# --- StyleGAN-V's TorchScript I3D ------------------------------------------------------------------------------



def test_torchscript_i3d_is_loaded_with_jit_and_called_as_stylegan_v_calls_it(torchscript_file):
    assert is_torchscript_archive(torchscript_file)
    extractor, status = load_i3d(torchscript_file, allow_download=False)
    assert extractor is not None, status
    assert extractor.kind == "torchscript" and isinstance(extractor.model, torch.jit.ScriptModule)
    assert extractor.sha256 == hashlib.sha256(torchscript_file.read_bytes()).hexdigest()
    assert extractor.name == TORCHSCRIPT_OTHER  # a file other than the pinned one is named as such
    clips = random_clips(3, 3, 8, 16, 16, seed=4)
    features = extractor.features(clips)
    # StyleGAN-V: frames looped to >= 9 here, then (x * 127.5 + 128).clamp(0, 255).to(uint8), detector flags on
    looped = clips[:, :, [0, 1, 2, 3, 4, 5, 6, 7, 0]]
    videos = (looped * 127.5 + 128).clamp(0, 255).to(torch.uint8)
    expected = extractor.model(videos, rescale=True, resize=True, return_features=True)
    assert features.shape == (3, 400) and torch.equal(features, expected)
    assert not torch.allclose(features[0], features[1])


def test_the_pinned_torchscript_file_is_named_as_the_reference(torchscript_file, monkeypatch):
    monkeypatch.setattr(metrics.video_features, "I3D_TORCHSCRIPT_SHA256", hashlib.sha256(torchscript_file.read_bytes()).hexdigest())
    extractor, status = load_i3d(torchscript_file, allow_download=False)
    assert extractor.name == TORCHSCRIPT_REFERENCE and TORCHSCRIPT_REFERENCE in status


def test_a_file_whose_sha256_differs_from_the_expected_one_is_refused(torchscript_file):
    digest = hashlib.sha256(torchscript_file.read_bytes()).hexdigest()
    assert load_i3d(torchscript_file, allow_download=False, expected_sha256=digest)[0] is not None
    extractor, status = load_i3d(torchscript_file, allow_download=False, expected_sha256="0" * 64)
    assert extractor is None and "refused" in status and digest in status


def _serve(payload, urls):
    def urlopen(url, timeout):
        urls.append(url)
        return io.BytesIO(payload)
    return urlopen


def _online(monkeypatch, home):
    """Downloads on, the network probe answering (the download itself goes to `_serve`), caches under `home`."""
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("T2S_I3D_WEIGHTS", raising=False)
    monkeypatch.delenv("T2S_OFFLINE")
    monkeypatch.setattr(metrics.files, "_probe", lambda url, timeout: None)


def test_load_i3d_downloads_the_pinned_torchscript_into_the_cache(torchscript_file, tmp_path, monkeypatch):
    _online(monkeypatch, tmp_path)
    payload, urls = torchscript_file.read_bytes(), []
    monkeypatch.setattr(urllib.request, "urlopen", _serve(payload, urls))
    monkeypatch.setattr(metrics.video_features, "I3D_TORCHSCRIPT_SHA256", hashlib.sha256(payload).hexdigest())
    extractor, status = load_i3d()
    assert extractor is not None, status
    assert urls == [I3D_TORCHSCRIPT_URL] and extractor.kind == "torchscript"
    assert (tmp_path / ".cache" / "t2s" / "i3d_torchscript.pt").read_bytes() == payload
    assert load_i3d()[0] is not None and len(urls) == 1  # the cached file is used; nothing fetched again


def test_a_download_whose_sha256_differs_from_the_pin_is_deleted_not_used(torchscript_file, tmp_path, monkeypatch):
    _online(monkeypatch, tmp_path)
    urls = []
    monkeypatch.setattr(urllib.request, "urlopen", _serve(torchscript_file.read_bytes(), urls))
    assert I3D_TORCHSCRIPT_SHA256 != hashlib.sha256(torchscript_file.read_bytes()).hexdigest()
    extractor, status = load_i3d()
    assert extractor is None and urls == [I3D_TORCHSCRIPT_URL]
    assert "SHA-256" in status and I3D_TORCHSCRIPT_SHA256 in status and "deleted" in status
    assert not list((tmp_path / ".cache" / "t2s").glob("*"))


def test_without_a_pinned_sha256_nothing_is_downloaded(tmp_path, monkeypatch):
    _online(monkeypatch, tmp_path)
    urls = []
    monkeypatch.setattr(urllib.request, "urlopen", _serve(b"anything", urls))
    monkeypatch.setattr(metrics.video_features, "I3D_TORCHSCRIPT_SHA256", None)
    extractor, status = load_i3d()
    assert extractor is None and urls == [] and "no pinned SHA-256" in status


def test_pinned_hashes_are_sha256_hex_digests():
    for digest in (I3D_TORCHSCRIPT_SHA256, I3D_STATE_DICT_SHA256, *LPIPS_BACKBONE_SHA256.values()):
        assert digest is None or (len(digest) == 64 and int(digest, 16) >= 0)
    for net, digest in LPIPS_BACKBONE_SHA256.items():  # each full pin starts with torchvision's own prefix
        url = lpips_backbone_path(net)[2]
        assert digest is None or url.endswith(f"-{digest[:8]}.pth"), (net, url)


# --- KVD ---------------------------------------------------------------------------------------------------

def test_kernel_distance_matches_the_unbiased_mmd_formula_on_a_small_case():
    x = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    y = np.array([[2.0, 0.0], [0.0, 0.0]])
    k = lambda a, b: (a @ b / 2 + 1) ** 3  # noqa: E731  (d = 2)
    xx = sum(k(x[i], x[j]) for i in range(3) for j in range(3) if i != j) / 6
    yy = sum(k(y[i], y[j]) for i in range(2) for j in range(2) if i != j) / 2
    xy = sum(k(a, b) for a in x for b in y) / 6
    assert kernel_distance(x, y) == pytest.approx(xx + yy - 2 * xy, rel=1e-12)
    with pytest.raises(ValueError):
        kernel_distance(x[:1], y)


def test_kvd_is_unbiased_on_two_samples_from_one_distribution():
    """Over many pairs of 8-clip feature sets drawn from one 400-d distribution, the mean KVD is 0 within 3 standard
    errors. A biased (V-statistic) estimator -- the diagonal k(x, x) kept -- is positive by ~400 standard errors here."""
    rng = np.random.default_rng(0)
    values = np.array([kernel_distance(rng.normal(size=(8, 400)), rng.normal(size=(8, 400))) for _ in range(300)])
    assert abs(values.mean()) < 3 * values.std(ddof=1) / np.sqrt(len(values))
    assert (values < 0).any() and (values > 0).any()


def test_kvd_is_clearly_positive_on_different_distributions():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(8, 400)), rng.normal(size=(8, 400)) + 0.5
    kvd, std = kernel_distance(x, y), kernel_distance_std(x, y)
    assert kvd > 0 and kvd > 4 * std
    assert kernel_distance(x, y + 0.5) > kvd  # further apart, larger


@pytest.mark.parametrize("n, subset_size", [(8, 1000), (32, 1000), (32, 8)])
def test_kvd_std_estimates_the_spread_of_kvd_over_repeated_samples(n, subset_size):
    """The subset (delete-d jackknife) standard error of one sample's KVD matches the standard deviation of KVD over
    independent samples (it is mildly conservative). KID's subsets of size n would give 0; subsets of size r < n / 2
    without the sqrt(r / (n - r)) factor would be too wide by sqrt((n - r) / r) (1.7x for n = 32, r = 8)."""
    rng = np.random.default_rng(2)
    pairs = [(rng.normal(size=(n, 400)), rng.normal(size=(n, 400)) + 0.3) for _ in range(120)]
    spread = np.std([kernel_distance(x, y) for x, y in pairs], ddof=1)
    estimated = np.mean([kernel_distance_std(x, y, subset_size=subset_size) for x, y in pairs])
    assert 0.8 < estimated / spread < 1.7
    with pytest.raises(ValueError):
        kernel_distance_std(pairs[0][0][:3], pairs[0][1][:3])


def test_kvd_std_is_reproducible():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(10, 400)), rng.normal(size=(10, 400))
    assert kernel_distance_std(x, y) == kernel_distance_std(x, y)


# --- LPIPS -------------------------------------------------------------------------------------------------



def test_load_lpips_copies_backbone_from_file(alexnet_file):
    path, backbone = alexnet_file
    model, status = load_lpips("alex", weights_dir=path.parent)
    assert model is not None, status
    lpips_state = model.state_dict()
    for name, tensor in backbone.features.state_dict().items():  # e.g. "10.bias" lives in net.slice5
        index = int(name.split(".")[0])
        slice_number = 1 + sum(index >= start for start in (2, 5, 8, 10))
        assert torch.equal(lpips_state[f"net.slice{slice_number}.{name}"], tensor), name


def test_load_lpips_from_env_var_and_hub_cache(alexnet_file, tmp_path, monkeypatch):
    path, _ = alexnet_file
    monkeypatch.setenv("T2S_LPIPS_BACKBONE", str(path))
    model, status = load_lpips("alex")
    assert model is not None and str(path) in status
    monkeypatch.delenv("T2S_LPIPS_BACKBONE")
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / path.name).write_bytes(path.read_bytes())
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    model, status = load_lpips("alex")
    assert model is not None and str(tmp_path / "checkpoints") in status


def test_load_lpips_missing_backbone_gives_reason(tmp_path, monkeypatch):
    monkeypatch.delenv("T2S_LPIPS_BACKBONE", raising=False)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    model, status = load_lpips("alex")
    assert model is None
    assert "T2S_LPIPS_BACKBONE" in status and str(tmp_path / "checkpoints" / "alexnet-owt-7be5be79.pth") in status


def test_load_lpips_rejects_wrong_backbone(tmp_path):
    wrong = tmp_path / "alexnet-owt-7be5be79.pth"
    torch.save(torchvision.models.squeezenet1_1().state_dict(), wrong)
    model, status = load_lpips("alex", weights_dir=wrong)
    assert model is None and "does not match" in status


def test_lpips_refuses_clips_in_the_unit_range(alexnet_file):
    """The kit's clips are in [-1, 1], which LPIPS reads as it is; [0, 1] images would be scored as if mid-grey and
    brighter. They are refused with an error that says so, not scored."""
    model, status = load_lpips("alex", weights_dir=alexnet_file[0])
    assert model is not None, status
    fake, real = random_clips(1, 3, 2, 32, 32, seed=3), random_clips(1, 3, 2, 32, 32, seed=4)
    compute_lpips(fake, real, model)  # [-1, 1]: scored
    with pytest.raises(ValueError, match=r"\[-1, 1\].*\[0, 1\] images"):
        compute_lpips((fake + 1) / 2, (real + 1) / 2, model)


def test_lpips_is_the_mean_of_the_networks_distance_over_matched_frames(alexnet_file):
    """Frame f of clip b against frame f of clip b, in [-1, 1] as lpips reads it, averaged with equal weight; frames
    smaller than 32 px upsampled (bilinear) to 32 first. Identical clips score 0."""
    model, status = load_lpips("alex", weights_dir=alexnet_file[0])
    assert model is not None, status
    for size in (32, 16):
        fake, real = random_clips(2, 3, 3, size, size, seed=3), random_clips(2, 3, 3, size, size, seed=4)
        up = lambda frame: nn.functional.interpolate(frame[None], size=(32, 32), mode="bilinear")  # noqa: E731
        with torch.no_grad():
            by_frame = [model(up(fake[b, :, f]), up(real[b, :, f])).item() for b in range(2) for f in range(3)]
        assert compute_lpips(fake, real, model) == pytest.approx(np.mean(by_frame), rel=1e-5)
        assert compute_lpips(fake, fake, model) == pytest.approx(0.0, abs=1e-7)


# --- SSIM / PSNR -------------------------------------------------------------------------------------------

def test_ssim_of_identical_clips_is_one():
    clips = random_clips(2, 3, 4, 16, 16)
    assert ssim(clips, clips) == pytest.approx(1.0, abs=1e-12)


def test_ssim_of_flat_frames_with_constant_shift_matches_formula():
    a, d = 0.4, 0.1  # in [0, 1] units
    fake = torch.full((1, 3, 2, 16, 16), 2 * a - 1)
    real = torch.full((1, 3, 2, 16, 16), 2 * (a + d) - 1)
    c1 = 0.01**2
    expected = (2 * a * (a + d) + c1) / (a**2 + (a + d) ** 2 + c1)  # variances are 0: the contrast term is 1
    assert ssim(fake, real) == pytest.approx(expected, rel=1e-6)


def _ssim_numpy(x, y, size=11, sigma=1.5):
    """Independent SSIM of two (C, H, W) arrays in [0, 1] with scipy's valid correlation."""
    g = np.exp(-((np.arange(size) - (size - 1) / 2) ** 2) / (2 * sigma**2))
    window = np.outer(g, g) / np.outer(g, g).sum()
    values = []
    for xc, yc in zip(x, y):
        f = lambda im: signal.correlate2d(im, window, mode="valid")  # noqa: E731
        mx, my = f(xc), f(yc)
        vx, vy, cxy = f(xc * xc) - mx**2, f(yc * yc) - my**2, f(xc * yc) - mx * my
        c1, c2 = 0.01**2, 0.03**2
        values.append(((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2)))
    return np.mean(values)


@pytest.mark.parametrize("size", [20, 8])  # 8 < window: clipped to an 8x8 window
def test_ssim_matches_independent_numpy_implementation(size):
    fake, real = random_clips(1, 3, 2, size, size, seed=5), random_clips(1, 3, 2, size, size, seed=6)
    real = (0.7 * fake + 0.3 * real).clamp(-1, 1)
    unit = lambda t, f: ((t[0, :, f].double().numpy() + 1) / 2)  # noqa: E731
    expected = np.mean([_ssim_numpy(unit(fake, f), unit(real, f), size=min(11, size)) for f in range(2)])
    assert ssim(fake, real) == pytest.approx(expected, rel=1e-9)
    assert ssim(fake, real) < 0.99


def test_psnr_of_constant_offset_matches_formula():
    d = 0.05  # in [0, 1] units, i.e. 2d in [-1, 1]
    fake = torch.full((2, 3, 3, 8, 8), -0.2)
    assert psnr(fake, fake + 2 * d) == pytest.approx(10 * math.log10(1 / d**2), rel=1e-6)


def test_psnr_of_identical_frames_is_capped_at_100_db():
    clips = random_clips(1, 3, 2, 8, 8)
    assert psnr(clips, clips) == 100.0
    other = clips.clone()
    other[:, :, 1] = (other[:, :, 1] + 0.2).clamp(-1, 1)  # frame 0 identical, frame 1 not
    assert psnr(clips, other) == pytest.approx((100.0 + psnr(clips[:, :, 1:], other[:, :, 1:])) / 2)


def test_paired_metrics_reject_mismatched_shapes():
    with pytest.raises(ValueError):
        ssim(random_clips(1, 3, 2, 8, 8), random_clips(1, 3, 3, 8, 8))


# --- temporal statistics -----------------------------------------------------------------------------------

def test_frozen_clip_has_consistency_one_and_no_motion():
    frame = random_clips(2, 3, 1, 8, 8)
    frozen = frame.expand(2, 3, 5, 8, 8)
    assert temporal_consistency(frozen) == pytest.approx(1.0, abs=1e-12)
    assert motion_magnitude(frozen) == 0.0
    black = torch.full((1, 3, 4, 8, 8), -1.0)
    assert temporal_consistency(black) == 1.0


def test_motion_and_consistency_of_a_flicker():
    clips = torch.full((1, 3, 3, 4, 4), -1.0)
    clips[:, :, 1] = 0.0  # black, mid-grey, black: every step moves by 0.5 in [0, 1] units
    assert motion_magnitude(clips) == pytest.approx(0.5)
    assert temporal_consistency(clips) == pytest.approx(0.0)  # black vs non-black: orthogonal by convention
    moving = random_clips(1, 3, 4, 8, 8)
    assert 0 < temporal_consistency(moving) < 1


def test_temporal_metrics_need_two_frames():
    with pytest.raises(ValueError):
        motion_magnitude(random_clips(1, 3, 1, 4, 4))


# --- sign fidelity -----------------------------------------------------------------------------------------

def _disc_frame(size, centers, radius=4):
    frame = np.full((size, size, 3), 30, np.uint8)
    rows, cols = np.mgrid[:size, :size]
    for name, (x, y) in centers.items():
        frame[(cols - x) ** 2 + (rows - y) ** 2 <= radius**2] = HAND_COLORS[name]
    return frame


def test_find_hands_returns_exact_disc_centroids_and_nan_when_absent():
    frames = np.stack([
        _disc_frame(40, {"left": (10, 12), "right": (30, 25)}),
        _disc_frame(40, {"right": (20, 33)}),
    ])
    frames[0, 2, 38] = HAND_COLORS["left"]  # a stray pixel must not pull the centroid
    keypoints, found = find_hands(frames, HAND_COLORS)
    assert keypoints.shape == (2, 2, 2) and keypoints.dtype == np.float32
    assert found.tolist() == [[True, True], [False, True]]
    np.testing.assert_allclose(keypoints[0], [[10, 12], [30, 25]], atol=1e-5)
    np.testing.assert_allclose(keypoints[1, 1], [20, 33], atol=1e-5)
    assert np.isnan(keypoints[1, 0]).all()
    assert hand_detection_rate(found) == 0.75


def test_find_hands_tolerance_and_minimum_size():
    frame = _disc_frame(20, {"left": (10, 10)}, radius=0)  # one pixel only
    _, found = find_hands(frame[None], HAND_COLORS)
    assert not found[0, 0]
    shaded = _disc_frame(20, {"left": (10, 10)}, radius=3)
    shaded[shaded[..., 0] == 255] = (225, 20, 180)  # distance ~40 from the hand colour
    assert find_hands(shaded[None], HAND_COLORS, tolerance=60)[1][0, 0]
    assert not find_hands(shaded[None], HAND_COLORS, tolerance=30)[1][0, 0]


@pytest.mark.parametrize("signer, image_size", [(0, 64), (1, 32)])
def test_find_hands_recovers_synthsign_keypoints(signer, image_size):
    frames, truth = synthsign.render_clip("hello world", signer, 8, image_size, signer)
    keypoints, found = find_hands(frames, synthsign.HAND_COLORS)
    truth = np.asarray(truth, np.float64)
    visible = np.isfinite(truth).all(-1)
    assert found[visible].mean() > 0.9
    both = visible & found
    assert both.any()
    assert np.abs(keypoints[both] - truth[both]).max() <= 1.0


def euclid(p, q):
    return float(np.linalg.norm(np.asarray(p, float) - np.asarray(q, float)))


def test_dtw_of_identical_and_time_stretched_sequences_is_zero():
    seq = [0.0, 1.0, 3.0, 2.0]
    assert dtw(seq, seq, euclid) == 0.0
    assert dtw(seq, [0.0, 0.0, 1.0, 3.0, 3.0, 3.0, 2.0], euclid) == 0.0


def test_dtw_of_constant_offset_is_the_offset():
    seq = np.array([[0.0, 0.0], [1.0, 2.0], [3.0, 1.0]])
    assert dtw(seq, seq + [3.0, 4.0], euclid) == pytest.approx(5.0)


def test_dtw_small_example_by_hand():
    # a = [0, 2], b = [0, 1, 2], |.|: cost rows [0 1 2], [2 1 0]; best path (0,0),(0,1)|(1,1),(1,2)
    # accumulated: D = [[0, 1, 3], [2, 1, 1]] -> total 1 over 3 pairs; by reference length 1 / 2.
    assert dtw([0.0, 2.0], [0.0, 1.0, 2.0], euclid) == pytest.approx(1 / 3)
    assert dtw([0.0, 2.0], [0.0, 1.0, 2.0], euclid, normalize="reference") == pytest.approx(1 / 2)
    # a = [0, 5], b = [1]: both a items align to b: (1 + 4) / 2
    assert dtw([0.0, 5.0], [1.0], euclid) == pytest.approx(2.5)


def test_dtw_joint_error_normalises_and_measures_position_only_where_hands_are_found():
    gt = np.array([[[10, 10], [50, 10]], [[12, 10], [52, 10]], [[14, 10], [54, 10]]], np.float32)
    assert dtw_joint_error(gt, gt, body_size=64) == 0.0
    assert dtw_joint_error(gt + [0, 8], gt, body_size=64) == pytest.approx(8 / 64)
    pred = gt + [0, 8]
    pred[1, 0] = np.nan  # left hand missed in frame 1: its gt frame 1 aligns with a neighbour (2 px along x), no miss cost
    left = (8 * 2 + np.hypot(2, 8)) / 3 / 64  # the left hand's path: frames (0,0), (1,0) or (1,2), (2,2)
    assert dtw_joint_error(pred, gt, body_size=64) == pytest.approx((left + 8 / 64) / 2)


def test_dtw_position_error_ignores_detection_when_positions_agree():
    # hands that move along x and hold still over frames 3-7; the prediction is the ground truth shifted 5 px along y
    # (across the motion, so no warping beats the diagonal), with the hands missed in frames 4-7 or not: the same
    # error, 5 px, either way (the old rule charged each missed hand 1.0 image width)
    rng = np.random.default_rng(0)
    gt = np.zeros((12, 2, 2))
    gt[..., 0] = np.cumsum(rng.uniform(1, 3, size=(12, 2)), axis=0) + 10
    gt[..., 1] = [20.0, 40.0]
    gt[3:8] = gt[3]
    offset = np.array([0.0, 5.0])
    found = gt + offset
    missed = found.copy()
    missed[4:8] = np.nan
    both = dtw_joint_error(found, gt, body_size=64)
    assert both == pytest.approx(5 / 64)
    assert dtw_joint_error(missed, gt, body_size=64) == pytest.approx(both)
    # one hand never found: the other hand's error alone
    one = found.copy()
    one[:, 1] = np.nan
    assert dtw_joint_error(one, gt, body_size=64) == pytest.approx(5 / 64)
    # a farther prediction still scores worse: position is what is measured
    assert dtw_joint_error(gt + 2 * offset, gt, body_size=64) == pytest.approx(10 / 64)


def test_a_clip_without_any_hand_has_no_position_error():
    gt = np.array([[[10, 10], [50, 10]], [[12, 10], [52, 10]], [[14, 10], [54, 10]]], np.float32)
    assert np.isnan(dtw_joint_error(np.full((3, 2, 2), np.nan), gt, body_size=64))
    left_only = np.array([[[10, 10], [np.nan, np.nan]]])
    right_only = np.array([[[np.nan, np.nan], [10, 10]]])
    assert np.isnan(dtw_joint_error(left_only, right_only, body_size=10))  # no hand found in both
    # a hand-less tail is left out, not charged
    pred = np.concatenate([gt, np.full((2, 2, 2), np.nan, np.float32)])
    assert dtw_joint_error(pred, gt, body_size=64) == 0.0


def test_dtw_from_cost_equals_dtw():
    rng = np.random.default_rng(5)
    a, b = rng.normal(size=(6, 2)), rng.normal(size=(9, 2))
    cost = np.linalg.norm(a[:, None] - b[None], axis=-1)
    assert dtw_from_cost(cost) == pytest.approx(dtw(a, b, euclid))
    assert dtw_from_cost(cost, "reference") == pytest.approx(dtw(a, b, euclid, normalize="reference"))


# --- cost helpers ------------------------------------------------------------------------------------------

def test_count_parameters():
    layer = nn.Linear(3, 4)
    assert count_parameters(layer) == 16
    layer.bias.requires_grad_(False)
    assert count_parameters(layer, trainable_only=True) == 12
    assert count_parameters(I3D()) == 12_697_264  # Carreira & Zisserman report ~12M for I3D


def test_frechet_distance_retries_with_eps_offset_when_sqrtm_fails(monkeypatch):
    real_sqrtm, calls = metrics.distances.linalg.sqrtm, []

    def first_call_fails(a):
        calls.append(a)
        return np.full_like(a, np.nan) if len(calls) == 1 else real_sqrtm(a)

    monkeypatch.setattr(metrics.distances.linalg, "sqrtm", first_call_fails)
    s1, s2, eps = np.array([1.0, 0.0]), np.array([4.0, 0.0]), 1e-6
    expected = np.sum(s1 + s2 - 2 * np.sqrt((s1 + eps) * (s2 + eps)))
    assert frechet_distance(np.zeros(2), np.diag(s1), np.zeros(2), np.diag(s2), eps=eps) == pytest.approx(expected)
    assert len(calls) == 2 and np.allclose(calls[1], np.diag((s1 + eps) * (s2 + eps)))
