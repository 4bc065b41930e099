"""Losses of SADCL: ASL, the sample-to-sample (SSCL) and prototype-to-sample (PSCL) contrastive terms, the criterion.

``build_criterion`` is the only reader of ``sadcl.config.LossConfig`` here; the loss classes take plain keyword
arguments.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from .asymmetric import AsymmetricLoss
from .criterion import DEFAULT_WEIGHTS, Criterion
from .pscl import PSCLoss
from .sscl import SSCLoss

if TYPE_CHECKING:
    from sadcl.config import LossConfig

__all__ = [
    "AsymmetricLoss",
    "SSCLoss",
    "PSCLoss",
    "Criterion",
    "DEFAULT_WEIGHTS",
    "LOSSES",
    "get_loss",
    "build_criterion",
]


class _Registry(dict):
    """A name -> class dict whose lookup miss names the valid choices."""

    def __missing__(self, key: str) -> type[nn.Module]:
        raise KeyError(f"unknown loss {key!r}; valid choices: {', '.join(sorted(self))}")


LOSSES: dict[str, type[nn.Module]] = _Registry(asl=AsymmetricLoss, sscl=SSCLoss, pscl=PSCLoss)
"""Loss classes by name (the keys are also the criterion's term names)."""


def get_loss(name: str, **kwargs: object) -> nn.Module:
    """Build a registered loss by name, e.g. ``get_loss('sscl', variant='official')``.

    Raises:
        KeyError: naming the valid choices when ``name`` is not registered.
    """
    return LOSSES[name](**kwargs)


def build_criterion(cfg: LossConfig, contrastive: bool = True) -> Criterion:
    """Build the training criterion from the loss configuration.

    Args:
        cfg: Loss configuration (ASL settings, SSCL variant and temperatures, term weights, ``unknown_mode``).
        contrastive: Add the SSCL and PSCL terms (SADCL, stage 2); False gives the ASL-only baseline (stage 1).

    Returns:
        A ``Criterion`` whose ``forward`` returns the unweighted terms and ``total`` applies the weights.
    """
    asl = AsymmetricLoss(
        gamma_neg=cfg.gamma_neg,
        gamma_pos=cfg.gamma_pos,
        clip=cfg.clip,
        eps=cfg.eps,
        detach_focal_weight=cfg.detach_focal_weight,
        reduction=cfg.asl_reduction,
    )
    sscl = pscl = None
    if contrastive:
        # base_temperature stays at the official 0.2 (the loss is scaled by tau / 0.2 if tau is changed).
        sscl = SSCLoss(temperature=cfg.sscl_temperature, variant=cfg.sscl_variant, anchor_scale=cfg.sscl_anchor_scale)
        pscl = PSCLoss(temperature=cfg.pscl_temperature)
    weights = {"asl": cfg.weight_asl, "sscl": cfg.weight_sscl, "pscl": cfg.weight_pscl}
    return Criterion(asl=asl, sscl=sscl, pscl=pscl, weight_dict=weights, unknown_mode=cfg.unknown_mode)
