"""Distances between two sets of features: the Fréchet distance (and FVD, on I3D features) and KVD, the unbiased
polynomial-kernel MMD^2 on the same features.

Rules: statistics in float64; an estimate that cannot be computed raises ``ValueError`` (the evaluation turns it
into a null with the reason), never a stand-in number. Imports `video_features` (for `compute_fvd`) only.
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from scipy import linalg

from t2s.eval.metrics.video_features import i3d_features

# ---------------------------------------------------------------------------------------------------------
# Fréchet distance
# ---------------------------------------------------------------------------------------------------------


def _as_features(x) -> np.ndarray:
    """Features (N, ...) as a float64 array (N, D), from a tensor (on any device) or an array."""
    x = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    return x.astype(np.float64).reshape(len(x), -1)


def feature_statistics(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``(D,)`` and unbiased covariance ``(D, D)`` (float64) of ``features`` shaped ``(N, D)``, N >= 2."""
    x = _as_features(features)
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
# FVD: the Fréchet distance of I3D features
# ---------------------------------------------------------------------------------------------------------


def compute_fvd(fake: torch.Tensor, real: torch.Tensor, model, batch_size: int = 8) -> float:
    """Fréchet Video Distance between two sets of clips (B, 3, F, H, W) in [-1, 1], B >= 2 each.

    Features are I3D Kinetics-400 logits (``i3d_features``), statistics are fitted per set and compared with
    ``frechet_distance``. Caution: the estimator is biased upwards for small sets and its covariance is
    rank-deficient whenever a set has fewer clips than 401; values are comparable only between evaluations
    with the same number of clips (StyleGAN-V reports FVD over 2048 clips). The evaluation marks an FVD judged or
    descriptive by its n (``t2s.eval.metrics.validity``); the function itself computes whatever it is given.
    """
    mu_f, sigma_f = feature_statistics(i3d_features(fake, model, batch_size))
    mu_r, sigma_r = feature_statistics(i3d_features(real, model, batch_size))
    return frechet_distance(mu_f, sigma_f, mu_r, sigma_r)


# ---------------------------------------------------------------------------------------------------------
# KVD: kernel video distance (unbiased polynomial-kernel MMD^2 on I3D features)
# ---------------------------------------------------------------------------------------------------------
# Unterthiner et al. (2018) define KVD next to FVD: the kernel distance of Bińkowski et al. (2018, "Demystifying MMD
# GANs", where it is KID) on the same I3D features. Unlike the Fréchet distance it has an unbiased estimator, so its
# expectation does not depend on the number of clips and it can be read at small n (with its interval).
KVD_SUBSET_SIZE = 1000  # the largest subset, as torchmetrics' KernelInceptionDistance and clean-fid's KID use
KVD_SUBSETS = 100  # subsets drawn for the interval (torchmetrics and clean-fid draw 100)
KVD_SEED = 0  # the subsets are drawn from a generator with this seed: the interval is reproducible


def polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """k(x, y) = (x.y / d + 1)^3 for rows of x (n, d) and y (m, d) -> (n, m), the KID/KVD kernel."""
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def _mmd2_unbiased(kxx: np.ndarray, kyy: np.ndarray, kxy: np.ndarray) -> float:
    """Unbiased MMD^2 from kernel matrices (Gretton et al. 2012, eq. 3): the means of k over pairs i != j within each
    set, minus twice the mean over all cross pairs."""
    n, m = len(kxx), len(kyy)
    within_x = (kxx.sum() - np.trace(kxx)) / (n * (n - 1))
    within_y = (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
    return float(within_x + within_y - 2.0 * kxy.mean())


def kernel_distance(x, y) -> float:
    """KVD point estimate: unbiased polynomial-kernel MMD^2 between feature sets x (n, d) and y (m, d), n, m >= 2.
    Its expectation is 0 when x and y come from one distribution (it can then be slightly negative)."""
    x, y = _as_features(x), _as_features(y)
    if len(x) < 2 or len(y) < 2:
        raise ValueError(f"the unbiased kernel distance needs at least 2 samples per set, got {len(x)} and {len(y)}")
    return _mmd2_unbiased(polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y))


def kernel_distance_std(x, y, subset_size: int = KVD_SUBSET_SIZE, subsets: int = KVD_SUBSETS,
                        seed: int = KVD_SEED) -> float:
    """Standard error of `kernel_distance(x, y)` from subsets (delete-d jackknife), both sets of n >= 4 features.

    Like torchmetrics' and clean-fid's KID, `subsets` random subsets of r clips of each set are drawn without
    replacement (from a generator seeded `seed`) and the unbiased MMD^2 is computed on each. KID's r is
    min(n, subset_size); at r = n every subset is the whole set and the spread is 0 -- a zero-width interval that
    says nothing -- so here r = min(n // 2, subset_size). The spread s of the subset estimates is turned into the
    standard error of the full-sample estimate by the delete-d jackknife (Shao & Wu 1989; d = n - r clips left out):
    SE = s * sqrt(r / d); at r = n / 2 that is s itself (half-sampling). For sets from one distribution (a degenerate
    U-statistic) it is conservative.
    """
    x, y = _as_features(x), _as_features(y)
    n = min(len(x), len(y))
    if n < 4:
        raise ValueError(f"the KVD interval needs at least 4 samples per set (subsets of 2), got {len(x)} and {len(y)}")
    r = min(n // 2, subset_size)
    kxx, kyy, kxy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
    rng = np.random.default_rng(seed)
    estimates = []
    for _ in range(subsets):
        i = rng.choice(len(x), r, replace=False)
        j = rng.choice(len(y), r, replace=False)
        estimates.append(_mmd2_unbiased(kxx[np.ix_(i, i)], kyy[np.ix_(j, j)], kxy[np.ix_(i, j)]))
    return float(np.std(estimates, ddof=1) * math.sqrt(r / (n - r)))
