"""Per-class threshold tuning: the F1 search against brute force, the rare-class rule, and the JSON file."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sadcl.inference.thresholds import best_f1_threshold, load_thresholds, save_thresholds, tune_thresholds
from sadcl.metrics import threshold_metrics


def _f1(scores: np.ndarray, pos: np.ndarray, thr: float) -> float:
    pred = scores > thr
    tp = (pred & pos).sum()
    return 2 * tp / (pred.sum() + pos.sum()) if tp else 0.0


def _synthetic(n: int = 400, c: int = 6, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    targets = (rng.random((n, c)) < np.linspace(0.1, 0.5, c)).astype(np.float32)
    # Class-dependent calibration: class c's positives score around a different level, so the best thresholds differ.
    logits = rng.normal(size=(n, c)) + targets * 2.5 + np.linspace(-2.0, 1.0, c)
    return 1 / (1 + np.exp(-logits)), targets


def test_best_f1_threshold_matches_brute_force() -> None:
    rng = np.random.default_rng(1)
    for _ in range(20):
        scores = np.round(rng.random(60), 2)  # rounding creates ties
        pos = rng.random(60) < 0.3
        thr, f1 = best_f1_threshold(scores, pos)
        grid = np.linspace(0, 1, 2001)
        brute = max(_f1(scores, pos, t) for t in grid)
        assert f1 == pytest.approx(brute)
        assert _f1(scores, pos, thr) == pytest.approx(f1)  # the returned threshold achieves it with `>`


def test_best_f1_threshold_respects_bounds_and_no_positive() -> None:
    # Every positive scores below the floor: no allowed threshold finds one, so there is no threshold (F1 0).
    scores = np.array([0.01, 0.02, 0.03, 0.9])
    pos = np.array([True, True, True, False])
    thr, f1 = best_f1_threshold(scores, pos, floor=0.05)
    assert np.isnan(thr) and f1 == 0.0
    # The unconstrained optimum (0.015: everything predicted, F1 0.8) is below the floor; the best allowed cut is
    # between 0.5 and 0.03 (midpoint 0.265: one true and one false positive, F1 0.5).
    assert best_f1_threshold(np.array([0.03, 0.5, 0.7]), np.array([True, True, False])) == pytest.approx((0.015, 0.8))
    thr, f1 = best_f1_threshold(np.array([0.03, 0.5, 0.7]), np.array([True, True, False]), floor=0.05)
    assert thr == pytest.approx(0.265) and f1 == pytest.approx(0.5)
    # A ceiling below the only useful cut (0.6, between 0.7 and 0.5) leaves the cut at 0.265 (F1 2/3 < 1).
    thr, f1 = best_f1_threshold(np.array([0.03, 0.5, 0.7]), np.array([False, False, True]), ceiling=0.5)
    assert thr == pytest.approx(0.265) and f1 == pytest.approx(2 / 3)
    assert best_f1_threshold(np.array([0.03, 0.5, 0.7]), np.array([False, False, True])) == pytest.approx((0.6, 1.0))
    thr, f1 = best_f1_threshold(scores, np.zeros(4, bool))
    assert np.isnan(thr) and f1 == 0.0


def test_tune_thresholds_improves_per_class_f1_on_its_split() -> None:
    scores, targets = _synthetic()
    thr = tune_thresholds(scores, targets, smoothing=0.0, min_positives=1)
    assert thr.shape == (6,) and np.all((thr >= 0.05) & (thr <= 0.95))
    before = threshold_metrics(scores, targets, threshold=0.5)["CF1_mean_per_class"]
    after = threshold_metrics(scores, targets, threshold=thr)["CF1_mean_per_class"]
    assert after >= before
    for c in range(6):  # without shrinkage each class sits at its own optimum
        assert _f1(scores[:, c], targets[:, c] > 0.5, thr[c]) == pytest.approx(
            best_f1_threshold(scores[:, c], targets[:, c] > 0.5, floor=0.05, ceiling=0.95)[1]
        )


def test_rare_classes_shrink_toward_the_global_threshold() -> None:
    scores, targets = _synthetic(n=300, c=4)
    targets[:, 3] = 0
    targets[:3, 3] = 1  # 3 positives < min_positives
    thr_free = tune_thresholds(scores, targets, smoothing=0.0, min_positives=1)
    thr = tune_thresholds(scores, targets, smoothing=10.0, min_positives=5)
    global_thr, _ = best_f1_threshold(scores.ravel(), targets.ravel() > 0.5, floor=0.05, ceiling=0.95)
    assert thr[3] == pytest.approx(global_thr)
    # Shrinkage moves every class toward the global value, never past it.
    for c in range(3):
        assert abs(thr[c] - global_thr) <= abs(thr_free[c] - global_thr) + 1e-12


def test_ignore_mask_and_floor() -> None:
    scores, targets = _synthetic(n=200, c=3)
    ignore = np.zeros_like(targets, dtype=bool)
    ignore[:, 1] = True  # a class with every entry ignored falls back to the global threshold
    thr = tune_thresholds(scores, targets, ignore=ignore, floor=0.2, ceiling=0.8)
    assert np.all((thr >= 0.2) & (thr <= 0.8))
    with pytest.raises(ValueError, match="probabilities"):
        tune_thresholds(scores * 3 - 1, targets)
    with pytest.raises(ValueError, match=r"\[N, C\]"):
        tune_thresholds(scores[:, 0], targets[:, 0])


def test_save_load_roundtrip_and_errors(tmp_path) -> None:
    names = ["cat", "dog", "digit_0"]
    path = tmp_path / "sub" / "thr.json"
    save_thresholds(path, np.array([0.3, 0.5, 0.71]), names)
    assert json.loads(path.read_text()) == {"cat": 0.3, "dog": 0.5, "digit_0": 0.71}
    np.testing.assert_allclose(load_thresholds(path, ["digit_0", "cat", "dog"]), [0.71, 0.3, 0.5])
    assert not list(path.parent.glob("*.tmp"))  # atomic write leaves no temp file

    with pytest.raises(ValueError, match="unknown class name.*'cow'"):
        path.write_text(json.dumps({"cat": 0.3, "dog": 0.5, "digit_0": 0.7, "cow": 0.5}))
        load_thresholds(path, names)
    with pytest.raises(ValueError, match="no threshold for class.*'digit_0'"):
        path.write_text(json.dumps({"cat": 0.3, "dog": 0.5}))
        load_thresholds(path, names)
    with pytest.raises(ValueError, match=r"numbers in \[0, 1\].*'dog': 1.5"):
        path.write_text(json.dumps({"cat": 0.3, "dog": 1.5, "digit_0": 0.7}))
        load_thresholds(path, names)
    with pytest.raises(ValueError, match="numbers in"):
        path.write_text(json.dumps({"cat": "high", "dog": 0.5, "digit_0": 0.7}))
        load_thresholds(path, names)
    with pytest.raises(ValueError, match="not a valid JSON"):
        path.write_text("{cat: 0.3")
        load_thresholds(path, names)
    with pytest.raises(FileNotFoundError):
        load_thresholds(tmp_path / "missing.json", names)
    with pytest.raises(ValueError, match="one per class"):
        save_thresholds(path, np.array([0.3, 0.5]), names)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        save_thresholds(path, np.array([0.3, 0.5, -0.1]), names)
