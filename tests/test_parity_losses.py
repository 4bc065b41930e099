"""Parity of the losses and of one composed training step with the official code (docs/spec.md §2, §9 golden data)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from sadcl.losses import AsymmetricLoss, Criterion, PSCLoss, SSCLoss

GOLDEN = Path(__file__).parent / "data" / "golden"
F64 = dict(rtol=1e-10, atol=1e-14)
F32 = dict(rtol=1e-4, atol=1e-6)

# The four ASL settings of the golden data (docs/spec.md §9.3).
ASL_CONFIGS = {
    "script": dict(gamma_neg=4, gamma_pos=0, clip=0, eps=1e-5, detach_focal_weight=True),
    "ckpt": dict(gamma_neg=0, gamma_pos=0, clip=0, eps=1e-5, detach_focal_weight=True),
    "config_default": dict(gamma_neg=2, gamma_pos=0, clip=0, eps=1e-5, detach_focal_weight=False),
    "ctor_default": dict(gamma_neg=4, gamma_pos=1, clip=0.05, eps=1e-5, detach_focal_weight=False),
}
ASL_CASES = ["asl_b4_c5", "asl_b16_c20", "asl_b16_c80", "asl_b16_c80_f32"]
SSCL_CASES = [
    "sscl_b4_c5_d32",
    "sscl_b16_c20_d32_membank",
    "sscl_b4_c80_d1024_f32",
    "sscl_b8_c80_d32_membank",
    "sscl_zero_labels",
]
PSCL_CASES = ["pscl_b4_c5_d32", "pscl_b16_c20_d32_proto2d", "pscl_b4_c80_d1024_f32", "pscl_b16_c80_d32"]


def _load(name: str) -> dict[str, np.ndarray]:
    with np.load(GOLDEN / f"{name}.npz", allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def _tol(*arrays: np.ndarray) -> dict[str, float]:
    """float32 tolerances if any input is float32, else float64 ones."""
    return F32 if any(a.dtype == np.float32 for a in arrays) else F64


def _close(actual: torch.Tensor, expected: np.ndarray, tol: dict[str, float]) -> None:
    np.testing.assert_allclose(actual.detach().numpy(), expected, **tol)


@pytest.mark.parametrize("cfg", list(ASL_CONFIGS))
@pytest.mark.parametrize("case", ASL_CASES)
def test_asl_matches_official(case: str, cfg: str) -> None:
    g = _load(case)
    logits = torch.tensor(g["logits"], requires_grad=True)
    loss = AsymmetricLoss(**ASL_CONFIGS[cfg])(logits, torch.from_numpy(g["targets"]))
    loss.backward()
    tol = _tol(g["logits"])
    assert loss.dtype == torch.float64  # float64 targets promote, as official
    _close(loss, g[f"{cfg}/loss"], tol)
    assert logits.grad.dtype == logits.dtype
    _close(logits.grad, g[f"{cfg}/grad_logits"], tol)


def test_asl_spot_values() -> None:
    g = _load("asl_b4_c5")
    logits, targets = torch.from_numpy(g["logits"]), torch.from_numpy(g["targets"])
    assert AsymmetricLoss(**ASL_CONFIGS["script"])(logits, targets).item() == pytest.approx(2008.1346643639577, 1e-12)
    assert AsymmetricLoss(**ASL_CONFIGS["ckpt"])(logits, targets).item() == pytest.approx(2277.6882590016685, 1e-12)


@pytest.mark.parametrize("case", SSCL_CASES)
def test_sscl_official_matches_official(case: str) -> None:
    g = _load(case)
    features = torch.tensor(g["features"], requires_grad=True)
    loss = SSCLoss(variant="official")(features, torch.from_numpy(g["labels"]))
    loss.backward()
    tol = _tol(g["features"])
    assert loss.dtype == torch.float64
    _close(loss, g["loss"], tol)
    assert torch.isfinite(features.grad).all()
    _close(features.grad, g["grad_features"], tol)


def test_sscl_spot_values_and_misalignment() -> None:
    g = _load("sscl_b4_c5_d32")
    features, labels = torch.from_numpy(g["features"]), torch.from_numpy(g["labels"])
    assert SSCLoss(variant="official")(features, labels).item() == pytest.approx(0.8057837546950722, rel=1e-12)
    g = _load("sscl_b16_c20_d32_membank")
    value = SSCLoss(variant="official")(torch.from_numpy(g["features"]), torch.from_numpy(g["labels"])).item()
    assert value == pytest.approx(1.3399460219787203, rel=1e-12)


def test_sscl_zero_labels_is_exactly_zero_and_connected() -> None:
    g = _load("sscl_zero_labels")
    for variant in ("official", "paper"):
        features = torch.tensor(g["features"], requires_grad=True)
        loss = SSCLoss(variant=variant)(features, torch.from_numpy(g["labels"]))
        assert loss.item() == 0.0 and loss.requires_grad
        loss.backward()
        assert features.grad is not None and not features.grad.any()


@pytest.mark.parametrize("case", PSCL_CASES)
def test_pscl_matches_official(case: str) -> None:
    g = _load(case)
    features = torch.tensor(g["semantic_embed"], requires_grad=True)
    prototypes = torch.tensor(g["proto_embed"], requires_grad=True)
    loss = PSCLoss()(features, prototypes, torch.from_numpy(g["target"]))
    loss.backward()
    tol = _tol(g["semantic_embed"])
    assert loss.dtype == torch.float64
    _close(loss, g["loss"], tol)
    _close(features.grad, g["grad_semantic_embed"], tol)
    assert prototypes.grad.shape == g["grad_proto_embed"].shape
    _close(prototypes.grad, g["grad_proto_embed"], tol)


def test_pscl_spot_value() -> None:
    g = _load("pscl_b4_c5_d32")
    loss = PSCLoss()(
        torch.from_numpy(g["semantic_embed"]), torch.from_numpy(g["proto_embed"]), torch.from_numpy(g["target"])
    )
    assert loss.item() == pytest.approx(0.10153415656465303, rel=1e-12)


def test_composed_step_matches_official() -> None:
    """One official training step (docs/spec.md §1.9, §3.3): logits, projections, 3 losses, backward, bank update."""
    from sadcl.models.head import GroupWiseLinear, ProjectionHead
    from sadcl.models.memory_bank import MemoryBank

    s = _load("step")
    batch, num_classes, d0 = s["hs"].shape
    d1 = s["proj_l1_weight"].shape[0]
    proj = ProjectionHead(d0, s["proj_l0_weight"].shape[0], d1).double()
    fc = GroupWiseLinear(num_classes, d0).double()
    bank = MemoryBank(batch, num_classes, d0, threshold=0.8).double()
    with torch.no_grad():
        proj.layers[0].weight.copy_(torch.from_numpy(s["proj_l0_weight"]))
        proj.layers[0].bias.copy_(torch.from_numpy(s["proj_l0_bias"]))
        proj.layers[1].weight.copy_(torch.from_numpy(s["proj_l1_weight"]))
        proj.layers[1].bias.copy_(torch.from_numpy(s["proj_l1_bias"]))
        fc.W.copy_(torch.from_numpy(s["fc_W"]))
        fc.b.copy_(torch.from_numpy(s["fc_b"]))
        bank.bank.copy_(torch.from_numpy(s["bank_before"]))
    hs = torch.tensor(s["hs"], requires_grad=True)
    prototype = torch.tensor(s["prototype"], requires_grad=True)
    target = torch.from_numpy(s["target"])

    logits = fc(hs)
    z = proj(torch.cat([hs, bank.bank.detach()], dim=0))  # [B + S, C, d1]
    outputs = {"logits": logits, "proj_features": z[:batch], "proj_bank": z[batch:], "proj_prototypes": proj(prototype)}
    criterion = Criterion(
        asl=AsymmetricLoss(**ASL_CONFIGS["script"]),
        sscl=SSCLoss(variant="official"),
        pscl=PSCLoss(),
        weight_dict={"asl": 1.0, "sscl": 100.0, "pscl": 50.0},  # the official weights
    )
    terms = criterion(outputs, target)
    total = criterion.total(terms)
    bank.update(hs.detach(), target, logits.detach())  # official: after the losses, before backward
    total.backward()

    _close(logits, s["logits"], F64)
    _close(terms["asl"], s["loss_asl"], F64)
    _close(100 * terms["sscl"], s["loss_sscl_x100"], F64)
    _close(50 * terms["pscl"], s["loss_pscl_x50"], F64)
    _close(total, s["loss_total"], F64)
    assert total.item() == pytest.approx(345.6556629154433, rel=1e-12)
    grads = {
        "hs": hs.grad,
        "prototype": prototype.grad,
        "fc_W": fc.W.grad,
        "fc_b": fc.b.grad,
        "proj_l0_weight": proj.layers[0].weight.grad,
        "proj_l0_bias": proj.layers[0].bias.grad,
        "proj_l1_weight": proj.layers[1].weight.grad,
        "proj_l1_bias": proj.layers[1].bias.grad,
    }
    for name, grad in grads.items():
        _close(grad, s[f"grad_{name}"], F64)
    _close(bank.bank, s["bank_after"], F64)
