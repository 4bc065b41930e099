"""Parity of the model parts with the official code's outputs (docs/spec.md §9 golden data, §1.10 parameter counts)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from sadcl.config import ModelConfig
from sadcl.models import build_model
from sadcl.models.head import GroupWiseLinear
from sadcl.models.memory_bank import MemoryBank
from sadcl.models.position_encoding import PositionEmbeddingSine

GOLDEN = Path(__file__).parent / "data" / "golden"
F64 = dict(rtol=1e-10, atol=0.0)
F32 = dict(rtol=1e-4, atol=1e-6)


def _load(name: str) -> dict[str, np.ndarray]:
    with np.load(GOLDEN / f"{name}.npz", allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def test_group_wise_linear_matches_official() -> None:
    g = _load("gwl")
    num_classes, dim = g["W"].shape[1:]
    gwl = GroupWiseLinear(num_classes, dim).double()
    with torch.no_grad():
        gwl.W.copy_(torch.from_numpy(g["W"]))
        gwl.b.copy_(torch.from_numpy(g["b"]))
    out = gwl(torch.from_numpy(g["x"]))
    np.testing.assert_allclose(out.detach().numpy(), g["out"], **F64)


def test_group_wise_linear_step_logits() -> None:
    s = _load("step")
    gwl = GroupWiseLinear(s["fc_W"].shape[1], s["fc_W"].shape[2]).double()
    with torch.no_grad():
        gwl.W.copy_(torch.from_numpy(s["fc_W"]))
        gwl.b.copy_(torch.from_numpy(s["fc_b"]))
    np.testing.assert_allclose(gwl(torch.from_numpy(s["hs"])).detach().numpy(), s["logits"], **F64)


@pytest.mark.parametrize(("key", "feats", "h", "w"), [("pe_d2048_14x14", 1024, 14, 14), ("pe_d16_3x5", 8, 3, 5)])
def test_position_encoding_matches_official(key: str, feats: int, h: int, w: int) -> None:
    ref = _load("posenc")[key]
    pe = PositionEmbeddingSine(num_pos_feats=feats).encoding(h, w)
    assert pe.shape == ref.shape and pe.dtype == torch.float32
    np.testing.assert_allclose(pe.numpy(), ref, **F32)


def test_position_encoding_forward_matches_official() -> None:
    ref = _load("posenc")["forward_b2_d16_3x5"]
    out = PositionEmbeddingSine(num_pos_feats=8)(torch.zeros(2, 5, 3, 5))  # input channels don't matter
    np.testing.assert_allclose(out.numpy(), ref, **F32)


def test_memory_bank_update_matches_official() -> None:
    g = _load("membank")
    bank = MemoryBank(*g["bank_before"].shape)
    bank.bank.copy_(torch.from_numpy(g["bank_before"]))
    logits = torch.from_numpy(g["logits"])
    mask = bank.update(torch.from_numpy(g["embedding"]), torch.from_numpy(g["target"]), logits)
    np.testing.assert_array_equal(mask.numpy(), g["updated_mask"])
    np.testing.assert_array_equal(bank.bank.numpy(), g["bank_after"])  # a hard overwrite: exact
    # The pinned case: float32 sigmoid(log 4) == float32(0.8) on a positive is NOT written (strict '>').
    assert torch.sigmoid(logits[0, 0]).item() == pytest.approx(float(g["sigmoid_0_0"]), abs=0)
    assert g["target"][0, 0] != 0 and not mask[0, 0]


def test_memory_bank_update_step_case_float64() -> None:
    s = _load("step")
    bank = MemoryBank(*s["bank_before"].shape).double()
    bank.bank.copy_(torch.from_numpy(s["bank_before"]))
    bank.update(torch.from_numpy(s["hs"]), torch.from_numpy(s["target"]), torch.from_numpy(s["logits"]))
    np.testing.assert_array_equal(bank.bank.numpy(), s["bank_after"])


@pytest.mark.parametrize(("contrastive", "expected"), [(False, 193_579_088), (True, 200_037_456)])
def test_parameter_count_matches_official_log(contrastive: bool, expected: int) -> None:
    # docs/spec.md §1.10: trainable parameters of the logged R101 runs. Built on the meta device: no memory or download.
    with torch.device("meta"):
        model = build_model(ModelConfig(pretrained=False, num_classes=80, contrastive=contrastive))  # COCO's 80
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == expected
