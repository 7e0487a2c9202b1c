"""When is an FVD a judgement? The simulation behind `FVD_JUDGED_MIN_CLIPS` (docs/evaluation.md, "FVD").

The Fréchet distance estimated from n samples per set is biased upwards, and the bias grows with the spread of the
sets: a generator that covers less of the data (a collapsed one) has the smaller bias, so at small n it can score as
well as a faithful one or better. `ranking_rate(n)` measures how often FVD ranks them right on 400-d Gaussians (the
I3D logits' dimension):

* real clips and a faithful generator: N(0, diag(λ)), λ_k ∝ 1 / k (a decaying spectrum, as learnt features have),
  scaled so that the total variance is the dimension;
* a collapsed generator: the same mean, every standard deviation at 80% of the data's (a fifth less spread, as a
  generator that misses the rarer variations has): a true Fréchet distance of (1 - 0.8)^2 = 4% of the total variance
  from the real clips, where the faithful one's is 0;
* each draw samples n real, n faithful and n collapsed vectors afresh; the draw ranks them right when the collapsed
  set's FVD to the real set is the larger.

`FVD_JUDGED_MIN_CLIPS` is the least n on `GRID` at which at least `REQUIRED_RATE` of `DRAWS` draws (seeded
`SEED`) rank them right, and every larger n on the grid does too: `threshold()` reproduces it (tests/test_validity.py
runs it at the neighbouring grid points). KVD needs no such rule: its estimator is unbiased and ranks the two right
from a few clips on, so it is judged at every n with its standard error.

The Fréchet distance here is the same formula as `distances.frechet_distance`, computed through symmetric
eigendecompositions (Tr sqrtm(Σ1 Σ2) = Σ sqrt(eig(Σ1^½ Σ2 Σ1^½))): exact for covariance matrices and ~10x faster than
scipy's sqrtm, which the simulation needs (thousands of 400 × 400 roots). Numpy only; imports nothing from t2s.
"""
from __future__ import annotations

import numpy as np

DIM = 400  # I3D Kinetics-400 logits
COLLAPSE = 0.8  # the collapsed generator's standard deviations, as a fraction of the data's
REQUIRED_RATE = 0.95
DRAWS = 200
SEED = 0
GRID = (401, 512, 640, 768, 896, 1024, 1280, 1536, 1792, 2048)
# The least n on GRID from which FVD ranks the collapsed generator below the faithful one in >= 95% of draws:
# threshold() with the defaults above gives rates 401: 0.31, 512: 0.96, 640 ... 2048: 1.0 (docs/evaluation.md; a milder
# collapse, 90% of the spread, needs more: 512: 0.0, 1024: 0.90, 2048: 1.0 over 50 draws).
FVD_JUDGED_MIN_CLIPS = 512


def spectrum(dim: int = DIM) -> np.ndarray:
    """The data's variances: λ_k ∝ 1 / k, summing to `dim`."""
    lam = 1.0 / np.arange(1, dim + 1)
    return lam * dim / lam.sum()


def _covariance(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mu = x.mean(axis=0)
    centred = x - mu
    return mu, centred.T @ centred / (len(x) - 1)


def _root(sigma: np.ndarray) -> np.ndarray:
    """The symmetric square root of a covariance matrix."""
    w, v = np.linalg.eigh(sigma)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_from_root(mu1: np.ndarray, sigma1: np.ndarray, root1: np.ndarray, mu2: np.ndarray,
                      sigma2: np.ndarray) -> float:
    """The Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2) given root1 = sigma1^½."""
    inner = np.linalg.eigvalsh(root1 @ sigma2 @ root1)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.sqrt(np.clip(inner, 0.0, None)).sum())


def ranking_rate(n: int, draws: int = DRAWS, seed: int = SEED, dim: int = DIM, collapse: float = COLLAPSE) -> float:
    """The fraction of `draws` simulated evaluations with n clips per set in which FVD ranks the collapsed generator
    below (a larger distance than) the faithful one (see the module docstring)."""
    if n < 2:
        raise ValueError(f"n must be at least 2, got {n}")
    rng = np.random.default_rng(seed)
    scale = np.sqrt(spectrum(dim))
    right = 0
    for _ in range(draws):
        real, faithful, collapsed = (rng.standard_normal((n, dim)) * scale for _ in range(3))
        mu_r, sigma_r = _covariance(real)
        root_r = _root(sigma_r)
        d_faithful = frechet_from_root(mu_r, sigma_r, root_r, *_covariance(faithful))
        d_collapsed = frechet_from_root(mu_r, sigma_r, root_r, *_covariance(collapsed * collapse))
        right += d_collapsed > d_faithful
    return right / draws


def threshold(grid=GRID, draws: int = DRAWS, seed: int = SEED, required: float = REQUIRED_RATE) -> tuple[int, dict]:
    """(the least n of `grid` from which on every rate is >= `required`, {n: rate}); n is None if none is."""
    rates = {n: ranking_rate(n, draws, seed) for n in grid}
    passing = [n for n in grid if all(rates[m] >= required for m in grid if m >= n)]
    return (passing[0] if passing else None), rates
