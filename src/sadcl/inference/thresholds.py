"""Per-class decision thresholds tuned on a validation split, and their JSON file.

The rule (:func:`tune_thresholds`), for probabilities ``scores [N, C]`` and labels ``targets [N, C]``:

1. **Global threshold** ``t_g``: the one threshold that maximises the overall (micro) F1 of all kept (score, label)
   pairs pooled together. It is the fallback for classes with too little evidence.
2. **Per-class threshold** ``t_c``: the threshold that maximises class c's F1 on its kept entries. Candidates are the
   midpoints between consecutive distinct scores, so the same threshold predicts the same labels with ``score > t``
   (the metrics' rule) and with ``score >= t``. Ties in F1 go to the highest threshold (fewer false positives).
3. **Shrinkage for rare classes**: with ``n_c`` kept positives, ``w_c = n_c / (n_c + smoothing)`` and the result is
   ``w_c * t_c + (1 - w_c) * t_g``. A class with fewer than ``min_positives`` positives gets ``t_g`` itself: an F1
   optimum over two or three positives is noise.
4. **Bounds**: every threshold is clipped to ``[floor, ceiling]`` (candidates outside are never chosen in 1 and 2),
   so that a class whose validation positives all score low cannot end with a threshold that fires on everything.

The file is a JSON object ``{"class name": threshold, ...}`` in class order. The thresholds apply to
``sigmoid(logits)``, as every sadcl tool computes it. ``sadcl report --temperature`` may add a key
``"temperature"``: one number T, or ``{"class name": T}``, the temperature scaling fitted on the validation split
(calibrated probability ``sigmoid(logit / T)``); it changes the probabilities, not which labels the thresholds select,
so a tool that does not apply it still predicts the same labels. (With a class named "temperature" that key is its
threshold and no temperature can be stored.)
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from sadcl.io import atomic_write_text

logger = logging.getLogger(__name__)

__all__ = [
    "TEMPERATURE_KEY",
    "best_f1_threshold",
    "load_temperature",
    "load_thresholds",
    "save_thresholds",
    "tune_thresholds",
]

TEMPERATURE_KEY = "temperature"


def _as_array(x: Any, dtype: type) -> np.ndarray:
    if hasattr(x, "detach"):  # torch.Tensor, without importing torch
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def best_f1_threshold(
    scores: np.ndarray, positives: np.ndarray, *, floor: float = 0.0, ceiling: float = 1.0
) -> tuple[float, float]:
    """The threshold in ``[floor, ceiling]`` that maximises F1 of ``score > threshold`` against ``positives``.

    Args:
        scores: Scores [M] (any order).
        positives: Bool labels [M].
        floor: Lowest allowed threshold.
        ceiling: Highest allowed threshold.

    Returns:
        ``(threshold, f1)``; ``(nan, 0.0)`` when there is no positive or no candidate reaches F1 > 0.
    """
    s = np.asarray(scores, dtype=np.float64)
    pos = np.asarray(positives, dtype=bool)
    npos = int(pos.sum())
    if npos == 0 or s.size == 0:
        return float("nan"), 0.0
    order = np.argsort(-s, kind="stable")
    s_sorted = s[order]
    tp = np.cumsum(pos[order])
    # Only cut between distinct scores: index k is the last of a run of tied scores, predicting the top k+1 samples.
    last = np.r_[np.nonzero(np.diff(s_sorted))[0], s_sorted.size - 1]
    below = np.r_[s_sorted[last[:-1] + 1], -np.inf]
    # Midpoint to the next lower score; below the lowest score, halfway to the floor (or to 0 when the floor is not
    # below it: that candidate is then under the floor and not allowed anyway).
    below[-1] = floor if floor < s_sorted[-1] else 0.0
    thr = (s_sorted[last] + below) / 2
    f1 = 2 * tp[last] / (last + 1 + npos)
    # A midpoint that is not below its run's score (only at a score of exactly 0) cannot predict that run with `>`.
    valid = (thr >= floor) & (thr <= ceiling) & (thr < s_sorted[last])
    if not valid.any():
        return float("nan"), 0.0
    f1 = np.where(valid, f1, -1.0)
    best = int(np.argmax(f1))  # first maximum = highest threshold, because candidates go from high to low
    if f1[best] <= 0:
        return float("nan"), 0.0
    return float(thr[best]), float(f1[best])


def tune_thresholds(
    scores: Any,
    targets: Any,
    *,
    ignore: Any = None,
    floor: float = 0.05,
    ceiling: float = 0.95,
    min_positives: int = 5,
    smoothing: float = 10.0,
) -> np.ndarray:
    """Choose one F1-maximising threshold per class on a validation split (rule in the module docstring).

    Args:
        scores: Probabilities [N, C] (sigmoid of the logits).
        targets: Labels [N, C]; positive when > 0.5.
        ignore: Optional bool mask [N, C]; True entries (e.g. VOC difficult) are left out.
        floor: Lowest threshold any class may get.
        ceiling: Highest threshold any class may get.
        min_positives: Classes with fewer kept positives use the global threshold.
        smoothing: Pseudo-count of the shrinkage toward the global threshold; 0 disables shrinkage.

    Returns:
        Thresholds [C] (float64) in ``[floor, ceiling]``.
    """
    s = _as_array(scores, np.float64)
    t = _as_array(targets, np.float64)
    if s.ndim != 2 or s.shape != t.shape:
        raise ValueError(f"scores and targets must both be [N, C], got {s.shape} and {t.shape}")
    if not np.isfinite(s).all():
        raise ValueError("scores contain NaN or infinite values")
    if s.size and (s.min() < 0 or s.max() > 1):
        raise ValueError("scores must be probabilities in [0, 1]; apply a sigmoid to logits first")
    if not 0.0 <= floor < ceiling <= 1.0:
        raise ValueError(f"need 0 <= floor < ceiling <= 1, got floor={floor}, ceiling={ceiling}")
    if min_positives < 0 or smoothing < 0:
        raise ValueError(f"min_positives and smoothing must be >= 0, got {min_positives} and {smoothing}")
    keep = np.ones(s.shape, dtype=bool)
    if ignore is not None:
        ig = _as_array(ignore, bool)
        if ig.shape != s.shape:
            raise ValueError(f"ignore must have the shape of the scores {s.shape}, got {ig.shape}")
        keep &= ~ig
    pos = t > 0.5

    global_thr, global_f1 = best_f1_threshold(s[keep], pos[keep], floor=floor, ceiling=ceiling)
    if math.isnan(global_thr):
        global_thr = min(max(0.5, floor), ceiling)
        logger.warning("no positive label in the tuning split: every class gets %.3f", global_thr)
    else:
        logger.info("global threshold %.3f (overall F1 %.3f)", global_thr, global_f1)

    num_classes = s.shape[1]
    out = np.full(num_classes, global_thr)
    fallback = 0
    for c in range(num_classes):
        kc = keep[:, c]
        n_pos = int(pos[kc, c].sum())
        if n_pos < max(min_positives, 1):
            fallback += 1
            continue
        thr_c, _ = best_f1_threshold(s[kc, c], pos[kc, c], floor=floor, ceiling=ceiling)
        if math.isnan(thr_c):
            fallback += 1
            continue
        w = n_pos / (n_pos + smoothing) if smoothing > 0 else 1.0
        out[c] = w * thr_c + (1 - w) * global_thr
    if fallback:
        logger.info(
            "%d of %d classes use the global threshold (fewer than %d positives or F1 = 0)",
            fallback,
            num_classes,
            max(min_positives, 1),
        )
    return np.clip(out, floor, ceiling)


def save_thresholds(path: str | Path, thresholds: Any, class_names: list[str], *, temperature: Any = None) -> None:
    """Write ``{class name: threshold}`` as JSON, atomically (a reader never sees a half-written file).

    Args:
        path: Output file.
        thresholds: Thresholds [C] in ``[0, 1]``.
        class_names: The C class names, in the model's order.
        temperature: Optional temperature: one value > 0 or one per class [C] (stored under ``"temperature"``).
    """
    thr = _as_array(thresholds, np.float64)
    if thr.shape != (len(class_names),):
        raise ValueError(f"expected {len(class_names)} thresholds (one per class), got shape {thr.shape}")
    if len(set(class_names)) != len(class_names):
        raise ValueError("class names must be unique to be saved as JSON keys")
    _check_range(dict(zip(class_names, thr.tolist())), str(path))
    data: dict[str, Any] = {name: round(float(v), 6) for name, v in zip(class_names, thr)}
    if temperature is not None:
        if TEMPERATURE_KEY in class_names:
            raise ValueError(f"{path}: a class is named {TEMPERATURE_KEY!r}, so the file cannot store a temperature")
        t = _as_array(temperature, np.float64)
        data[TEMPERATURE_KEY] = float(t) if t.ndim == 0 else dict(zip(class_names, t.tolist()))
        _check_temperature(data[TEMPERATURE_KEY], class_names, str(path))
    path = Path(path)
    text = json.dumps(data, indent=2) + "\n"
    atomic_write_text(path, text)
    logger.info("wrote %d thresholds to %s", len(class_names), path)


def load_thresholds(path: str | Path, class_names: list[str]) -> np.ndarray:
    """Read a thresholds file written by :func:`save_thresholds` and order it by ``class_names``.

    Args:
        path: JSON file ``{class name: threshold}``.
        class_names: The model's C class names.

    Returns:
        Thresholds [C] (float64), in the order of ``class_names``.

    Raises:
        FileNotFoundError: The file does not exist.
        ValueError: Invalid JSON, unknown or missing class names, or values that are not numbers in ``[0, 1]``.
    """
    path = Path(path)
    data = _read_thresholds_json(path)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object {{class name: threshold}}, got {type(data).__name__}")
    if TEMPERATURE_KEY not in class_names:
        data = {k: v for k, v in data.items() if k != TEMPERATURE_KEY}  # read by load_temperature
    known = set(class_names)
    unknown = [k for k in data if k not in known]
    missing = [k for k in class_names if k not in data]
    if unknown:
        raise ValueError(
            f"{path}: unknown class name(s) {', '.join(map(repr, unknown[:10]))}"
            f"{' ...' if len(unknown) > 10 else ''}; the model's classes are {', '.join(class_names[:10])}"
            f"{' ...' if len(class_names) > 10 else ''}"
        )
    if missing:
        raise ValueError(
            f"{path}: no threshold for class(es) {', '.join(map(repr, missing[:10]))}"
            f"{' ...' if len(missing) > 10 else ''}"
        )
    _check_range(data, str(path))
    return np.array([float(data[name]) for name in class_names], dtype=np.float64)


def _read_thresholds_json(path: Path) -> Any:
    """The parsed JSON of a thresholds file (FileNotFoundError / ValueError naming it otherwise)."""
    if not path.is_file():
        raise FileNotFoundError(f"thresholds file not found: {path}")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a valid JSON thresholds file: {e}") from e


def load_temperature(path: str | Path, class_names: list[str]) -> float | np.ndarray | None:
    """The temperature stored in a thresholds file: a float, an array [C] in the order of ``class_names``, or None.

    Raises:
        FileNotFoundError: The file does not exist.
        ValueError: Invalid JSON, or a temperature that is not a number > 0 (or one per class).
    """
    path = Path(path)
    data = _read_thresholds_json(path)
    if not isinstance(data, dict) or TEMPERATURE_KEY not in data or TEMPERATURE_KEY in class_names:
        return None
    value = data[TEMPERATURE_KEY]
    _check_temperature(value, class_names, str(path))
    if isinstance(value, dict):
        return np.array([float(value[name]) for name in class_names], dtype=np.float64)
    return float(value)


def _check_temperature(value: Any, class_names: list[str], source: str) -> None:
    def ok(v: Any) -> bool:
        return not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v) and v > 0

    if isinstance(value, dict):
        missing = [n for n in class_names if n not in value]
        unknown = [k for k in value if k not in set(class_names)]
        if missing or unknown or not all(ok(v) for v in value.values()):
            raise ValueError(
                f"{source}: 'temperature' must be a number > 0 or one number > 0 per class "
                f"(missing {missing[:5]}, unknown {unknown[:5]})"
            )
    elif not ok(value):
        raise ValueError(f"{source}: 'temperature' must be a number > 0 or one per class, got {value!r}")


def _check_range(values: dict[str, Any], source: str) -> None:
    bad = [
        (k, v)
        for k, v in values.items()
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not 0.0 <= v <= 1.0
    ]
    if bad:
        shown = ", ".join(f"{k!r}: {v!r}" for k, v in bad[:5])
        raise ValueError(f"{source}: thresholds must be numbers in [0, 1], got {shown}")
