"""Behaviour of sadcl.models on tiny CPU configs: shapes, gradients, freezing, bank, prototypes, transformer maths."""

from __future__ import annotations

import math

import numpy as np
import pytest
import timm
import torch
from torch import Tensor, nn
from torchvision.ops.misc import FrozenBatchNorm2d

from sadcl.config import ConfigError, ModelConfig
from sadcl.models import (
    Backbone,
    GroupWiseLinear,
    MemoryBank,
    PositionEmbeddingSine,
    ProjectionHead,
    build_model,
)
from sadcl.models.transformer import Transformer, TransformerEncoderLayer
from support.models import tiny_model_config, tiny_sadcl

C, D, P = 5, 32, 16


# ---------------------------------------------------------------------------------------------------------- heads


def test_group_wise_linear_init_and_formula() -> None:
    gwl = GroupWiseLinear(C, 64)
    bound = 1 / math.sqrt(64)
    assert gwl.W.shape == (1, C, 64) and gwl.b.shape == (1, C)
    assert gwl.W.abs().max() <= bound and gwl.b.abs().max() <= bound and gwl.W.std() > bound / 3
    x = torch.randn(3, C, 64)
    torch.testing.assert_close(gwl(x), torch.einsum("bcd,cd->bc", x, gwl.W[0]) + gwl.b)


def test_projection_head_names_and_shapes() -> None:
    head = ProjectionHead(D, D, P)
    assert [k for k in head.state_dict()] == ["layers.0.weight", "layers.0.bias", "layers.1.weight", "layers.1.bias"]
    x = torch.randn(2, 3, C, D)
    ref = head.layers[1](torch.relu(head.layers[0](x)))
    torch.testing.assert_close(head(x), ref)
    assert head(x).shape == (2, 3, C, P)


# ---------------------------------------------------------------------------------------------- position encoding


def test_position_encoding_depends_on_actual_size() -> None:
    pe = PositionEmbeddingSine(num_pos_feats=8)
    small, big = pe.encoding(3, 5), pe.encoding(6, 4)
    assert small.shape == (1, 16, 3, 5) and big.shape == (1, 16, 6, 4)
    torch.testing.assert_close(big, PositionEmbeddingSine(num_pos_feats=8).encoding(6, 4))  # a fresh instance
    assert not torch.allclose(pe.encoding(14, 14)[..., :3, :5], small)  # positions are normalised by the size
    # y channels first: the first half varies along rows only, the second along columns only.
    assert torch.equal(big[0, :8], big[0, :8, :, :1].expand(-1, -1, 4))
    assert torch.equal(big[0, 8:], big[0, 8:, :1, :].expand(-1, 6, -1))
    out = pe(torch.zeros(2, 3, 6, 4, dtype=torch.float64))
    assert out.shape == (2, 16, 6, 4) and out.dtype == torch.float64
    assert len(pe.state_dict()) == 0  # no size-dependent buffer in checkpoints


# ---------------------------------------------------------------------------------------------------- memory bank


def test_memory_bank_fill_and_update_rules() -> None:
    bank = MemoryBank(3, C, 4, threshold=0.8)
    protos = torch.randn(C, 4)
    bank.fill(protos)
    assert torch.equal(bank.bank, protos.expand(3, -1, -1))
    emb = torch.randn(3, C, 4)
    targets = torch.tensor([[1, 1, 0, -1, 1]] * 3, dtype=torch.float32)
    logits = torch.tensor([[5.0, -5.0, 5.0, 5.0, math.log(4)]] * 3)
    mask = bank.update(emb, targets, logits)
    # positive & confident; a -1 label counts (official nonzero()); a negative never; sigmoid == 0.8 is not > 0.8.
    assert mask.tolist() == [[True, False, False, True, False]] * 3
    assert torch.equal(bank.bank[:, 0], emb[:, 0]) and torch.equal(bank.bank[:, 1], protos[1].expand(3, -1))
    assert "bank" in bank.state_dict()


def test_memory_bank_more_rows_than_slots_later_rows_win() -> None:
    bank = MemoryBank(2, C, 4)
    bank.fill(torch.zeros(C, 4))
    emb = torch.arange(5, dtype=torch.float32)[:, None, None].expand(5, C, 4).clone()  # row b holds value b
    targets = torch.ones(5, C)
    logits = torch.full((5, C), 9.0)
    logits[4, 1] = -9.0  # row 4 (slot 0) not confident for class 1 -> slot 0 keeps row 2 there
    mask = bank.update(emb, targets, logits)
    assert mask.sum() == 5 * C - 1
    assert bank.bank[0, 0, 0] == 4 and bank.bank[0, 1, 0] == 2 and bank.bank[1, 0, 0] == 3
    small = bank.update(emb[:1] + 10, targets[:1], logits[:1])  # B < S touches slot 0 only
    assert small.shape == (1, C) and bank.bank[0, 0, 0] == 10 and bank.bank[1, 0, 0] == 3


# ---------------------------------------------------------------------------------------------------- transformer


def _ref_mha(mha: nn.MultiheadAttention, q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    """Multi-head attention written out (batch-first), returning the output and head-averaged weights."""
    wq, wk, wv = mha.in_proj_weight.chunk(3)
    bq, bk, bv = mha.in_proj_bias.chunk(3)
    h = mha.num_heads

    def split(x: Tensor) -> Tensor:  # [B, L, d] -> [B, h, L, d/h]
        return x.reshape(x.shape[0], x.shape[1], h, -1).transpose(1, 2)

    qh, kh, vh = split(q @ wq.T + bq), split(k @ wk.T + bk), split(v @ wv.T + bv)
    w = torch.softmax(qh @ kh.transpose(-1, -2) / math.sqrt(qh.shape[-1]), dim=-1)  # [B, h, Lq, Lk]
    out = (w @ vh).transpose(1, 2).reshape(q.shape[0], q.shape[1], -1)
    return mha.out_proj(out), w.mean(1)


def test_transformer_matches_written_out_official_formula() -> None:
    torch.manual_seed(0)
    tr = Transformer(d_model=D, nhead=4, enc_layers=1, dec_layers=2, dim_feedforward=64, dropout=0.1).double().eval()
    src, pos = torch.randn(2, D, 3, 4, dtype=torch.float64), torch.randn(2, D, 3, 4, dtype=torch.float64)
    query = torch.randn(C, D, dtype=torch.float64)
    hs, attn = tr(src, query, pos, return_attn=True)

    x, p = src.flatten(2).transpose(1, 2), pos.flatten(2).transpose(1, 2)
    enc = tr.encoder.layers[0]
    x = enc.norm1(x + _ref_mha(enc.self_attn, x + p, x + p, x)[0])
    x = enc.norm2(x + enc.linear2(torch.relu(enc.linear1(x))))
    qp = query.expand(2, -1, -1)
    tgt = torch.zeros_like(qp)
    for layer in tr.decoder.layers:
        a, w = _ref_mha(layer.multihead_attn, tgt + qp, x + p, x)
        tgt = layer.norm2(tgt + a)
        tgt = layer.norm3(tgt + layer.linear2(torch.relu(layer.linear1(tgt))))
    torch.testing.assert_close(hs, tr.decoder.norm(tgt), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(attn, w, rtol=1e-10, atol=1e-12)
    assert not hasattr(tr.decoder.layers[0], "self_attn") and not hasattr(tr.decoder.layers[0], "norm1")
    assert tr(src, query, pos)[1] is None  # weights only when asked


def test_encoder_layer_equals_torch_post_norm_layer_without_pos() -> None:
    torch.manual_seed(0)
    ours = TransformerEncoderLayer(D, 4, 64, dropout=0.0).eval()
    ref = nn.TransformerEncoderLayer(D, 4, 64, dropout=0.0, batch_first=True).eval()
    ref.load_state_dict(ours.state_dict())  # same names: self_attn, linear1/2, norm1/2
    x = torch.randn(2, 6, D)
    torch.testing.assert_close(ours(x), ref(x))


def test_transformer_xavier_init_and_pre_norm_option() -> None:
    torch.manual_seed(0)
    tr = Transformer(d_model=64, nhead=4, enc_layers=1, dec_layers=1, dim_feedforward=128, pre_norm=True)
    w = tr.encoder.layers[0].self_attn.in_proj_weight  # xavier on the [3d, d] matrix: bound sqrt(6 / 4d)
    assert w.abs().max() <= math.sqrt(6 / (4 * 64)) and w.abs().max() > 0.8 * math.sqrt(6 / (4 * 64))
    assert tr.encoder.norm is not None
    hs, _ = tr(torch.randn(2, 64, 2, 3), torch.randn(C, 64), torch.randn(1, 64, 2, 3))
    assert hs.shape == (2, C, 64) and torch.isfinite(hs).all()
    no_enc = Transformer(d_model=64, nhead=4, enc_layers=0, dec_layers=1, dim_feedforward=128)
    assert no_enc(torch.randn(1, 64, 2, 2), torch.randn(C, 64), torch.randn(1, 64, 2, 2))[0].shape == (1, C, 64)


# ------------------------------------------------------------------------------------------------------- backbone


def test_backbone_without_pretrained_never_touches_network(offline: None) -> None:
    cfg = ModelConfig(
        backbone="resnet18",
        pretrained=False,
        num_classes=C,
        hidden_dim=D,
        nhead=4,
        dim_feedforward=64,
        proj_dim=P,
        bank_slots=2,
    )
    model = build_model(cfg)
    assert model(torch.randn(1, 3, 64, 64))["logits"].shape == (1, C)


def test_backbone_shapes_and_frozen_resnet_stem_like_official() -> None:
    bb = Backbone(name="resnet18", freeze_bn=False, freeze_stem=True)
    assert (bb.num_channels, bb.stride) == (512, 32)
    assert bb(torch.randn(2, 3, 64, 96)).shape == (2, 512, 2, 3)
    frozen = {n for n, p in bb.body.named_parameters() if not p.requires_grad}
    expected = {n for n, _ in bb.body.named_parameters() if n.split(".")[0] in ("conv1", "bn1", "layer1")}
    assert frozen == expected and frozen
    bb.train()
    assert not bb.body.bn1.training and not bb.body.layer1.training and bb.body.layer2.training
    stem_stats = bb.body.layer1[0].bn1.running_mean.clone()
    later_stats = bb.body.layer2[0].bn1.running_mean.clone()
    bb(torch.randn(2, 3, 64, 64)).sum().backward()
    assert torch.equal(bb.body.layer1[0].bn1.running_mean, stem_stats)  # frozen stem: no statistics update
    assert not torch.equal(bb.body.layer2[0].bn1.running_mean, later_stats)  # the rest trains normally
    assert all(p.grad is None for n, p in bb.body.named_parameters() if n in frozen)
    assert all(p.grad is not None for n, p in bb.body.named_parameters() if n not in frozen)


def test_backbone_freeze_stride_moves_the_frozen_boundary() -> None:
    bb = Backbone(name="resnet18", freeze_bn=False, freeze_stem=True, freeze_stride=16)
    frozen = {n for n, p in bb.body.named_parameters() if not p.requires_grad}
    assert frozen == {
        n for n, _ in bb.body.named_parameters() if n.split(".")[0] in ("conv1", "bn1", "layer1", "layer2")
    }
    bb.train()
    assert not bb.body.layer2.training and bb.body.layer3.training
    bb(torch.randn(2, 3, 64, 64)).sum().backward()
    assert all((p.grad is None) == (n in frozen) for n, p in bb.body.named_parameters())
    lite = Backbone(name="efficientnet_lite0", freeze_bn=True, freeze_stem=True, freeze_stride=16)
    blocks = {
        int(n.split(".")[1]) for n, p in lite.body.named_parameters() if n.startswith("blocks.") and not p.requires_grad
    }
    assert blocks == {0, 1, 2, 3}
    # The boundary must exist up to the returned level: a clear error naming the option, not a silent no-op.
    with pytest.raises(ValueError, match="freeze_stride=32.*resnet18"):
        Backbone(name="resnet18", freeze_bn=False, freeze_stem=True, freeze_stride=32, feature_level=-2)
    with pytest.raises(ConfigError, match="freeze_stride"):
        ModelConfig(freeze_stride=0)


def test_backbone_earlier_feature_level_is_denser_and_drops_later_stages() -> None:
    last = Backbone(name="resnet18", freeze_bn=False, freeze_stem=True)
    bb = Backbone(name="resnet18", freeze_bn=False, freeze_stem=True, feature_level=-2)
    assert (bb.num_channels, bb.stride) == (256, 16)
    assert bb(torch.randn(2, 3, 64, 96)).shape == (2, 256, 4, 6)
    names = {n.split(".")[0] for n, _ in bb.body.named_parameters()}
    assert "layer4" not in names and "layer3" in names  # the stride-32 stage is not built
    assert {n for n, p in bb.body.named_parameters() if not p.requires_grad} == {
        n for n, p in last.body.named_parameters() if not p.requires_grad
    }  # same frozen stem
    # EfficientNet: timm builds and runs every block whatever the level; ours stops after the returned one, so every
    # trainable parameter gets a gradient (DDP needs that) and nothing is computed for nothing.
    lite = Backbone(name="efficientnet_lite0", freeze_bn=False, freeze_stem=True, feature_level=-2)
    ref = timm.create_model("efficientnet_lite0", features_only=True, out_indices=(-2,))  # every block kept
    missing, unexpected = ref.load_state_dict(lite.body.state_dict(), strict=False)
    assert lite.stride == 16 and len(lite.body.blocks) < len(ref.blocks) and not unexpected
    assert missing and all(k.startswith("blocks.") and int(k.split(".")[1]) >= len(lite.body.blocks) for k in missing)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(lite.eval()(x), ref.eval()(x)[-1])  # same map as timm's
    lite.train()(x).sum().backward()
    assert all(p.grad is not None for p in lite.parameters() if p.requires_grad)
    # Through the config: the transformer reads the 4x denser map, and the attention maps follow it.
    cfg = tiny_model_config(nhead=2, dropout=0.1, contrastive=True, proj_dim=16, bank_slots=2, feature_level=-2)
    model = build_model(cfg)
    out = model(torch.randn(2, 3, 64, 64), return_attn=True)
    assert out["attn"].shape == (2, 5, 4, 4) and out["logits"].shape == (2, 5)


def test_backbone_freeze_bn_keeps_eps_and_statistics() -> None:
    bb = Backbone(name="resnet18", freeze_bn=True, freeze_stem=False)
    bns = [m for m in bb.modules() if isinstance(m, FrozenBatchNorm2d)]
    assert bns and not any(isinstance(m, nn.BatchNorm2d) for m in bb.modules())
    assert all(m.eps == 1e-5 for m in bns)
    before = {k: v.clone() for k, v in bb.state_dict().items() if "running" in k}
    bb.train()
    bb(torch.randn(2, 3, 64, 64)).mean().backward()
    assert all(torch.equal(bb.state_dict()[k], v) for k, v in before.items())
    assert all(p.requires_grad for p in bb.parameters())  # no BN parameters left; convs all trainable
    lite = Backbone(name="efficientnet_lite0", freeze_stem=True)
    assert lite(torch.randn(1, 3, 64, 64)).shape == (1, lite.num_channels, 2, 2) and lite.stride == 32
    frozen = {
        n.split(".")[0] + ("." + n.split(".")[1] if n.startswith("blocks") else "")
        for n, p in lite.body.named_parameters()
        if not p.requires_grad
    }
    assert frozen == {"conv_stem", "blocks.0", "blocks.1"}  # stem + stages before stride 8


def test_backbone_local_timm_file(tmp_path, offline: None) -> None:
    import timm

    torch.manual_seed(1)
    ref = timm.create_model("resnet18", pretrained=False)
    torch.save(ref.state_dict(), tmp_path / "r18.pth")
    bb = Backbone(name="resnet18", pretrained=True, pretrained_file=str(tmp_path / "r18.pth"))
    assert torch.equal(bb.body.layer3[1].conv2.weight, ref.layer3[1].conv2.weight)
    assert torch.equal(bb.body.layer4[0].bn1.running_var, ref.layer4[0].bn1.running_var)
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        Backbone(name="resnet18", pretrained=True, pretrained_file=str(tmp_path / "missing.pth"))


# ---------------------------------------------------------------------------------------------------------- model


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("train", [True, False])
def test_model_output_shapes_any_batch(batch: int, train: bool) -> None:
    model = tiny_sadcl(bank_slots=2).train(train)
    out = model(torch.randn(batch, 3, 64, 64), return_attn=True)
    shapes = {k: tuple(v.shape) for k, v in out.items()}
    assert shapes == {
        "logits": (batch, C),
        "features": (batch, C, D),
        "proj_features": (batch, C, P),
        "proj_bank": (2, C, P),
        "proj_prototypes": (C, P),
        "attn": (batch, C, 2, 2),
    }
    assert isinstance(model.input_proj, nn.Conv2d)  # 512 backbone channels -> 32
    model.update_memory_bank(out["features"], torch.ones(batch, C), out["logits"])


def test_baseline_model_outputs_and_identity_input_proj() -> None:
    model = tiny_sadcl(contrastive=False, hidden_dim=512).eval()
    out = model(torch.randn(2, 3, 64, 64))
    assert set(out) == {"logits", "features"} and out["features"].shape == (2, C, 512)
    assert isinstance(model.input_proj, nn.Identity)  # channels == hidden_dim, as official
    assert not hasattr(model, "proj_head") and not hasattr(model, "memory_bank")
    with pytest.raises(RuntimeError, match="contrastive"):
        model.load_prototypes(torch.zeros(C, 512))


def test_every_trainable_parameter_gets_a_finite_gradient() -> None:
    model = tiny_sadcl(bank_slots=2).train()
    out = model(torch.randn(3, 3, 64, 64), return_attn=True)
    sum(v.float().mean() for v in out.values()).backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, f"no gradient for {name}"
            assert torch.isfinite(p.grad).all(), f"non-finite gradient for {name}"
        else:
            assert p.grad is None, f"frozen {name} got a gradient"
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert frozen and all(n.startswith(("backbone.body.conv1", "backbone.body.layer1")) for n in frozen)
    assert model.prototypes.grad.abs().sum() > 0 and "memory_bank.bank" not in dict(model.named_parameters())


def test_attention_maps_sum_to_one_and_batching_is_consistent() -> None:
    model = tiny_sadcl().eval()
    images = torch.randn(3, 3, 64, 96)
    with torch.no_grad():
        out = model(images, return_attn=True)
        single = model(images[1:2], return_attn=True)
    assert out["attn"].shape == (3, C, 2, 3)
    torch.testing.assert_close(out["attn"].sum((-1, -2)), torch.ones(3, C))
    torch.testing.assert_close(single["logits"], out["logits"][1:2], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(single["attn"], out["attn"][1:2], rtol=1e-4, atol=1e-5)
    assert len([k for k in model.state_dict() if "position" in k]) == 0


def test_memory_bank_update_feeds_next_projection() -> None:
    model = tiny_sadcl(bank_slots=2).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 64))
        logits = torch.full((2, C), 9.0)
        mask = model.update_memory_bank(out["features"], torch.ones(2, C), logits)
        assert mask.all() and torch.equal(model.memory_bank.bank, out["features"])
        again = model(torch.randn(2, 3, 64, 64))
    torch.testing.assert_close(again["proj_bank"], model.proj_head(out["features"]))


def test_prototypes_that_follow_the_model_move_to_the_taken_features_mean() -> None:
    learned = build_model(tiny_model_config(contrastive=True, proj_dim=P))
    assert learned.prototype_momentum is None and learned.prototypes.requires_grad  # official: learned
    before = learned.prototypes.detach().clone()
    learned.update_prototypes(torch.randn(2, C, D), torch.ones(2, C, dtype=torch.bool))
    assert torch.equal(learned.prototypes.detach(), before)  # a no-op unless they follow the model

    model = build_model(tiny_model_config(contrastive=True, proj_dim=P, prototype_momentum=0.75))
    assert model.prototype_momentum == 0.75 and not model.prototypes.requires_grad
    from sadcl.config import OptimConfig
    from sadcl.training.optim import build_optimizer

    optimized = {id(p) for g in build_optimizer(model, OptimConfig()).param_groups for p in g["params"]}
    assert id(model.prototypes) not in optimized  # no gradient, no weight decay
    old = model.prototypes.detach().clone()
    features = torch.randn(3, C, D)
    taken = torch.zeros(3, C, dtype=torch.bool)
    taken[0, 0] = taken[2, 0] = taken[1, 3] = True  # class 0 twice, class 3 once, the others never
    counts = model.update_prototypes(features, taken)
    assert counts.tolist() == [2, 0, 0, 1, 0]
    new = model.prototypes.detach()
    torch.testing.assert_close(new[0], 0.75 * old[0] + 0.25 * (features[0, 0] + features[2, 0]) / 2)
    torch.testing.assert_close(new[3], 0.75 * old[3] + 0.25 * features[1, 3])
    assert torch.equal(new[[1, 2, 4]], old[[1, 2, 4]])  # a class without a taken feature keeps its prototype
    with pytest.raises(ConfigError, match="model.prototype_momentum"):
        tiny_model_config(prototype_momentum=1.0)


def test_a_training_step_moves_following_prototypes_by_the_bank_mask() -> None:
    from sadcl.config import LossConfig
    from sadcl.losses import build_criterion
    from sadcl.training.engine import train_step

    def step(momentum: float | None) -> tuple[Tensor, Tensor, dict]:
        torch.manual_seed(0)
        model = build_model(
            tiny_model_config(
                contrastive=True, proj_dim=P, bank_slots=4, bank_threshold=0.3, prototype_momentum=momentum
            )
        ).train()
        old = model.prototypes.detach().clone()
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
        targets = torch.tensor([[1, 0, 1, 0, 0], [0, 1, 1, 0, 1], [1, 1, 0, 0, 0], [0, 0, 0, 1, 0]]).float()
        criterion = build_criterion(LossConfig())
        out, _, _ = train_step(model, criterion, torch.randn(4, 3, 64, 64), targets, None, opt, None)
        return old, model.prototypes.detach(), {"out": out, "targets": targets}

    old, new, seen = step(0.5)
    taken = (seen["targets"] > 0) & (torch.sigmoid(seen["out"]["logits"].detach()) > 0.3)
    assert taken.any() and not taken.all()
    feats = seen["out"]["features"].detach()
    for c in range(C):
        rows = taken[:, c]
        want = 0.5 * old[c] + 0.5 * feats[rows, c].mean(0) if rows.any() else old[c]
        torch.testing.assert_close(new[c], want)
    old, new, _ = step(None)  # learned (official): the optimizer moves them by PSCL's gradient
    assert not torch.equal(old, new)


def test_load_prototypes_from_tensor_and_files(tmp_path) -> None:
    model = tiny_sadcl(bank_slots=3)
    protos = torch.randn(C, D)
    model.load_prototypes(protos)
    assert torch.equal(model.prototypes.data, protos) and model.prototypes.requires_grad
    assert torch.equal(model.memory_bank.bank, protos.expand(3, -1, -1))
    np.save(tmp_path / "p.npy", (protos * 2).numpy()[None])  # [1, C, d] as the official files load
    model.load_prototypes(tmp_path / "p.npy")
    torch.testing.assert_close(model.prototypes.data, protos * 2)
    torch.save({"prototypes": protos * 3}, tmp_path / "p.pt")
    model.load_prototypes(str(tmp_path / "p.pt"))
    torch.testing.assert_close(model.memory_bank.bank[2], protos * 3)


def test_load_prototypes_errors(tmp_path) -> None:
    model = tiny_sadcl()
    np.save(tmp_path / "wrong.npy", np.zeros((C + 1, D), dtype=np.float32))
    with pytest.raises(ValueError, match=r"wrong\.npy.*\[5, 32\].*\[6, 32\]"):
        model.load_prototypes(tmp_path / "wrong.npy")
    with pytest.raises(FileNotFoundError, match="absent.npy"):
        model.load_prototypes(tmp_path / "absent.npy")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="obj.npy"):  # pickled content is refused
        model.load_prototypes(tmp_path / "obj.npy")
    (tmp_path / "p.txt").write_text("1 2 3")
    with pytest.raises(ValueError, match=r"\.npy or \.pt"):
        model.load_prototypes(tmp_path / "p.txt")
    with pytest.raises(ValueError, match="finite"):
        model.load_prototypes(torch.full((C, D), float("nan")))


def test_load_baseline_weights_into_contrastive_model(tmp_path) -> None:
    baseline = tiny_sadcl(contrastive=False)
    torch.manual_seed(5)
    with torch.no_grad():
        for p in baseline.parameters():
            p.add_(torch.randn_like(p))
    torch.save({"model": baseline.state_dict(), "stage": "baseline"}, tmp_path / "stage1.pt")
    model = tiny_sadcl(contrastive=True)
    skipped = model.load_baseline_state_dict(tmp_path / "stage1.pt")
    assert skipped == sorted(
        [
            "prototypes",
            "proj_head.layers.0.weight",
            "proj_head.layers.0.bias",
            "proj_head.layers.1.weight",
            "proj_head.layers.1.bias",
            "memory_bank.bank",
        ]
    )
    for k, v in baseline.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k
    bad = dict(baseline.state_dict(), extra_weight=torch.zeros(1))
    with pytest.raises(RuntimeError, match="extra_weight"):
        model.load_baseline_state_dict(bad)
    # The other way round: a stage-2 state dict into a baseline model skips the contrastive keys.
    assert "prototypes" in tiny_sadcl(contrastive=False).load_baseline_state_dict(model.state_dict())


def test_build_model_reads_config_and_prototypes(tmp_path) -> None:
    protos = np.random.default_rng(0).standard_normal((C, D)).astype(np.float32)
    np.save(tmp_path / "protos.npy", protos)
    cfg = ModelConfig(
        backbone="resnet18",
        pretrained=False,
        num_classes=C,
        hidden_dim=D,
        nhead=2,
        enc_layers=0,
        dec_layers=1,
        dim_feedforward=64,
        dropout=0.0,
        pre_norm=True,
        proj_dim=P,
        bank_slots=4,
        bank_threshold=0.7,
        prototypes=str(tmp_path / "protos.npy"),
        freeze_stem=False,
    )
    model = build_model(cfg)
    assert len(model.transformer.encoder.layers) == 0 and len(model.transformer.decoder.layers) == 1
    assert model.transformer.decoder.layers[0].multihead_attn.num_heads == 2
    assert model.transformer.decoder.layers[0].pre_norm
    assert model.memory_bank.bank.shape == (4, C, D) and model.memory_bank.threshold == 0.7
    assert np.array_equal(model.prototypes.detach().numpy(), protos)
    assert all(p.requires_grad for p in model.backbone.parameters())
