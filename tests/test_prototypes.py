"""Prototype rules on a hand-made case."""

import pytest
import torch

from sadcl.training.prototypes import prototypes_from_features

# 3 samples, 2 classes, d = 2. Class 0: positives 0, 1 (sample 1 not confident). Class 1: positive 2 only.
FEATS = torch.tensor([[[2.0, 0.0], [9.0, 9.0]], [[4.0, 4.0], [9.0, 9.0]], [[7.0, 7.0], [0.0, 6.0]]])
LOGITS = torch.tensor([[5.0, 5.0], [-5.0, 5.0], [5.0, 5.0]])
TARGETS = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])


def test_official_rule_divides_by_all_positives() -> None:
    protos, counts = prototypes_from_features(FEATS, LOGITS, TARGETS, threshold=0.85, rule="official")
    assert torch.allclose(protos, torch.tensor([[1.0, 0.0], [0.0, 6.0]]))
    assert counts == {"positives": [2, 1], "selected": [1, 1], "fallback": [], "absent": []}


def test_mean_selected_and_kmeans() -> None:
    protos, _ = prototypes_from_features(FEATS, LOGITS, TARGETS, rule="mean_selected")
    assert torch.allclose(protos, torch.tensor([[2.0, 0.0], [0.0, 6.0]]))
    protos, _ = prototypes_from_features(FEATS, LOGITS, TARGETS, rule="kmeans", k=2)
    assert torch.allclose(protos, torch.tensor([[2.0, 0.0], [0.0, 6.0]]))


def test_unknown_rule() -> None:
    with pytest.raises(ValueError, match="official"):
        prototypes_from_features(FEATS, LOGITS, TARGETS, rule="median")
