"""Multi-label evaluation metrics as pure functions on arrays (docs/spec.md §4).

Every function accepts numpy arrays or torch tensors (moved to CPU float64) and returns plain floats / numpy arrays.
Scores are probabilities (sigmoid outputs) or logits; only their order matters for AP, and thresholds are applied
to whatever is passed. All percentages are x100, as the official code reports them.

Label conventions:
    * A target is **positive** when ``target > 0.5`` (for the 0/1 and -1/0/1 labels the official code sees this is
      the same as its ``astype(int32) > 0``).
    * ``minus_one="negative"`` (default, official): label -1 is a negative, like 0.
      ``minus_one="ignore"``: entries with a negative label (-1) are left out, as VOC "difficult" objects should be.
    * ``ignore`` is a bool mask of the same shape as the targets; ``True`` entries are left out of every count.

Average precision:
    * ``interpolation="official"`` reproduces ``voc_mAP`` of the official code: rank by ``np.argsort(-score)`` (numpy's
      default, unstable sort, so tied scores are ranked as numpy ranks them), then VOC all-point interpolated AP
      (precision made non-increasing from the right, summed over the recall steps).
    * ``interpolation="none"``: non-interpolated AP, ``sum_n (R_n - R_{n-1}) P_n`` with tied scores grouped into one
      threshold; equal to ``sklearn.metrics.average_precision_score``.
    * A class without positives (after ``ignore``) has no defined AP: it is NaN. ``nan_policy="omit"`` (default)
      averages the classes that have positives; ``nan_policy="official"`` takes the plain mean, so mAP is NaN as soon
      as one class has no positives, as the official code does.

Threshold metrics (ML-GCN / Query2Label conventions, docs/spec.md §4.3), with division by zero giving 0:
    * per class ``P_c = tp/(tp+fp)`` (0 when the class is never predicted), ``R_c = tp/(tp+fn)`` (0 when the class has
      no positives);
    * ``CP = mean_c P_c``, ``CR = mean_c R_c``, ``CF1 = 2 CP CR / (CP + CR)`` (ML-GCN);
    * ``CF1_mean_per_class = mean_c F1_c`` (the official ``overall()``; F1_c = 0 when tp_c = 0);
    * ``OP = sum tp / sum (tp+fp)``, ``OR = sum tp / sum (tp+fn)``, ``OF1 = 2 OP OR / (OP + OR)``.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

import numpy as np

logger = logging.getLogger(__name__)

__all__ = [
    "average_precision",
    "mean_average_precision",
    "per_class_ap",
    "summarize",
    "threshold_metrics",
    "topk_metrics",
    "voc_ap",
]

Interpolation = Literal["official", "none"]
NanPolicy = Literal["omit", "official"]
MinusOne = Literal["negative", "ignore"]

# The official precision denominator guard (np.finfo(np.float64).eps); TP + FP >= 1 along a ranking, so it never acts.
_EPS = np.finfo(np.float64).eps


def _to_numpy(x: Any, dtype: type = np.float64) -> np.ndarray:
    """Tensor / array-like -> numpy array of ``dtype`` (a CPU copy for tensors)."""
    if hasattr(x, "detach"):  # torch.Tensor without importing torch
        x = x.detach().cpu()
        if dtype is np.float64:
            x = x.double()
        x = x.numpy()
    return np.asarray(x, dtype=dtype)


def _prepare(scores: Any, targets: Any, ignore: Any, minus_one: MinusOne) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (scores, positive mask, keep mask) as float64 / bool arrays of the same shape."""
    s = _to_numpy(scores)
    t = _to_numpy(targets)
    if s.shape != t.shape:
        raise ValueError(f"scores and targets must have the same shape, got {s.shape} and {t.shape}")
    if np.isnan(s).any():
        raise ValueError(f"scores contain {int(np.isnan(s).sum())} NaN value(s); the model output is not finite")
    if minus_one not in ("negative", "ignore"):
        raise ValueError(f"minus_one must be 'negative' or 'ignore', got {minus_one!r}")
    keep = np.ones(s.shape, dtype=bool)
    if ignore is not None:
        ig = _to_numpy(ignore, dtype=bool)
        if ig.shape != s.shape:
            raise ValueError(f"ignore must have the shape of the targets {s.shape}, got {ig.shape}")
        keep &= ~ig
    if minus_one == "ignore":
        keep &= ~(t < 0)
    return s, t > 0.5, keep


def voc_ap(recall: Any, precision: Any) -> float:
    """VOC all-point interpolated AP from a precision/recall curve (official ``voc_ap``), as a fraction.

    Args:
        recall: Recall after each ranked sample, [K], non-decreasing.
        precision: Precision after each ranked sample, [K].

    Returns:
        ``sum over recall steps of (r_{k+1} - r_k) * max_{j >= k+1} p_j`` with sentinels (0, 0) and (1, 0).
    """
    mrec = np.concatenate(([0.0], _to_numpy(recall), [1.0]))
    mpre = np.concatenate(([0.0], _to_numpy(precision), [0.0]))
    # Precision envelope: the best precision at any recall >= r (running max from the right).
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def _ap_official(s: np.ndarray, pos: np.ndarray) -> float:
    order = np.argsort(-s)  # numpy's default (unstable) kind on purpose: the official tie order
    tp = pos[order].astype(np.float64)
    fp = 1.0 - tp
    npos = tp.sum()
    tp = np.cumsum(tp)
    fp = np.cumsum(fp)
    rec = tp / npos
    prec = tp / np.maximum(tp + fp, _EPS)
    return voc_ap(rec, prec)


def _ap_none(s: np.ndarray, pos: np.ndarray) -> float:
    order = np.argsort(-s, kind="stable")
    s_sorted = s[order]
    tp = np.cumsum(pos[order].astype(np.float64))
    # One threshold per distinct score: the last index of each run of tied scores.
    last = np.r_[np.where(np.diff(s_sorted) != 0)[0], s_sorted.size - 1]
    tp = tp[last]
    prec = tp / (last + 1.0)
    rec = tp / tp[-1]
    return float(np.sum(np.diff(np.r_[0.0, rec]) * prec))


def average_precision(
    scores: Any,
    targets: Any,
    *,
    interpolation: Interpolation = "official",
    ignore: Any = None,
    minus_one: MinusOne = "negative",
) -> float:
    """Average precision of one class, as a fraction in [0, 1].

    Args:
        scores: Scores [N]; higher means more likely positive.
        targets: Labels [N] in {0, 1} (or {-1, 0, 1}, see ``minus_one``).
        interpolation: ``"official"`` (VOC all-point interpolated, official tie order) or ``"none"``
            (non-interpolated, = sklearn ``average_precision_score``).
        ignore: Optional bool mask [N]; True entries are left out.
        minus_one: ``"negative"`` (official) or ``"ignore"`` for labels -1.

    Returns:
        The AP, or NaN when no (kept) sample is positive.
    """
    s, pos, keep = _prepare(scores, targets, ignore, minus_one)
    if s.ndim != 1:
        raise ValueError(f"average_precision expects 1-D scores, got shape {s.shape}; use per_class_ap for [N, C]")
    _check_interpolation(interpolation)
    return _class_ap(s[keep], pos[keep], interpolation)


def _check_interpolation(interpolation: str) -> None:
    if interpolation not in ("official", "none"):
        raise ValueError(f"interpolation must be 'official' or 'none', got {interpolation!r}")


def _class_ap(s: np.ndarray, pos: np.ndarray, interpolation: Interpolation) -> float:
    """AP in [0, 1] of the kept scores ``s`` [n] and labels ``pos`` [n] (NaN without a positive)."""
    if not pos.any():
        return float("nan")
    return _ap_official(s, pos) if interpolation == "official" else _ap_none(s, pos)


def per_class_ap(
    scores: Any,
    targets: Any,
    *,
    interpolation: Interpolation = "official",
    ignore: Any = None,
    minus_one: MinusOne = "negative",
) -> np.ndarray:
    """Per-class AP x100 of scores [N, C] and labels [N, C] (``ignore`` [N, C]); the options as
    :func:`average_precision`.

    Returns:
        AP x100 per class [C] (float64); NaN for a class without (kept) positives.
    """
    s, pos, keep = _prepare(scores, targets, ignore, minus_one)
    if s.ndim != 2:
        raise ValueError(f"per_class_ap expects [N, C] scores, got shape {s.shape}")
    _check_interpolation(interpolation)
    return np.array([_class_ap(s[keep[:, c], c], pos[keep[:, c], c], interpolation) * 100 for c in range(s.shape[1])])


def _mean_ap(aps: np.ndarray, nan_policy: NanPolicy) -> float:
    if nan_policy == "official":
        return float(np.mean(aps))
    if nan_policy != "omit":
        raise ValueError(f"nan_policy must be 'omit' or 'official', got {nan_policy!r}")
    valid = ~np.isnan(aps)
    if not valid.any():
        logger.warning("mAP is undefined: no class has a positive sample")
        return float("nan")
    if not valid.all():
        logger.debug("mAP over %d of %d classes (the others have no positives)", valid.sum(), aps.size)
    return float(np.mean(aps[valid]))


def mean_average_precision(
    scores: Any,
    targets: Any,
    *,
    interpolation: Interpolation = "official",
    ignore: Any = None,
    minus_one: MinusOne = "negative",
    nan_policy: NanPolicy = "omit",
) -> float:
    """Mean over classes of the per-class AP, x100.

    Args:
        scores: Scores [N, C].
        targets: Labels [N, C].
        interpolation: See :func:`average_precision`.
        ignore: Optional bool mask [N, C].
        minus_one: See :func:`average_precision`.
        nan_policy: ``"omit"`` averages the classes with positives (NaN only if none has);
            ``"official"`` is the plain mean, NaN if any class has no positives.

    Returns:
        mAP x100.
    """
    aps = per_class_ap(scores, targets, interpolation=interpolation, ignore=ignore, minus_one=minus_one)
    return _mean_ap(aps, nan_policy)


def _safe_div(num: np.ndarray | float, den: np.ndarray | float) -> np.ndarray:
    """num / den with 0 where den == 0 (the zero-division convention of every metric here)."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.zeros(np.broadcast(num, den).shape)
    np.divide(num, den, out=out, where=den != 0)
    return out


def _f1(p: np.ndarray | float, r: np.ndarray | float) -> np.ndarray:
    p = np.asarray(p, dtype=np.float64)
    r = np.asarray(r, dtype=np.float64)
    return _safe_div(2 * p * r, p + r)


def _counts_metrics(pred: np.ndarray, pos: np.ndarray, keep: np.ndarray) -> dict[str, float]:
    """CP/CR/CF1/CF1_mean_per_class/OP/OR/OF1 (x100) from bool predictions, positives and kept entries [N, C]."""
    tp = (pred & pos & keep).sum(0).astype(np.float64)
    fp = (pred & ~pos & keep).sum(0).astype(np.float64)
    fn = (~pred & pos & keep).sum(0).astype(np.float64)
    p_c = _safe_div(tp, tp + fp)
    r_c = _safe_div(tp, tp + fn)
    cp, cr = float(p_c.mean()), float(r_c.mean())
    op = float(_safe_div(tp.sum(), tp.sum() + fp.sum()))
    orr = float(_safe_div(tp.sum(), tp.sum() + fn.sum()))
    return {
        "CP": 100 * cp,
        "CR": 100 * cr,
        "CF1": 100 * float(_f1(cp, cr)),
        "CF1_mean_per_class": 100 * float(_f1(p_c, r_c).mean()),
        "OP": 100 * op,
        "OR": 100 * orr,
        "OF1": 100 * float(_f1(op, orr)),
    }


def threshold_metrics(
    scores: Any,
    targets: Any,
    *,
    threshold: float | Any = 0.5,
    ignore: Any = None,
    minus_one: MinusOne = "negative",
) -> dict[str, float]:
    """Per-class and overall precision / recall / F1 at a threshold, x100.

    Args:
        scores: Scores [N, C] (probabilities for the default threshold 0.5).
        targets: Labels [N, C].
        threshold: One threshold, or one per class [C]; a label is predicted when ``score > threshold``
            (strict, as the official ``overall()``).
        ignore: Optional bool mask [N, C]; ignored entries count as neither tp, fp nor fn.
        minus_one: See :func:`average_precision`.

    Returns:
        ``{"CP", "CR", "CF1", "CF1_mean_per_class", "OP", "OR", "OF1"}`` (see the module docstring).
    """
    s, pos, keep = _prepare(scores, targets, ignore, minus_one)
    if s.ndim != 2:
        raise ValueError(f"threshold_metrics expects [N, C] scores, got shape {s.shape}")
    thr = _to_numpy(threshold)
    if thr.ndim not in (0, 1) or (thr.ndim == 1 and thr.shape[0] != s.shape[1]):
        raise ValueError(f"threshold must be a scalar or have one value per class ({s.shape[1]}), got {thr.shape}")
    return _counts_metrics(s > thr, pos, keep)


def topk_metrics(
    scores: Any,
    targets: Any,
    *,
    k: int = 3,
    threshold: float | None = None,
    ignore: Any = None,
    minus_one: MinusOne = "negative",
) -> dict[str, float]:
    """Threshold metrics when each sample predicts its k highest-scoring labels, x100.

    Args:
        scores: Scores [N, C].
        targets: Labels [N, C].
        k: Labels predicted per sample (ties broken by the lower class index).
        threshold: None (ML-GCN top-k: the k labels are predicted whatever their score), or a threshold that the
            top-k labels must also exceed (the official ``overall_topk``).
        ignore: Optional bool mask [N, C]; the top-k are chosen among all labels, then ignored entries are not counted.
        minus_one: See :func:`average_precision`.

    Returns:
        The keys of :func:`threshold_metrics`.
    """
    s, pos, keep = _prepare(scores, targets, ignore, minus_one)
    if s.ndim != 2:
        raise ValueError(f"topk_metrics expects [N, C] scores, got shape {s.shape}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    k = min(k, s.shape[1])
    top = np.argsort(-s, axis=1, kind="stable")[:, :k]
    pred = np.zeros(s.shape, dtype=bool)
    np.put_along_axis(pred, top, True, axis=1)
    if threshold is not None:
        pred &= s > threshold
    return _counts_metrics(pred, pos, keep)


def summarize(
    scores: Any,
    targets: Any,
    ignore: Any = None,
    threshold: float | Any = 0.5,
    *,
    k: int = 3,
    interpolation: Interpolation = "official",
    nan_policy: NanPolicy = "omit",
    minus_one: MinusOne = "negative",
) -> dict[str, Any]:
    """Every metric at once: mAP, threshold metrics, top-k metrics and per-class AP (all x100).

    Args:
        scores: Probabilities [N, C].
        targets: Labels [N, C].
        ignore: Optional bool mask [N, C].
        threshold: Threshold (scalar or per class [C]) for the threshold metrics.
        k: k for the top-k metrics.
        interpolation: See :func:`average_precision`.
        nan_policy: See :func:`mean_average_precision`.
        minus_one: See :func:`average_precision`.

    Returns:
        ``{"mAP": float, "CP", "CR", "CF1", "CF1_mean_per_class", "OP", "OR", "OF1": float,
        "CP_top3", ..., "OF1_top3": float (suffix ``_top{k}``), "per_class_AP": np.ndarray [C],
        "num_classes_with_positives": int}``.
    """
    aps = per_class_ap(scores, targets, interpolation=interpolation, ignore=ignore, minus_one=minus_one)
    out: dict[str, Any] = {"mAP": _mean_ap(aps, nan_policy)}
    out.update(threshold_metrics(scores, targets, threshold=threshold, ignore=ignore, minus_one=minus_one))
    top = topk_metrics(scores, targets, k=k, ignore=ignore, minus_one=minus_one)
    out.update({f"{name}_top{k}": value for name, value in top.items()})
    out["per_class_AP"] = aps
    out["num_classes_with_positives"] = int((~np.isnan(aps)).sum())
    return out
