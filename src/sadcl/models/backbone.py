"""CNN/ViT backbone: a thin wrapper around ``timm.create_model(features_only=True)`` (docs/spec.md §1.1).

Architectures are never vendored; any timm model that supports ``features_only`` works. Only the last feature map is
returned (official: ResNet ``layer4``, stride 32).
"""

from __future__ import annotations

import logging
import zipfile
from pathlib import Path

import timm
import torch
from timm.layers import freeze_batch_norm_2d
from torch import Tensor, nn

from sadcl.config_parse import ConfigError
from sadcl.models.fold_bn import fold_frozen_batchnorm
from sadcl.models.pretrained import (
    is_efficientnet_pytorch_state_dict,
    load_efficientnet_pytorch_weights,
)

__all__ = ["Backbone", "check_backbone_name"]

_logger = logging.getLogger(__name__)


def check_backbone_name(name: str) -> None:
    """Refuse a name timm does not know, naming the setting and the closest timm names (``resnet9000`` ->
    ``resnet200, resnet50, ...``) instead of timm's bare ``Unknown model (resnet9000)``.

    Raises:
        ConfigError: ``name`` is not a timm architecture (a ``name.tag`` pretrained tag is fine).
    """
    if timm.is_model(name):
        return
    import difflib

    close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
    raise ConfigError(
        f"model.backbone={name!r} is not a timm model"
        + (f"; close names: {', '.join(close)}" if close else "")
        + " (all names: python -c \"import timm; print(timm.list_models('resnet*'))\")"
    )


class Backbone(nn.Module):
    """One feature map of a timm model (by default the last one, as official).

    Args:
        name: timm model name (e.g. ``resnet101``, ``tf_efficientnet_lite0``).
        pretrained: Load ImageNet weights: from ``pretrained_file`` when given, else from timm's hub. With False
            nothing is downloaded (and ``pretrained_file`` is ignored with a warning).
        pretrained_file: A local weights file: timm key names (loaded by timm through
            ``pretrained_cfg_overlay=dict(file=...)``) or efficientnet_pytorch key names (mapped by
            :func:`sadcl.models.pretrained.load_efficientnet_pytorch_weights`, all feature weights required).
        freeze_bn: Replace every BatchNorm with timm/torchvision frozen BatchNorm (fixed affine and statistics, the
            layer's own eps kept), as the official FrozenBatchNorm2d.
        freeze_stem: Freeze the stem and the first stage. Rule: every parameter registered before the first
            ``feature_info`` stage with reduction >= ``freeze_stride`` gets ``requires_grad=False`` (with 8: ResNet
            conv1, bn1, layer1, as official; EfficientNet conv_stem, bn1, blocks.0-1; ConvNeXt stem, stages.0), and
            the modules holding them stay in eval mode so no statistics or dropout change there.
        freeze_stride: Where ``freeze_stem`` stops: 8 is the official boundary; 16 also freezes the stride-8 stages
            (ResNet layer2, EfficientNet blocks.2-3), which saves their backward pass (the demo's SADCL step: 1.23x
            faster on 2 CPU cores, but on MOM-30 the demo then lost 7 test mAP, 80.31 -> 73.31: the default stays 8).
        fold_frozen_bn: With ``freeze_bn``, fold each frozen BatchNorm that directly follows a convolution into that
            convolution (:mod:`sadcl.models.fold_bn`): the same function up to float rounding, with fewer passes over
            the activations; parameter names and checkpoints are unchanged.
        feature_level: Which of timm's ``feature_info`` levels the model returns: -1 is the last (stride 32 for ResNets
            and EfficientNets, as official); -2 the one before (stride 16: a 4x denser map for small objects and
            finer attention maps, and the later stages are not built at all).

    Attributes:
        num_channels: Channels of the returned map.
        stride: Its reduction relative to the input.

    The input normalisation is the data side's (``data.normalization``; ``backbone`` reads ``name``'s timm pretrained
    config). A weights file must match it: the efficientnet_pytorch EfficientNet-Lite0 file expects 0.5/0.5, which
    timm's ``tf_efficientnet_lite0`` declares but ``efficientnet_lite0`` (timm's ImageNet-statistics weights) does not.

    Shapes: ``[B, 3, H, W] -> [B, num_channels, H / stride, W / stride]``.
    """

    def __init__(
        self,
        *,
        name: str,
        pretrained: bool = False,
        pretrained_file: str | None = None,
        freeze_bn: bool = True,
        freeze_stem: bool = True,
        freeze_stride: int = 8,
        fold_frozen_bn: bool = False,
        feature_level: int = -1,
    ) -> None:
        super().__init__()
        check_backbone_name(name)
        self.name = name
        if pretrained_file is not None and not pretrained:
            _logger.warning("pretrained=False: ignoring pretrained_file=%s", pretrained_file)
            pretrained_file = None
        self.body = self._create(name, pretrained, pretrained_file, feature_level)
        self._drop_unused_stages()
        info = self.body.feature_info
        self.num_channels: int = int(info.channels()[-1])
        self.stride: int = int(info.reduction()[-1])
        if freeze_bn:
            # Replaces modules, so it must come after the weights are loaded (it copies the statistics).
            self.body = freeze_batch_norm_2d(self.body)
        self._frozen_modules: list[str] = self._freeze_stem(freeze_stride) if freeze_stem else []
        if fold_frozen_bn and freeze_bn:
            fold_frozen_batchnorm(self, example=torch.zeros(1, 3, 64, 64))  # any size a CNN takes (ViTs have no BN)

    @staticmethod
    def _create(name: str, pretrained: bool, pretrained_file: str | None, feature_level: int) -> nn.Module:
        kwargs = dict(features_only=True, out_indices=(feature_level,))
        if not pretrained:
            return timm.create_model(name, pretrained=False, **kwargs)
        if pretrained_file is None:
            return timm.create_model(name, pretrained=True, **kwargs)
        path = Path(pretrained_file)
        if not path.is_file():
            raise FileNotFoundError(f"backbone weights file not found: {path}")
        # mmap (zip format only; legacy pre-1.6 files such as the efficientnet_pytorch ones can't be mapped): only the
        # key names are needed to recognise the layout.
        probe = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
        if isinstance(probe, dict) and is_efficientnet_pytorch_state_dict(probe):
            del probe
            body = timm.create_model(name, pretrained=False, **kwargs)
            state = load_efficientnet_pytorch_weights(path, model_name=name, check=False)
            own = body.state_dict()
            missing = sorted(set(own) - set(state))
            wrong = sorted(k for k in own if k in state and own[k].shape != state[k].shape)
            if missing or wrong:
                raise ValueError(f"{path}: does not fit {name}: missing {missing[:5]}, shape mismatch {wrong[:5]}")
            skipped = sorted(set(state) - set(own))
            body.load_state_dict({k: state[k] for k in own}, strict=True)
            _logger.info(
                "loaded %s into %s (not part of the feature extractor: %d tensors, e.g. %s)",
                path,
                name,
                len(skipped),
                skipped[:3],
            )
            return body
        del probe
        return timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **kwargs)

    def _drop_unused_stages(self) -> None:
        """Remove the stages after the returned feature level where timm builds and runs them anyway.

        timm's generic feature wrapper (ResNets, ConvNeXts, ...) already stops at the last requested stage, but its
        EfficientNet/MobileNet feature classes keep every block and run them all. Blocks after the level would cost
        compute and leave trainable parameters without gradients (which DistributedDataParallel rejects).
        """
        stage_out = getattr(self.body, "_stage_out_idx", None)
        blocks = getattr(self.body, "blocks", None)
        if not stage_out or not isinstance(blocks, nn.Sequential):
            return
        keep = max(stage_out)  # forward takes a feature after block stage i when i + 1 is a key
        if keep < len(blocks):
            self.body.blocks = blocks[:keep]
            _logger.info(
                "%s: dropped block stages %d-%d after the returned feature level", self.name, keep, len(blocks) - 1
            )

    def _freeze_stem(self, stride: int) -> list[str]:
        """Freeze everything before the first stage with reduction >= ``stride``; return the frozen modules' names."""
        stages = [(f["module"], f["reduction"]) for f in self.body.feature_info.info if f["reduction"] <= self.stride]
        boundary = next((module for module, reduction in stages if reduction >= stride), None)
        if boundary is None:
            raise ValueError(
                f"model.freeze_stride={stride}: {self.name} (up to the returned feature level) has no stage with "
                f"reduction >= {stride} ({stages}); use a smaller freeze_stride or freeze_stem=False"
            )
        # FeatureListNet flattens sequential containers ("stages.1" -> "stages_1"); wrappers add a prefix ("model.").
        candidates = (boundary, boundary.replace(".", "_"))
        names = [n for n, _ in self.body.named_modules()]

        def is_boundary(module_name: str) -> bool:
            return any(module_name == c or module_name.endswith("." + c) for c in candidates)

        first = next((i for i, n in enumerate(names) if is_boundary(n)), None)
        if first is None:
            raise ValueError(f"freeze_stem: cannot find module {boundary!r} in {self.name}; use freeze_stem=False")
        boundary_name = names[first]
        frozen_modules = [n for n in names[:first] if n and not boundary_name.startswith(n + ".")]
        count = 0
        for pname, param in self.body.named_parameters():
            if pname.startswith(boundary_name + "."):
                break
            param.requires_grad_(False)
            count += 1
        _logger.info("freeze_stem: %d parameter tensors before %s frozen", count, boundary_name)
        return frozen_modules

    def train(self, mode: bool = True) -> Backbone:
        """Set train/eval mode; the frozen stem always stays in eval mode."""
        super().train(mode)
        modules = dict(self.body.named_modules())
        for name in self._frozen_modules:
            modules[name].eval()
        return self

    def forward(self, x: Tensor) -> Tensor:
        """Images ``[B, 3, H, W]`` -> last feature map ``[B, num_channels, h, w]``."""
        return self.body(x)[-1]

    def extra_repr(self) -> str:
        return f"name={self.name}, num_channels={self.num_channels}, stride={self.stride}"
