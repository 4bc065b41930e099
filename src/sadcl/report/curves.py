"""Precision-recall curves for the report: per class and micro-averaged, decimated to a few hundred points.

A curve is the precision and recall of ``score > t`` for every distinct score t, highest first (the ranking of
:func:`sadcl.metrics.average_precision` with ``interpolation="none"``; the report's AP itself comes from
:mod:`sadcl.metrics`). The operating point is the precision and recall at the threshold in use.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["decimate", "micro_pr_curve", "operating_point", "pr_curve"]


def pr_curve(scores: Any, positives: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall and threshold at each distinct score, from the highest score down.

    Args:
        scores: Scores [M].
        positives: Bool labels [M].

    Returns:
        ``(precision [K], recall [K], threshold [K])``; point k predicts every sample with a score >= threshold[k].
        Empty arrays when there is no positive.
    """
    s = np.asarray(scores, dtype=np.float64)
    pos = np.asarray(positives, dtype=bool)
    if s.shape != pos.shape or s.ndim != 1:
        raise ValueError(f"scores and positives must both be [M], got {s.shape} and {pos.shape}")
    npos = int(pos.sum())
    if npos == 0:
        return np.empty(0), np.empty(0), np.empty(0)
    order = np.argsort(-s, kind="stable")
    s_sorted = s[order]
    tp = np.cumsum(pos[order])
    last = np.r_[np.nonzero(np.diff(s_sorted))[0], s_sorted.size - 1]  # one point per run of tied scores
    return tp[last] / (last + 1.0), tp[last] / npos, s_sorted[last]


def decimate(precision: np.ndarray, recall: np.ndarray, *, max_points: int = 120) -> tuple[np.ndarray, np.ndarray]:
    """At most ``max_points`` points of a curve, evenly spaced in recall (first and last points always kept).

    A plotted curve needs no more points than its pixels; 5 000 images would otherwise put 5 000 points per class
    into the page.
    """
    if precision.size <= max_points:
        return precision, recall
    # Index of the first point at or past each recall step; unique keeps them in order.
    steps = np.linspace(recall[0], recall[-1], max_points)
    idx = np.unique(np.r_[0, np.searchsorted(recall, steps), precision.size - 1].clip(0, precision.size - 1))
    return precision[idx], recall[idx]


def micro_pr_curve(scores: Any, targets: Any, keep: Any) -> tuple[np.ndarray, np.ndarray]:
    """The micro-averaged curve: every kept (image, class) pair pooled; returns ``(precision, recall)``."""
    s = np.asarray(scores, dtype=np.float64)
    k = np.asarray(keep, dtype=bool)
    p, r, _ = pr_curve(s[k], (np.asarray(targets) > 0.5)[k])
    return p, r


def operating_point(scores: Any, positives: Any, threshold: float) -> tuple[float, float]:
    """``(precision, recall)`` of ``score > threshold`` (precision 0 when nothing is predicted)."""
    s = np.asarray(scores, dtype=np.float64)
    pos = np.asarray(positives, dtype=bool)
    pred = s > threshold
    tp = float((pred & pos).sum())
    return (tp / pred.sum() if pred.any() else 0.0), (tp / pos.sum() if pos.any() else 0.0)
