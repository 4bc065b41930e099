"""The one post-processing rule: logits -> probabilities -> per-class thresholds -> the selected labels.

Every tool that turns model outputs into labels uses this module (``predict``, ``serve``, ``visualize``,
``evaluate``, ``tune-thresholds``, ``export``'s ``probs`` output and the ONNX metadata), so a label means the same
everywhere:

1. **probabilities** are the sigmoid of the logits, one independent probability per class (multi-label: never a
   softmax over classes);
2. a class is **predicted** when its probability is **strictly above** its threshold (the rule of
   :func:`sadcl.metrics.threshold_metrics`); thresholds are per class ([C], from ``sadcl tune-thresholds``) or one
   global value repeated;
3. predicted labels are ordered by probability, highest first (ties: lower class index first);
4. ``top_k=k`` keeps **at most** the k best of them; it never adds a label below its threshold, so an image can
   have no label at all;
5. ``min_labels=m`` (display only: attention maps, the demo page) fills up with the best labels below threshold so
   that at least m are shown; those are *shown*, not *predicted* (:func:`predicted_mask` is unchanged by it).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = ["DEFAULT_THRESHOLD", "RULE", "as_thresholds", "predicted_mask", "probabilities", "select"]

DEFAULT_THRESHOLD = 0.5
RULE = "sigmoid(logits) > threshold (per class); labels ordered by probability; top_k keeps at most k"
"""The rule in one line, as written into artefacts (ONNX metadata, model cards, serve's API)."""


def probabilities(logits: Tensor | np.ndarray) -> Tensor | np.ndarray:
    """Per-class probabilities: ``sigmoid(logits)`` in float32.

    Args:
        logits: [..., C] tensor or array.

    Returns:
        The same type as the input (a tensor stays on its device), [..., C].
    """
    if isinstance(logits, Tensor):
        return torch.sigmoid(logits.float())
    # The same sigmoid as for tensors (numerically safe for large |logits|), returned as an array.
    return torch.sigmoid(torch.from_numpy(np.asarray(logits, dtype=np.float32))).numpy()


def as_thresholds(thresholds: float | Sequence[float] | np.ndarray | None, num_classes: int) -> np.ndarray:
    """Per-class thresholds [C] (float64) from one value, a sequence of C values, or None (0.5).

    Raises:
        ValueError: a wrong number of values or a value outside [0, 1] (NaN included).
    """
    if thresholds is None:
        thresholds = DEFAULT_THRESHOLD
    thr = np.asarray(thresholds, dtype=np.float64)
    if thr.ndim == 0:
        thr = np.full(num_classes, float(thr))
    if thr.shape != (num_classes,):
        raise ValueError(f"thresholds must be one value or one per class ({num_classes}), got shape {thr.shape}")
    if not np.all((thr >= 0.0) & (thr <= 1.0)):
        bad = int(np.flatnonzero(~((thr >= 0.0) & (thr <= 1.0)))[0])
        raise ValueError(f"thresholds must lie in [0, 1]; class {bad} has {thr[bad]}")
    return thr


def predicted_mask(probs: np.ndarray, thresholds: np.ndarray | float) -> np.ndarray:
    """Which classes are predicted: ``probs > thresholds``.

    Args:
        probs: [..., C] probabilities.
        thresholds: [C] or a scalar.

    Returns:
        Bool array [..., C].
    """
    return np.asarray(probs) > np.asarray(thresholds)


def select(
    probs: np.ndarray | Tensor,
    thresholds: np.ndarray | float,
    *,
    top_k: int | None = None,
    min_labels: int = 0,
) -> list[int]:
    """The labels of one image, best first (the module docstring's rule).

    Args:
        probs: [C] probabilities of one image.
        thresholds: [C] or a scalar.
        top_k: keep at most this many predicted labels (>= 1), or None for all of them.
        min_labels: show at least this many labels, filling up with the best below threshold (display only).

    Returns:
        Class indices.
    """
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1 or None, got {top_k}")
    if min_labels < 0:
        raise ValueError(f"min_labels must be >= 0, got {min_labels}")
    p = probs.detach().float().cpu().numpy() if isinstance(probs, Tensor) else np.asarray(probs)
    order = np.argsort(-p, kind="stable")
    keep = order[predicted_mask(p[order], np.broadcast_to(thresholds, p.shape)[order])]
    chosen = keep[:top_k] if top_k is not None else keep
    if len(chosen) < min_labels:
        rest = order[~np.isin(order, chosen)]
        chosen = np.concatenate([chosen, rest[: min_labels - len(chosen)]])
    return [int(c) for c in chosen]
