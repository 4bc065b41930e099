"""Asymmetric loss (ASL, Ridnik et al. 2021), as the official ``AsymmetricLossOptimized`` (docs/spec.md §2.1)."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

__all__ = ["AsymmetricLoss"]

Reduction = Literal["official", "mean", "sum"]


class AsymmetricLoss(nn.Module):
    """Asymmetric focal binary cross-entropy for multi-label classification.

    Per entry, with ``p = sigmoid(x)`` and ``q = 1 - p`` (shifted to ``min(q + clip, 1)`` when ``clip > 0``)::

        l = y * log(max(p, eps)) + (1 - y) * log(max(q, eps))
        w = (1 - p*y - q*(1 - y)) ** (gamma_pos*y + gamma_neg*(1 - y))      # only if a gamma is > 0
        loss = -sum(l * w)

    The clamps are from below only, so a clamped entry has zero gradient (as official). ``0 ** 0 = 1``.

    Settings in use (docs/spec.md §2.1): the official script uses ``gamma_neg=4, gamma_pos=0, clip=0`` with a detached
    focal weight (the default here); the logged SADCL stage-2 run used ``gamma_neg=0`` (plain BCE).

    Args:
        gamma_neg: Focusing exponent on negatives.
        gamma_pos: Focusing exponent on positives.
        clip: Probability margin added to ``q`` (0 disables it).
        eps: Lower clamp of the probabilities inside the logs.
        detach_focal_weight: Treat ``w`` as a constant (official ``disable_torch_grad_focal_loss``).
        reduction: ``'official'``: ``(-sum l) / B / C * 1000`` in that order (the official scale, 1000 x the mean
            over all B*C entries); with ignored (unknown) entries, ``(-sum l) / K * 1000`` over the K known entries,
            so a partially labelled batch keeps the scale of a fully labelled one (and the weights against SSCL/PSCL
            keep their meaning); ``'mean'``: the mean over the known entries; ``'sum'``: the plain sum.
    """

    def __init__(
        self,
        *,
        gamma_neg: float = 4.0,
        gamma_pos: float = 0.0,
        clip: float = 0.0,
        eps: float = 1e-5,
        detach_focal_weight: bool = True,
        reduction: Reduction = "official",
    ) -> None:
        super().__init__()
        if reduction not in ("official", "mean", "sum"):
            raise ValueError(f"reduction must be one of 'official', 'mean', 'sum', got {reduction!r}")
        if clip < 0 or gamma_neg < 0 or gamma_pos < 0 or eps <= 0:
            raise ValueError("gamma_neg, gamma_pos and clip must be >= 0 and eps > 0")
        self.gamma_neg = gamma_neg
        self.gamma_pos = gamma_pos
        self.clip = clip
        self.eps = eps
        self.detach_focal_weight = detach_focal_weight
        self.reduction = reduction

    def forward(self, logits: Tensor, targets: Tensor, ignore: Tensor | None = None) -> Tensor:
        """Compute the loss.

        Args:
            logits: ``[B, C]`` raw scores.
            targets: ``[B, C]`` multi-hot labels (float32 or float64; the loss is computed in the promoted dtype,
                so float64 targets give a float64 loss as in the official COCO runs).
            ignore: Optional bool ``[B, C]``: unknown entries, left out of the sum and of the count (partial labels,
                VOC "difficult"); their ``targets`` values do not matter.

        Returns:
            Scalar loss.
        """
        if logits.shape != targets.shape or logits.dim() != 2:
            raise ValueError(
                f"logits and targets must both be [B, C], got {list(logits.shape)} and {list(targets.shape)}"
            )
        targets = targets.to(logits.device) if targets.is_floating_point() else targets.to(logits)  # bool/int labels
        anti_targets = 1 - targets
        p = torch.sigmoid(logits)
        q = 1.0 - p
        if self.clip > 0:
            q = (q + self.clip).clamp(max=1)
        loss = targets * torch.log(p.clamp(min=self.eps)) + anti_targets * torch.log(q.clamp(min=self.eps))
        if self.gamma_neg > 0 or self.gamma_pos > 0:
            with torch.set_grad_enabled(torch.is_grad_enabled() and not self.detach_focal_weight):
                base = 1 - p * targets - q * anti_targets
                w = torch.pow(base, self.gamma_pos * targets + self.gamma_neg * anti_targets)
            loss = loss * w
        if ignore is not None:
            if ignore.shape != logits.shape:
                raise ValueError(f"ignore must be [B, C] = {list(logits.shape)}, got {list(ignore.shape)}")
            # where (not a multiply) so that an ignored entry also passes exactly zero gradient.
            loss = torch.where(
                ignore.to(loss.device, torch.bool), torch.zeros((), dtype=loss.dtype, device=loss.device), loss
            )
        total = -loss.sum()
        if self.reduction == "sum":
            return total
        known = loss.numel() if ignore is None else int((~ignore.bool()).sum())
        if self.reduction == "mean":
            return total / max(known, 1)
        if known < loss.numel():
            return total / max(known, 1) * 1000
        return total / logits.shape[0] / logits.shape[1] * 1000  # the official order of operations (bit-exact)

    def extra_repr(self) -> str:
        return (
            f"gamma_neg={self.gamma_neg}, gamma_pos={self.gamma_pos}, clip={self.clip}, eps={self.eps}, "
            f"detach_focal_weight={self.detach_focal_weight}, reduction={self.reduction!r}"
        )
