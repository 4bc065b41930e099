"""SADCL's contrastive terms on every head with label-level features (issue #28): query2label, csra and ml_decoder
with full decoding get the projection head, prototypes and memory bank (``sadcl.models.contrastive``) and SADCL's two
stages; linear and grouped ml_decoder refuse them with one line. CSRA's label-level features give its logits back."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from sadcl.ablate.rows import BUILTIN_ROWS, custom_row
from sadcl.cli import main
from sadcl.config import ConfigError, LossConfig
from sadcl.losses import build_criterion
from sadcl.models import CONTRASTIVE_PREFIXES, CSRAClassifier, MLDecoderClassifier, build_model
from support.models import TINY_MODEL_OVERRIDES, MapBackbone, normalised_rows, tiny_model_config

pytest.importorskip("timm")

LABEL_HEADS = ("query2label", "csra", "ml_decoder")
"""The heads with label-level features (ml_decoder: full decoding, ``ml_decoder_groups`` null)."""


# ------------------------------------------------------------------------------------------------- the model
@pytest.mark.parametrize("head", LABEL_HEADS)
def test_contrastive_head_outputs_features_and_projections(head: str) -> None:
    torch.manual_seed(0)
    baseline = build_model(tiny_model_config(head=head)).eval()
    model = build_model(tiny_model_config(head=head, contrastive=True, proj_dim=16, bank_slots=2)).eval()
    d = {"csra": 512}.get(head, 32)  # CSRA: the backbone's channels (ResNet-18); the decoders: hidden_dim
    assert model.contrastive and model.feature_dim == d
    skipped = model.load_baseline_state_dict(baseline.state_dict())  # stage 2 starts from stage 1's weights
    assert skipped and all(k.startswith(CONTRASTIVE_PREFIXES) for k in skipped)
    assert {"prototypes", "memory_bank.bank", "proj_head.layers.0.weight"} <= set(model.state_dict())
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        out, ref = model(x, return_attn=True), baseline(x, return_attn=True)  # the same attention path
    assert out["features"].shape == (3, 5, d)
    assert out["proj_features"].shape == (3, 5, 16) and out["proj_bank"].shape == (2, 5, 16)
    assert out["proj_prototypes"].shape == (5, 16) and out["attn"].shape == (3, 5, 2, 2)
    assert torch.equal(out["logits"], ref["logits"]) and torch.equal(out["features"], ref["features"])
    assert not any(k.startswith("proj_") for k in ref)

    # The bank, the prototypes and the loss: as for SADCL.
    model.load_prototypes(torch.ones(5, d))
    assert torch.equal(model.memory_bank.bank, torch.ones(2, 5, d))
    with pytest.raises(ValueError, match=rf"\[5, {d}\].*\[5, {d + 1}\]"):
        model.load_prototypes(torch.ones(5, d + 1))
    targets = torch.tensor([[1.0, 0, 1, 0, 0], [0, 1, 0, 0, 1], [1, 1, 0, 0, 0]])
    written = model.update_memory_bank(out["features"], targets, torch.full((3, 5), 5.0))
    assert torch.equal(written, targets.bool())
    assert torch.equal(model.memory_bank.bank[1, 1], out["features"][1, 1])
    model.train()
    out = model(x)
    criterion = build_criterion(LossConfig(), contrastive=True)
    terms = criterion(out, targets)
    assert {"asl", "sscl", "pscl"} <= set(terms) and all(torch.isfinite(t) for t in terms.values())
    criterion.total(terms).backward()
    assert model.prototypes.grad is not None and model.proj_head.layers[0].weight.grad.abs().sum() > 0


def test_stage_2_csra_exports_logits_with_onnx_parity(tmp_path: Path) -> None:
    """A stage-2 model exports logits and probabilities only (test_export.py checks Query2Label's; the decoders share
    its path); four CSRA heads include T = infinity's one-hot attention."""
    pytest.importorskip("onnxruntime")
    from sadcl.ship.export import OnnxRunner, export_onnx

    torch.manual_seed(0)
    cfg = tiny_model_config(head="csra", csra_heads=4, contrastive=True, proj_dim=16, bank_slots=2)
    model = build_model(cfg).eval()
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
    info = export_onnx(model, tmp_path / "m.onnx", img_size=64)
    assert info["max_abs_diff"] <= 1e-4 and info["outputs"] == ["logits", "probs"]  # no proj_* output
    got = OnnxRunner(tmp_path / "m.onnx", threads=1)(x.numpy())
    np.testing.assert_allclose(got["logits"], ref["logits"].numpy(), atol=1e-4)


@pytest.mark.parametrize("settings", [{"head": "linear"}, {"head": "ml_decoder", "ml_decoder_groups": 2}])
def test_heads_without_label_features_refuse_the_contrastive_terms(settings: dict) -> None:
    cfg = tiny_model_config(**settings, contrastive=True)
    assert not cfg.has_label_features
    with pytest.raises(ConfigError) as info:
        build_model(cfg)
    message = str(info.value)
    assert "\n" not in message and "has no label-level features" in message
    assert "model.head=query2label, csra or ml_decoder with full decoding" in message
    backbone = MapBackbone(6)
    with pytest.raises(ValueError, match="full decoding"):
        MLDecoderClassifier(backbone=backbone, num_classes=5, num_groups=2, hidden_dim=8, nhead=2, contrastive=True)


def test_label_heads_are_two_stage_unless_single_stage() -> None:
    from sadcl.config import load_config
    from sadcl.training.train import is_single_stage

    def single(*overrides: str) -> bool:
        return is_single_stage(load_config(None, list(overrides)))

    assert not any(single(f"model.head={h}") for h in LABEL_HEADS)
    assert single("model.head=linear") and single("model.head=ml_decoder", "model.ml_decoder_groups=3")
    assert not single("model.head=ml_decoder", "model.num_classes=5", "model.ml_decoder_groups=5")  # G = C
    assert all(single(f"model.head={h}", "train.single_stage=true") for h in LABEL_HEADS)
    # An ablation row changing the head cannot share the plan's stage 1: it trains one stage at the same budget.
    row = custom_row("csra_mine", ["model.head=csra"])
    assert row.kind == "single" and "train.single_stage=true" in row.settings
    assert "model.prototype_momentum=null" in row.settings  # ASL only, whatever the plan's momentum (as built-ins)


# ---------------------------------------------------------------------------------- CSRA's label-level features
@pytest.mark.parametrize("temperature", [math.inf, 1.0, 3.0])
def test_csra_one_head_feature_gives_the_logit(temperature: float) -> None:
    torch.manual_seed(0)
    head = CSRAClassifier(backbone=MapBackbone(6), num_classes=4, temperatures=(temperature,), lam=0.3).double()
    x = torch.randn(2, 6, 3, 5, dtype=torch.float64)
    out = head(x)
    w = normalised_rows(head.classifiers[0])  # [C, D]
    torch.testing.assert_close(out["logits"], (out["features"] * w).sum(-1))  # logit_c = w_c / ||w_c|| . f_c
    if math.isinf(temperature):  # f_c = mean_i x_i + lambda x_{argmax_i s_i^c}
        s = torch.einsum("bdl,cd->bcl", x.flatten(2), w)
        at_max = x.flatten(2).transpose(1, 2)[torch.arange(2)[:, None], s.argmax(-1)]  # [B, C, D]
        torch.testing.assert_close(out["features"], x.mean((2, 3))[:, None] + 0.3 * at_max)


def test_csra_several_heads_feature_is_the_mean_of_each_heads_vector() -> None:
    torch.manual_seed(0)
    temperatures, lam = (1.0, 2.0, 3.0, math.inf), 0.2
    head = CSRAClassifier(backbone=MapBackbone(6), num_classes=4, temperatures=temperatures, lam=lam).double()
    x = torch.randn(2, 6, 2, 3, dtype=torch.float64)
    out = head(x)
    flat = x.flatten(2)  # [B, D, L]
    per_head, logits = [], torch.zeros(2, 4, dtype=torch.float64)
    for conv, t in zip(head.classifiers, temperatures):
        w = normalised_rows(conv)
        s = torch.einsum("bdl,cd->bcl", flat, w)
        a = nn.functional.one_hot(s.argmax(-1), s.shape[-1]).double() if math.isinf(t) else (t * s).softmax(-1)
        f_h = flat.mean(-1)[:, None] + lam * torch.einsum("bcl,bdl->bcd", a, flat)  # the vector head h classifies
        per_head.append(f_h)
        logits += (f_h * w).sum(-1)
    torch.testing.assert_close(out["logits"], logits)  # logit_c = sum_h w_c^h / ||w_c^h|| . f_c^h
    torch.testing.assert_close(out["features"], torch.stack(per_head).mean(0))
    # lambda = 0: every head classifies the average-pooled map, and f_c gives the logit through the summed classifiers.
    head.lam = 0.0
    out = head(x)
    summed = sum(normalised_rows(conv) for conv in head.classifiers)
    torch.testing.assert_close(out["logits"], (out["features"] * summed).sum(-1))


# --------------------------------------------------------------------------------------------- the pipeline
def test_print_config_shows_the_csra_and_contrastive_settings(capsys: pytest.CaptureFixture) -> None:
    assert main(["train", "--print-config", "model.head=csra", "model.csra_heads=2", "model.proj_dim=64"]) == 0
    model = yaml.safe_load(capsys.readouterr().out)["model"]
    assert model["head"] == "csra" and model["csra_heads"] == 2 and model["csra_lambda"] == 0.1
    assert model["contrastive"] is True and model["proj_dim"] == 64 and "bank_slots" in model


@pytest.fixture(scope="module")
def mom30_32(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from sadcl.data.mom30 import generate_mom30

    root = tmp_path_factory.mktemp("mom30_32")
    generate_mom30(root, size=32, n_train=16, n_val=8, n_test=8, seed=0, progress=False)
    return root


def _tiny_run(root: Path, out: Path) -> list[str]:
    return [
        *TINY_MODEL_OVERRIDES,
        "model.img_size=32",
        "model.bank_slots=4",
        "data.batch_size=8",
        "data.eval_batch_size=16",
        "data.workers=0",
        "data.normalization=imagenet",
        "data.options={}",
        "train.baseline_epochs=1",
        "train.epochs=1",
        "train.max_steps_per_epoch=2",
        "train.progress=false",
        "train.tensorboard=false",
        "train.prototype_threshold=0.3",
        f"data.root={root}",
        f"train.output_dir={out}",
    ]


@pytest.mark.slow
@pytest.mark.parametrize(("head", "dim"), [("csra", 256), ("ml_decoder", 32)])  # CSRA: ResNet-18's stride-16 map
def test_label_heads_train_both_stages_with_sscl_and_pscl(
    head: str, dim: int, mom30_32: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / head
    assert main(["train", *_tiny_run(mom30_32, out), f"model.head={head}"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert set(results) == {"baseline", "sadcl"}
    protos = np.load(out / "prototypes.npy")
    assert protos.shape == (30, dim) and np.isfinite(protos).all()  # stage 1's features, [C, D] of the head
    train = json.loads((out / "sadcl" / "metrics.json").read_text())[0]["train"]
    for term in ("sscl", "pscl"):
        assert math.isfinite(train[f"{term}_unweighted"]) and math.isfinite(train[term])
    stage2 = torch.load(out / "sadcl" / "best.pt", map_location="cpu", weights_only=True)
    assert stage2["model"]["prototypes"].shape == (30, dim)
    assert stage2["model"]["memory_bank.bank"].shape == (4, 30, dim)
    capsys.readouterr()
    ckpt = str(out / "sadcl" / "best.pt")
    assert main(["evaluate", ckpt, "--split", "test"]) == 0  # the stage-2 model reloads for inference


def test_prototypes_that_follow_the_model_make_one_stage_sadcl() -> None:
    from sadcl.config import load_config
    from sadcl.training.train import changed_settings, is_single_stage_sadcl, stage_config

    def stage1(*overrides: str):
        return stage_config(load_config(None, list(overrides)), "baseline")

    follow = "model.prototype_momentum=0.99"
    one = stage1("train.single_stage=true", follow)
    assert one.model.contrastive and one.model.prototype_momentum == 0.99 and one.loss.gamma_neg == 4.0  # stage 1's
    assert not stage1("train.single_stage=true").model.contrastive  # Query2Label straight through, as before
    assert not stage1(follow).model.contrastive  # two stages: stage 1 is still the baseline
    linear = ["model.head=linear", "train.single_stage=true", follow]
    assert not is_single_stage_sadcl(load_config(None, linear))  # no label-level features
    # The built-in row on a config with the momentum set pins it to null: it stays Query2Label straight through.
    assert not stage1(follow, *BUILTIN_ROWS["straight"].settings).model.contrastive
    # One stage reads every setting: a changed contrastive weight is a changed run (stage 1 alone would ignore it).
    a = load_config(None, ["train.single_stage=true", follow])
    b = load_config(None, ["train.single_stage=true", follow, "loss.weight_pscl=1.0"])
    assert any("weight_pscl" in x for x in changed_settings(a, b, ("baseline",)))
    c = load_config(
        None, ["train.single_stage=true", follow, "train.prototype_threshold=0.5", "train.stage2_guard=false"]
    )
    assert changed_settings(a, c, ("baseline",)) == []  # the two-stage recipe's prototype pass and guard: not read
    d = load_config(None, ["train.single_stage=true", follow, "model.prototypes=p.npy"])
    assert stage_config(d, "baseline").model.prototypes == "p.npy"  # where the one stage's prototypes start
    assert any("prototypes" in x for x in changed_settings(a, d, ("baseline",)))


@pytest.mark.slow
def test_one_stage_sadcl_trains_sscl_and_pscl_without_a_stage_1(
    mom30_32: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "one"
    args = ["train", *_tiny_run(mom30_32, out), "train.single_stage=true", "model.prototype_momentum=0.9"]
    assert main([*args, "loss.contrastive_warmup=0.5"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert set(results) == {"baseline"} and results["baseline"]["epochs_run"] == 2  # baseline_epochs + epochs
    assert not (out / "sadcl").exists() and not (out / "prototypes.npy").exists()
    for epoch in json.loads((out / "baseline" / "metrics.json").read_text()):
        assert math.isfinite(epoch["train"]["sscl_unweighted"]) and math.isfinite(epoch["train"]["pscl_unweighted"])
    ckpt = torch.load(out / "baseline" / "best.pt", map_location="cpu", weights_only=True)
    assert ckpt["model"]["prototypes"].shape == (30, 32) and any(k.startswith("proj_head.") for k in ckpt["model"])
    capsys.readouterr()
    assert main(["evaluate", str(out / "baseline" / "best.pt"), "--split", "test"]) == 0
    assert main(["export", str(out / "baseline" / "best.pt"), "--format", "dir", "--out", str(tmp_path / "dir")]) == 0
    card = (tmp_path / "dir" / "README.md").read_text()
    assert "prototypes follow the model (momentum 0.9); one stage, no stage 1" in card  # says how it was trained


def test_grouped_ml_decoder_and_linear_refuse_stage_2_in_one_line(
    mom30_32: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    for head in (["model.head=linear"], ["model.head=ml_decoder", "model.ml_decoder_groups=3"]):
        args = ["train", "--stage", "sadcl", *_tiny_run(mom30_32, tmp_path / "s2"), *head]
        assert main(args) == 2
        errors = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert len(errors) == 1 and "stage 2 (SADCL) needs label-level features" in errors[0]
        assert "csra" in errors[0] and not (tmp_path / "s2" / "sadcl").exists()
