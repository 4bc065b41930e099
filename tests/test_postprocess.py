"""The one post-processing rule (sadcl.inference.postprocess): probabilities, thresholds, top-k, display fill-up."""

import numpy as np
import pytest
import torch

from sadcl.inference.postprocess import as_thresholds, predicted_mask, probabilities, select


def test_probabilities_are_the_sigmoid_for_tensors_and_arrays():
    logits = torch.tensor([[-200.0, -1.0, 0.0, 3.0, 200.0]])
    expected = torch.sigmoid(logits)
    assert torch.equal(probabilities(logits), expected)
    with np.errstate(over="raise"):  # no overflow warning on large logits
        np.testing.assert_allclose(probabilities(logits.numpy()), expected.numpy(), rtol=1e-6, atol=0)


def test_as_thresholds_scalar_vector_and_errors():
    assert as_thresholds(None, 3).tolist() == [0.5, 0.5, 0.5]
    assert as_thresholds(0.3, 2).tolist() == [0.3, 0.3]
    assert as_thresholds([0.1, 0.9], 2).tolist() == [0.1, 0.9]
    with pytest.raises(ValueError, match="one per class \\(3\\)"):
        as_thresholds([0.1, 0.9], 3)
    with pytest.raises(ValueError, match="class 1 has nan"):
        as_thresholds([0.1, float("nan")], 2)
    with pytest.raises(ValueError, match="class 0 has 1.5"):
        as_thresholds(1.5, 2)


def test_select_is_strictly_above_threshold_best_first_ties_by_index():
    probs = np.array([0.6, 0.9, 0.5, 0.6, 0.1])
    assert select(probs, 0.5) == [1, 0, 3]  # 0.5 itself is not above 0.5; the tie 0/3 keeps index order
    assert select(probs, np.array([0.95, 0.5, 0.4, 0.7, 0.0])) == [1, 2, 4]
    assert predicted_mask(probs, 0.5).tolist() == [True, True, False, True, False]


def test_top_k_keeps_at_most_k_and_never_adds_below_threshold():
    probs = np.array([0.6, 0.9, 0.2, 0.7])
    assert select(probs, 0.5, top_k=2) == [1, 3]
    assert select(probs, 0.95, top_k=2) == []
    with pytest.raises(ValueError, match="top_k"):
        select(probs, 0.5, top_k=0)


def test_min_labels_fills_up_for_display_only():
    probs = torch.tensor([0.2, 0.3, 0.1])
    assert select(probs, 0.5) == []
    assert select(probs, 0.5, min_labels=1) == [1]
    assert select(probs, 0.25, min_labels=2) == [1, 0]
    assert select(probs, 0.25, top_k=1, min_labels=1) == [1]
