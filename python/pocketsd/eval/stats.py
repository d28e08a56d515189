"""Mean and 95 % interval of a metric.

- Per-image metrics (PSNR, SSIM, LPIPS, CLIP score, ImageReward): Student's t-interval of the mean,
  mean ± t(0.975, n−1)·s/√n. The images are independent draws (one prompt and seed each), so the interval covers
  the mean over the prompt distribution the set samples; it says nothing about a different prompt set.
- Shares of 0/1 outcomes (adherence: colour, shape and background all read back right): the Wilson score
  interval, which stays inside [0, 1] and is not degenerate at 0 % or 100 % as the t-interval is.
- Set-level metrics (FID): a percentile bootstrap over images (resample both sets with replacement, recompute,
  take the 2.5 and 97.5 percentiles), because FID is not a mean of per-image terms. FID is also biased upward at
  small n, so its interval is about resampling noise at this n, not about the infinite-sample FID.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

T_INTERVAL = "t-interval of the mean"
WILSON = "Wilson score interval of a proportion"


def bootstrap_method(resamples: int) -> str:
    return f"percentile bootstrap over images, {resamples} resamples"


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float | None
    high: float | None
    n: int
    method: str | None
    note: str | None = None


def mean_interval(values: Sequence[float], confidence: float = 0.95) -> Interval:
    """Mean and t-interval. Infinite values (PSNR of identical images) make the mean infinite and leave no
    interval; one value has no spread, so no interval either."""
    from scipy import stats

    x = np.asarray(list(values), dtype=np.float64)
    n = int(x.size)
    if n == 0:
        raise ValueError("no values")
    if np.isnan(x).any():
        raise ValueError("a NaN among the values")
    if np.isinf(x).any():
        finite = int(np.isfinite(x).sum())
        mean = float(np.mean(x)) if not (np.isposinf(x).any() and np.isneginf(x).any()) else math.nan
        return Interval(mean, None, None, n, None, f"{n - finite} of {n} values infinite: no interval")
    mean = float(x.mean())
    if n == 1:
        return Interval(mean, None, None, n, None, "one value: no interval")
    sem = float(x.std(ddof=1)) / math.sqrt(n)
    half = float(stats.t.ppf(0.5 + confidence / 2.0, df=n - 1)) * sem
    return Interval(mean, mean - half, mean + half, n, T_INTERVAL)


def bootstrap_interval(statistic: Callable[[np.ndarray], float], n: int, resamples: int = 200, seed: int = 0,
                       confidence: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap: `statistic(indices)` on `resamples` draws of n indices with replacement."""
    if resamples < 2:
        raise ValueError("a bootstrap needs at least 2 resamples")
    rng = np.random.default_rng(seed)
    values = np.array([statistic(rng.integers(0, n, size=n)) for _ in range(resamples)], dtype=np.float64)
    alpha = (1.0 - confidence) / 2.0
    return float(np.quantile(values, alpha)), float(np.quantile(values, 1.0 - alpha))


def proportion_interval(hits: Sequence[bool | int], confidence: float = 0.95) -> Interval:
    """Share of hits with its Wilson score interval."""
    from scipy import stats

    x = np.asarray(list(hits), dtype=np.float64)
    n = int(x.size)
    if n == 0:
        raise ValueError("no values")
    p = float(x.mean())
    z = float(stats.norm.ppf(0.5 + confidence / 2.0))
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return Interval(p, max(0.0, centre - half), min(1.0, centre + half), n, WILSON)
