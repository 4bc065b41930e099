"""Metrics: parity with the official voc_mAP (golden map.npz), sklearn cross-checks, hand-computed F1 cases."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

from sadcl.metrics import (
    average_precision,
    mean_average_precision,
    per_class_ap,
    summarize,
    threshold_metrics,
    topk_metrics,
    voc_ap,
)

GOLDEN = Path(__file__).parent / "data" / "golden" / "map.npz"
CASES = ["n50_c5", "n200_c20_twofiles", "n40_c4_ties", "n30_c4_noposclass", "n30_c3_minus1"]


@pytest.fixture(scope="module")
def golden() -> dict[str, np.ndarray]:
    with np.load(GOLDEN) as d:
        return {k: d[k] for k in d.files}


@pytest.mark.parametrize("case", CASES)
def test_per_class_ap_matches_official(golden: dict[str, np.ndarray], case: str) -> None:
    scores, targets = golden[f"{case}/scores"], golden[f"{case}/targets"]
    aps = per_class_ap(scores, targets, interpolation="official")
    np.testing.assert_allclose(aps, golden[f"{case}/aps"], rtol=1e-10, atol=0, equal_nan=True)
    m = mean_average_precision(scores, targets, interpolation="official", nan_policy="official")
    np.testing.assert_allclose(m, golden[f"{case}/mAP"], rtol=1e-10, atol=0, equal_nan=True)


def test_official_nan_policy_vs_omit(golden: dict[str, np.ndarray]) -> None:
    scores, targets = golden["n30_c4_noposclass/scores"], golden["n30_c4_noposclass/targets"]
    assert np.isnan(mean_average_precision(scores, targets, nan_policy="official"))
    omit = mean_average_precision(scores, targets)  # default 'omit'
    np.testing.assert_allclose(omit, np.nanmean(golden["n30_c4_noposclass/aps"]), rtol=1e-12)
    assert np.isnan(per_class_ap(scores, targets)[3])


def test_torch_inputs_give_the_same(golden: dict[str, np.ndarray]) -> None:
    scores, targets = golden["n50_c5/scores"], golden["n50_c5/targets"]
    # The golden scores are float32-representable, so a float32 tensor holds them exactly.
    m = mean_average_precision(torch.tensor(scores, dtype=torch.float32), torch.tensor(targets))
    np.testing.assert_allclose(m, golden["n50_c5/mAP"], rtol=1e-10)


def test_voc_ap_explicit(golden: dict[str, np.ndarray]) -> None:
    ap = voc_ap(golden["voc_ap_explicit/rec"], golden["voc_ap_explicit/prec"])
    np.testing.assert_allclose(ap, golden["voc_ap_explicit/ap"], rtol=1e-10)


def test_minus_one_negative_vs_ignore(golden: dict[str, np.ndarray]) -> None:
    scores, targets = golden["n30_c3_minus1/scores"], golden["n30_c3_minus1/targets"]
    assert (targets == -1).any()
    as_zero = per_class_ap(scores, np.where(targets < 0, 0, targets))
    np.testing.assert_array_equal(per_class_ap(scores, targets, minus_one="negative"), as_zero)
    ignored = per_class_ap(scores, targets, minus_one="ignore")
    via_mask = per_class_ap(scores, targets, ignore=targets < 0)
    np.testing.assert_array_equal(ignored, via_mask)
    for c in range(targets.shape[1]):
        keep = targets[:, c] >= 0
        expected = average_precision(scores[keep, c], targets[keep, c]) * 100
        np.testing.assert_allclose(ignored[c], expected, rtol=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_non_interpolated_ap_equals_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 300))
    targets = (rng.random(n) < 0.3).astype(float)
    targets[0] = 1
    # Rounded scores make ties, which sklearn groups into one threshold.
    scores = np.round(rng.random(n), 1 if seed % 2 else 6)
    ours = average_precision(scores, targets, interpolation="none")
    np.testing.assert_allclose(ours, average_precision_score(targets, scores), rtol=1e-12)


def test_non_interpolated_ap_with_ignore_equals_sklearn_on_subset() -> None:
    rng = np.random.default_rng(7)
    scores, targets = rng.random((60, 4)), (rng.random((60, 4)) < 0.4).astype(float)
    ignore = rng.random((60, 4)) < 0.2
    aps = per_class_ap(scores, targets, interpolation="none", ignore=ignore)
    for c in range(4):
        keep = ~ignore[:, c]
        np.testing.assert_allclose(aps[c], 100 * average_precision_score(targets[keep, c], scores[keep, c]), rtol=1e-12)


def test_interpolated_ap_is_at_least_non_interpolated() -> None:
    rng = np.random.default_rng(3)
    for _ in range(10):
        scores, targets = rng.random(50), (rng.random(50) < 0.3).astype(float)
        targets[0] = 1
        assert average_precision(scores, targets) >= average_precision(scores, targets, interpolation="none") - 1e-12


def test_hand_computed_ap() -> None:
    # Ranking: pos, neg, pos, neg -> precisions at the hits 1 and 2/3; interpolated = non-interpolated here.
    scores, targets = np.array([0.9, 0.8, 0.7, 0.1]), np.array([1, 0, 1, 0])
    assert average_precision(scores, targets) == pytest.approx((1 + 2 / 3) / 2, rel=1e-12)
    # pos, neg, neg, pos: non-interpolated (1 + 1/2)/2; interpolated the same (precision rises nowhere after).
    assert average_precision(np.array([0.9, 0.8, 0.7, 0.1]), np.array([1, 0, 0, 1])) == pytest.approx(0.75)
    # neg, pos, pos: precision 1/2 then 2/3 -> interpolated envelope 2/3 for both steps.
    s3, t3 = np.array([0.9, 0.8, 0.7]), np.array([0, 1, 1])
    assert average_precision(s3, t3) == pytest.approx(2 / 3)
    assert average_precision(s3, t3, interpolation="none") == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert np.isnan(average_precision(np.array([0.3, 0.2]), np.array([0, 0])))


def test_bad_arguments_raise() -> None:
    with pytest.raises(ValueError, match="same shape"):
        per_class_ap(np.zeros((3, 2)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="NaN"):
        mean_average_precision(np.array([[np.nan, 0.1]]), np.ones((1, 2)))
    with pytest.raises(ValueError, match="interpolation"):
        per_class_ap(np.zeros((3, 2)), np.ones((3, 2)), interpolation="11point")
    with pytest.raises(ValueError, match="nan_policy"):
        mean_average_precision(np.zeros((3, 2)), np.ones((3, 2)), nan_policy="zero")
    with pytest.raises(ValueError, match="one value per class"):
        threshold_metrics(np.zeros((3, 2)), np.ones((3, 2)), threshold=np.array([0.5, 0.5, 0.5]))


# Hand-computed threshold case: 4 samples x 3 classes, threshold 0.5.
SCORES = np.array(
    [
        [0.9, 0.2, 0.6],
        [0.8, 0.7, 0.1],
        [0.3, 0.6, 0.4],
        [0.4, 0.1, 0.7],
    ]
)
TARGETS = np.array(
    [
        [1, 0, 1],
        [0, 1, 0],
        [1, 1, 0],
        [0, 0, 0],
    ]
)
# Predictions (> 0.5): [1,0,1], [1,1,0], [0,1,0], [0,0,1]
# class 0: tp 1 (s0), fp 1 (s1), fn 1 (s2) -> P 1/2, R 1/2, F1 1/2
# class 1: tp 2 (s1, s2), fp 0, fn 0 -> P 1, R 1, F1 1
# class 2: tp 1 (s0), fp 1 (s3), fn 0 -> P 1/2, R 1, F1 2/3
# overall: tp 4, fp 2, fn 1 -> OP 4/6, OR 4/5


def test_threshold_metrics_hand_computed() -> None:
    m = threshold_metrics(SCORES, TARGETS, threshold=0.5)
    cp, cr = (0.5 + 1 + 0.5) / 3, (0.5 + 1 + 1) / 3
    op, orr = 4 / 6, 4 / 5
    expected = {
        "CP": 100 * cp,
        "CR": 100 * cr,
        "CF1": 100 * 2 * cp * cr / (cp + cr),
        "CF1_mean_per_class": 100 * (0.5 + 1 + 2 / 3) / 3,
        "OP": 100 * op,
        "OR": 100 * orr,
        "OF1": 100 * 2 * op * orr / (op + orr),
    }
    assert m.keys() == expected.keys()
    for k, v in expected.items():
        assert m[k] == pytest.approx(v, rel=1e-12), k


def test_threshold_is_strict_and_per_class() -> None:
    # Score exactly at the threshold is not predicted (official `score > thr`).
    m = threshold_metrics(np.array([[0.5]]), np.array([[1]]), threshold=0.5)
    assert m["OR"] == 0 and m["OP"] == 0 and m["CF1"] == 0
    # Per-class thresholds: class 0 at 0.85 drops the fp of sample 1 (0.8) and keeps the tp (0.9).
    m = threshold_metrics(SCORES, TARGETS, threshold=np.array([0.85, 0.5, 0.5]))
    assert m["CP"] == pytest.approx(100 * (1 + 1 + 0.5) / 3)
    assert m["OP"] == pytest.approx(100 * 4 / 5)


def test_zero_division_conventions() -> None:
    # Class 1 has no positives and is never predicted: P = R = F1 = 0 for it.
    scores = np.array([[0.9, 0.1], [0.2, 0.3]])
    targets = np.array([[1, 0], [0, 0]])
    m = threshold_metrics(scores, targets)
    assert m["CP"] == pytest.approx(50) and m["CR"] == pytest.approx(50)
    assert m["CF1_mean_per_class"] == pytest.approx(50)
    assert m["OP"] == pytest.approx(100) and m["OR"] == pytest.approx(100) and m["OF1"] == pytest.approx(100)
    # Nothing predicted, nothing positive: everything 0, no warnings or NaN.
    m = threshold_metrics(np.zeros((2, 2)), np.zeros((2, 2)))
    assert all(v == 0 for v in m.values())


def test_ignore_mask_in_threshold_metrics() -> None:
    # Ignoring the fp of class 0 (sample 1) and the fn of class 0 (sample 2).
    ignore = np.zeros_like(TARGETS, dtype=bool)
    ignore[1, 0] = ignore[2, 0] = True
    m = threshold_metrics(SCORES, TARGETS, ignore=ignore)
    assert m["CP"] == pytest.approx(100 * (1 + 1 + 0.5) / 3)
    assert m["CR"] == pytest.approx(100 * (1 + 1 + 1) / 3)
    assert m["OP"] == pytest.approx(100 * 4 / 5) and m["OR"] == pytest.approx(100 * 4 / 4)
    # Equal to dropping those entries: ignored entries move to "no label, no prediction".
    s2, t2 = SCORES.copy(), TARGETS.copy()
    s2[ignore], t2[ignore] = 0.0, 0
    m2 = threshold_metrics(s2, t2)
    for k in ("OP", "OR", "OF1", "CP", "CR"):
        assert m[k] == pytest.approx(m2[k])


def test_topk_metrics_hand_computed() -> None:
    # k = 1: predictions are the row argmax: class 0, 0, 1, 2.
    m = topk_metrics(SCORES, TARGETS, k=1)
    # class 0: tp 1 (s0), fp 1 (s1), fn 1 (s2); class 1: tp 1 (s2), fn 1 (s1); class 2: fp 1 (s3), fn 1 (s0)
    assert m["CP"] == pytest.approx(100 * (0.5 + 1 + 0) / 3)
    assert m["CR"] == pytest.approx(100 * (0.5 + 0.5 + 0) / 3)
    assert m["OP"] == pytest.approx(100 * 2 / 4) and m["OR"] == pytest.approx(100 * 2 / 5)
    # k = number of classes predicts everything; the official top-k variant also needs score > threshold.
    m_all = topk_metrics(SCORES, TARGETS, k=3)
    assert m_all["OR"] == pytest.approx(100) and m_all["OP"] == pytest.approx(100 * 5 / 12)
    m_thr = topk_metrics(SCORES, TARGETS, k=3, threshold=0.5)
    assert m_thr == pytest.approx(threshold_metrics(SCORES, TARGETS, threshold=0.5))


def test_summarize_keys_and_values() -> None:
    rng = np.random.default_rng(0)
    scores, targets = rng.random((40, 6)), (rng.random((40, 6)) < 0.3).astype(float)
    targets[:, 5] = 0
    out = summarize(scores, targets, threshold=0.5)
    for k in ("mAP", "CP", "CR", "CF1", "CF1_mean_per_class", "OP", "OR", "OF1", "CP_top3", "CF1_top3", "OF1_top3"):
        assert isinstance(out[k], float), k
    assert out["per_class_AP"].shape == (6,) and np.isnan(out["per_class_AP"][5])
    assert out["num_classes_with_positives"] == 5
    assert out["mAP"] == pytest.approx(np.nanmean(out["per_class_AP"]))
    assert out["OF1"] == pytest.approx(threshold_metrics(scores, targets)["OF1"])
    assert out["OF1_top3"] == pytest.approx(topk_metrics(scores, targets, k=3)["OF1"])
