"""Compare two models on the same images: per-class ΔAP and a paired bootstrap CI of ΔmAP over images.

The bootstrap resamples images with replacement (the same resample for both models, so image difficulty cancels)
and recomputes both mAPs on it. A resample is a count per image, so the AP of a resample is computed from the
class's ranking done once, with the counts as weights: :func:`weighted_ap` equals the official VOC all-point AP of
:mod:`sadcl.metrics` on the resampled set (duplicates of an image are tied, and the AP of a tied run of positives
is that of its last copy). This keeps 1 000 resamples of 5 000 images x 80 classes within seconds. Classes without a
positive in a resample are left out of that resample's mAP (``nan_policy="omit"``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["bootstrap_delta_map", "weighted_ap"]


def weighted_ap(scores: np.ndarray, positives: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """VOC all-point interpolated AP (fraction) of one class under many weightings of its samples.

    Args:
        scores: Scores [M].
        positives: Bool labels [M].
        weights: Non-negative counts [B, M] (one row per resample; 0 = the sample is not drawn).

    Returns:
        AP [B]; NaN where the weighted positives sum to 0.
    """
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    pos = np.asarray(positives, dtype=bool)[order]
    w = np.asarray(weights, dtype=np.float32)[:, order]  # [B, M]; counts are exact in float32
    w_pos = w[:, pos]  # [B, P]
    # Only the points at the positives matter (the envelope's maximum is always reached at one): tp and the number
    # of drawn samples ranked at or above each positive.
    tp = np.cumsum(w_pos, axis=1, dtype=np.float64)
    n = np.cumsum(w, axis=1, dtype=np.float64)[:, pos]
    prec = np.divide(tp, n, out=np.zeros_like(tp), where=n > 0)
    # Precision envelope: best precision at this or any later positive (a right-to-left running max).
    env = np.maximum.accumulate(prec[:, ::-1], axis=1)[:, ::-1]
    total = tp[:, -1] if tp.shape[1] else np.zeros(w.shape[0])
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, (w_pos * env).sum(axis=1) / total, np.nan)


def _bootstrap_map(scores: np.ndarray, pos: np.ndarray, keep: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """mAP x100 [B] of every resample (classes without positives omitted)."""
    aps = np.full((weights.shape[0], scores.shape[1]), np.nan)
    for c in range(scores.shape[1]):
        kc = keep[:, c]
        if pos[kc, c].any():
            aps[:, c] = weighted_ap(scores[kc, c], pos[kc, c], weights[:, kc])
    with np.errstate(invalid="ignore"):
        valid = ~np.isnan(aps)
        return 100 * np.where(valid, aps, 0).sum(1) / np.maximum(valid.sum(1), 1)


def bootstrap_delta_map(
    scores_a: Any,
    scores_b: Any,
    targets: Any,
    *,
    ignore: Any = None,
    resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    chunk: int = 100,
) -> dict[str, float]:
    """Paired bootstrap of ``mAP(b) - mAP(a)`` over images.

    Args:
        scores_a: Scores of model a [N, C] (the reference, e.g. the baseline).
        scores_b: Scores of model b [N, C] on the same images.
        targets: Labels [N, C].
        ignore: Optional bool mask [N, C].
        resamples: Number of bootstrap resamples.
        confidence: Two-sided level of the percentile interval.
        seed: Seed of the resampling.
        chunk: Resamples processed at once (memory: chunk x N floats per class).

    Returns:
        ``{"low", "high"}`` (percentile interval of ΔmAP x100), ``"mean"`` (mean over resamples) and
        ``"p_not_better"`` (fraction of resamples where b does not beat a).
    """
    a = np.asarray(scores_a, dtype=np.float64)
    b = np.asarray(scores_b, dtype=np.float64)
    t = np.asarray(targets, dtype=np.float64)
    if a.shape != b.shape or a.shape != t.shape or a.ndim != 2:
        raise ValueError(f"both score arrays and the targets must be [N, C], got {a.shape}, {b.shape}, {t.shape}")
    if resamples < 1 or not 0 < confidence < 1:
        raise ValueError(f"need resamples >= 1 and 0 < confidence < 1, got {resamples} and {confidence}")
    keep = np.ones(t.shape, dtype=bool) if ignore is None else ~np.asarray(ignore, dtype=bool)
    pos = t > 0.5
    rng = np.random.default_rng(seed)
    n = a.shape[0]
    deltas = []
    for start in range(0, resamples, chunk):
        m = min(chunk, resamples - start)
        draws = rng.integers(0, n, size=(m, n))
        flat = (np.arange(m)[:, None] * n + draws).ravel()
        weights = np.bincount(flat, minlength=m * n).reshape(m, n).astype(np.float32)  # draws per image
        deltas.append(_bootstrap_map(b, pos, keep, weights) - _bootstrap_map(a, pos, keep, weights))
    d = np.concatenate(deltas)
    alpha = (1 - confidence) / 2
    return {
        "low": float(np.quantile(d, alpha)),
        "high": float(np.quantile(d, 1 - alpha)),
        "mean": float(d.mean()),
        "p_not_better": float((d <= 0).mean()),
        "resamples": resamples,
        "confidence": confidence,
    }
