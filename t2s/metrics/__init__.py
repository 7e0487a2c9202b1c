"""Each evaluation metric's math, small and tested.

    from t2s import metrics
    extractor, status = metrics.load_i3d()          # (VideoFeatureExtractor | None, why not)
    fvd = metrics.compute_fvd(fake, real, extractor)

Conventions
-----------
* Video tensors are ``(batch, channels=3, frames, height, width)`` floats in ``[-1, 1]`` ("clips").
* Pixel metrics (SSIM, PSNR, temporal consistency, motion) rescale to ``[0, 1]`` with ``(x + 1) / 2`` and
  clamp to ``[0, 1]`` (a sampler may overshoot slightly; a saved image would be clipped the same way).
* Paired metrics (LPIPS, SSIM, PSNR) compare ``fake[i]`` with ``real[i]`` frame by frame and average over
  frames and clips with equal weight.
* Metric functions return plain floats. Loaders of pretrained networks return ``(model | None, status)``:
  a metric whose network cannot be loaded is reported as ``None`` with that status, never a stand-in number.

The rooms, in reading order (each imports only those before it; none imports the rest of t2s but `t2s.counting`):
    files           weights files: SHA-256, the download policy (T2S_OFFLINE, a quick network probe), downloads kept
                    only when they match a pinned hash, strict state dicts
    video_features  I3D: architecture, loading (TorchScript or state dict), preprocessing, features
    distances       Fréchet distance, FVD, KVD (unbiased polynomial-kernel MMD^2) and its standard error
    perceptual      LPIPS (loading and scoring), SSIM, PSNR
    temporal        temporal consistency, motion magnitude
    hands           find_hands, hand detection rate, DTW, DTW mean joint error
    weights         weights_status: can FVD's and LPIPS's networks be loaded (for `python -m t2s doctor`)

Public API
----------
``feature_statistics``, ``frechet_distance`` -- Fréchet distance between Gaussians fitted to features.
``I3D``, ``load_i3d`` (-> ``VideoFeatureExtractor``), ``i3d_features``, ``compute_fvd`` -- Fréchet Video Distance.
``kernel_distance``, ``kernel_distance_std`` -- KVD, the unbiased polynomial-kernel MMD^2 on the same features.
``load_lpips``, ``compute_lpips`` -- LPIPS (``lpips`` package; torchvision backbone from a local file, downloaded and
verified against ``LPIPS_BACKBONE_SHA256`` when absent and downloads are on).
``ssim``, ``psnr`` -- per-frame image fidelity.
``temporal_consistency``, ``motion_magnitude`` -- frame-to-frame statistics of generated clips.
``find_hands``, ``dtw``, ``dtw_joint_error``, ``hand_cost_matrix``, ``hand_detection_rate`` -- sign fidelity.
``count_parameters`` -- cost helper (`t2s.counting`).
"""
from ..counting import count_parameters
from .distances import (
    KVD_SEED,
    KVD_SUBSET_SIZE,
    KVD_SUBSETS,
    compute_fvd,
    feature_statistics,
    frechet_distance,
    kernel_distance,
    kernel_distance_std,
    polynomial_kernel,
)
from .files import OFFLINE_ENV_VAR, PROBE_TIMEOUT_S, download_blocker, is_torchscript_archive, sha256_file
from .hands import HAND_COLOR_TOLERANCE, dtw, dtw_from_cost, dtw_joint_error, find_hands, hand_cost_matrix, hand_detection_rate
from .perceptual import (
    LPIPS_BACKBONE_SHA256, LPIPS_ENV_VAR, LPIPS_MIN_SIDE, PSNR_CAP_DB, compute_lpips, load_lpips, lpips_backbone_path,
    psnr, ssim,
)
from .temporal import motion_magnitude, temporal_consistency
from .video_features import (
    I3D,
    I3D_CACHE_DIR,
    I3D_CACHE_FILES,
    I3D_ENV_VAR,
    I3D_MIN_FRAMES,
    I3D_RESOLUTION,
    I3D_STATE_DICT_SHA256,
    I3D_STATE_DICT_URL,
    I3D_TORCHSCRIPT_SHA256,
    I3D_TORCHSCRIPT_URL,
    I3D_WEIGHTS_URL,
    STATE_DICT_OTHER,
    STATE_DICT_REFERENCE,
    TORCHSCRIPT_OTHER,
    TORCHSCRIPT_REFERENCE,
    InceptionModule,
    MaxPool3dSame,
    Unit3D,
    VideoFeatureExtractor,
    i3d_features,
    i3d_weights_path,
    load_i3d,
)
from .weights import weights_status

__all__ = [
    "count_parameters",
    "KVD_SEED", "KVD_SUBSET_SIZE", "KVD_SUBSETS", "compute_fvd", "feature_statistics", "frechet_distance",
    "kernel_distance", "kernel_distance_std", "polynomial_kernel",
    "OFFLINE_ENV_VAR", "PROBE_TIMEOUT_S", "download_blocker", "is_torchscript_archive", "sha256_file",
    "HAND_COLOR_TOLERANCE", "dtw", "dtw_from_cost", "dtw_joint_error", "find_hands", "hand_cost_matrix", "hand_detection_rate",
    "LPIPS_BACKBONE_SHA256", "LPIPS_ENV_VAR", "LPIPS_MIN_SIDE", "PSNR_CAP_DB", "compute_lpips", "load_lpips",
    "lpips_backbone_path", "psnr", "ssim",
    "motion_magnitude", "temporal_consistency",
    "I3D", "I3D_CACHE_DIR", "I3D_CACHE_FILES", "I3D_ENV_VAR", "I3D_MIN_FRAMES", "I3D_RESOLUTION",
    "I3D_STATE_DICT_SHA256", "I3D_STATE_DICT_URL", "I3D_TORCHSCRIPT_SHA256", "I3D_TORCHSCRIPT_URL", "I3D_WEIGHTS_URL",
    "STATE_DICT_OTHER", "STATE_DICT_REFERENCE", "TORCHSCRIPT_OTHER", "TORCHSCRIPT_REFERENCE",
    "InceptionModule", "MaxPool3dSame", "Unit3D", "VideoFeatureExtractor", "i3d_features", "i3d_weights_path",
    "load_i3d", "weights_status",
]
