"""Calibration of multi-label probabilities: reliability bins, expected calibration error, temperature scaling.

Every (image, class) pair is one binary prediction: probability ``p = sigmoid(logit / T)`` that the label is present,
outcome ``y`` in {0, 1}. Unknown labels (``ignore``) are left out.

* **Reliability bins**: ``bins`` equal-width bins over [0, 1]; bin k holds ``k/bins <= p < (k+1)/bins`` (the last bin
  also holds ``p = 1``). Per bin: the count, the mean probability (confidence) and the fraction of positives.
* **ECE** (expected calibration error) = ``sum_k n_k / n * |positives_k - confidence_k|``, on the pooled pairs
  (overall) or on one class's column (per class); x100 like every other metric in the report.
* **Temperature scaling** divides the logits by ``T > 0`` (one for all classes, or one per class) chosen to minimise
  the binary cross-entropy (NLL) on the validation split. ``T > 1`` softens over-confident scores. The NLL is convex
  in ``1 / T`` (a one-feature logistic regression without bias), so a golden-section search over ``log T`` finds the
  minimum. Dividing by a positive T keeps each class's ranking, so AP and predictions at 0.5 do not change; a
  per-class T can change the order of classes within an image (top-k metrics).
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np

__all__ = [
    "TemperatureMode",
    "apply_temperature",
    "expected_calibration_error",
    "fit_temperature",
    "mean_nll",
    "per_class_ece",
    "reliability_bins",
]

TemperatureMode = Literal["none", "global", "per-class"]

# Search range of T: wide enough for any sane model, narrow enough that a separable class cannot run to infinity.
_LOG_T_RANGE = (math.log(0.05), math.log(100.0))
_GOLDEN = (math.sqrt(5) - 1) / 2


def _keep(targets: np.ndarray, ignore: Any) -> np.ndarray:
    if ignore is None:
        return np.ones(targets.shape, dtype=bool)
    ig = np.asarray(ignore, dtype=bool)
    if ig.shape != targets.shape:
        raise ValueError(f"ignore must have the shape of the targets {targets.shape}, got {ig.shape}")
    return ~ig


def reliability_bins(probs: Any, targets: Any, *, ignore: Any = None, bins: int = 15) -> dict[str, np.ndarray]:
    """Reliability-diagram data of pooled (or 1-D) predictions.

    Args:
        probs: Probabilities [N, C] or [N].
        targets: Labels of the same shape; positive when > 0.5.
        ignore: Optional bool mask of the same shape; True entries are left out.
        bins: Number of equal-width bins over [0, 1].

    Returns:
        ``{"count": [bins] int, "confidence": [bins], "positive_rate": [bins]}`` (NaN in empty bins) and
        ``"edges"`` [bins + 1].
    """
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(targets, dtype=np.float64) > 0.5
    if p.shape != y.shape:
        raise ValueError(f"probs and targets must have the same shape, got {p.shape} and {y.shape}")
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    keep = _keep(y, ignore)
    p, y = p[keep], y[keep]
    if p.size and (not np.isfinite(p).all() or p.min() < 0 or p.max() > 1):
        raise ValueError("probs must be finite probabilities in [0, 1]")
    idx = np.minimum((p * bins).astype(np.int64), bins - 1)  # p = 1 goes into the last bin
    count = np.bincount(idx, minlength=bins)
    sum_p = np.bincount(idx, weights=p, minlength=bins)
    sum_y = np.bincount(idx, weights=y.astype(np.float64), minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        conf = np.where(count > 0, sum_p / count, np.nan)
        rate = np.where(count > 0, sum_y / count, np.nan)
    return {"count": count, "confidence": conf, "positive_rate": rate, "edges": np.linspace(0.0, 1.0, bins + 1)}


def expected_calibration_error(probs: Any, targets: Any, *, ignore: Any = None, bins: int = 15) -> float:
    """ECE x100 of the pooled predictions (module docstring); NaN when nothing is kept."""
    r = reliability_bins(probs, targets, ignore=ignore, bins=bins)
    n = r["count"].sum()
    if n == 0:
        return float("nan")
    filled = r["count"] > 0
    gap = np.abs(r["positive_rate"][filled] - r["confidence"][filled])
    return float(100 * np.sum(r["count"][filled] * gap) / n)


def per_class_ece(probs: Any, targets: Any, *, ignore: Any = None, bins: int = 15) -> np.ndarray:
    """ECE x100 of each class's column [C] (NaN for a class with every entry ignored)."""
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(targets, dtype=np.float64)
    if p.ndim != 2:
        raise ValueError(f"per_class_ece expects [N, C] probabilities, got shape {p.shape}")
    keep = _keep(y, ignore)
    return np.array(
        [expected_calibration_error(p[:, c], y[:, c], ignore=~keep[:, c], bins=bins) for c in range(p.shape[1])]
    )


def apply_temperature(logits: Any, temperature: float | np.ndarray | None) -> np.ndarray:
    """``logits / T`` as float64 [N, C]; T is a scalar, [C], or None (no scaling)."""
    z = np.asarray(logits, dtype=np.float64)
    if temperature is None:
        return z
    t = np.asarray(temperature, dtype=np.float64)
    if t.ndim not in (0, 1) or (t.ndim == 1 and t.shape[0] != z.shape[-1]):
        raise ValueError(f"temperature must be one value or one per class ({z.shape[-1]}), got shape {t.shape}")
    if not (np.isfinite(t).all() and (t > 0).all()):
        raise ValueError(f"temperature must be finite and > 0, got {t}")
    return z / t


def _bce_sums(z: np.ndarray, y: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Per-column sum of the binary cross-entropy of logits z [N, C] (stable form) over kept entries."""
    loss = np.logaddexp(0.0, z) - y * z  # -log sigmoid(z) for y=1, -log(1 - sigmoid(z)) for y=0
    return np.where(keep, loss, 0.0).sum(axis=0)


def mean_nll(logits: Any, targets: Any, *, ignore: Any = None, temperature: float | np.ndarray | None = None) -> float:
    """Mean binary cross-entropy (nats) of ``sigmoid(logits / T)`` over the kept (image, class) pairs."""
    z = apply_temperature(logits, temperature)
    y = (np.asarray(targets, dtype=np.float64) > 0.5).astype(np.float64)
    keep = _keep(y, ignore)
    n = keep.sum()
    return float(_bce_sums(z, y, keep).sum() / n) if n else float("nan")


def _golden_log_t(z: np.ndarray, y: np.ndarray, keep: np.ndarray, *, pooled: bool, iters: int = 60) -> np.ndarray:
    """Golden-section search of log T minimising the NLL, per column or pooled; returns T [C] or [1]."""
    cols = 1 if pooled else z.shape[1]
    lo = np.full(cols, _LOG_T_RANGE[0])
    hi = np.full(cols, _LOG_T_RANGE[1])

    def nll(log_t: np.ndarray) -> np.ndarray:
        sums = _bce_sums(z / np.exp(log_t), y, keep)
        return np.array([sums.sum()]) if pooled else sums

    for _ in range(iters):  # the bracket shrinks by 0.618 per step: 60 steps reach ~1e-12 of log T
        a = hi - _GOLDEN * (hi - lo)
        b = lo + _GOLDEN * (hi - lo)
        left = nll(a) < nll(b)  # a unimodal function: the minimum lies in [lo, b], else in [a, hi]
        hi = np.where(left, b, hi)
        lo = np.where(left, lo, a)
    return np.exp((lo + hi) / 2)


def fit_temperature(
    logits: Any, targets: Any, *, ignore: Any = None, mode: TemperatureMode = "global"
) -> float | np.ndarray | None:
    """Fit the temperature that minimises the validation NLL.

    Args:
        logits: Validation logits [N, C].
        targets: Labels [N, C]; positive when > 0.5.
        ignore: Optional bool mask [N, C]; True entries are left out.
        mode: ``"global"`` (one T), ``"per-class"`` (one T per class; a class whose kept entries are all positive or
            all negative has no finite optimum and gets the global T) or ``"none"``.

    Returns:
        A float (global), an array [C] (per class) or None (``"none"``).
    """
    if mode == "none":
        return None
    if mode not in ("global", "per-class"):
        raise ValueError(f"temperature mode must be 'none', 'global' or 'per-class', got {mode!r}")
    z = np.asarray(logits, dtype=np.float64)
    y = (np.asarray(targets, dtype=np.float64) > 0.5).astype(np.float64)
    if z.ndim != 2 or z.shape != y.shape:
        raise ValueError(f"logits and targets must both be [N, C], got {z.shape} and {y.shape}")
    if not np.isfinite(z).all():
        raise ValueError("logits contain NaN or infinite values")
    keep = _keep(y, ignore)
    if not keep.any():
        raise ValueError("no known label to fit a temperature on")
    global_t = float(_golden_log_t(z, y, keep, pooled=True)[0])
    if mode == "global":
        return global_t
    per_class = _golden_log_t(z, y, keep, pooled=False)
    pos = (y * keep).sum(0)
    neg = ((1 - y) * keep).sum(0)
    return np.where((pos > 0) & (neg > 0), per_class, global_t)
