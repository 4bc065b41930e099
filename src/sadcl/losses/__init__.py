"""Losses of SADCL: ASL, the sample-to-sample (SSCL) and prototype-to-sample (PSCL) contrastive terms, the criterion.

``build_criterion`` is the only reader of ``sadcl.config.LossConfig`` here; the loss classes take plain keyword
arguments.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sadcl.config import config_kwargs

from .asymmetric import AsymmetricLoss
from .criterion import Criterion
from .pscl import PSCLoss
from .sscl import SSCLoss

if TYPE_CHECKING:
    from sadcl.config import LossConfig

__all__ = ["AsymmetricLoss", "SSCLoss", "PSCLoss", "Criterion", "build_criterion"]


def build_criterion(cfg: LossConfig, contrastive: bool = True, *, gather_features: bool = False) -> Criterion:
    """Build the training criterion from the loss configuration.

    Args:
        cfg: Loss configuration (ASL settings, SSCL variant and temperatures, term weights, ``unknown_mode``).
        contrastive: Add the SSCL and PSCL terms (SADCL, stage 2); False gives the ASL-only baseline (stage 1).
        gather_features: Under DDP, SSCL/PSCL over the global batch (``train.gather_features``; see ``Criterion``).

    Returns:
        A ``Criterion`` whose ``forward`` returns the unweighted terms and ``total`` applies the weights.
    """
    asl = AsymmetricLoss(**config_kwargs(AsymmetricLoss, cfg, reduction=cfg.asl_reduction))
    sscl = pscl = None
    if contrastive:
        # base_temperature stays at the official 0.2 (the loss is scaled by tau / 0.2 if tau is changed).
        sscl = SSCLoss(temperature=cfg.sscl_temperature, variant=cfg.sscl_variant, anchor_scale=cfg.sscl_anchor_scale)
        pscl = PSCLoss(temperature=cfg.pscl_temperature)
    weights = {"asl": cfg.weight_asl, "sscl": cfg.weight_sscl, "pscl": cfg.weight_pscl}
    return Criterion(
        asl=asl,
        sscl=sscl,
        pscl=pscl,
        weight_dict=weights,
        unknown_mode=cfg.unknown_mode,
        gather_features=gather_features,
        sscl_min_confidence=cfg.sscl_min_confidence,
        contrastive_warmup=cfg.contrastive_warmup,
    )
