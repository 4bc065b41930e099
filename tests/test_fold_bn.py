"""model.fold_frozen_bn: frozen BatchNorm folded into the convolution before it computes the same function."""

from __future__ import annotations

import copy

import pytest
import torch
from timm.layers.conv2d_same import Conv2dSame
from timm.layers.norm_act import FrozenBatchNormAct2d
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from sadcl.models.backbone import Backbone
from sadcl.models.fold_bn import (
    FoldedConv2d,
    FoldedConv2dSame,
    FoldedFrozenBatchNorm2d,
    bake_folded_batchnorm,
    fold_frozen_batchnorm,
)

FROZEN = (FrozenBatchNorm2d, FrozenBatchNormAct2d)


def random_statistics(module: nn.Module, seed: int = 0) -> None:
    """Give every frozen BatchNorm non-trivial statistics and affine (fresh ones are the identity map)."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, FROZEN):
            c = m.running_mean.numel()
            m.running_mean.copy_(torch.randn(c, generator=g) * 0.3)
            m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
            m.weight.copy_(torch.rand(c, generator=g) + 0.5)
            m.bias.copy_(torch.randn(c, generator=g) * 0.2)


@pytest.mark.parametrize(("name", "pairs"), [("resnet18", 20), ("tf_efficientnet_lite0", 48)])
def test_folded_backbone_computes_the_same_outputs_and_gradients(name, pairs):
    torch.manual_seed(0)
    plain = Backbone(name=name, freeze_bn=True, freeze_stem=True)
    folded = Backbone(name=name, freeze_bn=True, freeze_stem=True)
    random_statistics(plain)
    folded.load_state_dict(plain.state_dict())  # same names: checkpoints are unchanged
    assert fold_frozen_batchnorm(folded, example=torch.zeros(1, 3, 64, 64)) == pairs
    assert list(folded.state_dict()) == list(plain.state_dict())
    assert not any(type(m) in FROZEN for m in folded.modules())  # every frozen BatchNorm of these follows a conv
    x = torch.randn(2, 3, 72, 72)
    out_plain, out_folded = plain(x), folded(x)
    torch.testing.assert_close(out_folded, out_plain, rtol=1e-4, atol=1e-4 * out_plain.abs().max().item())
    (out_plain**2).mean().backward()
    (out_folded**2).mean().backward()
    grads = [(n, p.grad) for n, p in plain.named_parameters() if p.requires_grad]
    folded_grads = dict((n, p.grad) for n, p in folded.named_parameters() if p.requires_grad)
    assert grads and all(g is not None for _, g in grads)
    for n, g in grads:
        torch.testing.assert_close(folded_grads[n], g, rtol=1e-3, atol=1e-3 * g.abs().max().item(), msg=n)


def test_the_option_folds_at_construction_and_a_copy_folds_its_own_batchnorms():
    bb = Backbone(name="resnet18", freeze_bn=True, fold_frozen_bn=True)
    convs = [m for m in bb.modules() if isinstance(m, FoldedConv2d)]
    assert len(convs) == 20
    assert not any(isinstance(m, FoldedConv2d) for m in Backbone(name="resnet18", freeze_bn=False).modules())
    twin = copy.deepcopy(bb)  # what ModelEma does: the copy's convolutions must read the copy's statistics
    x = torch.randn(1, 3, 64, 64)
    before = bb(x)
    random_statistics(twin, seed=1)
    assert torch.equal(bb(x), before)
    assert not torch.allclose(twin(x), before)


class ConvReusedAfterNorm(nn.Module):
    """The convolution's output is also used after the BatchNorm: folding would change that use."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = FrozenBatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.bn(y) + y


def test_a_fold_that_changes_the_output_is_refused_and_undone():
    module = ConvReusedAfterNorm()
    random_statistics(module)
    x = torch.randn(1, 3, 8, 8)
    want = module(x)
    with pytest.raises(RuntimeError, match="model.fold_frozen_bn: the folded module differs"):
        fold_frozen_batchnorm(module, example=torch.zeros(1, 3, 8, 8))
    assert type(module.conv) is nn.Conv2d and type(module.bn) is FrozenBatchNorm2d
    assert torch.equal(module(x), want)


def test_a_convolution_that_runs_twice_is_not_folded():
    class Shared(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 3, padding=1)
            self.bn = FrozenBatchNorm2d(3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.bn(self.conv(self.conv(x)))

    module = Shared()
    assert fold_frozen_batchnorm(module, example=torch.zeros(1, 3, 8, 8)) == 0
    assert type(module.bn) is FrozenBatchNorm2d and not isinstance(module.bn, FoldedFrozenBatchNorm2d)


def test_export_bakes_the_folded_weights_into_constant_convolutions(tmp_path):
    onnx = pytest.importorskip("onnx")
    from sadcl.ship.export import export_onnx
    from support.models import tiny_model

    torch.manual_seed(0)
    model = tiny_model(fold_frozen_bn=True).eval()
    random_statistics(model)
    info = export_onnx(model, tmp_path / "m.onnx", img_size=64)  # its parity check compares with the folded model
    assert info["max_abs_diff"] <= 1e-4
    graph = onnx.load(str(tmp_path / "m.onnx")).graph
    constants = {i.name for i in graph.initializer}
    convs = [n for n in graph.node if n.op_type == "Conv"]
    assert len(convs) == 21 and all(n.input[1] in constants for n in convs)  # ResNet-18: 20, input projection: 1
    assert any(isinstance(m, FoldedConv2d) for m in model.modules())  # the model itself stays folded


def test_weights_loaded_into_a_folded_model_are_folded_in_and_baking_keeps_same_padding():
    # The checkpoint path: a model folds at construction, then gets its weights (stage 2, load_model, model dirs).
    torch.manual_seed(0)
    plain = Backbone(name="tf_efficientnet_lite0", feature_level=-2).eval()
    random_statistics(plain, seed=2)
    folded = Backbone(name="tf_efficientnet_lite0", feature_level=-2, fold_frozen_bn=True).eval()
    assert any(isinstance(m, FoldedConv2dSame) for m in folded.modules())  # TF "SAME" padding, stride 2
    folded.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 64, 64)
    want = plain(x)
    scale = want.abs().max().item()
    torch.testing.assert_close(folded(x), want, rtol=1e-4, atol=1e-4 * scale)
    baked = bake_folded_batchnorm(folded)
    assert not any(isinstance(m, (FoldedConv2d, FoldedConv2dSame)) for m in baked.modules())
    assert sum(type(m) is Conv2dSame for m in baked.modules()) == sum(
        type(m) is FoldedConv2dSame for m in folded.modules()
    )
    torch.testing.assert_close(baked(x), want, rtol=1e-4, atol=1e-4 * scale)


def test_a_folded_export_is_the_unfolded_graph_without_batchnorm_arithmetic(tmp_path, recwarn):
    onnx = pytest.importorskip("onnx")
    from collections import Counter

    from sadcl.ship.export import export_onnx
    from support.models import tiny_model

    ops = {}
    for fold in (False, True):
        export_onnx(tiny_model(fold_frozen_bn=fold).eval(), tmp_path / f"{fold}.onnx", img_size=64, check=False)
        ops[fold] = Counter(n.op_type for n in onnx.load(str(tmp_path / f"{fold}.onnx")).graph.node)
    # The eager warm-up runs the baked copy that is traced: its positional-encoding cache is filled before export.
    assert not [w for w in recwarn if "was assigned during export" in str(w.message)]
    assert "Sin" not in ops[True]  # the positional encoding is a constant, not traced sin/cos arithmetic
    bn = 20  # ResNet-18's frozen BatchNorms: a Mul and an Add each unfolded, nothing once baked
    assert ops[True] == ops[False] - Counter({"Mul": bn, "Add": bn})
