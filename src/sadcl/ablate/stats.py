"""Paired statistics over seeds: mean, std, the two-sided 95 % t interval and the paired t-test p of differences."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = ["interval_text", "mean_std", "paired_stats"]


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (NaN with fewer than two values)."""
    arr = np.asarray(values, dtype=np.float64)
    if not len(arr):
        return math.nan, math.nan
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else math.nan


def paired_stats(deltas: Sequence[float]) -> dict[str, float]:
    """Statistics of per-seed differences (row minus reference, paired by seed).

    Returns:
        ``{"n", "mean", "std", "ci95_low", "ci95_high", "p", "wins"}``: the 95 % interval is Student's t with
        ``n - 1`` degrees of freedom; ``p`` is the two-sided one-sample t-test of mean 0; ``wins`` counts seeds with
        a positive difference. NaN where ``n`` is too small.
    """
    from scipy import stats  # scikit-learn's dependency; imported here so importing sadcl stays light

    d = np.asarray(deltas, dtype=np.float64)
    n = len(d)
    out = {
        "n": n,
        "mean": float(d.mean()) if n else math.nan,
        "std": math.nan,
        "ci95_low": math.nan,
        "ci95_high": math.nan,
        "p": math.nan,
        "wins": int((d > 0).sum()),
    }
    if n > 1:
        sd = float(d.std(ddof=1))
        half = float(stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
        out.update(std=sd, ci95_low=out["mean"] - half, ci95_high=out["mean"] + half)
        out["p"] = float(stats.ttest_1samp(d, 0.0).pvalue) if sd > 0 else (0.0 if out["mean"] != 0 else 1.0)
    return out


def interval_text(st: dict[str, float]) -> str:
    """`` [lo, hi]``: the 95 % interval of :func:`paired_stats` as reports print it (empty with fewer than 2 seeds)."""
    return f" [{st['ci95_low']:+.2f}, {st['ci95_high']:+.2f}]" if st["n"] > 1 else ""
