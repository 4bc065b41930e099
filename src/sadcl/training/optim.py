"""AdamW (one parameter group, or two with ``optim.backbone_lr_scale``) and OneCycleLR stepped every iteration
(docs/spec.md §3.2)."""

from __future__ import annotations

import logging

import torch
from torch import nn
from torch.optim.lr_scheduler import OneCycleLR

from sadcl.config import ConfigError, OptimConfig
from sadcl.training.ema import unwrap_model

logger = logging.getLogger(__name__)

__all__ = ["build_optimizer", "build_scheduler"]


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    """AdamW over every trainable parameter, with weight decay on all of them.

    As the official ``single_lr`` pattern: biases, norms, ``query_embed`` and the prototypes are decayed too. The
    memory bank is a buffer, so it is never optimized. Frozen parameters (frozen stem, ``requires_grad=False``;
    prototypes that follow the model, ``model.prototype_momentum``) are left out. With ``cfg.backbone_lr_scale !=
    1`` the backbone's parameters (``backbone.*``) form a second group whose learning rate is ``lr *
    backbone_lr_scale`` (:func:`build_scheduler` scales its whole cycle).

    Args:
        model: The model (a DDP / DataParallel / ``torch.compile`` wrapper works too: it is unwrapped).
        cfg: ``lr``, ``backbone_lr_scale``, ``betas``, ``eps``, ``weight_decay``, ``fused``.

    Returns:
        The optimizer, its groups in the order ``[rest, backbone]`` (one group when the scale is 1); each group's
        ``lr`` is overwritten by :func:`build_scheduler` with its peak ``/ div_factor``.
    """
    named = [(n, p) for n, p in unwrap_model(model).named_parameters() if p.requires_grad]
    if not named:
        raise ValueError("the model has no trainable parameters")
    if cfg.backbone_lr_scale == 1.0:
        groups = [{"params": [p for _, p in named], "lr": cfg.lr}]
    else:
        trunk = [p for n, p in named if n.startswith("backbone.")]
        if not trunk:
            raise ValueError(
                f"optim.backbone_lr_scale={cfg.backbone_lr_scale} needs trainable parameters named backbone.*; "
                "this model has none (set optim.backbone_lr_scale=1)"
            )
        rest = [p for n, p in named if not n.startswith("backbone.")]
        groups = [{"params": rest, "lr": cfg.lr}, {"params": trunk, "lr": cfg.lr * cfg.backbone_lr_scale}]
    logger.info(
        "AdamW over %d tensors (%d parameters), lr %g%s, weight decay %g on all",
        len(named),
        sum(p.numel() for _, p in named),
        cfg.lr,
        f" (backbone {cfg.lr * cfg.backbone_lr_scale:g})" if len(groups) > 1 else "",
        cfg.weight_decay,
    )
    try:
        return torch.optim.AdamW(
            groups,
            lr=cfg.lr,
            betas=tuple(cfg.betas),
            eps=cfg.eps,
            weight_decay=cfg.weight_decay,
            fused=True if cfg.fused else None,  # None: torch's default (the per-tensor loop on CPU)
        )
    except RuntimeError as e:  # fused kernels exist for CPU and CUDA float parameters only
        if not (cfg.fused and "fused" in str(e)):
            raise
        raise ConfigError(f"optim.fused: {str(e).rstrip('. ')}; set optim.fused=false") from None


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: OptimConfig, *, epochs: int, steps_per_epoch: int
) -> OneCycleLR:
    """OneCycleLR with the torch defaults the official run used; call ``step()`` after every optimizer step.

    Cosine annealing from ``lr / div_factor`` up to ``lr`` over the first ``pct_start`` of the steps, then down to
    ``lr / div_factor / final_div_factor``; AdamW beta1 cycles 0.95 -> 0.85 -> 0.95 in the opposite direction.

    Args:
        optimizer: From :func:`build_optimizer`.
        cfg: ``pct_start``, ``div_factor``, ``final_div_factor``; each group's peak is the ``lr`` it was built with
            (``lr``, and ``lr * backbone_lr_scale`` for the backbone group).
        epochs: Number of epochs of this stage.
        steps_per_epoch: Optimizer steps per epoch (``len(train_loader)``, or the per-epoch step cap).

    Returns:
        The scheduler.
    """
    if epochs < 1 or steps_per_epoch < 1:
        raise ValueError(f"epochs and steps_per_epoch must be >= 1, got {epochs} and {steps_per_epoch}")
    return OneCycleLR(
        optimizer,
        max_lr=[g["lr"] for g in optimizer.param_groups],  # each group's own peak (build_optimizer)
        epochs=epochs,
        steps_per_epoch=steps_per_epoch,
        pct_start=cfg.pct_start,
        anneal_strategy="cos",
        cycle_momentum=True,
        base_momentum=0.85,
        max_momentum=0.95,
        div_factor=cfg.div_factor,
        final_div_factor=cfg.final_div_factor,
        three_phase=False,
    )
