"""``model.head``: every head in ``HEADS`` gets the same checks (build, shapes, attention, gradients, label-level
features or the clear error, ONNX parity, ``--print-config``), and the peers' heads are checked against their papers'
definitions: CSRA (Zhu & Wu, ICCV 2021) and ML-Decoder (Ridnik et al., WACV 2023)."""

from __future__ import annotations

import json
import math
import typing
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch import Tensor, nn

from sadcl.cli import main
from sadcl.config import HEADS, ConfigError, ModelConfig
from sadcl.models import CSRAClassifier, MLDecoderClassifier, build_model, label_features
from sadcl.models.csra import csra_temperatures
from sadcl.models.ml_decoder import GroupFC
from support.models import MapBackbone, normalised_rows, tiny_model_config

pytest.importorskip("timm")


# ---------------------------------------------------------------------------------------------------- every head
def test_heads_is_the_one_list_of_values() -> None:
    assert typing.get_args(typing.get_type_hints(ModelConfig)["head"]) == HEADS
    assert {"query2label", "linear", "csra", "ml_decoder"} <= set(HEADS)


@pytest.mark.parametrize("head", HEADS)
def test_every_head_builds_runs_and_trains(head: str) -> None:
    torch.manual_seed(0)
    model = build_model(tiny_model_config(head=head)).eval()
    assert model.contrastive is False
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = model(x, return_attn=True)
    assert out["logits"].shape == (2, 5) and torch.isfinite(out["logits"]).all()
    attn = out["attn"]
    assert attn.shape == (2, 5, 2, 2) and (attn >= 0).all()  # ResNet-18 at 64 px: a 2 x 2 map
    torch.testing.assert_close(attn.sum((2, 3)), torch.ones(2, 5))
    if "features" in out:
        assert out["features"].shape[:2] == (2, 5)
        assert label_features(out) is out["features"]
    else:
        with pytest.raises(ValueError, match="no label-level features"):
            label_features(out)

    model.train()
    model(x)["logits"].logsumexp(1).sum().backward()
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    no_grad = [n for n, p in named if not n.startswith("backbone.") and (p.grad is None or not p.grad.abs().sum())]
    assert not no_grad, f"head parameters without gradient: {no_grad}"
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in named if n.startswith("backbone."))
    assert all(torch.isfinite(p.grad).all() for _, p in named if p.grad is not None)


@pytest.mark.parametrize("head", [*HEADS, "ml_decoder_grouped"])
def test_heads_with_label_features_take_the_contrastive_extras_and_the_others_refuse(head: str) -> None:
    settings = {"head": "ml_decoder", "ml_decoder_groups": 2} if head == "ml_decoder_grouped" else {"head": head}
    cfg = tiny_model_config(**settings, contrastive=True, proj_dim=16, bank_slots=2)
    if cfg.has_label_features:
        model = build_model(cfg)
        assert model.contrastive is True and model.prototypes.shape == (5, model.feature_dim)
        return
    assert head in ("linear", "ml_decoder_grouped")
    with pytest.raises(ConfigError, match=f"model.head={settings['head']} .*has no label-level features.*csra"):
        build_model(cfg)


@pytest.mark.parametrize("head", HEADS)
def test_every_head_onnx_parity(head: str, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    from sadcl.ship.export import OnnxRunner, export_onnx

    torch.manual_seed(0)
    model = build_model(tiny_model_config(head=head)).eval()
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
    with_features = "features" in ref
    info = export_onnx(model, tmp_path / "m.onnx", img_size=64, with_features=with_features)
    assert info["max_abs_diff"] <= 1e-4
    got = OnnxRunner(tmp_path / "m.onnx", threads=1)(x.numpy())
    np.testing.assert_allclose(got["logits"], ref["logits"].numpy(), atol=1e-4)
    if with_features:
        np.testing.assert_allclose(got["features"], ref["features"].numpy(), atol=1e-4)


@pytest.mark.parametrize("head", HEADS)
def test_print_config_shows_the_head_and_its_settings(head: str, capsys: pytest.CaptureFixture) -> None:
    assert main(["train", "--print-config", f"model.head={head}", "model.csra_heads=4", "model.csra_lambda=0.3"]) == 0
    model = yaml.safe_load(capsys.readouterr().out)["model"]
    assert model["head"] == head
    assert model["csra_heads"] == 4 and model["csra_lambda"] == 0.3 and model["ml_decoder_groups"] is None


def test_head_settings_are_validated() -> None:
    for bad, match in [
        ({"csra_heads": 3}, "model.csra_heads must be 1, 2, 4, 6 or 8"),
        ({"csra_lambda": -0.1}, "model.csra_lambda must be >= 0"),
        ({"ml_decoder_groups": 0}, r"model.ml_decoder_groups must be in \[1, model.num_classes=5\]"),
        ({"ml_decoder_groups": 6}, r"model.ml_decoder_groups must be in \[1, model.num_classes=5\]"),
    ]:
        with pytest.raises(ConfigError, match=match):
            tiny_model_config(**bad)
    cfg = tiny_model_config(head="ml_decoder", ml_decoder_groups=2)
    assert (cfg.architecture, tiny_model_config(head="csra").architecture) == ("ML-Decoder", "CSRA")
    assert "2 group queries" in cfg.method and not cfg.has_label_features  # one stage, like model.head=linear


# ---------------------------------------------------------------------------------------------------------- CSRA
def test_csra_temperatures_are_the_papers() -> None:
    inf = math.inf
    assert [csra_temperatures(h) for h in (1, 2, 4, 6, 8)] == [
        (1,),
        (1, inf),
        (1, 2, 3, inf),
        (1, 2, 3, 4, 5, inf),
        (1, 2, 3, 4, 5, 6, 7, inf),
    ]
    model = build_model(tiny_model_config(head="csra", csra_heads=4, csra_lambda=0.3))
    assert isinstance(model, CSRAClassifier) and model.temperatures == (1, 2, 3, inf) and model.lam == 0.3
    assert sum(p.numel() for n, p in model.named_parameters() if not n.startswith("backbone.")) == 4 * 5 * 512


@pytest.mark.parametrize("temperature", [math.inf, 99])
def test_csra_with_infinite_temperature_is_average_plus_lambda_max_pooling(temperature: float) -> None:
    torch.manual_seed(0)
    head = CSRAClassifier(backbone=MapBackbone(6), num_classes=4, temperatures=(temperature,), lam=0.3).double()
    x = torch.randn(2, 6, 3, 5, dtype=torch.float64)
    out = head(x, return_attn=True)
    s = torch.einsum("bdhw,cd->bchw", x, normalised_rows(head.classifiers[0]))  # class scores at each location
    torch.testing.assert_close(out["logits"], s.mean((2, 3)) + 0.3 * s.amax((2, 3)))
    top = s.flatten(2).argmax(-1)  # [B, C]
    assert torch.equal(out["attn"].flatten(2).argmax(-1), top)
    torch.testing.assert_close(out["attn"].sum((2, 3)), torch.ones(2, 4, dtype=torch.float64))
    at_max = x.flatten(2).transpose(1, 2)[torch.arange(2)[:, None], top]  # [B, C, D]: x_i at each class's argmax
    torch.testing.assert_close(out["features"], x.mean((2, 3))[:, None] + 0.3 * at_max)


def test_csra_without_attention_is_average_pooling_and_a_normalised_linear_classifier() -> None:
    torch.manual_seed(0)
    head = CSRAClassifier(backbone=MapBackbone(6), num_classes=4, temperatures=(1.0, math.inf), lam=0.0).double()
    x = torch.randn(2, 6, 3, 3, dtype=torch.float64)
    pooled = x.mean((2, 3))  # [B, D]
    # Each head: the paper's classifier w_c / ||w_c|| (a 1x1 conv without bias) on the average-pooled map.
    expected = sum(nn.functional.linear(pooled, normalised_rows(conv)) for conv in head.classifiers)
    torch.testing.assert_close(head(x)["logits"], expected)


def test_csra_softmax_heads_follow_the_definition_and_sum() -> None:
    torch.manual_seed(0)
    temperatures, lam = (1.0, 2.0, 3.0, math.inf), 0.1
    head = CSRAClassifier(backbone=MapBackbone(6), num_classes=4, temperatures=temperatures, lam=lam).double()
    x = torch.randn(2, 6, 2, 3, dtype=torch.float64)
    out = head(x, return_attn=True)
    flat = x.flatten(2)  # [B, D, L]
    expected = torch.zeros(2, 4, dtype=torch.float64)
    for b in range(2):
        for c in range(4):
            for conv, t in zip(head.classifiers, temperatures):
                w = conv.weight[c].flatten()
                s = (w @ flat[b]) / w.norm()  # [L]: s_i = w^T x_i / ||w||
                att = s.max() if math.isinf(t) else (torch.softmax(t * s, 0) * s).sum()
                expected[b, c] += s.mean() + lam * att
    torch.testing.assert_close(out["logits"], expected)
    s1 = torch.einsum("bdl,cd->bcl", flat, normalised_rows(head.classifiers[0]))
    torch.testing.assert_close(out["attn"].flatten(2), s1.softmax(-1))  # the first head's (T = 1) attention


# --------------------------------------------------------------------------------------------------- ML-Decoder
def _decoder_by_hand(model: MLDecoderClassifier, x: Tensor) -> tuple[Tensor, Tensor]:
    """The decoder without self-attention written out: per layer post-norm cross-attention then FFN.

    Returns the group outputs ``[B, G, d]`` and the last layer's cross-attention averaged over heads ``[B, G, L]``.
    """
    conv = model.input_proj
    mem = torch.relu(torch.einsum("bchw,dc->bdhw", x, conv.weight.flatten(1)) + conv.bias[:, None, None])
    mem = mem.flatten(2).transpose(1, 2)  # [B, L, d]
    b, d = mem.shape[0], mem.shape[2]
    nh = model.layers[0].multihead_attn.num_heads

    def split(t: Tensor) -> Tensor:
        return t.reshape(b, t.shape[1], nh, d // nh).transpose(1, 2)  # [B, nh, n, d/nh]

    h = model.query_embed.weight[None].expand(b, -1, -1)  # [B, G, d]
    for layer in model.layers:
        mha = layer.multihead_attn
        wq, wk, wv = mha.in_proj_weight.chunk(3)
        bq, bk, bv = mha.in_proj_bias.chunk(3)
        q, k, v = split(h @ wq.T + bq), split(mem @ wk.T + bk), split(mem @ wv.T + bv)
        a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // nh), -1)  # [B, nh, G, L]
        att = (a @ v).transpose(1, 2).reshape(b, -1, d) @ mha.out_proj.weight.T + mha.out_proj.bias
        h = layer.norm2(h + att)
        h = layer.norm3(h + layer.linear2(torch.relu(layer.linear1(h))))
    return h, a.mean(1)


def test_ml_decoder_full_decoding_is_a_query_decoder_without_self_attention() -> None:
    torch.manual_seed(0)
    model = MLDecoderClassifier(
        backbone=MapBackbone(6), num_classes=5, hidden_dim=8, nhead=2, dec_layers=2, dim_feedforward=16, dropout=0.0
    )
    model = model.double().eval()
    x = torch.randn(2, 6, 3, 2, dtype=torch.float64)
    out = model(x, return_attn=True)
    hs, attn = _decoder_by_hand(model, x)
    torch.testing.assert_close(out["features"], hs)
    torch.testing.assert_close(out["attn"].flatten(2), attn)
    w = model.group_fc.weight  # [C, d, 1]: one query and one classifier per class
    assert w.shape == (5, 8, 1)
    torch.testing.assert_close(out["logits"], (hs * w[:, :, 0]).sum(-1) + model.group_fc.bias)
    assert not any(name.endswith("self_attn") for name, _ in model.named_modules())


def test_ml_decoder_groups_share_their_query() -> None:
    torch.manual_seed(0)
    c, g = 7, 3  # k = ceil(7 / 3) = 3 logits per group: 9 computed, the first 7 kept
    model = MLDecoderClassifier(
        backbone=MapBackbone(6), num_classes=c, num_groups=g, hidden_dim=8, nhead=2, dec_layers=1, dim_feedforward=16
    )
    model = model.double().eval()
    x = torch.randn(2, 6, 2, 2, dtype=torch.float64)
    out = model(x, return_attn=True)
    assert out["logits"].shape == (2, c) and "features" not in out
    hs, attn = _decoder_by_hand(model, x)  # [B, G, d]
    fc = model.group_fc
    assert fc.per_group == 3 and fc.group_of_class().tolist() == [0, 0, 0, 1, 1, 1, 2]
    expected = torch.stack([hs[:, i // 3] @ fc.weight[i // 3, :, i % 3] + fc.bias[i] for i in range(c)], 1)
    torch.testing.assert_close(out["logits"], expected)
    torch.testing.assert_close(out["attn"].flatten(2), attn[:, fc.group_of_class()])  # each class: its group's map
    # A class's logit depends on its own group's query only.
    for i in range(c):
        (grad,) = torch.autograd.grad(model(x)["logits"][:, i].sum(), model.query_embed.weight)
        assert [bool(grad[j].abs().sum() > 0) for j in range(g)] == [j == i // 3 for j in range(g)]


@pytest.mark.parametrize(("c", "g", "d"), [(5, 5, 8), (7, 3, 8), (80, 20, 32), (80, 80, 32), (9000, 100, 16)])
def test_group_fc_parameter_count(c: int, g: int, d: int) -> None:
    fc = GroupFC(g, d, c)
    assert fc.weight.shape == (g, d, math.ceil(c / g)) and fc.bias.shape == (c,)
    assert sum(p.numel() for p in fc.parameters()) == g * math.ceil(c / g) * d + c
    assert fc(torch.randn(2, g, d)).shape == (2, c)


def test_ml_decoder_parameter_count() -> None:
    model = build_model(tiny_model_config(head="ml_decoder", ml_decoder_groups=2))  # C 5, G 2, d 32, FFN 64, 2 layers
    assert isinstance(model, MLDecoderClassifier)
    big_d, c, g, d, f, layers = 512, 5, 2, 32, 64, 2
    per_layer = (3 * d * d + 3 * d) + (d * d + d) + (d * f + f) + (f * d + d) + 2 * 2 * d  # attention, FFN, 2 norms
    expected = (big_d * d + d) + g * d + layers * per_layer + g * d * math.ceil(c / g) + c
    assert sum(p.numel() for n, p in model.named_parameters() if not n.startswith("backbone.")) == expected


# ------------------------------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_peer_heads_train_in_one_stage_then_evaluate_and_export(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from sadcl.data.mom30 import generate_mom30
    from test_cli import TINY

    root = tmp_path / "mom30"
    generate_mom30(root, size=64, n_train=32, n_val=16, n_test=16, seed=0, progress=False)
    small = ["train.baseline_epochs=1", "train.epochs=1", "train.max_steps_per_epoch=2"]
    one_stage = {"csra": "train.single_stage=true", "ml_decoder": "model.ml_decoder_groups=3"}  # full decoding: 2
    for head, architecture, card in [("csra", "CSRA", "head: CSRA"), ("ml_decoder", "ML-Decoder", "head: ML-Decoder")]:
        out = tmp_path / head
        args = ["train", *TINY, *small, f"data.root={root}", f"train.output_dir={out}", f"model.head={head}"]
        args.append(one_stage[head])
        assert main(args) == 0
        capsys.readouterr()
        results = json.loads((out / "results.json").read_text())
        assert set(results) == {"baseline"} and results["baseline"]["epochs_run"] == 2  # baseline_epochs + epochs
        assert not (out / "sadcl").exists() and not (out / "prototypes.npy").exists()
        ckpt = str(out / "baseline" / "best.pt")
        assert main(["evaluate", ckpt, "--split", "test"]) == 0
        assert f"{results['baseline']['test']['mAP']:.2f}" in capsys.readouterr().out
        assert main(["export", ckpt, "--format", "dir", "--out", str(tmp_path / f"{head}_dir")]) == 0
        shipped = tmp_path / f"{head}_dir"
        assert json.loads((shipped / "config.json").read_text())["architecture"] == architecture
        assert card in (shipped / "README.md").read_text()
