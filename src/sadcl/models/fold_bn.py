"""Frozen BatchNorm folded into the convolution before it (``model.fold_frozen_bn``): fewer passes over activations.

A frozen BatchNorm is a fixed per-channel affine map, so after a convolution ``s * conv(x, W) + t`` equals
``conv(x, s * W) + t``. The folded convolution computes ``s * W`` (weight-sized) on every forward and adds ``t`` as
its bias, instead of two activation-sized passes forward and one backward for the BatchNorm; ``W`` still gets its
gradient through the product, so training is the same function (equal up to float rounding, not bitwise).

Nothing is moved or renamed: the convolution and the BatchNorm keep their parameters and buffers (state dicts and
checkpoints are unchanged); only their classes change, to the subclasses below, and the BatchNorm keeps its activation
(timm's ``FrozenBatchNormAct2d``). Which convolution feeds which BatchNorm is read from one forward pass (the tensor a
convolution returns must be the one the BatchNorm receives), and the folded module must give the unfolded output on a
random input, or nothing is folded.
"""

from __future__ import annotations

import copy
import logging
from collections import Counter

import torch
from timm.layers.conv2d_same import Conv2dSame, conv2d_same
from timm.layers.norm_act import FrozenBatchNormAct2d
from torch import Tensor, nn
from torchvision.ops.misc import FrozenBatchNorm2d

__all__ = ["bake_folded_batchnorm", "fold_frozen_batchnorm"]

_logger = logging.getLogger(__name__)


def _folded_weight_bias(conv: nn.Conv2d) -> tuple[Tensor, Tensor]:
    """The folded convolution's weight ``[O, I / groups, kH, kW]`` and bias ``[O]`` (``s * W`` and ``s * b + t``)."""
    bn = conv.__dict__["_folded_bn"]  # kept out of the module tree: the BatchNorm stays registered where it was
    scale = bn.weight * (bn.running_var + bn.eps).rsqrt()
    shift = bn.bias - bn.running_mean * scale
    weight = conv.weight * scale.reshape(-1, 1, 1, 1)
    bias = shift if conv.bias is None else conv.bias * scale + shift
    return weight, bias


class FoldedConv2d(nn.Conv2d):
    """``nn.Conv2d`` with the frozen BatchNorm after it folded in (see the module docstring)."""

    def forward(self, x: Tensor) -> Tensor:
        """``[B, I, H, W] -> [B, O, H', W']``: the convolution, then the BatchNorm's affine map."""
        weight, bias = _folded_weight_bias(self)
        return self._conv_forward(x, weight, bias)


class FoldedConv2dSame(Conv2dSame):
    """timm's ``Conv2dSame`` (TF "SAME" padding) with the frozen BatchNorm after it folded in."""

    def forward(self, x: Tensor) -> Tensor:
        """``[B, I, H, W] -> [B, O, H', W']``, as :class:`FoldedConv2d` with TF "SAME" padding."""
        weight, bias = _folded_weight_bias(self)
        return conv2d_same(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)


class FoldedFrozenBatchNorm2d(FrozenBatchNorm2d):
    """A frozen BatchNorm whose affine map the convolution before it applies: the identity here."""

    def forward(self, x: Tensor) -> Tensor:
        return x


class FoldedFrozenBatchNormAct2d(FrozenBatchNormAct2d):
    """timm's frozen BatchNorm + activation whose affine map the convolution before it applies: dropout, activation."""

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.drop(x))


_CONVS: dict[type, type] = {nn.Conv2d: FoldedConv2d, Conv2dSame: FoldedConv2dSame}
_NORMS: dict[type, type] = {
    FrozenBatchNorm2d: FoldedFrozenBatchNorm2d,
    FrozenBatchNormAct2d: FoldedFrozenBatchNormAct2d,
}


def _conv_bn_pairs(module: nn.Module, example: Tensor) -> list[tuple[nn.Conv2d, nn.Module]]:
    """(convolution, frozen BatchNorm) pairs where the BatchNorm's input is the convolution's output, in one forward.

    Only exact classes count (a subclass may compute something else), and a convolution or BatchNorm that runs more
    than once (shared weights) is left alone.
    """
    outputs: dict[int, tuple[nn.Module, Tensor]] = {}
    calls: dict[int, int] = {}
    pairs: list[tuple[nn.Conv2d, nn.Module]] = []

    def after_conv(m: nn.Module, inputs: tuple, output: Tensor) -> None:
        calls[id(m)] = calls.get(id(m), 0) + 1
        outputs[id(output)] = (m, output)  # the tensor is kept alive, so its id cannot be reused during the pass

    def before_norm(m: nn.Module, inputs: tuple) -> None:
        calls[id(m)] = calls.get(id(m), 0) + 1
        hit = outputs.get(id(inputs[0]))
        if hit is not None and hit[1] is inputs[0]:
            pairs.append((hit[0], m))

    handles = []
    for m in module.modules():
        if type(m) in _CONVS:
            handles.append(m.register_forward_hook(after_conv))
        elif type(m) in _NORMS:
            handles.append(m.register_forward_pre_hook(before_norm))
    try:
        with torch.no_grad():
            module(example)
    finally:
        for h in handles:
            h.remove()
    feeds = Counter(id(c) for c, _ in pairs)  # a convolution feeding two BatchNorms cannot take both
    return [(c, n) for c, n in pairs if calls[id(c)] == 1 and calls[id(n)] == 1 and feeds[id(c)] == 1]


def fold_frozen_batchnorm(module: nn.Module, *, example: Tensor) -> int:
    """Fold every frozen BatchNorm that directly follows a convolution into it, in place; return how many.

    Args:
        module: A module with frozen BatchNorms (``model.freeze_bn``), e.g. the backbone.
        example: An input it accepts (``[1, 3, H, W]``): one forward finds the pairs, a second checks the result.

    Raises:
        RuntimeError: The folded module does not reproduce the unfolded output (then nothing stays folded).
    """
    if not any(type(m) in _NORMS for m in module.modules()):
        return 0
    was_training = module.training
    module.eval()
    try:
        pairs = _conv_bn_pairs(module, example)
        probe = torch.randn(example.shape, generator=torch.Generator().manual_seed(0)).to(example)
        with torch.no_grad():
            want = module(probe)
        old = [(conv, type(conv), norm, type(norm)) for conv, norm in pairs]
        for conv, norm in pairs:
            conv.__dict__["_folded_bn"] = norm
            conv.__class__ = _CONVS[type(conv)]
            norm.__class__ = _NORMS[type(norm)]
        with torch.no_grad():
            got = module(probe)
        error = float((got - want).abs().max() / want.abs().max().clamp_min(1e-12))
        if not error < 1e-4:
            for conv, conv_cls, norm, norm_cls in old:
                conv.__class__, norm.__class__ = conv_cls, norm_cls
                del conv.__dict__["_folded_bn"]
            raise RuntimeError(
                f"model.fold_frozen_bn: the folded module differs from the unfolded one (relative error {error:.2e}); "
                "set model.fold_frozen_bn=false"
            )
    finally:
        module.train(was_training)
    _logger.info("fold_frozen_bn: %d frozen BatchNorms folded into their convolutions", len(pairs))
    return len(pairs)


def bake_folded_batchnorm(module: nn.Module) -> nn.Module:
    """A copy of ``module`` whose folded convolutions hold their folded weight and bias as plain parameters.

    What an exporter should see: convolution weights that are constants (initializers in ONNX, which ONNX Runtime's
    quantiser and optimiser expect) and no BatchNorm arithmetic at all. ``module`` itself is returned when nothing in
    it is folded. The copy computes the same function; it is for inference (its state dict has the new biases).
    """
    if not any(isinstance(m, (FoldedConv2d, FoldedConv2dSame)) for m in module.modules()):
        return module
    baked = copy.deepcopy(module)
    with torch.no_grad():
        for m in baked.modules():
            if isinstance(m, (FoldedConv2d, FoldedConv2dSame)):
                weight, bias = _folded_weight_bias(m)
                m.__class__ = Conv2dSame if isinstance(m, FoldedConv2dSame) else nn.Conv2d
                del m.__dict__["_folded_bn"]
                m.weight = nn.Parameter(weight, requires_grad=False)
                m.bias = nn.Parameter(bias, requires_grad=False)
    return baked
