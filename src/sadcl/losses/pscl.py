"""Prototype-to-sample contrastive loss (PSCL) as the official ``Semantic2PrototypeConLoss`` (docs/spec.md §2.3)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["PSCLoss"]


class PSCLoss(nn.Module):
    """Pull each class prototype towards the batch's positive features of that class, away from the others.

    With ``s[i, c] = cos(features[i, c], prototypes[c]) / tau`` (cosine eps 1e-8) and the detached per-class shift
    ``m_c = max_i s[i, c]``::

        num_c = sum_{i: y_ic = 1} exp(s_ic - m_c)      (1 if class c has no positive in the batch)
        den_c = sum_i exp(s_ic - m_c)                   (all samples, positives and negatives)
        L     = -sum_c (log num_c - log den_c) / sum(y)

    A class with positives contributes the shift-invariant ``-log(sum_pos e^s / sum_all e^s)``; a class without
    positives still contributes ``logsumexp_i s_ic - max_i s_ic`` (official behaviour: it pushes every sample's
    class-c feature away from prototype c). The division is by the total number of positives.

    Difference from the official code: a batch without any positive returns 0 (with zero gradient) where the
    official code crashes (a ``.meam()`` typo raises ``AttributeError``).

    Args:
        temperature: ``tau``.
    """

    def __init__(self, *, temperature: float = 0.07) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = temperature

    def forward(self, features: Tensor, prototypes: Tensor, labels: Tensor, ignore: Tensor | None = None) -> Tensor:
        """Compute the loss.

        Args:
            features: ``[B, C, D]`` projected label-level features (not normalised).
            prototypes: ``[C, D]`` or ``[1, C, D]`` projected class prototypes.
            labels: ``[B, C]`` multi-hot labels (float32 or float64).
            ignore: Optional bool ``[B, C]``: unknown labels. An unknown ``(i, c)`` contributes nothing: it is left
                out of ``num_c``, ``den_c``, the shift ``m_c`` and the count ``sum(y)`` (a class whose entries are
                all unknown adds 0). Its ``labels`` value does not matter; without a True entry nothing changes.

        Returns:
            Scalar loss in the promoted dtype of the similarities and ``labels``.
        """
        if features.dim() != 3:
            raise ValueError(f"features must be [B, C, D], got {list(features.shape)}")
        b, c, d = features.shape
        if prototypes.dim() == 3 and prototypes.shape[0] == 1:
            prototypes = prototypes[0]
        if tuple(prototypes.shape) != (c, d):
            raise ValueError(f"prototypes must be [C, D] or [1, C, D] with C={c}, D={d}, got {list(prototypes.shape)}")
        if tuple(labels.shape) != (b, c):
            raise ValueError(f"labels must be [B, C] = [{b}, {c}], got {list(labels.shape)}")
        labels = labels.to(features.device) if labels.is_floating_point() else labels.to(features)  # bool/int labels
        if ignore is not None:
            if tuple(ignore.shape) != (b, c):
                raise ValueError(f"ignore must be [B, C] = [{b}, {c}], got {list(ignore.shape)}")
            ignore = ignore.to(features.device, torch.bool)
            labels = labels.masked_fill(ignore, 0)
            ignore = ignore if bool(ignore.any()) else None  # nothing unknown: the unmasked computation, bit-exact
        # Cosine similarity as F.cosine_similarity(eps=1e-8), x.p / (max(|x|, eps) max(|p|, eps)), but normalising the
        # C prototypes once instead of materialising normalised [B, C, D] copies (3x faster forward+backward).
        unit_protos = prototypes / torch.linalg.vector_norm(prototypes, dim=-1, keepdim=True).clamp(min=1e-8)  # [C, D]
        dots = (features * unit_protos[None]).sum(-1)  # [B, C]
        sim = dots / torch.linalg.vector_norm(features, dim=-1).clamp(min=1e-8) / self.temperature  # [B, C]
        if not bool((labels > 0).any()):
            # Official crashes here; we return 0, connected to the graph so that backward gives zero gradients.
            return (sim.sum() * 0).to(torch.promote_types(sim.dtype, labels.dtype))
        if ignore is None:
            sim = sim - sim.detach().amax(0, keepdim=True)  # per-class shift m_c
            den = torch.exp(sim).sum(0)  # [C]
        else:
            # Unknown entries become -inf: exp gives 0 (and zero gradient); an all-unknown column gets shift 0.
            shift = sim.detach().masked_fill(ignore, float("-inf")).amax(0, keepdim=True)
            sim = sim - torch.where(torch.isfinite(shift), shift, torch.zeros_like(shift))
            den = torch.exp(sim.masked_fill(ignore, float("-inf"))).sum(0)  # [C], 0 for an all-unknown class
            den = torch.where(den <= 0, torch.ones_like(den), den)  # such a class adds log 1 - log 1 = 0
        num = (labels * torch.exp(labels * sim)).sum(0)  # [C]; promoted dtype (float64 with COCO labels)
        num = torch.where(num <= 0, torch.ones_like(num), num)  # classes without a positive: log 1 = 0
        return -(torch.log(num) - torch.log(den)).sum() / labels.sum()
