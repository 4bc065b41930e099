"""Tiny CPU models for tests: the shared model factories, the CLI overrides for one, and a minimal eval transform."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from sadcl.config import ModelConfig
from sadcl.models import SADCL, Backbone, build_model

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

# The model part of a tiny run, as `sadcl` CLI overrides; test files add image size, batch, bank and schedule.
TINY_MODEL_OVERRIDES = [
    "model.backbone=resnet18",
    "model.pretrained=false",
    "model.pretrained_file=null",
    "model.hidden_dim=32",
    "model.nhead=2",
    "model.dim_feedforward=64",
    "model.proj_dim=16",
]


def tiny_model_config(**overrides: Any) -> ModelConfig:
    """A ResNet-18 (random init) model config at 64 px, width 32, 5 classes, no dropout, baseline by default."""
    base: dict[str, Any] = dict(
        backbone="resnet18",
        pretrained=False,
        img_size=64,
        num_classes=5,
        hidden_dim=32,
        nhead=4,
        enc_layers=1,
        dec_layers=2,
        dim_feedforward=64,
        dropout=0.0,
        contrastive=False,
    )
    return ModelConfig(**{**base, **overrides})


def tiny_model(**overrides: Any) -> SADCL:
    """``build_model(tiny_model_config(**overrides))`` in eval mode, seeded (``torch.manual_seed(0)``) first."""
    torch.manual_seed(0)
    return build_model(tiny_model_config(**overrides)).eval()


def tiny_sadcl(
    *,
    num_classes: int = 5,
    hidden_dim: int = 32,
    proj_dim: int = 16,
    contrastive: bool = True,
    bank_slots: int = 2,
    name: str = "resnet18",
    freeze_bn: bool = True,
    freeze_stem: bool = True,
    **kwargs: Any,
) -> SADCL:
    """A seeded tiny ``SADCL`` built from its constructor (train mode, dropout 0.1), for tests of the model itself."""
    torch.manual_seed(0)
    backbone = Backbone(name=name, pretrained=False, freeze_bn=freeze_bn, freeze_stem=freeze_stem)
    return SADCL(
        backbone=backbone,
        num_classes=num_classes,
        hidden_dim=hidden_dim,
        nhead=4,
        enc_layers=1,
        dec_layers=2,
        dim_feedforward=64,
        dropout=0.1,
        contrastive=contrastive,
        proj_dim=proj_dim,
        bank_slots=bank_slots,
        **kwargs,
    )


class EvalTransform:
    """A minimal evaluation transform (resize to 64 px + normalise) with the ``mean``/``std`` attributes EvalPreset has.

    Returns ``[3, 64, 64]`` float32.
    """

    mean, std = MEAN, STD

    def __call__(self, img: Image.Image) -> torch.Tensor:
        x = torch.from_numpy(np.asarray(img.convert("RGB").resize((64, 64)), dtype=np.float32) / 255).permute(2, 0, 1)
        return (x - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)


class MapBackbone(nn.Module):
    """A stand-in backbone whose input is the feature map ``[B, D, h, w]`` itself: the heads' maths on small tensors."""

    stride = 1

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.num_channels = channels

    def forward(self, x: Tensor) -> Tensor:
        return x


def normalised_rows(conv: nn.Conv2d) -> Tensor:
    """A 1x1 convolution's weight as ``[C, D]`` rows of unit norm (CSRA's normalised classifier)."""
    w = conv.weight.flatten(1)
    return w / w.norm(dim=1, keepdim=True)
