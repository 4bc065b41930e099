"""Co-occurrence errors: which labels the model hallucinates or misses because of the labels around them.

With ``Y`` the true labels and ``P`` the predicted labels of the evaluated split (bool [N, C], unknown entries
never counted) and ``T`` the training labels:

* **Training lift** of a pair (i, j): ``P_T(i and j) / (P_T(i) P_T(j))``; > 1 means they co-occur more often than
  chance in training (the dependency the model may have learnt).
* **False-positive pairs** (f, t): images where f is predicted but absent while t is present. ``fp_lift`` =
  ``P(f false positive | t present) / P(f false positive)``: how much more often f is hallucinated next to t than
  overall. Pairs are ranked by it (with at least ``min_count`` such images), the training lift beside it.
* **False-negative pairs** (m, a): images where m is present. ``miss_lift`` =
  ``P(m missed | a absent) / P(m missed | a present)`` (each rate smoothed as ``(k + 0.5) / (n + 1)``): how
  much more often m is missed when a (its usual companion, see the training lift) is not there.
* **Co-occurrence matrices** ``P(j | i)`` (row i: images with i; column j: fraction of them with j), of the training
  labels and of the predictions, for the heat maps.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["conditional_cooccurrence", "false_negative_pairs", "false_positive_pairs", "lift"]


def _masks(targets: Any, ignore: Any) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(targets, dtype=np.float64) > 0.5
    known = np.ones(y.shape, dtype=bool) if ignore is None else ~np.asarray(ignore, dtype=bool)
    if known.shape != y.shape:
        raise ValueError(f"ignore must have the shape of the targets {y.shape}, got {known.shape}")
    return y & known, known


def lift(targets: Any, *, ignore: Any = None) -> np.ndarray:
    """Pairwise lift ``P(i, j) / (P(i) P(j))`` [C, C] of a label matrix [N, C] (NaN where a label never occurs)."""
    y, _ = _masks(targets, ignore)
    f = y.astype(np.float64)
    n = max(len(f), 1)
    joint = f.T @ f / n
    marg = f.mean(0) if len(f) else np.zeros(f.shape[1])
    with np.errstate(invalid="ignore", divide="ignore"):
        out = joint / np.outer(marg, marg)
    out[np.outer(marg, marg) == 0] = np.nan
    return out


def conditional_cooccurrence(labels: Any, *, ignore: Any = None) -> np.ndarray:
    """``P(j | i)`` [C, C]: among images with label i, the fraction that also has j (NaN rows for unseen i)."""
    y, _ = _masks(labels, ignore)
    f = y.astype(np.float64)
    joint = f.T @ f
    count = np.diag(joint).copy()
    with np.errstate(invalid="ignore", divide="ignore"):
        out = joint / count[:, None]
    out[count == 0] = np.nan
    return out


def _pairs(score: np.ndarray, count: np.ndarray, min_count: int, top: int) -> list[tuple[int, int]]:
    valid = (count >= min_count) & np.isfinite(score)
    np.fill_diagonal(valid, False)
    i, j = np.nonzero(valid)
    order = np.lexsort((-count[i, j], -score[i, j]))[:top]  # highest lift first; more images break ties
    return [(int(i[k]), int(j[k])) for k in order]


def false_positive_pairs(
    predicted: Any,
    targets: Any,
    *,
    ignore: Any = None,
    train_lift: np.ndarray | None = None,
    min_count: int = 3,
    top: int = 20,
) -> list[dict[str, Any]]:
    """The (hallucinated f, present t) pairs ranked by ``fp_lift`` (module docstring).

    Args:
        predicted: Bool predictions [N, C].
        targets: Labels [N, C].
        ignore: Optional bool mask [N, C] of unknown labels.
        train_lift: Optional [C, C] training lift to report beside each pair.
        min_count: Fewest images with that pair of errors for a pair to be ranked.
        top: How many pairs to return.

    Returns:
        ``[{"fp": f, "present": t, "count": int, "fp_lift": float, "train_lift": float | None}, ...]``.
    """
    y, known = _masks(targets, ignore)
    pred = np.asarray(predicted, dtype=bool)
    if pred.shape != y.shape:
        raise ValueError(f"predicted must have the shape of the targets {y.shape}, got {pred.shape}")
    fp = (pred & ~y & known).astype(np.float64)  # [N, C]
    present = y.astype(np.float64)
    count = fp.T @ present  # [f, t]: images with f hallucinated and t present
    n_t = present.sum(0)
    rate_f = fp.sum(0) / max(len(fp), 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        score = (count / n_t[None, :]) / rate_f[:, None]
    return [
        {
            "fp": f,
            "present": t,
            "count": int(count[f, t]),
            "fp_lift": float(score[f, t]),
            "train_lift": _finite_or_none(train_lift, f, t),
        }
        for f, t in _pairs(score, count, min_count, top)
    ]


def false_negative_pairs(
    predicted: Any,
    targets: Any,
    *,
    ignore: Any = None,
    train_lift: np.ndarray | None = None,
    min_count: int = 3,
    top: int = 20,
) -> list[dict[str, Any]]:
    """The (missed m, absent a) pairs ranked by ``miss_lift`` (module docstring); arguments as
    :func:`false_positive_pairs`.

    Returns:
        ``[{"missed": m, "absent": a, "count": int, "miss_lift": float, "train_lift": float | None}, ...]``;
        ``count`` = images where m was missed and a was absent.
    """
    y, known = _masks(targets, ignore)
    pred = np.asarray(predicted, dtype=bool)
    if pred.shape != y.shape:
        raise ValueError(f"predicted must have the shape of the targets {y.shape}, got {pred.shape}")
    missed = (y & ~pred).astype(np.float64)  # [N, C]
    has = y.astype(np.float64)
    absent = (~y & known).astype(np.float64)
    present = y.astype(np.float64)
    miss_absent = missed.T @ absent  # [m, a]
    with_absent = has.T @ absent
    miss_present = missed.T @ present
    with_present = has.T @ present
    with np.errstate(invalid="ignore", divide="ignore"):
        # +0.5 / +1 smoothing: "never missed when a is present" is the strongest case, not a division by zero.
        score = ((miss_absent + 0.5) / (with_absent + 1)) / ((miss_present + 0.5) / (with_present + 1))
    return [
        {
            "missed": m,
            "absent": a,
            "count": int(miss_absent[m, a]),
            "miss_lift": float(score[m, a]),
            "train_lift": _finite_or_none(train_lift, m, a),
        }
        for m, a in _pairs(score, miss_absent, min_count, top)
    ]


def _finite_or_none(matrix: np.ndarray | None, i: int, j: int) -> float | None:
    if matrix is None or not np.isfinite(matrix[i, j]):
        return None
    return float(matrix[i, j])
