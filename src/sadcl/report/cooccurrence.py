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

from typing import Any, Literal

import numpy as np

__all__ = ["conditional_cooccurrence", "error_pairs", "lift"]


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


def _checked(predicted: Any, targets: Any, ignore: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(predicted, positive, known) bool [N, C]; the predictions must have the targets' shape."""
    y, known = _masks(targets, ignore)
    pred = np.asarray(predicted, dtype=bool)
    if pred.shape != y.shape:
        raise ValueError(f"predicted must have the shape of the targets {y.shape}, got {pred.shape}")
    return pred, y, known


def _ranked(
    score: np.ndarray,
    count: np.ndarray,
    keys: tuple[str, str, str],
    train_lift: np.ndarray | None,
    min_count: int,
    top: int,
) -> list[dict[str, Any]]:
    """The ``top`` pairs (i, j) with ``count >= min_count`` by ``score`` [C, C] (ties: more images first), as
    ``{keys[0]: i, keys[1]: j, "count", keys[2]: score, "train_lift"}`` rows."""
    valid = (count >= min_count) & np.isfinite(score)
    np.fill_diagonal(valid, False)
    i, j = np.nonzero(valid)
    order = np.lexsort((-count[i, j], -score[i, j]))[:top]  # highest lift first; more images break ties
    first, second, score_key = keys
    return [
        {
            first: a,
            second: b,
            "count": int(count[a, b]),
            score_key: float(score[a, b]),
            "train_lift": _finite_or_none(train_lift, a, b),
        }
        for a, b in ((int(i[k]), int(j[k])) for k in order)
    ]


def error_pairs(
    predicted: Any,
    targets: Any,
    *,
    kind: Literal["fp", "fn"],
    ignore: Any = None,
    train_lift: np.ndarray | None = None,
    min_count: int = 3,
    top: int = 20,
) -> list[dict[str, Any]]:
    """The co-occurrence error pairs of one kind, ranked by their lift (module docstring).

    Args:
        predicted: Bool predictions [N, C].
        targets: Labels [N, C].
        kind: ``"fp"``: (hallucinated f, present t) pairs by ``fp_lift``; ``"fn"``: (missed m, absent a) pairs by
            ``miss_lift``.
        ignore: Optional bool mask [N, C] of unknown labels.
        train_lift: Optional [C, C] training lift to report beside each pair.
        min_count: Fewest images with that pair of errors for a pair to be ranked.
        top: How many pairs to return.

    Returns:
        ``fp``: ``[{"fp": f, "present": t, "count", "fp_lift", "train_lift": float | None}, ...]``; ``fn``:
        ``[{"missed": m, "absent": a, "count", "miss_lift", "train_lift"}, ...]`` (``count``: images with that error
        and that companion label present, resp. absent).
    """
    pred, y, known = _checked(predicted, targets, ignore)
    present = y.astype(np.float64)
    if kind == "fp":
        fp = (pred & ~y & known).astype(np.float64)  # [N, C]
        count = fp.T @ present  # [f, t]: images with f hallucinated and t present
        rate_f = fp.sum(0) / max(len(fp), 1)
        with np.errstate(invalid="ignore", divide="ignore"):
            score = (count / present.sum(0)[None, :]) / rate_f[:, None]
        return _ranked(score, count, ("fp", "present", "fp_lift"), train_lift, min_count, top)
    if kind != "fn":
        raise ValueError(f"kind must be 'fp' or 'fn', got {kind!r}")
    missed = (y & ~pred).astype(np.float64)  # [N, C]
    absent = (~y & known).astype(np.float64)
    miss_absent = missed.T @ absent  # [m, a]
    with_absent = present.T @ absent
    miss_present = missed.T @ present
    with_present = present.T @ present
    with np.errstate(invalid="ignore", divide="ignore"):
        # +0.5 / +1 smoothing: "never missed when a is present" is the strongest case, not a division by zero.
        score = ((miss_absent + 0.5) / (with_absent + 1)) / ((miss_present + 0.5) / (with_present + 1))
    return _ranked(score, miss_absent, ("missed", "absent", "miss_lift"), train_lift, min_count, top)


def _finite_or_none(matrix: np.ndarray | None, i: int, j: int) -> float | None:
    if matrix is None or not np.isfinite(matrix[i, j]):
        return None
    return float(matrix[i, j])
