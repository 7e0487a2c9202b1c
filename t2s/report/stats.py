"""Statistics over seeds: means with Student-t intervals, paired and Welch differences, Holm's adjustment."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
import pandas as pd
from scipy import stats

CONFIDENCE = 0.95

@dataclass(frozen=True)
class Estimate:
    """A mean over seeds with its Student-t confidence interval (none for fewer than two seeds)."""

    mean: float
    low: float
    high: float
    n: int

    @property
    def has_interval(self) -> bool:
        return self.n >= 2 and math.isfinite(self.low) and math.isfinite(self.high)

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2 if self.has_interval else math.nan


def _finite(values) -> np.ndarray:
    array = pd.to_numeric(pd.Series(list(values), dtype=object), errors="coerce").to_numpy(dtype=float)
    return array[np.isfinite(array)]


def mean_ci(values, confidence: float = CONFIDENCE) -> Estimate:
    """Mean and Student-t interval over the non-missing values; n=1 gives the mean and no interval."""
    x = _finite(values)
    n = len(x)
    if n == 0:
        return Estimate(math.nan, math.nan, math.nan, 0)
    mean = float(x.mean())
    if n == 1:
        return Estimate(mean, math.nan, math.nan, 1)
    sem = float(stats.sem(x))
    if sem == 0:
        return Estimate(mean, mean, mean, n)
    low, high = stats.t.interval(confidence, n - 1, loc=mean, scale=sem)
    return Estimate(mean, float(low), float(high), n)


@dataclass(frozen=True)
class Difference:
    """mean(a) - mean(b) with a confidence interval; `significant` is None when there is no interval."""

    diff: float
    low: float
    high: float
    n_a: int
    n_b: int
    method: str  # "Welch" (two groups of seeds) or "paired" (two weight sets within the same runs)

    @property
    def has_interval(self) -> bool:
        return math.isfinite(self.low) and math.isfinite(self.high)

    @property
    def significant(self) -> Optional[bool]:
        if not self.has_interval:
            return None
        return not (self.low <= 0 <= self.high)


def welch_difference(a, b, confidence: float = CONFIDENCE) -> Difference:
    """Difference of means a - b with Welch's t interval (unequal variances); needs two values on each side."""
    x, y = _finite(a), _finite(b)
    if len(x) == 0 or len(y) == 0:
        return Difference(math.nan, math.nan, math.nan, len(x), len(y), "Welch")
    diff = float(x.mean() - y.mean())
    if len(x) < 2 or len(y) < 2:
        return Difference(diff, math.nan, math.nan, len(x), len(y), "Welch")
    if x.var(ddof=1) == 0 and y.var(ddof=1) == 0:  # no spread at all: the interval is the point
        return Difference(diff, diff, diff, len(x), len(y), "Welch")
    interval = stats.ttest_ind(x, y, equal_var=False).confidence_interval(confidence)
    return Difference(diff, float(interval.low), float(interval.high), len(x), len(y), "Welch")


def paired_difference(a, b, confidence: float = CONFIDENCE) -> Difference:
    """Mean of the per-run differences a_i - b_i (pairs with a missing side are dropped), Student-t interval."""
    pairs = pd.DataFrame({"a": pd.to_numeric(pd.Series(list(a)), errors="coerce"),
                          "b": pd.to_numeric(pd.Series(list(b)), errors="coerce")}).dropna()
    estimate = mean_ci(pairs["a"] - pairs["b"], confidence)
    return Difference(estimate.mean, estimate.low, estimate.high, estimate.n, estimate.n, "paired")


def format_estimate(estimate: Estimate, digits: int = 4) -> str:
    if estimate.n == 0:
        return "—"
    if not estimate.has_interval:
        return f"{estimate.mean:.{digits}g} (n=1, no interval)"
    return f"{estimate.mean:.{digits}g} ± {estimate.half_width:.2g}"


def format_difference(d: Difference, digits: int = 4, verdict: bool = True) -> str:
    """'+0.012, 95% CI [+0.004, +0.020] (Welch, n=3 vs 3; significant)'; a single seed is said to give no interval."""
    if not math.isfinite(d.diff):
        return "—"
    sizes = f"n={d.n_a}" if d.method == "paired" else f"n={d.n_a} vs {d.n_b}"
    if not d.has_interval:
        return f"{d.diff:+.{digits}g} ({sizes}: a single seed gives no interval)"
    called = ("; significant" if d.significant else "; spans zero: not significant") if verdict else ""
    return f"{d.diff:+.{digits}g}, 95% CI [{d.low:+.{digits}g}, {d.high:+.{digits}g}] ({d.method}, {sizes}{called})"
