"""AdamW with one parameter group and OneCycleLR stepped every iteration (docs/spec.md §3.2)."""

from __future__ import annotations

import logging

import torch
from torch import nn
from torch.optim.lr_scheduler import OneCycleLR

from sadcl.config import OptimConfig

logger = logging.getLogger(__name__)

__all__ = ["build_optimizer", "build_scheduler"]


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    """AdamW over every trainable parameter, in one group, with weight decay on all of them.

    As the official ``single_lr`` pattern: biases, norms, ``query_embed`` and the prototypes are decayed too. The
    memory bank is a buffer, so it is never optimized. Frozen parameters (frozen stem, ``requires_grad=False``) are
    left out.

    Args:
        model: The model (a DDP wrapper works too: its parameters are the same tensors).
        cfg: ``lr``, ``betas``, ``eps``, ``weight_decay``.

    Returns:
        The optimizer; its ``lr`` is overwritten by :func:`build_scheduler` with ``lr / div_factor``.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    logger.info(
        "AdamW over %d tensors (%d parameters), lr %g, weight decay %g on all",
        len(params),
        sum(p.numel() for p in params),
        cfg.lr,
        cfg.weight_decay,
    )
    return torch.optim.AdamW(params, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay)


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: OptimConfig, *, epochs: int, steps_per_epoch: int
) -> OneCycleLR:
    """OneCycleLR with the torch defaults the official run used; call ``step()`` after every optimizer step.

    Cosine annealing from ``lr / div_factor`` up to ``lr`` over the first ``pct_start`` of the steps, then down to
    ``lr / div_factor / final_div_factor``; AdamW beta1 cycles 0.95 -> 0.85 -> 0.95 in the opposite direction.

    Args:
        optimizer: From :func:`build_optimizer`.
        cfg: ``lr`` (the peak), ``pct_start``, ``div_factor``, ``final_div_factor``.
        epochs: Number of epochs of this stage.
        steps_per_epoch: Optimizer steps per epoch (``len(train_loader)``, or the per-epoch step cap).

    Returns:
        The scheduler.
    """
    if epochs < 1 or steps_per_epoch < 1:
        raise ValueError(f"epochs and steps_per_epoch must be >= 1, got {epochs} and {steps_per_epoch}")
    return OneCycleLR(
        optimizer,
        max_lr=cfg.lr,
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
