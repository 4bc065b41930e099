"""The numbers of a report: summary, per-class table, PR curves, calibration and co-occurrence errors of one model.

Probabilities are ``sadcl.inference.postprocess.probabilities(logits / T)`` (T = 1 unless a temperature is applied) and
every metric comes from :mod:`sadcl.metrics`, so without a temperature the report's mAP, CP/CR/CF1/OP/OR/OF1 and top-3
metrics are those of ``sadcl evaluate`` at the same threshold(s).

**Operating thresholds** (the table's precision/recall/F1 and the PR curves' marked points): the ``--thresholds``
file when given; else thresholds tuned on the validation split with :func:`sadcl.inference.thresholds.tune_thresholds`;
else the global threshold. A thresholds file holds thresholds on ``sigmoid(logits)`` (what every sadcl tool applies);
under a temperature they are mapped to the same decision on the calibrated probability,
``sigmoid(logit(t) / T)``, so a temperature changes the probabilities shown, never which labels are predicted.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from sadcl.inference.postprocess import as_thresholds, predicted_mask, probabilities
from sadcl.inference.thresholds import best_f1_threshold, tune_thresholds
from sadcl.io import finite
from sadcl.metrics import summarize
from sadcl.report import calibration as cal
from sadcl.report.collect import ModelRun
from sadcl.report.cooccurrence import conditional_cooccurrence, error_pairs
from sadcl.report.curves import decimate, micro_pr_curve, operating_point, pr_curve

logger = logging.getLogger(__name__)

__all__ = ["METRIC_KEYS", "analyze", "raw_thresholds", "temperature_thresholds"]

METRIC_KEYS = ("CP", "CR", "CF1", "OP", "OR", "OF1")


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-12, 1 - 1e-12)
    return np.log(p) - np.log1p(-p)


def temperature_thresholds(raw: np.ndarray, temperature: float | np.ndarray | None) -> np.ndarray:
    """Thresholds on ``sigmoid(logits)`` [C] -> the same decisions on ``sigmoid(logits / T)`` [C]."""
    if temperature is None:
        return raw
    return 1 / (1 + np.exp(-_logit(raw) / np.asarray(temperature, dtype=np.float64)))


def raw_thresholds(calibrated: np.ndarray, temperature: float | np.ndarray | None) -> np.ndarray:
    """The inverse of :func:`temperature_thresholds` (for writing a thresholds file that every tool reads)."""
    if temperature is None:
        return calibrated
    return 1 / (1 + np.exp(-_logit(calibrated) * np.asarray(temperature, dtype=np.float64)))


def _metrics(summary: dict[str, Any], suffix: str = "") -> dict[str, float | None]:
    return {k: finite(summary[f"{k}{suffix}"]) for k in METRIC_KEYS}


def _per_class_counts(pred: np.ndarray, pos: np.ndarray, keep: np.ndarray) -> dict[str, np.ndarray]:
    tp = (pred & pos & keep).sum(0).astype(np.float64)
    fp = (pred & ~pos & keep).sum(0).astype(np.float64)
    fn = (~pred & pos & keep).sum(0).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
        r = np.where(tp + fn > 0, tp / (tp + fn), 0.0)
        f1 = np.where(p + r > 0, 2 * p * r / (p + r), 0.0)
    return {"precision": 100 * p, "recall": 100 * r, "F1": 100 * f1, "tp": tp, "fp": fp, "fn": fn}


def analyze(
    run: ModelRun,
    class_names: list[str],
    *,
    threshold: float = 0.5,
    thresholds: np.ndarray | None = None,
    thresholds_source: str | None = None,
    temperature_mode: str = "none",
    temperature: float | np.ndarray | None = None,
    train_targets: np.ndarray | None = None,
    train_ignore: np.ndarray | None = None,
    bins: int = 15,
    curve_points: int = 120,
) -> dict[str, Any]:
    """Everything the report shows about one model (JSON-ready except the ``"_arrays"`` entry).

    Args:
        run: The model's test (and optionally val) outputs.
        class_names: The C class names.
        threshold: The global threshold of the "at threshold" metrics.
        thresholds: Per-class thresholds [C] on ``sigmoid(logits)`` from a file, or None.
        thresholds_source: What to call them in the report (the file name).
        temperature_mode: ``none``, ``global`` or ``per-class`` (fitted on ``run.val``), or ``file``.
        temperature: With ``temperature_mode="file"``: the stored temperature (scalar or [C]).
        train_targets: Training labels [N_train, C] for the co-occurrence lift, or None.
        train_ignore: Their unknown-label mask, or None.
        bins: Reliability-diagram bins.
        curve_points: Most points per PR curve.

    Returns:
        ``{"summary", "per_class", "curves", "calibration", "cooccurrence", "_arrays"}``.
    """
    test, val = run.test, run.val
    num_classes = len(class_names)
    if test.logits.shape[1] != num_classes:
        raise ValueError(f"{run.name}: {test.logits.shape[1]} outputs for {num_classes} class names")
    if temperature_mode in ("global", "per-class"):
        if val is None:
            raise ValueError(f"--temperature {temperature_mode} is fitted on the validation split, which is missing")
        temperature = cal.fit_temperature(val.logits, val.targets, ignore=val.ignore, mode=temperature_mode)
    elif temperature_mode == "none":
        temperature = None
    elif temperature_mode != "file":
        raise ValueError(f"temperature mode must be none, global, per-class or file, got {temperature_mode!r}")

    probs_raw = probabilities(test.logits)
    probs = probabilities(cal.apply_temperature(test.logits, temperature)) if temperature is not None else probs_raw
    pos = test.targets > 0.5
    keep = np.ones(pos.shape, dtype=bool) if test.ignore is None else ~test.ignore

    if thresholds is not None:
        operating = temperature_thresholds(as_thresholds(thresholds, num_classes), temperature)
        source = thresholds_source or "file"
    elif val is not None:
        val_probs = probabilities(cal.apply_temperature(val.logits, temperature)) if temperature is not None else None
        operating = tune_thresholds(
            val_probs if val_probs is not None else probabilities(val.logits), val.targets, ignore=val.ignore
        )
        source = "tuned on val"
    else:
        operating = as_thresholds(threshold, num_classes)
        source = f"global {threshold:g}"

    at_global = summarize(probs, test.targets, test.ignore, threshold)
    at_operating = summarize(probs, test.targets, test.ignore, operating)
    pred = predicted_mask(probs, operating)
    counts = _per_class_counts(pred, pos, keep)
    support = (pos & keep).sum(0)
    ece_raw = cal.per_class_ece(probs_raw, test.targets, ignore=test.ignore, bins=bins)
    ece = cal.per_class_ece(probs, test.targets, ignore=test.ignore, bins=bins) if temperature is not None else ece_raw

    per_class, curves = [], []
    for c, name in enumerate(class_names):
        kc = keep[:, c]
        best_t, best_f1 = best_f1_threshold(probs[kc, c], pos[kc, c])
        per_class.append(
            {
                "class": name,
                "AP": finite(at_global["per_class_AP"][c]),
                "support": int(support[c]),
                "precision": float(counts["precision"][c]),
                "recall": float(counts["recall"][c]),
                "F1": float(counts["F1"][c]),
                "threshold": float(operating[c]),
                "best_F1_threshold": finite(best_t),
                "best_F1": 100 * best_f1,
                "ECE": finite(ece[c]),
                "FP": int(counts["fp"][c]),
                "FN": int(counts["fn"][c]),
            }
        )
        p, r, _ = pr_curve(probs[kc, c], pos[kc, c])
        p, r = decimate(p, r, max_points=curve_points)
        op = operating_point(probs[kc, c], pos[kc, c], float(operating[c])) if p.size else (0.0, 0.0)
        curves.append({"precision": p.round(4).tolist(), "recall": r.round(4).tolist(), "operating": op})
    mp, mr = micro_pr_curve(probs, test.targets, keep)
    mp, mr = decimate(mp, mr, max_points=4 * curve_points)
    tp, fp, fn = counts["tp"].sum(), counts["fp"].sum(), counts["fn"].sum()
    micro_op = (float(tp / (tp + fp)) if tp + fp else 0.0, float(tp / (tp + fn)) if tp + fn else 0.0)

    calibration = _calibration(run, probs_raw, probs, temperature, temperature_mode, bins)
    train_lift = None
    cooc: dict[str, Any] = {"predicted": conditional_cooccurrence(pred, ignore=test.ignore)}
    if train_targets is not None:
        from sadcl.report.cooccurrence import lift

        train_lift = lift(train_targets, ignore=train_ignore)
        cooc["train"] = conditional_cooccurrence(train_targets, ignore=train_ignore)
    for kind in ("fp", "fn"):
        cooc[f"{kind}_pairs"] = error_pairs(
            pred, test.targets, kind=kind, ignore=test.ignore, train_lift=train_lift, top=12
        )

    summary = {
        "model": run.name,
        **run.info,
        "num_images": int(test.logits.shape[0]),
        "num_classes": num_classes,
        "num_classes_with_positives": int(at_global["num_classes_with_positives"]),
        "mAP": finite(at_global["mAP"]),
        "threshold": threshold,
        "at_threshold": _metrics(at_global),
        "operating_thresholds": source,
        "at_operating": _metrics(at_operating),
        "top3": _metrics(at_global, "_top3"),
    }
    return {
        "summary": summary,
        "per_class": per_class,
        "curves": {
            "per_class": curves,
            "micro": {"precision": mp.round(4).tolist(), "recall": mr.round(4).tolist(), "operating": micro_op},
        },
        "calibration": calibration,
        "cooccurrence": cooc,
        "_arrays": {"probs": probs, "pred": pred, "pos": pos, "keep": keep, "operating": operating},
    }


def _calibration(
    run: ModelRun,
    probs_raw: np.ndarray,
    probs: np.ndarray,
    temperature: float | np.ndarray | None,
    mode: str,
    bins: int,
) -> dict[str, Any]:
    """ECE / NLL before and after the temperature, and the pooled reliability bins of both."""
    test, val = run.test, run.val

    def bins_of(p: np.ndarray) -> dict[str, list]:
        r = cal.reliability_bins(p, test.targets, ignore=test.ignore, bins=bins)
        return {
            k: [finite(v) if k != "count" else int(v) for v in r[k]] for k in ("count", "confidence", "positive_rate")
        }

    out: dict[str, Any] = {
        "bins": bins,
        "temperature_mode": mode,
        "temperature": None
        if temperature is None
        else (float(temperature) if np.ndim(temperature) == 0 else [float(t) for t in np.asarray(temperature)]),
        "test_ECE_before": finite(
            cal.expected_calibration_error(probs_raw, test.targets, ignore=test.ignore, bins=bins)
        ),
        "test_NLL_before": finite(cal.mean_nll(test.logits, test.targets, ignore=test.ignore)),
        "reliability_before": bins_of(probs_raw),
    }
    if temperature is not None:
        out["test_ECE_after"] = finite(
            cal.expected_calibration_error(probs, test.targets, ignore=test.ignore, bins=bins)
        )
        out["test_NLL_after"] = finite(
            cal.mean_nll(test.logits, test.targets, ignore=test.ignore, temperature=temperature)
        )
        out["reliability_after"] = bins_of(probs)
        if val is not None:
            out["val_NLL_before"] = finite(cal.mean_nll(val.logits, val.targets, ignore=val.ignore))
            out["val_NLL_after"] = finite(
                cal.mean_nll(val.logits, val.targets, ignore=val.ignore, temperature=temperature)
            )
    return out
