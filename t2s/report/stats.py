"""Statistics over seeds: means with Student-t intervals, paired and Welch differences, Holm's adjustment.

Rules (README, "Statistics"):
* Variants that share a training seed share its initial weights, data order and noise draws, so a difference
  between two variants is paired by seed (Student-t interval of the per-seed differences). Welch's unpaired
  interval is used only when fewer than two seeds are shared; `Difference.method` says which was used.
* One value per side (or one shared seed) gives no interval and therefore no verdict.
* No spread at all (every seed gives the same value or the same difference) gives no interval either: the t
  interval is undefined there, and equal values say the seeds did not vary what was measured, not that it is certain.
* Holm's step-down adjustment controls the family-wise error over the exploratory metrics of one question.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

import numpy as np
import pandas as pd
from scipy import integrate, optimize, stats

CONFIDENCE = 0.95
ALPHA = 1 - CONFIDENCE


@dataclass(frozen=True)
class Estimate:
    """A mean over seeds with its Student-t confidence interval (none for fewer than two seeds or no spread)."""

    mean: float
    low: float
    high: float
    n: int

    @property
    def spread(self) -> bool:
        """False when two or more values are all equal (the interval would have zero width)."""
        return not (self.n >= 2 and self.low == self.high == self.mean)

    @property
    def has_interval(self) -> bool:
        return self.n >= 2 and self.spread and math.isfinite(self.low) and math.isfinite(self.high)

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2 if self.has_interval else math.nan


def _constant(x: np.ndarray, *scales: np.ndarray) -> bool:
    """All values equal up to float rounding (relative to the size of the numbers they came from): a spread of
    1e-17 between per-seed differences of losses is arithmetic, not variation between seeds."""
    scale = max([float(np.max(np.abs(v))) for v in (x, *scales) if len(v)] + [np.finfo(float).tiny])
    return float(np.ptp(x)) <= 1e-12 * scale


def finite_values(values) -> np.ndarray:
    array = pd.to_numeric(pd.Series(list(values), dtype=object), errors="coerce").to_numpy(dtype=float)
    return array[np.isfinite(array)]


def mean_ci(values, confidence: float = CONFIDENCE) -> Estimate:
    """Mean and Student-t interval over the non-missing values; n=1 gives the mean and no interval; equal values
    give low == high == mean, which `Estimate.spread` reports as no spread (not as an interval)."""
    x = finite_values(values)
    n = len(x)
    if n == 0:
        return Estimate(math.nan, math.nan, math.nan, 0)
    mean = float(x.mean())
    if n == 1:
        return Estimate(mean, math.nan, math.nan, 1)
    if _constant(x):
        return Estimate(mean, mean, mean, n)
    low, high = stats.t.interval(confidence, n - 1, loc=mean, scale=float(stats.sem(x)))
    return Estimate(mean, float(low), float(high), n)


@dataclass(frozen=True)
class Difference:
    """mean(a) − mean(b) with a confidence interval and a two-sided p-value (NaN where there is no interval).

    method: "paired" (per-seed or per-run differences) or "Welch" (two independent groups of seeds).
    spread: False when the values vary not at all (every paired difference equal, or both groups constant).
    note: what was left out, e.g. seeds only one side has.
    """

    diff: float
    low: float
    high: float
    n_a: int
    n_b: int
    method: str
    p: float = math.nan
    spread: bool = True
    note: str = ""

    @property
    def has_interval(self) -> bool:
        return self.spread and math.isfinite(self.low) and math.isfinite(self.high)

    @property
    def significant(self) -> Optional[bool]:
        """Whether the interval excludes zero; None when there is no interval (one seed, or no spread)."""
        if not self.has_interval:
            return None
        return not (self.low <= 0 <= self.high)

    @property
    def sizes(self) -> str:
        return f"n={self.n_a}" if self.method == "paired" else f"n={self.n_a} vs {self.n_b}"


def _nan_difference(diff: float, n_a: int, n_b: int, method: str, spread: bool = True, note: str = "") -> Difference:
    return Difference(diff, math.nan, math.nan, n_a, n_b, method, math.nan, spread, note)


def welch_difference(a, b, confidence: float = CONFIDENCE, note: str = "") -> Difference:
    """Difference of means a − b with Welch's t interval (unequal variances); needs two values on each side."""
    x, y = finite_values(a), finite_values(b)
    if len(x) == 0 or len(y) == 0:
        return _nan_difference(math.nan, len(x), len(y), "Welch", note=note)
    diff = float(x.mean() - y.mean())
    if len(x) < 2 or len(y) < 2:
        return _nan_difference(diff, len(x), len(y), "Welch", note=note)
    if _constant(x) and _constant(y):
        return _nan_difference(diff, len(x), len(y), "Welch", spread=False, note=note)
    test = stats.ttest_ind(x, y, equal_var=False)
    interval = test.confidence_interval(confidence)
    return Difference(diff, float(interval.low), float(interval.high), len(x), len(y), "Welch", float(test.pvalue),
                      True, note)


def paired_difference(a, b, confidence: float = CONFIDENCE, note: str = "") -> Difference:
    """Mean of the per-pair differences a_i − b_i (pairs with a missing side are dropped), Student-t interval."""
    pairs = pd.DataFrame({"a": pd.to_numeric(pd.Series(list(a), dtype=object), errors="coerce"),
                          "b": pd.to_numeric(pd.Series(list(b), dtype=object), errors="coerce")}).dropna()
    a_values, b_values = pairs["a"].to_numpy(dtype=float), pairs["b"].to_numpy(dtype=float)
    d = a_values - b_values
    n = len(d)
    if n == 0:
        return _nan_difference(math.nan, 0, 0, "paired", note=note)
    if n == 1:
        return _nan_difference(float(d[0]), 1, 1, "paired", note=note)
    if _constant(d, a_values, b_values):
        return _nan_difference(float(d.mean()), n, n, "paired", spread=False, note=note)
    test = stats.ttest_1samp(d, 0.0)
    interval = test.confidence_interval(confidence)
    return Difference(float(d.mean()), float(interval.low), float(interval.high), n, n, "paired", float(test.pvalue),
                      True, note)


def seed_difference(a: Mapping[int, float], b: Mapping[int, float], confidence: float = CONFIDENCE) -> Difference:
    """a − b for two variants given as {seed: value}: paired over the seeds both have (at least two); Welch over
    all values when fewer than two seeds are shared. The note names the seeds left out of a paired comparison."""
    a = {int(k): float(v) for k, v in a.items() if v is not None and np.isfinite(v)}
    b = {int(k): float(v) for k, v in b.items() if v is not None and np.isfinite(v)}
    shared = sorted(set(a) & set(b))
    if len(shared) >= 2 or (len(shared) == 1 and (len(a) < 2 or len(b) < 2)):
        alone = sorted(set(a) ^ set(b))
        note = f"unpaired seed{'s' if len(alone) > 1 else ''} {', '.join(map(str, alone))} left out" if alone else ""
        return paired_difference([a[s] for s in shared], [b[s] for s in shared], confidence, note)
    note = "no shared seeds: unpaired" if a and b and not shared else ("fewer than two shared seeds: unpaired"
                                                                        if a and b else "")
    return welch_difference(list(a.values()), list(b.values()), confidence, note)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the input order; NaN stays NaN and does not count in the family."""
    p = np.asarray(pvalues, dtype=float)
    adjusted = np.full(len(p), np.nan)
    index = np.flatnonzero(np.isfinite(p))
    m = len(index)
    running = 0.0
    for rank, i in enumerate(index[np.argsort(p[index], kind="stable")]):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
    return adjusted.tolist()


POWER = 0.8


def detectable_difference(d: Difference, power: float = POWER, alpha: float = ALPHA,
                          confidence: float = CONFIDENCE) -> float:
    """The smallest true difference the same test (t, two-sided, `alpha`) would detect with probability `power`, given
    this comparison's standard error and degrees of freedom: solves P(|T| > t_crit) = power for T ~ noncentral t(df,
    delta / se). The standard error is read from the interval (half-width / t quantile); df = n - 1 for a paired
    comparison, Welch-Satterthwaite's lower bound min(n_a, n_b) - 1 for an unpaired one. NaN without an interval."""
    if not d.has_interval:
        return math.nan
    df = d.n_a - 1 if d.method == "paired" else min(d.n_a, d.n_b) - 1
    if df < 1:
        return math.nan
    se = (d.high - d.low) / 2 / stats.t.ppf(0.5 + confidence / 2, df)
    crit = stats.t.ppf(1 - alpha / 2, df)

    def shortfall(delta: float) -> float:
        # T = (Z + nc) / sqrt(V / df), V ~ chi2(df): P(|T| > crit) = E_V[Φ(nc - crit s) + Φ(-nc - crit s)], s = sqrt(V /
        # df); integrated over V (scipy's nct loses precision at df = 1, the two-seed case)
        nc = delta / se

        def density(v: float) -> float:
            s = math.sqrt(v / df)
            return (stats.norm.cdf(nc - crit * s) + stats.norm.cdf(-nc - crit * s)) * stats.chi2.pdf(v, df)

        return integrate.quad(density, 0, np.inf, limit=200)[0] - power

    high = se * (crit + 10)
    while shortfall(high) < 0:
        high *= 2
    return float(optimize.brentq(shortfall, 0.0, high))


def format_estimate(estimate: Estimate, digits: int = 4) -> str:
    if estimate.n == 0:
        return "—"
    if estimate.n == 1:
        return f"{estimate.mean:.{digits}g} (n=1, no interval)"
    if not estimate.spread:
        return f"{estimate.mean:.{digits}g} (no spread over {estimate.n} seeds)"
    return f"{estimate.mean:.{digits}g} ± {estimate.half_width:.2g}"


def describe_difference(d: Difference, digits: int = 4) -> str:
    """'+0.012, 95% CI [+0.004, +0.020] (paired, n=3)', '+0.0013 (one seed: no interval)',
    '+0.05 in every seed (no spread over 2 seeds: no interval)'. No verdict words."""
    if not math.isfinite(d.diff):
        return "—"
    note = f"; {d.note}" if d.note else ""
    if not d.spread:
        return f"{d.diff:+.{digits}g} in every seed (no spread over {d.n_a} seeds: no interval{note})"
    if not d.has_interval:
        return f"{d.diff:+.{digits}g} ({d.method}, {d.sizes}: one seed gives no interval{note})"
    return (f"{d.diff:+.{digits}g}, {CONFIDENCE:.0%} CI [{d.low:+.{digits}g}, {d.high:+.{digits}g}] "
            f"({d.method}, {d.sizes}{note})")


def format_difference(d: Difference, digits: int = 4, verdict: bool = True) -> str:
    """describe_difference, plus whether the interval excludes zero when `verdict`."""
    text = describe_difference(d, digits)
    if verdict and d.has_interval:
        text += "; interval excludes zero" if d.significant else "; interval spans zero"
    return text
