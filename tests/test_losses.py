"""Behaviour of the losses: reference formulas written out here, edge cases, gradchecks, the criterion and registry."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from sadcl.config import ConfigError, LossConfig
from sadcl.losses import AsymmetricLoss, Criterion, PSCLoss, SSCLoss, build_criterion
from support.reference_losses import dense_official_sscl

TAU = 0.2
WEIGHTS = {"asl": 1.0, "sscl": 100.0, "pscl": 50.0}  # the official L = ASL + 100 SSCL + 50 PSCL


def _features(b: int, c: int, d: int, seed: int = 0, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.randn(b, 2, c, d, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _labels(b: int, c: int, seed: int = 0, p: float = 0.4) -> torch.Tensor:
    return (torch.rand(b, c, generator=torch.Generator().manual_seed(seed + 100)) < p).double()


def dense_paper_sscl(features: torch.Tensor, labels: torch.Tensor, tau: float = TAU) -> torch.Tensor:
    """The poster / SupCon formula with every pair materialised: (2BC)^2 similarities, aligned mask, mean over
    anchors."""
    b, v, c, d = features.shape
    z = F.normalize(features, dim=-1).transpose(0, 1).reshape(v * b * c, d)  # row r = (v*B + i)*C + c
    active = labels.repeat(v, 1).reshape(-1) > 0  # y[a mod B, c]
    cls = torch.arange(c).repeat(v * b)
    sim = z @ z.T / tau
    eye = torch.eye(len(z), dtype=torch.bool)
    contrast = active[:, None] & active[None, :] & ~eye  # A(r)
    positive = contrast & (cls[:, None] == cls[None, :])  # P(r)
    log_prob = sim - torch.logsumexp(sim.masked_fill(~contrast, float("-inf")), dim=1, keepdim=True)
    per_row = torch.where(positive, log_prob, 0).sum(1) / positive.sum(1).clamp(min=1)
    if not active.any():
        return sim.sum() * 0
    return -per_row[active].mean()


# ----------------------------------------------------------------------------------------------------- SSCL
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sscl_paper_equals_dense_reference(seed: int) -> None:
    features, labels = _features(5, 6, 16, seed), _labels(5, 6, seed)
    labels[0] = 0  # an image without labels
    labels[:, -1] = 0  # a class without positives
    f1, f2 = features.clone().requires_grad_(), features.clone().requires_grad_()
    ours = SSCLoss(variant="paper")(f1, labels)
    ref = dense_paper_sscl(f2, labels)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    ours.backward()
    ref.backward()
    torch.testing.assert_close(f1.grad, f2.grad, rtol=1e-10, atol=1e-12)


def test_sscl_official_single_image_is_paper_up_to_shift() -> None:
    """With B = 1 the misaligned mask coincides with the aligned one; what remains are the detached shifts M1 (max over
    classes), M2 (max over the row) and the +1e-5 inside the log, written out here."""
    features, labels = _features(1, 5, 8, seed=3), torch.tensor([[1.0, 1.0, 0.0, 1.0, 0.0]])
    f1, f2 = features.clone().requires_grad_(), features.clone().requires_grad_()
    official = SSCLoss(variant="official")(f1, labels)
    paper = SSCLoss(variant="paper")(f2, labels)

    z = F.normalize(features[0], dim=-1)  # [2, C, D]: sample rows a = 0 (batch), 1 (bank)
    pos = labels[0].bool()
    sim_c = torch.einsum("acd,bcd->cab", z, z) / TAU  # [C, 2, 2]
    m1 = torch.where(pos[:, None, None], sim_c, 0).amax(0)[0, 1]  # the only off-diagonal pair (0, 1), sym.
    zp = z[:, pos].reshape(-1, z.shape[-1])  # the 2K activated features
    sim = zp @ zp.T / TAU
    eye = torch.eye(len(zp), dtype=torch.bool)
    m2 = sim.masked_fill(eye, 0).amax(1).clamp(min=0)
    lse = torch.logsumexp(sim.masked_fill(eye, float("-inf")), 1)
    # Each anchor has exactly one positive (its other view); per anchor: -(S_rp - M1 - log(e^(lse - M2) + 1e-5)).
    sp = torch.cat([sim.diagonal(len(zp) // 2), sim.diagonal(len(zp) // 2)])
    expected = -(sp - m1 - torch.log(torch.exp(lse - m2) + 1e-5)).mean()
    paper_check = -(sp - lse).mean()
    torch.testing.assert_close(paper, paper_check, rtol=1e-12, atol=0)
    torch.testing.assert_close(official, expected, rtol=1e-12, atol=0)
    assert abs(official.item() - paper.item()) > 1e-3  # the shifts really change the value...
    official.backward()
    paper.backward()
    torch.testing.assert_close(f1.grad, f2.grad, rtol=1e-3, atol=1e-7)  # ...not the gradient (up to the 1e-5)


def test_sscl_official_class_max_shift_when_a_pair_shares_every_class() -> None:
    """M1 counts masked classes as 0 unless both sample rows are positive for all C classes (not in the golden data):
    compare with the dense official algorithm of tests/support (itself checked against the golden data)."""
    features, labels = _features(3, 4, 8, seed=5), torch.tensor([[1.0, 1, 1, 1], [1, 1, 1, 1], [0, 1, 0, 1]])
    # The bank view opposite to the batch view: every class's similarity of the pair (i, B + i) is negative, so the
    # max over the C shared classes is negative and differs from max(0, ...).
    features[:, 1] = -features[:, 0] + 0.1 * features[:, 1]
    for lab in (labels, torch.ones(1, 4), torch.ones(2, 4)):
        f = features[: len(lab)]
        torch.testing.assert_close(
            SSCLoss(variant="official")(f, lab), dense_official_sscl(f, lab), rtol=1e-12, atol=1e-12
        )


@pytest.mark.parametrize("variant", ["official", "paper"])
def test_sscl_matches_dense_official_on_random_inputs(variant: str) -> None:
    features, labels = _features(6, 7, 12, seed=7), _labels(6, 7, seed=7, p=0.5)
    loss = SSCLoss(variant=variant)(features, labels)
    if variant == "official":
        torch.testing.assert_close(loss, dense_official_sscl(features, labels), rtol=1e-12, atol=1e-12)
    # The stacked tensor and the list of views give the same loss.
    torch.testing.assert_close(SSCLoss(variant=variant)(list(features.unbind(1)), labels), loss, rtol=0, atol=0)


@pytest.mark.parametrize("variant", ["official", "paper"])
@pytest.mark.parametrize("case", ["zero_labels", "class_without_positive", "single_image", "single_positive"])
def test_sscl_edge_cases_are_finite(variant: str, case: str) -> None:
    b, c = (1, 4) if case == "single_image" else (4, 5)
    features = _features(b, c, 8, seed=11, dtype=torch.float32).requires_grad_()
    labels = _labels(b, c, seed=11, p=0.5)
    if case == "zero_labels":
        labels.zero_()
    elif case == "class_without_positive":
        labels[:, 0] = 0
    elif case == "single_image":
        labels[0, :2] = 1
    else:
        labels.zero_()
        labels[2, 3] = 1
    loss = SSCLoss(variant=variant)(features, labels)
    loss.backward()
    assert loss.dtype == torch.float64 and torch.isfinite(loss)
    assert torch.isfinite(features.grad).all()
    if case == "zero_labels":
        assert loss.item() == 0.0 and not features.grad.any()
    # Non-activated features get no gradient.
    inactive = (labels == 0)[:, None, :, None].expand_as(features)
    assert not features.grad[inactive].any()


def test_sscl_gradcheck_paper() -> None:
    features = _features(2, 3, 5, seed=13).requires_grad_()
    labels = torch.tensor([[1.0, 0, 1], [1, 1, 0]])
    assert torch.autograd.gradcheck(lambda f: SSCLoss(variant="paper")(f, labels), (features,))


def test_sscl_gradcheck_official() -> None:
    """The official shifts are detached, so its gradient is that of the unshifted loss; gradcheck holds where the
    shifts are locally constant: every activated similarity negative (M1 = M2 = 0) and no sample with all classes."""
    labels = torch.tensor([[1.0, 0, 0], [1, 1, 0]])  # K = 3 positives -> 6 activated features
    n, d = 6, 8
    simplex = torch.eye(n, dtype=torch.float64) - 1.0 / n  # pairwise cosine -1/(n-1) < 0
    rotation, _ = torch.linalg.qr(torch.randn(d, d, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))
    rows = (torch.cat([simplex, torch.zeros(n, d - n, dtype=torch.float64)], 1) @ rotation) * 1.7
    features = _features(2, 3, d, seed=17)
    sample, cls = labels.nonzero(as_tuple=True)
    for view in range(2):
        features[sample, view, cls] = rows[view * 3 : (view + 1) * 3]
    features.requires_grad_()
    assert torch.autograd.gradcheck(lambda f: SSCLoss(variant="official")(f, labels), (features,))


def test_sscl_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match="V=2"):
        SSCLoss(variant="official")(torch.randn(2, 3, 4, 5), torch.ones(2, 4))
    with pytest.raises(ValueError, match="labels"):
        SSCLoss()(torch.randn(2, 2, 4, 5), torch.ones(3, 4))
    with pytest.raises(ValueError, match="variant"):
        SSCLoss(variant="dense")  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------------------- PSCL
def test_pscl_equals_formula() -> None:
    g = torch.Generator().manual_seed(21)
    features, protos = torch.randn(6, 4, 8, generator=g, dtype=torch.float64), torch.randn(4, 8, dtype=torch.float64)
    labels = torch.tensor([[1.0, 0, 0, 0], [0, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0], [1, 0, 1, 0]])
    s = F.cosine_similarity(features, protos[None], dim=-1) / 0.07  # [B, C]
    expected = 0.0
    for c in range(4):
        pos = labels[:, c] > 0
        lse_all = torch.logsumexp(s[:, c], 0)
        # A class without positive adds logsumexp - max (official, not shift-invariant).
        expected += (lse_all - torch.logsumexp(s[pos, c], 0)) if pos.any() else (lse_all - s[:, c].max())
    expected = expected / labels.sum()
    torch.testing.assert_close(PSCLoss()(features, protos, labels), expected, rtol=1e-12, atol=0)
    torch.testing.assert_close(PSCLoss()(features, protos[None], labels), expected, rtol=1e-12, atol=0)


def test_pscl_no_positive_returns_zero_with_zero_grad() -> None:
    features, protos = torch.randn(3, 4, 8, requires_grad=True), torch.randn(1, 4, 8, requires_grad=True)
    loss = PSCLoss()(features, protos, torch.zeros(3, 4, dtype=torch.float64))
    loss.backward()
    assert loss.item() == 0.0 and loss.dtype == torch.float64
    assert not features.grad.any() and not protos.grad.any()


def test_pscl_single_image_and_zero_vector_are_finite() -> None:
    features, protos = torch.randn(1, 3, 8), torch.randn(3, 8)
    features[0, 1] = 0  # a zero feature: the eps of the cosine keeps it finite
    features.requires_grad_()
    protos.requires_grad_()
    loss = PSCLoss()(features, protos, torch.tensor([[1.0, 1.0, 0.0]]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(features.grad).all() and torch.isfinite(protos.grad).all()


def test_pscl_gradcheck() -> None:
    """Every class has a positive here: for a positive-free class the official value subtracts a detached max that
    moves with the input, so its gradient is (deliberately, as official) not the derivative of the value."""
    g = torch.Generator().manual_seed(23)
    features = torch.randn(4, 3, 5, generator=g, dtype=torch.float64, requires_grad=True)
    protos = torch.randn(3, 5, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([[1.0, 0, 0], [0, 1, 1], [1, 0, 1], [0, 0, 0]])
    assert torch.autograd.gradcheck(lambda f, p: PSCLoss()(f, p, labels), (features, protos))


# ------------------------------------------------------------------------------------------------------ ASL
def test_asl_ignore_mask_removes_entries() -> None:
    g = torch.Generator().manual_seed(31)
    logits = torch.randn(4, 6, generator=g, requires_grad=True)
    targets = (torch.rand(4, 6, generator=g) < 0.4).float()
    ignore = torch.zeros(4, 6, dtype=torch.bool)
    ignore[1, 2] = ignore[3, 0] = True
    loss_sum = AsymmetricLoss(reduction="sum")
    full = loss_sum(logits, targets)
    masked = loss_sum(logits, targets, ignore)
    per_entry = torch.stack(
        [loss_sum(logits[i : i + 1, j : j + 1], targets[i : i + 1, j : j + 1]) for i, j in ignore.nonzero().tolist()]
    )
    torch.testing.assert_close(masked, full - per_entry.sum())
    masked.backward()
    assert not logits.grad[ignore].any() and logits.grad[~ignore].abs().min() > 0
    # 'mean' divides by the entries kept; 'official' is 1000 x the mean over them (the scale of a fully labelled batch)
    kept = int((~ignore).sum())
    torch.testing.assert_close(AsymmetricLoss(reduction="mean")(logits, targets, ignore), masked / kept)
    torch.testing.assert_close(AsymmetricLoss()(logits, targets, ignore), masked / kept * 1000)


def test_asl_bce_case_is_scaled_bce() -> None:
    logits = torch.randn(5, 7, dtype=torch.float64)
    targets = (torch.rand(5, 7) < 0.3).double()
    asl = AsymmetricLoss(gamma_neg=0, gamma_pos=0, reduction="mean")(logits, targets)
    torch.testing.assert_close(asl, F.binary_cross_entropy_with_logits(logits, targets), rtol=1e-12, atol=0)


def test_asl_rejects_bad_reduction() -> None:
    with pytest.raises(ValueError, match="reduction"):
        AsymmetricLoss(reduction="none")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------ criterion
def _outputs(b: int = 4, s: int = 4, c: int = 5, p: int = 6, seed: int = 41) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "logits": torch.randn(b, c, generator=g),
        "proj_features": torch.randn(b, c, p, generator=g),
        "proj_bank": torch.randn(s, c, p, generator=g),
        "proj_prototypes": torch.randn(c, p, generator=g),
    }


def test_criterion_terms_are_unweighted_and_total_weights_once() -> None:
    out, targets = _outputs(), _labels(4, 5, seed=43, p=0.5)
    asl, sscl, pscl = AsymmetricLoss(), SSCLoss(variant="official"), PSCLoss()
    criterion = Criterion(asl=asl, sscl=sscl, pscl=pscl, weight_dict=WEIGHTS)
    terms = criterion(out, targets)
    assert set(terms) == {"asl", "sscl", "pscl"}
    torch.testing.assert_close(terms["asl"], asl(out["logits"], targets))
    feats = torch.stack([out["proj_features"], out["proj_bank"]], 1)
    torch.testing.assert_close(terms["sscl"], sscl(feats, targets))
    torch.testing.assert_close(terms["pscl"], pscl(out["proj_features"], out["proj_prototypes"], targets))
    expected = terms["asl"] + 100 * terms["sscl"] + 50 * terms["pscl"]
    torch.testing.assert_close(criterion.total(terms), expected)
    weighted = Criterion(asl=asl, sscl=sscl, pscl=pscl, weight_dict={**WEIGHTS, "sscl": 2.0})
    assert weighted.weight_dict == {"asl": 1.0, "sscl": 2.0, "pscl": 50.0}
    torch.testing.assert_close(
        weighted.total(weighted(out, targets)), terms["asl"] + 2 * terms["sscl"] + 50 * terms["pscl"]
    )


def test_criterion_bank_slot_is_row_modulo_slots() -> None:
    out, targets = _outputs(b=5, s=2), _labels(5, 5, seed=47, p=0.5)
    sscl = SSCLoss(variant="official")
    terms = Criterion(asl=AsymmetricLoss(), sscl=sscl, weight_dict=WEIGHTS)(out, targets)
    bank_view = out["proj_bank"][torch.tensor([0, 1, 0, 1, 0])]
    torch.testing.assert_close(terms["sscl"], sscl(torch.stack([out["proj_features"], bank_view], 1), targets))
    assert set(terms) == {"asl", "sscl"}


def test_criterion_sscl_min_confidence_activates_confident_positives_only() -> None:
    out, targets = _outputs(), _labels(4, 5, seed=53, p=0.6)
    sscl, pscl = SSCLoss(), PSCLoss()
    out["logits"] = torch.where(torch.arange(5) % 2 == 0, 3.0, -3.0).expand(4, 5).clone()  # classes 0, 2, 4 confident
    plain = Criterion(asl=AsymmetricLoss(), sscl=sscl, pscl=pscl, weight_dict=WEIGHTS)(out, targets)
    crit = Criterion(asl=AsymmetricLoss(), sscl=sscl, pscl=pscl, weight_dict=WEIGHTS, sscl_min_confidence=0.5)
    terms = crit(out, targets)
    confident = targets * (torch.arange(5) % 2 == 0)
    feats = torch.stack([out["proj_features"], out["proj_bank"]], 1)
    torch.testing.assert_close(terms["sscl"], sscl(feats, confident))
    assert not torch.allclose(terms["sscl"], plain["sscl"])  # the unconfident positives did count before
    torch.testing.assert_close(terms["pscl"], plain["pscl"])  # PSCL and ASL see every label
    torch.testing.assert_close(terms["asl"], plain["asl"])
    low = Criterion(asl=AsymmetricLoss(), sscl=sscl, weight_dict=WEIGHTS, sscl_min_confidence=0.0)(out, targets)
    torch.testing.assert_close(low["sscl"], plain["sscl"])  # every sigmoid is > 0: nothing left out
    assert build_criterion(LossConfig(sscl_min_confidence=0.5)).sscl_min_confidence == 0.5
    with pytest.raises(ConfigError, match="loss.sscl_min_confidence"):
        LossConfig(sscl_min_confidence=1.0)


def test_criterion_contrastive_warmup_ramps_the_contrastive_weights_only() -> None:
    out, targets = _outputs(), _labels(4, 5, seed=59, p=0.5)
    crit = Criterion(asl=AsymmetricLoss(), sscl=SSCLoss(), pscl=PSCLoss(), weight_dict=WEIGHTS, contrastive_warmup=0.5)
    terms = crit(out, targets)
    assert crit.weights(0.0) == {"asl": 1.0, "sscl": 0.0, "pscl": 0.0}
    assert crit.weights(0.25) == {"asl": 1.0, "sscl": 50.0, "pscl": 25.0}
    assert crit.weights(0.5) == crit.weights(0.9) == crit.weights(None) == WEIGHTS
    torch.testing.assert_close(crit.total(terms, progress=0.0), terms["asl"])
    torch.testing.assert_close(crit.total(terms, progress=0.25), terms["asl"] + 50 * terms["sscl"] + 25 * terms["pscl"])
    off = Criterion(asl=AsymmetricLoss(), sscl=SSCLoss(), pscl=PSCLoss(), weight_dict=WEIGHTS)
    assert off.weights(0.0) == WEIGHTS  # no warm-up: the official full weights from the first step
    assert build_criterion(LossConfig(contrastive_warmup=0.3)).contrastive_warmup == 0.3
    with pytest.raises(ConfigError, match="loss.contrastive_warmup"):
        LossConfig(contrastive_warmup=1.5)


def test_criterion_asl_only_and_missing_outputs() -> None:
    out, targets = _outputs(), _labels(4, 5)
    assert set(Criterion(asl=AsymmetricLoss(), weight_dict=WEIGHTS)({"logits": out["logits"]}, targets)) == {"asl"}
    partial = {"logits": out["logits"], "proj_features": out["proj_features"]}
    with pytest.raises(KeyError, match="proj_bank"):
        Criterion(asl=AsymmetricLoss(), sscl=SSCLoss(), weight_dict=WEIGHTS)(partial, targets)


def test_criterion_passes_ignore_to_asl() -> None:
    out, targets = _outputs(), _labels(4, 5)
    ignore = torch.zeros(4, 5, dtype=torch.bool)
    ignore[0] = True
    asl = AsymmetricLoss()
    terms = Criterion(asl=asl, weight_dict=WEIGHTS)(out, targets, ignore)
    torch.testing.assert_close(terms["asl"], asl(out["logits"], targets, ignore))


def test_build_criterion_from_config() -> None:
    cfg = LossConfig(gamma_neg=0.0, sscl_variant="official", weight_pscl=5.0)
    crit = build_criterion(cfg)
    assert isinstance(crit.sscl, SSCLoss) and crit.sscl.variant == "official" and isinstance(crit.pscl, PSCLoss)
    assert crit.asl.gamma_neg == 0.0 and crit.weight_dict == {"asl": 1.0, "sscl": 100.0, "pscl": 5.0}
    baseline = build_criterion(LossConfig(), contrastive=False)
    assert baseline.sscl is None and baseline.pscl is None and not baseline.contrastive


# ---------------------------------------------------------------------------------------- the dense reference
def test_dense_official_reference_matches_golden() -> None:
    """The dense official SSCL of tests/support (written from the spec) reproduces the official golden values."""
    import numpy as np

    golden = Path(__file__).parent / "data" / "golden"
    for case in ("sscl_b4_c5_d32", "sscl_b16_c20_d32_membank"):
        with np.load(golden / f"{case}.npz") as g:
            value = dense_official_sscl(torch.from_numpy(g["features"]), torch.from_numpy(g["labels"]))
            np.testing.assert_allclose(value.item(), g["loss"], rtol=1e-10)


def test_bool_labels_are_accepted() -> None:
    out, targets = _outputs(), _labels(4, 5, p=0.5)
    crit = Criterion(asl=AsymmetricLoss(), sscl=SSCLoss(), pscl=PSCLoss(), weight_dict=WEIGHTS)
    as_float = crit(out, targets.float())
    as_bool = crit(out, targets.bool())
    for name, value in as_float.items():
        torch.testing.assert_close(as_bool[name], value)


@pytest.mark.parametrize("variant", ["official", "paper"])
def test_sscl_small_temperature_float32_is_finite(variant: str) -> None:
    """1/tau = 100 overflows exp in float32 on the (masked) self-similarity; it must not leak into the gradient."""
    features = _features(3, 4, 8, seed=53, dtype=torch.float32).requires_grad_()
    labels = _labels(3, 4, seed=53, p=0.6).float()
    loss = SSCLoss(temperature=0.01, variant=variant)(features, labels)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(features.grad).all()
